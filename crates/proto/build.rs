//! Compiles every contract in `proto/` with a vendored protoc, so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };

    // Read at run time: a build script binary can be reused from a checkout at another path.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "inference/grpc_service.proto",
        "inference/model_config.proto",
        "vigil/v1/inspection.proto",
        "vigil/v1/records.proto",
        "vigil/v1/predictions.proto",
        "vigil/v1/monitoring.proto",
        "vigil/v1/rollups.proto",
        "vigil/v1/control.proto",
        "vigil/v1/voice_search.proto",
    ];
    let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("vigil_descriptor.bin");
    // Tensor contents as `bytes::Bytes`: decoded as views of the received message, not copies.
    // Type names: the codec finds each received message's schema by its full name.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .file_descriptor_set_path(&descriptor)
        // Received messages' decoded size is bounded and charged before they are decoded.
        .codec_path("crate::codec::BoundedCodec")
        .compile_with_config(config, &paths, &[root])?;
    Ok(())
}
