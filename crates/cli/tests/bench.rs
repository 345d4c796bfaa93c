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
