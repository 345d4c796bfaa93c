//! Data verification before a dataset is used for training: schema, missing values, duplicates,
//! class balance, and label consistency where several people labelled one item.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

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

/// What the checks need to know of a dataset's items, taken one item at a time: per column how
/// many items hold a number in it, the items grouped by their features (a 128-bit digest each,
/// with the label they share or the news that they disagree), the classes, and how many items
/// came with another set of columns than the dataset's. A month of rows is never held.
#[derive(Debug, Default)]
pub struct Tally {
    items: usize,
    ragged: usize,
    /// Every column named, with the items holding a number in it.
    columns: BTreeMap<String, usize>,
    groups: HashMap<[u8; 16], Group>,
    classes: BTreeMap<String, usize>,
    label_ids: HashMap<String, u32>,
}

/// Items with the same features.
#[derive(Debug)]
struct Group {
    items: u32,
    /// The first label met (an id in `Tally::label_ids`).
    label: Option<u32>,
    /// Two labels met.
    conflicting: bool,
}

impl Tally {
    /// A tally whose dataset has at least these columns.
    pub fn with_columns<'a>(columns: impl IntoIterator<Item = &'a str>) -> Self {
        let mut tally = Self::default();
        for c in columns {
            tally.columns.entry(c.to_string()).or_default();
        }
        tally
    }

    /// Counts one item: its features by column (None: named but not a number) and its label.
    pub fn add<'a>(&mut self, features: impl IntoIterator<Item = (&'a str, Option<f64>)>, label: Option<&str>) {
        self.items += 1;
        // Each column counted once (its first value), whatever the caller repeats.
        let mut features: Vec<(&str, Option<f64>)> = features.into_iter().collect();
        features.sort_by_key(|(column, _)| *column);
        features.dedup_by_key(|(column, _)| *column);
        let mut numbers: Vec<(&str, u64)> = Vec::new();
        for (column, value) in features {
            let present = match self.columns.get_mut(column) {
                Some(present) => present,
                None => self.columns.entry(column.to_string()).or_default(),
            };
            if let Some(v) = value {
                *present += 1;
                numbers.push((column, v.to_bits()));
            }
        }
        // The same numbers in the same columns are the same features, whatever else is missing.
        let mut digest = Sha256::new();
        for (column, bits) in &numbers {
            digest.update((column.len() as u64).to_le_bytes());
            digest.update(column.as_bytes());
            digest.update(bits.to_le_bytes());
        }
        let key: [u8; 16] = digest.finalize()[..16].try_into().expect("a sha256 has 16 bytes and more");
        let label = label.map(|l| {
            *self.classes.entry(l.to_string()).or_default() += 1;
            let next = self.label_ids.len() as u32;
            *self.label_ids.entry(l.to_string()).or_insert(next)
        });
        let group = self.groups.entry(key).or_insert(Group { items: 0, label: None, conflicting: false });
        group.items += 1;
        match (group.label, label) {
            (Some(first), Some(this)) if first != this => group.conflicting = true,
            (None, Some(this)) => group.label = Some(this),
            _ => {}
        }
    }

    /// Items counted.
    pub fn items(&self) -> usize {
        self.items
    }

    /// The columns, in name order.
    pub fn columns(&self) -> Vec<String> {
        self.columns.keys().cloned().collect()
    }

    /// Items per label.
    pub fn classes(&self) -> &BTreeMap<String, usize> {
        &self.classes
    }

    /// Every check on the items counted and the answers of the items several people labelled
    /// (`panels`: each item's answers).
    pub fn checks(&self, panels: &[Vec<String>], limits: &Limits) -> Vec<Check> {
        let mut checks = Vec::new();
        let n = self.items.max(1) as f64;
        let mut check = |name: &str, passed: bool, detail: String| {
            checks.push(Check { name: name.into(), passed, detail });
        };
        let ragged = self.ragged;
        check(
            "schema",
            ragged == 0 && !self.columns.is_empty(),
            format!("{} columns; {ragged} items with others", self.columns.len()),
        );

        let worst = self
            .columns
            .iter()
            .map(|(name, present)| (name, self.items.saturating_sub(*present)))
            .max_by_key(|(_, m)| *m);
        if let Some((column, missing)) = worst {
            let share = missing as f64 / n;
            check(
                "missing_values",
                share <= limits.max_missing_share,
                format!("'{column}' missing in {share:.3} of items (limit {})", limits.max_missing_share),
            );
        }

        // Items with the same features: repeats, and repeats labelled differently.
        let repeats: usize = self.groups.values().map(|g| g.items as usize - 1).sum();
        let conflicting = self.groups.values().filter(|g| g.conflicting).count();
        let share = repeats as f64 / n;
        check(
            "duplicates",
            share <= limits.max_duplicate_share && conflicting == 0,
            format!(
                "{repeats} items repeat another's features ({share:.3}, limit {}); {conflicting} groups labelled differently",
                limits.max_duplicate_share
            ),
        );

        checks.extend(label_checks(&self.classes, panels, limits));
        checks
    }
}

