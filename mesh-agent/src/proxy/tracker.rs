//! Open proxied connections: listed in status, and decided again whenever the config changes,
//! so a policy that now denies an open connection closes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mesh_api::ObjectKey;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::policy::{admit, Carries, PeerInfo, Transport};
use super::request_security::judged_per_request;
use crate::handover::TrackedConnection;
use crate::metrics::{Direction, DirectionCounters};
use crate::registry::Registry;

#[derive(Default)]
pub struct ConnectionTable {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Tracked>>,
}

struct Tracked {
    pod: String,
    direction: Direction,
    transport: Transport,
    peer: PeerInfo,
    peer_address: SocketAddr,
    destination: SocketAddr,
    carries: Carries,
    /// The pod's workload when this connection is subject to its inbound policy.
    enforced: Option<Enforced>,
    close: Arc<Notify>,
}

struct Enforced {
    workload: ObjectKey,
    counters: DirectionCounters,
}

/// One open connection, as status shows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    pub pod: String,
    pub direction: Direction,
    pub transport: Transport,
    pub peer: String,
    pub peer_identity: Option<String>,
    pub destination: String,
}

/// What is known of a connection when it is registered.
pub struct NewConnection<'a> {
    pub pod: &'a str,
    pub direction: Direction,
    pub transport: Transport,
    pub peer: PeerInfo,
    pub peer_address: SocketAddr,
    pub destination: SocketAddr,
    /// HTTP requests are judged one by one where policy needs it; re-checks of the
    /// connection then only apply PeerAuthentication.
    pub carries: Carries,
}

/// Keeps a connection listed while alive; [`Registration::closed`] resolves when policy
/// revokes it.
pub struct Registration {
    table: Arc<ConnectionTable>,
    id: u64,
    close: Arc<Notify>,
}

impl Registration {
    pub async fn closed(&self) {
        self.close.notified().await
    }

    /// The connection as tracked, for a successor agent to track it the same way.
    pub fn describe(&self) -> Option<TrackedConnection> {
        let open = self.table.open.lock();
        let tracked = open.get(&self.id)?;
        Some(TrackedConnection {
            pod: tracked.pod.clone(),
            transport: tracked.transport,
            peer: tracked.peer.clone(),
            peer_address: tracked.peer_address,
            destination: tracked.destination,
            carries: tracked.carries,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.open.lock().remove(&self.id);
    }
}

impl ConnectionTable {
    /// Lists a connection. With `enforced_for`, it is re-checked against the inbound policy
    /// of that workload on every config change (denials counted on `counters`).
    pub fn register(
        self: &Arc<Self>,
        connection: NewConnection<'_>,
        enforced_for: Option<(ObjectKey, DirectionCounters)>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.open.lock().insert(
            id,
            Tracked {
                pod: connection.pod.to_owned(),
                direction: connection.direction,
                transport: connection.transport,
                peer: connection.peer,
                peer_address: connection.peer_address,
                destination: connection.destination,
                carries: connection.carries,
                enforced: enforced_for.map(|(workload, counters)| Enforced { workload, counters }),
                close: close.clone(),
            },
        );
        Registration {
            table: self.clone(),
            id,
            close,
        }
    }

    /// Closes every open connection the current config no longer admits.
    pub fn enforce(&self, registry: &Registry) -> usize {
        let snapshot = registry.snapshot();
        let mut closed = 0;
        for tracked in self.open.lock().values() {
            let Some(enforced) = &tracked.enforced else {
                continue;
            };
            let port = tracked.destination.port();
            // Relayed as bytes, but its requests are to be judged one by one now (a
            // RequestAuthentication or an HTTP-field policy arrived): closed, so the client's
            // next connection is served as HTTP. (On an `auto` port this also closes, once,
            // connections that were not HTTP; they come back and are relayed again.)
            if tracked.carries == Carries::Bytes
                && judged_per_request(&snapshot, &enforced.workload, port)
            {
                tracing::info!(pod = %tracked.pod, peer = %tracked.peer_address, destination = %tracked.destination, "closing a relayed connection whose requests are now judged one by one");
                tracked.close.notify_waiters();
                tracked.close.notify_one();
                closed += 1;
                continue;
            }
            if let Err(reason) = admit(
                &snapshot,
                &enforced.workload,
                &tracked.peer,
                port,
                tracked.transport,
                tracked.carries,
            )
            .outcome
            {
                tracing::info!(pod = %tracked.pod, peer = %tracked.peer_address, principal = ?tracked.peer.principal, destination = %tracked.destination, ?reason, "closing a connection the new config denies");
                enforced.counters.fail(reason);
                // Everyone waiting now (a connection and its upgraded tunnel), and a permit
                // kept for a relay not waiting yet.
                tracked.close.notify_waiters();
                tracked.close.notify_one();
                closed += 1;
            }
        }
        closed
    }

    pub fn list(&self) -> Vec<ConnectionStatus> {
        let mut all: Vec<ConnectionStatus> = self
            .open
            .lock()
            .values()
            .map(|t| ConnectionStatus {
                pod: t.pod.clone(),
                direction: t.direction,
                transport: t.transport,
                peer: t.peer_address.to_string(),
                peer_identity: t.peer.principal.clone(),
                destination: t.destination.to_string(),
            })
            .collect();
        all.sort_by(|a, b| (&a.pod, &a.peer).cmp(&(&b.pod, &b.peer)));
        all
    }
}

/// Re-checks open connections after every config change, for as long as the agent runs.
pub async fn enforce_on_changes(table: Arc<ConnectionTable>, registry: Arc<Registry>) {
    let mut changes = registry.watch();
    while changes.changed().await.is_ok() {
        let closed = table.enforce(&registry);
        if closed > 0 {
            tracing::info!(closed, "config change closed denied connections");
        }
    }
}
