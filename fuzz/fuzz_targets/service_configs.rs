//! TOML text as the edge, cloud and monitor config files: parsed (plain and layered over the defaults) and validated.
#![no_main]

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use libfuzzer_sys::fuzz_target;
use vigil_cloud::CloudConfig;
use vigil_edge::EdgeConfig;
use vigil_monitor::MonitorConfig;
use vigil_server::cli::ServerConfig;

/// The file alone, then the file over the built-in defaults as `ServerConfig::load` layers it
/// (without the environment); each config that comes out is validated.
fn server_config<T: ServerConfig>(text: &str) {
    if let Ok(config) = toml::from_str::<T>(text) {
        let _ = config.validate();
    }
    let layered = Figment::from(Serialized::defaults(T::default())).merge(Toml::string(text));
    if let Ok(config) = layered.extract::<T>() {
        let _ = config.validate();
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    server_config::<EdgeConfig>(text);
    server_config::<CloudConfig>(text);
    if let Ok(config) = toml::from_str::<MonitorConfig>(text) {
        let _ = config.validate();
    }
});
