//! OIP `ModelInferRequest` bytes -> prost decode -> `decode_inputs` (raw and typed contents to tensors) per model.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use vigil_inference::config::ModelConfig;
use vigil_proto::inference::ModelInferRequest;
use vigil_serving::oip::decode_inputs;

/// A batched model with the typed-contents datatypes the repository's models lack.
const TEXT_MODEL: &str = r#"
name = "text-classifier"
version = 1
max_batch_size = 8
[[inputs]]
name = "text"
datatype = "BYTES"
dims = [1]
[[inputs]]
name = "ids"
datatype = "INT64"
dims = [-1]
[[inputs]]
name = "mask"
datatype = "INT8"
dims = [-1]
[[inputs]]
name = "weights"
datatype = "FP64"
dims = [2]
[[inputs]]
name = "flags"
datatype = "BOOL"
dims = [1]
[[outputs]]
name = "scores"
datatype = "FP32"
dims = [2]
"#;

static MODELS: LazyLock<Vec<ModelConfig>> = LazyLock::new(|| {
    [
        include_str!("../../models/scratch-detector/1/model.toml"),
        include_str!("../../deploy/cloud-models/silero-vad/1/model.toml"),
        TEXT_MODEL,
    ]
    .iter()
    .map(|text| toml::from_str(text).expect("the fuzz target's model.toml parses"))
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ModelInferRequest::decode(data) else { return };
    for config in MODELS.iter() {
        let _ = decode_inputs(config, &mut request.clone());
    }
});
