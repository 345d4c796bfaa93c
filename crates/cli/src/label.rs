//! `vigil label`: ground truth for predictions, sent as `LabelEvent`s to `vigil.labels.v1`,
//! one at a time or in bulk from a CSV file; the logger joins them to predictions by id.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;
use vigil_logbus::topics;
use vigil_proto::vigil::v1::LabelEvent;

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// Prediction id (UUID) to label.
    #[arg(required_unless_present = "csv", requires = "label")]
    pub prediction_id: Option<String>,
    /// The true label, e.g. `defect` or `ok`.
    pub label: Option<String>,
    /// Bulk import: a CSV file with a header and columns prediction_id,label[,source].
    #[arg(long, conflicts_with = "prediction_id")]
    pub csv: Option<PathBuf>,
    /// Who labelled (an inspector's id).
    #[arg(long, default_value = "cli")]
    pub source: String,
    #[command(flatten)]
    pub kafka: crate::kafka::KafkaConnectArgs,
    /// Submit to the monitor's SubmitLabels API instead of the label topic: every label is
    /// checked (known prediction, one of the model's labels) and answered at once.
    #[arg(long)]
    pub monitor: Option<String>,
}

/// Exit code when the monitor rejected some labels.
pub const SOME_REJECTED: u8 = 1;

async fn submit_to_monitor(url: &str, labels: &[Label]) -> Result<u8> {
    use vigil_proto::vigil::v1::SubmitLabelsRequest;
    use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
    let what = format!("the monitor at {url}; is vigil-monitor running?");
    let mut client = MonitoringClient::new(crate::connect::channel(url, &what).await?);
    let now = SystemTime::now();
    let events: Vec<LabelEvent> = labels
        .iter()
        .map(|l| LabelEvent {
            schema_version: 1,
            label_id: String::new(),
            prediction_id: l.prediction_id.to_string(),
            label: l.label.clone(),
            time: Some(now.into()),
            source: l.source.clone(),
        })
        .collect();
    let r = client
        .submit_labels(SubmitLabelsRequest { labels: events })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .into_inner();
    println!("{} accepted, {} duplicates, {} rejected", r.accepted, r.duplicates, r.rejected.len());
    for x in &r.rejected {
        eprintln!("  #{} {}: {}", x.index + 1, x.prediction_id, x.reason);
    }
    Ok(if r.rejected.is_empty() { 0 } else { SOME_REJECTED })
}

/// One checked label.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub prediction_id: Uuid,
    pub label: String,
    pub source: String,
}

fn check(prediction_id: &str, label: &str, source: &str, at: &str) -> Result<Label> {
    let id = Uuid::parse_str(prediction_id.trim())
        .with_context(|| format!("{at}: prediction id '{prediction_id}' is not a UUID"))?;
    let label = label.trim();
    if label.is_empty() {
        bail!("{at}: the label is empty");
    }
    if source.len() > vigil_store::rows::MAX_ID_BYTES || source.contains('\0') {
        bail!("{at}: the source must be at most {} bytes, without NUL characters", vigil_store::rows::MAX_ID_BYTES);
    }
    Ok(Label { prediction_id: id, label: label.to_string(), source: source.to_string() })
}

/// Reads `prediction_id,label[,source]` rows after a header; every bad row is reported by line.
pub fn read_csv(text: &str, default_source: &str) -> Result<Vec<Label>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else { bail!("the CSV file is empty") };
    let columns: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    if columns.first().map(String::as_str) != Some("prediction_id")
        || columns.get(1).map(String::as_str) != Some("label")
    {
        bail!("the CSV header must start with prediction_id,label (found '{header}')");
    }
    let mut errors = Vec::new();
    let mut labels = Vec::new();
    for (index, line) in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let at = format!("line {}", index + 1);
        if fields.len() < 2 || fields.len() > 3 {
            errors.push(format!("{at}: expected 2 or 3 fields, found {}", fields.len()));
            continue;
        }
        let source = fields.get(2).map(|s| s.trim()).filter(|s| !s.is_empty()).unwrap_or(default_source);
        match check(fields[0], fields[1], source, &at) {
            Ok(l) => labels.push(l),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        bail!("{} bad rows, nothing sent: {}", errors.len(), errors.join("; "));
    }
    Ok(labels)
}

pub async fn run(args: LabelArgs) -> Result<u8> {
    let labels = match (&args.csv, &args.prediction_id, &args.label) {
        (Some(path), _, _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            read_csv(&text, &args.source)?
        }
        (None, Some(id), Some(label)) => vec![check(id, label, &args.source, "argument")?],
        _ => bail!("give PREDICTION_ID LABEL, or --csv FILE"),
    };
    if let Some(url) = &args.monitor {
        return submit_to_monitor(url, &labels).await;
    }
    let config = args.kafka.config("vigil-label")?;
    let producer: FutureProducer = config.producer().context("cannot create the Kafka producer")?;
    let now = SystemTime::now();
    let sends = labels.iter().map(|l| {
        let event = LabelEvent {
            schema_version: 1,
            label_id: Uuid::now_v7().to_string(),
            prediction_id: l.prediction_id.to_string(),
            label: l.label.clone(),
            time: Some(now.into()),
            source: l.source.clone(),
        };
        let producer = producer.clone();
        let brokers = &config.brokers;
        async move {
            let payload = event.encode_to_vec();
            let key = event.prediction_id.clone();
            producer
                .send(FutureRecord::to(topics::LABELS).key(&key).payload(&payload), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| anyhow::anyhow!("label for {key} not sent: {e}; is the broker at {brokers} up?"))
        }
    });
    let results = futures::future::join_all(sends).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        bail!("{failed} of {} labels not sent (first: {e})", labels.len());
    }
    println!("{} label(s) sent to {}", labels.len(), topics::LABELS);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_csv_and_names_bad_rows() {
        let id = Uuid::now_v7();
        let ok = format!("prediction_id,label,source\n{id},defect,anna\n{id},ok\n");
        let labels = read_csv(&ok, "cli").unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!((labels[0].label.as_str(), labels[0].source.as_str()), ("defect", "anna"));
        assert_eq!(labels[1].source, "cli");
        let bad = format!("prediction_id,label\n{id},defect\nnot-a-uuid,ok\n{id},\n");
        let e = read_csv(&bad, "cli").unwrap_err().to_string();
        assert!(e.contains("2 bad rows") && e.contains("line 3") && e.contains("line 4: the label is empty"), "{e}");
        assert!(read_csv("id,label\n", "cli").unwrap_err().to_string().contains("header must start"));
        let long = format!("prediction_id,label,source\n{id},ok,{}\n", "s".repeat(257));
        assert!(
            read_csv(&long, "cli").unwrap_err().to_string().contains("line 2: the source must be at most 256 bytes")
        );
    }
}
