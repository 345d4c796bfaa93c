//! Drift statistics over two histograms that share the same bins.
//!
//! Every function takes the reference and current counts (same length, finite, non-negative) and
//! fails with a [`DriftError`] on mismatched lengths, invalid counts or an empty side.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::DriftError;
use crate::histogram::{centres, check_counts, check_edges, check_edges_fit, moments};

/// Fraction that replaces an empty bin in [`psi`].
pub const PSI_EMPTY_FRACTION: f64 = 0.0001;

/// Two-sample Kolmogorov-Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsResult {
    /// Largest distance between the two cumulative distributions at a bin boundary.
    pub statistic: f64,
    /// Two-sided p-value, see [`crate::ks_p_value`].
    pub p_value: f64,
}

/// Chi-square goodness-of-fit of the current counts against the reference proportions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChiSquareResult {
    /// Sum of `(observed - expected)^2 / expected`; infinite when a category is new.
    pub statistic: f64,
    /// Survival function of the chi-square distribution with `dof` degrees of freedom.
    pub p_value: f64,
    /// Categories present on either side, minus one.
    pub dof: usize,
}

/// Kolmogorov-Smirnov statistic and p-value of binned samples.
///
/// `D = max |CDF_ref - CDF_cur|` over the bin boundaries (as `scipy.stats.ks_2samp` on the bin
/// indices); the p-value is [`crate::ks_p_value`] with the totals rounded to sample sizes.
pub fn ks_binned(reference: &[f64], current: &[f64]) -> Result<KsResult, DriftError> {
    let (n1, n2) = totals(reference, current)?;
    let (mut cum1, mut cum2, mut statistic) = (0.0, 0.0, 0.0_f64);
    for (r, c) in reference.iter().zip(current) {
        cum1 += r;
        cum2 += c;
        statistic = statistic.max((cum1 / n1 - cum2 / n2).abs());
    }
    let p_value = crate::ks_p_value(statistic, n1.round() as usize, n2.round() as usize);
    Ok(KsResult { statistic, p_value })
}

/// Kolmogorov survival function `Q(λ) = 2 Σ_{k≥1} (-1)^(k-1) exp(-2 k² λ²)`.
///
/// Returns 1.0 when the series does not converge within 100 terms (λ below about 0.04, where
/// `1 - Q(λ)` is far below `f64` resolution).
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    let a = -2.0 * lambda * lambda;
    let mut sum = 0.0;
    let mut sign = 1.0;
    for k in 1..=100_u32 {
        let term = sign * (a * f64::from(k * k)).exp();
        sum += term;
        if term.abs() <= f64::EPSILON * sum.abs() || term == 0.0 {
            return (2.0 * sum).clamp(0.0, 1.0);
        }
        sign = -sign;
    }
    1.0
}

/// Population stability index as computed by Evidently.
///
/// Fractions of empty bins are replaced by [`PSI_EMPTY_FRACTION`], then
/// `PSI = Σ (cur - ref) * ln(cur / ref)`.
pub fn psi(reference: &[f64], current: &[f64]) -> Result<f64, DriftError> {
    let (n1, n2) = totals(reference, current)?;
    let floor = |x: f64| if x == 0.0 { PSI_EMPTY_FRACTION } else { x };
    Ok(reference
        .iter()
        .zip(current)
        .map(|(r, c)| {
            let (r, c) = (floor(r / n1), floor(c / n2));
            (c - r) * (c / r).ln()
        })
        .sum())
}

/// Jensen-Shannon distance (natural log), the square root of the JS divergence, as
/// `scipy.spatial.distance.jensenshannon` on the two fraction vectors.
pub fn jensen_shannon(reference: &[f64], current: &[f64]) -> Result<f64, DriftError> {
    let (n1, n2) = totals(reference, current)?;
    let rel_entr = |x: f64, y: f64| if x > 0.0 { x * (x / y).ln() } else { 0.0 };
    let divergence: f64 = reference
        .iter()
        .zip(current)
        .map(|(r, c)| {
            let (p, q) = (r / n1, c / n2);
            let m = (p + q) / 2.0;
            rel_entr(p, m) + rel_entr(q, m)
        })
        .sum();
    Ok((divergence / 2.0).max(0.0).sqrt())
}

