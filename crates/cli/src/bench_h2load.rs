//! `vigil bench --h2load`: the same ModelInfer load sent by h2load (nghttp2's load generator,
//! written in C) in its own process, over one HTTP/2 connection with `level` concurrent streams.
//! A client far cheaper than a tonic one leaves more of a small machine to the server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prost::Message;
use vigil_proto::inference::ModelInferRequest;

use crate::bench::{Row, cpu_time, histogram, row};

/// The gRPC method h2load posts to.
const MODEL_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// One h2load run's request body: a request as a length-prefixed, uncompressed gRPC message.
pub(crate) fn grpc_frame(request: &ModelInferRequest) -> Vec<u8> {
    let message = request.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// What h2load printed that the table needs.
#[derive(Debug, PartialEq)]
pub(crate) struct Summary {
    pub seconds: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    /// Response DATA bytes: a gRPC error is a trailers-only response, with none.
    pub data_bytes: f64,
}

/// Reads h2load's closing report (`finished in 3.00s, ...`, `requests: ...`, `traffic: ...`).
pub(crate) fn parse_summary(out: &str) -> Result<Summary> {
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("no `{prefix}` line in h2load's report"))
    };
    let finished = line("finished in ")?;
    let seconds = finished.split(',').next().and_then(|s| parse_seconds(s.trim())).context("h2load: bad duration")?;
    let requests = line("requests: ")?;
    let count = |what: &str| -> Result<u64> {
        requests
            .split(',')
            .find_map(|p| p.trim().strip_suffix(what)?.trim().parse().ok())
            .with_context(|| format!("h2load: no `{what}` count in `{requests}`"))
    };
    let traffic = line("traffic: ")?;
    let data = traffic
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" data"))
        .and_then(|d| match d.split_once('(') {
            // `420.24KB (430320)`: the exact count where h2load gives it.
            Some((_, exact)) => exact.trim_end_matches(')').trim().parse().ok(),
            None => parse_bytes(d.trim()),
        })
        .with_context(|| format!("h2load: no data size in `{traffic}`"))?;
    Ok(Summary {
        seconds,
        succeeded: count("succeeded")?,
        failed: count("failed")?,
        errored: count("errored")?,
        data_bytes: data,
    })
}

/// `3.00s`, `500.12ms` or `120us` in seconds.
fn parse_seconds(s: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else {
        (s.strip_suffix('s')?, 1.0)
    };
    number.parse::<f64>().ok().map(|v| v * scale)
}

/// `1.25MB`, `512.00KB` or `300B` (powers of 1024, as h2load prints them).
fn parse_bytes(s: &str) -> Option<f64> {
    let units = [("GB", 1024.0 * 1024.0 * 1024.0), ("MB", 1024.0 * 1024.0), ("KB", 1024.0), ("B", 1.0)];
    units.iter().find_map(|(unit, scale)| s.strip_suffix(unit)?.parse::<f64>().ok().map(|v| v * scale))
}

/// Per-request latencies (µs) of successful requests from h2load's `--log-file`: lines of start
/// time, status code and duration in µs, tab-separated.
pub(crate) fn parse_log(log: &str) -> Result<Vec<u64>> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            match fields.as_slice() {
                [_, status, micros, ..] if status.trim() == "200" => Some(micros.trim().parse::<u64>().ok()),
                [_, _, _, ..] => None,
                _ => Some(None),
            }
        })
        .map(|v| v.context("h2load's log has a line that is not start, status, duration"))
        .collect()
}

/// CPU time of this process's waited-for children (user + system).
fn children_cpu() -> Result<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e6 + t.tv_usec() as f64;
    Ok(Duration::from_micros((micros(usage.user_time()) + micros(usage.system_time())) as u64))
}

/// Where h2load is and which answers count: `min_answer_bytes` is the smallest DATA a
/// successful answer carries (its gRPC frame).
pub(crate) struct H2load<'a> {
    pub binary: &'a Path,
    pub url: &'a str,
    pub body: &'a [u8],
    pub min_answer_bytes: usize,
}

