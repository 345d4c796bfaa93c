//! Drift-test configuration, with Evidently's defaults.

use serde::{Deserialize, Serialize};

/// Drift statistic of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Chosen from the feature kind and the reference size (see [`DriftConfig::method_for`]).
    #[default]
    Auto,
    /// Kolmogorov-Smirnov p-value.
    Ks,
    /// Wasserstein distance normalized by the reference standard deviation.
    Wasserstein,
    /// Population stability index.
    Psi,
    /// Jensen-Shannon distance.
    JensenShannon,
    /// Chi-square p-value.
    ChiSquare,
}

/// Kind of feature, which drives the [`Method::Auto`] choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Ordered values binned over numeric edges.
    Numeric,
    /// One bin per category.
    Categorical,
}

/// Method choice and thresholds of the drift tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// Statistic to use for every feature.
    pub method: Method,
    /// KS drift when the p-value is below this.
    pub ks_p_value: f64,
    /// Normalized Wasserstein drift when the distance is above this.
    pub wasserstein: f64,
    /// PSI drift when above this (0.1 is the usual warning level, 0.25 a major shift).
    pub psi: f64,
    /// Jensen-Shannon drift when the distance is above this.
    pub jensen_shannon: f64,
    /// Chi-square drift when the p-value is below this.
    pub chi_square_p_value: f64,
    /// Reference sizes at or below this use KS / chi-square under `auto`, above use Wasserstein / Jensen-Shannon.
    pub small_sample: u64,
    /// The dataset drifts when at least this share of features drifts.
    pub dataset_share: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            method: Method::Auto,
            ks_p_value: 0.05,
            wasserstein: 0.1,
            psi: 0.1,
            jensen_shannon: 0.1,
            chi_square_p_value: 0.05,
            small_sample: 1000,
            dataset_share: 0.5,
        }
    }
}

impl DriftConfig {
    /// The concrete method (never [`Method::Auto`]) for a feature of `kind` with `reference_total` samples.
    pub fn method_for(&self, kind: Kind, reference_total: f64) -> Method {
        let small = reference_total <= self.small_sample as f64;
        match (self.method, kind) {
            (Method::Auto, Kind::Numeric) if small => Method::Ks,
            (Method::Auto, Kind::Numeric) => Method::Wasserstein,
            (Method::Auto, Kind::Categorical) if small => Method::ChiSquare,
            (Method::Auto, Kind::Categorical) => Method::JensenShannon,
            (method, _) => method,
        }
    }
}
