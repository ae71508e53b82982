//! Shared pieces of the mesh identity tests: ports, markers, clients run in pods, and
//! readings of the agents' status and metrics.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_tests::mesh::MeshNode;
use mesh_tests::two_nodes::{self, TwoNodes};
use mesh_tests::{cargo_bin, wait_until_ok, Pod, PodProcess};
use serde_json::Value;

pub use mesh_tests::two_nodes::{
    authz_policy, certificates, connections, failures, mesh_config, peer_authentication,
    service_yaml, PodDef, NODE_NAMES,
};

/// Upper bound for anything a test waits for; the happy path takes milliseconds.
pub const T: Duration = Duration::from_secs(10);
/// The service VIP (not routed anywhere: only capture makes it reachable).
pub const VIP: &str = "10.96.0.20";
/// Where the HTTP apps listen (the service's targetPort).
pub const APP_PORT: u16 = 8080;
/// Where the echo apps listen.
pub const ECHO_PORT: u16 = 9000;
/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

pub fn vip() -> IpAddr {
    VIP.parse().unwrap()
}

/// A string no packet contains by chance: `<tag>-<pid>-<nanoseconds>`.
pub fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos:x}", std::process::id())
}

/// `http://<addr><path>`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// A GET from inside `pod` (pod-tool http-get): the body, or the client's error.
pub fn try_get(pod: &Pod, url: &str) -> Result<String> {
    mesh_tests::observe::try_get(pod, url, 3000)
}

/// A GET that must succeed; returns the body.
pub fn get(pod: &Pod, url: &str) -> String {
    try_get(pod, url).unwrap_or_else(|e| panic!("GET {url} from {}: {e:#}", pod.name()))
}

/// A GET that must get no HTTP answer at all (refused, reset or closed by the mesh, not an
/// error status from the app); returns the client's error.
pub fn get_refused(pod: &Pod, url: &str) -> String {
    match try_get(pod, url) {
        Ok(body) => panic!(
            "GET {url} from {} was expected to be refused but answered {body:?}",
            pod.name()
        ),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                !e.contains("HTTP status"),
                "GET {url} from {}: the mesh was to refuse it, yet an HTTP answer came: {e}",
                pod.name()
            );
            e
        }
    }
}

/// The `mesh-probe` binary (built with `cargo build -p mesh-tests --bins`).
pub fn probe() -> std::path::PathBuf {
    cargo_bin("mesh-probe")
}

/// Starts `mesh-probe watch --connect <addr>` in `pod` and waits for `connected`; `None` if the
/// connection did not work (the probe exited instead).
pub fn watch(pod: &Pod, addr: SocketAddr) -> (PodProcess, bool) {
    let target = addr.to_string();
    let mut p = pod
        .spawn(
            probe(),
            ["watch", "--connect", &target, "--timeout-ms", "3000"],
        )
        .expect("spawning mesh-probe watch");
    mesh_tests::wait_until(T, || p.stdout().contains("connected") || !p.is_running());
    let connected = p.stdout().contains("connected");
    (p, connected)
}

/// One 32-byte round trip with the echo server at `addr` from `pod` on a new connection.
pub fn echo_once(pod: &Pod, addr: SocketAddr) -> Result<()> {
    let target = addr.to_string();
    let out = pod.run(
        probe(),
        [
            "echo-loop",
            "--connect",
            &target,
            "--seconds",
            "0.001",
            "--timeout-ms",
            "3000",
        ],
        T,
    )?;
    let result: Value = serde_json::from_slice(&out.stdout).context("echo-loop output")?;
    anyhow::ensure!(result["ok"].as_u64() >= Some(1), "no round trip: {result}");
    Ok(())
}

pub fn status(agent: &MeshNode) -> Value {
    agent.status_json().expect("mesh-agent status -o json")
}

/// Waits until `agent` lists an open connection that `pred` accepts; returns it.
pub fn wait_connection(agent: &MeshNode, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_until_ok(T, || {
        let s = agent.status_json()?;
        connections(&s)
            .into_iter()
            .find(|c| pred(c))
            .with_context(|| {
                format!(
                    "no open connection {what}; connections: {}",
                    s["connections"]
                )
            })
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits until `agent` lists no open connection that `pred` accepts.
pub fn wait_no_connection(agent: &MeshNode, what: &str, pred: impl Fn(&Value) -> bool) {
    wait_until_ok(T, || {
        let s = agent.status_json()?;
        match connections(&s).into_iter().find(|c| pred(c)) {
            Some(c) => anyhow::bail!("connection {what} still open: {c}"),
            None => Ok(()),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `failures(agent, reason, pod)` that must be readable.
pub fn failure_count(agent: &MeshNode, reason: &str, pod: &str) -> u64 {
    failures(agent, reason, Some(pod)).expect("reading /metrics")
}

/// Waits until the `reason` failure counter of `pod` on `agent` exceeds `before`.
pub fn wait_failure_above(agent: &MeshNode, reason: &str, pod: &str, before: u64) -> u64 {
    let mut last = before;
    let grew = mesh_tests::wait_until(T, || {
        last = failure_count(agent, reason, pod);
        last > before
    });
    assert!(
        grew,
        "mesh_proxy_failures_total{{pod=\"{pod}\",reason=\"{reason}\"}} stayed at {last}; metrics:\n{}",
        two_nodes::metrics(agent).unwrap_or_default()
    );
    last
}

/// The certificate of `spiffe_id` in the agent's status, if it has one (an entry with a
/// serial).
pub fn certificate(agent: &MeshNode, spiffe_id: &str) -> Option<Value> {
    certificates(&status(agent))
        .into_iter()
        .find(|c| c["spiffeId"] == spiffe_id && c["serial"].is_string())
}

/// Deletes a resource through the control plane and waits until both agents follow.
pub fn delete(mesh: &TwoNodes, kind: &str, name: &str) {
    mesh.cp
        .meshctl_ok(&["delete", kind, name])
        .unwrap_or_else(|e| panic!("meshctl delete {kind} {name}: {e:#}"));
    mesh.wait_synced().expect("agents follow the delete");
}

/// Applies `yaml` and waits until both agents serve it.
pub fn apply(mesh: &TwoNodes, yaml: &str) {
    mesh.apply(yaml)
        .unwrap_or_else(|e| panic!("applying {yaml}: {e:#}"));
}

/// `a` (service account `client-a`) on node-1 and `b` (`web`, label `app: web`) on node-2,
/// with workload certificates living `ttl_seconds`.
pub fn client_and_web(ttl_seconds: u64) -> TwoNodes {
    TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .config(&mesh_config(&format!(
            "  workloadCertTtlSeconds: {ttl_seconds}\n"
        )))
        .start()
        .expect("starting two nodes")
}
