//! Voice search `SpeechSegment.pcm16` bytes through the cloud's pure audio steps (decode, pitch, loudness, split, pad, WAV).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_cloud::config::VoiceSearchConfig;
use vigil_speech::audio::{self, Loudness, SAMPLES_PER_MS};

fuzz_target!(|data: &[u8]| {
    // As `VoiceSearchService::recognise` does, with the default limits (its `loudness()` is private).
    let limits = VoiceSearchConfig::default();
    let Ok(mut samples) = audio::pcm16_to_f32(data) else { return };
    if (samples.len() / SAMPLES_PER_MS) as u64 > limits.max_segment_ms {
        return;
    }
    let _ = audio::mean_pitch_hz(&samples);
    let loudness = Loudness { target_dbfs: limits.target_dbfs, max_gain_db: limits.max_gain_db, ..Loudness::default() };
    let _ = loudness.normalise(&mut samples);
    for range in audio::split_at_quiet_points(&samples, limits.split_ms as usize * SAMPLES_PER_MS) {
        let _ = audio::pad(&samples[range], limits.pad_ms, limits.pad_ms);
    }
    // What the capture path stores.
    let _ = audio::pcm16_to_wav(data);
});
