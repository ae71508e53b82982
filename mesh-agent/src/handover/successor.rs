//! The new agent's side of a handover: find the running agent, check that its maps can be
//! shared, receive its listeners, and, once this agent serves them, tell it to let go.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::wire::{socket_path, Channel, Listener, Received};
use super::{version, HandedConnection, ListenerRole, Message, Place};
use crate::admin::AdminListeners;
use crate::datapath::Layout;

/// How long each answer of the running agent may take (it answers from a thread of its own).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the running agent handed over, before this agent serves it.
pub struct Inheritance {
    /// The old agent's cgroup id, kept out of capture until it is gone.
    pub predecessor_cgroup: u64,
    pub admin: AdminListeners,
    pub handover: Listener,
    /// Each pod's listeners, by pod uid.
    pub pods: HashMap<String, Vec<(ListenerRole, std::net::TcpListener)>>,
    /// The rest of the conversation.
    pub pending: Pending,
}

/// The handover before `Ready`: the old agent still accepts.
pub struct Pending {
    channel: Channel,
}

/// Asks the agent serving `<state_dir>/handover.sock` to hand over. `Ok(None)`: no agent runs
/// (a cold start). An error leaves the running agent as it was.
pub async fn take_over(
    state_dir: &Path,
    layout: Layout,
    place: Place,
) -> Result<Option<Inheritance>> {
    let path = socket_path(state_dir);
    tokio::task::spawn_blocking(move || converse(&path, &layout, &place))
        .await
        .context("the handover thread")?
}

/// How long a successor waits for a stopping (or still draining) agent to exit.
const WAIT_FOR_EXIT: Duration = Duration::from_secs(180);

fn converse(path: &Path, layout: &Layout, place: &Place) -> Result<Option<Inheritance>> {
    let waiting_since = std::time::Instant::now();
    let (channel, predecessor_version, running, running_place) = loop {
        let Some(channel) = Channel::connect(path)? else {
            return Ok(None);
        };
        channel.set_read_timeout(ANSWER_TIMEOUT)?;
        channel.set_write_timeout(ANSWER_TIMEOUT)?;
        channel.send(&Message::Hello { version: version() }, &[])?;
        match channel.recv()? {
            (
                Message::Welcome {
                    version,
                    layout,
                    place,
                },
                _,
            ) => break (channel, version, layout, place),
            (Message::Refused { reason, wait }, _) => {
                if !wait || waiting_since.elapsed() > WAIT_FOR_EXIT {
                    bail!("the running agent refused to hand over: {reason}");
                }
                if waiting_since.elapsed() < Duration::from_secs(1) {
                    tracing::info!(%reason, "waiting for the running agent to exit");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            (other, _) => bail!("unexpected handover answer {other:?}"),
        }
    };
    layout.check_against(&running).with_context(|| {
        format!("taking over from the running agent (version {predecessor_version})")
    })?;
    if &running_place != place {
        bail!(
            "the running agent serves node {:?} with --bpffs {} and --cgroup-root {}; this one \
             was started for node {:?} with --bpffs {} and --cgroup-root {}: a successor must \
             serve the same node the same way",
            running_place.node,
            running_place.bpffs.display(),
            running_place.cgroup_root.display(),
            place.node,
            place.bpffs.display(),
            place.cgroup_root.display()
        );
    }
    channel.send(&Message::Take, &[])?;
    let (predecessor_cgroup, mut own) = match channel.recv()? {
        (Message::Agent { cgroup_id }, fds) if fds.len() == 3 => (cgroup_id, fds),
        (other, fds) => bail!(
            "unexpected handover message {other:?} with {} descriptors",
            fds.len()
        ),
    };
    let handover = Listener::from_fd(own.pop().expect("three descriptors"));
    let admin = AdminListeners {
        socket: std::os::unix::net::UnixListener::from(own.pop().expect("three")),
        tcp: std::net::TcpListener::from(own.pop().expect("three")),
    };
    let mut pods = HashMap::new();
    loop {
        match channel.recv()? {
            // A pod with no listeners (none open: it is bound afresh) is not inherited.
            (Message::Pod { uid, roles }, fds) if fds.len() == roles.len() => {
                if !fds.is_empty() {
                    pods.insert(uid, tcp_listeners(roles, fds)?);
                }
            }
            (Message::Offered, _) => break,
            (other, fds) => bail!(
                "unexpected handover message {other:?} with {} descriptors",
                fds.len()
            ),
        }
    }
    tracing::info!(
        pods = pods.len(),
        version = %predecessor_version,
        "the running agent handed over its listeners"
    );
    Ok(Some(Inheritance {
        predecessor_cgroup,
        admin,
        handover,
        pods,
        pending: Pending { channel },
    }))
}

fn tcp_listeners(
    roles: Vec<ListenerRole>,
    fds: Vec<OwnedFd>,
) -> Result<Vec<(ListenerRole, std::net::TcpListener)>> {
    roles
        .into_iter()
        .zip(fds)
        .map(|(role, fd)| {
            let listener = std::net::TcpListener::from(fd);
            // Shared with the old agent's descriptor, which already is; said again so nothing
            // depends on it.
            listener.set_nonblocking(true)?;
            Ok((role, listener))
        })
        .collect()
}

/// The handover after `Ready`: the old agent has stopped accepting.
pub struct Released {
    channel: Channel,
}

impl Pending {
    /// Tells the old agent that this one serves, and waits until it has stopped accepting.
    /// An old agent that gave up meanwhile (it answers `Refused`) serves on: this one must
    /// not, and fails. One that went away cannot accept any more either: this one serves.
    pub async fn complete(self) -> Result<Released> {
        let channel = self.channel;
        tokio::task::spawn_blocking(move || {
            channel.send(&Message::Ready, &[])?;
            match channel.recv_or_closed() {
                Ok(Received::Message(message, _)) => match *message {
                    Message::Released => Ok(Released { channel }),
                    Message::Refused { reason, .. } => {
                        bail!("the running agent gave up the handover: {reason}")
                    }
                    other => bail!("unexpected handover message {other:?}"),
                },
                Ok(Received::Unknown(e)) => Err(e),
                Ok(Received::Closed) | Err(_) => {
                    tracing::warn!("the old agent went away during the handover; serving");
                    Ok(Released { channel })
                }
            }
        })
        .await
        .context("the handover thread")?
    }
}

impl Released {
    /// Takes the relayed connections the old agent hands over (`adopt` each) until it has
    /// exited (its end of the socket closed). A message this agent cannot read is skipped.
    pub async fn follow(self, adopt: impl Fn(HandedConnection, OwnedFd, OwnedFd) + Send + 'static) {
        let _ = tokio::task::spawn_blocking(move || {
            let _ = self.channel.set_read_timeout(Duration::ZERO);
            loop {
                match self.channel.recv_or_closed() {
                    Ok(Received::Message(message, fds)) => match (*message, fds.len()) {
                        (Message::Connection(connection), 2) => {
                            let mut fds = fds.into_iter();
                            let (pod_side, peer_side) = (fds.next().unwrap(), fds.next().unwrap());
                            adopt(connection, pod_side, peer_side);
                        }
                        (other, _) => {
                            tracing::warn!(message = ?other, "unexpected handover message; ignored")
                        }
                    },
                    Ok(Received::Unknown(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "unreadable handover message; ignored")
                    }
                    Ok(Received::Closed) => return,
                    Err(e) => {
                        // Broken, not closed: the old agent may still run; wait for its end.
                        tracing::warn!(error = %format!("{e:#}"), "the handover socket failed");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
        .await;
    }
}
