//! A mergeable quantile sketch (DDSketch: log-spaced buckets with bounded relative error) over
//! the stored `vigil.v1.Sketch`. Any quantile is within [`RELATIVE_ACCURACY`] of a true value, and
//! two sketches merge by adding counts, so rollups of any windows combine exactly.

use vigil_proto::vigil::v1::Sketch;

/// Relative error bound of quantiles and bucket representatives.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Values closer to zero than this are counted as zero.
const MIN_VALUE: f64 = 1e-9;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn index(magnitude: f64) -> i32 {
    (magnitude.ln() / gamma().ln()).ceil() as i32
}

fn representative(index: i32) -> f64 {
    2.0 * gamma().powi(index) / (gamma() + 1.0)
}

/// Number of values in the sketch.
pub fn count(s: &Sketch) -> u64 {
    s.zero + s.positive.values().sum::<u64>() + s.negative.values().sum::<u64>()
}

/// Adds one value; NaN and infinities are ignored.
pub fn add(s: &mut Sketch, v: f64) {
    if !v.is_finite() {
        return;
    }
    let empty = count(s) == 0;
    if v.abs() < MIN_VALUE {
        s.zero += 1;
    } else if v > 0.0 {
        *s.positive.entry(index(v)).or_default() += 1;
    } else {
        *s.negative.entry(index(-v)).or_default() += 1;
    }
    s.sum += v;
    s.min = if empty { v } else { s.min.min(v) };
    s.max = if empty { v } else { s.max.max(v) };
}

/// Adds `other` into `into`.
pub fn merge(into: &mut Sketch, other: &Sketch) {
    let other_count = count(other);
    if other_count == 0 {
        return;
    }
    let empty = count(into) == 0;
    for (i, c) in &other.positive {
        *into.positive.entry(*i).or_default() += c;
    }
    for (i, c) in &other.negative {
        *into.negative.entry(*i).or_default() += c;
    }
    into.zero += other.zero;
    into.sum += other.sum;
    into.min = if empty { other.min } else { into.min.min(other.min) };
    into.max = if empty { other.max } else { into.max.max(other.max) };
}

/// Every bucket as (representative value, count), in ascending value order.
pub fn buckets(s: &Sketch) -> Vec<(f64, u64)> {
    let mut negative: Vec<(i32, u64)> = s.negative.iter().map(|(i, c)| (*i, *c)).collect();
    negative.sort_by_key(|n| std::cmp::Reverse(n.0));
    let mut positive: Vec<(i32, u64)> = s.positive.iter().map(|(i, c)| (*i, *c)).collect();
    positive.sort_by_key(|p| p.0);
    let mut out: Vec<(f64, u64)> = negative.into_iter().map(|(i, c)| (-representative(i), c)).collect();
    if s.zero > 0 {
        out.push((0.0, s.zero));
    }
    out.extend(positive.into_iter().map(|(i, c)| (representative(i), c)));
    out
}

/// Every bucket as (low, high, count), in ascending order: the value range the bucket stands
/// for, clamped to the observed min and max (the zero bucket is the point 0).
pub fn bucket_ranges(s: &Sketch) -> Vec<(f64, f64, u64)> {
    let g = gamma();
    let clamp = |v: f64| v.clamp(s.min, s.max);
    let mut negative: Vec<(i32, u64)> = s.negative.iter().map(|(i, c)| (*i, *c)).collect();
    negative.sort_by_key(|n| std::cmp::Reverse(n.0));
    let mut positive: Vec<(i32, u64)> = s.positive.iter().map(|(i, c)| (*i, *c)).collect();
    positive.sort_by_key(|p| p.0);
    let mut out: Vec<(f64, f64, u64)> =
        negative.into_iter().map(|(i, c)| (clamp(-g.powi(i)), clamp(-g.powi(i - 1)), c)).collect();
    if s.zero > 0 {
        out.push((0.0, 0.0, s.zero));
    }
    out.extend(positive.into_iter().map(|(i, c)| (clamp(g.powi(i - 1)), clamp(g.powi(i)), c)));
    out
}

/// The sketch as a distribution: each bucket's count spread evenly over [`bucket_ranges`].
pub fn distribution(s: &Sketch) -> Result<vigil_drift::Cdf, vigil_drift::DriftError> {
    vigil_drift::Cdf::from_pieces(bucket_ranges(s).into_iter().map(|(lo, hi, c)| (lo, hi, c as f64)))
}

/// The q-quantile (0 <= q <= 1), clamped to the observed min and max; None when empty.
pub fn quantile(s: &Sketch, q: f64) -> Option<f64> {
    let n = count(s);
    if n == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64).floor() as u64;
    let mut seen = 0;
    for (value, c) in buckets(s) {
        seen += c;
        if seen > rank {
            return Some(value.clamp(s.min, s.max));
        }
    }
    Some(s.max)
}

/// Mean of the added values; None when empty.
pub fn mean(s: &Sketch) -> Option<f64> {
    let n = count(s);
    (n > 0).then(|| s.sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(values: &[f64]) -> Sketch {
        let mut s = Sketch::default();
        values.iter().for_each(|v| add(&mut s, *v));
        s
    }

    #[test]
    fn quantiles_are_within_the_relative_error_of_exact_ones() {
        let values: Vec<f64> = (1..=10_000).map(|i| (i as f64).powf(1.3) / 7.0).collect();
        let s = sketch_of(&values);
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0] {
            let exact = values[(q * (values.len() - 1) as f64).floor() as usize];
            let got = quantile(&s, q).unwrap();
            assert!((got - exact).abs() <= RELATIVE_ACCURACY * exact + 1e-12, "q={q}: {got} vs {exact}");
        }
    }

    #[test]
    fn merging_equals_adding_everything_to_one_sketch() {
        let a: Vec<f64> = (0..500).map(|i| i as f64 * 0.37 - 40.0).collect();
        let b: Vec<f64> = (0..700).map(|i| (i as f64).sqrt()).collect();
        let mut merged = sketch_of(&a);
        merge(&mut merged, &sketch_of(&b));
        let all: Vec<f64> = a.iter().chain(&b).copied().collect();
        let whole = sketch_of(&all);
        assert_eq!(merged.positive, whole.positive);
        assert_eq!(merged.negative, whole.negative);
        assert_eq!((merged.zero, merged.min, merged.max), (whole.zero, whole.min, whole.max));
        assert!((merged.sum - whole.sum).abs() < 1e-9);
        assert_eq!(count(&merged), 1200);
    }

    #[test]
    fn empty_and_non_finite_values() {
        let mut s = Sketch::default();
        add(&mut s, f64::NAN);
        add(&mut s, f64::INFINITY);
        assert_eq!(count(&s), 0);
        assert_eq!(quantile(&s, 0.5), None);
        add(&mut s, 0.0);
        add(&mut s, -2.0);
        assert_eq!(count(&s), 2);
        assert!((quantile(&s, 0.0).unwrap() + 2.0).abs() <= 2.0 * RELATIVE_ACCURACY);
        assert_eq!(mean(&s), Some(-1.0));
    }
}
