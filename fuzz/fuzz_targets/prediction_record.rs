//! A Kafka payload on the predictions topic through the logger's `batch::decode` (PredictionRecord -> PredictionRow, ReviewItem).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_logbus::topics;
use vigil_logger::batch::{Consumed, decode};

fuzz_target!(|data: &[u8]| {
    let message = Consumed {
        topic: topics::PREDICTIONS.to_string(),
        partition: 0,
        offset: 0,
        key: None,
        payload: Some(data.to_vec()),
    };
    let _ = decode(&[message]);
});
