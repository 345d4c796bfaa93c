//! `vigil demo NAME`: the seed's examples played out on this machine in a few seconds each, with
//! models trained by the project's recipes, vigil-cloud, the logger's pipeline and the monitor
//! in this process, over SQLite in a temporary directory (or `--database-url`).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use vigil_scenarios::recipes::Patients;
use vigil_scenarios::{
    Recipes, ServerKind, Stack, StackOptions, anti_spam, line_loop, phone_line, pipeline, retraining, screening,
};
use vigil_store::{MonitorStore, PgStore, PredictionStore, SqliteStore};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Which example to run.
    #[arg(value_enum)]
    name: DemoName,
    /// The database to use (postgres://... or sqlite://...); default: SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Where the monitor's dashboard and review page listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    monitor_listen: SocketAddr,
    /// After the run, keep everything up (the dashboard shows the run) until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum DemoName {
    /// The next scratch-detector version from shadow beside the inspectors to the whole line; a bad one rolled back.
    PhoneLine,
    /// A retrained spam filter rolled out from 1% of users to all; one that flags everything rolled back by itself.
    AntiSpam,
    /// Symptom screening in partial automation: hard cases decided by a panel of three doctors.
    Screening,
    /// A user-profile model feeding a recommender; a lost clickstream fires an alarm on each stage.
    Recommender,
    /// The loop closed: the patients change, the accuracy alarm retrains the screening model by
    /// itself, and the candidate goes from shadow to everyone.
    Loop,
    /// The loop closed on the phone line: the light dims, the edge captures the images, the
    /// inspectors' decisions fire the accuracy alarm, and the scratch detector fine-tuned on the
    /// captured images goes from shadow to every station.
    LineLoop,
}

/// Exit code when the example did not end as it should.
pub const UNEXPECTED_OUTCOME: u8 = 1;

pub async fn run(args: DemoArgs) -> Result<u8> {
    let dir = tempfile::tempdir().context("creating a working directory")?;
    let repository = dir.path().join("models");
    let recipes = || {
        println!("training the models (training/: scikit-learn, exported by skl2onnx) ...");
        Recipes::locate()
    };
    let prepared = match args.name {
        DemoName::PhoneLine => Prepared::PhoneLine(phone_line::prepare(&repository)?),
        DemoName::AntiSpam => Prepared::AntiSpam(anti_spam::prepare(&recipes()?, &repository)?),
        DemoName::Screening => Prepared::Screening(screening::prepare(&recipes()?, &repository, 240)?),
        DemoName::Recommender => Prepared::Recommender(pipeline::prepare(&recipes()?, &repository, 300)?),
        DemoName::Loop => {
            let recipes = recipes()?;
            recipes.screening(&repository, 1, 10)?;
            Prepared::Loop {
                normal: recipes.patients(300, 101, "normal")?,
                shifted: recipes.patients(6000, 102, "shifted")?,
                config: retraining::monitor_config(&recipes, &dir.path().join("retraining")),
            }
        }
        DemoName::LineLoop => {
            let recipes = recipes()?;
            println!("generating the line's phones (training/vigil_data) ...");
            let phones = line_loop::prepare(&recipes, &repository, &dir.path().join("phones"), 300, 2000)?;
            let captures = dir.path().join("captures");
            Prepared::LineLoop {
                phones,
                config: line_loop::monitor_config(
                    &recipes,
                    &dir.path().join("retraining"),
                    &format!("file://{}", captures.display()),
                ),
                capture: line_loop::capture_config(&captures, &dir.path().join("capture-spool"))?,
            }
        }
    };
    match &args.database_url {
        Some(url) if url.starts_with("postgres") => {
            let store = PgStore::connect_lazy(url, 8)
                .with_context(|| format!("--database-url {}", vigil_store::redact_url(url)))?;
            play(store, url.clone(), &repository, &args, prepared).await
        }
        Some(url) => {
            let store = SqliteStore::connect(url)
                .await
                .with_context(|| format!("--database-url {}", vigil_store::redact_url(url)))?;
            play(store, url.clone(), &repository, &args, prepared).await
        }
        None => {
            let path = dir.path().join("vigil.db");
            let store = SqliteStore::open(&path).await.context("creating the demo's SQLite database")?;
            play(store, format!("sqlite://{}", path.display()), &repository, &args, prepared).await
        }
    }
}

enum Prepared {
    PhoneLine(Vec<(String, Vec<u8>)>),
    AntiSpam(vigil_scenarios::recipes::SpamCheck),
    Screening(vigil_scenarios::recipes::ScreeningCheck),
    Recommender(vigil_scenarios::recipes::PipelineCheck),
    Loop { normal: Patients, shifted: Patients, config: String },
    LineLoop { phones: line_loop::Phones, config: String, capture: vigil_capture::CaptureConfig },
}

