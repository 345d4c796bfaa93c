//! What the monitoring service stores and reads: rollup upkeep over the prediction log, rollups,
//! labeled predictions for concept drift, and alarms with their history.

mod postgres;
mod sqlite;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The columns of a logged prediction that rollups summarise.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RollupInput {
    pub model_name: String,
    pub model_version: String,
    pub variant: i16,
    pub time: DateTime<Utc>,
    pub request_time: Option<DateTime<Utc>>,
    #[sqlx(json)]
    pub features: serde_json::Value,
    pub score: Option<f32>,
    pub output_null: bool,
    pub verdict: i16,
    pub decision: i16,
    pub queue_time_us: i64,
    pub compute_time_us: i64,
    pub status: i16,
    /// The pipeline step; empty for a single-model request.
    pub stage: String,
    /// The model's output label; empty when it gave none.
    pub label: String,
}

/// Predictions not yet rolled up, and the cursor to store once they are.
#[derive(Debug, Default)]
pub struct RollupBatch {
    pub rows: Vec<RollupInput>,
    pub next_cursor: i64,
}

/// Identifies one stored rollup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupKey {
    pub model_name: String,
    pub resolution_s: i32,
    pub window_start: DateTime<Utc>,
    pub model_version: String,
    pub variant: i16,
}

/// A rollup's key and its body (an encoded `vigil.v1.RollupWindow`).
#[derive(Debug, Clone)]
pub struct StoredRollup {
    pub key: RollupKey,
    pub body: Vec<u8>,
}

/// A rollup as read for one query: window start, version, variant, body.
type RollupRow = (DateTime<Utc>, String, i16, Vec<u8>);

/// Rows of one [`RollupQuery`] with their full keys.
fn stored_rollups(q: &RollupQuery, rows: Vec<RollupRow>) -> Vec<StoredRollup> {
    rows.into_iter()
        .map(|(window_start, model_version, variant, body)| StoredRollup {
            key: RollupKey {
                model_name: q.model_name.clone(),
                resolution_s: q.resolution_s,
                window_start,
                model_version,
                variant,
            },
            body,
        })
        .collect()
}

/// Which rollups to read.
#[derive(Debug, Clone)]
pub struct RollupQuery {
    pub model_name: String,
    pub model_version: Option<String>,
    pub variant: Option<i16>,
    pub resolution_s: i32,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// How far before the start of an outcome query's range a label or a feedback event may be
/// timed and still count (one day): they follow their predictions, so the stores look only at
/// events since the range's start, less this allowance for a labeller whose clock is behind the
/// server's. Both stores apply it alike; an event timed earlier than that is not counted.
pub const LATE_CLOCK_ALLOWANCE_S: i64 = 86_400;

/// Which predictions an outcome count covers, and the windows it is counted in.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeQuery {
    pub model_name: String,
    /// One version only, when given.
    pub model_version: Option<String>,
    /// One variant only, when given.
    pub variant: Option<i16>,
    /// Predictions made in [since, until).
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Window length in seconds: windows start at multiples of it since the epoch.
    pub resolution_s: u32,
    /// Only labels and feedback timed before this, when given: a window compared with a later
    /// one counts the outcomes it had at the same age (late ones kept arriving after it).
    pub events_before: Option<DateTime<Utc>>,
}

impl OutcomeQuery {
    /// The window length bound into SQL: at least a second.
    fn resolution(&self) -> i64 {
        i64::from(self.resolution_s.max(1))
    }
}

/// Binds an outcome query as `$1` model, `$2` since, `$3` until, `$4` version, `$5` variant,
/// `$6` window length and `$7` the events' bound, on either store.
fn bind_outcomes<'q, DB, O>(
    query: sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments<'q>>,
    q: &'q OutcomeQuery,
) -> sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i16>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<DateTime<Utc>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(q.model_name.as_str())
        .bind(q.since)
        .bind(q.until)
        .bind(q.model_version.as_deref())
        .bind(q.variant)
        .bind(q.resolution())
        .bind(q.events_before)
}

