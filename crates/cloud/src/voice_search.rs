//! `vigil.v1.VoiceSearch`: a device streams the speech segments its VAD found; each is
//! normalised in level, padded with the silence the recogniser expects, split at quiet points
//! when too long, and transcribed with Moonshine; at the end of the stream the joined transcript
//! is searched in the catalog. Both stages are logged as prediction records sharing one trace
//! id; `Feedback` logs what the user did with the results.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vigil_inference::InferenceError;
use vigil_inference::repository::{LoadedModel, ModelRepository};
use vigil_inference::tensor::Tensor;
use vigil_proto::vigil::v1::voice_search_server::VoiceSearch;
use vigil_proto::vigil::v1::{
    Feature, FeedbackEvent, PredictionOutput, PredictionRecord, RecordStatus, SearchConfig, SearchFeedback,
    SearchFeedbackAck, SearchHit, SearchRequest, SearchResponse, SearchResult, SegmentTranscript, SpeechSegment,
    VadReport, Variant, search_feedback, search_request, search_response,
};
use vigil_serving::ids::check_id;
use vigil_serving::infer::{Infer, Route};
use vigil_serving::records::{RecordEmitter, RequestContext, new_trace_id};
use vigil_serving::status::to_status;
use vigil_speech::asr::{DecodeLimits, Recogniser, Tokenizer};
use vigil_speech::audio::{self, Loudness, SAMPLES_PER_MS};
use vigil_speech::{ModelRunner, SAMPLE_RATE, SpeechError, text};

use crate::catalog::Catalog;
use crate::config::VoiceSearchConfig;
use crate::voice_metrics::VoiceSearchMetrics;

/// Messages answered ahead of a slow reader, per stream.
const RESPONSE_BUFFER: usize = 8;

/// The voice search service.
#[derive(Clone)]
pub struct VoiceSearchService {
    inner: Arc<Inner>,
    /// Where each query's task runs: the server waits for them at shutdown before the records.
    tasks: tokio_util::task::TaskTracker,
}

struct Inner {
    /// Routes each query's models through the deployments the server follows (canary by
    /// session, blue-green), or to the repository's default versions.
    infer: Infer,
    catalog: Catalog,
    config: VoiceSearchConfig,
    records: Option<RecordEmitter>,
    /// Keeps a sample of the queries' audio for retraining.
    capturer: Option<vigil_capture::Capturer>,
    metrics: VoiceSearchMetrics,
    /// Tokenizers by decoder version directory, each with the load of the decoder it was read
    /// for: a version reloaded in place (new files) reads its tokenizer again.
    tokenizers: Mutex<HashMap<PathBuf, ReadFor>>,
}

/// A tokenizer, with the load of the decoder it was read for.
type ReadFor = (std::sync::Weak<LoadedModel>, Arc<Tokenizer>);

impl VoiceSearchService {
    /// Loads the catalog; the models are looked up per query (hot reload applies).
    pub fn new(
        repository: Arc<ModelRepository>,
        infer: Option<Infer>,
        config: VoiceSearchConfig,
        records: Option<RecordEmitter>,
        capturer: Option<vigil_capture::Capturer>,
        metrics: VoiceSearchMetrics,
    ) -> anyhow::Result<Self> {
        let catalog = Catalog::load(&config.catalog)?;
        for model in [&config.encoder_model, &config.decoder_model] {
            if repository.entry(model).is_err() {
                tracing::warn!(
                    model = %model,
                    "voice search: model not in the repository; searches fail UNAVAILABLE until it is \
                     (./dev setup fetches it into .vigil/cloud-models)"
                );
            }
        }
        let infer = infer.unwrap_or_else(|| Infer::over(repository));
        // Audio is kept for queries whose records name it.
        let capturer = capturer.filter(|_| records.is_some());
        let inner = Inner { infer, catalog, config, records, capturer, metrics, tokenizers: Mutex::default() };
        Ok(Self { inner: Arc::new(inner), tasks: tokio_util::task::TaskTracker::new() })
    }

    /// Runs each query's task on `tasks` (the server's, which it waits for at shutdown, so a
    /// query cut by the drain is logged before the records stop).
    pub fn with_tasks(self, tasks: tokio_util::task::TaskTracker) -> Self {
        Self { tasks, ..self }
    }
}

#[tonic::async_trait]
impl VoiceSearch for VoiceSearchService {
    type SearchStream = ReceiverStream<Result<SearchResponse, Status>>;

