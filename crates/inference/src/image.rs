//! Image decoding with explicit limits and preprocessing into a model's input tensor.

use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageFormat, ImageReader, Luma, Rgb};

use crate::InferenceError;
use crate::config::{Channels, ImagePreprocess};
use crate::features::{ImageFeatures, image_features_scaled};
use crate::tensor::Tensor;

/// Limits applied before an image is decoded.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageLimits {
    /// Largest width or height accepted, in pixels.
    pub max_side: u32,
    /// Smallest width or height accepted, in pixels.
    pub min_side: u32,
    /// Most bytes an image may take decoded (its pixels as stored: width x height x bytes per
    /// pixel), read from its header before decoding.
    pub max_decode_bytes: u64,
    /// Most memory the images being prepared at once may take together (decoded pixels and
    /// working planes, estimated from their headers by [`preparing_bytes`]): an image waits for
    /// room, so a burst of small files that decode to large images cannot exhaust memory.
    pub max_preparing_bytes_in_flight: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_side: 4096, min_side: 16, max_decode_bytes: 128 << 20, max_preparing_bytes_in_flight: 512 << 20 }
    }
}

/// Bytes per pixel that preparing takes beside the decoded pixels at their peak: an 8-bit RGB
/// copy (when the image is stored otherwise) and two f32 planes at full size (the luma plane,
/// and one channel plane for an RGB model).
const PREPARING_BYTES_PER_PIXEL: u64 = 3 + 4 + 4;

/// What preparing the largest image `limits` let through takes (`max_decode_bytes` decoded,
/// `max_side` squared pixels of working planes): the least `max_preparing_bytes_in_flight` that
/// can hold every allowed image.
pub fn largest_preparing_bytes(limits: &ImageLimits) -> u64 {
    let side = u64::from(limits.max_side);
    limits.max_decode_bytes.min(side * side * 8) + side * side * PREPARING_BYTES_PER_PIXEL
}

/// The memory preparing an image takes at its peak, from its header alone: the decoded pixels
/// and the working planes. None when the header cannot be read or is beyond `limits` (decoding
/// refuses it before allocating, and says why).
pub fn preparing_bytes(bytes: &[u8], limits: &ImageLimits) -> Option<u64> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok()?;
    let decoder = reader.into_decoder().ok()?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    let decoded = image::ImageDecoder::total_bytes(&decoder);
    let sides = limits.min_side..=limits.max_side;
    if !sides.contains(&width) || !sides.contains(&height) || decoded > limits.max_decode_bytes {
        return None;
    }
    Some(decoded + u64::from(width) * u64::from(height) * PREPARING_BYTES_PER_PIXEL)
}

/// A decoded, preprocessed image.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// The model input, shape [1, C, H, W].
    pub tensor: Tensor,
    /// Input features of the grayscale image at model resolution.
    pub features: ImageFeatures,
    /// Original size.
    pub width: u32,
    pub height: u32,
}

/// Decodes a PNG or JPEG, refusing empty, unknown, corrupt, too small or too large images.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, InferenceError> {
    if bytes.is_empty() {
        return Err(InferenceError::invalid("image is empty (0 bytes); send PNG or JPEG bytes"));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| InferenceError::invalid(format!("image cannot be read: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png) | Some(ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(InferenceError::invalid(format!("image format {other:?} is not supported; send PNG or JPEG")));
        }
        None => {
            return Err(InferenceError::invalid(format!(
                "image is not PNG or JPEG ({} bytes of unknown format)",
                bytes.len()
            )));
        }
    }
    let mut decoder =
        reader.into_decoder().map_err(|e| InferenceError::invalid(format!("image header is invalid: {e}")))?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    if width > limits.max_side || height > limits.max_side {
        return Err(InferenceError::invalid(format!(
            "image is {width}x{height} pixels; the limit is {0}x{0}",
            limits.max_side
        )));
    }
    if width < limits.min_side || height < limits.min_side {
        return Err(InferenceError::invalid(format!(
            "image is {width}x{height} pixels; the minimum is {0}x{0}",
            limits.min_side
        )));
    }
    // The decoders check only the dimensions against `Limits`, and allocate the whole image at
    // once: its size is checked here, from the header.
    let decoded = image::ImageDecoder::total_bytes(&decoder);
    if decoded > limits.max_decode_bytes {
        let color = image::ImageDecoder::color_type(&decoder);
        return Err(InferenceError::invalid(format!(
            "image is {width}x{height} pixels of {color:?}, {decoded} bytes decoded; the limit is {} bytes",
            limits.max_decode_bytes
        )));
    }
    let mut decode_limits = image::Limits::default();
    decode_limits.max_alloc = Some(limits.max_decode_bytes);
    decode_limits.max_image_width = Some(limits.max_side);
    decode_limits.max_image_height = Some(limits.max_side);
    image::ImageDecoder::set_limits(&mut decoder, decode_limits)
        .map_err(|e| InferenceError::invalid(format!("image exceeds decoding limits: {e}")))?;
    DynamicImage::from_decoder(decoder)
        .map_err(|e| InferenceError::invalid(format!("image is corrupt or truncated: {e}")))
}

