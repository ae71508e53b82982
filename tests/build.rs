//! Generates pod-tool's gRPC test service (proto/podtool.proto), as mesh-proto does for the
//! mesh's own API.

fn main() {
    let proto = "proto/podtool.proto";
    println!("cargo:rerun-if-changed={proto}");
    // PROTOC comes from .cargo/config.toml (tools/protoc); fall back to the vendored binary
    // directly when built some other way.
    if std::env::var_os("PROTOC").is_none() {
        if let Ok(path) = protoc_bin_vendored::protoc_bin_path() {
            // SAFETY: build scripts are single-threaded.
            unsafe { std::env::set_var("PROTOC", path) };
        }
    }
    tonic_prost_build::configure()
        .compile_protos(&[proto], &["proto"])
        .expect("compiling proto/podtool.proto");
}
