//! `vigil metrics`, `vigil drift` and `vigil alerts`: the monitoring API (`vigil.v1.Monitoring`
//! on vigil-monitor) from the command line, as a table or JSON.

use crate::connect::SecureChannel;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::Args;
use vigil_monitor::api::timestamp as ts;
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_proto::vigil::v1::{GetDriftRequest, GetMetricsRequest, ListAlertsRequest, Scope};

/// Where the monitor is and which model to ask about.
#[derive(Args, Debug)]
pub struct Target {
    /// The monitor's gRPC address.
    #[arg(long, env = "VIGIL_MONITOR", default_value = "http://127.0.0.1:8003")]
    pub monitor: String,
    /// The model to report on.
    #[arg(long, default_value = "scratch-detector")]
    pub model: String,
    /// One version only (default: every version).
    #[arg(long, default_value = "")]
    pub version: String,
    /// How far back, e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub last: std::time::Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Window width in seconds (0: the monitor picks).
    #[arg(long, default_value_t = 0)]
    pub resolution: u32,
}

#[derive(Args, Debug)]
pub struct DriftArgs {
    #[command(flatten)]
    pub target: Target,
    /// Compare with this earlier window instead of the training reference: its length back
    /// from the start of the current window, e.g. 1d.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub baseline_last: Option<std::time::Duration>,
}

#[derive(Args, Debug)]
pub struct AlertsArgs {
    /// The monitor's gRPC address.
    #[arg(long, env = "VIGIL_MONITOR", default_value = "http://127.0.0.1:8003")]
    pub monitor: String,
    /// Include resolved alarms.
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

async fn client(url: &str) -> Result<MonitoringClient<SecureChannel>> {
    let what = format!("the monitor at {url}; is vigil-monitor running? (--monitor)");
    Ok(MonitoringClient::new(crate::connect::channel(url, &what).await?))
}

fn range(last: std::time::Duration) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let until = Utc::now();
    Ok((before(until, last, "--last")?, until))
}

/// `t` less `d`, or an error naming `flag` when that is before the earliest time there is.
fn before(t: DateTime<Utc>, d: std::time::Duration, flag: &str) -> Result<DateTime<Utc>> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .with_context(|| format!("{flag} is too long: give a shorter duration"))
}

fn scope(t: &Target) -> Option<Scope> {
    Some(Scope { model_name: t.model.clone(), model_version: t.version.clone(), variant: 0 })
}

