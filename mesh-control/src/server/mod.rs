//! `mesh-control serve`: one replica of the control plane.

mod admin;
pub mod auth;
pub mod ca;
pub mod cache;
mod distribution;
mod metrics;

pub use admin::canonical_kind;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use mesh_proto::v1::config_distribution_server::ConfigDistributionServer;
use mesh_proto::v1::mesh_admin_server::MeshAdminServer;

use crate::store::SharedStore;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// This replica's name in status output.
    pub replica: String,
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
    let metrics = Arc::new(metrics::ServerMetrics::default());
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let distribution = distribution::Distribution {
        cache: cache.clone(),
        store: store.clone(),
        replica: options.replica.clone(),
        metrics: metrics.clone(),
        stopping: stopping.clone(),
    };
    let admin = admin::Admin {
        cache: cache.clone(),
        store: store.clone(),
        replica: options.replica.clone(),
        metrics,
        apply_lock: tokio::sync::Mutex::new(()),
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    tracing::info!(
        listen = %options.listen,
        store = %store.describe(),
        token_file = %token_file.display(),
        version = cache.version(),
        "control plane serving"
    );
    let server = tonic::transport::Server::builder()
        .add_service(
            ConfigDistributionServer::new(distribution)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(MeshAdminServer::with_interceptor(
            admin,
            auth::TokenCheck { token },
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            },
        );
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
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
}
