//! The loop closed on the phone line: vigil-edge inspects phones in partial automation (unsure
//! ones go to the inspectors' review queue, and the inspectors also check every third phone);
//! the lighting changes (dim and blurred images from the generator); the brightness drift alarm
//! fires and raises the edge's capture rate; the inspectors' decisions show the accuracy falling
//! and the accuracy alarm fires; the monitor fine-tunes the serving model by itself on the
//! captured, labelled images (exported with them and verified), registers the candidate, runs it
//! in shadow, where the inspectors' labels judge it better than the primary, and promotes it; the
//! accuracy alarm resolves. Every step is an audit event with its time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tonic::transport::Channel;
use vigil_proto::vigil::v1::inspection_client::InspectionClient;
use vigil_proto::vigil::v1::{Decision, InspectRequest, LabelEvent, Verdict};
use vigil_store::{MonitorStore, PredictionStore, RetrainJob, RolloutRow};

use crate::loops::{Follow, alarm_state, percent, send_labels};
use crate::recipes::project_path;
use crate::{Progress, Recipes, Stack};

pub const MODEL: &str = "scratch-detector";
/// The drift alarm that raises the capture rate.
pub const DRIFT_RULE: &str = "line-brightness";
/// The accuracy alarm that fine-tunes and rolls out.
pub const ACCURACY_RULE: &str = "line-accuracy";
/// The accuracy alarm's threshold, on the inspectors' labels of the primary's phones of the last
/// 10 seconds (a candidate in shadow does not resolve it). Those are
/// every review item and a third of the rest, so hard phones weigh more than on the line: version
/// 1 scores about 0.99 on them under the usual light and 0.63 under the dim one, the fine-tuned
/// version about 0.83 (`training/vigil_train/scratch_finetune.py` on 450 captured images).
pub const MIN_ACCURACY: f64 = 0.75;
/// The capture rate while the drift alarm fires (the edge's own is [`CAPTURE_RATE`]).
pub const RAISED_CAPTURE_RATE: f64 = 1.0;
pub const CAPTURE_RATE: f64 = 0.05;
/// Phones under the usual light before the lighting changes.
pub const NORMAL_PHONES: usize = 300;
/// The line's stations.
const STATIONS: usize = 8;
/// The line's pace: `BATCH` phones (then the inspectors' checks are sent) every `BATCH_EVERY`
/// at most, 100 phones a second.
const BATCH: usize = 25;
const BATCH_EVERY: Duration = Duration::from_millis(250);
/// The whole loop, from the first dim phone to the promotion, at most this long.
const DEADLINE: Duration = Duration::from_secs(300);

/// The line's phones: (the truth, `ok` or `defect`, PNG) under the usual light and dimmed.
#[derive(Debug, Clone)]
pub struct Phones {
    pub normal: Vec<(String, Vec<u8>)>,
    pub dimmed: Vec<(String, Vec<u8>)>,
}

/// Puts the shipped scratch detector into `repository` as version 1 and generates the line's
/// phones into `images`: `normal` of them under the usual light, `dimmed` after the change.
pub fn prepare(recipes: &Recipes, repository: &Path, images: &Path, normal: usize, dimmed: usize) -> Result<Phones> {
    let shipped = project_path(&format!("models/{MODEL}/1"))?;
    let dir = repository.join(MODEL).join("1");
    std::fs::create_dir_all(&dir)?;
    for file in ["model.onnx", "model.toml", "reference.json"] {
        std::fs::copy(shipped.join(file), dir.join(file)).with_context(|| format!("copying {file}"))?;
    }
    Ok(Phones {
        normal: recipes.images(normal, 31, "normal", &images.join("normal"))?,
        dimmed: recipes.images(dimmed, 32, "drifted", &images.join("dimmed"))?,
    })
}

/// The monitor's configuration for the loop: both alarms with their actions, and the
/// fine-tuning recipe reading the captured images from `captures` (labels of 400 new items at
/// least; a shadow step of at least 6 s and 700 phones, long enough for the inspectors' labels,
/// about half the phones, to outweigh agreement with version 1 and the score distribution).
pub fn monitor_config(recipes: &Recipes, workdir: &Path, captures: &str) -> String {
    format!(
        r#"
[[alerting.rules]]
name = "{DRIFT_RULE}"
metric = "drift.brightness.detected"
model = "{MODEL}"
window = "3s"
comparator = ">="
threshold = 1
for = "2s"
actions = ["capture"]
capture_rate = {RAISED_CAPTURE_RATE}

[[alerting.rules]]
name = "{ACCURACY_RULE}"
metric = "accuracy"
model = "{MODEL}"
variant = "primary"
window = "10s"
comparator = "<"
threshold = {MIN_ACCURACY}
actions = ["retrain", "rollout"]

[retraining]
poll = "200ms"
workdir = "{workdir}"
captures = "{captures}"

[retraining.models.{MODEL}]
recipe = ["{python}", "-m", "vigil_train.scratch_finetune"]
cwd = "{training}"
min_new_labels = 400
cooldown = "10m"
rollout = {{ shadow = "6s", steps = [100], step_duration = "1s", min_requests = 700 }}
"#,
        workdir = workdir.display(),
        python = recipes.python().display(),
        training = recipes.training().display(),
    )
}

