//! A spool segment file as left on disk: `Spool::open` (frame scan, torn-tail cut), `peek_each`, then an append.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_logbus::Envelope;
use vigil_logbus::spool::{Spool, SpoolConfig};

fuzz_target!(|data: &[u8]| {
    // The frame reader is private: the bytes go through a segment file in a fresh spool directory.
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join("0000000001.seg"), data).is_err() {
        return;
    }
    let config = SpoolConfig { dir: dir.path().to_path_buf(), ..SpoolConfig::default() };
    let Ok(mut spool) = Spool::open(config) else { return };
    let _ = spool.peek_each(usize::MAX);
    let envelope = Envelope { topic: "vigil.predictions.v1".into(), key: "fuzz".into(), payload: vec![1, 2, 3] };
    if spool.append(&envelope).is_ok() {
        let _ = spool.peek_each(usize::MAX);
    }
});
