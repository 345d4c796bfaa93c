//! The logger of the embedded default: records from the in-process bus into any store (SQLite
//! by default), through the same pipeline as the Kafka logger; records that cannot be decoded
//! go to the store's `dead_letters` table.

use std::sync::Arc;

use tokio::sync::mpsc;
use vigil_logbus::Envelope;
use vigil_store::{PredictionStore, ReviewStore};

use crate::config::BatchSettings;
use crate::pipeline::{self, LoggerStats};
use crate::sink::StoreDeadLetters;
use crate::source::BusSource;

/// Consumes `receiver` until every sender is gone, writing batches into `store`.
pub async fn run<S: PredictionStore + ReviewStore>(
    receiver: mpsc::Receiver<Envelope>,
    store: S,
    batch: BatchSettings,
    stats: Arc<LoggerStats>,
) {
    let dead_letters = StoreDeadLetters::new(store.clone());
    // The bus cannot give a record again: every batch in hand is written, however long it takes.
    let batch = BatchSettings { drain_timeout_ms: 0, ..batch };
    pipeline::run(BusSource::new(receiver), &store, &dead_letters, batch, &stats, std::future::pending()).await;
}
