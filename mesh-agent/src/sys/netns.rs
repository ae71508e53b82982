//! Sockets inside a pod's network namespace.
//!
//! A socket belongs to the namespace it was *created* in, and stays there whichever thread
//! later uses it. So only `socket()` has to happen inside the pod: one helper thread per pod
//! enters the namespace once (`setns`) and creates sockets on request; binding, connecting
//! and all I/O then happen on the tokio runtime as usual. The runtime's threads never change
//! namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

use super::sockopt;

/// A request to the helper thread: create a TCP socket of this family.
struct SocketRequest {
    ipv6: bool,
    reply: oneshot::Sender<io::Result<OwnedFd>>,
}

/// Creates TCP sockets inside one network namespace.
pub struct NetnsSockets {
    requests: mpsc::Sender<SocketRequest>,
    cookie: u64,
}

impl NetnsSockets {
    /// Starts the helper thread for the namespace at `path` (e.g. `/run/netns/pod-a`).
    pub fn open(path: &Path) -> Result<Self> {
        let netns = File::open(path)
            .with_context(|| format!("netns {} cannot be opened", path.display()))?;
        let (requests, incoming) = mpsc::channel::<SocketRequest>();
        // The thread reports the namespace cookie once it is inside (or why it could not enter).
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<u64>>();
        let thread_name = format!(
            "netns-{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        std::thread::Builder::new()
            .name(thread_name.chars().take(15).collect())
            .spawn(move || {
                if let Err(e) = setns(netns.as_fd(), CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(io::Error::from(e)));
                    return;
                }
                let cookie =
                    tcp_socket(false).and_then(|probe| sockopt::netns_cookie(probe.as_fd()));
                let entered = cookie.is_ok();
                let _ = ready_tx.send(cookie);
                if !entered {
                    return;
                }
                // Ends when the owning NetnsSockets is dropped (channel closed).
                for request in incoming {
                    let _ = request.reply.send(tcp_socket(request.ipv6));
                }
            })
            .context("spawning the netns helper thread")?;
        let cookie = ready_rx
            .recv()
            .context("netns helper thread died")?
            .with_context(|| {
                format!(
                    "{} is not a network namespace we can enter and read SO_NETNS_COOKIE in \
                     (needs Linux 5.14+)",
                    path.display()
                )
            })?;
        Ok(NetnsSockets { requests, cookie })
    }

    /// The namespace cookie, as `bpf_get_netns_cookie` reports it for sockets in this pod.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// A new non-blocking TCP socket in the namespace.
    pub async fn socket(&self, ipv6: bool) -> io::Result<OwnedFd> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(SocketRequest { ipv6, reply })
            .map_err(|_| io::Error::other("netns helper thread is gone"))?;
        response
            .await
            .map_err(|_| io::Error::other("netns helper thread is gone"))?
    }
}

fn tcp_socket(ipv6: bool) -> io::Result<OwnedFd> {
    let domain = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
