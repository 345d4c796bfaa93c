//! `vigil bench-voice` end to end on the fetched speech models (embedded server, one stream,
//! two seconds): the direct baseline and the served row are printed, and each served query is
//! paired with its own direct recognition time. Two queries of very different lengths make a
//! wrong pairing show: the short query's wait less the long query's direct time is far below
//! zero, where a right pairing leaves the serving overhead (near zero in a release build, more
//! in this debug build, where the server's own code is unoptimised).

use std::process::Command;

use vigil_testkit::speech as voices;

/// The cells of the first table row starting with `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
        .find(|cells| cells.len() > 3 && cells[1] == first)
        .unwrap_or_else(|| panic!("no row '{first}' in:\n{table}"))
}

/// Milliseconds from a cell such as `+0.42 ms` or `56.5 ms`.
fn ms(cell: &str) -> f64 {
    cell.strip_suffix(" ms").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("not a time in ms: {cell:?}"))
}

#[test]
fn bench_voice_pairs_each_served_query_with_its_direct_recognition() {
    let models = voices::cloud_models();
    let root = voices::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("queries.txt");
    std::fs::write(
        &queries,
        "# one short and one long query\nsocks | P-0\n\
         stainless steel water bottle with a bamboo lid for hiking and camping trips | P-1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .current_dir(&root)
        .arg("bench-voice")
        .arg("--models")
        .arg(&models)
        .arg("--queries")
        .arg(&queries)
        .args(["--concurrency", "1", "--duration-s", "2"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "vigil bench-voice failed:\n{stderr}");

    let asr = stdout
        .lines()
        .find(|l| l.starts_with("| Moonshine tiny"))
        .unwrap_or_else(|| panic!("no direct recognition row:\n{stdout}"));
    assert!(asr.contains("median of 3 runs"), "{asr}");

    let served = row(&stdout, "1");
    let number = |cell: &str| cell.parse::<f64>().unwrap_or_else(|e| panic!("{cell:?}: {e}\n{stdout}"));
    let (wait_p50, overhead_p50, overhead_p99) = (ms(served[4]), ms(served[7]), ms(served[8]));
    assert!(overhead_p50 <= overhead_p99 && overhead_p99 < ms(served[5]), "{served:?}");
    // With two queries the direct p50 is the short query's time and the p99 the long one's.
    let (direct_p50, direct_p99) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Direct recognition per query (median of its runs): p50 "))
        .and_then(|rest| {
            let (p50, rest) = rest.split_once(" ms, p99 ")?;
            let (p99, _) = rest.split_once(" ms")?;
            Some((p50.parse::<f64>().ok()?, p99.parse::<f64>().ok()?))
        })
        .unwrap_or_else(|| panic!("no direct recognition summary:\n{stdout}"));
    assert!(direct_p50 > 0.0 && wait_p50 > 0.0);
    // One stream answers about one query per recognition time, measured in the same run: never
    // faster than the quicker query allows, and not many times slower than the longer one
    // (wide bounds, for a shared machine's noise between the two phases).
    let per_second = number(served[2]);
    assert!(per_second <= 1.5 * 1000.0 / direct_p50, "queries/s {per_second} past what recognition allows:\n{stdout}");
    assert!(per_second >= 0.3 * 1000.0 / direct_p99, "queries/s {per_second} far below recognition's pace:\n{stdout}");
    let spread = direct_p99 - direct_p50;
    assert!(spread > 0.0, "the two queries take different times to recognise:\n{stdout}");
    // The queries alternate, so the overheads' median is the short query's. Paired with the long
    // query's direct time it would sit near minus the spread between the two; paired with its
    // own, near zero. Half the spread is the midpoint, wide enough for a shared machine's noise
    // (a run's timings move by tens of milliseconds) yet far from either.
    assert!(overhead_p50 > -0.5 * spread, "each query's wait is paired with its own direct time: {served:?}\n{stdout}");
}