/// Images (and model inputs) of at most this many pixels together prepare in well under a
/// millisecond: quick enough to do on the thread that received them.
pub const QUICK_PREPARE_PIXELS: u64 = 2 * 256 * 256;

/// Whether preparing `bytes` for `pre` is quick enough for a network thread: the image's header
/// and the model's input size add up to at most [`QUICK_PREPARE_PIXELS`] pixels. An image whose
/// header cannot be read is not (its error comes from [`prepare`], wherever it runs).
pub fn is_quick_to_prepare(bytes: &[u8], pre: &ImagePreprocess) -> bool {
    let Ok(reader) = ImageReader::new(Cursor::new(bytes)).with_guessed_format() else { return false };
    let Ok((width, height)) = reader.into_dimensions() else { return false };
    u64::from(width) * u64::from(height) + u64::from(pre.width) * u64::from(pre.height) <= QUICK_PREPARE_PIXELS
}

/// Decodes and preprocesses an encoded image as `pre` says.
pub fn prepare(bytes: &[u8], pre: &ImagePreprocess, limits: &ImageLimits) -> Result<PreparedImage, InferenceError> {
    let image = decode(bytes, limits)?;
    Ok(prepare_decoded(&image, pre))
}

/// Preprocesses a decoded image: grayscale or RGB planes at model size, normalised, NCHW.
pub fn prepare_decoded(image: &DynamicImage, pre: &ImagePreprocess) -> PreparedImage {
    let (width, height) = (image.width(), image.height());
    let converted;
    let rgb = match image.as_rgb8() {
        Some(rgb) => rgb,
        None => {
            converted = image.to_rgb8();
            &converted
        }
    };
    let (w, h) = (pre.width, pre.height);
    let plane = |values: Vec<f32>| -> ImageBuffer<Luma<f32>, Vec<f32>> {
        ImageBuffer::from_raw(width, height, values).expect("one value per pixel")
    };
    // Planes in 0..1 at model resolution (the resampler clamps float pixels to 0..1).
    let gray_full = plane(luma_plane(rgb.as_raw()));
    let gray = resize_plane(gray_full, w, h);
    let features = image_features_scaled(gray.as_raw(), w as usize, h as usize, 255.0);
    let (mean, by_std) = (pre.mean, 1.0 / pre.std);
    let scale = move |v: f32| (v - mean) * by_std;
    let shape = vec![1, pre.channels.count() as i64, h as i64, w as i64];
    let tensor = match pre.channels {
        Channels::Gray => Tensor::from_f32_iter(shape, gray.as_raw().iter().map(|&v| scale(v))),
        Channels::Rgb => {
            let mut planes = Vec::with_capacity((w * h * 3) as usize);
            for c in 0..3 {
                let channel = plane(rgb.as_raw().iter().skip(c).step_by(3).map(|&v| v as f32 * BY_255).collect());
                planes.extend(resize_plane(channel, w, h).as_raw().iter().map(|&v| scale(v)));
            }
            Tensor::from_f32(shape, &planes)
        }
    };
    PreparedImage { tensor, features, width, height }
}

