//! Binned distributions and the binning rule.

use serde::{Deserialize, Serialize};

use crate::DriftError;

/// A binned distribution: `counts[i]` is the weight of the bin `[edges[i], edges[i + 1])`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Bin edges: finite, strictly increasing, at least two.
    pub edges: Vec<f64>,
    /// Per-bin counts (finite, non-negative), `edges.len() - 1` of them.
    pub counts: Vec<f64>,
}

impl Histogram {
    /// Builds a histogram from edges and counts after checking both.
    pub fn new(edges: Vec<f64>, counts: Vec<f64>) -> Result<Self, DriftError> {
        let histogram = Self { edges, counts };
        histogram.validate()?;
        Ok(histogram)
    }

    /// Bins `values` over `edges` with [`bin_index`]; NaN values are skipped.
    pub fn from_values(edges: Vec<f64>, values: &[f64]) -> Result<Self, DriftError> {
        check_edges(&edges)?;
        let mut counts = vec![0.0; edges.len() - 1];
        for &value in values.iter().filter(|v| !v.is_nan()) {
            counts[bin_index(&edges, value)] += 1.0;
        }
        Ok(Self { edges, counts })
    }

    /// Checks the edges, the counts and that they agree in length.
    pub fn validate(&self) -> Result<(), DriftError> {
        check_edges(&self.edges)?;
        check_counts(&self.counts)?;
        check_edges_fit(&self.edges, self.counts.len())
    }

    /// Sum of the counts.
    pub fn total(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// Counts divided by the total; all zeros when the total is 0.
    pub fn fractions(&self) -> Vec<f64> {
        fractions(&self.counts)
    }

    /// Bin midpoints.
    pub fn centres(&self) -> Vec<f64> {
        centres(&self.edges)
    }

    /// Mean of the bin centres weighted by the counts; NaN when the total is 0.
    pub fn mean(&self) -> f64 {
        moments(&self.centres(), &self.counts).0
    }

    /// Population standard deviation of the bin centres weighted by the counts; NaN when the total is 0.
    pub fn std(&self) -> f64 {
        moments(&self.centres(), &self.counts).1
    }
}

/// Bin of `value` over `edges`: bin `i` holds `[edges[i], edges[i + 1])`, the last bin also holds its
/// upper edge, values below the first edge go to the first bin and values above the last edge to the last.
/// `edges` must be valid (see [`Histogram::validate`]); NaN maps to the first bin.
pub fn bin_index(edges: &[f64], value: f64) -> usize {
    let last = edges.len().saturating_sub(2);
    edges.partition_point(|&e| e <= value).saturating_sub(1).min(last)
}

pub(crate) fn check_edges(edges: &[f64]) -> Result<(), DriftError> {
    let finite = edges.iter().all(|e| e.is_finite());
    if edges.len() < 2 || !finite || edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err(DriftError::InvalidEdges);
    }
    Ok(())
}

pub(crate) fn check_edges_fit(edges: &[f64], bins: usize) -> Result<(), DriftError> {
    if edges.len() != bins + 1 {
        return Err(DriftError::EdgeMismatch { edges: edges.len(), bins });
    }
    Ok(())
}

pub(crate) fn check_counts(counts: &[f64]) -> Result<(), DriftError> {
    if counts.iter().any(|c| !c.is_finite() || *c < 0.0) {
        return Err(DriftError::InvalidCounts);
    }
    Ok(())
}

pub(crate) fn fractions(counts: &[f64]) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    counts.iter().map(|c| if total > 0.0 { c / total } else { 0.0 }).collect()
}

/// Weighted mean and population standard deviation of `values`.
pub(crate) fn moments(values: &[f64], weights: &[f64]) -> (f64, f64) {
    let total: f64 = weights.iter().sum();
    let mean = values.iter().zip(weights).map(|(v, w)| v * w).sum::<f64>() / total;
    let var = values.iter().zip(weights).map(|(v, w)| w * (v - mean).powi(2)).sum::<f64>() / total;
    (mean, var.sqrt())
}

pub(crate) fn centres(edges: &[f64]) -> Vec<f64> {
    edges.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binning_rule_edges() {
        let edges = vec![0.0, 1.0, 2.0, 3.0];
        let values = [-5.0, 0.0, 0.5, 1.0, 1.999, 2.0, 3.0, 7.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        let h = Histogram::from_values(edges, &values).unwrap();
        // [-5, 0, 0.5, -inf] | [1, 1.999] | [2, 3, 7, inf]
        assert_eq!(h.counts, vec![4.0, 2.0, 4.0]);
        assert_eq!(h.total(), 10.0);
    }

    #[test]
    fn single_bin_takes_everything() {
        let h = Histogram::from_values(vec![0.0, 1.0], &[-1.0, 0.5, 1.0, 2.0]).unwrap();
        assert_eq!(h.counts, vec![4.0]);
    }

    #[test]
    fn invalid_edges_are_errors() {
        for edges in [vec![], vec![1.0], vec![0.0, 0.0], vec![1.0, 0.0], vec![0.0, f64::NAN], vec![0.0, f64::INFINITY]]
        {
            assert_eq!(Histogram::from_values(edges, &[1.0]), Err(DriftError::InvalidEdges));
        }
    }

    #[test]
    fn new_checks_lengths_and_counts() {
        assert_eq!(Histogram::new(vec![0.0, 1.0, 2.0], vec![1.0]), Err(DriftError::EdgeMismatch { edges: 3, bins: 1 }));
        assert_eq!(Histogram::new(vec![0.0, 1.0], vec![-1.0]), Err(DriftError::InvalidCounts));
        assert_eq!(Histogram::new(vec![0.0, 1.0], vec![f64::NAN]), Err(DriftError::InvalidCounts));
        assert!(Histogram::new(vec![0.0, 1.0], vec![3.0]).is_ok());
    }

    #[test]
    fn moments_from_centres() {
        let h = Histogram::new(vec![0.0, 2.0, 4.0], vec![1.0, 1.0]).unwrap();
        assert_eq!(h.centres(), vec![1.0, 3.0]);
        assert_eq!(h.fractions(), vec![0.5, 0.5]);
        assert_eq!(h.mean(), 2.0);
        assert_eq!(h.std(), 1.0);
        let empty = Histogram::new(vec![0.0, 1.0], vec![0.0]).unwrap();
        assert_eq!(empty.fractions(), vec![0.0]);
        assert!(empty.mean().is_nan());
    }
}
