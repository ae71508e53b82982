//! The userspace proxy: one set of listeners per enrolled pod, all served by the agent's one
//! tokio runtime.
//!
//! - `outbound`: connections the app made, captured by connect4/6; routed by the registry.
//! - `inbound`: connections to the pod, steered by sk_lookup; delivered to the app.
//! - `upstream`: opening sockets from inside the pod's network namespace.
//! - `relay`: moving bytes both ways and counting them.

mod inbound;
mod outbound;
mod relay;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::datapath::Maps;
use crate::metrics::PodCounters;
use crate::registry::Registry;
use crate::sys::netns::NetnsSockets;

/// Everything a pod's connection handlers need.
pub struct PodContext {
    /// `namespace/name`, for logs.
    pub pod: String,
    pub netns: NetnsSockets,
    pub maps: Arc<Maps>,
    pub registry: Arc<Registry>,
    pub counters: PodCounters,
    pub connect_timeout: Duration,
}

/// The pod's listeners, already bound inside its network namespace.
pub struct PodListeners {
    pub outbound: Vec<TcpListener>,
    pub inbound: Vec<TcpListener>,
}

impl PodListeners {
    /// (role, address) of every listener.
    pub fn addresses(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        let role = |role, ls: &Vec<TcpListener>| {
            ls.iter()
                .filter_map(|l| l.local_addr().ok())
                .map(move |a| (role, a))
                .collect::<Vec<_>>()
        };
        let mut all = role("outbound", &self.outbound);
        all.extend(role("inbound", &self.inbound));
        all
    }
}

/// Starts serving a pod's listeners; the returned tasks stop when aborted (unenroll).
pub fn serve(context: Arc<PodContext>, listeners: PodListeners) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for listener in listeners.outbound {
        tasks.push(tokio::spawn(outbound::serve(listener, context.clone())));
    }
    for listener in listeners.inbound {
        tasks.push(tokio::spawn(inbound::serve(listener, context.clone())));
    }
    tasks
}

pub use upstream::{bind_listener, connect as upstream_connect};
