//! Relayed connections across an upgrade: a plaintext or same-node TCP connection is just a
//! pair of sockets, so the old agent pauses its relay (nothing of the connection left in it),
//! sends both sockets to the successor, and the successor relays them from there, enforcing
//! the same policy: the connection survives the upgrade. HBONE connections (TLS state in the
//! old process) drain instead.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::agent::Agent;
use crate::metrics::{Direction, DirectionCounters};
use crate::proxy::policy::{Carries, PeerInfo, Transport};
use crate::proxy::relay::relay;
use crate::proxy::tracker::Registration;
use crate::proxy::{idle, inbound, PodContext};

/// Tells relays to stop for a successor (see `relay::relay`). Clones watch the same signal.
#[derive(Clone)]
pub struct Pause(watch::Receiver<bool>);

impl Pause {
    /// A pause that never comes (relays no successor can take).
    pub fn never() -> Pause {
        Pause(watch::channel(false).1)
    }

    pub async fn until(mut self) {
        if self.0.wait_for(|p| *p).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One connection handed to the successor: what it needs besides the two sockets.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandedConnection {
    /// The pod (`namespace/name`) whose app holds the first socket, the relay's "pod side".
    pub pod: String,
    /// Whether that app opened the connection (outbound) or accepted it (inbound).
    pub direction: Direction,
    /// The pod of this node at the other end (same-node delivery), whose inbound counters
    /// count the connection too.
    pub peer_pod: Option<String>,
    /// The inbound policy entry of the destination pod, re-checked by the successor.
    pub tracked: Option<TrackedConnection>,
}

/// What the connection tracker knows of a connection into a pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrackedConnection {
    /// The destination pod (`namespace/name`).
    pub pod: String,
    pub transport: Transport,
    pub peer: PeerInfo,
    pub peer_address: std::net::SocketAddr,
    pub destination: std::net::SocketAddr,
    pub carries: Carries,
}

/// A paused connection on its way to the successor; `Served` keeps the drain waiting until
/// it has been sent.
type Handed = (HandedConnection, OwnedFd, OwnedFd, super::drain::Served);

/// The running agent's side: the pause signal, and where paused connections go.
pub struct Handoff {
    pause: watch::Sender<bool>,
    queue: parking_lot::Mutex<Option<std::sync::mpsc::Sender<Handed>>>,
}

impl Default for Handoff {
    fn default() -> Handoff {
        Handoff {
            pause: watch::channel(false).0,
            queue: Default::default(),
        }
    }
}

impl Handoff {
    pub fn pause(&self) -> Pause {
        Pause(self.pause.subscribe())
    }

    /// Pauses every relay; their connections come out of the returned queue.
    pub fn start(&self) -> std::sync::mpsc::Receiver<Handed> {
        let (sender, receiver) = std::sync::mpsc::channel();
        *self.queue.lock() = Some(sender);
        self.pause.send_replace(true);
        receiver
    }

    fn send(
        &self,
        handed: HandedConnection,
        pod_side: TcpStream,
        peer_side: TcpStream,
        served: super::drain::Served,
    ) {
        let sockets = pod_side
            .into_std()
            .and_then(|pod| Ok((pod, peer_side.into_std()?)));
        let Ok((pod_side, peer_side)) = sockets else {
            return;
        };
        if let Some(queue) = &*self.queue.lock() {
            let _ = queue.send((handed, pod_side.into(), peer_side.into(), served));
        }
    }
}

/// Relays a connection (see `relay::relay`); if a successor agent takes it over meanwhile,
/// sends it there, described by `describe`. Returns the bytes moved here.
pub async fn relay_or_hand_over(
    context: &PodContext,
    pod_side: TcpStream,
    peer_side: TcpStream,
    counters: &DirectionCounters,
    peer_counters: Option<&DirectionCounters>,
    describe: impl FnOnce() -> HandedConnection,
) -> (u64, u64) {
    let handoff = &context.shared.handoff;
    let relayed = relay(
        pod_side,
        peer_side,
        counters,
        peer_counters,
        &handoff.pause(),
    )
    .await;
    if let Some((pod_side, peer_side)) = relayed.paused {
        let served = context.shared.drain.serve();
        handoff.send(describe(), pod_side, peer_side, served);
    }
    (relayed.sent, relayed.received)
}

/// The successor's side: relays a connection the old agent handed over, if its pods are
/// still here and the current config still admits it; otherwise it is closed.
pub async fn adopt(
    agent: Arc<Agent>,
    handed: HandedConnection,
    pod_side: OwnedFd,
    peer_side: OwnedFd,
) {
    let (Ok(pod_side), Ok(peer_side)) = (stream(pod_side), stream(peer_side)) else {
        return;
    };
    let (context, peer, destination) = {
        let pods = agent.pods.lock().await;
        let find = |name: &str| {
            pods.values()
                .find(|p| p.context.pod == name)
                .map(|p| p.context.clone())
        };
        (
            find(&handed.pod),
            handed.peer_pod.as_deref().and_then(find),
            handed.tracked.as_ref().and_then(|t| find(&t.pod)),
        )
    };
    let Some(context) = context else {
        tracing::info!(pod = %handed.pod, "a handed-over connection's pod is gone; closed");
        return;
    };
    let registration = match &handed.tracked {
        Some(tracked) => match destination.and_then(|d| admitted(&d, tracked)) {
            Some(registration) => Some(registration),
            None => return,
        },
        None => None,
    };
    // The idle timeout of the mesh (the service's is not known here).
    let idle_timeout = idle::timeout_for(&context.registry.snapshot(), None);
    let pod_fd = pod_side.as_raw_fd();
    let _served = context.shared.drain.serve();
    let counters = match handed.direction {
        Direction::Outbound => &context.counters.outbound,
        Direction::Inbound => &context.counters.inbound,
    };
    let peer_counters = peer.as_ref().map(|p| &p.counters.inbound);
    let closed = async {
        match &registration {
            Some(registration) => registration.closed().await,
            None => std::future::pending().await,
        }
    };
    let describe = move || handed;
    tokio::select! {
        _ = relay_or_hand_over(&context, pod_side, peer_side, counters, peer_counters, describe) => {}
        _ = closed => {}
        _ = idle::idle_for(pod_fd, idle_timeout) => {}
    }
}

/// Tracks a handed-over connection in its destination pod, if the current config admits it.
/// Tracked first, then checked: a config change in between is seen by one or the other.
fn admitted(destination: &Arc<PodContext>, tracked: &TrackedConnection) -> Option<Registration> {
    let registration = inbound::track(
        destination,
        tracked.transport,
        tracked.peer.clone(),
        tracked.peer_address,
        tracked.destination,
        tracked.carries,
    );
    let snapshot = destination.registry.snapshot();
    let admitted = inbound::still_admitted(
        destination,
        &snapshot,
        &tracked.peer,
        tracked.destination.port(),
        tracked.transport,
        tracked.carries,
    );
    if !admitted {
        tracing::info!(pod = %tracked.pod, peer = %tracked.peer_address, "a handed-over connection the config denies now; closed");
        return None;
    }
    Some(registration)
}

fn stream(fd: OwnedFd) -> std::io::Result<TcpStream> {
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}
