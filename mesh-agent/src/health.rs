//! Health checking of the endpoints on this node.
//!
//! Every interval (MeshConfig `spec.healthCheck`), each enrolled pod that backs a service is
//! probed on each of the service's target ports, from inside the pod (so the probe tests the
//! app, not the proxy in front of it): a TCP connect, or `GET <httpPath>` expecting 2xx when
//! the Service sets `spec.healthCheck.httpPath`. Thresholds smooth out single failures. A
//! change is published in `Agent::local_health`; with a control plane it is reported up and
//! comes back to every agent in a push, without one it applies locally.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::HealthCheckSettings;
use mesh_proto::v1::EndpointHealth;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agent::Agent;
use crate::proxy::{upstream_connect, PodContext};

/// One probe: a pod's target port, over HTTP when a path is set.
struct Probe {
    context: Arc<PodContext>,
    target: SocketAddr,
    http_path: Option<String>,
}

#[derive(Default)]
struct Streak {
    healthy: Option<bool>,
    successes: u32,
    failures: u32,
}

pub async fn run(agent: Arc<Agent>, apply_locally: bool) {
    let mut streaks: HashMap<String, Streak> = HashMap::new();
    loop {
        let settings = agent.registry.snapshot().mesh_config().health_check.clone();
        let probes = probes(&agent).await;
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let checks = probes
            .into_iter()
            .map(|(id, ((namespace, workload), probes))| async move {
                let mut failure = None;
                for probe in &probes {
                    if let Err(e) = check(probe, timeout).await {
                        failure = Some(format!("{}: {e}", probe.target));
                        break;
                    }
                }
                (id, namespace, workload, failure)
            });
        let results = futures::future::join_all(checks).await;
        let mut changed = false;
        for (id, namespace, workload, failure) in results {
            let streak = streaks.entry(id.clone()).or_default();
            if let Some(healthy) = next_state(streak, failure.is_none(), &settings) {
                let detail = failure.unwrap_or_else(|| "ok".into());
                tracing::info!(endpoint = %id, healthy, %detail, "endpoint health changed");
                agent.local_health.lock().insert(
                    id,
                    EndpointHealth {
                        namespace,
                        workload,
                        healthy,
                        detail,
                        reporter: agent.node.clone(),
                    },
                );
                changed = true;
            }
        }
        if changed {
            if apply_locally {
                let health = agent
                    .local_health
                    .lock()
                    .values()
                    .map(|h| {
                        (
                            mesh_api::ObjectKey::new(&h.namespace, &h.workload),
                            h.healthy,
                        )
                    })
                    .collect();
                agent.registry.set_health(health);
            }
            agent.health_changed.notify_waiters();
        }
        tokio::time::sleep(Duration::from_millis(settings.interval_ms.max(100))).await;
    }
}

/// Applies one result to a streak; `Some(new state)` when the endpoint's health changes.
fn next_state(streak: &mut Streak, ok: bool, settings: &HealthCheckSettings) -> Option<bool> {
    if ok {
        streak.successes += 1;
        streak.failures = 0;
    } else {
        streak.failures += 1;
        streak.successes = 0;
    }
    let next = match streak.healthy {
        // First verdict: one success is enough to call it healthy; failures need the threshold.
        None if ok => Some(true),
        None => (streak.failures >= settings.unhealthy_threshold.max(1)).then_some(false),
        Some(true) if !ok && streak.failures >= settings.unhealthy_threshold.max(1) => Some(false),
        Some(false) if ok && streak.successes >= settings.healthy_threshold.max(1) => Some(true),
        _ => None,
    };
    if next.is_some() {
        streak.healthy = next;
    }
    next
}

/// What to probe: enrolled pods that back a service, by `namespace/workload`.
async fn probes(agent: &Agent) -> BTreeMap<String, ((String, String), Vec<Probe>)> {
    let snapshot = agent.registry.snapshot();
    let pods = agent.pods.lock().await;
    let mut all = BTreeMap::new();
    for pod in pods.values() {
        let Some(workload) = snapshot.workload_by_uid(&pod.request.uid) else {
            continue;
        };
        let Some(ip) = pod.request.ips.first().copied() else {
            continue;
        };
        let mut probes: Vec<Probe> = Vec::new();
        for service in snapshot.services().filter(|s| s.selects(workload)) {
            let http_path = service
                .spec
                .health_check
                .as_ref()
                .map(|h| h.http_path.clone());
            for port in &service.spec.ports {
                let target = SocketAddr::new(ip, port.target());
                if !probes
                    .iter()
                    .any(|p| p.target == target && p.http_path == http_path)
                {
                    probes.push(Probe {
                        context: pod.context.clone(),
                        target,
                        http_path: http_path.clone(),
                    });
                }
            }
        }
        if !probes.is_empty() {
            let key = workload.metadata.key();
            all.insert(
                format!("{}/{}", key.namespace, key.name),
                ((key.namespace, key.name), probes),
            );
        }
    }
    all
}

async fn check(probe: &Probe, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let mut stream = upstream_connect(&probe.context.netns, probe.target, timeout)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let Some(path) = &probe.http_path else {
            return Ok(());
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: mesh-agent-health\r\nConnection: close\r\n\r\n",
            probe.target
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut head = [0u8; 32];
        let n = stream
            .read(&mut head)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let status = std::str::from_utf8(&head[..n])
            .ok()
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| "no HTTP status line".to_string())?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_smooth_single_failures() {
        let settings = HealthCheckSettings {
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            ..HealthCheckSettings::default()
        };
        let mut s = Streak::default();
        assert_eq!(next_state(&mut s, true, &settings), Some(true));
        assert_eq!(next_state(&mut s, false, &settings), None);
        assert_eq!(next_state(&mut s, true, &settings), None);
        assert_eq!(next_state(&mut s, false, &settings), None);
        assert_eq!(next_state(&mut s, false, &settings), Some(false));
        assert_eq!(next_state(&mut s, true, &settings), None);
        assert_eq!(next_state(&mut s, true, &settings), Some(true));
    }
}
