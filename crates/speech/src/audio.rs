//! Audio as the speech models take it: 16 kHz mono samples in -1..1.

use std::ops::Range;
use std::path::Path;

use crate::{SAMPLE_RATE, SpeechError};

/// Samples per millisecond at [`SAMPLE_RATE`].
pub const SAMPLES_PER_MS: usize = SAMPLE_RATE as usize / 1000;

/// Little-endian signed 16-bit PCM to samples in -1..1.
pub fn pcm16_to_f32(bytes: &[u8]) -> Result<Vec<f32>, SpeechError> {
    if !bytes.len().is_multiple_of(2) {
        return Err(SpeechError::InvalidAudio(format!(
            "PCM16 audio has an odd byte count ({}): each sample is 2 bytes",
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0).collect())
}

/// Samples in -1..1 to little-endian signed 16-bit PCM (clamped).
pub fn f32_to_pcm16(samples: &[f32]) -> Vec<u8> {
    samples.iter().flat_map(|&s| to_i16(s).to_le_bytes()).collect()
}

/// A sample as PCM16, on the scale PCM16 is read with (1.0 is 32,768), so PCM16 read and
/// written again is the same, every value; clamped to what 16 bits hold.
fn to_i16(sample: f32) -> i16 {
    (sample * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Reads a WAV file of 16 kHz mono 16-bit PCM.
pub fn read_wav(path: &Path) -> Result<Vec<f32>, SpeechError> {
    let bad = |why: String| SpeechError::InvalidAudio(format!("{}: {why}", path.display()));
    let mut reader = hound::WavReader::open(path).map_err(|e| bad(e.to_string()))?;
    let spec = reader.spec();
    if spec.sample_rate != SAMPLE_RATE || spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(bad(format!(
            "{} Hz, {} channel(s), {}-bit: need 16000 Hz mono 16-bit PCM (convert with `sox IN -r 16000 -c 1 -b 16 OUT.wav`)",
            spec.sample_rate, spec.channels, spec.bits_per_sample
        )));
    }
    reader.samples::<i16>().map(|s| s.map(|s| s as f32 / 32768.0).map_err(|e| bad(e.to_string()))).collect()
}

/// Writes samples as a 16 kHz mono 16-bit PCM WAV file.
pub fn write_wav(path: &Path, samples: &[f32]) -> Result<(), SpeechError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let fail = |e: hound::Error| SpeechError::InvalidAudio(format!("{}: {e}", path.display()));
    let mut writer = hound::WavWriter::create(path, spec).map_err(fail)?;
    for &s in samples {
        writer.write_sample(to_i16(s)).map_err(fail)?;
    }
    writer.finalize().map_err(fail)
}

/// Little-endian 16-bit PCM samples as the bytes of a 16 kHz mono WAV file.
pub fn pcm16_to_wav(pcm16: &[u8]) -> Result<Vec<u8>, SpeechError> {
    if !pcm16.len().is_multiple_of(2) {
        return Err(SpeechError::InvalidAudio(format!("PCM16 audio has an odd byte count ({})", pcm16.len())));
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let fail = |e: hound::Error| SpeechError::InvalidAudio(format!("writing WAV: {e}"));
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + pcm16.len()));
    let mut writer = hound::WavWriter::new(&mut out, spec).map_err(fail)?;
    for pair in pcm16.chunks_exact(2) {
        writer.write_sample(i16::from_le_bytes([pair[0], pair[1]])).map_err(fail)?;
    }
    writer.finalize().map_err(fail)?;
    Ok(out.into_inner())
}

/// Root-mean-square level in dBFS (0 dB: a full-scale square wave); -inf for silence.
pub fn rms_dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let power = samples.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / samples.len() as f64;
    10.0 * power.log10()
}

/// Samples at or beyond this magnitude count as clipped (the recording hit full scale).
pub const CLIP_LEVEL: f32 = 0.999;

/// How a segment's level is brought to what the recogniser was trained on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loudness {
    /// Target RMS level in dBFS.
    pub target_dbfs: f64,
    /// Most gain applied (quiet noise must not become loud noise).
    pub max_gain_db: f64,
    /// The peak never goes above this after gain (no clipping added).
    pub peak_ceiling: f32,
}

impl Default for Loudness {
    fn default() -> Self {
        Self { target_dbfs: -20.0, max_gain_db: 30.0, peak_ceiling: 0.98 }
    }
}

/// What normalisation measured and did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    /// RMS level before, dBFS.
    pub rms_dbfs: f64,
    /// Peak magnitude before.
    pub peak: f32,
    /// Samples that were clipped in the input (at or beyond [`CLIP_LEVEL`]).
    pub clipped_samples: usize,
    /// Gain applied, dB (negative: attenuated).
    pub gain_db: f64,
}