/// Wasserstein-1 distance between the two histograms placed at the bin centres, as
/// `scipy.stats.wasserstein_distance(centres, centres, reference, current)`.
pub fn wasserstein_binned(edges: &[f64], reference: &[f64], current: &[f64]) -> Result<f64, DriftError> {
    let (n1, n2) = totals(reference, current)?;
    check_edges(edges)?;
    check_edges_fit(edges, reference.len())?;
    let centres = centres(edges);
    let (mut cum1, mut cum2, mut distance) = (0.0, 0.0, 0.0);
    for i in 0..centres.len() - 1 {
        cum1 += reference[i];
        cum2 += current[i];
        distance += (cum1 / n1 - cum2 / n2).abs() * (centres[i + 1] - centres[i]);
    }
    Ok(distance)
}

/// [`wasserstein_binned`] divided by the reference standard deviation (bin centres, population std).
///
/// When that deviation is 0 (all reference mass in one bin) the raw distance is returned.
pub fn normalized_wasserstein(edges: &[f64], reference: &[f64], current: &[f64]) -> Result<f64, DriftError> {
    let distance = wasserstein_binned(edges, reference, current)?;
    let (_, std) = moments(&centres(edges), reference);
    Ok(if std > 0.0 { distance / std } else { distance })
}

/// Evidently's categorical chi-square test: `expected = reference fractions * current total`,
/// `observed = current`, over every category present on either side.
///
/// Equals `scipy.stats.chisquare(observed, expected)` on that vector. A category absent from the
/// reference but present now (a brand-new category) has an expected count of 0: the statistic is
/// infinite and the p-value 0, so a new category is always drift (as Evidently and scipy have it).
/// Categories empty on both sides are left out; with fewer than two categories `dof` is 0 and the
/// p-value 1.0.
pub fn chi_square(reference: &[f64], current: &[f64]) -> Result<ChiSquareResult, DriftError> {
    let (n1, n2) = totals(reference, current)?;
    let (mut statistic, mut present) = (0.0, 0_usize);
    for (r, observed) in reference.iter().zip(current) {
        let expected = r / n1 * n2;
        if expected > 0.0 {
            statistic += (observed - expected).powi(2) / expected;
        } else if *observed > 0.0 {
            statistic = f64::INFINITY;
        } else {
            continue;
        }
        present += 1;
    }
    let dof = present.saturating_sub(1);
    let p_value = match dof {
        0 => 1.0,
        _ if statistic.is_infinite() => 0.0,
        _ => ChiSquared::new(dof as f64).map_or(1.0, |d| d.sf(statistic)),
    };
    Ok(ChiSquareResult { statistic, p_value, dof })
}