impl H2load<'_> {
    /// Fails early, naming what to install, when h2load is missing.
    pub(crate) fn check(binary: &Path) -> Result<()> {
        match Command::new(binary).arg("--version").output() {
            Ok(out) if out.status.success() => Ok(()),
            _ => bail!(
                "{} not found: install nghttp2's h2load (Debian: apt-get install nghttp2-client) or give --h2load-binary",
                binary.display()
            ),
        }
    }

    /// Runs h2load for `duration` with `level` streams on one connection, measuring the server
    /// process `server_pid` and h2load's own CPU.
    pub(crate) fn run(&self, mode: &'static str, level: usize, duration: Duration, server_pid: u32) -> Result<Row> {
        let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
        let (body, log) = (dir.path().join("request.grpc"), dir.path().join("requests.log"));
        std::fs::write(&body, self.body).with_context(|| format!("cannot write {}", body.display()))?;
        let target = format!("{}{MODEL_INFER_PATH}", self.url.trim_end_matches('/'));
        let mut command = Command::new(self.binary);
        command
            .args(["--clients=1", "--threads=1"])
            .arg(format!("--max-concurrent-streams={level}"))
            .arg(format!("--duration={}", duration.as_secs_f64().max(1.0).round() as u64))
            .args(["--header=content-type: application/grpc", "--header=te: trailers"])
            .arg(format!("--data={}", body.display()))
            .arg(format!("--log-file={}", log.display()))
            .arg(&target);
        let server_before = cpu_time(server_pid)?;
        let client_before = children_cpu()?;
        let out = command.output().with_context(|| format!("cannot run {}", self.binary.display()))?;
        let client_cpu = children_cpu()?.saturating_sub(client_before);
        let server_cpu = cpu_time(server_pid)?.saturating_sub(server_before);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("h2load failed ({}): {}{}", out.status, stdout.trim(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let summary = parse_summary(&stdout)?;
        if summary.succeeded == 0 || summary.failed + summary.errored > 0 {
            bail!(
                "h2load: {} succeeded, {} failed, {} errored against {target}",
                summary.succeeded,
                summary.failed,
                summary.errored
            );
        }
        // Every answer must carry a message: a gRPC error (HTTP 200, trailers only) carries none.
        let minimum = (summary.succeeded as usize * self.min_answer_bytes) as f64;
        if summary.data_bytes < minimum * 0.99 {
            bail!(
                "h2load: {:.0} bytes of answers for {} requests (at least {minimum:.0} expected): the server refused some",
                summary.data_bytes,
                summary.succeeded
            );
        }
        let log = std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
        let mut latencies = histogram();
        for micros in parse_log(&log)? {
            latencies.record(micros.max(1))?;
        }
        let requests = latencies.len();
        if requests == 0 {
            bail!("h2load's log lists no successful request");
        }
        let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / requests as f64;
        let mut r = row(mode, level, requests, Duration::from_secs_f64(summary.seconds), &latencies);
        r.server_cpu_us = Some(per_request(server_cpu));
        r.client_cpu_us = Some(per_request(client_cpu));
        Ok(r)
    }
}

/// The h2load binary: `--h2load-binary`, or `h2load` on the PATH.
pub(crate) fn binary(given: Option<&PathBuf>) -> PathBuf {
    given.cloned().unwrap_or_else(|| PathBuf::from("h2load"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2loads_report_and_log() {
        let report = "\
finished in 3.00s, 2512.33 req/s, 157.20MB/s
requests: 7537 total, 7537 started, 7537 done, 7537 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 7537 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 471.60MB (494510336) total, 51.52KB (52759) headers (space savings 93.17%), 420.24KB (430320) data
";
        let s = parse_summary(report).unwrap();
        assert_eq!((s.succeeded, s.failed, s.errored), (7537, 0, 0));
        assert!((s.seconds - 3.0).abs() < 1e-9);
        assert_eq!(s.data_bytes, 430_320.0);
        let older = report.replace("420.24KB (430320) data", "420.24KB data");
        assert!((parse_summary(&older).unwrap().data_bytes - 420.24 * 1024.0).abs() < 1e-6);
        assert_eq!(parse_seconds("512.5ms"), Some(0.5125));
        assert!((parse_seconds("120us").unwrap() - 0.000_12).abs() < 1e-12);
        assert_eq!(parse_bytes("300B"), Some(300.0));
        assert!(parse_summary("no report").is_err());
        let log = "1733400000123456\t200\t412\n1733400000123999\t503\t90\n1733400000124500\t200\t388\n";
        assert_eq!(parse_log(log).unwrap(), [412, 388]);
        assert!(parse_log("garbage\n").is_err());
    }

    #[test]
    fn frames_a_request_as_one_grpc_message() {
        let request = ModelInferRequest { model_name: "m".into(), ..Default::default() };
        let frame = grpc_frame(&request);
        assert_eq!(frame[0], 0, "uncompressed");
        let length = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(length, frame.len() - 5);
        assert_eq!(ModelInferRequest::decode(&frame[5..]).unwrap(), request);
    }
}
