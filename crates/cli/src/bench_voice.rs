//! `vigil bench-voice`: voice search measured as a user meets it. Spoken queries (espeak-ng)
//! with silence around them; Silero VAD on the device side; vigil-cloud (release build, shipped
//! configuration, in this process) answering over loopback gRPC at 1 and 8 concurrent streams.
//! Prints the real-time factors of VAD and recognition run directly on the models (the
//! baseline), the user's wait from the end of speech to the results, each query's wait over its
//! own direct recognition time (the serving overhead, paired per query), segments per second,
//! CPU per query, and the audio sent against recorded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use vigil_cloud::CloudConfig;
use vigil_proto::vigil::v1::voice_search_client::VoiceSearchClient;
use vigil_proto::vigil::v1::{SearchConfig, SearchRequest, search_request, search_response};
use vigil_speech::asr::{DecodeLimits, Recogniser, Tokenizer};
use vigil_speech::audio::{self, Loudness, SAMPLES_PER_MS};
use vigil_speech::espeak::{self, ADULT};
use vigil_speech::vad::{self, VadParams, VadStream};
use vigil_speech::{LocalModel, SAMPLE_RATE};

#[derive(Args, Debug)]
pub struct VoiceBenchArgs {
    /// Model repository with the speech models (./dev setup fetches them).
    #[arg(long, env = "VIGIL_CLOUD_MODELS", default_value = ".vigil/cloud-models")]
    pub models: PathBuf,
    /// Spoken queries, one per line (`text | product id`).
    #[arg(long, default_value = "tests/speech/queries.txt")]
    pub queries: PathBuf,
    /// Catalog the server searches.
    #[arg(long, default_value = "deploy/catalog/products.csv")]
    pub catalog: PathBuf,
    /// Concurrent streams to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub concurrency: Vec<usize>,
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 10.0, value_parser = crate::bench::seconds)]
    pub duration_s: f64,
    /// Load the `vigil-cloud` binary in its own process (release build beside this `vigil`),
    /// so the server's CPU per query is measured apart from this client's.
    #[arg(long)]
    pub external: bool,
}

/// Direct recognition runs per query; the median is the query's baseline.
const DIRECT_RUNS: usize = 3;

/// One recorded query: the recording and the speech its VAD found.
struct Recording {
    samples: Vec<f32>,
    spans: Vec<std::ops::Range<usize>>,
}

