//! A model's `model.toml`: what it takes, what it gives, how to prepare images for it,
//! its decision thresholds and its batching.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::InferenceError;
use crate::tensor::DataType;

/// Contents of `models/<name>/<version>/model.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub version: u64,
    /// Triton platform string, `onnxruntime_onnx`.
    #[serde(default = "default_platform")]
    pub platform: String,
    #[serde(default)]
    pub description: String,
    /// Largest batch the model takes (the first dimension of every input); 0: no batch dimension.
    pub max_batch_size: usize,
    /// Class names, index-aligned with the model's scores.
    #[serde(default)]
    pub labels: Vec<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub preprocess: Option<ImagePreprocess>,
    #[serde(default)]
    pub thresholds: Option<Thresholds>,
    #[serde(default)]
    pub dynamic_batching: Option<BatchingConfig>,
    /// Sessions run in parallel for this model (each with its own thread pool).
    #[serde(default = "default_instances")]
    pub instances: usize,
    /// ONNX Runtime intra-op threads per session; 0: one per CPU this process may use, at most
    /// one per physical core (see [`crate::session::default_intra_op_threads`]).
    #[serde(default)]
    pub intra_op_threads: usize,
    /// A session of its own for lone requests run inline (see
    /// [`BatchingConfig::inline_run_limit_us`]), with this many intra-op threads (0: one per CPU
    /// this process may use, at most one per physical core). Lets a model answer one client on
    /// every core while its batching sessions run batches under load on one thread each,
    /// without a second thread spinning beside them; it costs one more copy of the model in
    /// memory. Unset: inline runs borrow an idle batching session.
    #[serde(default)]
    pub inline_intra_op_threads: Option<usize>,
    /// Let idle intra-op threads spin for work (ONNX Runtime's default): lower latency on
    /// dedicated cores; turn it off when the server shares a few cores with other work.
    #[serde(default = "default_spinning")]
    pub intra_op_spinning: bool,
    /// Whether the inline session's idle threads spin (see `inline_intra_op_threads`). Unset:
    /// as `intra_op_spinning`. With batches on several threads that do not spin (more
    /// throughput under load for some CPU), `true` keeps a lone client's latency.
    #[serde(default)]
    pub inline_intra_op_spinning: Option<bool>,
    /// Which versions of the model to load, as Triton's `version_policy`; read from the newest
    /// version's `model.toml`. Default: the newest one.
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// Files beside `model.onnx` that the version cannot serve without (a tokenizer, a label
    /// map), as names in the version directory: a version missing one is refused at load, so the
    /// version before it keeps serving instead of one that fails every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_files: Vec<String>,
}

/// Which versions of a model are loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The `n` newest versions (`version_policy = { latest = 2 }`).
    Latest(usize),
    /// These versions (`version_policy = { specific = [1, 3] }`).
    Specific(Vec<u64>),
    /// Every version found (`version_policy = "all"`).
    All,
}

impl Default for VersionPolicy {
    fn default() -> Self {
        Self::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to load out of those found (ascending).
    pub fn select(&self, found: &[u64]) -> Vec<u64> {
        match self {
            Self::Latest(n) => found[found.len().saturating_sub(*n)..].to_vec(),
            Self::Specific(wanted) => found.iter().copied().filter(|v| wanted.contains(v)).collect(),
            Self::All => found.to_vec(),
        }
    }
}

fn default_platform() -> String {
    "onnxruntime_onnx".into()
}

fn default_instances() -> usize {
    1
}

fn default_spinning() -> bool {
    true
}

/// One input or output: name, datatype and per-item dims (without the batch dimension;
/// -1 for a variable dimension).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
    /// The value the warm-up request fills this input with (default 0), for models that zeros
    /// would send down a failing path (e.g. a sample-rate input). Numeric inputs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_value: Option<f64>,
    /// The shape the warm-up request gives this input (default: each variable dimension 1),
    /// for models that need a minimum length (e.g. audio). Same rank as `dims`, and equal to
    /// it wherever `dims` is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_dims: Option<Vec<i64>>,
    /// Tabular inputs: the name of each column of an item (dims `[n]`, n names). Each column
    /// is logged as a named input feature (missing when NaN), so drift and missing values are
    /// watched per column, and `vigil batch` matches a table's columns to them by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Text inputs (`BYTES`, UTF-8): what the logged input metrics compare each text with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextInput>,
}

