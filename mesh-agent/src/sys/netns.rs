//! Work inside a pod's network namespace.
//!
//! A socket belongs to the namespace it was *created* in, and stays there whichever thread
//! later uses it. So only `socket()` (and the odd query such as listing addresses) has to
//! happen inside the pod: one helper thread per pod enters the namespace once (`setns`) and
//! runs those jobs; binding, connecting and all I/O then happen on the tokio runtime as usual.
//! The runtime's threads never change namespace.
//!
//! A few sockets of each family are created ahead of need and handed out without waiting for
//! the helper thread: a new proxied connection then costs no thread hand-off.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{mpsc, Arc};

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::sockopt;

/// A job for the helper thread.
type Job = Box<dyn FnOnce() + Send>;

/// Runs jobs inside one network namespace.
pub struct NetnsSockets {
    jobs: mpsc::Sender<Job>,
    cookie: u64,
    /// Unbound TCP sockets created in the namespace ahead of need: [IPv4, IPv6].
    spares: [Arc<Mutex<Vec<OwnedFd>>>; 2],
}

/// Spare sockets kept per family; refilled when half are used.
const SPARES: usize = 16;

impl NetnsSockets {
    /// Starts the helper thread in `netns`, an opened network namespace file (checked with
    /// [`namespace_type`]; `label` names it in errors and the thread's name). Waits for the
    /// thread without blocking the runtime.
    pub async fn enter(netns: File, label: &Path) -> Result<Self> {
        let (jobs, incoming) = mpsc::channel::<Job>();
        // The thread reports the namespace cookie once it is inside (or why it could not enter).
        let (ready_tx, ready_rx) = oneshot::channel::<io::Result<u64>>();
        let thread_name = format!(
            "netns-{}",
            label
                .file_name()
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
                for job in incoming {
                    job();
                }
            })
            .context("spawning the netns helper thread")?;
        let cookie = ready_rx
            .await
            .context("netns helper thread died")?
            .with_context(|| {
                format!(
                    "{} is not a network namespace we can enter and read SO_NETNS_COOKIE in \
                     (needs Linux 5.14+)",
                    label.display()
                )
            })?;
        Ok(NetnsSockets {
            jobs,
            cookie,
            spares: Default::default(),
        })
    }

    /// The namespace cookie, as `bpf_get_netns_cookie` reports it for sockets in this pod.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Runs `job` on the helper thread, inside the namespace.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let (reply, response) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = reply.send(job());
            }))
            .map_err(|_| io::Error::other("netns helper thread is gone"))?;
        response
            .await
            .map_err(|_| io::Error::other("netns helper thread is gone"))
    }

    /// A new TCP socket in the namespace: a spare if there is one (topping the spares up in
    /// the background when they run low), else made on the helper thread.
    pub async fn socket(&self, ipv6: bool) -> io::Result<OwnedFd> {
        let spares = &self.spares[ipv6 as usize];
        let (spare, low) = {
            let mut spares = spares.lock();
            (spares.pop(), spares.len() < SPARES / 2)
        };
        if low {
            self.refill(ipv6);
        }
        match spare {
            Some(fd) => Ok(fd),
            None => self.run(move || tcp_socket(ipv6)).await?,
        }
    }

    /// Tops the spares of a family up, on the helper thread, without waiting for it.
    fn refill(&self, ipv6: bool) {
        let spares = self.spares[ipv6 as usize].clone();
        let _ = self.jobs.send(Box::new(move || {
            let missing = SPARES.saturating_sub(spares.lock().len());
            let made: Vec<OwnedFd> = (0..missing).map_while(|_| tcp_socket(ipv6).ok()).collect();
            let mut spares = spares.lock();
            spares.extend(made);
            // Several refills may have been queued; never keep more than asked.
            spares.truncate(SPARES);
        }));
    }

    /// Every address of the namespace that other hosts could connect to (not loopback, not
    /// link-local).
    pub async fn routable_addresses(&self) -> io::Result<Vec<IpAddr>> {
        self.run(routable_addresses).await?
    }
}

/// The `CLONE_NEW*` type of the namespace an nsfs file refers to (`NS_GET_NSTYPE`, Linux 4.11+).
pub fn namespace_type(file: &File) -> io::Result<libc::c_int> {
    /// `_IO(NSIO, 0x3)` from linux/nsfs.h.
    const NS_GET_NSTYPE: libc::c_ulong = (0xb7 << 8) | 0x3;
    // SAFETY: an ioctl without arguments on a descriptor we own for the whole call.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(kind)
}

fn routable_addresses() -> io::Result<Vec<IpAddr>> {
    let mut found = Vec::new();
    for interface in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let Some(address) = interface.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        if !ip.is_loopback() && !link_local && !found.contains(&ip) {
            found.push(ip);
        }
    }
    Ok(found)
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
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Set here, on the helper thread, rather than on the runtime's worker per connection:
    // every socket of the proxy writes whole messages (Nagle would only delay them), and a
    // bind() to an address leaves the port to connect() (see `proxy::upstream::connect_from`;
    // no effect on listeners, which bind a port).
    sockopt::enable(fd.as_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY)?;
    sockopt::enable(fd.as_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT)?;
    Ok(fd)
}
