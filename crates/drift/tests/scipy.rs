//! Checks every drift statistic against numpy/scipy on the same deterministic data: binned
//! statistics against scipy on the bins, Wasserstein and KS on raw samples against scipy's own
//! `wasserstein_distance` and `ks_2samp` (its default method, p-value included).
//!
//! Needs `VIGIL_PYTHON`: a Python with numpy and scipy (the project virtualenv).

use std::process::Command;

use serde_json::{Value, json};
use vigil_drift::{
    Cdf, DriftConfig, Histogram, Kind, Method, chi_square, jensen_shannon, ks_binned, ks_distance, ks_p_value,
    normalized_wasserstein, psi, test_feature, wasserstein, wasserstein_binned,
};

/// Computes the reference values from the raw samples: its own binning, then scipy / numpy.
const SCRIPT: &str = r#"
import json, sys
import numpy as np
from scipy import stats
from scipy.spatial import distance

out = {}
for case in json.load(open(sys.argv[1])):
    edges = np.asarray(case["edges"], dtype=float)
    nbins = len(edges) - 1
    def bins(values):
        v = np.asarray(values, dtype=float)  # JSON null (NaN) becomes nan
        v = v[~np.isnan(v)]
        return np.clip(np.searchsorted(edges, v, side="right") - 1, 0, nbins - 1)
    ri, ci = bins(case["reference"]), bins(case["current"])
    raw = lambda values: (lambda v: v[~np.isnan(v)])(np.asarray(values, dtype=float))
    rr, cr = raw(case["reference"]), raw(case["current"])
    r = np.bincount(ri, minlength=nbins).astype(float)
    c = np.bincount(ci, minlength=nbins).astype(float)
    n1, n2 = r.sum(), c.sum()
    ks = stats.ks_2samp(ri, ci)
    ks_raw = stats.ks_2samp(rr, cr)
    centres = (edges[:-1] + edges[1:]) / 2
    wd = stats.wasserstein_distance(centres, centres, r, c)
    mean = np.average(centres, weights=r)
    std = np.sqrt(np.average((centres - mean) ** 2, weights=r))
    rf = np.where(r == 0, 0.0001, r / n1)
    cf = np.where(c == 0, 0.0001, c / n2)
    expected = r / n1 * n2
    keep = (r > 0) | (c > 0)
    with np.errstate(divide="ignore"):
        chi = stats.chisquare(c[keep], expected[keep])
    finite = lambda x: float(x) if np.isfinite(x) else str(x)
    out[case["name"]] = {
        "reference": r.tolist(),
        "current": c.tolist(),
        "ks": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "ks_raw": float(ks_raw.statistic),
        "ks_raw_p": float(ks_raw.pvalue),
        "wasserstein_raw": float(stats.wasserstein_distance(rr, cr)),
        "normalized_wasserstein_raw": float(stats.wasserstein_distance(rr, cr) / np.std(rr)),
        "wasserstein": float(wd),
        "normalized_wasserstein": float(wd / std if std > 0 else wd),
        "jensen_shannon": float(distance.jensenshannon(r / n1, c / n2)),
        "psi": float(np.sum((cf - rf) * np.log(cf / rf))),
        "chi_square": finite(chi.statistic),
        "chi_square_p": float(chi.pvalue),
        "chi_square_dof": int(keep.sum() - 1),
    }
json.dump(out, sys.stdout)
"#;

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Normal samples (Box-Muller).
    fn normal(&mut self, n: usize, mean: f64, std: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let (u, v) = (self.uniform(), self.uniform());
                mean + std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
            })
            .collect()
    }

    /// Category indices drawn with the given probabilities.
    fn categories(&mut self, n: usize, probs: &[f64]) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let mut u = self.uniform();
                let mut k = 0;
                while k + 1 < probs.len() && u >= probs[k] {
                    u -= probs[k];
                    k += 1;
                }
                k as f64
            })
            .collect()
    }
}

struct Case {
    name: &'static str,
    kind: Kind,
    edges: Vec<f64>,
    reference: Vec<f64>,
    current: Vec<f64>,
}

fn linspace(lo: f64, hi: f64, edges: usize) -> Vec<f64> {
    (0..edges).map(|i| lo + (hi - lo) * i as f64 / (edges - 1) as f64).collect()
}

fn category_edges(k: usize) -> Vec<f64> {
    (0..=k).map(|i| i as f64).collect()
}

