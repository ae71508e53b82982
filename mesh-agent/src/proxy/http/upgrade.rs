//! Requests that switch protocols (HTTP/1.1 `Upgrade`, e.g. WebSocket): sent on a connection
//! of their own; once the upstream answers 101, both connections are handed over and bytes
//! are relayed until either side closes. No retries: an upgrade is not idempotent.

use std::sync::Arc;

use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use mesh_api::Snapshot;

use super::body::ReplayBody;
use super::errors::{ProxyBody, ProxyError};
use super::forward::{judge_same_node, rebuild, Reached};
use super::pool::{SendError, Target};
use super::record::Pending;
use super::routing::{choose, Destination, Plan};
use super::{headers, Downstream};
use crate::metrics::Failure;

pub async fn forward<'s>(
    conn: &Downstream,
    snapshot: &'s Arc<Snapshot>,
    plan: &Plan<'s>,
    mut parts: Parts,
    body: ReplayBody,
    client_upgrade: OnUpgrade,
    record: &mut Pending,
) -> Result<(Response<ProxyBody>, Reached<'s>), ProxyError> {
    let context = &conn.context;
    // An upgraded connection is not counted as an outstanding request (`_load` ends with
    // this function, before the relay).
    let Destination {
        service,
        endpoint,
        load: _load,
        ..
    } = match conn.target.fixed {
        Some(endpoint) => Destination {
            service: plan.host,
            endpoint,
            load: None,
            outliers: None,
            picked: None,
        },
        None => choose(snapshot, plan, conn, &parts.headers, &[])?,
    };
    record.upstream = Some(endpoint);
    record.attempts = 1;
    // Connection and Upgrade stay: they are the request.
    let fallback_authority = conn.target.dialled.to_string();
    headers::fit_request_target(
        &mut parts.uri,
        &mut parts.headers,
        http::Version::HTTP_11,
        &fallback_authority,
    );
    let request = judge_same_node(conn, snapshot, endpoint, rebuild(&parts, body), record)?;
    let (mut sender, security, guard) = context
        .http_pool
        .dedicated_h1(Target {
            context,
            endpoint,
            app: conn.app,
            service,
        })
        .await
        .map_err(|e| match e {
            SendError::Connect(Failure::AuthzDenied) => ProxyError::Denied,
            SendError::Overflow(_) => ProxyError::Overflow,
            _ => ProxyError::ConnectFailure,
        })?;
    let send = sender.send_request(request);
    let mut response = match plan.timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .map_err(|_| ProxyError::Timeout)?,
        None => send.await,
    }
    .map_err(|_| ProxyError::UpstreamReset)?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let pod = context.pod.clone();
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    // Listed and counted (maxConnections) while it lasts; revocable.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = guard.revoked() => {}
                    }
                }
                Err(e) => tracing::debug!(%pod, error = %e, "protocol upgrade failed"),
            }
        });
    }
    Ok((
        response.map(|b| b.map_err(Into::into).boxed_unsync()),
        Reached {
            service,
            endpoint,
            security,
        },
    ))
}
