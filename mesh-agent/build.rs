//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is built by a separate nightly toolchain for another target, so it cannot be a
//! normal dependency; this script points `include_bytes!` at it and fails with the command
//! to run when it is missing.

use std::path::PathBuf;

fn main() {
    let object = match std::env::var_os("MESH_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/bpfel-unknown-none/release/mesh-ebpf"),
    };
    println!("cargo:rerun-if-env-changed=MESH_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "eBPF object {} is missing: run `cargo xtask build-ebpf` first",
            object.display()
        );
    }
    println!("cargo:rustc-env=MESH_EBPF_OBJECT={}", object.display());
}
