//! What Vigil's prediction servers share: the Open Inference Protocol v2 service, the
//! inspection API, the decision policy, and the admission layer (load shedding, deadlines).

pub mod admission;
pub mod decision;
pub mod inspection;
pub mod oip;
pub mod records;
pub mod status;

pub use admission::{AdmissionLayer, AdmissionLimits};
pub use inspection::InspectionService;
pub use oip::InferenceService;
pub use records::RecordEmitter;
