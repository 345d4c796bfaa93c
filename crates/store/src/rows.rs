//! Rows decoded from Kafka record bodies, checked before they reach SQL.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use vigil_proto::TIMESTAMP_SECONDS;
use vigil_proto::vigil::v1::{FeedbackEvent, LabelEvent, PredictionRecord};

/// Schema versions of record bodies this code understands.
pub const SUPPORTED_SCHEMA_VERSION: u32 = 1;

/// A record that cannot become a row; the reason goes to the dead-letter topic.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RowError {
    #[error("schema version {0} is not supported (this logger reads version {SUPPORTED_SCHEMA_VERSION})")]
    SchemaVersion(u32),
    #[error("{field} is invalid: {reason}")]
    Field { field: &'static str, reason: String },
}

fn uuid_field(field: &'static str, value: &str) -> Result<Uuid, RowError> {
    // The value quoted escaped and cut short: a reason is stored as text, which takes no NUL.
    let quoted = |value: &str| format!("{:?}", value.chars().take(64).collect::<String>());
    Uuid::parse_str(value).map_err(|e| RowError::Field { field, reason: format!("{}: {e}", quoted(value)) })
}

fn time(ts: &Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.as_ref()
        .filter(|t| TIMESTAMP_SECONDS.contains(&t.seconds))
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32))
}

/// Longest identifier a row takes (station, device, part, request, trace, model, ...), in bytes:
/// the servers' own limit; well under what a Postgres index row holds.
pub const MAX_ID_BYTES: usize = 256;

/// Longest capture key a row takes, in bytes.
pub const MAX_CAPTURE_KEY_BYTES: usize = 1024;

/// Text of at most `max` bytes that Postgres can hold (see [`text`]).
fn short_text(field: &'static str, value: &str, max: usize) -> Result<(), RowError> {
    if value.len() > max {
        return Err(RowError::Field { field, reason: format!("is {} bytes long; the limit is {max}", value.len()) });
    }
    text(field, value)
}

/// Postgres text and jsonb cannot hold a NUL character: such a record is refused here, with the
/// field named, instead of failing its whole batch's insert again and again.
pub(crate) fn text(field: &'static str, value: &str) -> Result<(), RowError> {
    match value.find('\0') {
        Some(at) => Err(RowError::Field { field, reason: format!("holds a NUL character at byte {at}") }),
        None => Ok(()),
    }
}

/// One row of `predictions`.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRow {
    pub prediction_id: Uuid,
    pub time: DateTime<Utc>,
    pub request_time: Option<DateTime<Utc>>,
    pub capture_time: Option<DateTime<Utc>>,
    pub trace_id: String,
    pub server_id: String,
    pub station_id: String,
    pub device_id: String,
    pub part_id: String,
    pub request_id: String,
    pub api: String,
    /// The pipeline step ("vad", "asr", "search"); empty for a single-model request.
    pub stage: String,
    pub model_name: String,
    pub model_version: String,
    pub variant: i16,
    pub deployment_id: String,
    /// JSON object: feature name -> number, category string, or null when missing.
    pub features: serde_json::Value,
    /// JSON object: label, scores.
    pub output: serde_json::Value,
    pub score: Option<f32>,
    pub output_null: bool,
    pub verdict: i16,
    pub decision: i16,
    pub queue_time_us: i64,
    pub compute_time_us: i64,
    pub status: i16,
    pub error: String,
    /// The captured raw input's object key; empty when not captured.
    pub capture: String,
}

