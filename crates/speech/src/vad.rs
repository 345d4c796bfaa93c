//! Voice activity detection with Silero VAD: 512-sample chunks at 16 kHz, each with the 64
//! samples before it as context and the model's state carried from chunk to chunk, and the
//! speech spans its probabilities give (hysteresis, minimum speech and silence, padding).

use std::ops::Range;

use vigil_inference::tensor::{DataType, Tensor};

use crate::audio::SAMPLES_PER_MS;
use crate::{ModelRunner, SAMPLE_RATE, SpeechError};

/// New samples per chunk at 16 kHz.
pub const CHUNK: usize = 512;
/// Samples of context before each chunk.
pub const CONTEXT: usize = 64;
const STATE_LEN: usize = 2 * 128;

/// One stream through Silero VAD.
pub struct VadStream<R> {
    model: R,
    state: Vec<f32>,
    context: Vec<f32>,
}

impl<R: ModelRunner> VadStream<R> {
    /// A stream starting from silence (zero state and context).
    pub fn new(model: R) -> Self {
        Self { model, state: vec![0.0; STATE_LEN], context: vec![0.0; CONTEXT] }
    }

    /// The speech probability of the next `chunk` (at most [`CHUNK`] samples; a short last
    /// chunk is padded with silence).
    pub async fn probability(&mut self, chunk: &[f32]) -> Result<f32, SpeechError> {
        if chunk.len() > CHUNK {
            return Err(SpeechError::InvalidAudio(format!(
                "a VAD chunk is at most {CHUNK} samples, not {}",
                chunk.len()
            )));
        }
        let mut input = Vec::with_capacity(CONTEXT + CHUNK);
        input.extend_from_slice(&self.context);
        input.extend_from_slice(chunk);
        input.resize(CONTEXT + CHUNK, 0.0);
        let sr = Tensor {
            datatype: DataType::Int64,
            shape: vec![],
            data: (SAMPLE_RATE as i64).to_le_bytes().to_vec().into(),
        };
        let outputs = self
            .model
            .run(vec![
                Tensor::from_f32(vec![1, (CONTEXT + CHUNK) as i64], &input),
                Tensor::from_f32(vec![2, 1, 128], &self.state),
                sr,
            ])
            .await?;
        let [probability, state] = <[Tensor; 2]>::try_from(outputs)
            .map_err(|o| SpeechError::ModelContract(format!("VAD: {} outputs, expected output and stateN", o.len())))?;
        let probability = crate::output_f32(&probability, "VAD: output")?;
        let state = crate::output_f32(&state, "VAD: stateN")?;
        if probability.len() != 1 || state.len() != STATE_LEN {
            return Err(SpeechError::ModelContract("VAD: expected output [1, 1] and stateN [2, 1, 128]".into()));
        }
        self.state = state;
        self.context.copy_from_slice(&input[CHUNK..]);
        Ok(probability[0])
    }

    /// The probability of every chunk of `samples`, in order.
    pub async fn probabilities(&mut self, samples: &[f32]) -> Result<Vec<f32>, SpeechError> {
        let mut out = Vec::with_capacity(samples.len().div_ceil(CHUNK));
        for chunk in samples.chunks(CHUNK) {
            out.push(self.probability(chunk).await?);
        }
        Ok(out)
    }
}

/// When a span counts as speech.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadParams {
    /// A chunk at or above this probability starts (or continues) speech.
    pub threshold: f32,
    /// Speech ends only below this (hysteresis; Silero's default: threshold - 0.15).
    pub negative_threshold: f32,
    /// Shorter spans are dropped (clicks, coughs).
    pub min_speech_ms: u32,
    /// A pause must last this long to end a span.
    pub min_silence_ms: u32,
    /// Silence kept before and after each span (what the recogniser expects around words).
    pub speech_pad_ms: u32,
    /// Speech running longer than this without a pause is cut where it stands, and goes on as
    /// the next span (Silero's `max_speech_duration_s`); 0: never. Keep it under the server's
    /// segment limit (`voice_search.max_segment_ms`, 30 s).
    pub max_speech_ms: u32,
}

