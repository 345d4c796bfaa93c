//! Record transport for Vigil: topic names, the Kafka producer settings, and the [`Emitter`],
//! a bounded queue between request handlers and the broker so that a slow or absent broker
//! never delays an answer.

pub mod emitter;
pub mod in_process;
pub mod kafka;
pub mod kafka_security;
pub mod spool;
mod spool_actor;
pub mod topics;

pub use emitter::{Emitter, EmitterStats, Envelope, Sink, SinkError};
