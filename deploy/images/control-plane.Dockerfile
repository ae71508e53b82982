# syntax=docker/dockerfile:1
# The control plane image: mesh-control and meshctl (for `kubectl exec ... meshctl`). Build
# from the repository root:
#
#   docker build -f deploy/images/control-plane.Dockerfile -t mesh-control:0.1.0 .
#
# No eBPF here: mesh-control does not depend on the agent crate.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mesh-control --bin meshctl \
 && install -D -m 0755 -t /out target/release/mesh-control target/release/meshctl

FROM debian:bookworm-slim
# ca-certificates: the system bundle, for `--jwks-ca /etc/ssl/certs/ca-certificates.crt`
# when RequestAuthentication jwksUris point at public issuers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The data dir belongs to an unprivileged user; the manifests run as this uid too.
RUN mkdir -p /var/lib/mesh-control && chown 65532:65532 /var/lib/mesh-control
USER 65532:65532
ENTRYPOINT ["mesh-control"]
CMD ["serve", "--listen", "0.0.0.0:15010", "--data-dir", "/var/lib/mesh-control"]