/// How a text input's metrics are taken: every text is logged with its length in characters
/// and words, the share of its words outside the model's vocabulary, and one 0/1 indicator per
/// expected language (plus `other`), so each language's share is the indicator's mean.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TextInput {
    /// A file in the version directory listing the words the model knows, one per line
    /// (lower case); without it no out-of-vocabulary share is logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<String>,
    /// ISO 639-3 codes of the languages the model expects (e.g. `["eng"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// The vocabulary's words, read when the version loads.
    #[serde(skip)]
    pub words: Option<std::sync::Arc<std::collections::HashSet<String>>>,
}

/// How an encoded image becomes the model's input tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocess {
    /// Always `image`.
    pub kind: String,
    pub width: u32,
    pub height: u32,
    /// `gray` (0.2126 R + 0.7152 G + 0.0722 B) or `rgb`.
    pub channels: Channels,
    /// Resampling when the image is not `width` x `height`: `bilinear`.
    #[serde(default = "default_resize")]
    pub resize: String,
    /// x = (pixel / 255 - mean) / std.
    pub mean: f32,
    pub std: f32,
    /// Only `NCHW`.
    #[serde(default = "default_layout")]
    pub layout: String,
}

fn default_resize() -> String {
    "bilinear".into()
}

fn default_layout() -> String {
    "NCHW".into()
}

/// Colour channels the model takes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    Gray,
    Rgb,
}

impl Channels {
    /// Number of planes in the tensor.
    pub fn count(self) -> usize {
        match self {
            Self::Gray => 1,
            Self::Rgb => 3,
        }
    }
}

/// Score thresholds for a binary defect model.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Verdict DEFECT when score >= `defect`.
    pub defect: f32,
    /// Decision ACCEPT when score < `accept_below`.
    pub accept_below: f32,
    /// Decision REJECT when score >= `reject_at`; between the two: human review.
    pub reject_at: f32,
    /// How many people decide each item sent to review, independently (a panel decides by
    /// majority); default 1.
    #[serde(default = "one_reviewer")]
    pub reviewers: u32,
}

fn one_reviewer() -> u32 {
    1
}

impl Thresholds {
    /// Checks 0 <= accept_below <= reject_at <= 1 and 0 <= defect <= 1.
    pub fn validate(&self) -> Result<(), String> {
        let in_unit = |v: f32| (0.0..=1.0).contains(&v);
        if !in_unit(self.defect) || !in_unit(self.accept_below) || !in_unit(self.reject_at) {
            return Err("thresholds must lie in [0, 1]".into());
        }
        if !(1..=15).contains(&self.reviewers) {
            return Err(format!("reviewers ({}) must be between 1 and 15", self.reviewers));
        }
        if self.accept_below > self.reject_at {
            return Err(format!("accept_below ({}) must not exceed reject_at ({})", self.accept_below, self.reject_at));
        }
        Ok(())
    }
}

/// Dynamic batching, as Triton's `dynamic_batching`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most items run together (<= the model's `max_batch_size`).
    pub max_batch_size: usize,
    /// Longest time the oldest queued request waits for others to join its batch.
    pub max_queue_delay_us: u64,
    /// Most requests waiting; beyond it requests are refused (RESOURCE_EXHAUSTED).
    pub max_queue_depth: usize,
    /// A request that finds the model idle (nothing queued, nothing running) runs on the thread
    /// that received it, with no hand-off to a batching thread and back, when it should take at
    /// most this long (the last run's time per byte of input times the request's bytes); longer runs stay on the
    /// batching threads, so a slow run never holds up the server's network threads. 0: never.
    #[serde(default = "default_inline_run_limit_us")]
    pub inline_run_limit_us: u64,
}

/// Models whose runs take up to 2 ms run a lone request inline.
pub const DEFAULT_INLINE_RUN_LIMIT_US: u64 = 2_000;

/// The most requests a model's queue may hold (`dynamic_batching.max_queue_depth`): its slots
/// are allocated when the model loads.
pub const MAX_QUEUE_DEPTH: usize = 65_536;

/// The most elements a tensor's fixed dimensions may describe (a warm-up request is that big).
pub const MAX_FIXED_ELEMENTS: i64 = 1 << 28;

/// The largest side of an image `preprocess` makes.
pub const MAX_PREPROCESS_SIDE: u32 = 8_192;

fn default_inline_run_limit_us() -> u64 {
    DEFAULT_INLINE_RUN_LIMIT_US
}