impl Loudness {
    /// Scales `samples` toward the target level, never past `max_gain_db` nor the peak
    /// ceiling, and reports the input's levels and clipping.
    pub fn normalise(&self, samples: &mut [f32]) -> Levels {
        let rms = rms_dbfs(samples);
        let peak = samples.iter().fold(0f32, |m, &s| m.max(s.abs()));
        let clipped_samples = samples.iter().filter(|s| s.abs() >= CLIP_LEVEL).count();
        let mut gain_db = if rms.is_finite() { (self.target_dbfs - rms).min(self.max_gain_db) } else { 0.0 };
        if peak > 0.0 {
            let headroom_db = 20.0 * (self.peak_ceiling as f64 / peak as f64).log10();
            gain_db = gain_db.min(headroom_db);
        }
        let gain = 10f64.powf(gain_db / 20.0) as f32;
        for s in samples.iter_mut() {
            *s *= gain;
        }
        Levels { rms_dbfs: rms, peak, clipped_samples, gain_db }
    }
}

/// `samples` with `before_ms` and `after_ms` of silence around them.
pub fn pad(samples: &[f32], before_ms: u32, after_ms: u32) -> Vec<f32> {
    let before = before_ms as usize * SAMPLES_PER_MS;
    let after = after_ms as usize * SAMPLES_PER_MS;
    let mut out = Vec::with_capacity(before + samples.len() + after);
    out.resize(before, 0.0);
    out.extend_from_slice(samples);
    out.resize(before + samples.len() + after, 0.0);
    out
}

/// Splits `len` samples into pieces of at most `max_len`, each cut at the quietest 20 ms
/// frame of the second half of the allowed window, so words are not cut where a pause is near.
pub fn split_at_quiet_points(samples: &[f32], max_len: usize) -> Vec<Range<usize>> {
    const FRAME: usize = 20 * SAMPLES_PER_MS;
    let mut pieces = Vec::new();
    let mut start = 0;
    while samples.len() - start > max_len {
        let window = start + max_len / 2..start + max_len;
        let cut = window
            .clone()
            .step_by(FRAME / 2)
            .filter(|&at| at + FRAME <= window.end)
            .min_by(|&a, &b| {
                let energy = |at: usize| samples[at..at + FRAME].iter().map(|s| s * s).sum::<f32>();
                energy(a).total_cmp(&energy(b))
            })
            .map(|at| at + FRAME / 2)
            .unwrap_or(window.end);
        pieces.push(start..cut);
        start = cut;
    }
    pieces.push(start..samples.len());
    pieces
}

/// Mean fundamental frequency (Hz) of the voiced 40 ms frames, by normalised autocorrelation
/// over 60-500 Hz; None when no frame is voiced. A feature that moves with the speaker: a
/// population of higher voices shifts its distribution.
pub fn mean_pitch_hz(samples: &[f32]) -> Option<f64> {
    let pitches: Vec<f64> = samples
        .chunks_exact(PITCH_FRAME)
        .filter(|f| rms_dbfs(f) > -45.0)
        .filter_map(frame_period)
        .map(|lag| SAMPLE_RATE as f64 / lag as f64)
        .collect();
    (!pitches.is_empty()).then(|| pitches.iter().sum::<f64>() / pitches.len() as f64)
}

/// The frame [`mean_pitch_hz`] finds one period in: 40 ms.
const PITCH_FRAME: usize = 40 * SAMPLES_PER_MS;

/// The period of one voiced frame in samples: the first autocorrelation peak above 0.6 over
/// lags of 60-500 Hz, not a multiple of the period. This runs on every segment before it is
/// recognised, so each lag costs one dot product: the two energies come from running sums of
/// squares, and the dot product sums in eight f32 lanes (the vector unit's width), compiled for
/// the baseline x86-64 and for AVX2, chosen at run time (`multiversion`). Three sequential sums
/// per lag took 13 ms for 4 s of speech.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn frame_period(frame: &[f32]) -> Option<usize> {
    let n = frame.len();
    // squares[i]: the energy of frame[..i].
    let mut squares = Vec::with_capacity(n + 1);
    squares.push(0.0f64);
    for &s in frame {
        squares.push(squares[squares.len() - 1] + f64::from(s) * f64::from(s));
    }
    if squares[n] <= 0.0 {
        return None;
    }
    first_peak(pitch_lags(n).map(|lag| {
        let energies = squares[n - lag] * (squares[n] - squares[lag]);
        (lag, dot(&frame[..n - lag], &frame[lag..]) / energies.sqrt().max(1e-12))
    }))
}

/// The lags a period is looked for at in a frame of `n` samples: 60-500 Hz.
fn pitch_lags(n: usize) -> std::ops::RangeInclusive<usize> {
    SAMPLE_RATE as usize / 500..=(SAMPLE_RATE as usize / 60).min(n / 2)
}