    async fn search(&self, request: Request<Streaming<SearchRequest>>) -> Result<Response<Self::SearchStream>, Status> {
        let request_time = SystemTime::now();
        let deadline = request.extensions().get::<vigil_serving::admission::Deadline>().map(|d| d.0);
        let mut inbound = request.into_inner();
        let inner = self.inner.clone();
        let mut opening = Opening { inner: &inner, deadline, counted: false };
        let opened = open(&inner, &mut inbound, request_time).await;
        opening.counted = true;
        drop(opening);
        let session = match opened {
            Ok(session) => session,
            Err(status) => {
                inner.metrics.query_ended(status.code());
                return Err(status);
            }
        };
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        self.tasks.spawn(async move {
            let outcome = session.run(&inner, &mut inbound, &tx, deadline).await;
            inner.metrics.query_ended(outcome.as_ref().err().map_or(tonic::Code::Ok, Status::code));
            if let Err(status) = outcome {
                // The client may be gone, or reading nothing; nothing else to tell.
                let _ = deliver(&tx, Err(status), inner.config.idle_timeout()).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn feedback(&self, request: Request<SearchFeedback>) -> Result<Response<SearchFeedbackAck>, Status> {
        let f = request.into_inner();
        check_id("session_id", &f.session_id)?;
        // One spelling per query (UUIDs parse in upper case, without hyphens, braced...): the
        // event id is a digest of it, so each spelling would be stored as another event.
        let query_id = uuid::Uuid::parse_str(&f.query_id)
            .map_err(|_| Status::invalid_argument(format!("query_id '{}' is not a query id (a UUID)", f.query_id)))?
            .hyphenated()
            .to_string();
        let (kind, value) = match f.action {
            Some(search_feedback::Action::Click(c)) => {
                if c.product_id.is_empty() {
                    return Err(Status::invalid_argument("click.product_id must name the result clicked"));
                }
                check_id("click.product_id", &c.product_id)?;
                let most = self.inner.config.max_results;
                if c.rank == 0 || c.rank > most {
                    return Err(Status::invalid_argument(format!(
                        "click.rank {} is not a result's rank: 1 (the best) to {most}",
                        c.rank
                    )));
                }
                ("click", format!("{}@{}", c.product_id, c.rank))
            }
            Some(search_feedback::Action::RedoSearch(true)) => ("redo_search", String::new()),
            Some(search_feedback::Action::SwitchToTyping(true)) => ("switch_to_typing", String::new()),
            _ => {
                return Err(Status::invalid_argument(
                    "feedback needs an action: click, redo_search or switch_to_typing",
                ));
            }
        };
        let event = FeedbackEvent {
            schema_version: vigil_serving::records::SCHEMA_VERSION,
            event_id: feedback_event_id(&query_id, kind, &value),
            prediction_id: query_id,
            time: Some(SystemTime::now().into()),
            kind: kind.into(),
            value,
            session_id: f.session_id,
        };
        if let Some(records) = &self.inner.records {
            records.feedback(&event);
        }
        Ok(Response::new(SearchFeedbackAck { event_id: event.event_id }))
    }
}

/// A feedback event's id, the same for the same action on the same query (a click is the same
/// when it names the same result at the same rank): an app that sends it again, or a client
/// that sends it a thousand times, is stored once, so it cannot weigh on the rollout checks
/// that count feedback more than once per query.
fn feedback_event_id(query_id: &str, kind: &str, value: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"vigil voice search feedback\0")
        .chain_update(query_id.as_bytes())
        .chain_update(b"\0")
        .chain_update(kind.as_bytes())
        .chain_update(b"\0")
        .chain_update(value.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

/// Waits (at most `config_timeout_ms`) for the stream's SearchConfig and checks it.
/// A query whose call ends while its handler still waits for the config (the call's deadline,
/// the drain, or the client going drops the handler) is counted with the end it met.
struct Opening<'a> {
    inner: &'a Inner,
    deadline: Option<Instant>,
    counted: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if self.counted {
            return;
        }
        let why = match &self.inner.records {
            Some(records) => records.why_unanswered(self.deadline),
            None => vigil_serving::records::past_deadline(self.deadline),
        };
        self.inner.metrics.query_ended(why.map_or(tonic::Code::Cancelled, |status| status.code()));
    }
}

async fn open(
    inner: &Inner,
    inbound: &mut Streaming<SearchRequest>,
    request_time: SystemTime,
) -> Result<Session, Status> {
    let first = tokio::time::timeout(inner.config.config_timeout(), inbound.message()).await.map_err(|_| {
        Status::deadline_exceeded(format!(
            "no SearchConfig within {} ms of opening the stream",
            inner.config.config_timeout_ms
        ))
    })??;
    match first.and_then(|m| m.message) {
        Some(search_request::Message::Config(c)) => Session::open(inner, c, request_time),
        Some(search_request::Message::Segment(_)) => {
            Err(Status::invalid_argument("the first message must be SearchConfig, not a segment"))
        }
        Some(search_request::Message::VadReport(_)) => {
            Err(Status::invalid_argument("the first message must be SearchConfig, not a vad_report"))
        }
        None => Err(Status::invalid_argument("the stream ended before its SearchConfig")),
    }
}

/// One query's stream.
struct Session {
    config: SearchConfig,
    trace_id: String,
    request_time: SystemTime,
    max_results: usize,
    /// The recognition's prediction id, known from the start so that capture can decide at the
    /// first segment whether to keep the query's audio.
    transcript_id: String,
}

/// What the segments of one query added up to.
#[derive(Default)]
struct Heard {
    transcripts: Vec<String>,
    audio_samples: usize,
    energy: f64,
    clipped: u64,
    gains: Vec<f64>,
    pitch: Vec<f64>,
    /// Segments' pitch measures still running beside recognition (only the log needs them).
    pitch_measures: Vec<tokio::task::JoinHandle<Option<f64>>>,
    tokens: usize,
    /// Pieces whose decoding stopped at the token limit.
    truncated: usize,
    recognise_time: Duration,
    /// Each segment's length, seconds.
    segment_seconds: Vec<f64>,
    model: Option<ServedBy>,
    /// The encoder's and the decoder's routes, chosen at the first segment: every segment of a
    /// query is heard by the same versions, even when a rollout moves its share meanwhile.
    routes: Option<(Route, Route)>,
    /// The versions a deployment in shadow mode hears the query with too, once it is answered.
    shadow: Option<ShadowHearing>,
    /// The device's account of its VAD, when it sent one.
    vad: Option<VadReport>,
    /// The query's audio as sent (PCM16), kept while capture wants it.
    kept_audio: Option<Vec<u8>>,
    /// The query's records went out.
    logged: bool,
    /// The server's limits refused a message of the request stream (too large, or no room in
    /// the memory budget): refused as a unary call is before its handler, so not logged.
    refused_by_limits: bool,
}

/// The recogniser version that listened, and what it is in its deployment.
#[derive(Clone)]
struct ServedBy {
    name: String,
    version: String,
    variant: Variant,
    deployment: String,
}

impl Heard {
    /// Who listened; before any segment, the configured recogniser with no version.
    fn served_by(&self, inner: &Inner) -> ServedBy {
        self.model.clone().unwrap_or_else(|| ServedBy {
            name: inner.config.decoder_model.clone(),
            version: String::new(),
            variant: Variant::Primary,
            deployment: String::new(),
        })
    }
}

impl Session {
    fn open(inner: &Inner, mut config: SearchConfig, request_time: SystemTime) -> Result<Self, Status> {
        if config.sample_rate != SAMPLE_RATE {
            return Err(Status::invalid_argument(format!(
                "sample_rate {} is not supported: send 16000 Hz PCM16 (resample on the device)",
                config.sample_rate
            )));
        }
        check_id("language", &config.language)?;
        let language = config.language.to_ascii_lowercase();
        if !(language.is_empty() || language == "en" || language.starts_with("en-")) {
            return Err(Status::invalid_argument(format!(
                "language '{}' is not served: the recogniser speaks English (\"en\")",
                config.language
            )));
        }
        check_id("device_id", &config.device_id)?;
        check_id("session_id", &config.session_id)?;
        check_id("trace_id", &config.trace_id)?;
        let limit = &inner.config;
        let max_results = match config.max_results {
            0 => limit.default_results,
            n if n > limit.max_results => {
                return Err(Status::invalid_argument(format!(
                    "max_results {n} is over the limit of {}",
                    limit.max_results
                )));
            }
            n => n,
        } as usize;
        if config.trace_id.is_empty() {
            config.trace_id = new_trace_id();
        }
        let transcript_id = uuid::Uuid::now_v7().to_string();
        Ok(Self { trace_id: config.trace_id.clone(), config, request_time, max_results, transcript_id })
    }

    /// What capture is told of this query's audio (`bytes`: a WAV file).
    fn capture_input<'a>(&'a self, inner: &'a Inner, bytes: &'a [u8], min_rate: f64) -> vigil_capture::Input<'a> {
        vigil_capture::Input {
            model: &inner.config.decoder_model,
            version: "",
            prediction_id: &self.transcript_id,
            station_id: &self.config.device_id,
            device_id: &self.config.device_id,
            content_type: "audio/wav",
            bytes,
            review: false,
            min_rate,
        }
    }

    /// Captures the query's kept audio as a 16 kHz mono PCM16 WAV file; the object's key.
    fn capture_audio(&self, inner: &Inner, heard: &Heard) -> String {
        let (Some(capturer), Some(pcm16)) = (&inner.capturer, &heard.kept_audio) else { return String::new() };
        let wav = match audio::pcm16_to_wav(pcm16) {
            Ok(wav) => wav,
            Err(e) => {
                tracing::warn!(query = %self.transcript_id, error = %e, "cannot capture the query's audio");
                return String::new();
            }
        };
        let version = heard.model.as_ref().map(|m| m.version.clone()).unwrap_or_default();
        // Decided at the first segment: every kept query is captured (the rate is 1 here).
        let input = vigil_capture::Input { version: &version, ..self.capture_input(inner, &wav, 1.0) };
        capturer.capture(input).unwrap_or_default()
    }

    /// Keeps one user (else one device) on one version while a canary runs; a query with neither
    /// is routed by its own id, so its encoder and decoder are chosen alike.
    fn routing_key(&self) -> &str {
        [&self.config.session_id, &self.config.device_id, &self.transcript_id]
            .into_iter()
            .find(|key| !key.is_empty())
            .map_or("", String::as_str)
    }

    /// Answers the query; a query that fails once open is logged too (its recognition so far,
    /// with the status), unless the client left. The call's end (its `deadline`, the server's
    /// drain, the client leaving) drops the response stream: the query's work stops with it,
    /// never running on outside the server's limits.
    async fn run(
        self,
        inner: &Inner,
        inbound: &mut Streaming<SearchRequest>,
        tx: &mpsc::Sender<Result<SearchResponse, Status>>,
        deadline: Option<Instant>,
    ) -> Result<(), Status> {
        let mut heard = Heard::default();
        // Why a query the client's side ended (its stream reset or cut, its responses no longer
        // read) went unanswered: the server's deadline or drain when either had come, else the
        // client left (not logged), whichever of the streams saw it first.
        let unanswered = |left: Status| {
            match &inner.records {
                Some(records) => records.why_unanswered(deadline),
                None => vigil_serving::records::past_deadline(deadline),
            }
            .unwrap_or(left)
        };
        let outcome = tokio::select! {
            biased;
            outcome = self.listen(inner, inbound, tx, &mut heard) => outcome,
            () = tx.closed() => Err(Status::cancelled("the client left mid-stream")),
        };
        let outcome = match outcome {
            Err(status) if status.code() == tonic::Code::Cancelled || tx.is_closed() => Err(unanswered(status)),
            other => other,
        };
        if let (Err(status), Some(records)) = (&outcome, &inner.records)
            && !heard.logged
            && !heard.refused_by_limits
            && status.code() != tonic::Code::Cancelled
        {
            self.log_failed(records, inner, &heard, status);
        }
        outcome
    }

    async fn listen(
        &self,
        inner: &Inner,
        inbound: &mut Streaming<SearchRequest>,
        tx: &mpsc::Sender<Result<SearchResponse, Status>>,
        heard: &mut Heard,
    ) -> Result<(), Status> {
        let limits = &inner.config;
        let mut expected = 0u64;
        loop {
            if heard.vad.is_some() {
                // The report was the last message: only the half-close may follow.
                match tokio::time::timeout(limits.idle_timeout(), inbound.message()).await {
                    Ok(Ok(None)) => break,
                    Ok(Ok(Some(_))) => {
                        return Err(Status::invalid_argument(
                            "vad_report must be the last message: half-close the stream after it",
                        ));
                    }
                    Ok(Err(status)) => return Err(client_stream_failed(status, heard)),
                    Err(_) => {
                        return Err(Status::deadline_exceeded(format!(
                            "no half-close within {} ms of the vad_report",
                            limits.idle_timeout_ms
                        )));
                    }
                }
            }
            let next = tokio::time::timeout(limits.idle_timeout(), inbound.message()).await.map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no message for {} ms: send the next segment or half-close the stream",
                    limits.idle_timeout_ms
                ))
            })?;
            let segment = match next.map_err(|status| client_stream_failed(status, heard))? {
                None => break,
                Some(SearchRequest { message: Some(search_request::Message::Segment(s)) }) => s,
                Some(SearchRequest { message: Some(search_request::Message::VadReport(report)) }) => {
                    heard.vad = Some(checked_report(report, expected)?);
                    continue;
                }
                Some(_) => return Err(Status::invalid_argument("SearchConfig may only come first; then segments")),
            };
            if segment.sequence != expected {
                return Err(Status::invalid_argument(format!(
                    "segment {} arrived where {expected} was due: send segments in order, numbered from 0",
                    segment.sequence
                )));
            }
            expected += 1;
            if expected > limits.max_segments as u64 {
                return Err(Status::invalid_argument(format!(
                    "more than {} segments in one query",
                    limits.max_segments
                )));
            }
            let answer = self.recognise(inner, &segment, heard).await?;
            let message = SearchResponse { message: Some(search_response::Message::Segment(answer)) };
            deliver(tx, Ok(message), limits.idle_timeout()).await?;
        }
        let ended = Instant::now();
        for measure in std::mem::take(&mut heard.pitch_measures) {
            let pitch = measure.await.map_err(|e| Status::internal(format!("measuring the pitch failed: {e}")))?;
            heard.pitch.extend(pitch);
        }
        let result = self.answer(inner, heard)?;
        inner.metrics.answered(result.transcript.is_empty(), result.hits.len(), ended.elapsed());
        let message = SearchResponse { message: Some(search_response::Message::Result(result)) };
        deliver(tx, Ok(message), limits.idle_timeout()).await
    }

    async fn recognise(
        &self,
        inner: &Inner,
        segment: &SpeechSegment,
        heard: &mut Heard,
    ) -> Result<SegmentTranscript, Status> {
        let limits = &inner.config;
        let sequence = segment.sequence;
        let invalid = |why: String| Status::invalid_argument(format!("segment {sequence}: {why}"));
        if segment.pcm16.is_empty() {
            return Err(invalid("no audio".into()));
        }
        // Both lengths checked before the samples are decoded (twice the message's bytes), and
        // the query's totals taken up only with a segment within them.
        let sample_count = segment.pcm16.len() / 2;
        let audio_ms = (sample_count / SAMPLES_PER_MS) as u64;
        if audio_ms > limits.max_segment_ms {
            return Err(invalid(format!(
                "{audio_ms} ms of audio is over the {} ms a segment may hold: split it on the device",
                limits.max_segment_ms
            )));
        }
        if (heard.audio_samples + sample_count) / SAMPLES_PER_MS > limits.max_query_ms as usize {
            return Err(invalid(format!("the query passed {} ms of audio", limits.max_query_ms)));
        }
        let mut samples = audio::pcm16_to_f32(&segment.pcm16).map_err(|e| invalid(e.to_string()))?;
        heard.audio_samples += samples.len();
        heard.segment_seconds.push(samples.len() as f64 / SAMPLE_RATE as f64);
        // Measuring and normalising a long segment takes milliseconds: off the async threads. The
        // pitch (about 0.5 ms a second of speech) is for the log only: it runs beside recognition
        // instead of before it, on the audio as received.
        let raw = samples.clone();
        heard.pitch_measures.push(tokio::task::spawn_blocking(move || audio::mean_pitch_hz(&raw)));
        let loudness = limits.loudness();
        let (samples, levels) = tokio::task::spawn_blocking(move || {
            let levels = loudness.normalise(&mut samples);
            (samples, levels)
        })
        .await
        .map_err(|e| Status::internal(format!("segment {sequence}: measuring the audio failed: {e}")))?;
        heard.energy += 10f64.powf(levels.rms_dbfs / 10.0) * samples.len() as f64;
        heard.clipped += levels.clipped_samples as u64;
        heard.gains.push(levels.gain_db);

        let (encoder, decoder) = match &heard.routes {
            Some(routes) => routes.clone(),
            None => {
                let routes = inner.models(self.routing_key())?;
                heard.shadow = ShadowHearing::of(&routes.0, &routes.1);
                heard.routes.insert(routes).clone()
            }
        };
        if sequence == 0
            && let Some(capturer) = &inner.capturer
            && capturer.wants(&self.capture_input(inner, &[], decoder.capture_rate))
        {
            heard.kept_audio = Some(Vec::new());
        }
        if let Some(kept) = heard.kept_audio.as_mut() {
            kept.extend_from_slice(&segment.pcm16);
        }
        heard.model = Some(ServedBy {
            name: inner.config.decoder_model.clone(),
            version: decoder.primary.config.version.to_string(),
            variant: decoder.variant,
            deployment: decoder.deployment.clone(),
        });
        let (encoder, decoder) = (encoder.primary, decoder.primary);
        let recogniser =
            Recogniser { tokenizer: inner.tokenizer(&decoder)?, encoder, decoder, limits: limits.decode_limits() };
        let started = Instant::now();
        let recognised = recognise_segment(&recogniser, &samples, limits.split_ms, limits.pad_ms).await?;
        let truncated = recognised.truncated;
        heard.tokens += recognised.tokens;
        heard.recognise_time += started.elapsed();
        heard.truncated += truncated;
        inner.metrics.segment(samples.len(), levels.clipped_samples, truncated, started.elapsed());
        if let Some(shadow) = heard.shadow.as_mut() {
            shadow.audio.push(samples);
        }
        let text = recognised.text;
        heard.transcripts.push(text.clone());
        Ok(SegmentTranscript {
            sequence,
            text,
            audio_ms,
            rms_dbfs: levels.rms_dbfs.max(-120.0),
            gain_db: levels.gain_db,
            clipped_samples: levels.clipped_samples as u32,
            truncated: truncated > 0,
        })
    }

    /// Searches the joined transcript and logs both stages.
    fn answer(&self, inner: &Inner, heard: &mut Heard) -> Result<SearchResult, Status> {
        let transcript = heard.transcripts.iter().filter(|t| !t.is_empty()).cloned().collect::<Vec<_>>().join(" ");
        let query = text::normalise(&transcript);
        let hits = inner
            .catalog
            .search(&query, self.max_results)
            .map_err(|e| Status::internal(format!("catalog search failed: {e}")))?;
        let served = heard.served_by(inner);
        let result = SearchResult {
            query_id: uuid::Uuid::now_v7().to_string(),
            trace_id: self.trace_id.clone(),
            transcript,
            query,
            hits: hits
                .into_iter()
                .enumerate()
                .map(|(i, h)| SearchHit {
                    product_id: h.product_id,
                    title: h.title,
                    category: h.category,
                    score: h.score,
                    rank: i as u32 + 1,
                })
                .collect(),
            model_name: served.name,
            model_version: served.version,
            transcript_id: self.transcript_id.clone(),
        };
        if let Some(records) = &inner.records {
            self.log(records, inner, heard, &result);
            heard.logged = true;
            self.start_shadow(records, inner, heard);
        }
        Ok(result)
    }

    /// Hears the answered query again with the shadow versions, in the shadow lane (skipped
    /// when it is full), and logs their recognition as a shadow record of the same trace: the
    /// monitor compares the two transcripts. Nothing of it reaches the client.
    fn start_shadow(&self, records: &RecordEmitter, inner: &Inner, heard: &mut Heard) {
        let Some(shadow) = heard.shadow.take() else { return };
        let served = ServedBy {
            name: shadow.model.clone(),
            version: shadow.version.clone(),
            variant: Variant::Shadow,
            deployment: shadow.deployment.clone(),
        };
        let ctx = self.context("voice_search.asr", &served.name, Variant::Shadow, &served.deployment);
        // What was heard (length, levels, pitch) is the query's; the transcript, its tokens
        // and cut pieces the shadow's.
        let record =
            PredictionRecord { prediction_id: uuid::Uuid::now_v7().to_string(), ..self.asr_record(&served, heard, "") };
        let tokenizer = inner.tokenizer(&shadow.decoder);
        let (records, limits) = (records.clone(), inner.config.clone());
        inner.infer.start_shadow_work(async move {
            let started = Instant::now();
            let heard = async {
                let recogniser = Recogniser {
                    tokenizer: tokenizer?,
                    encoder: Queued(shadow.encoder),
                    decoder: Queued(shadow.decoder),
                    limits: limits.decode_limits(),
                };
                let mut all = SegmentHeard::default();
                let mut texts = Vec::new();
                for samples in &shadow.audio {
                    let segment = recognise_segment(&recogniser, samples, limits.split_ms, limits.pad_ms).await?;
                    (all.tokens, all.truncated) = (all.tokens + segment.tokens, all.truncated + segment.truncated);
                    texts.extend((!segment.text.is_empty()).then_some(segment.text));
                }
                all.text = texts.join(" ");
                Ok::<_, Status>(all)
            };
            let (record, heard) = match heard.await {
                Ok(heard) => {
                    let compute_time_us = started.elapsed().as_micros() as u64;
                    (PredictionRecord { compute_time_us, ..shadow_heard(record, &heard) }, true)
                }
                Err(status) => {
                    let error = format!("{:?}: {}", status.code(), status.message());
                    (PredictionRecord { status: RecordStatus::Error as i32, error, ..record }, false)
                }
            };
            records.record(&ctx, record);
            heard
        });
    }

    /// Logs the query's stages: the device's VAD (when it reported), recognition and search.
    fn log(&self, records: &RecordEmitter, inner: &Inner, heard: &Heard, result: &SearchResult) {
        let (query, hits) = (&result.query, &result.hits);
        let served = heard.served_by(inner);
        if let Some(vad) = &heard.vad {
            let record = vad_record(vad, &self.config.device_id, &heard.segment_seconds);
            records.record(&self.context("voice_search.vad", &vad.model_name, Variant::Primary, ""), record);
        }
        let asr = PredictionRecord {
            capture: self.capture_audio(inner, heard),
            ..self.asr_record(&served, heard, &result.transcript)
        };
        records.record(&self.context("voice_search.asr", &served.name, served.variant, &served.deployment), asr);
        let search = PredictionRecord {
            prediction_id: result.query_id.clone(),
            device_id: self.config.device_id.clone(),
            model_name: "catalog-search".into(),
            model_version: inner.catalog.version().to_string(),
            features: vec![
                feature("query_words", query.split_whitespace().count() as f64),
                feature("results", hits.len() as f64),
                feature("top_score", hits.first().map_or(f64::NAN, |h| h.score as f64)),
            ],
            output: Some(PredictionOutput {
                label: hits.first().map(|h| h.product_id.clone()).unwrap_or_default(),
                scores: hits.iter().map(|h| h.score).collect(),
                text: query.to_string(),
                is_null: hits.is_empty(),
                ..Default::default()
            }),
            status: RecordStatus::Ok as i32,
            stage: STAGE_SEARCH.into(),
            ..Default::default()
        };
        let search_context = self.context("voice_search.search", "catalog-search", served.variant, &served.deployment);
        records.record(&search_context, search);
    }

    /// Logs a query that failed once open: its recognition so far, with the status.
    fn log_failed(&self, records: &RecordEmitter, inner: &Inner, heard: &Heard, status: &Status) {
        let served = heard.served_by(inner);
        let transcript = heard.transcripts.iter().filter(|t| !t.is_empty()).cloned().collect::<Vec<_>>().join(" ");
        let invalid = status.code() == tonic::Code::InvalidArgument;
        let asr = PredictionRecord {
            status: if invalid { RecordStatus::InvalidInput } else { RecordStatus::Error } as i32,
            error: format!("{:?}: {}", status.code(), status.message()),
            ..self.asr_record(&served, heard, &transcript)
        };
        records.record(&self.context("voice_search.asr", &served.name, served.variant, &served.deployment), asr);
    }

    /// The record of the query's recognition by `served`: what was heard, and `transcript`.
    fn asr_record(&self, served: &ServedBy, heard: &Heard, transcript: &str) -> PredictionRecord {
        let seconds = heard.audio_samples as f64 / SAMPLE_RATE as f64;
        let rms =
            if heard.audio_samples > 0 { 10.0 * (heard.energy / heard.audio_samples as f64).log10() } else { f64::NAN };
        PredictionRecord {
            prediction_id: self.transcript_id.clone(),
            device_id: self.config.device_id.clone(),
            model_name: served.name.clone(),
            model_version: served.version.clone(),
            features: vec![
                feature("audio_seconds", seconds),
                feature("segments", heard.transcripts.len() as f64),
                feature("rms_dbfs", rms),
                feature("pitch_hz", mean(&heard.pitch)),
                feature("clipped_samples", heard.clipped as f64),
                feature("gain_db", mean(&heard.gains)),
                feature("tokens", heard.tokens as f64),
                feature("truncated_pieces", heard.truncated as f64),
                feature("segment_seconds", mean(&heard.segment_seconds)),
            ],
            output: Some(PredictionOutput {
                text: transcript.to_string(),
                is_null: transcript.is_empty(),
                ..Default::default()
            }),
            compute_time_us: heard.recognise_time.as_micros() as u64,
            status: RecordStatus::Ok as i32,
            stage: STAGE_ASR.into(),
            ..Default::default()
        }
    }

    /// The request context of one of the query's records.
    fn context(&self, api: &'static str, model: &str, variant: Variant, deployment: &str) -> RequestContext {
        RequestContext {
            station_id: self.config.device_id.clone(),
            part_id: String::new(),
            request_id: self.config.session_id.clone(),
            capture_time: None,
            request_time: self.request_time,
            model_name: model.to_string(),
            api,
            variant,
            deployment: deployment.to_string(),
            trace_id: self.trace_id.clone(),
            stage: String::new(),
        }
    }
}

