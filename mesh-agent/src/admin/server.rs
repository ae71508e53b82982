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
use crate::pods::EnrollRequest;

use super::api::AdminApi;
use super::listen;

/// An enroll request is a few hundred bytes of JSON.
const MAX_ENROLL_REQUEST: usize = 64 * 1024;

type Shared<A> = State<Arc<A>>;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.sock")
}

/// What the loopback HTTP address serves.
pub fn read_only_routes<A: AdminApi>() -> Router<Arc<A>> {
    Router::new()
        .route("/healthz/ready", get(ready::<A>))
        .route("/metrics", get(metrics::<A>))
        .route("/config_dump", get(config_dump::<A>))
        .route("/status", get(status::<A>))
}

/// What the root-only unix socket serves: the read-only routes and enrollment.
pub fn socket_routes<A: AdminApi>() -> Router<Arc<A>> {
    read_only_routes()
        .route("/v1/pods", post(enroll::<A>))
        .route("/v1/pods/{uid}", delete(unenroll::<A>))
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
    if agent.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "resuming pods\n").into_response()
    }
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

async fn enroll<A: AdminApi>(State(agent): Shared<A>, body: Body) -> Response {
    let body = match tokio::time::timeout(
        listen::REQUEST_BODY_TIMEOUT,
        axum::body::to_bytes(body, MAX_ENROLL_REQUEST),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("bad enroll request: {e}")),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the enroll request body did not arrive within {}s",
                    listen::REQUEST_BODY_TIMEOUT.as_secs()
                ),
            )
        }
    };
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad enroll request: {e}")),
    };
    // A task of its own: a client that hangs up must not cut an enrollment off half-way.
    let enrolled = tokio::spawn(agent.enroll(request)).await;
    match enrolled {
        Ok(Ok(())) => (StatusCode::CREATED, Json(json!({"enrolled": true}))).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("enrollment failed: {e}"),
        ),
    }
}

async fn unenroll<A: AdminApi>(State(agent): Shared<A>, UrlPath(uid): UrlPath<String>) -> Response {
    match agent.unenroll(&uid).await {
        Ok(()) => Json(json!({"unenrolled": true})).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, format!("{e:#}")),
    }
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(json!({"error": message}))).into_response()
}
