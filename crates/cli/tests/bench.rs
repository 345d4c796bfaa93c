//! `vigil bench` runs end to end on the shipped model (embedded server, short rows): every row
//! it promises is printed with figures (raw ONNX Runtime with its default threads and with one),
//! and the transport floor rows are not compared with raw ONNX Runtime. The figures themselves are measurements, not checked here.

use std::path::Path;
use std::process::Command;

/// The cells of the table row whose mode is `mode` at `level`.
fn row<'a>(table: &'a str, mode: &str, level: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
        .find(|cells| cells.len() > 3 && cells[1] == mode && cells[2] == level)
        .unwrap_or_else(|| panic!("no row '{mode}' at {level} in:\n{table}"))
}

#[test]
fn bench_prints_every_row_with_its_figures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .current_dir(&root)
        .args(["bench", "--duration-s", "0.3", "--concurrency", "1,2"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "vigil bench failed:\n{stderr}");
    let items_per_s = |cells: &[&str]| cells[3].parse::<f64>().unwrap_or_else(|e| panic!("{cells:?}: {e}"));
    for level in ["1", "2"] {
        for mode in ["raw ORT (batch), default threads", "raw ORT (batch), 1 thread"] {
            let raw = row(&stdout, mode, level);
            assert!(items_per_s(&raw) > 0.0);
            assert!(raw[6].ends_with('x') && raw[7].ends_with("ms"), "compared with the best raw: {raw:?}");
        }
        for mode in ["ModelInfer", "Inspect"] {
            let cells = row(&stdout, mode, level);
            assert!(items_per_s(&cells) > 0.0, "{cells:?}");
            assert!(cells[6].ends_with('x') && cells[7].ends_with("ms"), "compared with raw ORT: {cells:?}");
        }
    }
    // Inspect's CPU per request against ModelInfer's, from the main table's own figures.
    let against = stdout.lines().skip_while(|l| !l.contains("Inspect vs ModelInfer")).collect::<Vec<_>>().join("\n");
    for level in ["1", "2"] {
        let (inspect, model_infer) = (row(&stdout, "Inspect", level), row(&stdout, "ModelInfer", level));
        let cpu = |cells: &[&str]| cells[8].parse::<f64>().unwrap_or_else(|e| panic!("{cells:?}: {e}"));
        let printed = against
            .lines()
            .map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
            .find(|c| c.len() > 3 && c[1] == level)
            .unwrap_or_else(|| panic!("no Inspect vs ModelInfer row at {level}:\n{against}"));
        let ratio: f64 = printed[3].trim_end_matches('x').parse().unwrap();
        // The table's CPU cells are rounded to whole microseconds.
        let expected = cpu(&inspect) / cpu(&model_infer);
        assert!((ratio - expected).abs() < 0.02 + expected * 0.01, "{printed:?} against {expected:.3}");
    }
    for floor in ["floor: ServerLive round trip", "floor: ModelInfer, same bytes, refused (no model run)"] {
        let cells = row(&stdout, floor, "1");
        assert!(items_per_s(&cells) > 0.0, "{cells:?}");
        assert_eq!(&cells[6..8], ["-", "-"], "a floor is not a model run: {cells:?}");
    }
    assert!(
        !stdout.lines().any(|l| l.starts_with("| floor") && l.contains("| 2 |")),
        "floors are measured at one stream only:\n{stdout}"
    );
}

/// `--h2load`: the same ModelInfer load from h2load in its own process (`./dev setup` installs
/// it). Its rows carry the server's and h2load's CPU per request, and the loaded row appears in
/// the table that gives the load generator's cores back.
#[test]
fn h2load_rows_measure_the_server_and_the_load_generator_apart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .current_dir(&root)
        .args(["bench", "--h2load", "--duration-s", "1", "--concurrency", "1,4", "--raw-threads", "1"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "vigil bench --h2load failed:\n{stderr}");
    let number = |cell: &str| cell.parse::<f64>().unwrap_or_else(|e| panic!("{cell:?}: {e}\n{stdout}"));
    for level in ["1", "4"] {
        let cells = row(&stdout, "ModelInfer via h2load (vigil-edge)", level);
        // Over a second of a closed loop, an answer in under 0.2 s each: at least 5 per stream.
        assert!(number(cells[3]) >= 5.0, "{cells:?}");
        assert!(number(cells[4]) > 0.0 && number(cells[5]) >= number(cells[4]), "p50 <= p99: {cells:?}");
        assert!(cells[6].ends_with('x') && cells[7].ends_with("ms"), "compared with raw ORT: {cells:?}");
        assert!(number(cells[8]) > 0.0, "server CPU per request: {cells:?}");
        assert!(number(cells[10]) > 0.0, "h2load's CPU per request: {cells:?}");
    }
    let loaded = row(&stdout, "ModelInfer via h2load (vigil-edge)", "4");
    let cores_left = stdout
        .lines()
        .skip_while(|l| !l.contains("the same on the cores the load generator left"))
        .collect::<Vec<_>>()
        .join("\n");
    let given_back = row(&cores_left, "ModelInfer via h2load (vigil-edge)", "4");
    assert!(number(given_back[3]) > 0.0, "h2load's cores: {given_back:?}");
    let ratio = |cell: &str| number(cell.trim_end_matches('x'));
    assert_eq!(given_back[4], loaded[6], "the plain ratio is the main table's");
    assert!(ratio(given_back[5]) > ratio(given_back[4]), "giving h2load's cores back raises it: {given_back:?}");
}
