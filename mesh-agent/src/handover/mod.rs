//! Upgrading the agent without losing a connection: a new agent process started beside the
//! running one (a DaemonSet with maxSurge 1) takes over its listeners, then the old one drains.
//!
//! The conversation, over `<state-dir>/handover.sock` (`wire.rs`):
//!
//! 1. successor → `Hello`; the running agent answers `Welcome` with its map layout and where
//!    it serves (node, bpffs, cgroup root), or `Refused { wait: true }` while it stops
//!    (SIGTERM) or its own predecessor still drains: the successor retries until that
//!    process is gone (then it starts afresh), so no more than two agents ever share a node.
//!    The successor compares layouts (`datapath::Layout`) and places before touching
//!    anything; a mismatch ends the conversation, and the running agent carries on.
//! 2. successor → `Take`. The running agent stops taking enrollments (they are answered "try
//!    again": the CNI plugin retries), lets those under way finish, saves its pods and sends
//!    its own listeners (admin TCP, admin socket, handover socket) and each pod's listeners
//!    as descriptors.
//! 3. The successor loads the programs (replacing the old ones inside the same pinned links),
//!    resumes the saved pods on the listeners it received (the very sockets sk_lookup and
//!    connect4 steer to, so nothing queued in them is lost) without accepting yet, waits for
//!    config (if it had none cached) and the pods' certificates, and sends `Ready`.
//! 4. The old agent stops accepting (its descriptors close; the sockets live on in the
//!    successor), stops saving state and following pods, leaves the capture set to the
//!    successor, answers `Released`, and the successor starts accepting. The old agent pauses
//!    its relayed TCP connections and sends each to the successor (`connections.rs`), and
//!    drains the rest (`Drain`): HTTP/2 and HBONE connections are told to finish (GOAWAY),
//!    HTTP/1 ones close after their current response, and whatever is left at the deadline
//!    (`--drain-timeout-secs`) is closed when the process exits. Its end of the socket
//!    closing tells the successor it is gone (its cgroup id then leaves the agent set).
//!
//! A successor that goes away before `Ready` leaves the running agent serving (it unfreezes
//! enrollment and is told nothing else). One whose `Ready` comes too late is told `Refused`
//! and exits. A predecessor that goes away after sending its listeners leaves the successor
//! with everything it needs. SIGTERM without a successor drains the same way after closing the
//! listeners: captured connections are then refused (fail closed) until an agent starts.

mod connections;
mod drain;
mod predecessor;
mod successor;
mod wire;

pub use connections::{
    adopt, relay_or_hand_over, HandedConnection, Handoff, Pause, TrackedConnection,
};
pub(crate) use drain::serve_draining;
pub use drain::Drain;
pub use predecessor::{serve, Handover, OwnListeners};
pub use successor::take_over;
pub use wire::{socket_path, Listener};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::agent::Agent;
use crate::datapath::Layout;

/// One message of the handover conversation (see the module comment for the order).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello {
        version: String,
    },
    Welcome {
        version: String,
        layout: Layout,
        /// Where it serves: a successor must serve the same.
        place: Place,
    },
    Refused {
        reason: String,
        /// Try again once the running agent has exited (it is stopping, or its own
        /// predecessor still drains); otherwise give up.
        #[serde(default)]
        wait: bool,
    },
    Take,
    /// The agent's own listeners, as descriptors in this order: admin TCP, admin socket,
    /// handover socket. `cgroup_id` is the old agent's (kept out of capture until it is gone).
    Agent {
        cgroup_id: u64,
    },
    /// One pod's listeners, as descriptors in the order of `roles`.
    Pod {
        uid: String,
        roles: Vec<ListenerRole>,
    },
    Offered,
    Ready,
    Released,
    /// A relayed connection, as descriptors (pod side, peer side).
    Connection(HandedConnection),
}

/// What an agent serves, which its successor must serve the same way: the node, and where
/// its programs are pinned and attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub node: String,
    pub bpffs: std::path::PathBuf,
    pub cgroup_root: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerRole {
    Outbound,
    Inbound,
    Hbone,
}

/// How long a successor waits for its config and its pods' certificates before taking over
/// anyway (HBONE listeners refuse handshakes without a certificate).
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The successor's last steps: once it has config (from the control plane, when it had none
/// cached) and its pods' certificates, tell the old agent, start accepting, and take the
/// relayed connections the old agent hands over until it has exited; then its cgroup is
/// forgotten.
pub async fn complete_takeover(
    agent: &Arc<Agent>,
    pending: successor::Pending,
    wait_for_config: bool,
) -> anyhow::Result<()> {
    if wait_for_config {
        // The placeholder installed at start stays until the first push replaces it.
        let placeholder = agent.registry.source();
        let configured = async {
            while agent.registry.source().origin == placeholder.origin {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(READY_WAIT, configured).await.is_err() {
            tracing::warn!("no config from the control plane yet; taking over anyway");
        }
    }
    certificates_within(agent, READY_WAIT).await;
    let released = pending.complete().await?;
    agent.proxy.accepting.send_replace(true);
    let agent = agent.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::spawn(async move {
        let adopting = agent.clone();
        released
            .follow(move |connection, pod_side, peer_side| {
                runtime.spawn(adopt(adopting.clone(), connection, pod_side, peer_side));
            })
            .await;
        tracing::info!("the previous agent has exited");
        *agent.predecessor_cgroup.lock() = None;
        agent.handover.set_predecessor_draining(false);
        if let Err(e) = agent.datapath.maps.keep_agent_cgroups(&agent.live_agents()) {
            tracing::warn!(error = %format!("{e:#}"), "removing the previous agent's cgroup from MESH_AGENT_CGROUPS");
        }
    });
    Ok(())
}

/// Waits until every enrolled pod has a certificate (with a control plane), at most
/// `timeout`: a successor that serves a pod's HBONE listener without one refuses handshakes.
async fn certificates_within(agent: &Agent, timeout: std::time::Duration) {
    if !agent.identities.has_signer() {
        return;
    }
    let identities: Vec<_> = {
        let pods = agent.pods.lock().await;
        pods.values().map(|p| p.context.identity.clone()).collect()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    for id in identities {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if agent
            .identities
            .credential_within(&id, left)
            .await
            .is_none()
        {
            tracing::warn!(identity = %id, "no certificate yet; taking over anyway");
        }
    }
}

/// This build's version, as both agents log it.
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
