//! One ONNX Runtime session that runs raw tensors.

use std::borrow::Cow;
use std::path::Path;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef};

use serde::{Deserialize, Serialize};

use crate::InferenceError;
use crate::config::ModelConfig;
use crate::tensor::{DataType, Tensor};

/// Where ONNX Runtime runs a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// The CPU (always there).
    #[default]
    Cpu,
    /// An NVIDIA GPU through CUDA: needs an ONNX Runtime library built with it (the
    /// `onnxruntime-gpu` wheel's) and a GPU; a model asked to run there fails to load otherwise.
    Cuda,
}

/// How a session is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// ONNX Runtime intra-op threads; 0: [`default_intra_op_threads`].
    pub intra_op_threads: usize,
    /// Whether idle intra-op threads spin for work.
    pub spinning: bool,
    pub provider: ExecutionProvider,
}

/// The intra-op threads of a session that leaves the choice to Vigil (`intra_op_threads = 0`):
/// one per CPU this process may use (its affinity and cgroup quota, as
/// `std::thread::available_parallelism` reads them), at most the host's physical cores, as
/// ONNX Runtime's own default. (Two CPUs that are one core's hyperthreads still get two.)
/// ONNX Runtime's default counts the host's cores and pins a thread to each: in a container
/// limited to 2 CPUs of a 64-core host it would start 64 spinning threads, and under `taskset`
/// its threads would leave the cores they were given. An explicit count starts no more threads
/// than that and pins none.
pub fn default_intra_op_threads() -> usize {
    let allowed = std::thread::available_parallelism().map_or(1, usize::from);
    num_cpus::get_physical().clamp(1, allowed)
}

impl SessionOptions {
    /// The intra-op threads the session starts with: the ones asked for, or
    /// [`default_intra_op_threads`] for 0.
    pub fn threads(&self) -> usize {
        match self.intra_op_threads {
            0 => default_intra_op_threads(),
            threads => threads,
        }
    }

    /// The cores a run of such a session keeps busy: its intra-op threads. A CUDA session
    /// claims every core: what it fills is its device, so another instance waits to fill its
    /// batch while it runs.
    pub fn cores(&self) -> usize {
        self.cores_with(self.threads())
    }

    /// [`SessionOptions::cores`] for a session of `threads` intra-op threads.
    fn cores_with(&self, threads: usize) -> usize {
        match self.provider {
            ExecutionProvider::Cuda => crate::batcher::machine_cores(),
            ExecutionProvider::Cpu => threads,
        }
    }
}

/// Starts a session's intra-op threads under the model's name (`ort-<model>`, cut to the 15
/// bytes Linux keeps), so `top -H`, `perf` and `/proc` tell them from the thread that loaded
/// the session, whose name they would inherit otherwise.
struct NamedThreads {
    name: String,
}

impl NamedThreads {
    /// glibc's default thread stack, which ONNX Runtime's own threads get.
    const STACK_BYTES: usize = 8 << 20;

    fn for_model(model: &str) -> Self {
        let mut name = format!("ort-{model}");
        while name.len() > 15 {
            name.pop();
        }
        Self { name }
    }
}

impl ort::environment::ThreadManager for NamedThreads {
    type Thread = std::thread::JoinHandle<()>;

    fn create(&self, work: impl FnOnce() + Send + 'static) -> ort::Result<Self::Thread> {
        std::thread::Builder::new()
            .name(self.name.clone())
            .stack_size(Self::STACK_BYTES)
            .spawn(work)
            .map_err(|e| ort::Error::new(format!("cannot start an ONNX Runtime thread: {e}")))
    }

    fn join(thread: Self::Thread) -> ort::Result<()> {
        thread.join().map_err(|_| ort::Error::new("an ONNX Runtime thread panicked"))
    }
}

/// Whether the file at `path` is in ONNX Runtime's own format (a FlatBuffer whose identifier,
/// bytes 4-8, is "ORTM") rather than an ONNX protobuf, whatever its name.
fn is_ort_format(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[4..8] == b"ORTM"
}