impl Default for VadParams {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            negative_threshold: 0.35,
            min_speech_ms: 250,
            min_silence_ms: 300,
            speech_pad_ms: 200,
            max_speech_ms: 20_000,
        }
    }
}

impl VadParams {
    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.threshold) || !(0.0..=self.threshold).contains(&self.negative_threshold) {
            return Err(format!(
                "need 0 <= negative_threshold ({}) <= threshold ({}) <= 1",
                self.negative_threshold, self.threshold
            ));
        }
        if self.max_speech_ms != 0 && self.max_speech_ms < self.min_speech_ms {
            return Err(format!(
                "max_speech_ms ({}) must be 0 (no limit) or at least min_speech_ms ({})",
                self.max_speech_ms, self.min_speech_ms
            ));
        }
        if self.speech_pad_ms > self.min_silence_ms {
            return Err(format!(
                "speech_pad_ms ({}) must not exceed min_silence_ms ({}): a span is sent once the pause after it is seen",
                self.speech_pad_ms, self.min_silence_ms
            ));
        }
        Ok(())
    }
}

/// Turns chunk probabilities into speech spans (sample ranges, padded) as they close, so a
/// front-end can send each span as soon as its pause is heard.
#[derive(Debug, Clone)]
pub struct Segmenter {
    params: VadParams,
    /// Samples fed so far (the last chunk of a recording may be short).
    heard: usize,
    speech_start: Option<usize>,
    silence_start: Option<usize>,
    /// End of the last span given out: padding never overlaps it.
    last_end: usize,
    /// The open span goes on from one cut at `max_speech_ms`: it is sent however short, since
    /// the speech it ends was too long to be a click, not too short.
    continues_a_cut: bool,
}

impl Segmenter {
    pub fn new(params: VadParams) -> Self {
        Self { params, heard: 0, speech_start: None, silence_start: None, last_end: 0, continues_a_cut: false }
    }

    /// Feeds the probability of the next chunk, of `samples` samples (`CHUNK`, or fewer for a
    /// recording's last); returns a span when this chunk closed one. Spans never run past the
    /// samples fed.
    pub fn push(&mut self, probability: f32, samples: usize) -> Option<Range<usize>> {
        let offset = self.heard;
        self.heard += samples;
        let p = self.params;
        if probability >= p.threshold {
            self.silence_start = None;
            self.speech_start.get_or_insert(offset);
        } else if let Some(start) = self.speech_start
            && probability < p.negative_threshold
        {
            let silence = *self.silence_start.get_or_insert(offset);
            if self.heard - silence >= p.min_silence_ms as usize * SAMPLES_PER_MS {
                self.speech_start = None;
                self.silence_start = None;
                return self.close(start, silence, self.heard);
            }
        }
        // Speech running max_speech_ms (a dip or a pause too short to end it included) is cut
        // here; what follows is the next span.
        if let Some(start) = self.speech_start
            && p.max_speech_ms > 0
            && self.heard - start >= p.max_speech_ms as usize * SAMPLES_PER_MS
        {
            self.speech_start = Some(self.heard);
            self.silence_start = None;
            let span = self.close(start, self.heard, self.heard);
            self.continues_a_cut = true;
            return span;
        }
        None
    }

    /// Ends the stream (`total` samples): the span still open, if any.
    pub fn finish(&mut self, total: usize) -> Option<Range<usize>> {
        let start = self.speech_start.take()?;
        let end = self.silence_start.take().unwrap_or(total).min(total);
        self.close(start, end, total)
    }

    fn close(&mut self, start: usize, end: usize, heard: usize) -> Option<Range<usize>> {
        let continues_a_cut = std::mem::take(&mut self.continues_a_cut);
        if end <= start || (!continues_a_cut && end - start < self.params.min_speech_ms as usize * SAMPLES_PER_MS) {
            return None;
        }
        let pad = self.params.speech_pad_ms as usize * SAMPLES_PER_MS;
        let span = start.saturating_sub(pad).max(self.last_end)..(end + pad).min(heard);
        self.last_end = span.end;
        Some(span)
    }
}

