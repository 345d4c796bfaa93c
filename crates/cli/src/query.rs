//! `vigil query`: the prediction log for analysts, filtered and paginated, as a table, CSV or
//! JSON lines. Reads Postgres directly (the analyst role can only read).

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use clap::{Args, ValueEnum};
use uuid::Uuid;
use vigil_store::{Backend, MAX_QUERY_ROWS, PredictionFilter, PredictionStore, PredictionSummary};

use crate::inspect::{decision_name, verdict_name};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The prediction log: postgres://... or sqlite://... (the embedded default's is
    /// sqlite://.vigil/vigil.db).
    #[arg(long, env = "VIGIL_DATABASE_URL", hide_env_values = true, default_value = "postgres://127.0.0.1/vigil")]
    pub database_url: String,
    /// From this time: RFC 3339 (2026-11-29T08:00:00Z) or an age (30m, 6h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub version: Option<String>,
    #[arg(long)]
    pub station: Option<String>,
    /// OK or DEFECT.
    #[arg(long)]
    pub verdict: Option<String>,
    /// ACCEPT, REJECT or HUMAN_REVIEW.
    #[arg(long)]
    pub decision: Option<String>,
    #[arg(long)]
    pub min_score: Option<f32>,
    #[arg(long)]
    pub max_score: Option<f32>,
    /// Only predictions with (true) or without (false) a ground-truth label.
    #[arg(long)]
    pub has_label: Option<bool>,
    /// Continue after this prediction id (the last one of the previous page).
    #[arg(long)]
    pub after: Option<Uuid>,
    /// Rows per page (at most 10000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// On Postgres, the role the query runs as, in a read-only transaction; the user in
    /// --database-url must be a member of it (GRANT vigil_analyst TO <user>).
    #[arg(long, default_value = vigil_store::postgres::ANALYST_ROLE)]
    pub role: String,
}

/// Parses RFC 3339 or an age such as `30m`, `6h`, `7d` (before now).
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let neither = || format!("'{text}' is neither RFC 3339 nor an age like 30m, 6h, 7d");
    let unit_at = text.char_indices().last().map_or(0, |(i, _)| i);
    let (digits, unit) = text.split_at(unit_at);
    let n: i64 = digits.parse().with_context(neither)?;
    let age = match unit {
        "s" => ChronoDuration::try_seconds(n),
        "m" => ChronoDuration::try_minutes(n),
        "h" => ChronoDuration::try_hours(n),
        "d" => ChronoDuration::try_days(n),
        _ => bail!("'{text}': the unit must be s, m, h or d"),
    };
    age.and_then(|age| now.checked_sub_signed(age))
        .with_context(|| format!("'{text}' reaches before the earliest time there is: give a shorter age"))
}

fn enum_value(text: &Option<String>, names: &[(&str, i16)], what: &str) -> Result<Option<i16>> {
    match text {
        None => Ok(None),
        Some(t) => names.iter().find(|(n, _)| n.eq_ignore_ascii_case(t)).map(|(_, v)| Some(*v)).with_context(|| {
            format!("--{what} {t}: use one of {}", names.iter().map(|n| n.0).collect::<Vec<_>>().join(", "))
        }),
    }
}