pub async fn run(args: VoiceBenchArgs) -> Result<()> {
    let texts: Vec<String> = std::fs::read_to_string(&args.queries)
        .with_context(|| format!("cannot read {}", args.queries.display()))?
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('|').next().unwrap_or_default().trim().to_string())
        .collect();
    eprintln!("==> synthesising {} spoken queries with espeak-ng", texts.len());
    let vad_model = LocalModel::load(&args.models.join("silero-vad/1"), 1)
        .with_context(|| format!("no Silero VAD in {} (./dev setup fetches it; --models)", args.models.display()))?;
    let mut recordings = Vec::new();
    let (mut vad_time, mut recorded, mut sent) = (Duration::ZERO, 0usize, 0usize);
    for text in &texts {
        let mut samples = vec![0.0; 600 * SAMPLES_PER_MS];
        samples.extend(espeak::say(text, ADULT)?);
        samples.extend(vec![0.0; 700 * SAMPLES_PER_MS]);
        let started = Instant::now();
        let probabilities = VadStream::new(&vad_model).probabilities(&samples).await?;
        vad_time += started.elapsed();
        let spans = vad::speech_spans(&probabilities, samples.len(), VadParams::default());
        recorded += samples.len();
        sent += spans.iter().map(|s| s.len()).sum::<usize>();
        recordings.push(Recording { samples, spans });
    }
    let recordings = Arc::new(recordings);
    let audio_s = recorded as f64 / SAMPLE_RATE as f64;

    let mut config = CloudConfig { model_repository: args.models.clone(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse()?;
    config.metrics.enabled = false;
    config.logging.enabled = false;
    config.models.watch_interval_ms = 0;
    config.voice_search.catalog = args.catalog.clone();
    let voice = config.voice_search.clone();
    let server = vigil_cloud::start(config, false, None).await?;

    // Baseline: the recogniser on the loaded models directly, one query at a time, exactly the
    // audio the server would recognise (16-bit PCM as sent, normalised, padded); each query recognised
    // DIRECT_RUNS times, its median its baseline.
    let encoder = server.repository.get(&voice.encoder_model, "")?;
    let decoder = server.repository.get(&voice.decoder_model, "")?;
    let tokenizer = Arc::new(Tokenizer::load(&decoder.path.join("tokenizer.bin"))?);
    let recogniser = Recogniser { encoder, decoder, tokenizer, limits: DecodeLimits::default() };
    let loudness = Loudness { target_dbfs: voice.target_dbfs, max_gain_db: voice.max_gain_db, ..Loudness::default() };
    let mut direct = histogram();
    let (mut asr_time, mut speech_samples) = (Duration::ZERO, 0usize);
    let mut direct_per_recording = Vec::with_capacity(recordings.len());
    for r in recordings.iter() {
        let mut runs = Vec::with_capacity(DIRECT_RUNS);
        for run in 0..DIRECT_RUNS {
            let started = Instant::now();
            for span in &r.spans {
                let mut speech = audio::pcm16_to_f32(&audio::f32_to_pcm16(&r.samples[span.clone()]))?;
                loudness.normalise(&mut speech);
                if run == 0 {
                    speech_samples += speech.len();
                }
                recogniser.recognise(&audio::pad(&speech, voice.pad_ms, voice.pad_ms)).await?;
            }
            runs.push(started.elapsed());
        }
        runs.sort();
        let median = runs[DIRECT_RUNS / 2];
        asr_time += median;
        direct.record(median.as_micros() as u64)?;
        direct_per_recording.push(median);
    }
    let direct_per_recording = Arc::new(direct_per_recording);
    let speech_s = speech_samples as f64 / SAMPLE_RATE as f64;

    let me = std::process::id();
    let (load_server, addr) = if args.external {
        server.shutdown().await?;
        external_server(&args).await?
    } else {
        let addr = format!("http://{}", server.addr);
        (crate::bench::Server::EmbeddedCloud(server), addr)
    };
    let server_pid = load_server.pid();
    let mut rows = Vec::new();
    for &streams in &args.concurrency {
        let deadline = Instant::now() + Duration::from_secs_f64(args.duration_s);
        let cpu_before = crate::bench::cpu_time(me)?;
        let server_cpu_before = server_pid.map(crate::bench::cpu_time).transpose()?;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for stream in 0..streams {
            let (recordings, direct, addr) = (recordings.clone(), direct_per_recording.clone(), addr.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = VoiceSearchClient::connect(addr).await?;
                let (mut waits, mut overheads, mut segments) = (histogram(), Vec::new(), 0u64);
                let mut i = stream;
                while Instant::now() < deadline {
                    let index = i % recordings.len();
                    let r = &recordings[index];
                    i += streams;
                    let wait = query(&mut client, r).await?;
                    waits.record(wait.as_micros() as u64)?;
                    overheads.push(wait.as_secs_f64() - direct[index].as_secs_f64());
                    segments += r.spans.len() as u64;
                }
                anyhow::Ok((waits, overheads, segments))
            }));
        }
        let (mut waits, mut overheads, mut segments) = (histogram(), Vec::new(), 0);
        for task in tasks {
            let (w, o, s) = task.await??;
            waits.add(w)?;
            overheads.extend(o);
            segments += s;
        }
        let queries = overheads.len() as u64;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = crate::bench::cpu_time(me)?.saturating_sub(cpu_before);
        let server_cpu = match (server_pid, server_cpu_before) {
            (Some(pid), Some(before)) => Some(crate::bench::cpu_time(pid)?.saturating_sub(before)),
            _ => None,
        };
        eprintln!("  {streams} stream(s): done");
        rows.push((streams, queries, segments, elapsed, waits, overheads, cpu, server_cpu));
    }
    load_server.stop().await?;

    println!("\n{}", vigil_telemetry::benchmark_header());
    println!("\n| stage, run directly on the models | audio | time | real-time factor |");
    println!("|---|---:|---:|---:|");
    println!(
        "| Silero VAD, {} recordings (one thread) | {audio_s:.1} s | {:.3} s | {:.4} |",
        recordings.len(),
        vad_time.as_secs_f64(),
        vad_time.as_secs_f64() / audio_s
    );
    println!(
        "| Moonshine tiny, the VAD's segments padded {} ms (one query at a time, median of {DIRECT_RUNS} runs) | {speech_s:.1} s | {:.3} s | {:.4} |",
        voice.pad_ms,
        asr_time.as_secs_f64(),
        asr_time.as_secs_f64() / speech_s
    );
    println!(
        "\nDirect recognition per query (median of its runs): p50 {:.1} ms, p99 {:.1} ms. Sent {:.0}% of the audio recorded ({:.1} s of {audio_s:.1} s).",
        direct.value_at_quantile(0.5) as f64 / 1e3,
        direct.value_at_quantile(0.99) as f64 / 1e3,
        100.0 * sent as f64 / recorded as f64,
        sent as f64 / SAMPLE_RATE as f64,
    );
    let per_query = |cpu: Duration, queries: u64| format!("{:.1} ms", cpu.as_secs_f64() * 1e3 / queries.max(1) as f64);
    let (cpu_columns, cpu_rule) = if args.external {
        ("server CPU per query | server CPU / direct ASR time | client CPU per query", "---:|---:|---:")
    } else {
        ("CPU per query (server and client)", "---:")
    };
    println!(
        "\n| streams | queries/s | segments/s | wait p50 | wait p99 | wait p50 / direct p50 | overhead p50 | overhead p99 | {cpu_columns} |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|{cpu_rule}|");
    let direct_per_query = asr_time.as_secs_f64() / recordings.len().max(1) as f64;
    for (streams, queries, segments, elapsed, waits, mut overheads, cpu, server_cpu) in rows {
        let cpu = match server_cpu {
            Some(server) => format!(
                "{} | {:.2}x | {}",
                per_query(server, queries),
                server.as_secs_f64() / queries.max(1) as f64 / direct_per_query,
                per_query(cpu, queries)
            ),
            None => per_query(cpu, queries),
        };
        overheads.sort_by(f64::total_cmp);
        println!(
            "| {streams} | {:.1} | {:.1} | {:.1} ms | {:.1} ms | {:.2}x | {:+.2} ms | {:+.2} ms | {cpu} |",
            queries as f64 / elapsed,
            segments as f64 / elapsed,
            waits.value_at_quantile(0.5) as f64 / 1e3,
            waits.value_at_quantile(0.99) as f64 / 1e3,
            waits.value_at_quantile(0.5) as f64 / direct.value_at_quantile(0.5).max(1) as f64,
            nearest_rank(&overheads, 0.5) * 1e3,
            nearest_rank(&overheads, 0.99) * 1e3,
        );
    }
    println!("\nWait: from the half-close after the last segment to the results (the user's wait after speaking).");
    println!(
        "Overhead: each query's wait less the median of its {DIRECT_RUNS} direct recognitions (search, gRPC, queueing and noise)."
    );
    if args.external {
        println!("Server: the vigil-cloud binary in its own process; CPU is user + system of each process.");
    } else {
        println!("CPU per query: this process (server and client together), user + system.");
    }
    Ok(())
}