/// A loaded ONNX model with its declared inputs and outputs.
pub struct ModelSession {
    session: Session,
    input_names: Vec<String>,
    outputs: Vec<(String, DataType)>,
    /// The cores one run keeps busy (see [`crate::batcher::Runner::cores`]).
    cores: usize,
}

impl ModelSession {
    /// Loads `model.onnx` on the CPU and checks that the config's inputs and outputs exist in
    /// the graph.
    pub fn load(path: &Path, config: &ModelConfig, intra_op_threads: usize) -> Result<Self, InferenceError> {
        let options =
            SessionOptions { intra_op_threads, spinning: config.intra_op_spinning, provider: ExecutionProvider::Cpu };
        Self::load_with(path, config, options)
    }

    /// As [`ModelSession::load`], with the given threads and execution provider. The file may
    /// be an ONNX model or one in ONNX Runtime's format (`.ort`).
    pub fn load_with(path: &Path, config: &ModelConfig, options: SessionOptions) -> Result<Self, InferenceError> {
        let env = crate::runtime::environment(None)?;
        let mut builder = Session::builder(env)?;
        let threads = options.threads();
        builder = builder.with_intra_threads(threads).map_err(ort::Error::from)?;
        builder = builder.with_thread_manager(NamedThreads::for_model(&config.name)).map_err(ort::Error::from)?;
        builder = builder.with_intra_op_spinning(options.spinning).map_err(ort::Error::from)?;
        if is_ort_format(path) {
            builder = builder.with_config_entry("session.load_model_format", "ORT").map_err(ort::Error::from)?;
        }
        if options.provider == ExecutionProvider::Cuda {
            let cuda = ort::ep::CUDA::default().build().error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| {
                InferenceError::Config(format!(
                    "{}: execution_provider = \"cuda\" but CUDA is not available here ({e}); use an ONNX Runtime \
                     library with CUDA (the onnxruntime-gpu wheel) on a machine with an NVIDIA GPU, or \
                     execution_provider = \"cpu\"",
                    path.display()
                ))
            })?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| InferenceError::Config(format!("cannot load model {}: {e}", path.display())))?;
        for spec in &config.inputs {
            if !session.inputs().iter().any(|i| i.name() == spec.name) {
                return Err(InferenceError::Config(format!(
                    "{}: model.toml declares input '{}' but the graph's inputs are {:?}",
                    path.display(),
                    spec.name,
                    session.inputs().iter().map(|i| i.name()).collect::<Vec<_>>()
                )));
            }
        }
        for spec in &config.outputs {
            if !session.outputs().iter().any(|o| o.name() == spec.name) {
                return Err(InferenceError::Config(format!(
                    "{}: model.toml declares output '{}' but the graph's outputs are {:?}",
                    path.display(),
                    spec.name,
                    session.outputs().iter().map(|o| o.name()).collect::<Vec<_>>()
                )));
            }
        }
        if config.max_batch_size > 0 {
            // Requests are batched along the first dimension: the graph must take any size there.
            let declared = |name: &str| config.inputs.iter().chain(&config.outputs).any(|s| s.name == name);
            let outlets = session.inputs().iter().map(|i| (i.name(), i.dtype()));
            let outlets = outlets.chain(session.outputs().iter().map(|o| (o.name(), o.dtype())));
            for (name, dtype) in outlets.filter(|(name, _)| declared(name)) {
                let first = dtype.tensor_shape().and_then(|shape| shape.first().copied());
                if let Some(fixed) = first.filter(|&d| d >= 0 && (d != 1 || config.max_batch_size > 1)) {
                    return Err(InferenceError::Config(format!(
                        "{}: '{name}' has a fixed first dimension of {fixed} in the graph, but model.toml's \
                         max_batch_size = {} batches requests along it: export the model with a dynamic \
                         batch dimension, or set max_batch_size = 0 and give the full dims",
                        path.display(),
                        config.max_batch_size
                    )));
                }
            }
        }
        Ok(Self {
            session,
            input_names: config.inputs.iter().map(|s| s.name.clone()).collect(),
            outputs: config.outputs.iter().map(|s| (s.name.clone(), s.datatype)).collect(),
            cores: options.cores_with(threads),
        })
    }

    /// The cores one run keeps busy.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Runs the model on `inputs` (in the config's input order) and returns every declared output.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferenceError> {
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, tensor) in self.input_names.iter().zip(inputs) {
            values.push((Cow::Borrowed(name.as_str()), to_ort(tensor)?));
        }
        let outputs = self.session.run(values)?;
        let mut result = Vec::with_capacity(self.outputs.len());
        for (name, datatype) in &self.outputs {
            let value = outputs.get(name).ok_or_else(|| InferenceError::Runtime(format!("output '{name}' missing")))?;
            result.push(from_ort(value, *datatype)?);
        }
        Ok(result)
    }
}