/// Speech spans of `probabilities` (one per chunk) over `total` samples.
pub fn speech_spans(probabilities: &[f32], total: usize, params: VadParams) -> Vec<Range<usize>> {
    let mut segmenter = Segmenter::new(params);
    let mut spans: Vec<_> = probabilities
        .iter()
        .enumerate()
        .filter_map(|(i, &p)| segmenter.push(p, total.saturating_sub(i * CHUNK).min(CHUNK)))
        .collect();
    spans.extend(segmenter.finish(total));
    spans
}

/// Mean speech probability over the chunks whose start lies in one of `spans` (what a device
/// sent as speech); 0 when there are none.
pub fn mean_probability_in(probabilities: &[f32], spans: &[Range<usize>]) -> f32 {
    let in_speech: Vec<f32> = probabilities
        .iter()
        .enumerate()
        .filter(|(i, _)| spans.iter().any(|s| s.contains(&(i * CHUNK))))
        .map(|(_, &p)| p)
        .collect();
    if in_speech.is_empty() { 0.0 } else { in_speech.iter().sum::<f32>() / in_speech.len() as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS_PER_CHUNK: usize = CHUNK / SAMPLES_PER_MS; // 32

    /// Probabilities: `speech` for chunks in the given ms spans, 0.05 elsewhere.
    fn probabilities(total_ms: usize, speech_ms: &[(usize, usize)], speech: f32) -> Vec<f32> {
        (0..total_ms / MS_PER_CHUNK)
            .map(|i| {
                let t = i * MS_PER_CHUNK;
                if speech_ms.iter().any(|&(a, b)| t >= a && t < b) { speech } else { 0.05 }
            })
            .collect()
    }

    fn params() -> VadParams {
        VadParams {
            threshold: 0.5,
            negative_threshold: 0.35,
            min_speech_ms: 250,
            min_silence_ms: 300,
            speech_pad_ms: 100,
            max_speech_ms: 0,
        }
    }

    #[test]
    fn spans_are_found_padded_and_short_blips_dropped() {
        let p = probabilities(5000, &[(992, 2016), (2496, 2592), (3008, 4000)], 0.9);
        let spans = speech_spans(&p, 5000 * SAMPLES_PER_MS, params());
        let ms: Vec<(usize, usize)> =
            spans.iter().map(|r| (r.start / SAMPLES_PER_MS, r.end / SAMPLES_PER_MS)).collect();
        // The 96 ms blip at 2.5 s is under min_speech_ms.
        assert_eq!(ms, vec![(892, 2116), (2908, 4100)]);
    }

    #[test]
    fn a_short_pause_does_not_split_and_hysteresis_holds_speech() {
        // A 160 ms pause (< min_silence) inside speech, and a dip to 0.4 (above the negative
        // threshold) that does not end it.
        let mut p = probabilities(4000, &[(992, 1984), (2144, 3008)], 0.9);
        p[40] = 0.4;
        let spans = speech_spans(&p, 4000 * SAMPLES_PER_MS, params());
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(spans[0].start / SAMPLES_PER_MS, 892);
    }

    #[test]
    fn speech_running_to_the_end_is_closed_by_finish_and_padding_never_overlaps() {
        let p = probabilities(3008, &[(1024, 1632), (1952, 3008)], 0.9);
        let mut params = params();
        params.speech_pad_ms = 300;
        let spans = speech_spans(&p, 3008 * SAMPLES_PER_MS, params);
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert!(spans[0].end <= spans[1].start, "{spans:?}");
        assert_eq!(spans[1].end, 3008 * SAMPLES_PER_MS);
    }

    #[test]
    fn a_span_closed_by_a_short_last_chunk_ends_within_the_recording() {
        // Speech to 1 s, then 288 ms of silence and a last chunk of 100 samples: a whole chunk
        // there would complete the 320 ms pause (and the padding as long) past the recording.
        let mut p = probabilities(1312, &[(0, 1024)], 0.9);
        p.push(0.05);
        let total = 41 * CHUNK + 100;
        assert_eq!(p.len(), total.div_ceil(CHUNK));
        let params = VadParams { min_silence_ms: 320, speech_pad_ms: 320, ..params() };
        let spans = speech_spans(&p, total, params);
        assert_eq!(spans, vec![0..total], "padded to the recording's end, not past it");
    }

    #[test]
    fn speech_without_a_pause_is_cut_at_its_longest_into_contiguous_spans() {
        // 5 s of speech from 1 s, no pause in it; speech of at most 2 s per span (cut at the
        // end of the 32 ms chunk that reaches it).
        let p = probabilities(7000, &[(992, 6016)], 0.9);
        let limited = VadParams { max_speech_ms: 2000, ..params() };
        let spans = speech_spans(&p, 7000 * SAMPLES_PER_MS, limited);
        let ms: Vec<(usize, usize)> =
            spans.iter().map(|r| (r.start / SAMPLES_PER_MS, r.end / SAMPLES_PER_MS)).collect();
        assert_eq!(ms, vec![(892, 3008), (3008, 5024), (5024, 6116)], "padded at the pauses only, no gap, no overlap");
        assert!(spans.iter().all(|s| s.len() <= (2000 + 32 + 100) * SAMPLES_PER_MS), "{ms:?}");
        // Without the limit, one span.
        assert_eq!(speech_spans(&p, 7000 * SAMPLES_PER_MS, params()).len(), 1);
        // Speech held between the two thresholds (0.4: a murmur) is cut the same way.
        let mut murmur = probabilities(7000, &[(992, 6016)], 0.4);
        murmur[31] = 0.9;
        let cut = speech_spans(&murmur, 7000 * SAMPLES_PER_MS, limited);
        assert_eq!(cut.first().map(|r| r.end / SAMPLES_PER_MS), Some(3008), "{cut:?}");
    }

    #[test]
    fn speech_going_on_briefly_after_a_cut_is_sent_however_short() {
        // Speech from 1 s, cut at 3,008 ms (its longest, 2 s), then going on for 96 ms, under
        // min_speech_ms: the end of the sentence, sent, not dropped as a click would be.
        let limited = VadParams { max_speech_ms: 2000, ..params() };
        let ms = |spans: Vec<Range<usize>>| -> Vec<(usize, usize)> {
            spans.iter().map(|r| (r.start / SAMPLES_PER_MS, r.end / SAMPLES_PER_MS)).collect()
        };
        let p = probabilities(4000, &[(992, 3104)], 0.9);
        assert_eq!(ms(speech_spans(&p, 4000 * SAMPLES_PER_MS, limited)), vec![(892, 3008), (3008, 3204)]);
        // The same when the recording ends there (closed by finish).
        let p = probabilities(3104, &[(992, 3104)], 0.9);
        assert_eq!(ms(speech_spans(&p, 3104 * SAMPLES_PER_MS, limited)), vec![(892, 3008), (3008, 3104)]);
        // A blip after the pause that closed the continuation is still a blip.
        let p = probabilities(5000, &[(992, 3104), (4000, 4096)], 0.9);
        assert_eq!(ms(speech_spans(&p, 5000 * SAMPLES_PER_MS, limited)), vec![(892, 3008), (3008, 3204)]);
    }

    #[test]
    fn parameters_are_checked() {
        assert!(VadParams::default().validate().is_ok());
        let e = VadParams { negative_threshold: 0.6, ..VadParams::default() }.validate().unwrap_err();
        assert!(e.contains("negative_threshold"), "{e}");
        let e = VadParams { speech_pad_ms: 500, ..VadParams::default() }.validate().unwrap_err();
        assert!(e.contains("speech_pad_ms"), "{e}");
    }

    #[test]
    fn the_mean_probability_counts_the_chunks_sent_as_speech() {
        let p = [0.1, 0.9, 0.7, 0.2, 0.8];
        let first_two = vec![CHUNK..2 * CHUNK, 2 * CHUNK..3 * CHUNK];
        assert!((mean_probability_in(&p, &first_two) - 0.8).abs() < 1e-6);
        assert!((mean_probability_in(&p, &[CHUNK..2 * CHUNK, 4 * CHUNK..5 * CHUNK]) - 0.85).abs() < 1e-6);
        assert_eq!(mean_probability_in(&p, &[]), 0.0);
    }
}