/// The `vigil-cloud` binary beside this one, on the speech models, logging off as in-process.
async fn external_server(args: &VoiceBenchArgs) -> Result<(crate::bench::Server, String)> {
    let binary = std::env::current_exe()?.with_file_name("vigil-cloud");
    if !binary.exists() {
        anyhow::bail!("{} not found: build it (cargo build --release -p vigil-cloud)", binary.display());
    }
    let config = tempfile::NamedTempFile::new()?;
    let catalog = std::fs::canonicalize(&args.catalog)
        .with_context(|| format!("cannot find the catalog {}", args.catalog.display()))?;
    std::fs::write(
        config.path(),
        format!("[logging]\nenabled = false\n\n[voice_search]\ncatalog = {:?}\n", catalog.display().to_string()),
    )?;
    let mut command = std::process::Command::new(&binary);
    command.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--model-repository"]);
    command.arg(&args.models).arg("--config").arg(config.path());
    let started = crate::bench::Server::spawn(command, "vigil-cloud listening on ").await?;
    // The server has read its configuration by the time it listens.
    drop(config);
    Ok(started)
}

/// Streams one recording's segments and returns the wait from the end of speech to the results.
async fn query(client: &mut VoiceSearchClient<tonic::transport::Channel>, r: &Recording) -> Result<Duration> {
    let mut messages = vec![SearchRequest {
        message: Some(search_request::Message::Config(SearchConfig {
            language: "en".into(),
            sample_rate: SAMPLE_RATE,
            device_id: "bench".into(),
            ..Default::default()
        })),
    }];
    messages.extend(
        r.spans.iter().enumerate().map(|(i, span)| crate::speak::segment_request(&r.samples, span.clone(), i as u64)),
    );
    let mut responses = client.search(tokio_stream::iter(messages)).await?.into_inner();
    // The stream half-closes as soon as its last message is sent: the wait starts there.
    let speech_ended = Instant::now();
    while let Some(message) = responses.message().await? {
        if let Some(search_response::Message::Result(_)) = message.message {
            return Ok(speech_ended.elapsed());
        }
    }
    anyhow::bail!("the stream ended without results")
}

/// The `q` quantile of sorted `values` by the nearest-rank method (0 when empty).
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&values, 0.5), 50.0);
        assert_eq!(nearest_rank(&values, 0.99), 99.0);
        assert_eq!(nearest_rank(&values, 1.0), 100.0);
        assert_eq!(nearest_rank(&values, 0.0), 1.0);
        assert_eq!(nearest_rank(&[-2.0, 3.0, 7.0], 0.5), 3.0, "negative overheads sort first");
        assert_eq!(nearest_rank(&[], 0.5), 0.0);
    }
}
