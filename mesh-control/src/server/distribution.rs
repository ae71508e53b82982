//! Config distribution: one stream per agent.
//!
//! The agent says which version it has; it gets a diff (or the full config), then only
//! changes. At most one push is outstanding at a time; the next one is computed from the
//! version the agent last ACKed, so a NACKed push is never assumed applied and the agent
//! keeps (and reports) its last good version. A NACKed version is not re-sent: the next push
//! waits for a newer version.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use mesh_proto::v1::agent_message::Message;
use mesh_proto::v1::config_distribution_server::ConfigDistribution;
use mesh_proto::v1::{AgentMessage, ConfigPush, EndpointHealth};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::ca::{Ca, Loaded};
use super::cache::{AgentRecord, ConfigCache, HealthJson};
use super::metrics::ServerMetrics;
use crate::keys;
use crate::store::SharedStore;

pub struct Distribution {
    pub cache: Arc<ConfigCache>,
    pub store: SharedStore,
    pub replica: String,
    pub metrics: Arc<ServerMetrics>,
    /// Turns true when the replica shuts down: every session ends its stream, so the agents
    /// reconnect (to another replica) at once and the server's graceful drain can finish.
    pub stopping: watch::Receiver<bool>,
    /// Its trust bundle goes to every agent: with each full push and whenever it changes.
    pub ca: Arc<Ca>,
}

type PushStream = Pin<Box<dyn Stream<Item = Result<ConfigPush, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDistribution for Distribution {
    type StreamConfigStream = PushStream;

    async fn stream_config(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        // The node is who its client certificate says, whatever Hello claims.
        let node = super::tls::node_of(&request, "the config stream")?;
        let mut incoming = request.into_inner();
        let hello = match incoming.next().await {
            Some(Ok(AgentMessage {
                message: Some(Message::Hello(hello)),
            })) => hello,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        if hello.node != node {
            return Err(Status::permission_denied(format!(
                "Hello.node is {:?} but the client certificate is node {node:?}'s",
                hello.node
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            cache: self.cache.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            record: AgentRecord {
                node: hello.node.clone(),
                replica: self.replica.clone(),
                connected: true,
                acked_version: hello.version,
                connected_since: now(),
                last_seen: now(),
                ..AgentRecord::default()
            },
            pending: None,
            rejected: 0,
            stopping: self.stopping.clone(),
            ca: self.ca.subscribe(),
            sent_bundle: String::new(),
        };
        tracing::info!(node = %hello.node, version = hello.version, "agent connected");
        tokio::spawn(session.run(incoming, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    cache: Arc<ConfigCache>,
    store: SharedStore,
    metrics: Arc<ServerMetrics>,
    record: AgentRecord,
    /// The push awaiting an answer: (version, nonce).
    pending: Option<(u64, String)>,
    /// The newest version the agent NACKed.
    rejected: u64,
    stopping: watch::Receiver<bool>,
    ca: watch::Receiver<Arc<Loaded>>,
    /// The trust bundle this agent was last sent.
    sent_bundle: String,
}

impl Session {
    async fn run(
        mut self,
        mut incoming: Streaming<AgentMessage>,
        tx: mpsc::Sender<Result<ConfigPush, Status>>,
    ) {
        self.metrics.agent_connected();
        self.save_record().await;
        let mut versions = self.cache.subscribe();
        let mut stopping = self.stopping.clone();
        let mut ca = self.ca.clone();
        loop {
            if self.pending.is_none() {
                let current = self.cache.version();
                let bundle = ca.borrow_and_update().bundle_pem.clone();
                if current > self.record.acked_version.max(self.rejected)
                    || self.record.acked_version > current
                    || bundle != self.sent_bundle
                {
                    let mut push = self.cache.push_from(self.record.acked_version);
                    push.nonce = nonce();
                    if push.full || bundle != self.sent_bundle {
                        push.trust_bundle_pem = bundle.clone();
                        self.sent_bundle = bundle;
                    }
                    self.pending = Some((push.version, push.nonce.clone()));
                    self.metrics.push_sent();
                    if tx.send(Ok(push)).await.is_err() {
                        break;
                    }
                }
            }
            tokio::select! {
                message = incoming.next() => match message {
                    Some(Ok(message)) => self.handle(message).await,
                    Some(Err(e)) => {
                        tracing::info!(node = %self.record.node, error = %e, "agent stream error");
                        break;
                    }
                    None => break,
                },
                changed = versions.changed() => if changed.is_err() { break },
                changed = ca.changed() => if changed.is_err() { break },
                // It only ever turns true (or its sender goes away): either way, stop.
                _ = stopping.changed() => break,
            }
        }
        tracing::info!(node = %self.record.node, "agent disconnected");
        self.metrics.agent_disconnected();
        self.record.connected = false;
        self.save_record().await;
    }

    async fn handle(&mut self, message: AgentMessage) {
        self.record.last_seen = now();
        match message.message {
            Some(Message::Ack(ack)) => {
                if self.is_pending(ack.version, &ack.nonce) {
                    self.pending = None;
                    self.record.acked_version = ack.version;
                    self.metrics.ack();
                    self.save_record().await;
                }
            }
            Some(Message::Nack(nack)) => {
                if self.is_pending(nack.version, &nack.nonce) {
                    self.pending = None;
                    self.rejected = nack.version;
                    tracing::warn!(node = %self.record.node, version = nack.version, error = %nack.error, "agent rejected config");
                    self.record.last_nack = nack.error;
                    self.record.last_nack_version = nack.version;
                    self.metrics.nack();
                    self.save_record().await;
                }
            }
            Some(Message::Health(report)) => {
                for endpoint in report.endpoints {
                    self.save_health(endpoint).await;
                }
            }
            Some(Message::Hello(_)) | None => {}
        }
    }

    fn is_pending(&self, version: u64, nonce: &str) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|(v, n)| *v == version && n == nonce)
    }

    /// Writes only real changes: health is pushed to every agent.
    async fn save_health(&self, endpoint: EndpointHealth) {
        if self
            .cache
            .health(&endpoint.namespace, &endpoint.workload)
            .is_some_and(|known| {
                known.healthy == endpoint.healthy && known.detail == endpoint.detail
            })
        {
            return;
        }
        let key = keys::health(&endpoint.namespace, &endpoint.workload);
        let json = serde_json::to_vec(&HealthJson::from(&endpoint)).unwrap_or_default();
        if let Err(e) = self.store.put(&key, json).await {
            tracing::warn!(%key, error = %e, "saving endpoint health failed");
        }
    }

    async fn save_record(&self) {
        let key = keys::agent(&self.record.node);
        let json = serde_json::to_vec(&self.record).unwrap_or_default();
        if let Err(e) = self.store.put(&key, json).await {
            tracing::warn!(%key, error = %e, "saving the agent record failed");
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}