/// The edge's `[capture]`: a sample of [`CAPTURE_RATE`] and every review item into `store`.
pub fn capture_config(store: &Path, spool: &Path) -> Result<vigil_capture::CaptureConfig> {
    Ok(toml::from_str(&format!(
        "enabled = true\nstore = \"{}\"\nspool = \"{}\"\nrate = {CAPTURE_RATE}\n",
        store.display(),
        spool.display()
    ))?)
}

/// What the loop did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub job: RetrainJob,
    pub rollout: RolloutRow,
    /// Right verdicts (right, all) of each version on the dimmed phones, against the truth.
    pub before: (u64, u64),
    pub after: (u64, u64),
    /// Phones the inspectors checked besides the review queue (every third the model decided).
    pub audited: usize,
    /// Seconds from the drift alarm firing to each step.
    pub timeline: Vec<(&'static str, f64)>,
}

/// The line at work: the line client and the inspectors at the review queue.
pub struct TheLine<'a, S> {
    line: Line<'a, S>,
    inspectors: Inspectors,
}

/// Registers version 1 and deploys it in partial automation, connects the line client and sets
/// the inspectors to work.
pub async fn start<S: PredictionStore + MonitorStore>(stack: &Stack<S>) -> Result<TheLine<'_, S>> {
    crate::rollouts::register_and_deploy(stack, MODEL, &["1"], "vigil_train.pipeline, seed 20240607", "partial")
        .await?;
    // The server follows the deployment within its poll interval.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let line = Line::connect(stack).await?;
    let inspectors = Inspectors::start(stack, line.truth.clone());
    Ok(TheLine { line, inspectors })
}

impl<S: PredictionStore + MonitorStore> TheLine<'_, S> {
    /// Usual light, then dimmed phones (cycling), until the fine-tuned candidate's rollout ends.
    pub async fn run(&mut self, phones: &Phones, progress: Progress<'_>) -> Result<Outcome> {
        self.line.run(phones, progress).await
    }

    /// Keeps the line running on dimmed phones until the accuracy alarm resolves (the new
    /// primary's labelled answers fill its window).
    pub async fn until_resolved(&mut self, phones: &Phones, progress: Progress<'_>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut sent = 0usize;
        while alarm_state(self.line.stack, ACCURACY_RULE, MODEL).await? == "firing" {
            if Instant::now() > deadline {
                bail!("{ACCURACY_RULE} still fires 90 s after the promotion");
            }
            let paced = tokio::time::sleep(BATCH_EVERY);
            for _ in 0..BATCH {
                let phone = &phones.dimmed[(sent + phones.dimmed.len() / 2) % phones.dimmed.len()];
                self.line.inspect(phone).await?;
                sent += 1;
            }
            paced.await;
            send_labels(self.line.stack, &mut self.line.pending).await?;
        }
        progress(&format!("{ACCURACY_RULE} resolved after {sent} more phones"));
        Ok(())
    }

    /// Stops the inspectors; how many phones they decided through the review queue.
    pub async fn stop(self) -> Result<usize> {
        self.inspectors.stop().await
    }
}

/// The line client: inspects phones one at a time from its stations, remembers each phone's
/// truth for the inspectors, and sends the inspectors' check of every third phone.
struct Line<'a, S> {
    stack: &'a Stack<S>,
    client: InspectionClient<Channel>,
    truth: Arc<Mutex<HashMap<String, String>>>,
    pending: Vec<LabelEvent>,
    sent: usize,
    audited: usize,
    /// Right verdicts per version (right, all).
    by_version: BTreeMap<String, (u64, u64)>,
}

impl<'a, S: PredictionStore + MonitorStore> Line<'a, S> {
    async fn connect(stack: &'a Stack<S>) -> Result<Self> {
        let client = InspectionClient::connect(format!("http://{}", stack.server.addr)).await?;
        Ok(Self {
            stack,
            client,
            truth: Default::default(),
            pending: Vec::new(),
            sent: 0,
            audited: 0,
            by_version: BTreeMap::new(),
        })
    }

