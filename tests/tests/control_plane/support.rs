//! Building blocks of the control-plane tests: the common "control plane + agent + client and
//! web pods behind a service VIP" setup, reading `meshctl status` and the agent's status, and
//! waiting for the agent to follow. Pod and HTTP helpers are small copies of the capture
//! tests' ones (tests/tests/capture/support.rs).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::{service_yaml, workload_yaml, MeshNode, NODE};
use mesh_tests::{cargo_bin, wait_until, wait_until_ok, Bridge, Pod, PodProcess};
use serde_json::Value;

/// Upper bound for anything a test waits for; the happy path takes milliseconds.
pub const T: Duration = Duration::from_secs(10);

/// The service VIP of the tests (not routed anywhere: only capture makes it reachable).
pub const VIP: &str = "10.96.0.20";
/// The HTTP port apps listen on (the service's targetPort).
pub const APP_PORT: u16 = 8080;

/// Health checks every 200 ms (default 2 s) so health settles fast; the thresholds stay at
/// their defaults (2 failures to go unhealthy, 1 success to come back).
pub const FAST_HEALTH: &str = "---\napiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  healthCheck: {intervalMs: 200, timeoutMs: 200}\n";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn vip() -> IpAddr {
    ip(VIP)
}

/// `http://<ip>:<port>/`.
pub fn url(ip: IpAddr, port: u16) -> String {
    format!("http://{}/", SocketAddr::new(ip, port))
}

/// Starts the test app (`pod-tool http-serve`) in `pod` on [`APP_PORT`].
pub fn http_server(pod: &Pod, name: &str) -> PodProcess {
    mesh_tests::observe::http_server(pod, name, APP_PORT)
}

pub use mesh_tests::observe::{get, try_get};

/// A GET that must fail (e.g. a VIP nobody captures any more); returns the error.
pub fn get_fails(pod: &Pod, url: &str, timeout_ms: u64) -> String {
    match try_get(pod, url, timeout_ms) {
        Ok(body) => panic!(
            "GET {url} from {} was expected to fail but answered {body:?}",
            pod.name()
        ),
        Err(e) => format!("{e:#}"),
    }
}

pub use mesh_tests::observe::AgentStatus;

// ---- meshctl ----------------------------------------------------------------------------

/// `meshctl status -o json` through `cp`.
pub fn cp_status(cp: &ControlPlane) -> Value {
    let text = cp
        .meshctl_ok(&["status", "-o", "json"])
        .expect("meshctl status -o json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status is not JSON ({e}): {text}"))
}

/// The control plane's config version.
pub fn cp_version(cp: &ControlPlane) -> u64 {
    cp_status(cp)["version"].as_u64().expect("status.version")
}

/// The agent `node`'s entry in a `meshctl status -o json`.
pub fn agent_entry(status: &Value, node: &str) -> Option<Value> {
    status["agents"]
        .as_array()?
        .iter()
        .find(|a| a["node"] == node)
        .cloned()
}

/// Waits until the agent on `node` is connected (as `cp` reports it), has ACKed the control
/// plane's current version, and serves that version itself. Returns the version.
pub fn wait_synced(cp: &ControlPlane, node: &MeshNode) -> u64 {
    wait_until_ok(T, || {
        let status = cp_status(cp);
        let version = status["version"].as_u64().context("status.version")?;
        let agent = agent_entry(&status, NODE).with_context(|| format!("no agent: {status}"))?;
        ensure!(agent["connected"] == true, "not connected: {agent}");
        ensure!(
            agent["ackedVersion"] == version,
            "acked {} != version {version}: {agent}",
            agent["ackedVersion"]
        );
        let local = node.status_json()?["config"]["version"].clone();
        ensure!(
            local == version,
            "agent serves {local}, control plane has {version}"
        );
        Ok(version)
    })
    .unwrap_or_else(|e| panic!("agent never caught up with the control plane: {e:#}"))
}

