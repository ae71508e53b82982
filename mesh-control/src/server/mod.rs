//! `mesh-control serve`: one replica of the control plane.

mod admin;
pub mod auth;
pub mod ca;
mod ca_view;
pub mod cache;
mod change_check;
mod distribution;
mod http_rule_warnings;
pub mod identity;
pub mod jwks;
mod metrics;
pub mod tls;
pub mod tokens;

pub use admin::{canonical_kind, SECURITY_RULE_KINDS};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_proto::limits::grpc::{CountCallsLayer, ResponseDeadline};
use mesh_proto::limits::ConnectionLimit;
use mesh_proto::v1::config_distribution_server::ConfigDistributionServer;
use mesh_proto::v1::mesh_admin_server::MeshAdminServer;
use mesh_proto::v1::node_identity_server::NodeIdentityServer;

use crate::store::SharedStore;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// This replica's name in status output.
    pub replica: String,
    /// An operator-supplied root (`--ca-cert`, `--ca-key`): the CA then signs with an
    /// intermediate under it.
    pub ca_root: Option<ca::OperatorRoot>,
    /// Connections served at once (`--max-connections`); past it new ones are closed.
    pub max_connections: usize,
    /// Fetching `jwksUri`s: trusted CAs and refresh interval.
    pub jwks: jwks::JwksOptions,
}

/// `--max-connections` by default: one connection per agent (plus a few short-lived ones
/// for certificate signing and meshctl), so a replica serves a few thousand nodes.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Descriptors kept for everything else than client connections (store, etcd, files).
const RESERVED_FILES: u64 = 256;
/// HTTP/2 pings on every connection, answered within the timeout or the connection closes:
/// how a dead agent (power loss, partition) gives its stream and descriptor back.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// From a call's request headers to its response headers, for the services that answer
/// clients without the admin token (`ResponseDeadline`): without it a client that sends the
/// headers of a call (Join needs no certificate) and never its body holds the call in flight,
/// and the connection open, for good. A streaming response (the config stream) goes on as
/// long as it likes once it has started.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `requested`, lowered (with a warning) to what the open-file limit allows, so that the
/// connection limit is reached before descriptors run out.
fn connection_limit(requested: usize) -> usize {
    let Some(files) = mesh_proto::limits::raise_open_file_limit() else {
        return requested;
    };
    let allowed = files.saturating_sub(RESERVED_FILES).max(1);
    if requested as u64 > allowed {
        tracing::warn!(
            requested,
            allowed,
            open_file_limit = files,
            "--max-connections is above what the open-file limit allows; using the lower value \
             (raise `ulimit -n` to serve more)"
        );
        return allowed as usize;
    }
    requested
}

/// The mesh-wide settings in effect: the stored MeshConfig, or the defaults.
pub fn mesh_config_spec(cache: &cache::ConfigCache) -> mesh_api::MeshConfigSpec {
    cache
        .resources_under(&format!("{}MeshConfig/", crate::keys::RESOURCES))
        .iter()
        .find_map(|c| match &*c.resource {
            mesh_api::Resource::MeshConfig(config) => Some(config.spec.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Writes the trust bundle for operators and meshctl: `<data-dir>/ca.pem`, mode 0644.
fn write_bundle_file(path: &std::path::Path, pem: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, pem).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub use mesh_proto::MAX_MESSAGE;

pub async fn serve(store: SharedStore, options: ServeOptions) -> Result<()> {
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating the data dir {}", options.data_dir.display()))?;
    let token = auth::admin_token(&store).await?;
    let token_file = options.data_dir.join("admin.token");
    auth::write_token_file(&token_file, &token)?;
    let cache = cache::ConfigCache::start(store.clone())
        .await
        .context("loading the store")?;
    let jwks_status = jwks::start(cache.clone(), store.clone(), options.jwks)
        .context("starting the jwksUri fetcher")?;
    let ca = ca::Ca::start(
        store.clone(),
        options.ca_root,
        &mesh_config_spec(&cache).trust_domain,
    )
    .await
    .context("loading the CA")?;
    let bundle_file = options.data_dir.join("ca.pem");
    write_bundle_file(&bundle_file, &ca.trust_bundle_pem())?;
    {
        let mut changes = ca.subscribe();
        let bundle_file = bundle_file.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let pem = changes.borrow_and_update().bundle_pem.clone();
                if let Err(e) = write_bundle_file(&bundle_file, &pem) {
                    tracing::error!(error = %format!("{e:#}"), "updating the trust bundle file failed");
                }
            }
        });
    }
    let server_tls = tls::ServerTls::start(ca.clone(), cache.clone(), options.listen)
        .context("issuing the control plane's serving certificate")?;
    let metrics = Arc::new(metrics::ServerMetrics::default());
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let distribution = distribution::Distribution {
        cache: cache.clone(),
        store: store.clone(),
        replica: options.replica.clone(),
        metrics: metrics.clone(),
        stopping: stopping.clone(),
        ca: ca.clone(),
    };
    let identity = identity::Identity {
        cache: cache.clone(),
        store: store.clone(),
        ca: ca.clone(),
    };
    let admin = admin::Admin {
        cache: cache.clone(),
        store: store.clone(),
        replica: options.replica.clone(),
        metrics,
        apply_lock: tokio::sync::Mutex::new(()),
        ca,
        jwks: jwks_status,
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let limit = ConnectionLimit::new(
        format!("control plane {}", options.listen),
        connection_limit(options.max_connections),
    );
    tracing::info!(
        listen = %options.listen,
        max_connections = limit.max(),
        store = %store.describe(),
        token_file = %token_file.display(),
        trust_bundle = %bundle_file.display(),
        version = cache.version(),
        "control plane serving"
    );
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(CountCallsLayer::<tls::PeerInfo>::new())
        .add_service(ResponseDeadline::new(
            ConfigDistributionServer::new(distribution)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            CALL_TIMEOUT,
        ))
        .add_service(ResponseDeadline::new(
            NodeIdentityServer::new(identity),
            CALL_TIMEOUT,
        ))
        .add_service(MeshAdminServer::with_interceptor(
            admin,
            auth::TokenCheck { token },
        ))
        .serve_with_incoming_shutdown(server_tls.incoming(listener, limit), async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
    // The graceful drain waits for every open call; agent streams end when told to stop, but
    // an admin watch never ends by itself: bound the wait.
    let mut stopped = stopping;
    let drain_deadline = async move {
        let _ = stopped.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = server => served.context("serving gRPC"),
        _ = drain_deadline => {
            tracing::warn!("calls still open after {DRAIN_TIMEOUT:?}; exiting anyway");
            Ok(())
        }
    }
}

/// How long a stopping replica waits for open calls to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
}
