//! Versioned topic names. A new incompatible record schema gets a new topic.

/// Every prediction (`PredictionRecord`), keyed by station or session id.
pub const PREDICTIONS: &str = "vigil.predictions.v1";
/// Behaviour after predictions (`FeedbackEvent`), keyed by prediction id.
pub const FEEDBACK: &str = "vigil.feedback.v1";
/// Late ground truth (`LabelEvent`), keyed by prediction id.
pub const LABELS: &str = "vigil.labels.v1";
/// Messages a consumer could not decode, with the reason in a header.
pub const DEAD_LETTER: &str = "vigil.deadletter.v1";

/// All topics, for creation at set-up.
pub const ALL: [&str; 4] = [PREDICTIONS, FEEDBACK, LABELS, DEAD_LETTER];