/// Labelled predictions of one window with the same answer and the same latest label: counted
/// in the database, so a dashboard reads a few rows per window, not one per prediction.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LabeledCount {
    /// Start of the window, in seconds since the epoch.
    pub window_s: i64,
    /// The model's output label; for a model that answers in text, the text.
    pub predicted: String,
    /// The ground truth (the latest label).
    pub actual: String,
    /// The model answers in text (a transcript), not a class: its output has text, or it
    /// answered (status OK) with neither label nor text (said nothing).
    pub text_output: bool,
    pub count: i64,
    /// The labels' delays after their predictions, summed, in seconds.
    pub lag_s: f64,
}

/// Feedback events of one kind on the predictions of one window.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FeedbackCount {
    /// Start of the window (of the predictions' times), in seconds since the epoch.
    pub window_s: i64,
    pub kind: String,
    pub count: i64,
}

/// A shadow version's answers in one window, each paired with the primary's answer to the same
/// item (same trace id, same place in the request); shadows whose primary failed or is not
/// logged are left out.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ShadowCount {
    /// Start of the window (of the shadow's times), in seconds since the epoch.
    pub window_s: i64,
    pub shadow_version: String,
    /// For a model that answers in text (a recogniser), the pairs whose transcripts differ
    /// byte for byte from the primary's or the label come apart by their transcripts, which the
    /// caller compares as it compares text (normalised); `agreed` and `shadow_correct` then
    /// count byte-equal transcripts only. None for a classifier, and for pairs equal to both.
    pub shadow_text: Option<String>,
    /// The primary's transcript, for a text model.
    pub primary_text: Option<String>,
    /// The latest label of the primary's prediction, for a text model.
    pub actual_text: Option<String>,
    /// Pairs compared.
    pub compared: i64,
    /// Both answered with the same label.
    pub agreed: i64,
    /// The shadow did not answer (its record's status is not OK).
    pub shadow_failed: i64,
    /// Pairs whose primary prediction someone labelled (e.g. an inspector's decision): the
    /// ground truth the shadow is judged by, on the same item.
    pub labeled: i64,
    /// Of those, the shadow answered with the label.
    pub shadow_correct: i64,
}

/// What label validation needs to know of a logged prediction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PredictionRef {
    pub prediction_id: Uuid,
    pub model_name: String,
    pub model_version: String,
    pub latest_label: Option<String>,
}

/// One alarm (a rule applied to one model) and its current state.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AlertRow {
    pub alert_key: String,
    pub rule: String,
    pub model_name: String,
    pub metric: String,
    pub severity: String,
    /// inactive, pending, firing or resolved.
    pub state: String,
    pub value: Option<f64>,
    pub threshold: f64,
    pub since: DateTime<Utc>,
    pub message: String,
}

/// A stored alarm transition.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertEvent {
    pub event_id: i64,
    pub alert_key: String,
    pub rule: String,
    pub model_name: String,
    pub severity: String,
    pub state: String,
    pub value: Option<f64>,
    pub threshold: f64,
    pub time: DateTime<Utc>,
    pub message: String,
    pub attempts: i32,
}

/// An exclusive role held by one monitor among those sharing a database (alarm evaluation and
/// webhook notification: several evaluators would each notify every transition).
pub enum Lease {
    /// A session-level advisory lock, held on a connection taken out of the pool: dropping the
    /// lease closes the connection, which releases the lock.
    Postgres(sqlx::PgConnection),
    /// An exclusive lock on a file beside an SQLite database, released when the file is
    /// closed (the lease dropped, the process gone).
    File(std::fs::File),
    /// A database in memory serves one process: nothing to share.
    Local,
}

/// How long a check of a lease, or an attempt to take one, may wait for the database: one that
/// does not answer (a network that drops packets) leaves the lease unconfirmed, not the caller
/// waiting for TCP to give up.
pub const LEASE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the database keeps a Postgres lease whose holder went silent (a network partition,
/// a machine that froze) before it ends the session and frees the lock: its TCP keepalives and
/// user timeout on the lease's session. A holder connected directly (no pooler or proxy in
/// between, which would end the server's session by its own rules) that cannot confirm its
/// lease for less than this still knows that nobody else holds it.
pub const LEASE_SILENCE_RELEASE: Duration = Duration::from_secs(90);

/// How long a holder keeps a lease the database does not confirm (no answer in time) before it
/// lets go and tries to take it anew: a connection dropped on the way never answers again,
/// while a fresh one may.
pub const LEASE_UNCONFIRMED_GRACE: Duration = Duration::from_secs(30);

/// `call`, or a timeout error (an I/O error, as for a database that cannot be reached) once
/// `limit` passed without an answer; `what` says what was waited for.
pub async fn answered_within<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the database did not answer within {limit:?}{what}"),
        )))
    })
}