fn time_of(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn num(v: f64) -> String {
    if v.is_finite() { format!("{v:.3}") } else { "-".into() }
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

pub async fn metrics(args: MetricsArgs) -> Result<u8> {
    let (since, until) = range(args.target.last)?;
    let r = client(&args.target.monitor)
        .await?
        .get_metrics(GetMetricsRequest {
            scope: scope(&args.target),
            since: Some(ts(since)),
            until: Some(ts(until)),
            resolution_seconds: args.resolution,
        })
        .await
        .map_err(status)?
        .into_inner();
    if args.target.json {
        let rows: Vec<serde_json::Value> = r
            .windows
            .iter()
            .map(|w| {
                serde_json::json!({
                    "start": time_of(&w.start), "count": w.count, "errors": w.errors, "nulls": w.nulls,
                    "throughput_rps": w.throughput_rps, "latency_p50_ms": w.latency_p50_ms,
                    "latency_p99_ms": w.latency_p99_ms, "verdicts": w.verdicts, "decisions": w.decisions,
                    "score_mean": w.score_mean,
                    "features": w.features.iter().map(|(k, f)| (k.clone(), serde_json::json!({
                        "count": f.count, "missing": f.missing, "mean": f.mean, "std": f.std }))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "resolution_seconds": r.resolution_seconds, "windows": rows }));
        return Ok(0);
    }
    println!("{} windows of {} s", r.windows.len(), r.resolution_seconds);
    println!(
        "{:<19} {:>7} {:>6} {:>6} {:>8} {:>8} {:>7}",
        "start", "count", "errors", "nulls", "p50 ms", "p99 ms", "defect"
    );
    for w in &r.windows {
        let defect = w.verdicts.get("defect").copied().unwrap_or(0);
        println!(
            "{:<19} {:>7} {:>6} {:>6} {:>8} {:>8} {:>7}",
            time_of(&w.start),
            w.count,
            w.errors,
            w.nulls,
            num(w.latency_p50_ms),
            num(w.latency_p99_ms),
            defect
        );
    }
    Ok(0)
}

pub async fn drift(args: DriftArgs) -> Result<u8> {
    let (since, until) = range(args.target.last)?;
    let baseline = match args.baseline_last {
        Some(d) => Some((before(since, d, "--baseline-last")?, since)),
        None => None,
    };
    let r = client(&args.target.monitor)
        .await?
        .get_drift(GetDriftRequest {
            scope: scope(&args.target),
            since: Some(ts(since)),
            until: Some(ts(until)),
            baseline_since: baseline.map(|b| ts(b.0)),
            baseline_until: baseline.map(|b| ts(b.1)),
        })
        .await
        .map_err(status)?
        .into_inner();
    let tests: Vec<_> = r.features.iter().chain(&r.prediction).collect();
    if args.target.json {
        let rows: Vec<serde_json::Value> = tests
            .iter()
            .map(|t| {
                serde_json::json!({ "feature": t.feature, "method": t.method, "statistic": t.statistic,
                    "p_value": t.p_value, "threshold": t.threshold, "drifted": t.drifted, "psi": t.psi,
                    "current_count": t.current_count })
            })
            .collect();
        let accuracy: Vec<serde_json::Value> = r
            .accuracy
            .iter()
            .map(|a| serde_json::json!({ "start": time_of(&a.start), "labeled": a.labeled, "accuracy": a.accuracy }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "baseline": r.baseline, "tests": rows, "dataset_drifted": r.dataset_drifted,
                "drifted_features": r.drifted_features, "total_features": r.total_features,
                "accuracy": accuracy, "label_coverage": r.label_coverage })
        );
        return Ok(0);
    }
    println!("against the {}", r.baseline);
    println!(
        "{:<12} {:<14} {:>10} {:>10} {:>9} {:>7}  drift",
        "feature", "method", "statistic", "p-value", "threshold", "psi"
    );
    for t in tests {
        println!(
            "{:<12} {:<14} {:>10} {:>10} {:>9} {:>7}  {}",
            t.feature,
            t.method,
            num(t.statistic),
            t.p_value.map(|p| format!("{p:.2e}")).unwrap_or_else(|| "-".into()),
            t.threshold,
            num(t.psi),
            if t.drifted { "DRIFT" } else { "no" }
        );
    }
    println!(
        "dataset drift: {} ({} of {} features)",
        if r.dataset_drifted { "yes" } else { "no" },
        r.drifted_features,
        r.total_features
    );
    let labeled: u64 = r.accuracy.iter().map(|a| a.labeled).sum();
    if labeled > 0 {
        let correct: f64 = r.accuracy.iter().map(|a| a.accuracy * a.labeled as f64).sum();
        println!(
            "accuracy {:.3} on {labeled} labeled predictions (label coverage {:.1}%)",
            correct / labeled as f64,
            r.label_coverage * 100.0
        );
    }
    Ok(0)
}

/// Exit code when alarms are firing, so scripts can act on it.
pub const FIRING: u8 = 1;

pub async fn alerts(args: AlertsArgs) -> Result<u8> {
    let r = client(&args.monitor)
        .await?
        .list_alerts(ListAlertsRequest { include_resolved: args.all, limit: 0 })
        .await
        .map_err(status)?
        .into_inner();
    let firing = r.alerts.iter().any(|a| a.state == "firing");
    if args.json {
        let rows: Vec<serde_json::Value> = r
            .alerts
            .iter()
            .map(|a| {
                serde_json::json!({ "rule": a.rule, "model": a.model_name, "state": a.state, "severity": a.severity,
                    "metric": a.metric, "value": if a.value.is_finite() { Some(a.value) } else { None },
                    "threshold": a.threshold, "since": time_of(&a.since), "message": a.message })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else if r.alerts.is_empty() {
        println!("no alarms");
    } else {
        println!("{:<9} {:<9} {:<20} {:<18} {:<19} message", "state", "severity", "rule", "model", "since");
        for a in &r.alerts {
            println!(
                "{:<9} {:<9} {:<20} {:<18} {:<19} {}",
                a.state,
                a.severity,
                a.rule,
                a.model_name,
                time_of(&a.since),
                a.message
            );
        }
    }
    Ok(if firing { FIRING } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_past_the_earliest_time_is_refused_not_a_panic() {
        let huge = std::time::Duration::from_secs(u64::MAX / 4);
        assert!(range(huge).unwrap_err().to_string().contains("--last is too long"));
        let now = Utc::now();
        assert_eq!(
            before(now, std::time::Duration::from_secs(60), "--last").unwrap(),
            now - chrono::Duration::seconds(60)
        );
    }
}
