//! The decision policy: a defect score becomes a verdict and an action for the line, under the
//! model's degree of automation (who decides: the model, a person, or the model where it is
//! confident).

use std::str::FromStr;

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

/// Who decides each item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// A person; the model is not consulted.
    HumanOnly,
    /// A person; the model predicts and is logged, the person does not see it.
    Shadow,
    /// A person, shown the model's answer as a suggestion.
    Assist,
    /// The model where confident; a person in the review band.
    #[default]
    Partial,
    /// The model, always.
    Full,
}

impl Policy {
    /// The name used in deployments, records and the review queue.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HumanOnly => "human_only",
            Self::Shadow => "shadow",
            Self::Assist => "assist",
            Self::Partial => "partial",
            Self::Full => "full",
        }
    }

    /// Whether the model runs at all.
    pub fn consults_model(self) -> bool {
        self != Self::HumanOnly
    }

    /// Whether a reviewer sees the model's answer.
    pub fn shows_suggestion(self) -> bool {
        matches!(self, Self::Assist | Self::Partial)
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "human_only" => Self::HumanOnly,
            "shadow" => Self::Shadow,
            "assist" => Self::Assist,
            "partial" => Self::Partial,
            "full" => Self::Full,
            other => return Err(format!("unknown policy '{other}'; use human_only, shadow, assist, partial or full")),
        })
    }
}

/// A model's degree of automation in its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Automation {
    pub policy: Policy,
    /// The review band `[accept_below, reject_at)` of `partial`; None: the model card's.
    pub band: Option<(f32, f32)>,
}

impl Automation {
    /// The decision on a model's `score` under this policy, and, when it goes to a person, why.
    pub fn decide(&self, score: f32, model: &Thresholds) -> (Verdict, Decision, Option<String>) {
        let t = match self.band {
            Some((accept_below, reject_at)) => Thresholds { accept_below, reject_at, ..*model },
            None => *model,
        };
        let (verdict, decision) = decide(score, &t);
        match self.policy {
            Policy::Full => {
                let decision = if verdict == Verdict::Defect { Decision::Reject } else { Decision::Accept };
                (verdict, decision, None)
            }
            Policy::Partial if decision == Decision::HumanReview => (
                verdict,
                decision,
                Some(format!("score {score:.3} in the review band [{}, {})", t.accept_below, t.reject_at)),
            ),
            Policy::Partial => (verdict, decision, None),
            Policy::Assist => (
                verdict,
                Decision::HumanReview,
                Some("policy assist: a person decides, shown the model's answer".into()),
            ),
            Policy::Shadow => (
                verdict,
                Decision::HumanReview,
                Some("policy shadow: a person decides; the model is only logged".into()),
            ),
            Policy::HumanOnly => (Verdict::Unspecified, Decision::HumanReview, Some(Self::HUMAN_ONLY_REASON.into())),
        }
    }

    /// Why an item goes to a person when the model is not consulted.
    pub const HUMAN_ONLY_REASON: &'static str = "policy human_only: a person decides; the model is not consulted";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_are_half_open() {
        let t = Thresholds { defect: 0.5, accept_below: 0.2, reject_at: 0.8, reviewers: 1 };
        assert_eq!(decide(0.0, &t), (Verdict::Ok, Decision::Accept));
        assert_eq!(decide(0.2, &t), (Verdict::Ok, Decision::HumanReview));
        assert_eq!(decide(0.5, &t), (Verdict::Defect, Decision::HumanReview));
        assert_eq!(decide(0.8, &t), (Verdict::Defect, Decision::Reject));
        assert_eq!(decide(1.0, &t), (Verdict::Defect, Decision::Reject));
    }

    #[test]
    fn no_review_band_when_thresholds_meet() {
        let t = Thresholds { defect: 0.5, accept_below: 0.5, reject_at: 0.5, reviewers: 1 };
        assert_eq!(decide(0.49, &t).1, Decision::Accept);
        assert_eq!(decide(0.5, &t).1, Decision::Reject);
    }

    #[test]
    fn each_policy_decides_as_named() {
        let t = Thresholds { defect: 0.5, accept_below: 0.2, reject_at: 0.8, reviewers: 1 };
        let at = |policy, band, score| {
            let (verdict, decision, reason) = Automation { policy, band }.decide(score, &t);
            (verdict, decision, reason.is_some())
        };
        // Partial: the band decides who; a deployment's band overrides the model card's.
        assert_eq!(at(Policy::Partial, None, 0.1), (Verdict::Ok, Decision::Accept, false));
        assert_eq!(at(Policy::Partial, None, 0.3), (Verdict::Ok, Decision::HumanReview, true));
        assert_eq!(at(Policy::Partial, Some((0.4, 0.6)), 0.3), (Verdict::Ok, Decision::Accept, false));
        assert_eq!(at(Policy::Partial, Some((0.4, 0.6)), 0.7), (Verdict::Defect, Decision::Reject, false));
        // Full: the verdict decides, never a person.
        assert_eq!(at(Policy::Full, None, 0.3), (Verdict::Ok, Decision::Accept, false));
        assert_eq!(at(Policy::Full, None, 0.6), (Verdict::Defect, Decision::Reject, false));
        // Assist and shadow: always a person, the model's verdict kept for the record.
        assert_eq!(at(Policy::Assist, None, 0.95), (Verdict::Defect, Decision::HumanReview, true));
        assert_eq!(at(Policy::Shadow, None, 0.05), (Verdict::Ok, Decision::HumanReview, true));
        assert_eq!(at(Policy::HumanOnly, None, 0.95), (Verdict::Unspecified, Decision::HumanReview, true));
        for name in ["human_only", "shadow", "assist", "partial", "full"] {
            assert_eq!(name.parse::<Policy>().unwrap().as_str(), name);
        }
        assert!("autopilot".parse::<Policy>().unwrap_err().contains("unknown policy 'autopilot'"));
    }
}