/// What a check of a held lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Still held.
    Held,
    /// Gone: the session holding it ended (a database restart, a connection cut).
    Lost,
    /// No answer within [`LEASE_CHECK_TIMEOUT`]: maybe held, maybe not.
    Unconfirmed,
}

impl Lease {
    /// Whether the lease still holds: for Postgres, whether the connection that holds the lock
    /// answers (a database restart ends the session and frees the lock for another monitor).
    pub async fn state(&mut self) -> LeaseState {
        match self {
            Lease::Postgres(conn) => {
                match tokio::time::timeout(LEASE_CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(conn)).await {
                    Ok(Ok(_)) => LeaseState::Held,
                    Ok(Err(_)) => LeaseState::Lost,
                    Err(_) => LeaseState::Unconfirmed,
                }
            }
            Lease::File(_) | Lease::Local => LeaseState::Held,
        }
    }

    /// True while the lease is known to hold ([`Lease::state`]).
    pub async fn held(&mut self) -> bool {
        self.state().await == LeaseState::Held
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lease::Postgres(_) => "Lease::Postgres",
            Lease::File(_) => "Lease::File",
            Lease::Local => "Lease::Local",
        })
    }
}

/// The outcome of one webhook delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Acknowledged by the receiver.
    Delivered,
    /// Failed; tried again later.
    Failed(String),
    /// Failed for the last time: the event is no longer offered for notification (it stays in
    /// the history with its attempts and error).
    Abandoned(String),
}

impl Delivery {
    /// (delivered, abandoned, error) as stored.
    fn columns(self) -> (bool, bool, String) {
        match self {
            Delivery::Delivered => (true, false, String::new()),
            Delivery::Failed(e) => (false, false, e),
            Delivery::Abandoned(e) => (false, true, e),
        }
    }
}

/// Merges a stored rollup body with a delta (both encoded `RollupWindow`s) into the first.
pub type MergeFn = dyn Fn(&mut Vec<u8>, &[u8]) + Send + Sync;

/// Rollups: the upkeep cursor, the predictions it reads, the merged windows it writes.
pub trait RollupStore: Clone + Send + Sync + 'static {
    /// Where rollup upkeep stands (0 before the first run).
    fn rollup_cursor(&self) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
    /// Up to about `max_rows` committed predictions after `cursor`, in commit order. A batch never
    /// splits one logger transaction, and never includes one still running. The batch is empty
    /// only when nothing after the cursor can be read yet (the cursor may still move).
    fn read_for_rollup(
        &self,
        cursor: i64,
        max_rows: usize,
    ) -> impl Future<Output = Result<RollupBatch, sqlx::Error>> + Send;
    /// In one transaction: merges every delta into its stored rollup and moves the cursor from
    /// `cursor` to `next_cursor`. Returns false, changing nothing, when the cursor had moved.
    fn apply_rollups(
        &self,
        cursor: i64,
        next_cursor: i64,
        deltas: Vec<StoredRollup>,
        merge: &MergeFn,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
    /// Stored rollups of one resolution in [since, until), by window start.
    fn read_rollups(&self, q: &RollupQuery) -> impl Future<Output = Result<Vec<StoredRollup>, sqlx::Error>> + Send;
    /// Every (model, version) with rollups of `resolution_s` (the coarsest kept: it holds
    /// every prediction, in the fewest rows) in windows starting at or after `since`.
    fn rollup_models(
        &self,
        resolution_s: u32,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<(String, String)>, sqlx::Error>> + Send;
}

/// What happened after predictions: their labels and the feedback on them.
pub trait OutcomeStore: Clone + Send + Sync + 'static {
    /// Predictions the query covers that have labels, counted by window, answer and latest
    /// label.
    fn labeled_counts(&self, q: &OutcomeQuery) -> impl Future<Output = Result<Vec<LabeledCount>, sqlx::Error>> + Send;
    /// Feedback events on the predictions the query covers, counted by window and kind.
    fn feedback_counts(&self, q: &OutcomeQuery)
    -> impl Future<Output = Result<Vec<FeedbackCount>, sqlx::Error>> + Send;
    /// A model's shadow answers in the query's range (those of the query's version alone, when
    /// given; its variant is not used), each paired with the primary's answer to the same
    /// item: same trace id, and the same rank among the request's items (prediction ids are
    /// time-ordered UUIDv7, made in item order). Counted by window and shadow version.
    fn shadow_counts(&self, q: &OutcomeQuery) -> impl Future<Output = Result<Vec<ShadowCount>, sqlx::Error>> + Send;
    /// The logged predictions among `ids` (unknown ids are absent).
    fn prediction_refs(&self, ids: &[Uuid]) -> impl Future<Output = Result<Vec<PredictionRef>, sqlx::Error>> + Send;
}

