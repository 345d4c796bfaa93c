//! Synthetic speech from espeak-ng, resampled to 16 kHz by sox (Debian packages `espeak-ng`
//! and `sox`; `./dev setup` installs them): known words with known timing, for tests,
//! benchmarks and demos.

use std::process::{Command, Stdio};

use crate::SpeechError;

/// An espeak-ng voice: its name (e.g. `en-us+m3`), words per minute and pitch (0-99, 50 normal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voice {
    pub name: &'static str,
    pub words_per_minute: u32,
    pub pitch: u32,
}

/// An adult voice the shipped recogniser hears well.
pub const ADULT: Voice = Voice { name: "en-us+m3", words_per_minute: 140, pitch: 50 };

/// `text` spoken by `voice` as 16 kHz mono samples, the synthesiser's own leading and trailing
/// silence trimmed.
pub fn say(text: &str, voice: Voice) -> Result<Vec<f32>, SpeechError> {
    let dir = tempfile::tempdir().map_err(|e| SpeechError::InvalidAudio(format!("temporary directory: {e}")))?;
    let (raw, wav) = (dir.path().join("raw.wav"), dir.path().join("16k.wav"));
    let missing = |tool: &str, e: std::io::Error| {
        SpeechError::InvalidAudio(format!("cannot run {tool} ({e}): install espeak-ng and sox (./dev setup does)"))
    };
    let speak = Command::new("espeak-ng")
        .args(["-v", voice.name, "-s", &voice.words_per_minute.to_string(), "-p", &voice.pitch.to_string(), "-w"])
        .arg(&raw)
        .arg(text)
        .stderr(Stdio::null())
        .status()
        .map_err(|e| missing("espeak-ng", e))?;
    // No dither (-D): sox dithers with random noise when it cuts to 16 bits, and the same text
    // must give the same samples so that tests and benchmarks repeat exactly.
    let resample = Command::new("sox")
        .arg("-D")
        .arg(&raw)
        .args(["-r", "16000", "-c", "1", "-b", "16"])
        .arg(&wav)
        .stderr(Stdio::null())
        .status()
        .map_err(|e| missing("sox", e))?;
    if !speak.success() || !resample.success() {
        return Err(SpeechError::InvalidAudio(format!("espeak-ng or sox failed on {text:?} with voice {voice:?}")));
    }
    let samples = crate::audio::read_wav(&wav)?;
    let first = samples.iter().position(|s| s.abs() > 0.01).unwrap_or(0);
    let last = samples.iter().rposition(|s| s.abs() > 0.01).map_or(samples.len(), |i| i + 1);
    Ok(samples[first..last.max(first)].to_vec())
}