impl BatchingConfig {
    /// The queue delay as a duration.
    pub fn max_queue_delay(&self) -> Duration {
        Duration::from_micros(self.max_queue_delay_us)
    }

    /// The longest last run after which a lone request still runs inline.
    pub fn inline_run_limit(&self) -> Duration {
        Duration::from_micros(self.inline_run_limit_us)
    }
}

impl ModelConfig {
    /// Reads and checks a `model.toml`.
    pub fn load(path: &Path) -> Result<Self, InferenceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| InferenceError::Config(format!("cannot read {}: {e}", path.display())))?;
        let config: Self =
            toml::from_str(&text).map_err(|e| InferenceError::Config(format!("{}: {e}", path.display())))?;
        config.validate().map_err(|e| InferenceError::Config(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Checks the fields against each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("name must not be empty".into());
        }
        if self.name.chars().any(|c| c.is_control() || c == '/') {
            return Err(format!("name {:?} holds a control character or '/': name the model as its folder", self.name));
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err("a model needs at least one input and one output".into());
        }
        for (kind, tensors) in [("input", &self.inputs), ("output", &self.outputs)] {
            let mut seen = std::collections::HashSet::new();
            for t in tensors.iter() {
                if !seen.insert(t.name.as_str()) {
                    return Err(format!("{kind} '{}' is declared twice: each {kind} needs a name of its own", t.name));
                }
                if let Some(d) = t.dims.iter().find(|&&d| d == 0 || d < -1) {
                    return Err(format!(
                        "{kind} '{}': dims {:?} holds {d}; a dimension is at least 1, or -1 where it varies",
                        t.name, t.dims
                    ));
                }
                let fixed = t.dims.iter().filter(|&&d| d > 0).try_fold(1i64, |n, &d| n.checked_mul(d));
                if fixed.is_none_or(|n| n > MAX_FIXED_ELEMENTS) {
                    return Err(format!(
                        "{kind} '{}': dims {:?} describe more than {MAX_FIXED_ELEMENTS} elements",
                        t.name, t.dims
                    ));
                }
            }
        }
        for input in self.inputs.iter().filter(|i| i.warmup_value.is_some()) {
            if !matches!(input.datatype, DataType::Fp32 | DataType::Fp64 | DataType::Int32 | DataType::Int64) {
                return Err(format!(
                    "input '{}': warmup_value needs an FP32, FP64, INT32 or INT64 input, not {:?}",
                    input.name, input.datatype
                ));
            }
        }
        for input in &self.inputs {
            if let Some(shape) = &input.warmup_dims {
                let fits = shape.len() == input.dims.len()
                    && shape.iter().zip(&input.dims).all(|(&w, &d)| w >= 1 && (d < 0 || w == d));
                if !fits {
                    return Err(format!(
                        "input '{}': warmup_dims {shape:?} must have the rank of dims {:?}, match its fixed \
                         dimensions and be at least 1 elsewhere",
                        input.name, input.dims
                    ));
                }
            }
        }
        for input in &self.inputs {
            let Some(names) = &input.features else { continue };
            let numeric = matches!(input.datatype, DataType::Fp32 | DataType::Fp64 | DataType::Int32 | DataType::Int64);
            if !numeric || input.dims != [names.len() as i64] {
                return Err(format!(
                    "input '{}': features name the columns of a numeric input with dims [n] (here {} names, dims \
                     {:?}, {:?})",
                    input.name,
                    names.len(),
                    input.dims,
                    input.datatype
                ));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(bad) = names.iter().find(|n| n.is_empty() || !seen.insert(n.as_str())) {
                return Err(format!("input '{}': feature names must be unique and non-empty ('{bad}')", input.name));
            }
        }
        for input in &self.inputs {
            let Some(text) = &input.text else { continue };
            if input.datatype != DataType::Bytes {
                return Err(format!(
                    "input '{}': text settings need a BYTES input, not {}",
                    input.name, input.datatype
                ));
            }
            if let Some(bad) = text.languages.iter().find(|l| crate::text::language_code(l).is_none()) {
                return Err(format!(
                    "input '{}': text.languages: '{bad}' is not a language code this server knows (ISO 639-3, e.g. \"eng\")",
                    input.name
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for file in &self.required_files {
            if !crate::repository::is_model_name(file) || matches!(file.as_str(), "model.onnx" | "model.toml") {
                return Err(format!(
                    "required_files: {file:?} is not a file name in the version directory (one name, not hidden, \
                     other than model.onnx and model.toml)"
                ));
            }
            if !seen.insert(file.as_str()) {
                return Err(format!("required_files names {file:?} twice"));
            }
        }
        if self.instances == 0 {
            return Err("instances must be at least 1".into());
        }
        if self.inline_intra_op_spinning.is_some() && self.inline_intra_op_threads.is_none() {
            return Err("inline_intra_op_spinning sets up the inline session's threads, but there is no \
                        inline session: set inline_intra_op_threads too (0: one per core)"
                .into());
        }
        if self.inline_intra_op_threads.is_some() && self.batching().inline_run_limit_us == 0 {
            return Err("inline_intra_op_threads sets up a session for inline runs, but \
                        dynamic_batching.inline_run_limit_us = 0 turns them off; remove one of the two"
                .into());
        }
        match &self.version_policy {
            VersionPolicy::Latest(0) => return Err("version_policy.latest must be at least 1".into()),
            VersionPolicy::Specific(v) if v.is_empty() => {
                return Err("version_policy.specific must name at least one version".into());
            }
            _ => {}
        }
        if let Some(b) = &self.dynamic_batching {
            if b.max_batch_size == 0 || b.max_batch_size > self.max_batch_size.max(1) {
                return Err(format!(
                    "dynamic_batching.max_batch_size ({}) must be between 1 and max_batch_size ({})",
                    b.max_batch_size, self.max_batch_size
                ));
            }
            if b.max_queue_depth == 0 || b.max_queue_depth > MAX_QUEUE_DEPTH {
                return Err(format!(
                    "dynamic_batching.max_queue_depth ({}) must be between 1 and {MAX_QUEUE_DEPTH}",
                    b.max_queue_depth
                ));
            }
        }
        if let Some(t) = &self.thresholds {
            t.validate().map_err(|e| format!("thresholds: {e}"))?;
        }
        if let Some(p) = &self.preprocess {
            if p.kind != "image" || p.layout != "NCHW" || p.resize != "bilinear" {
                return Err("preprocess supports kind = \"image\", layout = \"NCHW\", resize = \"bilinear\"".into());
            }
            if p.width == 0 || p.height == 0 || p.std == 0.0 {
                return Err("preprocess width, height and std must be non-zero".into());
            }
            if p.width.max(p.height) > MAX_PREPROCESS_SIDE {
                return Err(format!("preprocess width and height must be at most {MAX_PREPROCESS_SIDE}"));
            }
            // The prepared image is one item of a batch, [1, C, H, W]: a graph without the
            // batch dimension would load (its warm-up has none) and fail every image.
            if self.max_batch_size == 0 {
                return Err("preprocess feeds images as a batch of one: set max_batch_size to 1 or more".into());
            }
            // Inspect sends the prepared image as the model's only input.
            if self.inputs.len() != 1 {
                return Err(format!(
                    "preprocess feeds one image to a model with one input; this one declares {}",
                    self.inputs.len()
                ));
            }
            let input = &self.inputs[0];
            let expected = [p.channels.count() as i64, p.height as i64, p.width as i64];
            if input.datatype != DataType::Fp32 || input.dims != expected {
                return Err(format!(
                    "preprocess makes FP32 {:?} but input '{}' is {} {:?}",
                    expected, input.name, input.datatype, input.dims
                ));
            }
        }
        Ok(())
    }

    /// Batching in effect: the configured one, or one request per run (as Triton's default
    /// scheduler: requests are joined only where a model asks for it).
    pub fn batching(&self) -> BatchingConfig {
        self.dynamic_batching.unwrap_or(BatchingConfig {
            max_batch_size: 1,
            max_queue_delay_us: 0,
            max_queue_depth: 256,
            inline_run_limit_us: DEFAULT_INLINE_RUN_LIMIT_US,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
name = "m"
version = 2
max_batch_size = 8
[[inputs]]
name = "image"
datatype = "FP32"
dims = [1, 4, 4]
[[outputs]]
name = "p"
datatype = "FP32"
dims = [1]
[preprocess]
kind = "image"
width = 4
height = 4
channels = "gray"
mean = 0.5
std = 0.5
[thresholds]
defect = 0.5
accept_below = 0.2
reject_at = 0.8
[dynamic_batching]
max_batch_size = 4
max_queue_delay_us = 100
max_queue_depth = 16
"#;

    #[test]
    fn parses_a_full_config() {
        let c: ModelConfig = toml::from_str(SAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.inputs[0].datatype, DataType::Fp32);
        assert_eq!(c.batching().max_queue_delay(), Duration::from_micros(100));
        assert_eq!(c.preprocess.unwrap().channels, Channels::Gray);
        // Without [dynamic_batching] requests are never joined, whatever the model takes.
        let unbatched: ModelConfig = toml::from_str(&SAMPLE[..SAMPLE.find("[dynamic_batching]").unwrap()]).unwrap();
        assert_eq!((unbatched.max_batch_size, unbatched.batching().max_batch_size), (8, 1));
    }

    #[test]
    fn a_name_with_control_characters_or_slashes_is_refused() {
        let named = |name: &str| ModelConfig { name: name.into(), ..toml::from_str::<ModelConfig>(SAMPLE).unwrap() };
        assert!(named("scratch-detector_v2.1 é").validate().is_ok());
        for bad in ["a\0b", "line\nbreak", "tab\t", "a/b"] {
            let e = named(bad).validate().unwrap_err();
            assert!(e.contains("control character or '/'"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn warmup_dims_must_fit_the_declared_dims() {
        let audio = |warmup: &str| {
            let text = format!(
                "name = \"a\"\nversion = 1\nmax_batch_size = 0\n[[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\n\
                 dims = [1, -1]\n{warmup}\n[[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [1]\n"
            );
            toml::from_str::<ModelConfig>(&text).unwrap().validate()
        };
        assert!(audio("warmup_dims = [1, 16000]").is_ok());
        for bad in ["warmup_dims = [16000]", "warmup_dims = [2, 16000]", "warmup_dims = [1, 0]"] {
            let e = audio(bad).unwrap_err();
            assert!(e.contains("input 'x': warmup_dims"), "{bad}: {e}");
        }
    }

    #[test]
    fn feature_names_must_name_each_column_once() {
        let table = |dims: &str, features: &str| {
            let text = format!(
                "name = \"t\"\nversion = 1\nmax_batch_size = 8\n[[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\n\
                 dims = {dims}\nfeatures = {features}\n[[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [1]\n"
            );
            toml::from_str::<ModelConfig>(&text).unwrap().validate()
        };
        assert!(table("[3]", r#"["age", "fever", "cough"]"#).is_ok());
        for (dims, features) in
            [("[3]", r#"["age", "fever"]"#), ("[-1]", r#"["age"]"#), ("[1, 3]", r#"["a", "b", "c"]"#)]
        {
            let e = table(dims, features).unwrap_err();
            assert!(e.contains("features name the columns"), "{dims} {features}: {e}");
        }
        let e = table("[2]", r#"["age", "age"]"#).unwrap_err();
        assert!(e.contains("unique and non-empty ('age')"), "{e}");
    }

    #[test]
    fn rejects_inverted_thresholds_and_oversized_batches() {
        let bad = SAMPLE.replace("accept_below = 0.2", "accept_below = 0.9");
        let c: ModelConfig = toml::from_str(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("accept_below"));
        let bad = SAMPLE.replace("max_batch_size = 4", "max_batch_size = 9");
        let c: ModelConfig = toml::from_str(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("dynamic_batching.max_batch_size"));
    }

    #[test]
    fn an_inline_session_needs_inline_runs() {
        let with = |extra: &str, limit: &str| {
            let text = SAMPLE
                .replace("version = 2", &format!("version = 2\n{extra}"))
                .replace("max_queue_depth = 16", &format!("max_queue_depth = 16\n{limit}"));
            toml::from_str::<ModelConfig>(&text).unwrap().validate()
        };
        assert_eq!(toml::from_str::<ModelConfig>(SAMPLE).unwrap().inline_intra_op_threads, None);
        assert!(with("inline_intra_op_threads = 0", "").is_ok());
        assert!(with("inline_intra_op_threads = 2", "inline_run_limit_us = 500").is_ok());
        assert!(with("", "inline_run_limit_us = 0").is_ok());
        let e = with("inline_intra_op_threads = 0", "inline_run_limit_us = 0").unwrap_err();
        assert!(e.contains("inline_intra_op_threads") && e.contains("inline_run_limit_us = 0"), "{e}");
        assert!(with("inline_intra_op_threads = 0\ninline_intra_op_spinning = true", "").is_ok());
        let e = with("inline_intra_op_spinning = true", "").unwrap_err();
        assert!(e.contains("inline_intra_op_spinning") && e.contains("inline_intra_op_threads"), "{e}");
    }

    #[test]
    fn tensors_queues_and_images_past_what_can_be_served_are_refused() {
        let refused = |from: &str, to: &str| {
            let text = SAMPLE.replacen(from, to, 1);
            assert_ne!(text, SAMPLE, "{from} is in the sample");
            toml::from_str::<ModelConfig>(&text).unwrap().validate().unwrap_err()
        };
        let e = refused("max_queue_depth = 16", "max_queue_depth = 1000000");
        assert!(e.contains("between 1 and 65536"), "{e}");
        let e = refused("dims = [1]", "dims = [0]");
        assert!(e.contains("a dimension is at least 1, or -1"), "{e}");
        let e = refused("dims = [1]", "dims = [-2]");
        assert!(e.contains("holds -2"), "{e}");
        let e = refused("dims = [1]", "dims = [65536, 65536, 65536]");
        assert!(e.contains("more than 268435456 elements"), "{e}");
        let twice = "[[outputs]]\nname = \"p\"\ndatatype = \"FP32\"\ndims = [1]\n[[outputs]]";
        let e = refused("[[outputs]]", twice);
        assert!(e.contains("output 'p' is declared twice"), "{e}");
        let second = "[[inputs]]\nname = \"mask\"\ndatatype = \"FP32\"\ndims = [1]\n[[outputs]]";
        let e = refused("[[outputs]]", second);
        assert!(e.contains("preprocess feeds one image to a model with one input; this one declares 2"), "{e}");
        let e = refused("width = 4", "width = 100000");
        assert!(e.contains("at most 8192"), "{e}");
        // Images without a batch dimension: the prepared image is [1, C, H, W].
        let unbatched =
            SAMPLE.split("[dynamic_batching]").next().unwrap().replacen("max_batch_size = 8", "max_batch_size = 0", 1);
        let e = toml::from_str::<ModelConfig>(&unbatched).unwrap().validate().unwrap_err();
        assert!(e.contains("preprocess feeds images as a batch of one"), "{e}");
    }

    #[test]
    fn required_files_name_files_in_the_version_directory_once() {
        let with = |files: &str| {
            let text = SAMPLE.replace("version = 2", &format!("version = 2\nrequired_files = {files}"));
            toml::from_str::<ModelConfig>(&text).unwrap().validate()
        };
        assert_eq!(with(r#"["tokenizer.bin", "labels.txt"]"#), Ok(()));
        for bad in
            [r#"["../tokenizer.bin"]"#, r#"["sub/tokenizer.bin"]"#, r#"[".hidden"]"#, r#"["model.onnx"]"#, r#"[""]"#]
        {
            let e = with(bad).unwrap_err();
            assert!(e.contains("is not a file name in the version directory"), "{bad}: {e}");
        }
        let e = with(r#"["a.bin", "a.bin"]"#).unwrap_err();
        assert!(e.contains("names \"a.bin\" twice"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let bad = SAMPLE.replace("version = 2", "version = 2\nverison = 3");
        let err = toml::from_str::<ModelConfig>(&bad).unwrap_err().to_string();
        assert!(err.contains("verison"), "{err}");
    }

    #[test]
    fn version_policies_parse_select_and_validate() {
        let with = |policy: &str| SAMPLE.replace("version = 2", &format!("version = 2\nversion_policy = {policy}"));
        let parse = |policy: &str| toml::from_str::<ModelConfig>(&with(policy)).map(|c| c.version_policy);
        let found = [1, 2, 5, 7];
        assert_eq!(toml::from_str::<ModelConfig>(SAMPLE).unwrap().version_policy.select(&found), vec![7]);
        assert_eq!(parse("{ latest = 2 }").unwrap().select(&found), vec![5, 7]);
        assert_eq!(parse("{ latest = 9 }").unwrap().select(&found), vec![1, 2, 5, 7]);
        assert_eq!(parse("{ specific = [1, 5, 6] }").unwrap().select(&found), vec![1, 5]);
        assert_eq!(parse("\"all\"").unwrap().select(&found), vec![1, 2, 5, 7]);
        assert!(parse("{ newest = 1 }").is_err());
        let zero: ModelConfig = toml::from_str(&with("{ latest = 0 }")).unwrap();
        assert!(zero.validate().unwrap_err().contains("version_policy.latest"));
        let none: ModelConfig = toml::from_str(&with("{ specific = [] }")).unwrap();
        assert!(none.validate().unwrap_err().contains("version_policy.specific"));
    }
}
