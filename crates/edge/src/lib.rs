//! `vigil-edge`, the edge prediction server: the Open Inference Protocol v2 and the
//! inspection API on one port, with health, reflection, admission limits and graceful shutdown,
//! and Prometheus metrics at `/metrics` on a second, HTTP port.

pub mod config;
pub mod server;

pub use config::{EdgeConfig, MetricsConfig};
pub use server::{RunningServer, start, start_with};
