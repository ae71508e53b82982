//! Generates the gRPC client and server code from proto/mesh.proto.

fn main() {
    let proto = "../proto/mesh.proto";
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
        .compile_protos(&[proto], &["../proto"])
        .expect("compiling proto/mesh.proto");
}