/// Waits until the agent serves config version `version` or newer; returns how long it took.
pub fn wait_agent_version(node: &MeshNode, version: u64) -> Duration {
    let start = Instant::now();
    let mut last = 0;
    let reached = wait_until(T, || {
        last = node
            .status_json()
            .map(|s| s["config"]["version"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        last >= version
    });
    assert!(
        reached,
        "agent serves version {last}, expected >= {version}"
    );
    start.elapsed()
}

/// `meshctl endpoints list <service>`: workload -> health word (healthy, unhealthy, unknown).
pub fn endpoints(cp: &ControlPlane, service: &str) -> BTreeMap<String, String> {
    let text = cp
        .meshctl_ok(&["endpoints", "list", service])
        .expect("meshctl endpoints list");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            // WORKLOAD IPS NODE WEIGHT LOCALITY HEALTH [(detail)]
            Some((cells.first()?.to_string(), cells.get(5)?.to_string()))
        })
        .collect()
}

/// Waits until `meshctl endpoints list <service>` shows `workload` as `health`; returns how
/// long that took.
pub fn wait_health(cp: &ControlPlane, service: &str, workload: &str, health: &str) -> Duration {
    let start = Instant::now();
    let mut last = BTreeMap::new();
    let reached = wait_until(T, || {
        last = endpoints(cp, service);
        last.get(workload).map(String::as_str) == Some(health)
    });
    assert!(reached, "{workload} never became {health}: {last:?}");
    start.elapsed()
}

/// meshctl with arbitrary global arguments (its own `--server`, token, ...) and optional stdin.
pub fn meshctl_raw(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut command = Command::new(cargo_bin("meshctl"));
    command
        .args(args)
        .env_remove("MESHCTL_TOKEN")
        .env_remove("MESHCTL_TOKEN_FILE")
        .env_remove("MESHCTL_SERVER")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("spawning meshctl");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes())
            .expect("writing meshctl stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("waiting for meshctl")
}

