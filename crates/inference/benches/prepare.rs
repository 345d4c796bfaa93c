//! What Inspect does to an image before the model runs, step by step, on the shipped model's
//! preprocessing and a 128x128 sample photo: decode, preprocess with features, features alone.
//! `cargo bench -p vigil-inference --bench prepare`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use vigil_inference::config::ModelConfig;
use vigil_inference::features::image_features_scaled;
use vigil_inference::image::{ImageLimits, decode, is_quick_to_prepare, prepare, prepare_decoded};

fn steps(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let png = std::fs::read(root.join("samples/normal/normal_000_ok.png")).expect("a sample image");
    let config = ModelConfig::load(&root.join("models/scratch-detector/1/model.toml")).expect("the shipped model");
    let pre = config.preprocess.expect("an image model");
    let limits = ImageLimits::default();
    let image = decode(&png, &limits).expect("a PNG");
    let prepared = prepare_decoded(&image, &pre);
    let plane: Vec<f32> = prepared.tensor.to_f32().expect("FP32").iter().map(|v| v * pre.std + pre.mean).collect();
    let (w, h) = (pre.width as usize, pre.height as usize);

    c.bench_function("decode (128x128 RGB PNG)", |b| b.iter(|| decode(black_box(&png), &limits)));
    c.bench_function("prepare_decoded (gray plane, features, tensor)", |b| {
        b.iter(|| prepare_decoded(black_box(&image), &pre))
    });
    c.bench_function("features (128x128 plane)", |b| b.iter(|| image_features_scaled(black_box(&plane), w, h, 255.0)));
    c.bench_function("is_quick_to_prepare (header)", |b| b.iter(|| is_quick_to_prepare(black_box(&png), &pre)));
    c.bench_function("prepare (all of it)", |b| b.iter(|| prepare(black_box(&png), &pre, &limits)));
}

criterion_group!(benches, steps);
criterion_main!(benches);