impl PredictionRow {
    /// Checks and converts a record; the error names the bad field.
    pub fn from_record(r: &PredictionRecord) -> Result<Self, RowError> {
        if r.schema_version != SUPPORTED_SCHEMA_VERSION {
            return Err(RowError::SchemaVersion(r.schema_version));
        }
        let prediction_id = uuid_field("prediction_id", &r.prediction_id)?;
        if r.model_name.is_empty() {
            return Err(RowError::Field { field: "model_name", reason: "empty".into() });
        }
        let response_time = time(&r.response_time)
            .ok_or(RowError::Field { field: "response_time", reason: "missing or out of range".into() })?;
        for (field, value) in [
            ("trace_id", &r.trace_id),
            ("server_id", &r.server_id),
            ("station_id", &r.station_id),
            ("device_id", &r.device_id),
            ("part_id", &r.part_id),
            ("request_id", &r.request_id),
            ("api", &r.api),
            ("stage", &r.stage),
            ("model_name", &r.model_name),
            ("model_version", &r.model_version),
            ("deployment_id", &r.deployment_id),
        ] {
            short_text(field, value, MAX_ID_BYTES)?;
        }
        short_text("capture", &r.capture, MAX_CAPTURE_KEY_BYTES)?;
        text("error", &r.error)?;
        let out = r.output.clone().unwrap_or_default();
        // Enumerations are stored as smallint: a value past it is refused, never wrapped into
        // another one.
        let small = |field: &'static str, value: i32| {
            i16::try_from(value).map_err(|_| RowError::Field { field, reason: format!("{value} is not a known value") })
        };
        let (variant, verdict, decision, status) = (
            small("variant", r.variant)?,
            small("output.verdict", out.verdict)?,
            small("decision", r.decision)?,
            small("status", r.status)?,
        );
        for f in &r.features {
            text("features.name", &f.name)?;
            text("features.category", &f.category)?;
        }
        if let Some(out) = &r.output {
            text("output.label", &out.label)?;
            text("output.text", &out.text)?;
            for c in &out.class_scores {
                text("output.class_scores.name", &c.name)?;
            }
        }
        let mut features = serde_json::Map::new();
        for f in &r.features {
            let value = if f.missing {
                serde_json::Value::Null
            } else if !f.category.is_empty() {
                serde_json::Value::String(f.category.clone())
            } else {
                serde_json::Number::from_f64(f.value).map_or(serde_json::Value::Null, serde_json::Value::Number)
            };
            features.insert(f.name.clone(), value);
        }
        let number =
            |s: f32| serde_json::Number::from_f64(s as f64).map_or(serde_json::Value::Null, serde_json::Value::Number);
        let scores: Vec<serde_json::Value> = out.scores.iter().map(|&s| number(s)).collect();
        let score = headline_score(&out.scores);
        let mut output = serde_json::json!({ "label": out.label, "scores": scores });
        if !out.class_scores.is_empty() {
            let classes = out.class_scores.iter().map(|c| (c.name.clone(), number(c.score))).collect();
            output["classes"] = serde_json::Value::Object(classes);
        }
        if !out.text.is_empty() {
            output["text"] = serde_json::Value::String(out.text.clone());
        }
        Ok(Self {
            prediction_id,
            time: response_time,
            request_time: time(&r.request_time),
            capture_time: time(&r.capture_time),
            trace_id: r.trace_id.clone(),
            server_id: r.server_id.clone(),
            station_id: r.station_id.clone(),
            device_id: r.device_id.clone(),
            part_id: r.part_id.clone(),
            request_id: r.request_id.clone(),
            api: r.api.clone(),
            stage: r.stage.clone(),
            capture: r.capture.clone(),
            model_name: r.model_name.clone(),
            model_version: r.model_version.clone(),
            variant,
            deployment_id: r.deployment_id.clone(),
            features: serde_json::Value::Object(features),
            output,
            score,
            output_null: out.is_null
                || (r.status == 1 && score.is_none() && out.text.is_empty() && !model_not_consulted(r)),
            verdict,
            decision,
            queue_time_us: r.queue_time_us.min(i64::MAX as u64) as i64,
            compute_time_us: r.compute_time_us.min(i64::MAX as u64) as i64,
            status,
            error: r.error.clone(),
        })
    }
}

/// One row of `labels`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow {
    pub label_id: Uuid,
    pub prediction_id: Uuid,
    pub label: String,
    pub time: DateTime<Utc>,
    pub source: String,
}

impl LabelRow {
    /// Checks and converts a label event.
    pub fn from_event(e: &LabelEvent) -> Result<Self, RowError> {
        if e.schema_version != SUPPORTED_SCHEMA_VERSION {
            return Err(RowError::SchemaVersion(e.schema_version));
        }
        if e.label.is_empty() {
            return Err(RowError::Field { field: "label", reason: "empty".into() });
        }
        text("label", &e.label)?;
        short_text("source", &e.source, MAX_ID_BYTES)?;
        Ok(Self {
            label_id: uuid_field("label_id", &e.label_id)?,
            prediction_id: uuid_field("prediction_id", &e.prediction_id)?,
            label: e.label.clone(),
            time: time(&e.time).ok_or(RowError::Field { field: "time", reason: "missing or out of range".into() })?,
            source: e.source.clone(),
        })
    }
}

/// One row of `dead_letters`: a record a logger could not decode, kept with the reason.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeadLetterRow {
    pub id: Uuid,
    pub time: DateTime<Utc>,
    /// The topic (or bus channel) it came from.
    pub topic: String,
    /// Where exactly: `topic/partition/offset`.
    pub source: String,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// One row of `feedback`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackRow {
    pub event_id: Uuid,
    pub prediction_id: Uuid,
    pub kind: String,
    pub value: String,
    pub session_id: String,
    pub time: DateTime<Utc>,
}

