//! `vigil-server`, the host every Vigil server binary runs on: the configuration sections they
//! share, the gRPC listener with health and reflection, the model repository and its watch,
//! prediction records, the `/metrics` endpoint, and one [`Lifecycle`] that starts their tasks
//! and stops them in order; [`prediction::start`] puts them together into a prediction server
//! serving OIP v2, to which each binary adds its own APIs.

pub mod cli;
pub mod config;
pub mod control;
pub mod deployments;
mod fetch;
pub mod grpc;
pub mod lifecycle;
pub mod models;
pub mod prediction;
pub mod records;

pub use config::{Limits, LoggingConfig, MetricsConfig, ModelOptions};
pub use deployments::DeploymentsConfig;
pub use grpc::{GrpcHost, serve_metrics};
pub use lifecycle::{Lifecycle, StopSignal};
pub use prediction::{RunningServer, ServerApis, ServerSettings, Serving};
