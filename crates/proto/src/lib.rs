//! Generated code for Vigil's gRPC contracts.
//!
//! - [`inference`]: the Open Inference Protocol v2 (KServe / Triton `GRPCInferenceService`).
//! - [`vigil::v1`]: Vigil's own APIs (inspection, ...).

#![allow(clippy::all, missing_docs)]

/// Open Inference Protocol v2, wire-compatible with Triton's superset.
pub mod inference {
    tonic::include_proto!("inference");
}

/// Vigil's own APIs.
pub mod vigil {
    /// Version 1 of Vigil's APIs.
    pub mod v1 {
        tonic::include_proto!("vigil.v1");
    }
}

/// Encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vigil_descriptor");
