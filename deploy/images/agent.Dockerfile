# syntax=docker/dockerfile:1
# The node agent image: mesh-agent (with the eBPF object embedded at build time) and mesh-cni
# (which the DaemonSet's init container copies onto the node). Build from the repository root:
#
#   docker build -f deploy/images/agent.Dockerfile -t mesh-agent:0.1.0 .
#
# The eBPF object needs a nightly toolchain with rust-src and a bpf-linker built against
# nightly's LLVM; `cargo xtask build-ebpf` installs both (as on a developer's machine) and
# leaves the object where mesh-agent's build script embeds it from
# (target/bpfel-unknown-none/release/mesh-ebpf).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the registry, bpf-linker's build and target/ between builds; the binaries
# are copied out in the same step, since the target/ cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask build-ebpf \
 && cargo build --release --locked --bin mesh-agent --bin mesh-cni \
 && install -D -m 0755 -t /out target/release/mesh-agent target/release/mesh-cni

FROM debian:bookworm-slim
# Nothing else is needed at run time: the binaries link only glibc, TLS is rustls, and
# /bin/sh runs the DaemonSet's start script. Runs as root with the capabilities the
# DaemonSet grants (see deploy/agent/daemonset.yaml).
COPY --from=build /out/ /usr/local/bin/
ENTRYPOINT ["mesh-agent"]
CMD ["run"]