/// The checks on the labels: every class's share of the labelled items (`classes`), and the
/// agreement of the items several people labelled (`panels`: each item's answers).
fn label_checks(classes: &BTreeMap<String, usize>, panels: &[Vec<String>], limits: &Limits) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name: &str, passed: bool, detail: String| {
        checks.push(Check { name: name.into(), passed, detail });
    };
    let labelled: usize = classes.values().sum();
    let least = classes.iter().min_by_key(|(_, n)| **n).map(|(c, n)| (c, *n as f64 / labelled.max(1) as f64));
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

/// Runs every check on `items` (features in `columns`' order) and the answers of the items
/// several people labelled (`panels`: each item's answers).
pub fn verify(columns: &[String], items: &[Item], panels: &[Vec<String>], limits: &Limits) -> Vec<Check> {
    let mut tally = Tally::with_columns(columns.iter().map(String::as_str));
    for item in items {
        if item.values.len() != columns.len() {
            tally.ragged += 1;
        }
        tally.add(columns.iter().map(String::as_str).zip(item.values.iter().copied()), item.label.as_deref());
    }
    tally.checks(panels, limits)
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

    /// The checks as they were computed before the tally, from every item held at once: the
    /// reference the tally must match.
    fn reference(columns: &[String], items: &[Item], panels: &[Vec<String>], limits: &Limits) -> Vec<Check> {
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

        // The labels' checks are the same code in both (they never held items).
        let mut classes: BTreeMap<String, usize> = BTreeMap::new();
        for label in items.iter().filter_map(|i| i.label.clone()) {
            *classes.entry(label).or_default() += 1;
        }
        checks.extend(label_checks(&classes, panels, limits));
        checks
    }

    /// The tally's checks match the reference's on random datasets: numbers repeated, missing
    /// now and then, labels of three classes or none, several people's answers.
    #[test]
    fn the_tally_gives_what_holding_every_item_gave() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for round in 0..200 {
            let columns: Vec<String> = (0..next(4)).map(|c| format!("c{c}")).collect();
            let items: Vec<Item> = (0..next(60))
                .map(|_| Item {
                    // Few distinct numbers, so items repeat one another.
                    values: columns.iter().map(|_| (next(5) > 0).then(|| next(3) as f64 / 2.0)).collect(),
                    label: ["x", "y", "z"].get(next(4) as usize).map(|l| l.to_string()),
                })
                .collect();
            let panels: Vec<Vec<String>> = (0..next(5))
                .map(|_| (0..2 + next(2)).map(|_| ["x", "y"][next(2) as usize].to_string()).collect())
                .collect();
            let limits = Limits { max_duplicate_share: 0.3, ..Limits::default() };
            assert_eq!(
                verify(&columns, &items, &panels, &limits),
                reference(&columns, &items, &panels, &limits),
                "round {round}"
            );
        }
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
