//! `vigil model`: the model registry. Register a version from its directory (the artifact's
//! sha256, the metrics and training data of its model card), list and show versions, promote
//! one through candidate -> staging -> production (the production version before it is
//! archived) or archive it; `vigil audit` lists who changed what, when and why.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use vigil_store::registry::Registered;
use vigil_store::{Change, ModelVersionRow, PredictionStore, RegistryStore, Stage};

#[derive(Args, Debug)]
pub struct ModelArgs {
    #[command(flatten)]
    pub database: crate::database::DatabaseArg,
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Register the version in DIR (<repository>/<model>/<version>, holding model.onnx and, when
    /// there, the model card's metrics.json).
    Register {
        dir: PathBuf,
        /// Who registers it (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// What it was trained on (default: from metrics.json, when it says).
        #[arg(long)]
        training_data: Option<String>,
        /// The stage it enters: candidate or staging.
        #[arg(long, default_value = "candidate")]
        stage: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Every registered version (of one model).
    List { model: Option<String> },
    /// One version, with its metrics.
    Show { model: String, version: String },
    /// Moves a version to a stage (production archives the production version before it).
    Promote {
        model: String,
        version: String,
        /// staging, production or archived.
        #[arg(long, default_value = "production")]
        to: String,
        /// Who promotes it (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub database: crate::database::DatabaseArg,
    /// Most events shown, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
}

/// `vigil audit`: the latest changes to the registry, newest first.
pub async fn audit(args: AuditArgs) -> Result<u8> {
    let backend = args.database.connect().await?;
    let events = vigil_store::with_store!(backend, store => {
        store.migrate().await.context("preparing the audit table")?;
        store.audit_events(args.limit).await?
    });
    println!("{:<20} {:<12} {:<9} {:<28} {:<23} reason", "time", "actor", "action", "subject", "from -> to");
    for e in events {
        let states = format!("{} -> {}", if e.from_state.is_empty() { "-" } else { &e.from_state }, e.to_state);
        println!(
            "{:<20} {:<12} {:<9} {:<28} {:<23} {}",
            e.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.actor,
            e.action,
            e.subject,
            states,
            e.reason
        );
    }
    Ok(0)
}

pub(crate) fn whoami(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into())
}

pub async fn run(args: ModelArgs) -> Result<u8> {
    let backend = args.database.connect().await?;
    vigil_store::with_store!(backend, store => command(store, args.command).await)
}

async fn command<S: PredictionStore + RegistryStore>(store: S, command: ModelCommand) -> Result<u8> {
    store.migrate().await.context("preparing the registry tables")?;
    match command {
        ModelCommand::Register { dir, by, training_data, stage, reason } => {
            let stage: Stage = stage.parse().map_err(anyhow::Error::msg)?;
            if !matches!(stage, Stage::Candidate | Stage::Staging) {
                bail!("--stage {stage}: a version enters as candidate or staging; promote it afterwards");
            }
            let row = describe(&dir, by, training_data, stage)?;
            let (name, version, digest) = (row.model_name.clone(), row.version.clone(), row.artifact_sha256.clone());
            match store.register_version(&row, &reason).await? {
                Registered::New => println!("registered {name} version {version} as {stage} (sha256 {digest})"),
                Registered::Already => println!("{name} version {version} is already registered with this artifact"),
            }
        }
        ModelCommand::List { model } => {
            let rows = store.model_versions(model.as_deref()).await?;
            println!("{:<24} {:<8} {:<11} {:<14} {:<12} registered at", "model", "version", "stage", "sha256", "by");
            for r in &rows {
                println!(
                    "{:<24} {:<8} {:<11} {:<14} {:<12} {}",
                    r.model_name,
                    r.version,
                    r.stage,
                    &r.artifact_sha256[..12.min(r.artifact_sha256.len())],
                    r.registered_by,
                    r.registered_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
        }
        ModelCommand::Show { model, version } => {
            let Some(r) = store.model_version(&model, &version).await? else {
                bail!("{model} version {version} is not registered (see `vigil model list`)");
            };
            println!("model:          {}", r.model_name);
            println!("version:        {}", r.version);
            println!("stage:          {} (since {})", r.stage, r.stage_changed_at.to_rfc3339());
            println!("sha256:         {}", r.artifact_sha256);
            println!("artifact:       {}", r.artifact_uri);
            println!("training data:  {}", r.training_data);
            println!("registered:     by {} at {}", r.registered_by, r.registered_at.to_rfc3339());
            println!("metrics:        {}", serde_json::to_string_pretty(&r.metrics)?);
        }
        ModelCommand::Promote { model, version, to, by, reason } => {
            let stage: Stage = to.parse().map_err(anyhow::Error::msg)?;
            let before = store.model_version(&model, &version).await?.map(|r| r.stage);
            let actor = whoami(by);
            let change = Change { actor: &actor, reason: &reason, at: chrono::Utc::now() };
            let archived = store.set_stage(&model, &version, stage, &change).await?;
            let before = before.unwrap_or_default();
            let archived =
                if archived.is_empty() { String::new() } else { format!("; archived version {}", archived.join(", ")) };
            println!("{model} version {version}: {before} -> {stage}{archived}");
        }
    }
    Ok(0)
}

/// The registry row of the version in `dir`.
fn describe(dir: &Path, by: Option<String>, training_data: Option<String>, stage: Stage) -> Result<ModelVersionRow> {
    let dir = dir.canonicalize().with_context(|| format!("{} is not a model version directory", dir.display()))?;
    let name_of = |p: Option<&Path>| p.and_then(Path::file_name).and_then(|n| n.to_str()).map(str::to_string);
    let (Some(version), Some(model_name)) = (name_of(Some(&dir)), name_of(dir.parent())) else {
        bail!("{}: expected <repository>/<model>/<version>", dir.display());
    };
    let artifact = dir.join("model.onnx");
    let artifact_sha256 = vigil_store::registry::sha256_file(&artifact)
        .with_context(|| format!("cannot read {} (is this a model version?)", artifact.display()))?;
    let card = dir.join("metrics.json");
    let card: Option<serde_json::Value> = match std::fs::read(&card) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", card.display()))?),
        Err(_) => None,
    };
    // The evaluation sections of the model card, when it has them; else the whole card.
    let metrics = card.as_ref().map_or(serde_json::json!({}), |c| {
        let picked: serde_json::Map<String, serde_json::Value> = ["results", "acceptance", "thresholds"]
            .iter()
            .filter_map(|k| c.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        if picked.is_empty() { c.clone() } else { serde_json::Value::Object(picked) }
    });
    let training_data = training_data
        .or_else(|| card.as_ref()?.get("training_data")?.as_str().map(str::to_string))
        .or_else(|| {
            let card = card.as_ref()?;
            let seed = card.get("seeds")?.get("train")?;
            let images =
                card.get("data").and_then(|d| d.get("train")).map_or(String::new(), |n| format!(", {n} images"));
            Some(format!("training generator, seed {seed}{images}"))
        })
        .unwrap_or_default();
    let now = chrono::Utc::now();
    Ok(ModelVersionRow {
        model_name,
        version,
        artifact_sha256,
        artifact_uri: artifact.display().to_string(),
        training_data,
        metrics,
        stage: stage.as_str().into(),
        registered_by: whoami(by),
        registered_at: now,
        stage_changed_at: now,
    })
}
