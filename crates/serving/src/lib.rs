//! What Vigil's prediction servers share: the Open Inference Protocol v2 service, the
//! inspection API, the decision policy, the admission layer (load shedding, deadlines), and
//! the Prometheus metrics of requests, batching and prediction records.

pub mod admission;
pub mod capture;
pub mod decision;
pub mod deployment;
pub mod ids;
pub mod infer;
pub mod inspection;
pub mod log_policy;
pub mod metrics;
pub mod oip;
pub mod records;
pub mod request_metrics;
pub mod status;

pub use admission::{AdmissionLayer, AdmissionLimits, Deadline};
pub use deployment::{Deployment, DeploymentRouter, Mode};
pub use infer::{Infer, Route, Router, ShadowLane, ShadowPlan, StaticRouter};
pub use inspection::InspectionService;
pub use metrics::ServingMetrics;
pub use oip::InferenceService;
pub use records::RecordEmitter;
pub use request_metrics::{RequestMetricsLayer, ServedBy};