fn le_values<T, const N: usize>(data: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N).map(|c| from(c.try_into().expect("chunk of N bytes"))).collect()
}

/// The input as ONNX Runtime sees it: a view of the request's own bytes when they are aligned
/// for `T`, else one aligned copy of them (a request's raw contents are views of the received
/// message, at any offset); on big-endian hosts a converted copy.
fn view_or_copy<'a, T, const N: usize>(
    shape: Vec<i64>,
    data: &'a [u8],
    from: fn([u8; N]) -> T,
) -> Result<SessionInputValue<'a>, InferenceError>
where
    T: ort::value::PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug,
{
    const { assert!(N == size_of::<T>(), "N is the size of T") };
    if cfg!(target_endian = "big") {
        return Ok(ort::value::Tensor::from_array((shape, le_values(data, from)))?.into());
    }
    match bytemuck::try_cast_slice::<u8, T>(data) {
        Ok(values) => Ok(TensorRef::from_array_view((shape, values))?.into()),
        // One copy into memory aligned for T, byte for byte (the length was checked against
        // the shape on arrival), written once: no zeroing first.
        Err(_) => {
            let values: Vec<T> = data.chunks_exact(N).map(bytemuck::pod_read_unaligned).collect();
            Ok(ort::value::Tensor::from_array((shape, values))?.into())
        }
    }
}

fn to_ort(t: &Tensor) -> Result<SessionInputValue<'_>, InferenceError> {
    use ort::value::Tensor as T;
    let shape = t.shape.clone();
    let d = &t.data[..];
    let value = match t.datatype {
        DataType::Fp32 => view_or_copy(shape, d, f32::from_le_bytes)?,
        DataType::Fp64 => view_or_copy(shape, d, f64::from_le_bytes)?,
        DataType::Int64 => view_or_copy(shape, d, i64::from_le_bytes)?,
        DataType::Int32 => view_or_copy(shape, d, i32::from_le_bytes)?,
        DataType::Int16 => view_or_copy(shape, d, i16::from_le_bytes)?,
        DataType::Int8 => view_or_copy(shape, d, i8::from_le_bytes)?,
        DataType::Uint64 => view_or_copy(shape, d, u64::from_le_bytes)?,
        DataType::Uint32 => view_or_copy(shape, d, u32::from_le_bytes)?,
        DataType::Uint16 => view_or_copy(shape, d, u16::from_le_bytes)?,
        DataType::Uint8 => TensorRef::from_array_view((shape, d))?.into(),
        DataType::Bool => T::from_array((shape, d.iter().map(|&b| b != 0).collect::<Vec<bool>>()))?.into(),
        DataType::Bytes => {
            let texts = t.texts()?;
            if let Some(i) = texts.iter().position(|text| text.contains('\0')) {
                return Err(InferenceError::invalid(format!(
                    "BYTES element {i} contains a NUL character, which ONNX Runtime strings cannot hold"
                )));
            }
            let owned: Vec<String> = texts.into_iter().map(str::to_owned).collect();
            T::from_string_array((shape, owned.as_slice()))?.into()
        }
        other => {
            return Err(InferenceError::invalid(format!(
                "datatype {other} is not supported by the ONNX Runtime backend"
            )));
        }
    };
    Ok(value)
}

