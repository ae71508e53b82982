//! What the admin routes ask of the agent, as a trait: the routes (server.rs) are generic over
//! it, so the fuzz target of the admin HTTP surface (fuzz/fuzz_targets/admin_http.rs) runs the
//! real framing, routing and request parsing in front of an answer that needs no kernel.

use std::future::Future;
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use crate::agent::Agent;
use crate::pods::{refusal, EnrollRequest};
use crate::status::Status;

use super::Readiness;

pub trait AdminApi: Send + Sync + 'static {
    /// What `/status` answers with.
    type Status: Serialize + Send;

    /// What `/healthz/ready` answers: ready, or what is pending.
    fn readiness(&self) -> impl Future<Output = Readiness> + Send;
    /// OpenMetrics text (`/metrics`).
    fn metrics(&self) -> String;
    /// The config in force and where it came from (`/config_dump`).
    fn config_dump(&self) -> serde_json::Value;
    fn status(&self) -> impl Future<Output = Self::Status> + Send;
    /// The log filter in force (`GET /logging`); `None` if this process's cannot change.
    fn log_filter(&self) -> Option<String>;
    /// Replaces the log filter (`PUT /logging`) and returns it; the error names what is wrong
    /// and the old filter stays.
    fn set_log_filter(&self, directives: &str) -> Result<String, String>;
    /// Owns the agent: enrollment runs to its end in a task of its own. A refusal carries a
    /// [`Refusal`](crate::pods::refusal::Refusal) the routes answer with.
    fn enroll(
        self: Arc<Self>,
        request: EnrollRequest,
    ) -> impl Future<Output = Result<()>> + Send + 'static;
    fn unenroll(&self, uid: &str) -> impl Future<Output = Result<()>> + Send;
}

impl AdminApi for Agent {
    type Status = Status;

    fn readiness(&self) -> impl Future<Output = Readiness> + Send {
        Readiness::of(self)
    }

    fn metrics(&self) -> String {
        self.metrics.encode(
            &self.datapath.maps.kernel_stats(),
            &self.datapath.maps.fill(),
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

    fn log_filter(&self) -> Option<String> {
        crate::logging::current()
    }

    fn set_log_filter(&self, directives: &str) -> Result<String, String> {
        crate::logging::set(directives)
    }

    async fn enroll(self: Arc<Self>, request: EnrollRequest) -> Result<()> {
        // First, so that a pod not declared yet is told from one declared otherwise (the
        // enrollment checks again, against the config in force when it commits).
        refusal::check_declared(
            &request,
            &self.registry.snapshot(),
            &self.node,
            self.registry.source().loaded(),
        )?;
        Agent::enroll(&self, request).await
    }

    fn unenroll(&self, uid: &str) -> impl Future<Output = Result<()>> + Send {
        Agent::unenroll(self, uid)
    }
}