/// What one segment's recognition heard.
#[derive(Debug, Default)]
struct SegmentHeard {
    text: String,
    tokens: usize,
    /// Pieces whose decoding stopped at the token limit.
    truncated: usize,
}

/// Recognises a segment's (normalised) samples a piece at a time, cut at its quiet points
/// (`split_ms` at most) and each padded with `pad_ms` of silence.
async fn recognise_segment<E: ModelRunner, D: ModelRunner>(
    recogniser: &Recogniser<E, D>,
    samples: &[f32],
    split_ms: u32,
    pad_ms: u32,
) -> Result<SegmentHeard, Status> {
    let mut heard = SegmentHeard::default();
    let mut pieces = Vec::new();
    for range in audio::split_at_quiet_points(samples, split_ms as usize * SAMPLES_PER_MS) {
        let padded = audio::pad(&samples[range], pad_ms, pad_ms);
        let recognised = recogniser.recognise(&padded).await.map_err(speech_status)?;
        heard.tokens += recognised.tokens.len();
        heard.truncated += usize::from(recognised.truncated);
        if !recognised.text.is_empty() {
            pieces.push(recognised.text);
        }
    }
    heard.text = pieces.join(" ");
    Ok(heard)
}

/// The versions a query is heard with again, off its path, for a deployment in shadow mode:
/// a candidate in the encoder's or the decoder's route (the primary of the other where it has
/// none), logged under the model and version in shadow (the decoder's where both are), and
/// each segment's audio as recognised, kept until the query is answered (within the query's
/// audio limit).
struct ShadowHearing {
    encoder: Arc<LoadedModel>,
    decoder: Arc<LoadedModel>,
    model: String,
    version: String,
    deployment: String,
    audio: Vec<Vec<f32>>,
}

