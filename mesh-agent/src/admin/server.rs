//! Admin routes and the two listeners that serve them.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::agent::Agent;
use crate::pods::refusal::{self, Reason};
use crate::pods::EnrollRequest;

use super::api::AdminApi;
use super::listen;

/// An enroll request is a few hundred bytes of JSON, a log filter a few dozen.
const MAX_REQUEST_BODY: usize = 64 * 1024;

type Shared<A> = State<Arc<A>>;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.sock")
}

/// What the loopback HTTP address serves.
pub fn read_only_routes<A: AdminApi>() -> Router<Arc<A>> {
    Router::new()
        .route("/healthz/ready", get(ready::<A>))
        .route("/healthz/live", get(live))
        .route("/metrics", get(metrics::<A>))
        .route("/config_dump", get(config_dump::<A>))
        .route("/status", get(status::<A>))
}

/// What the root-only unix socket serves: the read-only routes, enrollment and the log
/// filter (which could flood the node's disk or hide an attack: root only, like enrollment).
pub fn socket_routes<A: AdminApi>() -> Router<Arc<A>> {
    read_only_routes()
        .route("/v1/pods", post(enroll::<A>))
        .route("/v1/pods/{uid}", delete(unenroll::<A>))
        .route("/logging", get(log_filter::<A>).put(set_log_filter::<A>))
}

/// Serves the read-only routes on a loopback TCP address.
pub async fn serve_http(agent: Arc<Agent>, addr: SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!("--admin-addr {addr} is not a loopback address; the admin API never listens beyond the node");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin address {addr}"))?;
    let app = read_only_routes::<Agent>().with_state(agent);
    listen::serve(listener, format!("admin HTTP {addr}"), app).await;
    Ok(())
}

/// Serves every route, including enrollment, on a root-only unix socket.
pub async fn serve_unix(agent: Arc<Agent>, path: PathBuf) -> Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(&path); // left by an earlier run
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let app = socket_routes::<Agent>().with_state(agent);
    let name = format!("admin socket {}", path.display());
    Ok(tokio::spawn(listen::serve(listener, name, app)))
}

async fn ready<A: AdminApi>(State(agent): Shared<A>) -> Response {
    let readiness = agent.readiness().await;
    tracing::debug!(ready = readiness.ready, pending = ?readiness.pending, "readiness asked");
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness)).into_response()
}

/// Liveness: answered by the runtime that serves the proxy, from nothing else, so neither the
/// control plane nor a pod (nor a lock a pod's enrollment holds) can get the agent restarted.
async fn live() -> Response {
    (StatusCode::OK, "alive\n").into_response()
}

async fn metrics<A: AdminApi>(State(agent): Shared<A>) -> Response {
    let text = agent.metrics();
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn config_dump<A: AdminApi>(State(agent): Shared<A>) -> Response {
    Json(agent.config_dump()).into_response()
}

async fn status<A: AdminApi>(State(agent): Shared<A>) -> Json<A::Status> {
    Json(agent.status().await)
}

/// Reads a small JSON request body, within [`listen::REQUEST_BODY_TIMEOUT`].
async fn read_json<T: serde::de::DeserializeOwned>(body: Body, what: &str) -> Result<T, Response> {
    let bytes = match tokio::time::timeout(
        listen::REQUEST_BODY_TIMEOUT,
        axum::body::to_bytes(body, MAX_REQUEST_BODY),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(bad_request(format!("bad {what} request: {e}"))),
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                Reason::BadRequest,
                format!(
                    "the {what} request body did not arrive within {}s",
                    listen::REQUEST_BODY_TIMEOUT.as_secs()
                ),
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("bad {what} request: {e}")))
}

async fn enroll<A: AdminApi>(State(agent): Shared<A>, body: Body) -> Response {
    let request: EnrollRequest = match read_json(body, "enroll").await {
        Ok(request) => request,
        Err(response) => return response,
    };
    // A task of its own: a client that hangs up must not cut an enrollment off half-way.
    let enrolled = tokio::spawn(agent.enroll(request)).await;
    match enrolled {
        Ok(Ok(())) => (StatusCode::CREATED, Json(json!({"enrolled": true}))).into_response(),
        Ok(Err(e)) => refused(&e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Reason::Internal,
            format!("enrollment failed: {e}"),
        ),
    }
}

/// 404 only when no pod with this uid is enrolled (a CNI DEL takes that as done); any other
/// failure is the agent's (500), and the pod may still be enrolled.
async fn unenroll<A: AdminApi>(State(agent): Shared<A>, UrlPath(uid): UrlPath<String>) -> Response {
    match agent.unenroll(&uid).await {
        Ok(()) => Json(json!({"unenrolled": true})).into_response(),
        Err(e) => refused(&e),
    }
}

async fn log_filter<A: AdminApi>(State(agent): Shared<A>) -> Response {
    match agent.log_filter() {
        Some(level) => Json(json!({ "level": level })).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Internal,
            "this process's log filter cannot be changed at run time".into(),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFilterRequest {
    /// `RUST_LOG` syntax: `debug`, `info,mesh_agent::proxy=debug`.
    level: String,
}

async fn set_log_filter<A: AdminApi>(State(agent): Shared<A>, body: Body) -> Response {
    let request: LogFilterRequest = match read_json(body, "log level").await {
        Ok(request) => request,
        Err(response) => return response,
    };
    match agent.set_log_filter(&request.level) {
        Ok(level) => Json(json!({ "level": level })).into_response(),
        Err(message) => bad_request(message),
    }
}

/// The answer to a failed enroll or unenroll, with the reason a program acts on.
fn refused(e: &anyhow::Error) -> Response {
    let reason = refusal::reason_of(e);
    let code =
        StatusCode::from_u16(reason.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(code, reason, format!("{e:#}"))
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, Reason::BadRequest, message)
}

fn error(code: StatusCode, reason: Reason, message: String) -> Response {
    (code, Json(json!({"error": message, "reason": reason}))).into_response()
}