/// The luma plane of packed RGB bytes, in 0..1. An indexed loop over a sized output: the
/// compiler reads the interleaved pixels several at a time (an iterator over 3-byte chunks went
/// pixel by pixel at about twice the cost). Compiled for AVX2 too, chosen at run time: three
/// times quicker there than with the baseline's SSE2 (the same results).
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn luma_plane(rgb: &[u8]) -> Vec<f32> {
    let n = rgb.len() / 3;
    let (rgb, mut gray) = (&rgb[..3 * n], vec![0.0f32; n]);
    for (i, g) in gray.iter_mut().enumerate() {
        *g = luma([rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]]) * BY_255;
    }
    gray
}

/// 1/255, to scale 0..255 to 0..1: multiplications by the reciprocal, not divisions (a division
/// per pixel cost more than the rest of the pass; within an ulp of dividing).
const BY_255: f32 = 1.0 / 255.0;

/// Luma of an sRGB pixel in 0..255: 0.2126 R + 0.7152 G + 0.0722 B (no rounding).
#[inline]
pub fn luma(p: [u8; 3]) -> f32 {
    0.2126 * p[0] as f32 + 0.7152 * p[1] as f32 + 0.0722 * p[2] as f32
}

fn resize_plane(plane: ImageBuffer<Luma<f32>, Vec<f32>>, w: u32, h: u32) -> ImageBuffer<Luma<f32>, Vec<f32>> {
    if plane.width() == w && plane.height() == h {
        plane
    } else {
        image::imageops::resize(&plane, w, h, image::imageops::FilterType::Triangle)
    }
}

