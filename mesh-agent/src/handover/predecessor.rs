//! The running agent's side of a handover: answer a successor on the handover socket, give it
//! the listeners, and let go of them once it serves.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::runtime::Handle;

use super::wire::{Channel, Listener};
use super::{version, Message, Place};
use crate::admin::AdminListeners;
use crate::agent::Agent;
use crate::datapath::Layout;

/// How long a successor may take between taking the listeners and serving them: loading the
/// programs, resuming every pod and getting their certificates.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long each other step of the successor may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The running agent's handover state.
#[derive(Default)]
pub struct Handover {
    /// From a successor's `Take` until it gives up or the handover ends: enrollments are
    /// refused (the CNI plugin retries), so the pods handed over are all there are.
    frozen: AtomicBool,
    /// The listeners are the successor's (or closed, on SIGTERM): this agent only drains.
    released: tokio::sync::watch::Sender<bool>,
}

impl Handover {
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    pub fn is_released(&self) -> bool {
        *self.released.borrow()
    }

    pub fn mark_released(&self) {
        self.released.send_replace(true);
    }

    /// Resolves once the listeners are released.
    pub async fn released(&self) {
        let mut released = self.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }
}

/// The agent's own listeners, duplicated so they can be handed over while they serve.
pub struct OwnListeners {
    admin_tcp: OwnedFd,
    admin_socket: OwnedFd,
    handover: OwnedFd,
}

impl OwnListeners {
    pub fn of(admin: &AdminListeners, handover: &Listener) -> Result<OwnListeners> {
        let (admin_tcp, admin_socket) = admin.duplicates()?;
        Ok(OwnListeners {
            admin_tcp,
            admin_socket,
            handover: handover.as_fd().try_clone_to_owned()?,
        })
    }
}

/// Answers successors on `listener` (a thread of its own) until one has taken over.
/// `release` stops this agent's accepting and serving of admin routes; it runs once the
/// successor is ready.
pub fn serve(
    agent: Arc<Agent>,
    listener: Listener,
    own: OwnListeners,
    release: impl Fn() + Send + 'static,
) {
    let runtime = Handle::current();
    std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || loop {
            let channel = match listener.accept() {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "accepting on the handover socket failed");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            if agent.handover.is_released() {
                let _ = channel.send(
                    &Message::Refused {
                        reason: "this agent has already handed over and is draining".into(),
                    },
                    &[],
                );
                continue;
            }
            match converse(&agent, &channel, &own, &runtime) {
                Ok(()) => {
                    release();
                    agent.handover.mark_released();
                    if let Err(e) = channel.send(&Message::Released, &[]) {
                        tracing::warn!(error = %format!("{e:#}"), "telling the successor failed; it serves anyway");
                    }
                    tracing::info!("handed over to the successor; draining");
                    hand_over_connections(&agent, &channel);
                    return;
                }
                Err(e) => {
                    agent.handover.frozen.store(false, Ordering::Release);
                    tracing::warn!(error = %format!("{e:#}"), "a successor did not take over; this agent keeps serving");
                }
            }
        })
        .expect("spawning the handover thread");
}

/// Pauses the relayed connections and sends each to the successor, until this process exits
/// (the successor learns from the socket closing that this agent is gone).
fn hand_over_connections(agent: &Agent, channel: &Channel) {
    let paused = agent.proxy.handoff.start();
    let mut handed = 0usize;
    while let Ok((connection, pod_side, peer_side)) = paused.recv() {
        let sent = channel.send(
            &Message::Connection(connection),
            &[pod_side.as_fd(), peer_side.as_fd()],
        );
        match sent {
            Ok(()) => handed += 1,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "handing a connection to the successor failed; closed");
            }
        }
        if handed.is_power_of_two() {
            tracing::info!(handed, "relayed connections handed to the successor");
        }
    }
}

/// One successor, up to its `Ready`.
fn converse(agent: &Agent, channel: &Channel, own: &OwnListeners, runtime: &Handle) -> Result<()> {
    channel.set_read_timeout(STEP_TIMEOUT)?;
    match channel.recv()? {
        (Message::Hello { version: theirs }, _) => {
            tracing::info!(successor = %theirs, "a successor asks to take over")
        }
        (other, _) => bail!("unexpected handover message {other:?}"),
    }
    channel.send(
        &Message::Welcome {
            version: version(),
            layout: Layout::of_this_agent()?,
            place: Place {
                node: agent.node.clone(),
                bpffs: agent.datapath.bpffs().to_owned(),
                cgroup_root: agent.cgroup_root.clone(),
            },
        },
        &[],
    )?;
    match channel.recv()? {
        (Message::Take, _) => {}
        (other, _) => bail!("unexpected handover message {other:?}"),
    }
    agent.handover.freeze();
    runtime.block_on(offer(agent, channel, own))?;
    channel.set_read_timeout(READY_TIMEOUT)?;
    match channel
        .recv()
        .context("waiting for the successor to serve")?
    {
        (Message::Ready, _) => Ok(()),
        (other, _) => bail!("unexpected handover message {other:?}"),
    }
}

/// Sends the agent's and every pod's listeners, as saved: under the pods lock, with
/// enrollment frozen, so the state file the successor resumes from lists exactly these pods.
async fn offer(agent: &Agent, channel: &Channel, own: &OwnListeners) -> Result<()> {
    let pods = agent.pods.lock().await;
    agent.save(&pods)?;
    channel.send(
        &Message::Agent {
            cgroup_id: agent.cgroup_id,
        },
        &[
            own.admin_tcp.as_fd(),
            own.admin_socket.as_fd(),
            own.handover.as_fd(),
        ],
    )?;
    for (uid, pod) in pods.iter() {
        let (roles, fds): (Vec<_>, Vec<_>) = pod
            .listener_fds
            .iter()
            .map(|(role, fd)| (*role, fd.as_fd()))
            .unzip();
        channel.send(
            &Message::Pod {
                uid: uid.clone(),
                roles,
            },
            &fds,
        )?;
    }
    channel.send(&Message::Offered, &[])
}