fn cases() -> Vec<Case> {
    let mut rng = Rng(20_261_129);
    let mut with_nan = rng.normal(700, 0.0, 1.0);
    with_nan.extend([f64::NAN, f64::NAN, 4.0, -4.0]);
    let same = rng.normal(3000, 0.0, 1.0);
    let mut almost_same = same.clone();
    almost_same[..3].iter_mut().for_each(|v| *v += 1.0);
    vec![
        Case {
            name: "almost_same",
            kind: Kind::Numeric,
            edges: linspace(-4.0, 4.0, 33),
            reference: same,
            current: almost_same,
        },
        Case {
            name: "shifted_mean",
            kind: Kind::Numeric,
            edges: linspace(-4.0, 4.0, 17),
            reference: with_nan,
            current: rng.normal(600, 0.3, 1.0),
        },
        Case {
            name: "scaled",
            kind: Kind::Numeric,
            edges: linspace(-3.0, 3.0, 13),
            reference: rng.normal(2000, 0.0, 1.0),
            current: rng.normal(1500, 0.0, 1.5),
        },
        Case {
            name: "empty_bins",
            kind: Kind::Numeric,
            edges: linspace(-6.0, 6.0, 25),
            reference: rng.normal(500, 0.0, 0.5),
            current: rng.normal(400, 1.0, 0.5),
        },
        Case {
            name: "strong_shift",
            kind: Kind::Numeric,
            edges: linspace(-4.0, 6.0, 21),
            reference: rng.normal(900, 0.0, 1.0),
            current: rng.normal(800, 2.0, 1.0),
        },
        Case {
            name: "near_identical",
            kind: Kind::Numeric,
            edges: linspace(-4.0, 4.0, 21),
            reference: rng.normal(5000, 0.0, 1.0),
            current: rng.normal(5000, 0.01, 1.0),
        },
        Case {
            // Above 10,000 values scipy's p-value is asymptotic, and so is ours.
            name: "large_current",
            kind: Kind::Numeric,
            edges: linspace(-4.0, 4.0, 33),
            reference: rng.normal(400, 0.0, 1.0),
            current: rng.normal(12_000, 0.12, 1.0),
        },
        Case {
            name: "categorical_2",
            kind: Kind::Categorical,
            edges: category_edges(2),
            reference: rng.categories(300, &[0.3, 0.7]),
            current: rng.categories(250, &[0.35, 0.65]),
        },
        Case {
            name: "categorical_5",
            kind: Kind::Categorical,
            edges: category_edges(5),
            reference: rng.categories(1500, &[0.1, 0.2, 0.3, 0.25, 0.15]),
            current: rng.categories(900, &[0.15, 0.2, 0.25, 0.25, 0.15]),
        },
        Case {
            name: "new_category",
            kind: Kind::Categorical,
            edges: category_edges(4),
            reference: rng.categories(400, &[0.5, 0.3, 0.2, 0.0]),
            current: rng.categories(300, &[0.45, 0.3, 0.15, 0.1]),
        },
    ]
}

