//! `vigil inspect`: the factory line client.

use crate::connect::SecureChannel;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_proto::vigil::v1::{Decision, InspectRequest, InspectResponse, Verdict};

/// Exit codes for the line's control software.
pub mod exit {
    /// Every part accepted.
    pub const ALL_ACCEPTED: u8 = 0;
    /// Usage error or the server could not be reached.
    pub const USAGE: u8 = 2;
    /// At least one part rejected.
    pub const REJECTED: u8 = 10;
    /// No part rejected, at least one needs a human.
    pub const HUMAN_REVIEW: u8 = 11;
    /// At least one image could not be inspected (bad image, server refused).
    pub const FAILED: u8 = 12;
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Image files (PNG, JPEG) or folders of them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Edge server address.
    #[arg(long, default_value = "http://127.0.0.1:8001", env = "VIGIL_SERVER")]
    pub server: String,
    /// Station id sent with each image.
    #[arg(long, default_value = "cli")]
    pub station: String,
    /// Model name (default: the server's inspection model).
    #[arg(long, default_value = "")]
    pub model: String,
    /// Images in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Print one JSON object per image and a summary object, for machines.
    #[arg(long)]
    pub json: bool,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=crate::bench::MAX_TIMEOUT_MS))]
    pub timeout_ms: u64,
}

/// One image's outcome, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defect_probability: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brightness: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contrast: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharpness: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_time_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_time_us: Option<u64>,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts over a run.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub images: usize,
    pub ok: usize,
    pub defect: usize,
    pub accept: usize,
    pub reject: usize,
    pub human_review: usize,
    pub failed: usize,
    pub mean_latency_ms: f64,
    pub elapsed_s: f64,
}

impl Summary {
    fn add(&mut self, o: &Outcome) {
        self.images += 1;
        self.mean_latency_ms += o.latency_ms;
        match o.verdict {
            Some("OK") => self.ok += 1,
            Some("DEFECT") => self.defect += 1,
            _ => {}
        }
        match o.decision {
            Some("ACCEPT") => self.accept += 1,
            Some("REJECT") => self.reject += 1,
            Some("HUMAN_REVIEW") => self.human_review += 1,
            _ => self.failed += 1,
        }
    }

    /// The exit code for the control software.
    pub fn exit_code(&self) -> u8 {
        if self.failed > 0 {
            exit::FAILED
        } else if self.reject > 0 {
            exit::REJECTED
        } else if self.human_review > 0 {
            exit::HUMAN_REVIEW
        } else {
            exit::ALL_ACCEPTED
        }
    }
}

pub fn verdict_name(v: i32) -> &'static str {
    match Verdict::try_from(v) {
        Ok(Verdict::Ok) => "OK",
        Ok(Verdict::Defect) => "DEFECT",
        _ => "UNSPECIFIED",
    }
}

pub fn decision_name(d: i32) -> &'static str {
    match Decision::try_from(d) {
        Ok(Decision::Accept) => "ACCEPT",
        Ok(Decision::Reject) => "REJECT",
        Ok(Decision::HumanReview) => "HUMAN_REVIEW",
        _ => "UNSPECIFIED",
    }
}

fn outcome(path: String, latency: Duration, result: Result<InspectResponse, tonic::Status>) -> Outcome {
    let latency_ms = latency.as_secs_f64() * 1e3;
    match result {
        Ok(r) => {
            let f = r.features.unwrap_or_default();
            Outcome {
                path,
                prediction_id: Some(r.prediction_id),
                defect_probability: Some(r.defect_probability),
                verdict: Some(verdict_name(r.verdict)),
                decision: Some(decision_name(r.decision)),
                model: Some(format!("{}@{}", r.model_name, r.model_version)),
                brightness: Some(f.brightness),
                contrast: Some(f.contrast),
                sharpness: Some(f.sharpness),
                queue_time_us: Some(r.queue_time_us),
                compute_time_us: Some(r.compute_time_us),
                latency_ms,
                error: None,
            }
        }
        Err(status) => Outcome {
            path,
            prediction_id: None,
            defect_probability: None,
            verdict: None,
            decision: None,
            model: None,
            brightness: None,
            contrast: None,
            sharpness: None,
            queue_time_us: None,
            compute_time_us: None,
            latency_ms,
            error: Some(format!("{:?}: {}", status.code(), status.message())),
        },
    }
}