impl ShadowHearing {
    fn of(encoder: &Route, decoder: &Route) -> Option<Self> {
        let (in_shadow, route) = match (decoder.shadows.first(), encoder.shadows.first()) {
            (Some(candidate), _) => (candidate, decoder),
            (None, Some(candidate)) => (candidate, encoder),
            (None, None) => return None,
        };
        Some(Self {
            encoder: encoder.shadows.first().unwrap_or(&encoder.primary).clone(),
            decoder: decoder.shadows.first().unwrap_or(&decoder.primary).clone(),
            model: in_shadow.config.name.clone(),
            version: in_shadow.config.version.to_string(),
            deployment: route.deployment.clone(),
            audio: Vec::new(),
        })
    }
}

/// A model run through its queue, never inline on the calling thread: for a shadow's work,
/// which no client waits on.
struct Queued(Arc<LoadedModel>);

impl ModelRunner for Queued {
    async fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        Ok(self.0.batcher.infer_queued(inputs).await?.outputs)
    }
}

/// `record` (the query's recognition record, as the shadow's) with what the shadow heard.
fn shadow_heard(mut record: PredictionRecord, heard: &SegmentHeard) -> PredictionRecord {
    for feature in &mut record.features {
        match feature.name.as_str() {
            "tokens" => feature.value = heard.tokens as f64,
            "truncated_pieces" => feature.value = heard.truncated as f64,
            _ => {}
        }
    }
    if let Some(output) = record.output.as_mut() {
        output.text = heard.text.clone();
        output.is_null = heard.text.is_empty();
    }
    record
}

