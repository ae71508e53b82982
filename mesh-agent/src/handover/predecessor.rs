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
    /// SIGTERM: this agent stops without a successor. One that comes meanwhile waits until
    /// this process is gone, then starts afresh.
    stopping: AtomicBool,
    /// This agent's own predecessor still drains: a successor waits until it is gone, so no
    /// more than two agents ever share the node (and `MESH_AGENT_CGROUPS`).
    predecessor_draining: AtomicBool,
    /// The listeners are the successor's: this agent only drains.
    released: tokio::sync::watch::Sender<bool>,
}

impl Handover {
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// SIGTERM: enrollments refused for good, successors told to wait for this exit.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.frozen.store(true, Ordering::Release);
    }

    pub fn set_predecessor_draining(&self, draining: bool) {
        self.predecessor_draining.store(draining, Ordering::Release);
    }

    /// Why a successor must wait before it can take over, if it must.
    fn busy(&self) -> Option<&'static str> {
        if self.stopping.load(Ordering::Acquire) {
            Some("this agent is stopping (SIGTERM) and drains; start once it has exited")
        } else if self.predecessor_draining.load(Ordering::Acquire) {
            Some("this agent's own predecessor is still draining")
        } else {
            None
        }
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
            let _ = channel.set_write_timeout(STEP_TIMEOUT);
            let _ = channel.set_read_timeout(STEP_TIMEOUT);
            // Read first: an answer sent before the successor has written would end its write.
            match channel.recv() {
                Ok((Message::Hello { version: theirs }, _)) => {
                    tracing::info!(successor = %theirs, "a successor asks to take over")
                }
                Ok((other, _)) => {
                    tracing::warn!(message = ?other, "unexpected first handover message; ignored");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "a successor went away before saying hello");
                    continue;
                }
            }
            if let Some(reason) = agent.handover.busy() {
                let refusal = Message::Refused {
                    reason: reason.into(),
                    wait: true,
                };
                let _ = channel.send(&refusal, &[]);
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
                    // Told, in case it is still there: it must not take over now.
                    let refusal = Message::Refused {
                        reason: format!("the handover failed: {e:#}"),
                        wait: false,
                    };
                    let _ = channel.send(&refusal, &[]);
                    let stopping = agent.handover.stopping.load(Ordering::Acquire);
                    agent.handover.frozen.store(stopping, Ordering::Release);
                    // A successor that got as far as registering its cgroup is gone.
                    if let Err(e) = agent.datapath.maps.keep_agent_cgroups(&agent.live_agents()) {
                        tracing::warn!(error = %format!("{e:#}"), "cleaning MESH_AGENT_CGROUPS after a failed handover");
                    }
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
    // `_served` counts the connection as served (the drain waits for it) until it is sent.
    while let Ok((connection, pod_side, peer_side, _served)) = paused.recv() {
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
    agent.handover.frozen.store(true, Ordering::Release);
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
    // Enrollments under way finish (or fail at their commit, seeing the freeze) first: one
    // finishing after the handover would change pods the successor serves.
    let settled = tokio::time::timeout(2 * crate::pods::PREPARE_TIMEOUT, agent.enrolling.settled());
    if settled.await.is_err() {
        bail!("enrollments under way did not finish");
    }
    let pods = agent.pods.lock().await;
    if agent.handover.busy().is_some() {
        bail!("this agent started stopping (SIGTERM)");
    }
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
