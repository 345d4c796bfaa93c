//! Data verification before a dataset is used for training: schema, missing values, duplicates,
//! class balance, and label consistency where several people labelled one item.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// One labelled (or not) item of a dataset: its feature values by column (None: missing).
#[derive(Debug, Clone)]
pub struct Item {
    pub values: Vec<Option<f64>>,
    pub label: Option<String>,
}

/// The limits a dataset must keep.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most any column may be missing (share of items).
    pub max_missing_share: f64,
    /// The most items may repeat another's features exactly (share of items).
    pub max_duplicate_share: f64,
    /// Every class's least share of the labelled items (and at least two classes).
    pub min_class_share: f64,
    /// Fleiss' kappa of the items several people labelled, at least this.
    pub min_kappa: f64,
    /// The most captured inputs may be lost: missing from the capture store or not matching
    /// their hash (share of the captured inputs). Their rows are kept without their input, as
    /// rows never captured are.
    pub max_lost_capture_share: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_missing_share: 0.5,
            max_duplicate_share: 0.2,
            min_class_share: 0.02,
            min_kappa: 0.4,
            max_lost_capture_share: 0.01,
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Runs every check on `items` (features in `columns`' order) and the answers of the items
/// several people labelled (`panels`: each item's answers).
pub fn verify(columns: &[String], items: &[Item], panels: &[Vec<String>], limits: &Limits) -> Vec<Check> {
    let mut checks = Vec::new();
    let n = items.len().max(1) as f64;
    let mut check = |name: &str, passed: bool, detail: String| {
        checks.push(Check { name: name.into(), passed, detail });
    };
    let ragged = items.iter().filter(|i| i.values.len() != columns.len()).count();
    check(
        "schema",
        ragged == 0 && !columns.is_empty(),
        format!("{} columns; {ragged} items with others", columns.len()),
    );

    let worst = columns
        .iter()
        .enumerate()
        .map(|(c, name)| (name, items.iter().filter(|i| i.values.get(c).copied().flatten().is_none()).count()))
        .max_by_key(|(_, missing)| *missing);
    if let Some((column, missing)) = worst {
        let share = missing as f64 / n;
        check(
            "missing_values",
            share <= limits.max_missing_share,
            format!("'{column}' missing in {share:.3} of items (limit {})", limits.max_missing_share),
        );
    }

    // Items with the same features: repeats, and repeats labelled differently.
    let mut seen: HashMap<Vec<u64>, Vec<Option<&str>>> = HashMap::new();
    for item in items {
        let key = item.values.iter().map(|v| v.map_or(u64::MAX, f64::to_bits)).collect();
        seen.entry(key).or_default().push(item.label.as_deref());
    }
    let repeats: usize = seen.values().map(|labels| labels.len() - 1).sum();
    let conflicting = seen
        .values()
        .filter(|labels| {
            let mut distinct: Vec<&str> = labels.iter().flatten().copied().collect();
            distinct.sort_unstable();
            distinct.dedup();
            distinct.len() > 1
        })
        .count();
    let share = repeats as f64 / n;
    check(
        "duplicates",
        share <= limits.max_duplicate_share && conflicting == 0,
        format!(
            "{repeats} items repeat another's features ({share:.3}, limit {}); {conflicting} groups labelled differently",
            limits.max_duplicate_share
        ),
    );

    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for label in items.iter().filter_map(|i| i.label.as_deref()) {
        *classes.entry(label).or_default() += 1;
    }
    let labelled: usize = classes.values().sum();
    let least = classes.iter().min_by_key(|(_, n)| **n).map(|(c, n)| (*c, *n as f64 / labelled.max(1) as f64));
    let balance = format!("{classes:?}");
    match least {
        Some((class, share)) if classes.len() >= 2 => check(
            "class_balance",
            share >= limits.min_class_share,
            format!("{balance}; least '{class}' {share:.3} (limit {})", limits.min_class_share),
        ),
        _ => check("class_balance", false, format!("{balance}: a classifier needs at least two classes")),
    }

    if !panels.is_empty() {
        let answers: Vec<Vec<&str>> = panels.iter().map(|p| p.iter().map(String::as_str).collect()).collect();
        let refs: Vec<&Vec<&str>> = answers.iter().collect();
        match vigil_drift::fleiss_kappa(&refs) {
            Some(kappa) => check(
                "label_consistency",
                kappa >= limits.min_kappa,
                format!(
                    "{} items labelled by several people: Fleiss' kappa {kappa:.3} (limit {})",
                    panels.len(),
                    limits.min_kappa
                ),
            ),
            None => check(
                "label_consistency",
                true,
                format!("{} items labelled by several people, all alike", panels.len()),
            ),
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(values: &[f64], label: &str) -> Item {
        Item { values: values.iter().map(|v| Some(*v)).collect(), label: Some(label.into()) }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn a_sound_dataset_passes_and_each_fault_fails_its_check() {
        let columns = vec!["a".to_string(), "b".to_string()];
        let good: Vec<Item> = (0..20).map(|i| item(&[i as f64, 1.0], if i % 2 == 0 { "x" } else { "y" })).collect();
        assert!(failed(&verify(&columns, &good, &[], &Limits::default())).is_empty());

        let one_class: Vec<Item> = (0..20).map(|i| item(&[i as f64, 1.0], "x")).collect();
        assert_eq!(failed(&verify(&columns, &one_class, &[], &Limits::default())), ["class_balance"]);

        let mut conflicting = good.clone();
        conflicting.push(item(&[0.0, 1.0], "y"));
        assert_eq!(failed(&verify(&columns, &conflicting, &[], &Limits::default())), ["duplicates"]);

        let mut gaps = good.clone();
        for i in gaps.iter_mut().take(11) {
            i.values[1] = None;
        }
        assert_eq!(failed(&verify(&columns, &gaps, &[], &Limits::default())), ["missing_values"]);

        let split = |a: &str, b: &str, c: &str| vec![a.to_string(), b.to_string(), c.to_string()];
        let disagreeing: Vec<Vec<String>> =
            (0..10).map(|i| if i % 2 == 0 { split("x", "y", "x") } else { split("y", "x", "y") }).collect();
        assert_eq!(failed(&verify(&columns, &good, &disagreeing, &Limits::default())), ["label_consistency"]);
        let agreeing: Vec<Vec<String>> =
            (0..10).map(|i| if i % 2 == 0 { split("x", "x", "x") } else { split("y", "y", "y") }).collect();
        assert!(failed(&verify(&columns, &good, &agreeing, &Limits::default())).is_empty());
    }
}