/// Checks a pair of count vectors and returns their totals.
fn totals(reference: &[f64], current: &[f64]) -> Result<(f64, f64), DriftError> {
    if reference.len() != current.len() {
        return Err(DriftError::BinMismatch { reference: reference.len(), current: current.len() });
    }
    check_counts(reference)?;
    check_counts(current)?;
    let (n1, n2) = (reference.iter().sum::<f64>(), current.iter().sum::<f64>());
    if n1 <= 0.0 {
        return Err(DriftError::EmptyReference);
    }
    if n2 <= 0.0 {
        return Err(DriftError::EmptyCurrent);
    }
    Ok((n1, n2))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGES: [f64; 5] = [0.0, 1.0, 2.0, 3.0, 4.0];

    #[test]
    fn identical_distributions() {
        let r = [10.0, 20.0, 30.0, 40.0];
        let c = [1.0, 2.0, 3.0, 4.0];
        let ks = ks_binned(&r, &c).unwrap();
        assert_eq!(ks.statistic, 0.0);
        assert_eq!(ks.p_value, 1.0);
        assert_eq!(psi(&r, &c).unwrap(), 0.0);
        assert_eq!(jensen_shannon(&r, &c).unwrap(), 0.0);
        assert_eq!(wasserstein_binned(&EDGES, &r, &c).unwrap(), 0.0);
        assert_eq!(normalized_wasserstein(&EDGES, &r, &c).unwrap(), 0.0);
        let chi = chi_square(&r, &c).unwrap();
        assert_eq!((chi.statistic, chi.p_value, chi.dof), (0.0, 1.0, 3));
    }

    #[test]
    fn disjoint_distributions() {
        let (r, c) = ([5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]);
        assert_eq!(ks_binned(&r, &c).unwrap().statistic, 1.0);
        assert_eq!(wasserstein_binned(&EDGES, &r, &c).unwrap(), 3.0);
        // Reference std is 0: the raw distance is returned.
        assert_eq!(normalized_wasserstein(&EDGES, &r, &c).unwrap(), 3.0);
        assert!((jensen_shannon(&r, &c).unwrap() - std::f64::consts::LN_2.sqrt()).abs() < 1e-15);
        let expected_psi = 2.0 * (1.0 - PSI_EMPTY_FRACTION) * (1.0 / PSI_EMPTY_FRACTION).ln();
        assert!((psi(&r, &c).unwrap() - expected_psi).abs() < 1e-12);
    }

    #[test]
    fn chi_square_flags_a_new_category_and_skips_empty_ones() {
        let chi = chi_square(&[4.0, 4.0, 0.0], &[2.0, 2.0, 4.0]).unwrap();
        assert_eq!((chi.dof, chi.statistic, chi.p_value), (2, f64::INFINITY, 0.0));
        let chi = chi_square(&[4.0, 4.0, 0.0], &[3.0, 1.0, 0.0]).unwrap();
        assert_eq!((chi.dof, chi.statistic), (1, 1.0));
        let single = chi_square(&[4.0, 0.0], &[1.0, 0.0]).unwrap();
        assert_eq!((single.dof, single.p_value), (0, 1.0));
    }

    #[test]
    fn kolmogorov_known_values() {
        // scipy.stats.kstwobign.sf
        assert_eq!(kolmogorov_sf(0.0), 1.0);
        assert_eq!(kolmogorov_sf(0.01), 1.0);
        assert!((kolmogorov_sf(1.0) - 0.26999967167735456).abs() < 1e-15);
        assert!((kolmogorov_sf(3.0) / 3.045995948942526e-08 - 1.0).abs() < 1e-12);
        assert_eq!(kolmogorov_sf(40.0), 0.0);
    }

    #[test]
    fn bad_input_is_an_error() {
        let ok = [1.0, 2.0];
        assert_eq!(psi(&ok, &[1.0]), Err(DriftError::BinMismatch { reference: 2, current: 1 }));
        assert_eq!(ks_binned(&[0.0, 0.0], &ok), Err(DriftError::EmptyReference));
        assert_eq!(jensen_shannon(&ok, &[0.0, 0.0]), Err(DriftError::EmptyCurrent));
        assert_eq!(chi_square(&ok, &[1.0, -1.0]), Err(DriftError::InvalidCounts));
        assert_eq!(chi_square(&[], &[]), Err(DriftError::EmptyReference));
        assert_eq!(wasserstein_binned(&[0.0, 1.0], &ok, &ok), Err(DriftError::EdgeMismatch { edges: 2, bins: 2 }));
        assert_eq!(wasserstein_binned(&[1.0, 0.0, 2.0], &ok, &ok), Err(DriftError::InvalidEdges));
    }
}

/// One-sided p-value that the rate `x1 / n1` exceeds `x2 / n2`; 1 when either sample is empty
/// or nothing (or everything) happened in both.
///
/// Where every cell of the 2x2 table is expected to hold at least [`MIN_EXPECTED_FOR_Z`] under
/// equal rates, the pooled two-proportion z-test (as `statsmodels.stats.proportion.
/// proportions_ztest(..., alternative="larger")`); below that its normal approximation makes
/// single events look significant (1 error in 30 against 10 in 2,000: p = 0.018), and Fisher's
/// exact test decides instead ([`fisher_greater_p_value`]: p = 0.15 there).
///
/// Counts that can exceed their sample (events per prediction: several clicks on one search)
/// are not proportions, and the pooled variance would go negative: those are compared as
/// rates by [`rate_greater_p_value`].
pub fn proportion_greater_p_value(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    if x1 > n1 || x2 > n2 {
        return rate_greater_p_value(x1, n1, x2, n2);
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    if n1.min(n2) as f64 * pooled.min(1.0 - pooled) < MIN_EXPECTED_FOR_Z {
        return fisher_greater_p_value(x1, n1, x2, n2);
    }
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        return 1.0;
    }
    let z = (x1 as f64 / n1f - x2 as f64 / n2f) / se;
    let normal = statrs::distribution::Normal::standard();
    1.0 - normal.cdf(z)
}

/// The smallest expected cell count of a 2x2 table for which [`proportion_greater_p_value`]
/// trusts the normal approximation (the usual rule of thumb).
pub const MIN_EXPECTED_FOR_Z: f64 = 5.0;

/// One-sided Fisher exact p-value that the proportion `x1 / n1` exceeds `x2 / n2`: given the
/// `x1 + x2` events, the chance that sample 1 holds `x1` of them or more when both rates are
/// equal (hypergeometric; `scipy.stats.fisher_exact([[x1, n1 - x1], [x2, n2 - x2]],
/// alternative="greater")`). 1 when either sample is empty or `x1` is 0; needs `x1 <= n1` and
/// `x2 <= n2` (1 otherwise).
pub fn fisher_greater_p_value(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    use statrs::distribution::{DiscreteCDF, Hypergeometric};
    if n1 == 0 || n2 == 0 || x1 == 0 || x1 > n1 || x2 > n2 {
        return 1.0;
    }
    match Hypergeometric::new(n1 + n2, x1 + x2, n1) {
        // P(X >= x1) = P(X > x1 - 1)
        Ok(table) => table.sf(x1 - 1).clamp(0.0, 1.0),
        Err(_) => 1.0,
    }
}

