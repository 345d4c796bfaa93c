//! Moonshine speech recognition: the encoder turns raw 16 kHz audio into hidden states, the
//! decoder emits one token per run, greedily, feeding back its key/value cache.

use std::path::Path;

use vigil_inference::tensor::{DataType, Tensor};

use crate::audio::SAMPLES_PER_MS;
use crate::{ModelRunner, SpeechError};

/// Token ids with a fixed meaning.
const START: i64 = 1;
const END: i64 = 2;
/// Decoder layers and attention heads x head width of Moonshine tiny.
const LAYERS: usize = 6;
const HEADS: i64 = 8;
const HEAD_DIM: i64 = 36;
/// Shortest audio the encoder's convolutions take (56 ms).
pub const MIN_SAMPLES: usize = 895;

/// Moonshine's tokenizer: 32,768 entries of one length byte and that many bytes; `▁` stands
/// for a space; entries 3-258 are raw bytes.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pieces: Vec<Vec<u8>>,
}

impl Tokenizer {
    /// Reads `tokenizer.bin`.
    pub fn load(path: &Path) -> Result<Self, SpeechError> {
        let bytes = std::fs::read(path)
            .map_err(|e| SpeechError::ModelContract(format!("cannot read the tokenizer {}: {e}", path.display())))?;
        Self::parse(&bytes).map_err(|e| SpeechError::ModelContract(format!("{}: {e}", path.display())))
    }

    /// Parses the tokenizer's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut pieces = Vec::with_capacity(32_768);
        let mut at = 0;
        while at < bytes.len() {
            let len = bytes[at] as usize;
            let piece = bytes.get(at + 1..at + 1 + len).ok_or("entry runs past the end of the file")?;
            pieces.push(piece.to_vec());
            at += 1 + len;
        }
        if pieces.len() < 259 {
            return Err(format!("{} entries; a Moonshine tokenizer has 32768", pieces.len()));
        }
        Ok(Self { pieces })
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether there are no entries (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The text of `tokens` (special tokens skipped), leading space trimmed.
    pub fn decode(&self, tokens: &[i64]) -> String {
        let mut bytes = Vec::new();
        for &t in tokens {
            match t {
                0..=2 => {}
                3..=258 => bytes.push((t - 3) as u8),
                _ => {
                    if let Some(piece) = self.pieces.get(t as usize) {
                        bytes.extend_from_slice(piece);
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).replace('\u{2581}', " ").trim().to_string()
    }
}

/// How decoding is bounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    /// Tokens allowed per second of audio (speech rarely passes 4; a runaway decoder repeats).
    pub max_tokens_per_second: f64,
    /// Longest audio one encoder run takes; longer audio is split by the caller.
    pub max_samples: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // The decoder fails past 148,334 samples (9.27 s): 9 s keeps a margin.
        Self { max_tokens_per_second: 6.5, max_samples: 9_000 * SAMPLES_PER_MS }
    }
}

/// One recognised piece of audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognised {
    pub text: String,
    pub tokens: Vec<i64>,
    /// Whether decoding stopped at the token limit instead of the end token.
    pub truncated: bool,
}

/// The encoder, the decoder and the tokenizer of one Moonshine model.
pub struct Recogniser<E, D> {
    pub encoder: E,
    pub decoder: D,
    pub tokenizer: std::sync::Arc<Tokenizer>,
    pub limits: DecodeLimits,
}

impl<E: ModelRunner, D: ModelRunner> Recogniser<E, D> {
    /// Transcribes `samples` (16 kHz, -1..1, at most `limits.max_samples`); audio shorter than
    /// [`MIN_SAMPLES`] is padded with silence.
    pub async fn recognise(&self, samples: &[f32]) -> Result<Recognised, SpeechError> {
        if samples.len() > self.limits.max_samples {
            return Err(SpeechError::InvalidAudio(format!(
                "{} samples is over the recogniser's {} per run: split the audio first",
                samples.len(),
                self.limits.max_samples
            )));
        }
        let mut audio = samples.to_vec();
        if audio.len() < MIN_SAMPLES {
            audio.resize(MIN_SAMPLES, 0.0);
        }
        let n = audio.len() as i64;
        let encoded = self
            .encoder
            .run(vec![Tensor::from_f32(vec![1, n], &audio), int64(vec![1, n], &vec![1; n as usize])])
            .await?;
        let hidden =
            encoded.into_iter().next().filter(|h| h.shape.len() == 3 && h.shape[0] == 1).ok_or_else(|| {
                SpeechError::ModelContract("encoder: expected last_hidden_state [1, T, width]".into())
            })?;
        let frames = hidden.shape[1];
        let mask = int64(vec![1, frames], &vec![1; frames as usize]);
        let max_tokens = ((samples.len() as f64 / crate::SAMPLE_RATE as f64) * self.limits.max_tokens_per_second)
            .ceil()
            .max(1.0) as usize;

        let empty = Tensor { datatype: DataType::Fp32, shape: vec![1, HEADS, 0, HEAD_DIM], data: Default::default() };
        // Per layer: decoder key, decoder value, encoder key, encoder value (the inputs' order).
        let mut cache: Vec<Tensor> = vec![empty; LAYERS * 4];
        let mut tokens = Vec::new();
        let mut last = START;
        let mut truncated = true;
        for step in 0..max_tokens {
            let mut inputs = Vec::with_capacity(4 + cache.len());
            inputs.push(int64(vec![1, 1], &[last]));
            inputs.push(hidden.clone());
            inputs.push(mask.clone());
            inputs.push(Tensor { datatype: DataType::Bool, shape: vec![1], data: vec![(step > 0) as u8].into() });
            inputs.extend(cache.iter().cloned());
            let mut outputs = self.decoder.run(inputs).await?.into_iter();
            let logits = outputs.next().ok_or_else(|| SpeechError::ModelContract("decoder: no logits".into()))?;
            let logits = crate::output_f32(&logits, "decoder: logits")?;
            let present: Vec<Tensor> = outputs.collect();
            if present.len() != cache.len() {
                return Err(SpeechError::ModelContract(format!(
                    "decoder: {} present.* outputs, expected {}",
                    present.len(),
                    cache.len()
                )));
            }
            for (i, tensor) in present.into_iter().enumerate() {
                // The encoder's keys and values come from the first step only.
                if step == 0 || i % 4 < 2 {
                    cache[i] = tensor;
                }
            }
            let vocabulary = self.tokenizer.len().max(1);
            let row = &logits[logits.len().saturating_sub(vocabulary)..];
            let next = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as i64).unwrap_or(END);
            if next == END {
                truncated = false;
                break;
            }
            tokens.push(next);
            last = next;
        }
        Ok(Recognised { text: self.tokenizer.decode(&tokens), tokens, truncated })
    }
}

