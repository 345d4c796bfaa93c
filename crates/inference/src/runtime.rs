//! Finds and loads the ONNX Runtime shared library once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::InferenceError;

/// File name of the library fetched by `./dev setup`.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";
/// Environment variable naming the library explicitly.
pub const LIBRARY_ENV: &str = "VIGIL_ONNXRUNTIME_LIB";

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Candidate library paths, most specific first: `explicit`, `$VIGIL_ONNXRUNTIME_LIB`, beside the
/// executable, the repository's `.vigil/lib/` above the executable, and `./.vigil/lib/`.
pub fn candidate_paths(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(p) = explicit {
        paths.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(LIBRARY_ENV) {
        paths.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        if let Some(d) = &dir {
            paths.push(d.join(LIBRARY_FILE));
        }
        // target/<profile>/[deps/] -> repository root
        for _ in 0..4 {
            dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
            if let Some(d) = &dir {
                paths.push(d.join(".vigil/lib").join(LIBRARY_FILE));
            }
        }
    }
    paths.push(PathBuf::from(".vigil/lib").join(LIBRARY_FILE));
    paths
}

/// Finds the library: the first candidate that exists. An explicit path must exist.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, InferenceError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(InferenceError::Config(format!(
                "ONNX Runtime library {} does not exist; run `./dev setup` or point to libonnxruntime.so",
                p.display()
            )))
        };
    }
    let candidates = candidate_paths(None);
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        InferenceError::Config(format!(
            "ONNX Runtime library not found (looked for {}); run `./dev setup` to fetch it, or set {LIBRARY_ENV}=/path/to/libonnxruntime.so",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// Loads the library (once per process) and returns the shared ONNX Runtime environment.
pub fn environment(explicit: Option<&Path>) -> Result<&'static Environment, InferenceError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let path = locate(explicit).map_err(|e| e.to_string())?;
        tracing::info!(library = %path.display(), "loading ONNX Runtime");
        let builder =
            ort::init_from(&path).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        builder.with_name("vigil").build().map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    });
    result.as_ref().map_err(|e| InferenceError::Config(e.clone()))
}
