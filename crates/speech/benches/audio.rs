//! What the cloud server measures on every speech segment before recognising it: the mean
//! pitch and the loudness normalisation, on three seconds of espeak-ng speech (`./dev setup`
//! installs it). `cargo bench -p vigil-speech --bench audio`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vigil_speech::audio::{Loudness, mean_pitch_hz};
use vigil_speech::espeak::{self, ADULT};

fn segment(c: &mut Criterion) {
    let speech = espeak::say("stainless steel water bottle with a bamboo lid for hiking trips", ADULT)
        .expect("espeak-ng and sox (./dev setup installs them)");
    let seconds = speech.len() as f64 / vigil_speech::SAMPLE_RATE as f64;
    c.bench_function(&format!("mean_pitch_hz ({seconds:.1} s of speech)"), |b| {
        b.iter(|| mean_pitch_hz(black_box(&speech)))
    });
    let loudness = Loudness::default();
    c.bench_function(&format!("loudness normalise ({seconds:.1} s of speech)"), |b| {
        b.iter_batched_ref(|| speech.clone(), |s| loudness.normalise(s), criterion::BatchSize::LargeInput)
    });
}

criterion_group!(benches, segment);
criterion_main!(benches);
