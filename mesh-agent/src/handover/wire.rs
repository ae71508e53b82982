//! The handover socket: a unix `SOCK_SEQPACKET` socket in the state directory (root-only, like
//! the admin socket), carrying one JSON message per packet with the descriptors it hands over
//! attached (`SCM_RIGHTS`). Packets keep message boundaries, so a message and its descriptors
//! always arrive together. Blocking I/O with a timeout on every read: the exchange happens
//! once per upgrade, on threads of its own.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use nix::sys::time::TimeVal;

use super::Message;

/// Largest message (the per-pod and per-connection ones are far smaller).
const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors one message carries (below the kernel's SCM_MAX_FD, 253).
pub const MAX_FDS: usize = 16;

/// One end of a handover conversation.
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// Connects to the agent serving `path`. `Ok(None)` when nobody does (no socket, or a
    /// stale one left by an agent that is gone).
    pub fn connect(path: &Path) -> Result<Option<Channel>> {
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path)?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => Ok(Some(Channel { fd })),
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
        }
    }

    /// Zero: none.
    pub fn set_read_timeout(&self, timeout: Duration) -> Result<()> {
        socket::setsockopt(&self.fd, sockopt::ReceiveTimeout, &timeval(timeout))?;
        Ok(())
    }

    /// A peer that stops reading must not hold the sender (and the locks it holds) for good.
    pub fn set_write_timeout(&self, timeout: Duration) -> Result<()> {
        socket::setsockopt(&self.fd, sockopt::SendTimeout, &timeval(timeout))?;
        Ok(())
    }

    pub fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<()> {
        if fds.len() > MAX_FDS {
            bail!("{} descriptors in one handover message", fds.len());
        }
        let body = serde_json::to_vec(message)?;
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let control = if raw.is_empty() {
            vec![]
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        socket::sendmsg::<()>(
            self.fd.as_raw_fd(),
            &[IoSlice::new(&body)],
            &control,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .context("sending on the handover socket")?;
        Ok(())
    }

    /// The next message and the descriptors that came with it. The other side closing is an
    /// error naming that.
    pub fn recv(&self) -> Result<(Message, Vec<OwnedFd>)> {
        match self.recv_or_closed()? {
            Received::Message(message, fds) => Ok((*message, fds)),
            Received::Unknown(e) => Err(e),
            Received::Closed => bail!("the other agent closed the handover socket"),
        }
    }

    /// Like [`Self::recv`], telling apart the other side closing and a message this agent
    /// cannot read (from another version) from a broken socket (an error).
    pub fn recv_or_closed(&self) -> Result<Received> {
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, flags, fds) = {
            let mut iov = [IoSliceMut::new(&mut body)];
            let received = socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .context("reading from the handover socket")?;
            let mut fds = Vec::new();
            for control in received.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = control {
                    // SAFETY: the kernel just installed these descriptors in this process
                    // for us; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (received.bytes, received.flags, fds)
        };
        if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
            bail!("a handover message was too large");
        }
        if len == 0 {
            return Ok(Received::Closed);
        }
        Ok(match serde_json::from_slice(&body[..len]) {
            Ok(message) => Received::Message(Box::new(message), fds),
            Err(e) => Received::Unknown(
                anyhow::Error::new(e)
                    .context("a handover message that is not one this agent knows"),
            ),
        })
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What [`Channel::recv_or_closed`] got.
pub enum Received {
    Message(Box<Message>, Vec<OwnedFd>),
    /// A packet this agent cannot read (its descriptors are closed).
    Unknown(anyhow::Error),
    Closed,
}

fn timeval(timeout: Duration) -> TimeVal {
    let micros = timeout.as_micros().min(i64::MAX as u128) as i64;
    TimeVal::new(micros / 1_000_000, (micros % 1_000_000) as _)
}

/// The listening handover socket.
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Binds `path`, replacing a stale socket file (call only when no agent answers on it).
    pub fn bind(path: &Path) -> Result<Listener> {
        let _ = std::fs::remove_file(path);
        let fd = seqpacket()?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)
            .with_context(|| format!("binding the handover socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        socket::listen(&fd, Backlog::new(4)?)?;
        Ok(Listener { fd })
    }

    /// A listener handed over by the previous agent.
    pub fn from_fd(fd: OwnedFd) -> Listener {
        Listener { fd }
    }

    pub fn accept(&self) -> Result<Channel> {
        let fd = socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 returned a new descriptor nobody else owns.
        Ok(Channel {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn seqpacket() -> Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// `<state-dir>/handover.sock`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("handover.sock")
}
