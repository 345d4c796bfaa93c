//! `vigil speak`: the device side of voice search (`vigil batch` runs it over many recordings).
//!
//! Silero VAD runs in this process over each recording, only the speech segments are streamed
//! to vigil-cloud (each as soon as it closes), and the transcript, the results, the audio sent
//! against recorded and the wait after the last speech are reported. The server logs every
//! query as realtime traffic is logged.

use crate::connect::SecureChannel;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vigil_proto::vigil::v1::voice_search_client::VoiceSearchClient;
use vigil_proto::vigil::v1::{SearchConfig, SearchRequest, SpeechSegment, VadReport, search_request, search_response};
use vigil_speech::audio::{self, SAMPLES_PER_MS};
use vigil_speech::vad::{self, CHUNK, Segmenter, VadParams, VadStream};
use vigil_speech::{LocalModel, SAMPLE_RATE};

#[derive(Args, Debug)]
pub struct SpeakArgs {
    /// Recordings: 16 kHz mono 16-bit WAV files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub options: SpeakOptions,
}

/// How recordings are listened to and sent (shared by `vigil speak` and `vigil batch`).
#[derive(Args, Debug, Clone)]
pub struct SpeakOptions {
    /// Cloud server address.
    #[arg(long, default_value = "http://127.0.0.1:8010", env = "VIGIL_CLOUD")]
    pub server: String,
    /// Silero VAD model directory (model.onnx + model.toml).
    #[arg(long, env = "VIGIL_VAD_MODEL", default_value = ".vigil/cloud-models/silero-vad/1")]
    pub vad_model: PathBuf,
    /// A chunk at or above this speech probability is speech.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Speech ends below this probability (default: threshold - 0.15).
    #[arg(long)]
    pub negative_threshold: Option<f32>,
    /// Shorter speech is dropped.
    #[arg(long, default_value_t = 250)]
    pub min_speech_ms: u32,
    /// A pause this long ends a segment.
    #[arg(long, default_value_t = 300)]
    pub min_silence_ms: u32,
    /// Silence kept around each segment (at most min_silence_ms).
    #[arg(long, default_value_t = 200)]
    pub speech_pad_ms: u32,
    /// Speech without a pause this long is cut into the next segment (under the server's
    /// segment limit, 30 s by default); 0: never.
    #[arg(long, default_value_t = 20_000)]
    pub max_speech_ms: u32,
    /// Device id sent with each query.
    #[arg(long, default_value = "cli")]
    pub device_id: String,
    /// Results per query.
    #[arg(long, default_value_t = 5)]
    pub results: u32,
    /// Print one JSON object per recording, for machines.
    #[arg(long)]
    pub json: bool,
    /// Per-recording timeout in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=crate::bench::MAX_TIMEOUT_MS))]
    pub timeout_ms: u64,
}