/// Why the client's request stream failed, as the query's status. The transport's errors
/// (a reset, a cut connection: tonic keeps the h2 or hyper error as the status' source) mean
/// the client left. Otherwise the server refused a message (the status has no source, or
/// carries the status of the layer that refused it): one that is not a
/// `SearchRequest` (the codec's INVALID_ARGUMENT; tonic's INTERNAL for a message cut short or
/// not decompressed) is the client's error, INVALID_ARGUMENT, logged as invalid input with
/// what the query heard before; the admission limits' RESOURCE_EXHAUSTED
/// (the message over `limits.max_message_bytes`, or no room in the memory budget) and tonic's
/// OUT_OF_RANGE (over its decoding limit), said as they are and not logged, as a unary call
/// refused by them is not. Anything else ends the query as the client leaving did: unless the
/// server's deadline or drain ended the call (see `run`).
fn client_stream_failed(status: Status, heard: &mut Heard) -> Status {
    use std::error::Error as _;
    let refused_by_the_server = {
        let mut cause = status.source();
        let mut refused = cause.is_none();
        while let Some(e) = cause {
            refused |= e.is::<Status>();
            cause = e.source();
        }
        refused
    };
    if !refused_by_the_server {
        return Status::cancelled(format!("the client's request stream ended: {}", status.message()));
    }
    match status.code() {
        tonic::Code::InvalidArgument => status,
        tonic::Code::Internal => {
            Status::invalid_argument(format!("a message of the request stream cannot be read: {}", status.message()))
        }
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            heard.refused_by_limits = true;
            status
        }
        _ => Status::cancelled(format!("the client's request stream ended: {}", status.message())),
    }
}