/// The lag of the first normalised autocorrelation peak above 0.6, not a multiple of the
/// period, among `correlations` (lag and correlation, lags rising); reads no further than 0.2
/// below the peak once past it. Inlined, so the correlations are computed as the caller was
/// compiled.
#[inline(always)]
fn first_peak(correlations: impl Iterator<Item = (usize, f64)>) -> Option<usize> {
    let mut best = (0usize, 0f64);
    let mut previous = f64::MAX;
    for (lag, r) in correlations {
        if r > 0.6 && r > best.1 && (best.0 == 0 || lag < best.0 * 2 - best.0 / 4) {
            best = (lag, r);
        }
        if best.0 != 0 && r < previous && r < best.1 - 0.2 {
            break;
        }
        previous = r;
    }
    (best.0 != 0).then_some(best.0)
}

/// The dot product of `a` and `b` (of equal length), in eight f32 lanes. Inlined into its
/// caller, so it is compiled for the vector unit the caller was compiled for.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm16_becomes_a_wav_file_holding_the_same_samples() {
        let pcm16 = f32_to_pcm16(&[0.0, 0.5, -0.25, 1.0]);
        let wav = pcm16_to_wav(&pcm16).unwrap();
        let mut reader = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
        assert_eq!((reader.spec().sample_rate, reader.spec().channels, reader.spec().bits_per_sample), (16_000, 1, 16));
        let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        let want: Vec<i16> = pcm16.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(samples, want);
        assert!(pcm16_to_wav(&[1, 2, 3]).is_err());
    }

    fn sine(hz: f64, amplitude: f32, ms: usize) -> Vec<f32> {
        (0..ms * SAMPLES_PER_MS)
            .map(|i| amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / SAMPLE_RATE as f64).sin() as f32)
            .collect()
    }

    #[test]
    fn pcm16_round_trips_and_refuses_odd_bytes() {
        let samples = [0.0f32, 0.5, -0.5, 0.999, -1.0];
        let back = pcm16_to_f32(&f32_to_pcm16(&samples)).unwrap();
        for (a, b) in samples.iter().zip(&back) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Every PCM16 value read and written again is itself.
        let every: Vec<u8> = (i16::MIN..=i16::MAX).flat_map(i16::to_le_bytes).collect();
        assert_eq!(f32_to_pcm16(&pcm16_to_f32(&every).unwrap()), every);
        assert_eq!(
            f32_to_pcm16(&[1.0, -1.0, 2.0, -2.0, f32::NAN]),
            [32767i16, -32768, 32767, -32768, 0].map(i16::to_le_bytes).concat()
        );
        let e = pcm16_to_f32(&[0, 1, 2]).unwrap_err().to_string();
        assert!(e.contains("odd byte count (3)"), "{e}");
    }

    #[test]
    fn a_full_scale_sine_is_minus_3_dbfs() {
        assert!((rms_dbfs(&sine(440.0, 1.0, 1000)) + 3.0103).abs() < 0.01);
        assert!((rms_dbfs(&sine(440.0, 0.1, 1000)) + 23.0103).abs() < 0.01);
        assert_eq!(rms_dbfs(&[0.0; 10]), f64::NEG_INFINITY);
    }

    #[test]
    fn normalising_reaches_the_target_unless_the_peak_or_the_gain_limit_stops_it() {
        let loudness = Loudness::default();
        // Quiet speech-like level: brought up to -20 dBFS.
        let mut quiet = sine(200.0, 0.01, 500);
        let levels = loudness.normalise(&mut quiet);
        assert!((levels.rms_dbfs + 43.01).abs() < 0.01);
        assert!((levels.gain_db - 23.01).abs() < 0.01, "{levels:?}");
        assert!((rms_dbfs(&quiet) + 20.0).abs() < 0.01);
        // A loud, clipped recording: attenuated, clipping counted.
        let mut loud: Vec<f32> = sine(200.0, 1.5, 500).into_iter().map(|s| s.clamp(-1.0, 1.0)).collect();
        let levels = loudness.normalise(&mut loud);
        assert!(levels.clipped_samples > 1000, "{levels:?}");
        assert!(levels.gain_db < 0.0 && (rms_dbfs(&loud) + 20.0).abs() < 0.01, "{levels:?}");
        // A sine's crest factor is 3 dB: -20 dBFS RMS needs no limiting, but a spiky signal does.
        let mut spiky = vec![0.0f32; 16_000];
        spiky[100] = 0.5;
        let levels = loudness.normalise(&mut spiky);
        assert!(spiky[100] <= 0.98 + 1e-6 && levels.gain_db < 6.0, "{levels:?}");
        // Near-silence gets at most max_gain_db.
        let mut hiss = sine(3000.0, 1e-4, 100);
        assert!((loudness.normalise(&mut hiss).gain_db - 30.0).abs() < 1e-9);
        // Silence stays silence.
        let mut silence = vec![0.0f32; 100];
        assert_eq!(loudness.normalise(&mut silence).gain_db, 0.0);
    }

    #[test]
    fn long_audio_is_cut_in_its_pauses() {
        // 1 s tone, 200 ms pause, 1 s tone, 200 ms pause, 1 s tone; at most 1.5 s a piece.
        let mut audio = sine(300.0, 0.5, 1000);
        for _ in 0..2 {
            audio.extend(vec![0.0; 200 * SAMPLES_PER_MS]);
            audio.extend(sine(300.0, 0.5, 1000));
        }
        let pieces = split_at_quiet_points(&audio, 1500 * SAMPLES_PER_MS);
        assert_eq!(pieces.len(), 3, "{pieces:?}");
        for cut in pieces.iter().skip(1).map(|p| p.start) {
            assert!(audio[cut - 80..cut + 80].iter().all(|&s| s == 0.0), "cut at {cut} is not in a pause");
        }
        assert_eq!(pieces.last().unwrap().end, audio.len());
        assert!(pieces.iter().all(|p| p.len() <= 1500 * SAMPLES_PER_MS));
        assert_eq!(split_at_quiet_points(&audio[..100], 1000), vec![0..100]);
    }

    #[test]
    fn pitch_follows_the_fundamental() {
        for hz in [110.0, 180.0, 260.0, 400.0] {
            let p = mean_pitch_hz(&sine(hz, 0.3, 400)).unwrap();
            assert!((p - hz).abs() / hz < 0.03, "{hz} Hz read as {p}");
        }
        assert_eq!(mean_pitch_hz(&vec![0.0; 16_000]), None);
    }

    /// The period search with each correlation computed directly, every sum over the lag's
    /// samples in f64: the reference the running sums and vector lanes are held to.
    fn reference_frame_period(frame: &[f32]) -> Option<usize> {
        let n = frame.len();
        let sum = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>();
        first_peak(pitch_lags(n).map(|lag| {
            let (a, b) = (&frame[..n - lag], &frame[lag..]);
            (lag, sum(a, b) / (sum(a, a) * sum(b, b)).sqrt().max(1e-12))
        }))
    }

    #[test]
    fn the_period_search_matches_the_direct_computation_frame_by_frame() {
        // A voice-like signal: a fundamental gliding from 85 to 320 Hz with six harmonics
        // falling off, its loudness swelling, and a little pseudo-random noise; then noise alone.
        let mut noise = 0x2545_f491_u32;
        let mut next_noise = move || {
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            noise as f32 / u32::MAX as f32 - 0.5
        };
        let seconds = 3.0;
        let total = (seconds * SAMPLE_RATE as f64) as usize;
        let mut phase = 0.0f64;
        let mut signal = Vec::with_capacity(total + SAMPLE_RATE as usize);
        for i in 0..total {
            let t = i as f64 / SAMPLE_RATE as f64;
            let hz = 85.0 + (320.0 - 85.0) * t / seconds;
            phase += 2.0 * std::f64::consts::PI * hz / SAMPLE_RATE as f64;
            let voice: f64 = (1..=6).map(|k| (k as f64 * phase).sin() / k as f64).sum();
            let swell = 0.15 + 0.1 * (2.0 * std::f64::consts::PI * 1.3 * t).sin();
            signal.push((swell * voice) as f32 + 0.01 * next_noise());
        }
        signal.extend((0..SAMPLE_RATE).map(|_| 0.2 * next_noise()));
        let frames: Vec<&[f32]> = signal.chunks_exact(PITCH_FRAME).collect();
        let (mut voiced, mut differ) = (0, Vec::new());
        for (i, frame) in frames.iter().enumerate() {
            let (fast, direct) = (frame_period(frame), reference_frame_period(frame));
            voiced += usize::from(direct.is_some());
            if fast != direct {
                differ.push((i, fast, direct));
            }
        }
        assert!(voiced >= 70, "most of the 75 voiced frames are found: {voiced}");
        assert!(differ.is_empty(), "frames whose period differs (frame, fast, direct): {differ:?}");
        let mean = mean_pitch_hz(&signal).unwrap();
        assert!((150.0..260.0).contains(&mean), "the glide's mean pitch, about 200 Hz: {mean}");
    }

    #[test]
    fn padding_adds_silence_on_both_sides() {
        let padded = pad(&[0.5; 10], 2, 1);
        assert_eq!(padded.len(), 32 + 10 + 16);
        assert!(padded[..32].iter().all(|&s| s == 0.0) && padded[32..42].iter().all(|&s| s == 0.5));
    }
}