/// One recording's outcome, as printed with `--json`.
#[derive(Debug, Serialize, Default)]
pub struct Spoken {
    pub path: String,
    pub query_id: String,
    pub trace_id: String,
    pub segments: Vec<SpokenSegment>,
    pub transcript: String,
    pub results: Vec<SpokenHit>,
    pub recorded_ms: u64,
    pub sent_ms: u64,
    /// From the end of the last speech sent to the results, milliseconds.
    pub wait_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SpokenSegment {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct SpokenHit {
    pub rank: u32,
    pub product_id: String,
    pub title: String,
    pub score: f32,
}

pub async fn run(args: SpeakArgs) -> Result<u8> {
    let options = &args.options;
    let params = vad_params(options)?;
    let vad = load_vad(options)?;
    let client = connect(&options.server).await?;
    let mut failed = false;
    for path in &args.files {
        let spoken = speak_within_timeout(client.clone(), &vad, path, params, options).await;
        failed |= spoken.error.is_some();
        print(&spoken, options.json);
    }
    Ok(if failed { crate::inspect::exit::FAILED } else { 0 })
}

pub(crate) fn vad_params(args: &SpeakOptions) -> Result<VadParams> {
    let params = VadParams {
        threshold: args.threshold,
        negative_threshold: args.negative_threshold.unwrap_or((args.threshold - 0.15).max(0.0)),
        min_speech_ms: args.min_speech_ms,
        min_silence_ms: args.min_silence_ms,
        speech_pad_ms: args.speech_pad_ms,
        max_speech_ms: args.max_speech_ms,
    };
    params.validate().map_err(|e| anyhow::anyhow!("VAD settings: {e}"))?;
    Ok(params)
}

pub(crate) fn load_vad(args: &SpeakOptions) -> Result<LocalModel> {
    LocalModel::load(&args.vad_model, 1).with_context(|| {
        format!("cannot load the VAD model from {} (./dev setup fetches it; --vad-model)", args.vad_model.display())
    })
}

/// One recording's outcome, its error (or the timeout) included.
pub(crate) async fn speak_within_timeout(
    client: VoiceSearchClient<SecureChannel>,
    vad: &LocalModel,
    path: &Path,
    params: VadParams,
    args: &SpeakOptions,
) -> Spoken {
    let failed = |error: String| Spoken { path: path.display().to_string(), error: Some(error), ..Default::default() };
    match tokio::time::timeout(Duration::from_millis(args.timeout_ms), speak_file(client, vad, path, params, args))
        .await
    {
        Ok(Ok(spoken)) => spoken,
        Ok(Err(e)) => failed(format!("{e:#}")),
        Err(_) => failed(format!("no answer within {} ms (--timeout-ms)", args.timeout_ms)),
    }
}

/// Connects to vigil-cloud with a clear error when it is not there.
pub async fn connect(server: &str) -> Result<VoiceSearchClient<SecureChannel>> {
    let what = format!("the cloud server at {server}; is vigil-cloud running? (--server)");
    let channel = crate::connect::channel(server, &what).await?;
    Ok(VoiceSearchClient::new(channel).max_decoding_message_size(32 << 20).max_encoding_message_size(32 << 20))
}

/// Runs VAD over one recording, streaming each segment as it closes, and collects the answer.
pub async fn speak_file(
    mut client: VoiceSearchClient<SecureChannel>,
    vad: &LocalModel,
    path: &Path,
    params: VadParams,
    args: &SpeakOptions,
) -> Result<Spoken> {
    let samples = audio::read_wav(path)?;
    let (tx, rx) = mpsc::channel(16);
    let config = SearchConfig {
        language: "en".into(),
        sample_rate: SAMPLE_RATE,
        device_id: args.device_id.clone(),
        max_results: args.results,
        ..Default::default()
    };
    tx.send(SearchRequest { message: Some(search_request::Message::Config(config)) }).await?;
    let call = tokio::spawn(async move { client.search(ReceiverStream::new(rx)).await });

    let mut stream = VadStream::new(vad);
    let mut segmenter = Segmenter::new(params);
    let mut spans = Vec::new();
    let mut probabilities = Vec::with_capacity(samples.len() / CHUNK + 1);
    let mut vad_time = Duration::ZERO;
    'listening: for (i, chunk) in samples.chunks(CHUNK).enumerate() {
        let started = Instant::now();
        let probability = stream.probability(chunk).await?;
        vad_time += started.elapsed();
        probabilities.push(probability);
        let mut closed: Vec<_> = segmenter.push(probability, chunk.len()).into_iter().collect();
        if (i + 1) * CHUNK >= samples.len() {
            closed.extend(segmenter.finish(samples.len()));
        }
        for span in closed {
            let request = segment_request(&samples, span.clone(), spans.len() as u64);
            spans.push(span);
            if tx.send(request).await.is_err() {
                // The server ended the call: its status says why.
                break 'listening;
            }
        }
    }
    let report = vad_report(vad, &params, &samples, &spans, &probabilities, vad_time);
    // A refused report ends the call; its status comes back below.
    let _ = tx.send(SearchRequest { message: Some(search_request::Message::VadReport(report)) }).await;
    drop(tx);
    let speech_ended = Instant::now();

    let mut responses = call.await?.map_err(status_error)?.into_inner();
    let mut spoken = Spoken {
        path: path.display().to_string(),
        recorded_ms: (samples.len() / SAMPLES_PER_MS) as u64,
        sent_ms: spans.iter().map(|s| (s.len() / SAMPLES_PER_MS) as u64).sum(),
        ..Default::default()
    };
    while let Some(message) = responses.message().await.map_err(status_error)? {
        match message.message {
            Some(search_response::Message::Segment(s)) => {
                let span = &spans[s.sequence as usize];
                spoken.segments.push(SpokenSegment {
                    start_ms: (span.start / SAMPLES_PER_MS) as u64,
                    end_ms: (span.end / SAMPLES_PER_MS) as u64,
                    text: s.text,
                });
            }
            Some(search_response::Message::Result(r)) => {
                spoken.wait_ms = speech_ended.elapsed().as_secs_f64() * 1e3;
                spoken.query_id = r.query_id;
                spoken.trace_id = r.trace_id;
                spoken.transcript = r.transcript;
                spoken.results = r
                    .hits
                    .into_iter()
                    .map(|h| SpokenHit { rank: h.rank, product_id: h.product_id, title: h.title, score: h.score })
                    .collect();
            }
            None => {}
        }
    }
    if spoken.query_id.is_empty() {
        anyhow::bail!("the server ended the stream without results");
    }
    Ok(spoken)
}

/// What the VAD did with one recording, for the query's "vad" stage record.
fn vad_report(
    vad: &LocalModel,
    params: &VadParams,
    samples: &[f32],
    spans: &[std::ops::Range<usize>],
    probabilities: &[f32],
    vad_time: Duration,
) -> VadReport {
    VadReport {
        model_name: vad.name().to_string(),
        model_version: vad.version().to_string(),
        recorded_ms: (samples.len() / SAMPLES_PER_MS) as u64,
        speech_ms: spans.iter().map(|s| (s.len() / SAMPLES_PER_MS) as u64).sum(),
        segments: spans.len() as u32,
        threshold: params.threshold,
        min_speech_ms: params.min_speech_ms,
        min_silence_ms: params.min_silence_ms,
        mean_speech_probability: vad::mean_probability_in(probabilities, spans).clamp(0.0, 1.0),
        compute_time_us: vad_time.as_micros() as u64,
    }
}

/// The request carrying `span` of `samples` as segment `sequence`.
pub(crate) fn segment_request(samples: &[f32], span: std::ops::Range<usize>, sequence: u64) -> SearchRequest {
    let segment = SpeechSegment {
        sequence,
        pcm16: audio::f32_to_pcm16(&samples[span.clone()]),
        start_ms: (span.start / SAMPLES_PER_MS) as u64,
        end_ms: (span.end / SAMPLES_PER_MS) as u64,
    };
    SearchRequest { message: Some(search_request::Message::Segment(segment)) }
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn print(spoken: &Spoken, json: bool) {
    if json {
        println!("{}", serde_json::to_string(spoken).expect("serialisable"));
        return;
    }
    println!("{}", spoken.path);
    if let Some(e) = &spoken.error {
        println!("  error: {e}");
        return;
    }
    for s in &spoken.segments {
        println!("  [{:>6.2}s - {:>6.2}s] {}", s.start_ms as f64 / 1e3, s.end_ms as f64 / 1e3, s.text);
    }
    println!("  transcript: {}", spoken.transcript);
    for h in &spoken.results {
        println!("  {:>2}. {:<8} {:<45} {:.2}", h.rank, h.product_id, h.title, h.score);
    }
    let share = if spoken.recorded_ms > 0 { 100.0 * spoken.sent_ms as f64 / spoken.recorded_ms as f64 } else { 0.0 };
    println!(
        "  sent {} ms of {} ms recorded ({share:.0}%); results {:.0} ms after the last speech was sent",
        spoken.sent_ms, spoken.recorded_ms, spoken.wait_ms
    );
}
