//! Agreement among raters beyond chance.

use std::collections::BTreeMap;

/// Fleiss' kappa of items each rated by at least two people (the numbers of raters may differ):
/// mean observed agreement per item against the agreement expected from the answers' shares.
/// None without items, or when every answer is the same (no chance agreement to beat).
pub fn fleiss_kappa(items: &[&Vec<&str>]) -> Option<f64> {
    if items.is_empty() {
        return None;
    }
    let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
    let mut ratings = 0.0;
    let mut observed = 0.0;
    for answers in items {
        let n = answers.len() as f64;
        let mut counts: BTreeMap<&str, f64> = BTreeMap::new();
        for a in answers.iter() {
            *counts.entry(a).or_default() += 1.0;
            *totals.entry(a).or_default() += 1.0;
        }
        ratings += n;
        observed += (counts.values().map(|c| c * c).sum::<f64>() - n) / (n * (n - 1.0));
    }
    let observed = observed / items.len() as f64;
    let expected: f64 = totals.values().map(|c| (c / ratings).powi(2)).sum();
    (expected < 1.0).then(|| (observed - expected) / (1.0 - expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Fleiss (1971) as Wikipedia gives it: 10 items, 14 raters each,
    /// 5 categories; kappa 0.210.
    #[test]
    fn fleiss_kappa_matches_the_textbook_example() {
        let table: [[usize; 5]; 10] = [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ];
        let names = ["1", "2", "3", "4", "5"];
        let items: Vec<Vec<&str>> = table
            .iter()
            .map(|row| row.iter().zip(names).flat_map(|(&n, name)| std::iter::repeat_n(name, n)).collect())
            .collect();
        let refs: Vec<&Vec<&str>> = items.iter().collect();
        let kappa = fleiss_kappa(&refs).unwrap();
        assert!((kappa - 0.20993).abs() < 1e-4, "{kappa}");
    }
}
