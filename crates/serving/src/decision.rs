//! The decision policy: a defect score becomes a verdict and an action for the line.

use vigil_inference::config::Thresholds;
use vigil_proto::vigil::v1::{Decision, Verdict};

/// Verdict DEFECT when `score >= defect`; decision ACCEPT below `accept_below`, REJECT at or
/// above `reject_at`, HUMAN_REVIEW in between.
pub fn decide(score: f32, t: &Thresholds) -> (Verdict, Decision) {
    let verdict = if score >= t.defect { Verdict::Defect } else { Verdict::Ok };
    let decision = if score < t.accept_below {
        Decision::Accept
    } else if score >= t.reject_at {
        Decision::Reject
    } else {
        Decision::HumanReview
    };
    (verdict, decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_are_half_open() {
        let t = Thresholds { defect: 0.5, accept_below: 0.2, reject_at: 0.8 };
        assert_eq!(decide(0.0, &t), (Verdict::Ok, Decision::Accept));
        assert_eq!(decide(0.2, &t), (Verdict::Ok, Decision::HumanReview));
        assert_eq!(decide(0.5, &t), (Verdict::Defect, Decision::HumanReview));
        assert_eq!(decide(0.8, &t), (Verdict::Defect, Decision::Reject));
        assert_eq!(decide(1.0, &t), (Verdict::Defect, Decision::Reject));
    }

    #[test]
    fn no_review_band_when_thresholds_meet() {
        let t = Thresholds { defect: 0.5, accept_below: 0.5, reject_at: 0.5 };
        assert_eq!(decide(0.49, &t).1, Decision::Accept);
        assert_eq!(decide(0.5, &t).1, Decision::Reject);
    }
}