/// Sends `message` to the client, waiting at most `limit` for it to take the answers before
/// (HTTP/2 flow control): a client that reads nothing does not hold the query's work.
async fn deliver(
    tx: &mpsc::Sender<Result<SearchResponse, Status>>,
    message: Result<SearchResponse, Status>,
    limit: Duration,
) -> Result<(), Status> {
    match tokio::time::timeout(limit, tx.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Status::cancelled("the client left mid-stream")),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the client took no answer for {} ms: read the responses as they come",
            limit.as_millis()
        ))),
    }
}

/// Stage names of voice search's records: the device's VAD, recognition, catalog search.
pub const STAGE_VAD: &str = "vad";
pub const STAGE_ASR: &str = "asr";
pub const STAGE_SEARCH: &str = "search";

/// Checks a device's VAD report against the segments it sent.
fn checked_report(report: VadReport, segments_sent: u64) -> Result<VadReport, Status> {
    let invalid = |why: String| Err(Status::invalid_argument(format!("vad_report: {why}")));
    if report.model_name.is_empty() {
        return invalid("model_name must name the VAD model that ran on the device".into());
    }
    // They become the "vad" record's model and version, which the store keeps as ids.
    check_id("vad_report.model_name", &report.model_name)?;
    check_id("vad_report.model_version", &report.model_version)?;
    if report.speech_ms > report.recorded_ms {
        return invalid(format!("speech_ms {} is more than recorded_ms {}", report.speech_ms, report.recorded_ms));
    }
    if u64::from(report.segments) != segments_sent {
        return invalid(format!("it counts {} segments but {segments_sent} were sent", report.segments));
    }
    if !(0.0..=1.0).contains(&report.threshold) || !(0.0..=1.0).contains(&report.mean_speech_probability) {
        return invalid("threshold and mean_speech_probability are probabilities in [0, 1]".into());
    }
    Ok(report)
}

