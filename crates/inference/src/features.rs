//! Input features computed for every image, the monitor's view of the camera:
//! brightness, contrast and sharpness (variance of the Laplacian).

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
    assert_eq!(gray.len(), width * height, "plane size");
    let n = gray.len() as f64;
    if n == 0.0 {
        return ImageFeatures::default();
    }
    let mean = gray.iter().map(|&v| v as f64).sum::<f64>() / n;
    let variance = gray.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    ImageFeatures { brightness: mean, contrast: variance.sqrt(), sharpness: laplacian_variance(gray, width, height) }
}

fn laplacian_variance(gray: &[f32], width: usize, height: usize) -> f64 {
    if width < 3 || height < 3 {
        return 0.0;
    }
    let at = |x: usize, y: usize| gray[y * width + x] as f64;
    let mut sum = 0.0;
    let mut sum_sq = 0.0;
    for y in 1..height - 1 {
        for x in 1..width - 1 {
            let l = at(x, y - 1) + at(x - 1, y) + at(x + 1, y) + at(x, y + 1) - 4.0 * at(x, y);
            sum += l;
            sum_sq += l * l;
        }
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

    #[test]
    fn blur_lowers_sharpness() {
        let sharp: Vec<f32> = (0..64 * 64).map(|i| if (i % 64 + i / 64) % 2 == 0 { 200.0 } else { 50.0 }).collect();
        let blurred: Vec<f32> = sharp.iter().map(|v| 125.0 + (v - 125.0) * 0.1).collect();
        assert!(image_features(&blurred, 64, 64).sharpness < image_features(&sharp, 64, 64).sharpness / 10.0);
    }
}
