//! Dataset export benchmark: a SQLite prediction log of N labelled rows (eight numeric features
//! each, one in eighty missing each of the first seven, every fourth row captured) exported by `vigil dataset export`
//! in a process of its own, once per binary named (an older build beside this one, say), each
//! run from the same log into a fresh folder. Prints each run's wall time, CPU time and peak
//! memory (the process's largest resident set, from `getrusage`), and each against the first
//! binary's; checks that every binary wrote the same dataset.
//!
//!     cargo run --release -p vigil-cli --example export_bench -- [rows, default 300000] [vigil binary...]
//!
//! With no binary named, the `vigil` built beside this example.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use vigil_store::{LabelRow, PredictionStore, SqliteStore};

/// What one export cost.
struct Cost {
    wall: Duration,
    cpu: Duration,
    peak_rss_kib: i64,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--measure") {
        return measure(args.skip(1).collect());
    }
    let rows: usize = match args.peek().and_then(|a| a.parse().ok()) {
        Some(n) => {
            args.next();
            n
        }
        None => 300_000,
    };
    let mut binaries: Vec<PathBuf> = args.map(PathBuf::from).collect();
    if binaries.is_empty() {
        let here = std::env::current_exe()?;
        let beside = here.parent().and_then(Path::parent).context("where this example was built")?.join("vigil");
        binaries.push(beside);
    }
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("vigil.db").display());
    let started = Instant::now();
    tokio::runtime::Runtime::new()?.block_on(log(&url, rows))?;
    eprintln!("{rows} rows logged in {:.1} s", started.elapsed().as_secs_f64());

    let mut results = Vec::new();
    for (i, binary) in binaries.iter().enumerate() {
        let out = dir.path().join(format!("datasets-{i}"));
        let cost = run_measured(binary, &url, &out)?;
        let written: Vec<_> = std::fs::read_dir(&out)?.flatten().map(|e| e.file_name()).collect();
        results.push((binary, cost, written));
    }
    let first = &results[0];
    println!("rows: {rows}\n");
    println!("| binary | wall s | CPU s | peak RSS MiB | wall vs first | CPU vs first | peak RSS vs first |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (binary, cost, written) in &results {
        if *written != first.2 {
            bail!("{} wrote {written:?}, the first binary {:?}", binary.display(), first.2);
        }
        let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
        println!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.2}x | {:.2}x | {:.2}x |",
            binary.display(),
            cost.wall.as_secs_f64(),
            cost.cpu.as_secs_f64(),
            cost.peak_rss_kib as f64 / 1024.0,
            ratio(cost.wall.as_secs_f64(), first.1.wall.as_secs_f64()),
            ratio(cost.cpu.as_secs_f64(), first.1.cpu.as_secs_f64()),
            ratio(cost.peak_rss_kib as f64, first.1.peak_rss_kib as f64),
        );
    }
    Ok(())
}

/// `rows` labelled predictions of the scratch detector in the last hours.
async fn log(url: &str, rows: usize) -> Result<()> {
    let store = SqliteStore::connect(url).await?;
    store.migrate().await?;
    let now = Utc::now();
    let names = ["brightness", "contrast", "sharpness", "noise", "edge_density", "hue", "saturation", "serial"];
    for start in (0..rows).step_by(5_000) {
        let chunk: Vec<_> = (start..(start + 5_000).min(rows))
            .map(|i| {
                let features: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .enumerate()
                    .map(|(f, name)| {
                        // The last feature tells every row apart (the duplicates check passes).
                        let value = if f + 1 == names.len() {
                            serde_json::json!(i)
                        } else if (i + f) % 80 == 0 {
                            serde_json::Value::Null
                        } else {
                            serde_json::json!((i * 31 + f * 17) % 1000 + f * 1000 + i % 7)
                        };
                        (name.to_string(), value)
                    })
                    .collect();
                let time = now - chrono::Duration::hours(2) + chrono::Duration::milliseconds(i as i64);
                let mut row = vigil_store::testing::prediction(time, (i % 100) as f32 / 100.0, features.into());
                if i % 4 == 0 {
                    row.capture = format!("scratch-detector/{:064x}", i);
                }
                row
            })
            .collect();
        let labels: Vec<LabelRow> = chunk
            .iter()
            .enumerate()
            .map(|(k, r)| LabelRow {
                label_id: uuid::Uuid::now_v7(),
                prediction_id: r.prediction_id,
                label: if (start + k) % 3 == 0 { "defect" } else { "ok" }.into(),
                time: now,
                source: "inspector".into(),
            })
            .collect();
        store.insert_batch(&chunk, &labels).await?;
    }
    Ok(())
}

/// Runs the export in a process of this example's own, whose only child it is, so that
/// `getrusage` of its children is that export's alone.
fn run_measured(binary: &Path, url: &str, out: &Path) -> Result<Cost> {
    let output = Command::new(std::env::current_exe()?)
        .arg("--measure")
        .arg(binary)
        .args(["dataset", "export", "--database-url", url, "--model", "scratch-detector", "--since", "3h"])
        .args(["--min-kappa", "0"])
        .arg("--out")
        .arg(out)
        .output()?;
    if !output.status.success() {
        bail!("{} failed: {}", binary.display(), String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8(output.stdout)?;
    let last = text.lines().last().context("no measurement")?;
    let [wall, cpu, rss]: [f64; 3] = last
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<f64>, _>>()?
        .try_into()
        .map_err(|v| anyhow::anyhow!("a measurement of three numbers, not {v:?}"))?;
    Ok(Cost { wall: Duration::from_secs_f64(wall), cpu: Duration::from_secs_f64(cpu), peak_rss_kib: rss as i64 })
}

/// `--measure <binary> <args>`: runs it and prints wall seconds, CPU seconds and peak RSS (KiB).
fn measure(command: Vec<String>) -> Result<()> {
    use nix::sys::resource::{UsageWho, getrusage};
    let (binary, args) = command.split_first().context("--measure names a binary")?;
    let started = Instant::now();
    let output = Command::new(binary).args(args).output().with_context(|| format!("running {binary}"))?;
    let wall = started.elapsed();
    if !output.status.success() {
        bail!(
            "{binary} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let cpu = seconds(usage.user_time()) + seconds(usage.system_time());
    println!("{} {cpu} {}", wall.as_secs_f64(), usage.max_rss());
    Ok(())
}
