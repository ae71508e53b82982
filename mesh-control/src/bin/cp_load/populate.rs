//! `cp-load populate`: N services, M workloads, in Apply batches.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mesh_proto::v1 as pb;
use serde_json::json;

use crate::Target;

pub struct Summary {
    pub applies: usize,
    pub slowest_apply_ms: f64,
    pub version: u64,
}

pub const NAMESPACE: &str = "default";
/// Workloads are spread over this many nodes (`node-0` ...).
pub const NODES: usize = 100;

/// Service `i`: `svc-i`, VIPs 10.96.0.0/12 + i and fd00:96:: + i, one port, selector app=svc-i.
pub fn service(i: usize) -> serde_json::Value {
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32);
    let v6 = Ipv6Addr::from(u128::from("fd00:96::1".parse::<Ipv6Addr>().unwrap()) + i as u128);
    json!({
        "apiVersion": mesh_api::API_VERSION,
        "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": NAMESPACE},
        "spec": {
            "vips": [v4.to_string(), v6.to_string()],
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "tcp"}],
            "selector": {"app": format!("svc-{i}")},
        },
    })
}

/// Workload `j` of a mesh with `services` services: `w-j`, IP 10.128.0.0/9 + j, endpoint of
/// `svc-(j % services)`, on `node-(j % 100)`.
pub fn workload(j: usize, services: usize) -> serde_json::Value {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + j as u32);
    workload_with(
        &format!("w-{j}"),
        &ip.to_string(),
        &format!("node-{}", j % NODES),
        &format!("svc-{}", j % services.max(1)),
    )
}

pub fn workload_with(name: &str, ip: &str, node: &str, app: &str) -> serde_json::Value {
    json!({
        "apiVersion": mesh_api::API_VERSION,
        "kind": "Workload",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "uid": name,
            "ips": [ip],
            "node": node,
            "serviceAccount": app,
            "labels": {"app": app},
        },
    })
}

pub async fn run(
    target: &Target,
    services: usize,
    workloads: usize,
    batch: usize,
) -> Result<Summary> {
    if services > (1 << 20) || workloads > (1 << 23) {
        bail!("at most 2^20 services and 2^23 workloads (the address ranges)");
    }
    let mut admin = target.admin().await?;
    let all = (0..services)
        .map(service)
        .chain((0..workloads).map(|j| workload(j, services)));
    let mut summary = Summary {
        applies: 0,
        slowest_apply_ms: 0.0,
        version: 0,
    };
    let mut chunk = Vec::with_capacity(batch);
    let mut done = 0;
    let mut all = all.peekable();
    while all.peek().is_some() {
        chunk.clear();
        chunk.extend(all.by_ref().take(batch).map(|v| pb::Resource {
            json: serde_json::to_vec(&v).expect("JSON values serialise"),
        }));
        let started = Instant::now();
        let response = admin
            .apply(pb::ApplyRequest {
                resources: std::mem::take(&mut chunk),
                source: format!("cp-load populate (resources {done}..)"),
                dry_run: false,
            })
            .await
            .with_context(|| format!("applying resources {done}.."))?
            .into_inner();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        summary.slowest_apply_ms = summary.slowest_apply_ms.max(ms);
        summary.applies += 1;
        summary.version = response.version;
        done += response.results.len();
        eprintln!(
            "cp-load populate: {done}/{} applied ({ms:.0} ms for this batch)",
            services + workloads
        );
    }
    Ok(summary)
}
