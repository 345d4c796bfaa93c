//! Turns every prediction into a `PredictionRecord` and hands it to the emitter, off the
//! request's critical path (a full queue drops and counts; the answer never waits).

use std::time::SystemTime;

use prost::Message;
use vigil_logbus::{Emitter, Envelope, topics};
use vigil_proto::vigil::v1::{Feature, InspectResponse, PredictionOutput, PredictionRecord, RecordStatus, Variant};

/// Schema version written into every record body.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a server's prediction records go.
#[derive(Clone)]
pub struct RecordEmitter {
    emitter: Emitter,
    server_id: String,
}

/// What a request was, for its record.
pub struct RequestContext<'a> {
    pub station_id: &'a str,
    pub part_id: &'a str,
    pub request_id: &'a str,
    pub capture_time: Option<prost_types::Timestamp>,
    pub request_time: SystemTime,
    pub model_name: &'a str,
}

impl RecordEmitter {
    /// Records from this server carry `server_id`.
    pub fn new(emitter: Emitter, server_id: impl Into<String>) -> Self {
        Self { emitter, server_id: server_id.into() }
    }

    /// The emitter's counters.
    pub fn emitter(&self) -> &Emitter {
        &self.emitter
    }

    /// Records an answered inspection.
    pub fn inspected(&self, ctx: &RequestContext<'_>, r: &InspectResponse, label: &str) {
        let features = r
            .features
            .as_ref()
            .map(|f| {
                vec![
                    feature("brightness", f.brightness),
                    feature("contrast", f.contrast),
                    feature("sharpness", f.sharpness),
                    feature("width", f.width as f64),
                    feature("height", f.height as f64),
                ]
            })
            .unwrap_or_default();
        let record = PredictionRecord {
            prediction_id: r.prediction_id.clone(),
            model_name: r.model_name.clone(),
            model_version: r.model_version.clone(),
            features,
            output: Some(PredictionOutput {
                label: label.to_string(),
                scores: vec![r.defect_probability],
                is_null: false,
                verdict: r.verdict,
            }),
            decision: r.decision,
            queue_time_us: r.queue_time_us,
            compute_time_us: r.compute_time_us,
            status: RecordStatus::Ok as i32,
            ..self.base(ctx)
        };
        self.send(ctx.station_id, record);
    }

    /// Records a refused or failed inspection: the input counts as missing.
    pub fn failed(&self, ctx: &RequestContext<'_>, prediction_id: String, status: &tonic::Status) {
        let invalid = status.code() == tonic::Code::InvalidArgument;
        let record = PredictionRecord {
            prediction_id,
            model_name: ctx.model_name.to_string(),
            features: vec![Feature { name: "image".into(), missing: true, ..Default::default() }],
            output: Some(PredictionOutput { is_null: true, ..Default::default() }),
            status: if invalid { RecordStatus::InvalidInput } else { RecordStatus::Error } as i32,
            error: format!("{:?}: {}", status.code(), status.message()),
            ..self.base(ctx)
        };
        self.send(ctx.station_id, record);
    }

    fn base(&self, ctx: &RequestContext<'_>) -> PredictionRecord {
        PredictionRecord {
            schema_version: SCHEMA_VERSION,
            request_time: Some(ctx.request_time.into()),
            response_time: Some(SystemTime::now().into()),
            capture_time: ctx.capture_time,
            server_id: self.server_id.clone(),
            station_id: ctx.station_id.to_string(),
            part_id: ctx.part_id.to_string(),
            request_id: ctx.request_id.to_string(),
            variant: Variant::Primary as i32,
            api: "inspect".into(),
            ..Default::default()
        }
    }

    fn send(&self, key: &str, record: PredictionRecord) {
        self.emitter.emit(Envelope {
            topic: topics::PREDICTIONS.to_string(),
            key: key.to_string(),
            payload: record.encode_to_vec(),
        });
    }
}

fn feature(name: &str, value: f64) -> Feature {
    Feature { name: name.into(), value, missing: !value.is_finite(), category: String::new() }
}
