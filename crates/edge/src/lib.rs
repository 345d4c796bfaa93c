//! `vigil-edge`, the edge prediction server: the Open Inference Protocol v2 and the
//! inspection API on one port, with health, reflection, admission limits and graceful shutdown.

pub mod config;
pub mod server;

pub use config::EdgeConfig;
pub use server::{RunningServer, start, start_with};