impl FeedbackRow {
    /// Checks and converts a feedback event.
    pub fn from_event(e: &FeedbackEvent) -> Result<Self, RowError> {
        if e.schema_version != SUPPORTED_SCHEMA_VERSION {
            return Err(RowError::SchemaVersion(e.schema_version));
        }
        if e.kind.is_empty() {
            return Err(RowError::Field { field: "kind", reason: "empty".into() });
        }
        short_text("kind", &e.kind, MAX_ID_BYTES)?;
        text("value", &e.value)?;
        short_text("session_id", &e.session_id, MAX_ID_BYTES)?;
        Ok(Self {
            event_id: uuid_field("event_id", &e.event_id)?,
            prediction_id: uuid_field("prediction_id", &e.prediction_id)?,
            kind: e.kind.clone(),
            value: e.value.clone(),
            session_id: e.session_id.clone(),
            time: time(&e.time).ok_or(RowError::Field { field: "time", reason: "missing or out of range".into() })?,
        })
    }
}

/// The one number an output is watched by (score charts, drift, rollouts): its only score, the
/// second of two (a binary classifier's positive class), or the highest of more (the predicted
/// class's probability); None when any score is not finite.
pub fn headline_score(scores: &[f32]) -> Option<f32> {
    if scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    match scores {
        [] => None,
        [one] => Some(*one),
        [_, positive] => Some(*positive),
        many => many.iter().copied().reduce(f32::max),
    }
}