/// The "vad" stage record: the device's VAD on this recording, from its report; a device whose
/// VAD clips differently shows up in `segment_seconds` and `speech_ratio`.
fn vad_record(vad: &VadReport, device_id: &str, segment_seconds: &[f64]) -> PredictionRecord {
    let ratio = if vad.recorded_ms > 0 { vad.speech_ms as f64 / vad.recorded_ms as f64 } else { f64::NAN };
    PredictionRecord {
        prediction_id: uuid::Uuid::now_v7().to_string(),
        device_id: device_id.to_string(),
        model_name: vad.model_name.clone(),
        model_version: vad.model_version.clone(),
        features: vec![
            feature("recorded_seconds", vad.recorded_ms as f64 / 1e3),
            feature("speech_seconds", vad.speech_ms as f64 / 1e3),
            feature("speech_ratio", ratio),
            feature("segments", f64::from(vad.segments)),
            feature("segment_seconds", mean(segment_seconds)),
            feature("threshold", f64::from(vad.threshold)),
            feature("min_silence_ms", f64::from(vad.min_silence_ms)),
        ],
        output: Some(PredictionOutput {
            label: if vad.segments > 0 { "speech" } else { "no_speech" }.into(),
            scores: vec![vad.mean_speech_probability],
            is_null: vad.segments == 0,
            ..Default::default()
        }),
        compute_time_us: vad.compute_time_us,
        status: RecordStatus::Ok as i32,
        stage: STAGE_VAD.into(),
        ..Default::default()
    }
}

