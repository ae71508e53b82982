//! What the admin routes ask of the agent, as a trait: the routes (server.rs) are generic over
//! it, so the fuzz target of the admin HTTP surface (fuzz/fuzz_targets/admin_http.rs) runs the
//! real framing, routing and request parsing in front of an answer that needs no kernel.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use crate::agent::Agent;
use crate::pods::EnrollRequest;
use crate::status::Status;

pub trait AdminApi: Send + Sync + 'static {
    /// What `/status` answers with.
    type Status: Serialize + Send;

    /// Whether every saved pod has been resumed (`/healthz/ready`).
    fn ready(&self) -> bool;
    /// OpenMetrics text (`/metrics`).
    fn metrics(&self) -> String;
    /// The config in force and where it came from (`/config_dump`).
    fn config_dump(&self) -> serde_json::Value;
    fn status(&self) -> impl Future<Output = Self::Status> + Send;
    /// Owns the agent: enrollment runs to its end in a task of its own.
    fn enroll(
        self: Arc<Self>,
        request: EnrollRequest,
    ) -> impl Future<Output = Result<()>> + Send + 'static;
    fn unenroll(&self, uid: &str) -> impl Future<Output = Result<()>> + Send;
}

impl AdminApi for Agent {
    type Status = Status;

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn metrics(&self) -> String {
        self.metrics.encode(
            &self.datapath.maps.kernel_stats(),
            &self.proxy.http.telemetry.encode(),
        )
    }

    fn config_dump(&self) -> serde_json::Value {
        json!({
            "source": self.registry.source(),
            "resources": self.registry.snapshot().resources(),
            "routeRequests": crate::status::route_statuses(self),
        })
    }

    fn status(&self) -> impl Future<Output = Status> + Send {
        Status::of(self)
    }

    async fn enroll(self: Arc<Self>, request: EnrollRequest) -> Result<()> {
        Agent::enroll(&self, request).await
    }

    fn unenroll(&self, uid: &str) -> impl Future<Output = Result<()>> + Send {
        Agent::unenroll(self, uid)
    }
}
