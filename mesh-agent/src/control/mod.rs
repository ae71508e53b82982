//! Following the control plane: one gRPC stream (mutual TLS with the node certificate,
//! `bootstrap.rs`, over `channel.rs`), config pushes applied (ACK) or refused (NACK, keeping
//! the last good config), trust bundles applied as they come, health reports sent up,
//! reconnection with backoff to any of the control-plane replicas, resuming from the version
//! the agent has.

pub mod bootstrap;
pub mod channel;
mod state;

pub use bootstrap::{ControlPlaneSigner, NodeIdentity};
pub use state::{ConfigCacheFile, ConfigState};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mesh_api::{ObjectKey, Snapshot};
use mesh_proto::v1::agent_message::Message;
use mesh_proto::v1::config_distribution_client::ConfigDistributionClient;
use mesh_proto::v1::{Ack, AgentMessage, ConfigPush, EndpointHealth, HealthReport, Hello, Nack};
use mesh_proto::MAX_MESSAGE;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;

use crate::agent::Agent;

pub struct ControlPlane {
    urls: Vec<String>,
    identity: Arc<NodeIdentity>,
    state: Mutex<ConfigState>,
    cache: ConfigCacheFile,
    cache_dirty: Notify,
}

impl ControlPlane {
    pub fn new(
        urls: Vec<String>,
        identity: Arc<NodeIdentity>,
        cached: ConfigState,
        cache: ConfigCacheFile,
    ) -> Arc<ControlPlane> {
        Arc::new(ControlPlane {
            urls,
            identity,
            state: Mutex::new(cached),
            cache,
            cache_dirty: Notify::new(),
        })
    }

    /// Serves forever: connect, follow, and on any failure reconnect (next replica, backoff
    /// with jitter up to 5 s). The data plane keeps its last good config meanwhile.
    pub async fn run(self: Arc<Self>, agent: Arc<Agent>) {
        tokio::spawn(self.clone().save_cache_when_dirty());
        let mut backoff = Duration::from_millis(100);
        for attempt in 0.. {
            let url = &self.urls[attempt % self.urls.len()];
            let started = std::time::Instant::now();
            match self.follow(&agent, url).await {
                Ok(()) => tracing::warn!(%url, "control plane closed the stream"),
                Err(e) => {
                    tracing::warn!(%url, error = %format!("{e:#}"), "control plane stream failed")
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100); // it was healthy for a while
            }
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow(&self, agent: &Agent, url: &str) -> Result<()> {
        let (channel, _) = channel::connect(url, self.identity.client_config()?).await?;
        let mut client = ConfigDistributionClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let (tx, rx) = mpsc::channel(16);
        let version = self.state.lock().version;
        send(
            &tx,
            Message::Hello(Hello {
                node: agent.node.clone(),
                version,
                agent_version: env!("CARGO_PKG_VERSION").into(),
            }),
        )
        .await?;
        let mut pushes = client
            .stream_config(ReceiverStream::new(rx))
            .await
            .context("opening the config stream")?
            .into_inner();
        tracing::info!(%url, version, "following the control plane");
        // Health this stream has not been told yet: everything, on a new stream.
        let mut reported: BTreeMap<String, EndpointHealth> = BTreeMap::new();
        loop {
            let changed = agent.health_changed.notified();
            let unreported = unreported_health(agent, &reported);
            if !unreported.is_empty() {
                for h in &unreported {
                    reported.insert(state::health_id(h), h.clone());
                }
                send(
                    &tx,
                    Message::Health(HealthReport {
                        endpoints: unreported,
                    }),
                )
                .await?;
            }
            tokio::select! {
                push = pushes.message() => {
                    let Some(push) = push.context("receiving a push")? else {
                        return Ok(());
                    };
                    let answer = match self.apply(agent, url, &push) {
                        Ok(()) => Message::Ack(Ack { version: push.version, nonce: push.nonce }),
                        Err(e) => {
                            let error = format!("{e:#}");
                            tracing::error!(version = push.version, %error, "config push rejected; keeping the last good config");
                            Message::Nack(Nack { version: push.version, nonce: push.nonce, error })
                        }
                    };
                    send(&tx, answer).await?;
                }
                _ = changed => {}
            }
        }
    }

    /// Applies a push to the data plane, or changes nothing and says why. A trust bundle in
    /// it is applied first, whatever becomes of the config.
    fn apply(&self, agent: &Agent, url: &str, push: &ConfigPush) -> Result<()> {
        if !push.trust_bundle_pem.is_empty() {
            self.identity
                .set_trust_bundle_pem(&push.trust_bundle_pem)
                .context("the pushed trust bundle")?;
            agent
                .identities
                .set_trust_bundle_pem(&push.trust_bundle_pem)
                .context("the pushed trust bundle")?;
        }
        let mut state = self.state.lock();
        let (next, snapshot) = state.apply(push)?;
        install(agent, snapshot, &next, format!("control plane {url}"))?;
        tracing::info!(
            version = next.version,
            full = push.full,
            upserts = push.upserts.len(),
            deletes = push.deletes.len(),
            "config applied"
        );
        *state = next;
        self.cache_dirty.notify_one();
        Ok(())
    }

    /// Writes the cache at most every half second, off the push path.
    async fn save_cache_when_dirty(self: Arc<Self>) {
        loop {
            self.cache_dirty.notified().await;
            let state = self.state.lock().clone();
            if let Err(e) = self.cache.save(&state) {
                tracing::warn!(error = %format!("{e:#}"), "saving the config cache failed");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Makes `snapshot` the data plane's config: capture set, routing, endpoint health.
pub fn install(
    agent: &Agent,
    snapshot: Snapshot,
    state: &ConfigState,
    origin: String,
) -> Result<()> {
    let capture: crate::datapath::CaptureSet = snapshot.capture_prefixes().into_iter().collect();
    let capacity = agent.datapath.maps.capture_capacity();
    if capture.len() > capacity {
        bail!(
            "the config captures {} destinations but this agent's capture map holds {capacity} \
             (raise --capture-capacity)",
            capture.len()
        );
    }
    agent
        .registry
        .replace(snapshot, origin, Some(state.version));
    // Not once handed over: the successor owns the kernel's capture set (this agent only
    // drains, its registry still judging the connections it carries).
    if !agent.handover.is_released() {
        agent.datapath.maps.sync_capture_set(&capture)?;
    }
    let health = state
        .health
        .iter()
        .filter_map(|(id, h)| {
            id.split_once('/')
                .map(|(ns, name)| (ObjectKey::new(ns, name), h.healthy))
        })
        .collect();
    agent.registry.set_health(health);
    Ok(())
}

fn unreported_health(
    agent: &Agent,
    reported: &BTreeMap<String, EndpointHealth>,
) -> Vec<EndpointHealth> {
    agent
        .local_health
        .lock()
        .iter()
        .filter(|(id, h)| reported.get(*id) != Some(h))
        .map(|(_, h)| h.clone())
        .collect()
}

async fn send(tx: &mpsc::Sender<AgentMessage>, message: Message) -> Result<()> {
    tx.send(AgentMessage {
        message: Some(message),
    })
    .await
    .map_err(|_| anyhow::anyhow!("the config stream is closed"))
}