/// Alarm states, their transitions and the delivery of their notifications.
pub trait AlertStore: Clone + Send + Sync + 'static {
    /// Every alarm's current state.
    fn load_alerts(&self) -> impl Future<Output = Result<Vec<AlertRow>, sqlx::Error>> + Send;
    /// Stores an alarm's new state and, in the same transaction, the transition into history
    /// (to be notified when `notify`).
    fn save_alert(&self, alert: &AlertRow, notify: bool) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Transitions whose notification is not yet acknowledged, oldest first.
    fn unsent_alert_events(&self, limit: i64) -> impl Future<Output = Result<Vec<AlertEvent>, sqlx::Error>> + Send;
    /// Records a delivery attempt and its outcome.
    fn mark_alert_event(
        &self,
        event_id: i64,
        outcome: Delivery,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Stored transitions of every alarm, newest first.
    fn alert_history(&self, limit: i64) -> impl Future<Output = Result<Vec<AlertEvent>, sqlx::Error>> + Send;
}

/// Leases that let exactly one monitor act (evaluate alarms, notify).
pub trait LeaseStore: Clone + Send + Sync + 'static {
    /// Takes the lease named `role` if no other holder has it; None when another monitor does.
    fn try_lease(&self, role: &str) -> impl Future<Output = Result<Option<Lease>, sqlx::Error>> + Send;
}

/// The monitoring side of a store: every focused trait at once, with the review queue (its
/// depth, age and reviewers' decisions), and the registry and deployments (the audit log, and
/// the control plane servers follow, and retention).
pub trait MonitorStore:
    RollupStore
    + OutcomeStore
    + AlertStore
    + LeaseStore
    + crate::ReviewStore
    + crate::RegistryStore
    + crate::DeploymentStore
    + crate::RolloutStore
    + crate::RetrainStore
    + crate::CaptureBoostStore
    + crate::RetentionStore
{
}

impl<S> MonitorStore for S where
    S: RollupStore
        + OutcomeStore
        + AlertStore
        + LeaseStore
        + crate::ReviewStore
        + crate::RegistryStore
        + crate::DeploymentStore
        + crate::RolloutStore
        + crate::RetrainStore
        + crate::CaptureBoostStore
        + crate::RetentionStore
{
}

/// Rows per rollup upkeep step when the caller does not say.
pub const DEFAULT_ROLLUP_CHUNK: usize = 20_000;

/// Binds an alarm's ten columns, in the order of the `alerts` table.
macro_rules! bind_alert {
    ($q:expr, $a:expr) => {
        $q.bind(&$a.alert_key)
            .bind(&$a.rule)
            .bind(&$a.model_name)
            .bind(&$a.metric)
            .bind(&$a.severity)
            .bind(&$a.state)
            .bind($a.value)
            .bind($a.threshold)
            .bind($a.since)
            .bind(&$a.message)
    };
}
use bind_alert;

/// Every (model, version) with rollups of resolution `$1` in windows starting at or after
/// `$2` (the `rollups_resolution_window` index).
const ROLLUP_MODELS: &str = "SELECT DISTINCT model_name, model_version FROM rollups \
     WHERE resolution_s = $1 AND window_start >= $2 ORDER BY 1, 2";
