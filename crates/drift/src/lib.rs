//! Data-drift statistics for the monitoring service.
//!
//! Binned statistics compare a reference histogram with a current histogram over the same bins
//! (counts as `f64`, `edges.len() - 1` of them). Wasserstein and Kolmogorov-Smirnov are also
//! computed without bins, exactly, on two [`Cdf`]s (raw samples or quantile-sketch buckets).
//! [`test_feature`] (binned) and [`test_numeric`] (distributions) pick a statistic with Evidently's
//! rules and decide drift per feature; [`dataset_drift`] aggregates the features.

mod agreement;
mod cdf;
mod config;
mod histogram;
mod stats;

use serde::{Deserialize, Serialize};

pub use agreement::fleiss_kappa;
pub use cdf::{Cdf, KS_EXACT_MAX_N, ks_distance, ks_p_value, wasserstein};
pub use config::{DriftConfig, Kind, Method};
pub use histogram::{Histogram, bin_index};
pub use stats::{
    ChiSquareResult, KsResult, MIN_EXPECTED_FOR_Z, PSI_EMPTY_FRACTION, chi_square, fisher_greater_p_value,
    jensen_shannon, kolmogorov_sf, ks_binned, normalized_wasserstein, proportion_greater_p_value, psi,
    rate_greater_p_value, wasserstein_binned,
};

/// Invalid input to a drift statistic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriftError {
    /// The reference counts sum to 0.
    #[error("the reference histogram is empty")]
    EmptyReference,
    /// The current counts sum to 0.
    #[error("the current histogram is empty")]
    EmptyCurrent,
    /// The two histograms have different numbers of bins.
    #[error("bin count mismatch: reference has {reference} bins, current has {current}")]
    BinMismatch {
        /// Reference bins.
        reference: usize,
        /// Current bins.
        current: usize,
    },
    /// The edges do not match the number of bins.
    #[error("{edges} edges do not bound {bins} bins")]
    EdgeMismatch {
        /// Number of edges.
        edges: usize,
        /// Number of bins.
        bins: usize,
    },
    /// Distribution pieces that are not finite, ascending and non-overlapping with non-negative weights.
    #[error("distribution pieces must be finite, ascending, non-overlapping, with non-negative weights")]
    InvalidPieces,
    /// Fewer than two edges, or edges not finite and strictly increasing.
    #[error("bin edges must be at least two, finite and strictly increasing")]
    InvalidEdges,
    /// A count is negative or not finite.
    #[error("bin counts must be finite and non-negative")]
    InvalidCounts,
}

/// Drift decision for one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftResult {
    /// The concrete method used (never `auto`).
    pub method: Method,
    /// The method's statistic (KS D, chi-square statistic, or the distance).
    pub statistic: f64,
    /// The p-value, for KS and chi-square.
    pub p_value: Option<f64>,
    /// The threshold the decision used.
    pub threshold: f64,
    /// KS / chi-square: `p_value < threshold`; distances: `statistic > threshold`.
    pub drifted: bool,
    /// PSI, always computed as extra information.
    pub psi: f64,
}

/// Drift decision for a whole dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetDrift {
    /// Features that drifted.
    pub drifted_features: usize,
    /// Features tested.
    pub total: usize,
    /// `drifted_features / total`, 0 when there are no features.
    pub share: f64,
    /// `total > 0` and `share >= dataset_share`.
    pub drifted: bool,
}