/// Runs the scipy script on the cases and returns its output keyed by case name.
fn scipy_reference(cases: &[Case]) -> Value {
    let Ok(python) = std::env::var("VIGIL_PYTHON") else {
        panic!(
            "VIGIL_PYTHON is not set: run the tests through `./dev test`, or set VIGIL_PYTHON to a Python with numpy and scipy (the project virtualenv, e.g. ~/.cache/vigil/venv/bin/python)"
        );
    };
    let input: Vec<Value> = cases
        .iter()
        .map(|c| json!({"name": c.name, "edges": c.edges, "reference": c.reference, "current": c.current}))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    serde_json::to_writer(file.as_file(), &input).unwrap();
    let output = Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run VIGIL_PYTHON={python}: {e}"));
    assert!(output.status.success(), "scipy script failed:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[track_caller]
fn assert_close(case: &str, what: &str, ours: f64, theirs: &Value, rel: f64) {
    let theirs = match theirs.as_str() {
        Some("inf") => f64::INFINITY,
        _ => theirs.as_f64().unwrap_or_else(|| panic!("{case}/{what}: scipy gave {theirs}")),
    };
    if theirs.is_infinite() {
        assert_eq!(ours, theirs, "{case}/{what}");
        return;
    }
    let ok = (ours - theirs).abs() <= rel * ours.abs().max(theirs.abs()) + 1e-300;
    assert!(ok, "{case}/{what}: ours {ours:e}, scipy {theirs:e}");
}

#[test]
fn statistics_match_scipy() {
    let cases = cases();
    let expected = scipy_reference(&cases);
    for case in &cases {
        let want = &expected[case.name];
        let name = case.name;
        let r = Histogram::from_values(case.edges.clone(), &case.reference).unwrap();
        let c = Histogram::from_values(case.edges.clone(), &case.current).unwrap();
        assert_eq!(serde_json::to_value(&r.counts).unwrap(), want["reference"], "{name}: reference binning");
        assert_eq!(serde_json::to_value(&c.counts).unwrap(), want["current"], "{name}: current binning");
        let (rc, cc) = (r.counts.as_slice(), c.counts.as_slice());

        // Exact p-values agree to rounding; scipy's asymptotic one (above 10,000 values) within 2.5%.
        let large = case.reference.len().max(case.current.len()) > vigil_drift::KS_EXACT_MAX_N;
        let p_tolerance = if large { 0.025 } else { 1e-6 };
        let ks = ks_binned(rc, cc).unwrap();
        assert_close(name, "ks", ks.statistic, &want["ks"], 1e-9);
        assert_close(name, "ks_p", ks.p_value, &want["ks_p"], p_tolerance);

        // Unbinned: the raw samples' own distances.
        let (r_raw, c_raw) = (Cdf::from_samples(&case.reference), Cdf::from_samples(&case.current));
        let d = ks_distance(&r_raw, &c_raw).unwrap();
        assert_close(name, "ks_raw", d, &want["ks_raw"], 1e-9);
        let p = ks_p_value(d, r_raw.total() as usize, c_raw.total() as usize);
        assert_close(name, "ks_raw_p", p, &want["ks_raw_p"], p_tolerance);
        let w = wasserstein(&r_raw, &c_raw).unwrap();
        assert_close(name, "wasserstein_raw", w, &want["wasserstein_raw"], 1e-9);
        assert_close(name, "normalized_wasserstein_raw", w / r_raw.std(), &want["normalized_wasserstein_raw"], 1e-9);
        assert_close(name, "wasserstein", wasserstein_binned(&case.edges, rc, cc).unwrap(), &want["wasserstein"], 1e-9);
        let nw = normalized_wasserstein(&case.edges, rc, cc).unwrap();
        assert_close(name, "normalized_wasserstein", nw, &want["normalized_wasserstein"], 1e-9);
        assert_close(name, "jensen_shannon", jensen_shannon(rc, cc).unwrap(), &want["jensen_shannon"], 1e-9);
        assert_close(name, "psi", psi(rc, cc).unwrap(), &want["psi"], 1e-9);
        let chi = chi_square(rc, cc).unwrap();
        assert_close(name, "chi_square", chi.statistic, &want["chi_square"], 1e-9);
        assert_close(name, "chi_square_p", chi.p_value, &want["chi_square_p"], 1e-6);
        if name == "new_category" {
            assert_eq!((chi.statistic, chi.p_value), (f64::INFINITY, 0.0), "a new category is drift");
        }
        assert_eq!(Some(chi.dof as u64), want["chi_square_dof"].as_u64(), "{name}: dof");

        // The auto choice reports the same numbers as the statistic it picked.
        let result = test_feature(&r, cc, case.kind, &DriftConfig::default()).unwrap();
        let key = match result.method {
            Method::Ks => "ks",
            Method::Wasserstein => "normalized_wasserstein",
            Method::JensenShannon => "jensen_shannon",
            Method::ChiSquare => "chi_square",
            other => panic!("{name}: auto chose {other:?}"),
        };
        assert_close(name, key, result.statistic, &want[key], 1e-9);
        assert_close(name, "psi", result.psi, &want["psi"], 1e-9);
        if let Some(p) = result.p_value {
            assert_close(name, "p_value", p, &want[format!("{key}_p").as_str()], p_tolerance);
        }
    }
}

#[test]
fn decisions_on_shifted_and_identical_data() {
    let cfg = DriftConfig::default();
    let mut rng = Rng(7);
    let edges = linspace(-4.0, 4.0, 17);
    for (n, numeric) in [(800, Method::Ks), (5000, Method::Wasserstein)] {
        let reference = Histogram::from_values(edges.clone(), &rng.normal(n, 0.0, 1.0)).unwrap();
        let shifted = Histogram::from_values(edges.clone(), &rng.normal(n, 1.0, 1.0)).unwrap();

        let same = test_feature(&reference, &reference.counts, Kind::Numeric, &cfg).unwrap();
        assert_eq!((same.method, same.statistic, same.drifted, same.psi), (numeric, 0.0, false, 0.0));
        let moved = test_feature(&reference, &shifted.counts, Kind::Numeric, &cfg).unwrap();
        assert_eq!(moved.method, numeric);
        assert!(moved.drifted, "{moved:?}");
        assert!(moved.psi > 0.25, "{moved:?}");
    }
    let cat_edges = category_edges(3);
    for (n, categorical) in [(600, Method::ChiSquare), (3000, Method::JensenShannon)] {
        let reference = Histogram::from_values(cat_edges.clone(), &rng.categories(n, &[0.6, 0.3, 0.1])).unwrap();
        let shifted = Histogram::from_values(cat_edges.clone(), &rng.categories(n, &[0.3, 0.3, 0.4])).unwrap();
        let same = test_feature(&reference, &reference.counts, Kind::Categorical, &cfg).unwrap();
        assert_eq!((same.method, same.drifted), (categorical, false));
        let moved = test_feature(&reference, &shifted.counts, Kind::Categorical, &cfg).unwrap();
        assert_eq!((moved.method, moved.drifted), (categorical, true), "{moved:?}");
    }
}
