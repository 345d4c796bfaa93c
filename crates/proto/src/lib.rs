//! Generated code for Vigil's gRPC contracts.
//!
//! - [`inference`]: the Open Inference Protocol v2 (KServe / Triton `GRPCInferenceService`).
//! - [`vigil::v1`]: Vigil's own APIs (inspection, ...).

/// Open Inference Protocol v2, wire-compatible with Triton's superset.
#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// Vigil's own APIs.
#[allow(clippy::all, missing_docs)]
pub mod vigil {
    /// Version 1 of Vigil's APIs.
    pub mod v1 {
        tonic::include_proto!("vigil.v1");
    }
}

pub mod codec;
pub mod footprint;

/// Encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vigil_descriptor");

/// The seconds a `google.protobuf.Timestamp` may hold: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z, as its definition says (all of which Postgres stores too).
pub const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
