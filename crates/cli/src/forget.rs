//! `vigil forget`: deletes everything the prediction log holds about one station, device or
//! part (its predictions with their labels, feedback and review items) in one transaction, with
//! an audit entry, and lists the subject's captured inputs to delete from the capture store.

use anyhow::{Context, Result, bail};
use clap::Args;
use vigil_store::{Backend, Change, RetentionStore, Subject};

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// The prediction log: postgres://... or sqlite://...
    #[arg(long, env = "VIGIL_DATABASE_URL", hide_env_values = true, default_value = "postgres://127.0.0.1/vigil")]
    pub database_url: String,
    /// Every record of this station.
    #[arg(long, group = "subject")]
    pub station_id: Option<String>,
    /// Every record of this device.
    #[arg(long, group = "subject")]
    pub device_id: Option<String>,
    /// Every record of this part.
    #[arg(long, group = "subject")]
    pub part_id: Option<String>,
    /// Who asks (default: $USER).
    #[arg(long)]
    pub by: Option<String>,
    /// Why (a request's reference), for the audit log.
    #[arg(long)]
    pub reason: String,
    /// The key file of `[logging.policy] identifier_key_file`: records logged with hashed
    /// identifiers are found by the id's keyed hash (and records logged plain by the id).
    #[arg(long)]
    pub identifier_key_file: Option<std::path::PathBuf>,
    /// The capture store (as `[capture] store`: file:///... or s3://bucket/prefix with the
    /// AWS_* variables): the subject's captured inputs are deleted there too.
    #[arg(long)]
    pub capture_store: Option<String>,
}

pub async fn run(args: ForgetArgs) -> Result<u8> {
    let subject = match (args.station_id, args.device_id, args.part_id) {
        (Some(v), None, None) => Subject::Station(v),
        (None, Some(v), None) => Subject::Device(v),
        (None, None, Some(v)) => Subject::Part(v),
        _ => bail!("name the subject: one of --station-id, --device-id or --part-id"),
    };
    if matches!(&subject, Subject::Station(v) | Subject::Device(v) | Subject::Part(v) if v.trim().is_empty()) {
        bail!("the subject's id must not be empty");
    }
    if args.reason.trim().is_empty() {
        bail!("--reason is required: it goes into the audit log");
    }
    let backend = Backend::connect(&args.database_url)
        .await
        .with_context(|| format!("--database-url {}", crate::query::redact(&args.database_url)))?;
    let actor = crate::model::whoami(args.by);
    let change = Change { actor: &actor, reason: &args.reason, at: chrono::Utc::now() };
    let mut subjects = vec![subject.clone()];
    if let Some(file) = &args.identifier_key_file {
        let key = std::fs::read(file).with_context(|| format!("--identifier-key-file {}", file.display()))?;
        subjects.push(subject.map_id(|id| vigil_serving::log_policy::hashed_identifier(&key, id)));
    }
    let forgotten = vigil_store::with_store!(backend, store => {
        vigil_store::PredictionStore::migrate(&store).await.context("preparing the database")?;
        let mut forgotten = vigil_store::Forgotten::default();
        for subject in &subjects {
            let these = store.forget(subject, &change).await?;
            println!(
                "{}: deleted {} predictions, {} labels, {} feedback events, {} review items",
                subject.describe(),
                these.predictions,
                these.labels,
                these.feedback,
                these.review_items
            );
            forgotten.merge(these);
        }
        forgotten
    });
    if forgotten.captures.is_empty() {
        return Ok(0);
    }
    let Some(url) = args.capture_store else {
        println!("captured inputs to delete from the capture store (give --capture-store to delete them):");
        for captured in &forgotten.captures {
            let shared = if captured.shared { ", its bytes also named by other records: keep them" } else { "" };
            println!("  {} ({}{shared})", captured.key, captured.prediction_id);
        }
        return Ok(0);
    };
    let config = vigil_capture::CaptureConfig { store: url.clone(), ..Default::default() };
    let (store, prefix) = vigil_capture::open_store(&config).with_context(|| format!("--capture-store {url}"))?;
    let path = |rest: &str| rest.split('/').fold(prefix.clone(), |path, part| path.child(part));
    let mut deleted = 0;
    let mut kept = 0;
    // The rows are gone once this runs, so a second run would not find these keys again: every
    // one is tried, and those that failed are listed for a person.
    let mut failed = Vec::new();
    for captured in &forgotten.captures {
        let meta = format!("{}/predictions/{}.json", captured.model_name, captured.prediction_id);
        // Stored by content: bytes that other subjects' records name stay for them.
        let bytes = (!captured.shared).then_some(captured.key.as_str());
        kept += usize::from(captured.shared);
        for key in bytes.into_iter().chain([meta.as_str()]) {
            match store.delete(&path(key)).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => failed.push((key.to_string(), e)),
            }
        }
    }
    if !failed.is_empty() {
        for (key, e) in &failed {
            eprintln!("  not deleted: {key} ({e})");
        }
        bail!(
            "{} of the captured objects could not be deleted from {url} (listed above); the database rows are \
             deleted, so delete those objects by hand",
            failed.len()
        );
    }
    println!("deleted {deleted} objects of {} captured inputs from {url}", forgotten.captures.len());
    if kept > 0 {
        println!("kept the bytes of {kept} of them: other subjects' records name the same content");
    }
    Ok(0)
}
