//! `model.toml` text: `toml::from_str::<ModelConfig>` then `ModelConfig::validate` (as `ModelConfig::load` does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_inference::config::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = toml::from_str::<ModelConfig>(text) {
        let _ = config.validate();
        let _ = config.batching();
    }
});