fn from_ort(value: &DynValue, declared: DataType) -> Result<Tensor, InferenceError> {
    /// A numeric output's contents in little-endian bytes: one copy on a little-endian machine
    /// (a speech decoder's 32,768 logits a step: 3 µs, where writing them value by value took 27).
    fn pack<T, const N: usize>(
        value: &DynValue,
        datatype: DataType,
        to: fn(T) -> [u8; N],
    ) -> Result<Tensor, InferenceError>
    where
        T: ort::value::PrimitiveTensorElementType + bytemuck::Pod,
    {
        let (shape, values) = value.try_extract_tensor::<T>()?;
        Ok(Tensor { datatype, shape: shape.to_vec(), data: crate::tensor::le_bytes(values, to).into() })
    }
    let actual = value.dtype().tensor_type();
    let tensor = match actual {
        Some(TensorElementType::Float32) => pack(value, DataType::Fp32, f32::to_le_bytes)?,
        Some(TensorElementType::Float64) => pack(value, DataType::Fp64, f64::to_le_bytes)?,
        Some(TensorElementType::Int64) => pack(value, DataType::Int64, i64::to_le_bytes)?,
        Some(TensorElementType::Int32) => pack(value, DataType::Int32, i32::to_le_bytes)?,
        Some(TensorElementType::Int16) => pack(value, DataType::Int16, i16::to_le_bytes)?,
        Some(TensorElementType::Int8) => pack(value, DataType::Int8, i8::to_le_bytes)?,
        Some(TensorElementType::Uint64) => pack(value, DataType::Uint64, u64::to_le_bytes)?,
        Some(TensorElementType::Uint32) => pack(value, DataType::Uint32, u32::to_le_bytes)?,
        Some(TensorElementType::Uint16) => pack(value, DataType::Uint16, u16::to_le_bytes)?,
        Some(TensorElementType::Uint8) => pack(value, DataType::Uint8, u8::to_le_bytes)?,
        Some(TensorElementType::Bool) => {
            let (shape, values) = value.try_extract_tensor::<bool>()?;
            Tensor {
                datatype: DataType::Bool,
                shape: shape.to_vec(),
                data: values.iter().map(|&b| u8::from(b)).collect(),
            }
        }
        Some(TensorElementType::String) => {
            let (shape, strings) = value.try_extract_strings()?;
            Tensor::from_bytes_elements(shape.to_vec(), &strings)
        }
        other => {
            return Err(InferenceError::Runtime(format!("unsupported output type {other:?}")));
        }
    };
    if tensor.datatype != declared {
        return Err(InferenceError::Config(format!(
            "model.toml declares an output as {declared} but the graph produces {}",
            tensor.datatype
        )));
    }
    Ok(tensor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight values for the typed-outputs fixture, two items of four.
    const TYPED_INPUT: [f32; 8] = [-1.5, 0.0, 2.25, 7.75, 3.0, -0.25, 1e-3, -7.5];

    /// The fixture model with an output of each kind, on one intra-op thread.
    fn typed_outputs() -> ModelSession {
        typed_outputs_on(1)
    }

    /// The same fixture on `intra_op_threads` threads (0: the default).
    fn typed_outputs_on(intra_op_threads: usize) -> ModelSession {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/typed-outputs");
        let config = ModelConfig::load(&dir.join("model.toml")).unwrap();
        ModelSession::load(&dir.join("model.onnx"), &config, intra_op_threads).unwrap()
    }

    #[test]
    fn a_graph_with_a_fixed_batch_dimension_is_refused_when_requests_are_batched_along_it() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let config = |max_batch_size: usize| -> ModelConfig {
            toml::from_str(&format!(
                "name = \"m\"\nversion = 1\nplatform = \"onnxruntime_onnx\"\nmax_batch_size = {max_batch_size}\n\
                 [[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [4]\n\
                 [[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [4]\n"
            ))
            .unwrap()
        };
        let fixed = fixtures.join("fixed-batch/model.onnx");
        let e = ModelSession::load(&fixed, &config(8), 1).err().expect("refused").to_string();
        assert!(e.contains("'x' has a fixed first dimension of 1") && e.contains("max_batch_size = 8"), "{e}");
        // One request of one item at a time fits the fixed dimension.
        ModelSession::load(&fixed, &config(1), 1).unwrap();
        // A graph with a dynamic first dimension takes any batch.
        let mut typed = config(8);
        typed.outputs[0].name = "same".into();
        ModelSession::load(&fixtures.join("typed-outputs/model.onnx"), &typed, 1).unwrap();
    }

    #[test]
    fn every_output_kind_comes_back_as_its_little_endian_bytes() {
        let mut session = typed_outputs();
        let x = TYPED_INPUT;
        let outputs = session.run(&[Tensor::from_f32(vec![2, 4], &x)]).unwrap();
        let kinds: Vec<DataType> = outputs.iter().map(|t| t.datatype).collect();
        assert_eq!(kinds, [DataType::Fp32, DataType::Fp64, DataType::Int64, DataType::Int32, DataType::Bool]);
        assert!(outputs.iter().all(|t| t.shape == [2, 4]), "{outputs:?}");
        let bytes = |values: Vec<Vec<u8>>| values.concat();
        assert_eq!(outputs[0].data[..], bytes(x.iter().map(|v| v.to_le_bytes().to_vec()).collect()));
        let doubled = x.iter().map(|&v| (f64::from(v) * 2.0).to_le_bytes().to_vec()).collect();
        assert_eq!(outputs[1].data[..], bytes(doubled));
        assert_eq!(outputs[2].data[..], bytes(x.iter().map(|v| (v.floor() as i64).to_le_bytes().to_vec()).collect()));
        assert_eq!(outputs[3].data[..], bytes(x.iter().map(|v| (v.floor() as i32).to_le_bytes().to_vec()).collect()));
        assert_eq!(outputs[4].data[..], x.iter().map(|&v| u8::from(v > 0.0)).collect::<Vec<u8>>());
    }

    #[test]
    fn inputs_at_any_offset_of_a_received_message_run_as_their_values() {
        let mut session = typed_outputs();
        let x = TYPED_INPUT;
        let aligned = session.run(&[Tensor::from_f32(vec![2, 4], &x)]).unwrap();
        // Raw contents are views of the message that carried them, at whatever offset they sit.
        for offset in 1..=3 {
            let mut message = vec![0xee_u8; offset];
            message.extend(x.iter().flat_map(|v| v.to_le_bytes()));
            let data = bytes::Bytes::from(message).slice(offset..);
            assert_ne!(data.as_ptr() as usize % align_of::<f32>(), 0, "offset {offset} is not misaligned");
            let outputs = session.run(&[Tensor { datatype: DataType::Fp32, shape: vec![2, 4], data }]).unwrap();
            assert_eq!(outputs.len(), aligned.len());
            for (got, want) in outputs.iter().zip(&aligned) {
                assert_eq!((got.datatype, &got.shape, &got.data), (want.datatype, &want.shape, &want.data));
            }
        }
    }

    #[test]
    fn a_run_keeps_its_threads_busy_and_a_gpu_takes_every_core() {
        let cpu =
            |intra_op_threads| SessionOptions { intra_op_threads, spinning: true, provider: ExecutionProvider::Cpu };
        assert_eq!(cpu(1).cores(), 1);
        assert_eq!(cpu(3).cores(), 3);
        assert_eq!(cpu(0).cores(), default_intra_op_threads());
        assert_eq!(
            SessionOptions { provider: ExecutionProvider::Cuda, ..cpu(1) }.cores(),
            crate::batcher::machine_cores()
        );
        assert_eq!(typed_outputs().cores(), 1);
        let allowed = std::thread::available_parallelism().unwrap().get();
        assert!((1..=allowed.min(num_cpus::get_physical())).contains(&default_intra_op_threads()));
    }

    /// A thread's allowed CPUs, as the kernel lists them; None once it has exited.
    fn cpus_allowed(status: &Path) -> Option<String> {
        let status = std::fs::read_to_string(status).ok()?;
        let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
        Some(line["Cpus_allowed_list:".len()..].trim().to_string())
    }

    #[test]
    fn the_default_threads_stay_on_the_cores_they_were_given() {
        use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
        use nix::unistd::Pid;
        // On a thread of its own restricted to one CPU, as `taskset -c N` or a cpuset would.
        std::thread::spawn(|| {
            let process = cpus_allowed(Path::new("/proc/thread-self/status")).unwrap();
            let mask = sched_getaffinity(Pid::from_raw(0)).unwrap();
            let first = (0..CpuSet::count()).find(|&cpu| mask.is_set(cpu).unwrap()).unwrap();
            let mut one = CpuSet::new();
            one.set(first).unwrap();
            sched_setaffinity(Pid::from_raw(0), &one).unwrap();
            let restricted = cpus_allowed(Path::new("/proc/thread-self/status")).unwrap();
            assert_eq!(restricted, first.to_string());

            assert_eq!(default_intra_op_threads(), 1);
            let mut session = typed_outputs_on(0);
            assert_eq!(session.cores(), 1, "a run claims the one core this thread may use");
            let outputs = session.run(&[Tensor::from_f32(vec![2, 4], &TYPED_INPUT)]).unwrap();
            assert_eq!(outputs[0].data[..], *bytemuck::cast_slice::<f32, u8>(&TYPED_INPUT));
            // ONNX Runtime's default would pin a thread per host core, whatever this thread was
            // given; every thread of the process keeps the process's CPUs or this thread's.
            // (Threads of other tests may exit while this one reads.)
            for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                if let Some(allowed) = cpus_allowed(&task.path().join("status")) {
                    assert!(allowed == process || allowed == restricted, "a thread pinned to CPUs {allowed}");
                }
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn onnx_runtime_threads_carry_the_model_name() {
        assert_eq!(NamedThreads::for_model("typed-outputs").name, "ort-typed-outpu");
        assert_eq!(NamedThreads::for_model("vad").name, "ort-vad");
        let named = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter(|task| {
                    let comm = std::fs::read_to_string(task.as_ref().unwrap().path().join("comm")).unwrap_or_default();
                    comm.trim_end() == "ort-typed-outpu"
                })
                .count()
        };
        let before = named();
        let mut session = typed_outputs_on(3);
        // Three intra-op threads: the caller's and two of ONNX Runtime's own. A new thread names
        // itself once it runs, so the names may lag the load by a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while named() < before + 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(named(), before + 2, "threads named after the model, {before} before");
        let outputs = session.run(&[Tensor::from_f32(vec![2, 4], &TYPED_INPUT)]).unwrap();
        assert_eq!(outputs[0].data[..], *bytemuck::cast_slice::<f32, u8>(&TYPED_INPUT));
    }

    #[test]
    fn the_ort_format_is_told_by_content_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let ort = dir.path().join("model.onnx");
        std::fs::write(&ort, b"\x1c\x00\x00\x00ORTM\x00\x00").unwrap();
        assert!(is_ort_format(&ort));
        let onnx = dir.path().join("model.ort");
        std::fs::write(&onnx, b"\x08\x07\x12\x07pytorch").unwrap();
        assert!(!is_ort_format(&onnx));
        assert!(!is_ort_format(&dir.path().join("missing")));
        let short = dir.path().join("short");
        std::fs::write(&short, b"ORT").unwrap();
        assert!(!is_ort_format(&short));
    }
}
