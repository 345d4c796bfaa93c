//! `vigil dataset export`: joins a model's logged inputs (the features each record carries) with
//! their ground-truth labels into a versioned dataset, verified first (schema, missing values,
//! duplicates, class balance, label consistency among several labellers): a dataset that fails
//! is refused with the reasons and nothing is written. A written dataset is `rows.csv` and
//! `manifest.json` in a directory named by the rows' content hash.

mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};
use vigil_proto::vigil::v1::{RecordStatus, Variant};
use vigil_store::{Backend, MAX_QUERY_ROWS, PredictionFilter, PredictionStore, PredictionSummary, ReviewStore};

pub use verify::{Check, Item, Limits};

#[derive(Args, Debug)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(Subcommand, Debug)]
enum DatasetCommand {
    /// Verifies and writes a model's logged inputs with their labels as a dataset.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// The prediction log: postgres://... or sqlite://...
    #[arg(long, env = "VIGIL_DATABASE_URL", default_value = "postgres://127.0.0.1/vigil")]
    database_url: String,
    #[arg(long)]
    model: String,
    /// One version only (default: every version).
    #[arg(long)]
    version: Option<String>,
    /// From this time: RFC 3339 or an age (30m, 6h, 7d).
    #[arg(long, default_value = "7d")]
    since: String,
    /// Before this time (same forms; default: now).
    #[arg(long)]
    until: Option<String>,
    /// Only items with a ground-truth label.
    #[arg(long)]
    only_labelled: bool,
    /// Where the dataset's directory is written.
    #[arg(long, default_value = "datasets")]
    out: PathBuf,
    /// The most any input column may be missing (share of items).
    #[arg(long, default_value_t = Limits::default().max_missing_share)]
    max_missing_share: f64,
    /// The most items may repeat another's inputs exactly (share of items).
    #[arg(long, default_value_t = Limits::default().max_duplicate_share)]
    max_duplicate_share: f64,
    /// Every class's least share of the labelled items.
    #[arg(long, default_value_t = Limits::default().min_class_share)]
    min_class_share: f64,
    /// The least Fleiss' kappa among items several people labelled.
    #[arg(long, default_value_t = Limits::default().min_kappa)]
    min_kappa: f64,
}

/// Exit code of a dataset refused by its checks.
pub const REFUSED: u8 = 1;

pub async fn run(args: DatasetArgs) -> Result<u8> {
    let DatasetCommand::Export(args) = args.command;
    let backend = Backend::connect(&args.database_url)
        .await
        .with_context(|| format!("--database-url {}", crate::query::redact(&args.database_url)))?;
    vigil_store::with_store!(backend, store => export(store, args).await)
}