/// Tests one feature: `current_counts` must use the bins of `reference`.
///
/// The method comes from [`DriftConfig::method_for`]; a p-value method drifts when `p_value < threshold`,
/// a distance when `statistic > threshold` (equality is not drift).
pub fn test_feature(
    reference: &Histogram,
    current_counts: &[f64],
    kind: Kind,
    cfg: &DriftConfig,
) -> Result<DriftResult, DriftError> {
    reference.validate()?;
    let (r, c) = (reference.counts.as_slice(), current_counts);
    let psi = stats::psi(r, c)?;
    let method = cfg.method_for(kind, reference.total());
    let (statistic, p_value, threshold) = match method {
        Method::Ks => {
            let ks = ks_binned(r, c)?;
            (ks.statistic, Some(ks.p_value), cfg.ks_p_value)
        }
        Method::ChiSquare => {
            let chi = chi_square(r, c)?;
            (chi.statistic, Some(chi.p_value), cfg.chi_square_p_value)
        }
        Method::Psi => (psi, None, cfg.psi),
        Method::JensenShannon => (jensen_shannon(r, c)?, None, cfg.jensen_shannon),
        // `method_for` never returns `Auto`.
        Method::Wasserstein | Method::Auto => (normalized_wasserstein(&reference.edges, r, c)?, None, cfg.wasserstein),
    };
    let drifted = p_value.map_or(statistic > threshold, |p| p < threshold);
    Ok(DriftResult { method, statistic, p_value, threshold, drifted, psi })
}

/// A numeric feature's two sides: distributions for Wasserstein and KS, bins for the others.
#[derive(Debug, Clone, Copy)]
pub struct NumericFeature<'a> {
    /// The reference histogram: PSI, Jensen-Shannon and chi-square use its bins, and its total
    /// picks the method under [`Method::Auto`].
    pub bins: &'a Histogram,
    /// Current counts over `bins.edges`.
    pub current_counts: &'a [f64],
    /// The reference distribution.
    pub reference: &'a Cdf,
    /// The current distribution.
    pub current: &'a Cdf,
    /// Divides the Wasserstein distance (Evidently: the reference sample's `numpy.std`).
    pub reference_std: f64,
}

/// Tests a numeric feature: Wasserstein and KS from the two distributions (KS sample sizes are
/// their totals, rounded), every other method on the bins as [`test_feature`] does.
pub fn test_numeric(feature: &NumericFeature<'_>, cfg: &DriftConfig) -> Result<DriftResult, DriftError> {
    let (reference, current) = (feature.reference, feature.current);
    let method = cfg.method_for(Kind::Numeric, feature.bins.total());
    let (statistic, p_value, threshold) = match method {
        Method::Ks => {
            let d = ks_distance(reference, current)?;
            let p = ks_p_value(d, reference.total().round() as usize, current.total().round() as usize);
            (d, Some(p), cfg.ks_p_value)
        }
        Method::Wasserstein => {
            let distance = wasserstein(reference, current)?;
            let std = feature.reference_std;
            (if std > 0.0 { distance / std } else { distance }, None, cfg.wasserstein)
        }
        _ => return test_feature(feature.bins, feature.current_counts, Kind::Numeric, cfg),
    };
    feature.bins.validate()?;
    let psi = stats::psi(&feature.bins.counts, feature.current_counts)?;
    let drifted = p_value.map_or(statistic > threshold, |p| p < threshold);
    Ok(DriftResult { method, statistic, p_value, threshold, drifted, psi })
}