pub async fn run(args: QueryArgs) -> Result<u8> {
    if args.limit == 0 || args.limit > MAX_QUERY_ROWS {
        bail!("--limit must be between 1 and {MAX_QUERY_ROWS}");
    }
    let now = Utc::now();
    let filter = PredictionFilter {
        since: args.since.as_deref().map(|t| parse_time(t, now)).transpose().context("--since")?,
        until: args.until.as_deref().map(|t| parse_time(t, now)).transpose().context("--until")?,
        model_name: args.model.clone(),
        model_version: args.version.clone(),
        variant: None,
        station_id: args.station.clone(),
        verdict: enum_value(&args.verdict, &[("OK", 1), ("DEFECT", 2)], "verdict")?,
        decision: enum_value(&args.decision, &[("ACCEPT", 1), ("REJECT", 2), ("HUMAN_REVIEW", 3)], "decision")?,
        min_score: args.min_score,
        max_score: args.max_score,
        has_label: args.has_label,
        after: args.after,
        limit: args.limit,
    };
    let url = &args.database_url;
    let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        vigil_store::PgStore::connect_read_only_as(url, &args.role, 2).map(Backend::Postgres)
    } else {
        Backend::connect(url).await
    }
    .with_context(|| format!("--database-url {}", redact(url)))?;
    let rows = match vigil_store::with_store!(backend, store => store.query_predictions(&filter).await) {
        Err(e) if e.to_string().contains("permission denied to set role") => bail!(
            "{}: the user is not a member of the role '{}': GRANT {} TO <user> (or pass --role)",
            redact(url),
            args.role,
            args.role
        ),
        rows => rows.with_context(|| format!("cannot query the prediction log at {}", redact(url)))?,
    };
    match print_rows(&rows, args.format) {
        // The reader went away (`vigil query | head`): what it wanted was printed.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
        result => result.context("cannot write the rows to stdout")?,
    }
    if let Some(last) = rows.last().filter(|_| rows.len() as u32 == args.limit) {
        eprintln!("more rows: add --after {}", last.prediction_id);
    }
    Ok(0)
}

pub(crate) fn redact(url: &str) -> String {
    vigil_store::redact_url(url)
}

fn feature(r: &PredictionSummary, name: &str) -> String {
    r.features.get(name).and_then(|v| v.as_f64()).map_or(String::new(), |v| format!("{v:.2}"))
}

/// Prints rows as a table, CSV or JSON lines to stdout.
pub fn print_rows(rows: &[PredictionSummary], format: Format) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let fields = |r: &PredictionSummary| -> Vec<String> {
        vec![
            r.prediction_id.to_string(),
            r.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            r.station_id.clone(),
            format!("{}@{}", r.model_name, r.model_version),
            r.score.map_or(String::new(), |s| format!("{s:.4}")),
            verdict_name(r.verdict as i32).to_string(),
            decision_name(r.decision as i32).to_string(),
            r.label.clone().unwrap_or_default(),
            feature(r, "brightness"),
            feature(r, "sharpness"),
        ]
    };
    let header = [
        "prediction_id",
        "time",
        "station",
        "model",
        "score",
        "verdict",
        "decision",
        "label",
        "brightness",
        "sharpness",
    ];
    match format {
        Format::Json => {
            for r in rows {
                writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())?;
            }
        }
        Format::Csv => {
            writeln!(out, "{}", header.join(","))?;
            for r in rows {
                let escaped: Vec<String> = fields(r)
                    .into_iter()
                    .map(|f| if f.contains([',', '"', '\n']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f })
                    .collect();
                writeln!(out, "{}", escaped.join(","))?;
            }
        }
        Format::Table => {
            let all: Vec<Vec<String>> = rows.iter().map(fields).collect();
            let widths: Vec<usize> = (0..header.len())
                .map(|i| all.iter().map(|f| f[i].len()).chain([header[i].len()]).max().unwrap_or(0))
                .collect();
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            writeln!(out, "{}", line(header.iter().map(|h| h.to_string()).collect()))?;
            for f in all {
                writeln!(out, "{}", line(f))?;
            }
            writeln!(out, "({} rows)", rows.len())?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_time("6h", now).unwrap().to_rfc3339(), "2026-11-29T06:00:00+00:00");
        assert_eq!(parse_time("2026-11-28T00:00:00Z", now).unwrap().to_rfc3339(), "2026-11-28T00:00:00+00:00");
        assert!(parse_time("6w", now).unwrap_err().to_string().contains("unit"));
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn credentials_are_not_printed() {
        assert_eq!(redact("postgres://user:secret@db/vigil"), "postgres://***@db/vigil");
        let now = Utc::now();
        assert_eq!(parse_time("2h", now).unwrap(), now - ChronoDuration::hours(2));
        for bad in ["5µ", "µ", "", "9999999999999d", "-9223372036854775808s"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?} is refused, not a panic");
        }
        assert_eq!(
            redact("postgres://db/vigil?user=u&password=secret&sslmode=require"),
            "postgres://db/vigil?user=u&password=***&sslmode=require"
        );
        assert_eq!(redact("postgress://u:secret@db/vigil"), "postgress://***@db/vigil");
    }
}
