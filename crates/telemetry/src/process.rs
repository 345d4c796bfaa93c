//! Process metrics from `/proc/self` (Linux): resident memory, CPU time, start time, threads.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reports `process_resident_memory_bytes`, `process_cpu_seconds_total`,
/// `process_start_time_seconds` and `process_threads` at each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

/// What one read of `/proc/self/stat` gives.
#[derive(Debug, PartialEq)]
pub struct ProcessStat {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub threads: i64,
    pub start_time_seconds: f64,
}

const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_SIZE: f64 = 4096.0;

/// Parses `/proc/self/stat` given the system boot time (seconds since the epoch).
pub fn parse_stat(stat: &str, boot_time: f64) -> Option<ProcessStat> {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // Field numbers (1-based, man proc) minus 3: utime 14, stime 15, threads 20, starttime 22, rss 24.
    Some(ProcessStat {
        cpu_seconds: (num(11)? + num(12)?) / TICKS_PER_SECOND,
        threads: num(17)? as i64,
        start_time_seconds: boot_time + num(19)? / TICKS_PER_SECOND,
        resident_bytes: num(21)? * PAGE_SIZE,
    })
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// Reads this process's figures; None off Linux.
pub fn read() -> Option<ProcessStat> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?, boot_time()?)
}

/// Reads another process's figures (a child broker in a benchmark, say); None when it is gone.
pub fn read_pid(pid: u32) -> Option<ProcessStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?, boot_time()?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = read() else { return Ok(()) };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(p.resident_bytes);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory",
            None,
            rss.metric_type(),
        )?)?;
        let start = ConstGauge::new(p.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time since the epoch",
            None,
            start.metric_type(),
        )?)?;
        let threads = ConstGauge::new(p.threads);
        threads.encode(encoder.encode_descriptor("process_threads", "OS threads", None, threads.metric_type())?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "4242 (vigil edge) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12345 \
                    100000000 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(line, 1_000.0).unwrap();
        assert_eq!(
            p,
            ProcessStat { cpu_seconds: 3.0, resident_bytes: 2560.0 * 4096.0, threads: 7, start_time_seconds: 1_123.45 }
        );
    }

    #[test]
    fn reads_this_process() {
        let p = read().expect("/proc/self/stat");
        assert!(p.resident_bytes > 0.0 && p.threads >= 1);
    }
}