fn human_line(o: &Outcome) -> String {
    match (&o.error, o.defect_probability) {
        (None, Some(p)) => format!(
            "{:<40} {:<7} p={:.3}  {:<12} {:>6.1} ms",
            o.path,
            o.verdict.unwrap_or("?"),
            p,
            o.decision.unwrap_or("?"),
            o.latency_ms
        ),
        (Some(e), _) => format!("{:<40} FAILED  {e}", o.path),
        _ => format!("{:<40} ?", o.path),
    }
}

/// Connects to the server with a clear error when it is not there.
pub async fn connect(server: &str) -> Result<InspectionClient<SecureChannel>> {
    let what = format!("the edge server at {server}; is vigil-edge running? (--server)");
    let channel = crate::connect::channel(server, &what).await?;
    Ok(InspectionClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

pub async fn run(args: InspectArgs) -> Result<u8> {
    let (files, any_folder) = crate::images::collect(&args.paths)?;
    if files.is_empty() {
        anyhow::bail!("no PNG or JPEG images found in the given paths");
    }
    let client = connect(&args.server).await?;
    let summary = inspect_files(client, &files, &args, any_folder).await?;
    Ok(summary.exit_code())
}

/// Inspects `files` with bounded concurrency, printing each outcome in file order.
pub async fn inspect_files(
    client: InspectionClient<SecureChannel>,
    files: &[PathBuf],
    args: &InspectArgs,
    progress: bool,
) -> Result<Summary> {
    let bar = if progress && !args.json {
        let bar = ProgressBar::with_draw_target(Some(files.len() as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut outcomes = futures::stream::iter(files.iter().enumerate())
        .map(|(i, path)| {
            let mut client = client.clone();
            let station = args.station.clone();
            let model = args.model.clone();
            async move {
                let shown = path.display().to_string();
                let t0 = Instant::now();
                let image = match tokio::fs::read(path).await {
                    Ok(b) => b,
                    Err(e) => {
                        return outcome(
                            shown,
                            t0.elapsed(),
                            Err(tonic::Status::invalid_argument(format!("cannot read file: {e}"))),
                        );
                    }
                };
                let mut request = tonic::Request::new(InspectRequest {
                    image,
                    station_id: station,
                    part_id: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                    capture_time: Some(prost_types::Timestamp::from(SystemTime::now())),
                    model_name: model,
                    model_version: String::new(),
                    request_id: i.to_string(),
                });
                request.set_timeout(timeout);
                let result = client.inspect(request).await.map(|r| r.into_inner());
                outcome(shown, t0.elapsed(), result)
            }
        })
        .buffered(args.concurrency.max(1));
    let mut summary = Summary::default();
    while let Some(o) = outcomes.next().await {
        summary.add(&o);
        if args.json {
            bar.suspend(|| println!("{}", serde_json::to_string(&o).unwrap_or_default()));
        } else {
            bar.suspend(|| println!("{}", human_line(&o)));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if summary.images > 0 {
        summary.mean_latency_ms /= summary.images as f64;
    }
    summary.elapsed_s = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::json!({ "summary": &summary }));
    } else {
        println!(
            "\n{} images in {:.2} s: {} OK, {} DEFECT | {} accept, {} reject, {} human review, {} failed | mean latency {:.1} ms",
            summary.images,
            summary.elapsed_s,
            summary.ok,
            summary.defect,
            summary.accept,
            summary.reject,
            summary.human_review,
            summary.failed,
            summary.mean_latency_ms
        );
    }
    Ok(summary)
}
