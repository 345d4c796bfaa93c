//! Input features computed for every image, the monitor's view of the camera:
//! brightness, contrast and sharpness (variance of the Laplacian).
//!
//! They are computed on every inspected image, so the passes are written for the vector unit
//! and compiled twice: for the baseline x86-64 the binary targets and for AVX2, chosen at run
//! time by the CPU it runs on (`multiversion`); the two give identical results (no fused
//! multiply-adds: Rust does not contract floating-point operations).

use multiversion::multiversion;

/// Input metrics of one image (on the 0..255 grayscale image at model resolution).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ImageFeatures {
    /// Mean intensity.
    pub brightness: f64,
    /// Population standard deviation of intensity.
    pub contrast: f64,
    /// Population variance of the 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] over interior pixels.
    pub sharpness: f64,
}

/// Computes the features of a row-major `width` x `height` grayscale plane in 0..255.
pub fn image_features(gray: &[f32], width: usize, height: usize) -> ImageFeatures {
    image_features_scaled(gray, width, height, 1.0)
}

/// The features of the plane `gray` times `scale` (a 0..1 plane with 255: the 0..255
/// features), without building the scaled plane: the mean and deviations scale by `scale`,
/// the variance of the Laplacian by its square.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn image_features_scaled(gray: &[f32], width: usize, height: usize, scale: f64) -> ImageFeatures {
    assert_eq!(gray.len(), width * height, "plane size");
    let n = gray.len() as f64;
    if n == 0.0 {
        return ImageFeatures::default();
    }
    // Two passes: the mean, then the squared deviations from it.
    let mean = sums(gray, 0.0).0 / n;
    let (deviation, deviation_sq) = sums(gray, mean as f32);
    let variance = (deviation_sq / n - (deviation / n).powi(2)).max(0.0);
    ImageFeatures {
        brightness: mean * scale,
        contrast: variance.sqrt() * scale.abs(),
        sharpness: laplacian_variance(gray, width, height) * scale * scale,
    }
}

