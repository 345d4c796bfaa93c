//! How people reviewing the same items agree: with each other (pairwise agreement and Fleiss'
//! kappa over items several people decided) and with the model and their panel's decision.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;
use vigil_store::ReviewerDecision;

/// Agreement among a model's reviewers over a range of decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PanelAgreement {
    /// Items at least two people decided.
    pub items: u64,
    /// Of every pair of people deciding one item, the share who gave the same answer.
    pub pairwise_agreement: Option<f64>,
    /// Fleiss' kappa over those items: agreement beyond what chance gives (1 perfect, 0 chance).
    pub fleiss_kappa: Option<f64>,
    pub reviewers: Vec<ReviewerAgreement>,
}

/// One reviewer's decisions beside the model's answers and their panels' decisions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReviewerAgreement {
    pub reviewer: String,
    pub decisions: u64,
    /// Share equal to the model's label, over items the model answered.
    pub with_model: Option<f64>,
    /// Share equal to the item's final decision, over items decided by a panel of several.
    pub with_panel: Option<f64>,
}

/// The agreement in `decisions` (every reviewer's, of one model).
pub fn panel_agreement(decisions: &[ReviewerDecision]) -> PanelAgreement {
    let mut by_item: BTreeMap<Uuid, Vec<&str>> = BTreeMap::new();
    for d in decisions {
        by_item.entry(d.prediction_id).or_default().push(d.decision.as_str());
    }
    let shared: Vec<&Vec<&str>> = by_item.values().filter(|answers| answers.len() >= 2).collect();
    let (mut pairs, mut agreeing) = (0u64, 0u64);
    for answers in &shared {
        for (i, a) in answers.iter().enumerate() {
            for b in &answers[i + 1..] {
                pairs += 1;
                agreeing += u64::from(a == b);
            }
        }
    }
    let share = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
    let mut reviewers: BTreeMap<&str, (u64, u64, u64, u64, u64)> = BTreeMap::new();
    for d in decisions {
        let r = reviewers.entry(d.reviewer.as_str()).or_default();
        r.0 += 1;
        if !d.predicted.is_empty() {
            r.1 += 1;
            r.2 += u64::from(d.predicted == d.decision);
        }
        if let Some(final_decision) = d.final_decision.as_deref().filter(|_| d.reviews_required > 1) {
            r.3 += 1;
            r.4 += u64::from(final_decision == d.decision);
        }
    }
    PanelAgreement {
        items: shared.len() as u64,
        pairwise_agreement: share(agreeing, pairs),
        fleiss_kappa: vigil_drift::fleiss_kappa(&shared),
        reviewers: reviewers
            .into_iter()
            .map(|(reviewer, (decisions, answered, with_model, panels, with_panel))| ReviewerAgreement {
                reviewer: reviewer.to_string(),
                decisions,
                with_model: share(with_model, answered),
                with_panel: share(with_panel, panels),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(item: u128, reviewer: &str, decision: &str, predicted: &str, final_decision: &str) -> ReviewerDecision {
        ReviewerDecision {
            prediction_id: Uuid::from_u128(item),
            reviewer: reviewer.into(),
            decision: decision.into(),
            decided_at: chrono::Utc::now(),
            reviews_required: 3,
            predicted: predicted.into(),
            final_decision: Some(final_decision.into()),
        }
    }

    #[test]
    fn pairs_reviewers_model_and_panel() {
        let decisions = [
            decision(1, "anna", "refer", "refer", "refer"),
            decision(1, "ben", "refer", "refer", "refer"),
            decision(1, "carl", "home", "refer", "refer"),
            decision(2, "anna", "home", "refer", "home"),
            decision(2, "ben", "home", "refer", "home"),
            decision(2, "carl", "home", "refer", "home"),
        ];
        let a = panel_agreement(&decisions);
        assert_eq!(a.items, 2);
        assert_eq!(a.pairwise_agreement, Some(4.0 / 6.0), "item 1: 1 of 3 pairs; item 2: 3 of 3");
        let carl = a.reviewers.iter().find(|r| r.reviewer == "carl").unwrap();
        assert_eq!((carl.decisions, carl.with_model, carl.with_panel), (2, Some(0.0), Some(0.5)));
        let anna = a.reviewers.iter().find(|r| r.reviewer == "anna").unwrap();
        assert_eq!((anna.with_model, anna.with_panel), (Some(0.5), Some(1.0)));
        // Observed 1/3 and 1 (mean 2/3); answers 2 refer, 4 home: expected 1/9 + 4/9; kappa 1/4.
        assert!((a.fleiss_kappa.unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(panel_agreement(&[]).pairwise_agreement, None);
    }
}