/// The mean, NaN (a missing feature) when there is nothing.
fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { f64::NAN } else { values.iter().sum::<f64>() / values.len() as f64 }
}

fn feature(name: &str, value: f64) -> Feature {
    Feature { name: name.into(), value, missing: !value.is_finite(), category: String::new() }
}

fn speech_status(error: SpeechError) -> Status {
    match error {
        SpeechError::InvalidAudio(m) => Status::invalid_argument(m),
        SpeechError::Model(e) => to_status(e),
        SpeechError::ModelContract(m) => Status::failed_precondition(m),
    }
}

impl Inner {
    /// The encoder's and the decoder's routes for a query keyed by `key`.
    fn models(&self, key: &str) -> Result<(Route, Route), Status> {
        let get = |name: &str| {
            self.infer.route(name, "", key).map_err(|e| {
                Status::unavailable(format!(
                    "voice search needs model '{name}' ({e}); ./dev setup fetches it into .vigil/cloud-models"
                ))
            })
        };
        Ok((get(&self.config.encoder_model)?, get(&self.config.decoder_model)?))
    }

    fn tokenizer(&self, decoder: &Arc<LoadedModel>) -> Result<Arc<Tokenizer>, Status> {
        let path = decoder.path.join("tokenizer.bin");
        if let Some((read_for, t)) = self.tokenizers.lock().get(&path)
            && std::sync::Weak::ptr_eq(read_for, &Arc::downgrade(decoder))
        {
            return Ok(t.clone());
        }
        let tokenizer = Arc::new(Tokenizer::load(&path).map_err(speech_status)?);
        self.tokenizers.lock().insert(path, (Arc::downgrade(decoder), tokenizer.clone()));
        Ok(tokenizer)
    }
}

impl VoiceSearchConfig {
    fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_tokens_per_second: self.max_tokens_per_second,
            max_samples: (self.split_ms as usize + 2 * self.pad_ms as usize) * SAMPLES_PER_MS,
        }
    }

    fn loudness(&self) -> Loudness {
        Loudness { target_dbfs: self.target_dbfs, max_gain_db: self.max_gain_db, ..Loudness::default() }
    }

    fn config_timeout(&self) -> Duration {
        Duration::from_millis(self.config_timeout_ms)
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}
