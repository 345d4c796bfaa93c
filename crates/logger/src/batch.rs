//! Decoding one batch of messages into rows and dead letters (pure; no I/O).

use prost::Message;
use vigil_logbus::topics;
use vigil_proto::vigil::v1::{FeedbackEvent, LabelEvent, PredictionRecord};
use vigil_store::{FeedbackRow, LabelRow, PredictionRow, ReviewItem};

/// A message as consumed.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// A message that cannot become a row, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: Consumed,
    pub reason: String,
}

impl DeadLetter {
    /// Where the message came from: `topic/partition/offset`.
    pub fn source(&self) -> String {
        format!("{}/{}/{}", self.message.topic, self.message.partition, self.message.offset)
    }
}

/// The rows and dead letters of a batch.
#[derive(Debug, Default)]
pub struct Decoded {
    pub predictions: Vec<PredictionRow>,
    pub labels: Vec<LabelRow>,
    pub feedback: Vec<FeedbackRow>,
    /// Items of the predictions that go to a person.
    pub reviews: Vec<ReviewItem>,
    pub dead: Vec<DeadLetter>,
    /// The message (its index in the batch) each row came from, row for row: where a row the
    /// database refuses is dead-lettered from.
    pub prediction_sources: Vec<usize>,
    pub label_sources: Vec<usize>,
    pub feedback_sources: Vec<usize>,
    pub review_sources: Vec<usize>,
}

/// Decodes every message by its topic.
pub fn decode(messages: &[Consumed]) -> Decoded {
    let mut out = Decoded::default();
    for (index, m) in messages.iter().enumerate() {
        let payload = m.payload.as_deref().unwrap_or_default();
        let result = match m.topic.as_str() {
            topics::PREDICTIONS => {
                PredictionRecord::decode(payload).map_err(|e| format!("not a PredictionRecord: {e}")).and_then(|r| {
                    let row = PredictionRow::from_record(&r).map_err(|e| e.to_string())?;
                    if let Some(review) = ReviewItem::from_record(&r) {
                        out.reviews.push(review.map_err(|e| e.to_string())?);
                        out.review_sources.push(index);
                    }
                    out.predictions.push(row);
                    out.prediction_sources.push(index);
                    Ok(())
                })
            }
            topics::LABELS => LabelEvent::decode(payload)
                .map_err(|e| format!("not a LabelEvent: {e}"))
                .and_then(|e| LabelRow::from_event(&e).map_err(|e| e.to_string()))
                .map(|row| {
                    out.labels.push(row);
                    out.label_sources.push(index);
                }),
            topics::FEEDBACK => FeedbackEvent::decode(payload)
                .map_err(|e| format!("not a FeedbackEvent: {e}"))
                .and_then(|e| FeedbackRow::from_event(&e).map_err(|e| e.to_string()))
                .map(|row| {
                    out.feedback.push(row);
                    out.feedback_sources.push(index);
                }),
            other => Err(format!("no handler for topic {other}")),
        };
        if let Err(reason) = result {
            out.dead.push(DeadLetter { message: m.clone(), reason });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: Vec<u8>) -> Consumed {
        Consumed { topic: topic.into(), partition: 0, offset: 7, key: None, payload: Some(payload) }
    }

    #[test]
    fn garbage_and_future_versions_are_dead_letters_with_reasons() {
        let future = PredictionRecord { schema_version: 9, ..Default::default() }.encode_to_vec();
        let d = decode(&[msg(topics::PREDICTIONS, vec![0xff, 0xff, 0xff]), msg(topics::PREDICTIONS, future)]);
        assert!(d.predictions.is_empty());
        assert_eq!(d.dead.len(), 2);
        assert!(d.dead[0].reason.starts_with("not a PredictionRecord"), "{}", d.dead[0].reason);
        assert!(d.dead[1].reason.contains("schema version 9 is not supported"), "{}", d.dead[1].reason);
    }
}