/// The sum and the sum of squares of `values - shift`: in f32 within blocks of 128 values, in
/// eight lanes (the vector unit's width), each block's totals added in f64. Over so few values
/// f32 keeps about six digits, and with `shift` at the mean no digits cancel in a variance;
/// summing in f64 throughout cost three times as much (this runs on every request's image).
/// Inlined into its callers, so it is compiled for the vector unit they were compiled for (and
/// a total the caller drops is not computed).
#[inline(always)]
fn sums(values: &[f32], shift: f32) -> (f64, f64) {
    const LANES: usize = 8;
    const BLOCK: usize = 128;
    let (mut total, mut total_sq) = (0.0f64, 0.0f64);
    for block in values.chunks(BLOCK) {
        let (mut sum, mut sum_sq) = ([0.0f32; LANES], [0.0f32; LANES]);
        let (chunks, rest) = block.as_chunks::<LANES>();
        // One pass per total: in one loop the compiler pairs each lane's sum with its square
        // in a vector instead of putting eight lanes of one there.
        for chunk in chunks {
            for lane in 0..LANES {
                sum[lane] += chunk[lane] - shift;
            }
        }
        for chunk in chunks {
            for lane in 0..LANES {
                let d = chunk[lane] - shift;
                sum_sq[lane] += d * d;
            }
        }
        for (lane, &v) in rest.iter().enumerate() {
            let d = v - shift;
            sum[lane] += d;
            sum_sq[lane] += d * d;
        }
        total += sum.iter().map(|&v| f64::from(v)).sum::<f64>();
        total_sq += sum_sq.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    (total, total_sq)
}

#[inline(always)]
fn laplacian_variance(gray: &[f32], width: usize, height: usize) -> f64 {
    if width < 3 || height < 3 {
        return 0.0;
    }
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    let rows: Vec<&[f32]> = gray.chunks_exact(width).collect();
    let mut laplacian = vec![0.0f32; width - 2];
    for window in rows.windows(3) {
        let (up, row, down) = (&window[0][1..width - 1], window[1], &window[2][1..width - 1]);
        let (left, centre, right) = (&row[..width - 2], &row[1..width - 1], &row[2..]);
        // In f32, as the plane is (eight pixels per instruction): each neighbour's difference
        // from the centre first, which is exact between neighbours within a factor of two, so
        // a blurred image's small Laplacian loses nothing to cancellation. The sums are f64.
        let neighbours = up.iter().zip(down).zip(left.iter().zip(right));
        for ((l, &c), ((&u, &d), (&le, &r))) in laplacian.iter_mut().zip(centre).zip(neighbours) {
            *l = ((u - c) + (d - c)) + ((le - c) + (r - c));
        }
        let (s, q) = sums(&laplacian, 0.0);
        sum += s;
        sum_sq += q;
    }
    let count = ((width - 2) * (height - 2)) as f64;
    let mean = sum / count;
    (sum_sq / count - mean * mean).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_image_has_no_contrast_or_sharpness() {
        let f = image_features(&[100.0; 16], 4, 4);
        assert_eq!(f, ImageFeatures { brightness: 100.0, contrast: 0.0, sharpness: 0.0 });
    }

    #[test]
    fn a_single_bright_pixel_matches_a_hand_computation() {
        // 3x3 with a 9 in the centre: one interior pixel, Laplacian = -36; variance of one value = 0.
        let mut g = [0.0f32; 9];
        g[4] = 9.0;
        let f = image_features(&g, 3, 3);
        assert!((f.brightness - 1.0).abs() < 1e-12);
        assert!((f.contrast - (8.0f64).sqrt()).abs() < 1e-12); // E[x^2]=9, mean^2=1
        assert_eq!(f.sharpness, 0.0);
        // 4x3 with a 4 at (1,1): interior (1,1) -> -16, (2,1) -> 4; variance = 100.
        let mut g = [0.0f32; 12];
        g[5] = 4.0;
        assert!((image_features(&g, 4, 3).sharpness - 100.0).abs() < 1e-9);
    }

    /// The mean, the variance and the Laplacian's variance of a plane, computed directly in f64
    /// with two passes each: the reference the features are checked against.
    fn direct_features(gray: &[f32], w: usize, h: usize) -> (f64, f64, f64) {
        let n = gray.len() as f64;
        let mean = gray.iter().map(|&v| v as f64).sum::<f64>() / n;
        let variance = gray.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let at = |x: usize, y: usize| gray[y * w + x] as f64;
        let laplacians: Vec<f64> = (1..h - 1)
            .flat_map(|y| (1..w - 1).map(move |x| (x, y)))
            .map(|(x, y)| at(x, y - 1) + at(x - 1, y) + at(x + 1, y) + at(x, y + 1) - 4.0 * at(x, y))
            .collect();
        let l_mean = laplacians.iter().sum::<f64>() / laplacians.len() as f64;
        let l_var = laplacians.iter().map(|l| (l - l_mean).powi(2)).sum::<f64>() / laplacians.len() as f64;
        (mean, variance, l_var)
    }

    #[test]
    fn features_match_a_direct_two_pass_computation() {
        // 37 x 29: rows and the plane are not multiples of the eight lanes.
        let (w, h) = (37usize, 29usize);
        let gray: Vec<f32> = (0..w * h).map(|i| ((i * 7919) % 256) as f32 + (i % 3) as f32 * 0.25).collect();
        let (mean, variance, l_var) = direct_features(&gray, w, h);
        let f = image_features(&gray, w, h);
        // f32 partial sums over blocks of 128 values keep six digits or more.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
        assert!(close(f.brightness, mean), "{} {mean}", f.brightness);
        assert!(close(f.contrast, variance.sqrt()), "{} {}", f.contrast, variance.sqrt());
        assert!(close(f.sharpness, l_var), "{} {l_var}", f.sharpness);
    }

    #[test]
    fn a_nearly_flat_plane_keeps_its_small_contrast_and_sharpness() {
        // A dim, blurred image in 0..1: 0.5 plus a deviation of a thousandth. A one-pass
        // E[x^2] - E[x]^2 in f32 would lose every digit of its variance.
        let (w, h) = (128usize, 128usize);
        let gray: Vec<f32> = (0..w * h).map(|i| 0.5 + 1e-3 * (((i * 7919) % 101) as f32 / 100.0)).collect();
        let (_, variance, l_var) = direct_features(&gray, w, h);
        let f = image_features(&gray, w, h);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
        assert!(close(f.contrast, variance.sqrt()), "{} {}", f.contrast, variance.sqrt());
        assert!(close(f.sharpness, l_var), "{} {l_var}", f.sharpness);
    }

    #[test]
    fn a_scaled_plane_has_the_features_of_the_plane_scaled() {
        let (w, h) = (37usize, 29usize);
        let unit: Vec<f32> = (0..w * h).map(|i| ((i * 7919) % 256) as f32 / 255.0).collect();
        let scaled: Vec<f32> = unit.iter().map(|v| v * 255.0).collect();
        let (a, b) = (image_features_scaled(&unit, w, h, 255.0), image_features(&scaled, w, h));
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * y.abs().max(1.0);
        assert!(close(a.brightness, b.brightness), "{a:?} {b:?}");
        assert!(close(a.contrast, b.contrast), "{a:?} {b:?}");
        assert!(close(a.sharpness, b.sharpness), "{a:?} {b:?}");
    }

    #[test]
    fn blur_lowers_sharpness() {
        let sharp: Vec<f32> = (0..64 * 64).map(|i| if (i % 64 + i / 64) % 2 == 0 { 200.0 } else { 50.0 }).collect();
        let blurred: Vec<f32> = sharp.iter().map(|v| 125.0 + (v - 125.0) * 0.1).collect();
        assert!(image_features(&blurred, 64, 64).sharpness < image_features(&sharp, 64, 64).sharpness / 10.0);
    }
}
