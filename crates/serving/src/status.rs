//! Maps inference errors to precise gRPC statuses.

use tonic::Status;
use vigil_inference::InferenceError;

/// INVALID_ARGUMENT for bad input, NOT_FOUND for unknown models, UNAVAILABLE when not loaded,
/// RESOURCE_EXHAUSTED for full queues, INTERNAL for execution failures, FAILED_PRECONDITION for
/// configuration problems.
pub fn to_status(error: InferenceError) -> Status {
    match error {
        InferenceError::InvalidInput(m) => Status::invalid_argument(m),
        InferenceError::NotFound(m) => Status::not_found(m),
        InferenceError::Unavailable(m) => Status::unavailable(m),
        InferenceError::QueueFull(m) => Status::resource_exhausted(m),
        e @ InferenceError::Runtime(_) => Status::internal(e.to_string()),
        InferenceError::Config(m) => Status::failed_precondition(m),
    }
}
