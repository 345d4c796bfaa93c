//! Inspect API image bytes: PNG/JPEG decode under the edge's default `ImageLimits`, then preprocessing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_inference::config::{Channels, ImagePreprocess};
use vigil_inference::image::{ImageLimits, prepare};

fuzz_target!(|data: &[u8]| {
    // The scratch detector's [preprocess] (models/scratch-detector/1/model.toml).
    let pre = ImagePreprocess {
        kind: "image".into(),
        width: 128,
        height: 128,
        channels: Channels::Gray,
        resize: "bilinear".into(),
        mean: 0.5,
        std: 0.5,
        layout: "NCHW".into(),
    };
    let _ = prepare(data, &pre, &ImageLimits::default());
});