/// `meshctl apply -f` of `yaml` that must fail; returns its stderr.
pub fn apply_fails(cp: &ControlPlane, yaml: &str) -> String {
    let file = write_temp(yaml);
    let out = cp
        .meshctl(&["apply", "-f", &file.path().display().to_string()])
        .unwrap();
    assert!(
        !out.status.success(),
        "apply was expected to fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A temporary `.yaml` file holding `text`.
pub fn write_temp(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// The version in the agent's config cache file (0 if there is none yet).
pub fn cached_version(state_dir: &Path) -> u64 {
    std::fs::read(state_dir.join("config-cache.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["version"].as_u64())
        .unwrap_or(0)
}

// ---- the common setup -------------------------------------------------------------------

/// A web pod of the setup: its name and its `app` label.
pub struct Web {
    pub name: &'static str,
    pub app: &'static str,
}

pub const fn web(name: &'static str, app: &'static str) -> Web {
    Web { name, app }
}

/// A control plane, an agent following it, and pods on one bridge: `client` (.2, app=client)
/// and the web pods (.3, .4, ...), each running an HTTP server named after the pod, all
/// declared as Workloads (uid `<name>-uid`) and enrolled; Service `web` at [`VIP`]:80 -> 8080
/// selects `app: web`; MeshConfig [`FAST_HEALTH`].
///
/// Fields drop in order: the agent (and its pins) first, then the servers, the pods, the
/// control plane, the bridge.
pub struct Mesh {
    pub node: MeshNode,
    pub servers: BTreeMap<String, PodProcess>,
    pub client: Pod,
    pub webs: Vec<Pod>,
    pub cp: ControlPlane,
    /// Kept so it lives as long as the pods on it.
    pub _bridge: Bridge,
}

impl Mesh {
    /// On a fresh embedded control plane.
    pub fn start(bridge_index: u8, webs: &[Web], run_args: &[&str]) -> Mesh {
        let cp = ControlPlane::start_embedded().expect("starting mesh-control");
        let urls = [cp.url()];
        Self::start_on(bridge_index, cp, &urls, webs, run_args)
    }

    /// Applies the config through `cp`, starts the agent following `agent_urls` and enrolls
    /// every pod once the agent has the config.
    pub fn start_on(
        bridge_index: u8,
        cp: ControlPlane,
        agent_urls: &[String],
        webs: &[Web],
        run_args: &[&str],
    ) -> Mesh {
        let bridge = Bridge::new(bridge_index).unwrap();
        let client = Pod::new(&bridge, "client", 2).unwrap();
        let pods: Vec<Pod> = webs
            .iter()
            .enumerate()
            .map(|(i, w)| Pod::new(&bridge, w.name, 3 + i as u8).unwrap())
            .collect();
        let servers = pods
            .iter()
            .map(|p| (p.short_name().to_owned(), http_server(p, p.short_name())))
            .collect();
        let mut config = [
            FAST_HEALTH.to_owned(),
            service_yaml("web", &[vip()], 80, APP_PORT, "web"),
            workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")]),
        ]
        .concat();
        for (pod, w) in pods.iter().zip(webs) {
            config += &workload_yaml(
                w.name,
                &format!("{}-uid", w.name),
                &[pod.ip()],
                &[("app", w.app)],
            );
        }
        cp.apply(&config).expect("applying the base config");
        let version = cp_version(&cp);
        let node = MeshNode::start_with_control_plane(NODE, agent_urls, run_args)
            .expect("starting the agent");
        wait_agent_version(&node, version);
        node.enroll(&client, "client-uid", "client").unwrap();
        for pod in &pods {
            let name = pod.short_name();
            node.enroll(pod, &format!("{name}-uid"), name).unwrap();
        }
        Mesh {
            node,
            servers,
            client,
            webs: pods,
            cp,
            _bridge: bridge,
        }
    }

    pub fn web(&self, name: &str) -> &Pod {
        self.webs
            .iter()
            .find(|p| p.short_name() == name)
            .unwrap_or_else(|| panic!("no web pod {name}"))
    }

    /// YAML of the Workload for web pod `name` with label `app: <app>`.
    pub fn web_workload(&self, name: &str, app: &str) -> String {
        workload_yaml(
            name,
            &format!("{name}-uid"),
            &[self.web(name).ip()],
            &[("app", app)],
        )
    }

    /// A GET from client to `vip`:80, answered by an endpoint that sees the client's address;
    /// returns the name of the endpoint that answered.
    pub fn get_vip(&self, vip: IpAddr) -> String {
        let r = get(&self.client, &url(vip, 80));
        assert_eq!(r.peer.ip(), self.client.ip(), "{r:?}");
        assert_eq!(r.local.port(), APP_PORT, "{r:?}");
        r.name
    }

    /// Like [`get_vip`](Self::get_vip), proving with the agent's counters that the request
    /// went through the mesh: captured in the kernel, proxied out of client and into the
    /// endpoint that answered.
    pub fn get_vip_through_mesh(&self, vip: IpAddr) -> String {
        let before = AgentStatus::of(&self.node);
        let name = self.get_vip(vip);
        let after = AgentStatus::of(&self.node);
        let delta = |pod: &str, dir: &str| {
            after.pod(pod, dir, "connections") - before.pod(pod, dir, "connections")
        };
        assert_eq!(delta("default/client", "outbound"), 1, "client outbound");
        assert_eq!(
            delta(&format!("default/{name}"), "inbound"),
            1,
            "{name} inbound"
        );
        assert_eq!(
            after.kernel("connect_captured") - before.kernel("connect_captured"),
            1,
            "{}",
            after.0["kernel"]
        );
        name
    }

    /// Waits until every endpoint of Service `web` has a health verdict and the agent has
    /// ACKed the version with it: after this, versions change only when the test changes
    /// something. Returns the version.
    pub fn settle(&self) -> u64 {
        let mut last = BTreeMap::new();
        let known = wait_until(T, || {
            last = endpoints(&self.cp, "web");
            last.values().all(|h| h != "unknown")
        });
        assert!(known, "endpoint health never reported: {last:?}");
        wait_synced(&self.cp, &self.node)
    }
}

/// Fails with `what` unless `out` succeeded; returns stdout.
pub fn stdout_ok(what: &str, out: &Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The permission bits of `path`.
pub fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