/// Encodes an RGB image as PNG (for tests and sample making).
pub fn encode_png(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let img: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_fn(width, height, |x, y| Rgb(pixel(x, y)));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).expect("PNG encoding into memory");
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(w: u32, h: u32) -> ImagePreprocess {
        ImagePreprocess {
            kind: "image".into(),
            width: w,
            height: h,
            channels: Channels::Gray,
            resize: "bilinear".into(),
            mean: 0.5,
            std: 0.5,
            layout: "NCHW".into(),
        }
    }

    #[test]
    fn gray_normalisation_matches_the_formula() {
        let png = encode_png(32, 32, |x, y| [(x * 8) as u8, (y * 8) as u8, 100]);
        let p = prepare(&png, &pre(32, 32), &ImageLimits::default()).unwrap();
        assert_eq!(p.tensor.shape, vec![1, 1, 32, 32]);
        let v = p.tensor.to_f32().unwrap();
        let expected = (luma([3 * 8, 5 * 8, 100]) / 255.0 - 0.5) / 0.5;
        assert!((v[5 * 32 + 3] - expected).abs() < 1e-7);
    }

    #[test]
    fn the_luma_plane_is_the_luma_formula_for_every_pixel() {
        // Pseudo-random pixels and a length that is not a multiple of any vector width: the
        // vectorised plane (AVX2 where the CPU has it) must equal the scalar formula bit for bit.
        let rgb: Vec<u8> = (0..3 * 1001u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let plane = luma_plane(&rgb);
        assert_eq!(plane.len(), 1001);
        for (i, (&g, p)) in plane.iter().zip(rgb.chunks_exact(3)).enumerate() {
            assert_eq!(g.to_bits(), (luma([p[0], p[1], p[2]]) * (1.0 / 255.0)).to_bits(), "pixel {i}");
        }
    }

    #[test]
    fn the_decoded_size_is_limited_from_the_header() {
        // 1024x1024 RGB: 3 MiB decoded, a few KiB as a PNG of one colour.
        let png = encode_png(1024, 1024, |_, _| [200, 10, 10]);
        assert!(png.len() < 64 * 1024, "{} bytes", png.len());
        let tight = ImageLimits { max_decode_bytes: 3 << 20, ..ImageLimits::default() };
        assert!(decode(&png, &tight).is_ok(), "exactly at the limit");
        let tighter = ImageLimits { max_decode_bytes: (3 << 20) - 1, ..ImageLimits::default() };
        let e = decode(&png, &tighter).unwrap_err().to_string();
        assert!(e.contains("1024x1024 pixels of Rgb8, 3145728 bytes decoded; the limit is 3145727 bytes"), "{e}");
        // 16 bits per channel doubles it.
        let mut wide = Cursor::new(Vec::new());
        ImageBuffer::<Rgb<u16>, Vec<u16>>::from_pixel(1024, 1024, Rgb([1, 2, 3]))
            .write_to(&mut wide, ImageFormat::Png)
            .unwrap();
        let e = decode(wide.get_ref(), &tight).unwrap_err().to_string();
        assert!(e.contains("6291456 bytes decoded"), "{e}");
    }

    #[test]
    fn preparing_an_image_is_costed_from_its_header() {
        let png = encode_png(1024, 512, |x, y| [x as u8, y as u8, 7]);
        let pixels = 1024 * 512;
        let limits = ImageLimits::default();
        assert_eq!(preparing_bytes(&png, &limits), Some(3 * pixels + PREPARING_BYTES_PER_PIXEL * pixels));
        assert_eq!(preparing_bytes(b"not an image", &limits), None);
        assert_eq!(preparing_bytes(&png[..20], &limits), None, "a header cut short");
        // Beyond the limits: left to decoding, which refuses it by name.
        assert_eq!(preparing_bytes(&png, &ImageLimits { max_side: 1000, ..limits }), None);
        assert_eq!(preparing_bytes(&png, &ImageLimits { max_decode_bytes: 3 * pixels - 1, ..limits }), None);
    }

    #[test]
    fn resizes_to_model_size() {
        let png = encode_png(64, 48, |_, _| [10, 20, 30]);
        let p = prepare(&png, &pre(32, 32), &ImageLimits::default()).unwrap();
        assert_eq!(p.tensor.element_count(), 32 * 32);
        assert_eq!((p.width, p.height), (64, 48));
        assert!((p.features.brightness - luma([10, 20, 30]) as f64).abs() < 1e-3);
    }

    #[test]
    fn only_small_images_for_small_models_are_quick_to_prepare() {
        let small = encode_png(128, 128, |x, y| [x as u8, y as u8, 0]);
        assert!(is_quick_to_prepare(&small, &pre(128, 128)));
        assert!(!is_quick_to_prepare(&small, &pre(512, 512)), "the model's input size counts too");
        assert!(!is_quick_to_prepare(&encode_png(512, 512, |_, _| [0; 3]), &pre(128, 128)));
        // A quarter of a megabyte of PNG holds 48 MiB of pixels: the header decides, not the length.
        let bomb = encode_png(4096, 4096, |_, _| [0; 3]);
        assert!(bomb.len() < 300_000, "{}", bomb.len());
        assert!(!is_quick_to_prepare(&bomb, &pre(128, 128)));
        assert!(!is_quick_to_prepare(b"not an image", &pre(128, 128)));
        assert!(!is_quick_to_prepare(&small[..20], &pre(128, 128)));
    }

    #[test]
    fn jpeg_is_accepted() {
        let img: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_fn(40, 30, |x, _| Rgb([(x * 6) as u8, 80, 80]));
        let mut jpeg = Cursor::new(Vec::new());
        img.write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
        let p = prepare(jpeg.get_ref(), &pre(32, 32), &ImageLimits::default()).unwrap();
        assert_eq!((p.width, p.height), (40, 30));
        assert!(p.features.contrast > 10.0);
    }

    #[test]
    fn bad_images_are_named() {
        let limits = ImageLimits::default();
        let err = |b: &[u8]| decode(b, &limits).unwrap_err().to_string();
        assert!(err(b"").contains("empty"));
        assert!(err(b"hello, this is text").contains("not PNG or JPEG"));
        let png = encode_png(32, 32, |_, _| [1, 2, 3]);
        assert!(err(&png[..png.len() / 2]).contains("corrupt or truncated"));
        assert!(err(&encode_png(1, 1, |_, _| [0, 0, 0])).contains("minimum"));
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert!(err(gif).contains("not supported; send PNG or JPEG"));
    }
}