/// One-sided p-value that events per unit of exposure are more frequent in sample 1 (`x1`
/// events over `n1`) than in sample 2: the conditional exact test of two Poisson rates (given
/// `x1 + x2` events, `x1` is binomial with success probability `n1 / (n1 + n2)` when the rates
/// are equal; `statsmodels`' `test_poisson_2indep(..., method="exact-cond",
/// alternative="larger")`). 1 when either exposure is empty or no event happened.
pub fn rate_greater_p_value(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    use statrs::distribution::{Binomial, DiscreteCDF};
    let events = x1 + x2;
    if n1 == 0 || n2 == 0 || events == 0 || x1 == 0 {
        return 1.0;
    }
    match Binomial::new(n1 as f64 / (n1 + n2) as f64, events) {
        // P(X >= x1) = P(X > x1 - 1)
        Ok(binomial) => binomial.sf(x1 - 1),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod proportion_tests {
    use super::{fisher_greater_p_value, proportion_greater_p_value, rate_greater_p_value};

    #[test]
    fn rates_above_one_event_per_item_are_compared_as_poisson_rates() {
        // scipy: binomtest(x1, x1 + x2, n1 / (n1 + n2), alternative="greater").pvalue
        for (x1, n1, x2, n2, want) in [
            (900, 300, 360, 300, 4.9938224076172516e-54),
            (30, 1000, 10, 1000, 0.0011107168866146822),
            (5, 100, 0, 50, 0.13168724279835387),
        ] {
            let got = rate_greater_p_value(x1, n1, x2, n2);
            assert!((got - want).abs() <= 1e-9 * want.max(1e-300) + 1e-15, "{x1}/{n1} vs {x2}/{n2}: {got} vs {want}");
        }
        assert_eq!(rate_greater_p_value(0, 10, 4, 10), 1.0);
        assert!(rate_greater_p_value(360, 300, 900, 300) > 0.999_999);
        // Three clicks per search against 1.2: the pooled proportion test would take the square
        // root of a negative variance (NaN, which no threshold catches); the rate test decides.
        let p = proportion_greater_p_value(900, 300, 360, 300);
        assert!(p.is_finite() && p < 1e-50, "{p}");
        assert!(proportion_greater_p_value(360, 300, 900, 300) > 0.999_999);
    }

    #[test]
    fn matches_the_pooled_z_test_where_every_cell_is_expected_to_hold_five() {
        // scipy: norm.sf(z) of the pooled two-proportion z statistic.
        for (x1, n1, x2, n2, want) in
            [(30, 300, 45, 900, 0.0009728868468695724), (60, 2000, 40, 2000, 0.021409114975605333)]
        {
            let got = proportion_greater_p_value(x1, n1, x2, n2);
            assert!((got - want).abs() < 1e-9, "{x1}/{n1} vs {x2}/{n2}: {got} vs {want}");
        }
        assert_eq!(proportion_greater_p_value(0, 100, 0, 100), 1.0);
        assert_eq!(proportion_greater_p_value(1, 0, 0, 100), 1.0);
    }

    #[test]
    fn small_expected_counts_take_fishers_exact_test() {
        // scipy: fisher_exact([[x1, n1 - x1], [x2, n2 - x2]], alternative="greater").pvalue
        for (x1, n1, x2, n2, want) in [
            // One error in 30 against 10 in 2,000: the z-test's p is 0.0179, a rollback.
            (1, 30, 10, 2000, 0.15141290930605614),
            (3, 200, 0, 900, 0.0059368427333343285),
            (2, 300, 9, 900, 0.8041978962626571),
            (5, 40, 1, 60, 0.03633972801866763),
            (10, 10, 0, 20, 3.328339160423118e-08),
        ] {
            for got in [proportion_greater_p_value(x1, n1, x2, n2), fisher_greater_p_value(x1, n1, x2, n2)] {
                assert!((got - want).abs() <= 1e-9 * want, "{x1}/{n1} vs {x2}/{n2}: {got} vs {want}");
            }
        }
        assert_eq!(fisher_greater_p_value(0, 10, 3, 10), 1.0);
        assert_eq!(fisher_greater_p_value(1, 0, 3, 10), 1.0);
    }
}
