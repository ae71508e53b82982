//! The admin listeners as sockets: bound here at a cold start, or received from the previous
//! agent in an upgrade (`handover`), then served by `listen::serve`.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;

use super::listen;
use super::server::{read_only_routes, socket_routes};
use crate::agent::Agent;

pub struct AdminListeners {
    /// Read-only routes on the loopback `--admin-addr`.
    pub tcp: std::net::TcpListener,
    /// Every route on the root-only `<state-dir>/agent.sock`.
    pub socket: std::os::unix::net::UnixListener,
}

impl AdminListeners {
    /// Binds both. Only when no other agent serves them: the socket file is replaced.
    pub fn bind(addr: SocketAddr, socket_path: &Path) -> Result<AdminListeners> {
        if !addr.ip().is_loopback() {
            bail!("--admin-addr {addr} is not a loopback address; the admin API never listens beyond the node");
        }
        let tcp = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the admin address {addr}"))?;
        let _ = std::fs::remove_file(socket_path); // left by an earlier run
        let socket = std::os::unix::net::UnixListener::bind(socket_path)
            .with_context(|| format!("binding the admin socket {}", socket_path.display()))?;
        std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o600))?;
        Ok(AdminListeners { tcp, socket })
    }

    /// Second descriptors of both (TCP, socket), for a successor.
    pub fn duplicates(&self) -> Result<(OwnedFd, OwnedFd)> {
        Ok((
            self.tcp.as_fd().try_clone_to_owned()?,
            self.socket.as_fd().try_clone_to_owned()?,
        ))
    }

    /// Serves both until the returned tasks are aborted (which closes this agent's
    /// descriptors of them).
    pub fn serve(self, agent: Arc<Agent>) -> Result<Vec<JoinHandle<()>>> {
        self.tcp.set_nonblocking(true)?;
        self.socket.set_nonblocking(true)?;
        let name = format!("admin HTTP {}", self.tcp.local_addr()?);
        let tcp = tokio::net::TcpListener::from_std(self.tcp)?;
        let socket = tokio::net::UnixListener::from_std(self.socket)?;
        let read_only = read_only_routes::<Agent>().with_state(agent.clone());
        let every = socket_routes::<Agent>().with_state(agent);
        Ok(vec![
            tokio::spawn(listen::serve(tcp, name, read_only)),
            tokio::spawn(listen::serve(socket, "admin socket".into(), every)),
        ])
    }
}