async fn export<S: PredictionStore + ReviewStore>(store: S, args: ExportArgs) -> Result<u8> {
    let now = chrono::Utc::now();
    let since = crate::query::parse_time(&args.since, now).context("--since")?;
    let until =
        args.until.as_deref().map(|t| crate::query::parse_time(t, now)).transpose().context("--until")?.unwrap_or(now);
    // The answers that served (primary and canary; a shadow's copy of an item is not another
    // item), and only those that succeeded (a refused request has no inputs to learn from).
    let mut rows: Vec<PredictionSummary> = Vec::new();
    for variant in [Variant::Unspecified, Variant::Primary, Variant::Canary] {
        let mut filter = PredictionFilter {
            since: Some(since),
            until: Some(until),
            model_name: Some(args.model.clone()),
            model_version: args.version.clone(),
            variant: Some(variant as i16),
            has_label: args.only_labelled.then_some(true),
            limit: MAX_QUERY_ROWS,
            ..Default::default()
        };
        loop {
            let page = store.query_predictions(&filter).await.context("reading the prediction log")?;
            let Some(last) = page.last() else { break };
            filter.after = Some(last.prediction_id);
            rows.extend(page.into_iter().filter(|r| r.status == RecordStatus::Ok as i16));
        }
    }
    rows.sort_by_key(|r| r.prediction_id);
    if rows.is_empty() {
        eprintln!("vigil: no predictions of {} in that range", args.model);
        return Ok(REFUSED);
    }
    // Columns: every feature any record logged, in name order; numbers only (others missing).
    let columns: Vec<String> = rows
        .iter()
        .filter_map(|r| r.features.as_object())
        .flat_map(|f| f.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let items: Vec<Item> = rows
        .iter()
        .map(|r| Item {
            values: columns.iter().map(|c| r.features.get(c).and_then(serde_json::Value::as_f64)).collect(),
            label: r.label.clone(),
        })
        .collect();
    // The panels of the exported items only (decisions may come after the range).
    let exported: BTreeSet<uuid::Uuid> = rows.iter().map(|r| r.prediction_id).collect();
    let mut panels: BTreeMap<uuid::Uuid, Vec<String>> = BTreeMap::new();
    for d in store.reviewer_decisions(&args.model, since, now).await.context("reading review decisions")? {
        if exported.contains(&d.prediction_id) {
            panels.entry(d.prediction_id).or_default().push(d.decision);
        }
    }
    let panels: Vec<Vec<String>> = panels.into_values().filter(|answers| answers.len() >= 2).collect();
    let limits = Limits {
        max_missing_share: args.max_missing_share,
        max_duplicate_share: args.max_duplicate_share,
        min_class_share: args.min_class_share,
        min_kappa: args.min_kappa,
    };
    let checks = verify::verify(&columns, &items, &panels, &limits);
    for c in &checks {
        println!("{:<18} {}  {}", c.name, if c.passed { "ok    " } else { "FAILED" }, c.detail);
    }
    let failed: Vec<&str> = checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
    if !failed.is_empty() {
        eprintln!("vigil: dataset refused ({}); nothing written", failed.join(", "));
        return Ok(REFUSED);
    }
    let dir = write(&args.out, &args.model, &columns, &rows, &checks, (since, until))?;
    println!(
        "{} items ({} labelled) written to {}",
        rows.len(),
        items.iter().filter(|i| i.label.is_some()).count(),
        dir.display()
    );
    Ok(0)
}

/// Writes `rows.csv` and `manifest.json` into `out/<model>-<first 16 hex of the rows' sha256>`.
fn write(
    out: &Path,
    model: &str,
    columns: &[String],
    rows: &[PredictionSummary],
    checks: &[Check],
    (since, until): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
) -> Result<PathBuf> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["prediction_id".to_string(), "time".into(), "model_version".into()];
    header.extend(columns.iter().cloned());
    header.push("label".into());
    csv.write_record(&header)?;
    for r in rows {
        let mut record = vec![r.prediction_id.to_string(), r.time.to_rfc3339(), r.model_version.clone()];
        record.extend(
            columns.iter().map(|c| {
                r.features.get(c).and_then(serde_json::Value::as_f64).map_or(String::new(), |v| v.to_string())
            }),
        );
        record.push(r.label.clone().unwrap_or_default());
        csv.write_record(&record)?;
    }
    let bytes = csv.into_inner().context("writing rows.csv")?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let dir = out.join(format!("{model}-{}", &sha256[..16]));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("rows.csv"), &bytes)?;
    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for label in rows.iter().filter_map(|r| r.label.as_deref()) {
        *classes.entry(label).or_default() += 1;
    }
    let versions: BTreeSet<&str> = rows.iter().map(|r| r.model_version.as_str()).collect();
    let manifest = serde_json::json!({
        "dataset_id": &sha256[..16], "model": model, "versions": versions, "since": since.to_rfc3339(),
        "until": until.to_rfc3339(), "created_at": chrono::Utc::now().to_rfc3339(), "rows": rows.len(),
        "labelled": classes.values().sum::<usize>(), "classes": classes, "columns": columns,
        "files": { "rows.csv": { "sha256": sha256, "bytes": bytes.len() } }, "checks": checks,
        "source": "vigil dataset export: logged inputs joined with their latest labels",
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(dir)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
