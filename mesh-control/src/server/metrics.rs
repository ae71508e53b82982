//! Counters of one replica, for `meshctl metrics` (MeshMetrics).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct ServerMetrics {
    connected: AtomicU64,
    pushes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
}

impl ServerMetrics {
    pub fn agent_connected(&self) {
        self.connected.fetch_add(1, Relaxed);
    }
    pub fn agent_disconnected(&self) {
        self.connected.fetch_sub(1, Relaxed);
    }
    pub fn push_sent(&self) {
        self.pushes.fetch_add(1, Relaxed);
    }
    pub fn ack(&self) {
        self.acks.fetch_add(1, Relaxed);
    }
    pub fn nack(&self) {
        self.nacks.fetch_add(1, Relaxed);
    }
    /// (agents connected, pushes, acks, nacks)
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.connected.load(Relaxed),
            self.pushes.load(Relaxed),
            self.acks.load(Relaxed),
            self.nacks.load(Relaxed),
        )
    }
}