fn int64(shape: Vec<i64>, values: &[i64]) -> Tensor {
    Tensor { datatype: DataType::Int64, shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let mut bytes = Vec::new();
        for piece in ["<unk>", "<s>", "</s>"] {
            bytes.push(piece.len() as u8);
            bytes.extend_from_slice(piece.as_bytes());
        }
        for b in 0..=255u8 {
            bytes.extend_from_slice(&[1, b]);
        }
        for piece in ["\u{2581}the", "\u{2581}quick", "er"] {
            bytes.push(piece.len() as u8);
            bytes.extend_from_slice(piece.as_bytes());
        }
        Tokenizer::parse(&bytes).unwrap()
    }

    #[test]
    fn decoding_joins_pieces_and_bytes_and_skips_special_tokens() {
        let t = tokenizer();
        assert_eq!(t.len(), 262);
        // <s> ▁the ▁quick er ! </s>
        assert_eq!(t.decode(&[1, 259, 260, 261, 3 + b'!' as i64, 2]), "the quicker!");
        // Raw UTF-8 bytes make one character.
        let e_acute: Vec<i64> = "é".bytes().map(|b| 3 + b as i64).collect();
        assert_eq!(t.decode(&e_acute), "é");
        // Ids past the table are skipped, not a panic.
        assert_eq!(t.decode(&[259, 99_999]), "the");
    }

    #[test]
    fn a_truncated_table_is_refused() {
        assert!(Tokenizer::parse(&[5, b'a']).unwrap_err().contains("past the end"));
        assert!(Tokenizer::parse(&[1, b'a']).unwrap_err().contains("1 entries"));
    }
}