    async fn inspect(&mut self, (truth, image): &(String, Vec<u8>)) -> Result<()> {
        let request = InspectRequest {
            image: image.clone(),
            station_id: format!("line-{}", self.sent % STATIONS),
            ..Default::default()
        };
        let answer = self.client.inspect(request).await.context("the line stopped")?.into_inner();
        self.sent += 1;
        let defect = answer.verdict == Verdict::Defect as i32;
        let counts = self.by_version.entry(answer.model_version.clone()).or_default();
        counts.0 += u64::from(defect == (truth == "defect"));
        counts.1 += 1;
        // A phone the model decided may still be among the inspectors' every third; one for a
        // person is theirs through the review queue.
        if answer.decision == Decision::HumanReview as i32 {
            self.truth.lock().unwrap().insert(answer.prediction_id, truth.clone());
        } else if self.sent.is_multiple_of(3) {
            self.audited += 1;
            self.pending.push(LabelEvent {
                prediction_id: answer.prediction_id,
                label: truth.clone(),
                source: "inspector".into(),
                ..Default::default()
            });
        }
        Ok(())
    }

    async fn run(&mut self, phones: &Phones, progress: Progress<'_>) -> Result<Outcome> {
        for phone in &phones.normal {
            self.inspect(phone).await?;
            if self.sent.is_multiple_of(BATCH) {
                send_labels(self.stack, &mut self.pending).await?;
            }
        }
        send_labels(self.stack, &mut self.pending).await?;
        progress(&format!(
            "{} phones under the usual light, right {:.1}%; the inspectors check every third and decide the unsure ones",
            self.sent,
            percent(self.by_version.get("1").copied().unwrap_or_default())
        ));
        progress("the lighting changes: the line camera's images are dim and blurred");
        self.by_version.clear();
        let deadline = Instant::now() + DEADLINE;
        let mut follow = Follow::new(MODEL);
        let mut accuracy_fired = false;
        let mut dimmed = 0usize;
        loop {
            let paced = tokio::time::sleep(BATCH_EVERY);
            for _ in 0..BATCH {
                self.inspect(&phones.dimmed[dimmed % phones.dimmed.len()]).await?;
                dimmed += 1;
            }
            paced.await;
            send_labels(self.stack, &mut self.pending).await?;
            if Instant::now() > deadline {
                bail!("the loop did not close within {DEADLINE:?}");
            }
            if !follow.started() && alarm_state(self.stack, DRIFT_RULE, MODEL).await? == "firing" {
                follow.start_clock("the drift alarm fires");
                progress(&format!("{DRIFT_RULE} fires after {dimmed} dim phones: the edge captures every image"));
            }
            if !accuracy_fired && alarm_state(self.stack, ACCURACY_RULE, MODEL).await? == "firing" {
                accuracy_fired = true;
                follow.mark("the accuracy alarm fires");
                progress(&format!("{ACCURACY_RULE} fires after {dimmed} dim phones"));
            }
            if let Some((job, rollout)) = follow.look(self.stack, progress).await? {
                let candidate = rollout.candidate_version.clone();
                let before = self.by_version.get("1").copied().unwrap_or_default();
                let after = self.by_version.get(&candidate).copied().unwrap_or_default();
                progress(&format!(
                    "version {candidate} {}{}; on the dim phones version 1 was right {:.1}%, version {candidate} {:.1}%",
                    rollout.state,
                    crate::anti_spam::failing(&rollout),
                    percent(before),
                    percent(after)
                ));
                return Ok(Outcome { job, rollout, before, after, audited: self.audited, timeline: follow.timeline });
            }
        }
    }
}

/// The inspectors at the review queue: claim the oldest unsure phone, look at it (the truth the
/// line remembered), decide it, until stopped.
struct Inspectors {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<usize>>,
}

impl Inspectors {
    fn start<S>(stack: &Stack<S>, truth: Arc<Mutex<HashMap<String, String>>>) -> Self {
        let url = format!("http://{}", stack.monitor_http);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut decided = 0usize;
            while !*stopped.borrow() {
                let reviewer = if decided.is_multiple_of(2) { "inspector-ana" } else { "inspector-ben" };
                let next: serde_json::Value = http
                    .post(format!("{url}/api/review/next"))
                    .json(&serde_json::json!({ "reviewer": reviewer, "model": MODEL }))
                    .send()
                    .await?
                    .json()
                    .await?;
                let Some(item) = next["item"].as_object() else {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stopped.changed() => {}
                    }
                    continue;
                };
                let id = item["prediction_id"].as_str().context("an item without an id")?.to_string();
                let Some(label) = truth.lock().unwrap().remove(&id) else {
                    bail!("review item {id} is no phone this line sent for review");
                };
                let answer = http
                    .post(format!("{url}/api/review/{id}"))
                    .json(&serde_json::json!({ "reviewer": reviewer, "label": label }))
                    .send()
                    .await?;
                if !answer.status().is_success() {
                    bail!("{reviewer}'s decision on {id} was refused: {}", answer.text().await?);
                }
                decided += 1;
            }
            Ok(decided)
        });
        Self { stop, task }
    }

    /// Stops them; how many phones they decided.
    async fn stop(self) -> Result<usize> {
        let _ = self.stop.send(true);
        self.task.await.context("the inspectors panicked")?
    }
}