/// Whether the policy kept the model out of the decision (`human_only`): no output is expected,
/// so none missing is a null output.
fn model_not_consulted(r: &PredictionRecord) -> bool {
    r.review.as_ref().is_some_and(|review| review.policy == "human_only")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::vigil::v1::{ClassScore, Feature, PredictionOutput, ReviewRequest};

    fn record() -> PredictionRecord {
        PredictionRecord {
            schema_version: 1,
            prediction_id: Uuid::now_v7().to_string(),
            response_time: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 5 }),
            model_name: "m".into(),
            model_version: "1".into(),
            status: 1,
            features: vec![
                Feature { name: "brightness".into(), value: 120.5, ..Default::default() },
                Feature { name: "x".into(), missing: true, ..Default::default() },
            ],
            output: Some(PredictionOutput { label: "defect".into(), scores: vec![0.75], ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn converts_features_outputs_and_times() {
        let row = PredictionRow::from_record(&record()).unwrap();
        assert_eq!(row.features, serde_json::json!({ "brightness": 120.5, "x": null }));
        assert_eq!(row.output, serde_json::json!({ "label": "defect", "scores": [0.75] }));
        assert_eq!(row.score, Some(0.75));
        assert!(!row.output_null);
        assert_eq!(row.time.timestamp(), 1_800_000_000);
    }

    #[test]
    fn refuses_unknown_schema_versions_and_bad_ids() {
        let mut r = record();
        r.schema_version = 2;
        assert_eq!(PredictionRow::from_record(&r).unwrap_err(), RowError::SchemaVersion(2));
        let mut r = record();
        r.prediction_id = "nope".into();
        assert!(PredictionRow::from_record(&r).unwrap_err().to_string().starts_with("prediction_id is invalid"));
        // The reason is stored as text: a NUL in the id is escaped, a long id cut short.
        r.prediction_id = format!("a\0b{}", "x".repeat(10_000));
        let reason = PredictionRow::from_record(&r).unwrap_err().to_string();
        assert!(!reason.contains('\0') && reason.contains("a\\0b") && reason.len() < 200, "{reason}");
        let mut r = record();
        r.response_time = None;
        assert!(PredictionRow::from_record(&r).unwrap_err().to_string().contains("response_time"));
    }

    #[test]
    fn enumerations_past_smallint_and_review_text_postgres_cannot_hold_are_refused() {
        let mut r = record();
        r.variant = 65_537;
        let e = PredictionRow::from_record(&r).unwrap_err().to_string();
        assert_eq!(e, "variant is invalid: 65537 is not a known value", "never wrapped into variant 1");
        let mut r = record();
        r.output.as_mut().unwrap().verdict = -40_000;
        assert!(PredictionRow::from_record(&r).unwrap_err().to_string().starts_with("output.verdict"));
        let mut r = record();
        r.review = Some(ReviewRequest { policy: "unsure".into(), reason: "low\0score".into(), ..Default::default() });
        let e = crate::ReviewItem::from_record(&r).unwrap().unwrap_err().to_string();
        assert_eq!(e, "review.reason is invalid: holds a NUL character at byte 3");
        r.review.as_mut().unwrap().reason = "low score".into();
        assert!(crate::ReviewItem::from_record(&r).unwrap().is_ok());
    }

    #[test]
    fn what_postgres_cannot_store_is_refused_with_the_field_named() {
        let mut r = record();
        r.station_id = "a\0b".into();
        let e = PredictionRow::from_record(&r).unwrap_err().to_string();
        assert_eq!(e, "station_id is invalid: holds a NUL character at byte 1");
        // Identifiers longer than the servers take (an index row could not hold a long one).
        let mut r = record();
        r.trace_id = "t".repeat(MAX_ID_BYTES);
        assert!(PredictionRow::from_record(&r).is_ok(), "at the limit");
        r.trace_id.push('t');
        let e = PredictionRow::from_record(&r).unwrap_err().to_string();
        assert_eq!(e, "trace_id is invalid: is 257 bytes long; the limit is 256");
        let mut r = record();
        r.features[0].name = "bright\0ness".into();
        assert!(PredictionRow::from_record(&r).unwrap_err().to_string().starts_with("features.name"));
        let mut r = record();
        r.output.as_mut().unwrap().label = "\0".into();
        assert!(PredictionRow::from_record(&r).unwrap_err().to_string().starts_with("output.label"));
        // Past year 9999 (chrono would take it, Postgres would not).
        let mut r = record();
        r.response_time = Some(prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 });
        assert!(PredictionRow::from_record(&r).unwrap_err().to_string().starts_with("response_time"));
        let mut r = record();
        r.response_time = Some(prost_types::Timestamp { seconds: -300_000_000_000, nanos: 0 });
        assert!(PredictionRow::from_record(&r).unwrap_err().to_string().starts_with("response_time"));
        // An optional time out of range is left out, as one chrono cannot represent always was.
        let mut r = record();
        r.capture_time = Some(prost_types::Timestamp { seconds: -300_000_000_000, nanos: 0 });
        assert_eq!(PredictionRow::from_record(&r).unwrap().capture_time, None);
        let last = Some(prost_types::Timestamp { seconds: 253_402_300_799, nanos: 0 });
        let mut r = record();
        r.capture_time = last;
        assert_eq!(
            PredictionRow::from_record(&r).unwrap().capture_time.unwrap().to_rfc3339(),
            "9999-12-31T23:59:59+00:00"
        );

        let label = LabelEvent {
            schema_version: 1,
            label_id: Uuid::now_v7().to_string(),
            prediction_id: Uuid::now_v7().to_string(),
            label: "def\0ect".into(),
            time: r.response_time,
            source: String::new(),
        };
        assert!(LabelRow::from_event(&label).unwrap_err().to_string().starts_with("label is invalid"));
        let feedback = FeedbackEvent {
            schema_version: 1,
            event_id: Uuid::now_v7().to_string(),
            prediction_id: Uuid::now_v7().to_string(),
            kind: "click".into(),
            value: "P-1@1".into(),
            session_id: "s\0".into(),
            time: r.response_time,
        };
        assert!(FeedbackRow::from_event(&feedback).unwrap_err().to_string().starts_with("session_id is invalid"));
    }

    #[test]
    fn the_headline_score_is_the_positive_class_or_the_predicted_one() {
        assert_eq!(headline_score(&[0.75]), Some(0.75));
        assert_eq!(headline_score(&[0.9, 0.1]), Some(0.1), "a binary classifier's positive class");
        assert_eq!(headline_score(&[0.2, 0.5, 0.3]), Some(0.5), "the predicted class's probability");
        assert_eq!(headline_score(&[]), None);
        assert_eq!(headline_score(&[0.5, f32::NAN]), None);
        assert_eq!(headline_score(&[f32::NAN, 0.5]), None);
    }

    #[test]
    fn class_scores_and_text_join_the_output_when_present() {
        let mut r = record();
        let output = r.output.as_mut().unwrap();
        output.class_scores =
            vec![ClassScore { name: "ok".into(), score: 0.25 }, ClassScore { name: "defect".into(), score: 0.75 }];
        let row = PredictionRow::from_record(&r).unwrap();
        let expected =
            serde_json::json!({ "label": "defect", "scores": [0.75], "classes": { "ok": 0.25, "defect": 0.75 } });
        assert_eq!(row.output, expected);
        let mut r = record();
        r.output = Some(PredictionOutput { text: "red shoes".into(), ..Default::default() });
        let row = PredictionRow::from_record(&r).unwrap();
        assert_eq!(row.output, serde_json::json!({ "label": "", "scores": [], "text": "red shoes" }));
        assert!(!row.output_null, "a transcript is an output");
    }

    #[test]
    fn an_ok_record_without_scores_is_a_null_output() {
        let mut r = record();
        r.output = None;
        assert!(PredictionRow::from_record(&r).unwrap().output_null);
    }

    #[test]
    fn an_item_the_model_was_not_asked_about_is_no_null_output() {
        let mut r = record();
        r.output = None;
        r.review = Some(ReviewRequest { policy: "human_only".into(), ..Default::default() });
        assert!(!PredictionRow::from_record(&r).unwrap().output_null);
        r.review = Some(ReviewRequest { policy: "partial".into(), ..Default::default() });
        assert!(PredictionRow::from_record(&r).unwrap().output_null, "the model was asked and said nothing");
    }
}
