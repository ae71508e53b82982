//! The node agent's admin API over its unix socket (`<stateDir>/agent.sock`, root only): one
//! HTTP/1.1 request per connection, each bounded in time so a stuck agent cannot hang the
//! runtime's pod setup.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Enrolling opens the pod's namespace and listeners: fast, but it waits for the agent's lock.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(20);
/// Everything else answers from memory.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Agent {
    socket: PathBuf,
}

/// The agent did not answer: not running, not listening yet, or too slow.
#[derive(Debug)]
pub struct Unreachable(pub String);

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The agent's `{"error": ...}` message, else its readiness's pending list, else the
    /// body as text.
    pub fn message(&self) -> String {
        let json = self.json();
        if let Some(error) = json["error"].as_str() {
            return error.to_string();
        }
        if let Some(pending) = json["pending"].as_array() {
            let pending: Vec<&str> = pending.iter().filter_map(Value::as_str).collect();
            return format!("pending: {}", pending.join("; "));
        }
        String::from_utf8_lossy(&self.body).trim().to_string()
    }

    /// Why the agent refused (`reason` beside `error`: `not_declared`, `mismatch`...); `None`
    /// from an agent that does not say.
    pub fn reason(&self) -> Option<String> {
        self.json()["reason"].as_str().map(str::to_owned)
    }

    /// `/healthz/ready`: whether the agent takes pods now, even if not ready in full (a
    /// certificate still pending must not keep other pods from starting).
    pub fn accepts_pods(&self) -> bool {
        self.ok() || self.json()["acceptsPods"] == true
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What the agent's `POST /v1/pods` takes. The service account is left out (the agent takes
/// the declared Workload's) and so is the cgroup (capture follows the network namespace).
#[derive(Serialize)]
pub struct EnrollRequest<'a> {
    pub uid: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    pub netns: &'a Path,
    pub ips: &'a [IpAddr],
}

/// The part of an enrolled pod in the agent's `/status` that tells whether it is served.
#[derive(Clone, Debug, Deserialize)]
pub struct EnrolledPod {
    pub uid: String,
    pub netns: String,
    pub ips: Vec<String>,
    pub listeners: Vec<String>,
    /// Capture in force in the kernel for it; absent from older agents.
    #[serde(default)]
    pub captured: Option<bool>,
}

/// The part of `/status` that tells whether capture is in force.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Program {
    pub name: String,
    pub attached_to: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Status {
    pub pods: Vec<EnrolledPod>,
    pub programs: Vec<Program>,
}

impl Agent {
    pub fn new(state_dir: &Path) -> Agent {
        Agent {
            socket: state_dir.join("agent.sock"),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the agent takes new pods (`/healthz/ready`, see [`Reply::accepts_pods`]).
    pub fn ready(&self) -> Result<Reply, Unreachable> {
        self.call(Method::GET, "/healthz/ready", None, QUERY_TIMEOUT)
    }

    pub fn enroll(&self, request: &EnrollRequest) -> Result<Reply, Unreachable> {
        let body = serde_json::to_vec(request).expect("an enroll request serializes");
        self.call(Method::POST, "/v1/pods", Some(body), ENROLL_TIMEOUT)
    }

    /// `uid` was checked to be URL-safe when it was read from `CNI_ARGS`.
    pub fn unenroll(&self, uid: &str) -> Result<Reply, Unreachable> {
        let path = format!("/v1/pods/{uid}");
        self.call(Method::DELETE, &path, None, ENROLL_TIMEOUT)
    }

    pub fn status(&self) -> Result<Status, Unreachable> {
        let reply = self.call(Method::GET, "/status", None, QUERY_TIMEOUT)?;
        if !reply.ok() {
            return Err(Unreachable(format!(
                "/status answered {}: {}",
                reply.status,
                reply.message()
            )));
        }
        serde_json::from_slice(&reply.body)
            .map_err(|e| Unreachable(format!("/status is not what mesh-cni expects: {e}")))
    }

    /// Whether the agent's config declares a Workload with this uid (from `/config_dump`):
    /// tells "not declared yet" (retry) from a declared Workload that does not match the pod.
    pub fn declares_workload(&self, uid: &str) -> Result<bool, Unreachable> {
        let reply = self.call(Method::GET, "/config_dump", None, QUERY_TIMEOUT)?;
        let dump: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| Unreachable(format!("/config_dump is not JSON: {e}")))?;
        let resources = dump["resources"].as_array().map(Vec::as_slice);
        Ok(resources
            .unwrap_or_default()
            .iter()
            .any(|r| r["kind"] == "Workload" && r["spec"]["uid"] == uid))
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Reply, Unreachable> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Unreachable(format!("starting the I/O runtime: {e}")))?;
        let what = format!("{method} {path}");
        runtime.block_on(async {
            match tokio::time::timeout(timeout, self.exchange(method, path, body)).await {
                Ok(result) => result,
                Err(_) => Err(Unreachable(format!(
                    "the agent at {} did not answer {what} within {}s",
                    self.socket.display(),
                    timeout.as_secs()
                ))),
            }
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, Unreachable> {
        let failed = |e: &dyn std::fmt::Display| {
            Unreachable(format!(
                "the agent at {} ({method} {path}): {e}",
                self.socket.display()
            ))
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                Unreachable(format!(
                    "the mesh agent is not running (cannot connect to {}: {e})",
                    self.socket.display()
                ))
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "mesh-agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| failed(&e))?;
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(&e))?
            .to_bytes()
            .to_vec();
        Ok(Reply { status, body })
    }
}