/// Aggregates feature results: the dataset drifts when the drifted share reaches `cfg.dataset_share`.
pub fn dataset_drift(results: &[DriftResult], cfg: &DriftConfig) -> DatasetDrift {
    let total = results.len();
    let drifted_features = results.iter().filter(|r| r.drifted).count();
    let share = if total == 0 { 0.0 } else { drifted_features as f64 / total as f64 };
    DatasetDrift { drifted_features, total, share, drifted: total > 0 && share >= cfg.dataset_share }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(counts: &[f64]) -> Histogram {
        let edges = (0..=counts.len()).map(|i| i as f64).collect();
        Histogram::new(edges, counts.to_vec()).unwrap()
    }

    fn result(drifted: bool) -> DriftResult {
        DriftResult { method: Method::Psi, statistic: 0.0, p_value: None, threshold: 0.1, drifted, psi: 0.0 }
    }

    #[test]
    fn auto_picks_by_kind_and_size() {
        let cfg = DriftConfig::default();
        assert_eq!(cfg.method_for(Kind::Numeric, 1000.0), Method::Ks);
        assert_eq!(cfg.method_for(Kind::Numeric, 1001.0), Method::Wasserstein);
        assert_eq!(cfg.method_for(Kind::Categorical, 1000.0), Method::ChiSquare);
        assert_eq!(cfg.method_for(Kind::Categorical, 1001.0), Method::JensenShannon);
        let psi = DriftConfig { method: Method::Psi, ..cfg };
        assert_eq!(psi.method_for(Kind::Categorical, 5.0), Method::Psi);
    }

    #[test]
    fn identical_feature_does_not_drift() {
        let reference = histogram(&[10.0, 20.0, 30.0]);
        for kind in [Kind::Numeric, Kind::Categorical] {
            let r = test_feature(&reference, &[1.0, 2.0, 3.0], kind, &DriftConfig::default()).unwrap();
            assert!(!r.drifted);
            assert_eq!(r.p_value, Some(1.0));
            assert_eq!(r.psi, 0.0);
        }
    }

    #[test]
    fn distance_equal_to_threshold_is_not_drift() {
        let reference = histogram(&[5.0, 0.0, 0.0, 0.0]);
        let cfg = DriftConfig { method: Method::Wasserstein, wasserstein: 3.0, ..DriftConfig::default() };
        let r = test_feature(&reference, &[0.0, 0.0, 0.0, 5.0], Kind::Numeric, &cfg).unwrap();
        assert_eq!((r.statistic, r.p_value, r.drifted), (3.0, None, false));
        let cfg = DriftConfig { wasserstein: 2.9, ..cfg };
        assert!(test_feature(&reference, &[0.0, 0.0, 0.0, 5.0], Kind::Numeric, &cfg).unwrap().drifted);
    }

    #[test]
    fn bad_feature_input_is_an_error() {
        let cfg = DriftConfig::default();
        let reference = histogram(&[1.0, 2.0]);
        let err = test_feature(&reference, &[1.0], Kind::Numeric, &cfg);
        assert_eq!(err, Err(DriftError::BinMismatch { reference: 2, current: 1 }));
        assert_eq!(test_feature(&reference, &[0.0, 0.0], Kind::Numeric, &cfg), Err(DriftError::EmptyCurrent));
        let empty = histogram(&[0.0, 0.0]);
        assert_eq!(test_feature(&empty, &[1.0, 1.0], Kind::Numeric, &cfg), Err(DriftError::EmptyReference));
        let broken = Histogram { edges: vec![0.0, 1.0], counts: vec![1.0, 1.0] };
        let err = test_feature(&broken, &[1.0, 1.0], Kind::Numeric, &cfg);
        assert_eq!(err, Err(DriftError::EdgeMismatch { edges: 2, bins: 2 }));
    }

    #[test]
    fn dataset_share_rule() {
        let cfg = DriftConfig::default();
        let empty = dataset_drift(&[], &cfg);
        assert_eq!((empty.total, empty.share, empty.drifted), (0, 0.0, false));
        let half = dataset_drift(&[result(true), result(false)], &cfg);
        assert_eq!((half.drifted_features, half.share, half.drifted), (1, 0.5, true));
        let third = dataset_drift(&[result(true), result(false), result(false)], &cfg);
        assert!(!third.drifted);
    }

    #[test]
    fn config_serde() {
        let cfg: DriftConfig = serde_json::from_str(r#"{"method": "jensen_shannon", "psi": 0.25}"#).unwrap();
        assert_eq!(cfg, DriftConfig { method: Method::JensenShannon, psi: 0.25, ..DriftConfig::default() });
        assert!(serde_json::from_str::<DriftConfig>(r#"{"psi_threshold": 0.2}"#).is_err());
        assert!(serde_json::from_str::<DriftConfig>(r#"{"method": "kl"}"#).is_err());
        let json = serde_json::to_value(result(true)).unwrap();
        assert_eq!(json["method"], "psi");
        assert_eq!(json["p_value"], serde_json::Value::Null);
    }
}
