//! `mesh-control`: the control plane of the mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mesh_control::server::{serve, ServeOptions};
use mesh_control::store::{EmbeddedStore, EtcdStore, SharedStore};

#[derive(Parser)]
#[command(name = "mesh-control", version, about = "Control plane of the mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve agents and meshctl.
    Serve {
        /// gRPC address for agents and meshctl.
        #[arg(long, default_value = "127.0.0.1:15010")]
        listen: SocketAddr,
        /// Where the admin token (and the embedded store, by default) live.
        #[arg(long, default_value = "/var/lib/mesh-control")]
        data_dir: PathBuf,
        /// `embedded[:PATH]` (default: DATA_DIR/store.redb) or `etcd://HOST:PORT[,HOST:PORT...]`.
        #[arg(long, default_value = "embedded")]
        store: String,
        /// This replica's name in status output [default: the listen address].
        #[arg(long)]
        replica: Option<String>,
        /// An operator-supplied root CA certificate (PEM): agents trust it, and the control
        /// plane signs with an intermediate it makes under it. Needs --ca-key. Only read
        /// when the store holds no CA yet (or to check it is this mesh's root).
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The key of --ca-cert (unencrypted PKCS#8 PEM); used once to sign the
        /// intermediate, never stored.
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Client connections served at once (each agent holds one); past it, new
        /// connections are closed at once and a warning is logged. Lowered to fit the
        /// open-file limit.
        #[arg(long, default_value_t = mesh_control::server::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
        /// A PEM bundle of certificate authorities that the servers of RequestAuthentication
        /// `jwksUri`s must chain to (repeatable). Nothing else is trusted: for public issuers
        /// pass the system bundle (e.g. /etc/ssl/certs/ca-certificates.crt).
        #[arg(long = "jwks-ca", value_name = "FILE")]
        jwks_ca: Vec<PathBuf>,
        /// How often each `jwksUri` is fetched again (a failed fetch is retried sooner).
        #[arg(long, default_value_t = mesh_control::server::jwks::DEFAULT_REFRESH.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
        jwks_refresh_secs: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Cli::parse().command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve {
            listen,
            data_dir,
            store,
            replica,
            ca_cert,
            ca_key,
            max_connections,
            jwks_ca,
            jwks_refresh_secs,
        } => {
            let ca_root = match (ca_cert, ca_key) {
                (Some(cert), Some(key)) => Some(mesh_control::server::ca::OperatorRoot {
                    cert_pem: std::fs::read_to_string(&cert)
                        .with_context(|| format!("reading --ca-cert {}", cert.display()))?,
                    key_pem: std::fs::read_to_string(&key)
                        .with_context(|| format!("reading --ca-key {}", key.display()))?,
                }),
                _ => None,
            };
            let store = open_store(&store, &data_dir).await?;
            let replica = replica.unwrap_or_else(|| listen.to_string());
            serve(
                store,
                ServeOptions {
                    listen,
                    data_dir,
                    replica,
                    ca_root,
                    max_connections: max_connections as usize,
                    jwks: mesh_control::server::jwks::JwksOptions {
                        ca_files: jwks_ca,
                        refresh: std::time::Duration::from_secs(jwks_refresh_secs),
                    },
                },
            )
            .await
        }
    }
}

async fn open_store(spec: &str, data_dir: &std::path::Path) -> Result<SharedStore> {
    if spec == "embedded" {
        return Ok(Arc::new(EmbeddedStore::open(&data_dir.join("store.redb"))?));
    }
    if let Some(path) = spec.strip_prefix("embedded:") {
        return Ok(Arc::new(EmbeddedStore::open(std::path::Path::new(path))?));
    }
    if let Some(endpoints) = spec.strip_prefix("etcd://") {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            bail!("--store etcd:// needs at least one HOST:PORT");
        }
        let store = EtcdStore::connect(endpoints)
            .await
            .context("connecting to etcd")?;
        return Ok(Arc::new(store));
    }
    bail!("--store {spec:?}: expected embedded, embedded:PATH or etcd://HOST:PORT[,...]")
}