async fn play<S: PredictionStore + MonitorStore>(
    store: S,
    url: String,
    repository: &Path,
    args: &DemoArgs,
    prepared: Prepared,
) -> Result<u8> {
    let mut options = StackOptions::new(url, repository);
    options.monitor_http = args.monitor_listen;
    let on_the_line = matches!(prepared, Prepared::PhoneLine(_) | Prepared::LineLoop { .. });
    if on_the_line {
        options.server = ServerKind::Edge;
    }
    match &prepared {
        Prepared::AntiSpam(_) => options.rollouts = anti_spam::ROLLOUTS.into(),
        Prepared::PhoneLine(_) => options.rollouts = phone_line::ROLLOUTS.into(),
        Prepared::Loop { config, .. } => options.monitor_config = config.clone(),
        Prepared::LineLoop { config, capture, .. } => {
            options.monitor_config = config.clone();
            options.capture = Some(capture.clone());
        }
        _ => {}
    }
    let stack = Stack::start(store, options).await?;
    let dashboard = format!("http://{}", stack.monitor_http);
    let server = if on_the_line { "vigil-edge" } else { "vigil-cloud" };
    println!("{server} on {}, dashboard on {dashboard}/", stack.server.addr);
    let say = |line: &str| println!("{line}");
    let (expected, model) = match prepared {
        Prepared::PhoneLine(phones) => {
            let outcome = phone_line::run(&stack, &phones, &say).await?;
            println!(
                "outcome: version 2 {} (shadow, half the stations, all); version 3 {} in its shadow step",
                outcome.next.rollout.state, outcome.bad.rollout.state
            );
            (outcome.as_expected(), phone_line::MODEL)
        }
        Prepared::AntiSpam(posts) => {
            let outcome = anti_spam::run(&stack, &posts.texts, &say).await?;
            println!(
                "outcome: version 2 {} through {} steps; version 3 {} at 1% of users",
                outcome.retrained.rollout.state,
                outcome.retrained.rollout.decisions().len(),
                outcome.flags_everything.rollout.state
            );
            (outcome.as_expected(), anti_spam::MODEL)
        }
        Prepared::Screening(patients) => {
            let served = screening::serve_patients(&stack, &patients, &say).await?;
            screening::doctors_decide(&stack, &patients, &served, &say).await?;
            let report = screening::report(&stack, patients.patients.len()).await?;
            let panel = &report["review"]["panel"];
            println!(
                "outcome: automation rate {:.1}%; doctors agree on {:.1}% of pairs (Fleiss' kappa {:.2})",
                served.automation_rate() * 100.0,
                panel["pairwise_agreement"].as_f64().unwrap_or(f64::NAN) * 100.0,
                panel["fleiss_kappa"].as_f64().unwrap_or(f64::NAN)
            );
            for r in panel["reviewers"].as_array().into_iter().flatten() {
                println!(
                    "  {:<9} {} decisions, agrees with the model {:.1}%, with the panel {:.1}%",
                    r["reviewer"].as_str().unwrap_or(""),
                    r["decisions"],
                    r["with_model"].as_f64().unwrap_or(f64::NAN) * 100.0,
                    r["with_panel"].as_f64().unwrap_or(f64::NAN) * 100.0
                );
            }
            let decided = panel["items"].as_u64() == Some(served.hard().len() as u64);
            (decided && served.automation_rate() > 0.5, screening::MODEL)
        }
        Prepared::Recommender(users) => {
            let outcome = pipeline::run(&stack, &users, &say).await?;
            let [before, after] = pipeline::judge(&stack, &outcome).await?;
            let show = |state: &Option<(String, Option<f64>)>| match state {
                Some((state, Some(value))) => format!("{state} ({value:.3})"),
                Some((state, None)) => state.clone(),
                None => "quiet".into(),
            };
            println!(
                "outcome: before the redesign unknown-fraction {}, click-through {}",
                show(&before.0),
                show(&before.1)
            );
            println!(
                "         after it           unknown-fraction {}, click-through {}",
                show(&after.0),
                show(&after.1)
            );
            let firing = |s: &Option<(String, Option<f64>)>| s.as_ref().is_some_and(|s| s.0 == "firing");
            (!firing(&before.0) && !firing(&before.1) && firing(&after.0) && firing(&after.1), "profile")
        }
        Prepared::Loop { normal, shifted, .. } => {
            let outcome = retraining::run(&stack, &normal, &shifted, &say).await?;
            if outcome.rollout.state == "promoted" {
                retraining::until_resolved(&stack, &shifted, &say).await?;
            }
            let steps: Vec<String> = outcome.timeline.iter().map(|(what, s)| format!("{what} +{s:.1}s")).collect();
            println!("outcome: after the alarm fired: {}", steps.join(", "));
            println!("         job {}: {}", outcome.job.job_id, outcome.job.step);
            let rate = |(right, all): (u64, u64)| right as f64 / all.max(1) as f64;
            (outcome.rollout.state == "promoted" && rate(outcome.after) > rate(outcome.before), retraining::MODEL)
        }
        Prepared::LineLoop { phones, .. } => {
            let mut line = line_loop::start(&stack).await?;
            let outcome = line.run(&phones, &say).await;
            let resolved = match &outcome {
                Ok(o) if o.rollout.state == "promoted" => line.until_resolved(&phones, &say).await,
                _ => Ok(()),
            };
            let reviewed = line.stop().await?;
            let outcome = outcome?;
            resolved?;
            let steps: Vec<String> = outcome.timeline.iter().map(|(what, s)| format!("{what} +{s:.1}s")).collect();
            println!("outcome: after the drift alarm fired: {}", steps.join(", "));
            println!("         job {}: {}", outcome.job.job_id, outcome.job.step);
            println!(
                "         the inspectors decided {reviewed} phones in the review queue and checked {}",
                outcome.audited
            );
            let rate = |(right, all): (u64, u64)| right as f64 / all.max(1) as f64;
            (outcome.rollout.state == "promoted" && rate(outcome.after) > rate(outcome.before), line_loop::MODEL)
        }
    };
    println!("dashboard: {dashboard}/?model={model}");
    if args.keep_running {
        println!("running until Ctrl-C");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    }
    stack.shutdown().await?;
    if expected {
        println!("as expected");
        Ok(0)
    } else {
        eprintln!("vigil: the example did not end as it should (see above)");
        Ok(UNEXPECTED_OUTCOME)
    }
}
