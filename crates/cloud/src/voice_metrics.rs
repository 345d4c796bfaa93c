//! Voice search's own Prometheus metrics beside the server's request metrics: queries by
//! outcome, the audio heard, its clipping, empty transcripts and empty result lists, the time
//! to recognise each segment and the time from the end of a query's stream to its results.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Code;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    status: &'static str,
}

/// Counters and histograms of one server's voice search.
#[derive(Clone)]
pub struct VoiceSearchMetrics {
    queries: Family<Outcome, Counter>,
    segments: Counter,
    audio_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    clipped_samples: Counter,
    truncated_pieces: Counter,
    empty_transcripts: Counter,
    no_results: Counter,
    recognise_seconds: Histogram,
    answer_seconds: Histogram,
}

impl VoiceSearchMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            queries: Family::default(),
            segments: Counter::default(),
            audio_seconds: Counter::default(),
            clipped_samples: Counter::default(),
            truncated_pieces: Counter::default(),
            empty_transcripts: Counter::default(),
            no_results: Counter::default(),
            // 1 ms to ~33 s.
            recognise_seconds: Histogram::new(exponential_buckets(1e-3, 2.0, 16)),
            answer_seconds: Histogram::new(exponential_buckets(1e-3, 2.0, 16)),
        };
        registry.register("vigil_voice_search_queries", "Voice search queries by final gRPC status", m.queries.clone());
        registry.register("vigil_voice_search_segments", "Speech segments recognised", m.segments.clone());
        registry.register(
            "vigil_voice_search_audio_seconds",
            "Seconds of speech received (before padding)",
            m.audio_seconds.clone(),
        );
        registry.register(
            "vigil_voice_search_clipped_samples",
            "Samples received at full scale (the device's recording clipped)",
            m.clipped_samples.clone(),
        );
        registry.register(
            "vigil_voice_search_truncated_pieces",
            "Pieces of audio whose decoding stopped at the token limit (max_tokens_per_second), their text \
             possibly cut short",
            m.truncated_pieces.clone(),
        );
        registry.register(
            "vigil_voice_search_empty_transcripts",
            "Queries whose transcript was empty",
            m.empty_transcripts.clone(),
        );
        registry.register("vigil_voice_search_no_results", "Queries that found no product", m.no_results.clone());
        registry.register(
            "vigil_voice_search_recognise_seconds",
            "Time to recognise one segment (encoder and every decoder step)",
            m.recognise_seconds.clone(),
        );
        registry.register(
            "vigil_voice_search_answer_seconds",
            "From the end of a query's stream to its results (what the user waits once the last segment is in)",
            m.answer_seconds.clone(),
        );
        m
    }

    pub(crate) fn query_ended(&self, code: Code) {
        self.queries.get_or_create(&Outcome { status: vigil_serving::metrics::code_name(code) }).inc();
    }

    pub(crate) fn segment(&self, samples: usize, clipped: usize, truncated: usize, recognise: std::time::Duration) {
        self.segments.inc();
        self.truncated_pieces.inc_by(truncated as u64);
        self.audio_seconds.inc_by(samples as f64 / vigil_speech::SAMPLE_RATE as f64);
        self.clipped_samples.inc_by(clipped as u64);
        self.recognise_seconds.observe(recognise.as_secs_f64());
    }

    pub(crate) fn answered(&self, transcript_empty: bool, results: usize, answer: std::time::Duration) {
        if transcript_empty {
            self.empty_transcripts.inc();
        }
        if results == 0 {
            self.no_results.inc();
        }
        self.answer_seconds.observe(answer.as_secs_f64());
    }
}
