//! A node as Kubernetes would set it up for the mesh: the agent running, the Debian bridge
//! plugin as the primary network (on a harness bridge, host-local handing out one fixed
//! address), `mesh-cni install` run against its conf and bin dirs, a web pod behind a service
//! VIP; and pods whose network namespace the "runtime" (runtime.rs) alone sets up.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_tests::mesh::{service_yaml, workload_yaml, MeshNode};
use mesh_tests::process::command_in;
use mesh_tests::{cargo_bin, cgroup, Bridge, Pod, PodProcess, TempDir};
use serde_json::json;

use super::runtime::{Runtime, Sandbox};

pub const T: Duration = Duration::from_secs(10);
/// Not routed anywhere: only capture makes it answer.
pub const VIP: &str = "10.96.0.30";
pub const APP_PORT: u16 = 8080;
/// The pod the runtime creates, as its Workload is declared.
pub const POD_NAME: &str = "client";
pub const POD_UID: &str = "3f6b1c2e-cni-client";
/// Free subnets of the harness (others' tests take the rest).
const BRIDGES: [u8; 4] = [5, 6, 7, 12];
/// host-local hands out only this host number, so the address is known before ADD (the
/// Workload declaring it must exist first).
const POD_OCTET: u8 = 100;

pub struct CniNode {
    pub node: MeshNode,
    pub runtime: Runtime,
    pub pod_ip: IpAddr,
    /// host-local's allocations: a file per address handed out.
    pub ipam_dir: PathBuf,
    _server: PodProcess,
    _web: Pod,
    _bridge: Bridge,
    _dirs: TempDir,
}

impl CniNode {
    /// The node with the client Workload declared.
    pub fn start() -> CniNode {
        Self::start_declaring(true)
    }

    pub fn start_declaring(declare_client: bool) -> CniNode {
        mesh_tests::require_root();
        let bridge = Bridge::first_free(&BRIDGES).unwrap();
        let web = Pod::new(&bridge, "web", 3).unwrap();
        let server = mesh_tests::observe::http_server(&web, "web", APP_PORT);
        let subnet = match bridge.gateway_v4().octets() {
            [a, b, _, _] => [a, b],
        };
        let pod_ip: IpAddr = format!("{}.{}.0.{POD_OCTET}", subnet[0], subnet[1])
            .parse()
            .unwrap();
        let mut config = service_yaml("web", &[VIP.parse().unwrap()], 80, APP_PORT, "web")
            + &workload_yaml("web", "web-uid", &[web.ip()], &[("app", "web")]);
        if declare_client {
            config += &workload_yaml(POD_NAME, POD_UID, &[pod_ip], &[("app", "client")]);
        }
        let node = MeshNode::start(&config).unwrap();
        node.enroll(&web, "web-uid", "web").unwrap();

        let dirs = mesh_tests::temp_dir().unwrap();
        let runtime = Runtime {
            bin_dir: dirs.path().join("bin"),
            conf_dir: dirs.path().join("net.d"),
        };
        std::fs::create_dir(&runtime.bin_dir).unwrap();
        std::fs::create_dir(&runtime.conf_dir).unwrap();
        let ipam_dir = dirs.path().join("ipam");
        let primary = primary_conflist(&bridge, pod_ip, &ipam_dir);
        std::fs::write(
            runtime.conf_dir.join("10-pods.conflist"),
            primary.to_string(),
        )
        .unwrap();
        install(&runtime, &node.state_dir()).unwrap();
        CniNode {
            node,
            runtime,
            pod_ip,
            ipam_dir,
            _server: server,
            _web: web,
            _bridge: bridge,
            _dirs: dirs,
        }
    }

    pub fn vip_url(&self) -> String {
        format!("http://{VIP}:80/")
    }

    /// Whether host-local holds the pod's address (released by the bridge plugin's DEL).
    pub fn address_allocated(&self) -> bool {
        self.ipam_dir
            .join("pods")
            .join(self.pod_ip.to_string())
            .exists()
    }

    /// Uids of the pods the agent has enrolled.
    pub fn enrolled(&self) -> Vec<String> {
        let status = self.node.status_json().unwrap();
        status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["uid"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// The node's network before the mesh: the bridge plugin on the harness bridge, which
/// already has the gateway address (so the plugin is not the gateway).
pub fn primary_conflist(bridge: &Bridge, pod_ip: IpAddr, ipam_dir: &Path) -> serde_json::Value {
    let gateway = bridge.gateway_v4();
    let [a, b, _, _] = gateway.octets();
    json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge.name(),
            "isGateway": false,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{
                    "subnet": format!("{a}.{b}.0.0/24"),
                    "rangeStart": pod_ip, "rangeEnd": pod_ip, "gateway": gateway
                }]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }]
    })
}

/// `mesh-cni install`, as the DaemonSet's init container runs it.
pub fn install(runtime: &Runtime, state_dir: &Path) -> Result<String> {
    mesh_cni(&[
        "install",
        "--cni-bin-dir",
        &runtime.bin_dir.display().to_string(),
        "--cni-conf-dir",
        &runtime.conf_dir.display().to_string(),
        "--state-dir",
        &state_dir.display().to_string(),
    ])
}

pub fn mesh_cni(args: &[&str]) -> Result<String> {
    let out = Command::new(cargo_bin("mesh-cni")).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "mesh-cni {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A pod sandbox as a runtime makes it before calling CNI: an empty network namespace (only
/// `lo`) and a cgroup for its processes. Removed on drop.
pub struct CniPod {
    name: String,
    netns: PathBuf,
    cgroup: PathBuf,
    cni_args: String,
}

impl CniPod {
    pub fn new(short_name: &str) -> CniPod {
        Self::named(short_name, POD_NAME, POD_UID)
    }

    /// A sandbox whose `CNI_ARGS` name Kubernetes pod `name` with `uid` in `default`.
    pub fn named(short_name: &str, name: &str, uid: &str) -> CniPod {
        let full = format!("{}-{short_name}", mesh_tests::prefix());
        let pod = CniPod {
            netns: Path::new("/run/netns").join(&full),
            cgroup: cgroup::parent_dir().unwrap().join(&full),
            cni_args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={full};K8S_POD_UID={uid}"
            ),
            name: full,
        };
        pod.teardown();
        ip(&["netns", "add", &pod.name]).unwrap();
        ip(&["-n", &pod.name, "link", "set", "lo", "up"]).unwrap();
        std::fs::create_dir(&pod.cgroup).unwrap();
        pod
    }

    pub fn netns(&self) -> &Path {
        &self.netns
    }

    pub fn sandbox(&self) -> Sandbox<'_> {
        Sandbox {
            container_id: &self.name,
            netns: &self.netns,
            cni_args: &self.cni_args,
        }
    }

    /// `pod-tool http-get` from a process in the pod: the body, or the tool's error.
    pub fn get(&self, url: &str, timeout_ms: u64) -> Result<String> {
        let mut cmd = command_in(&self.netns, &self.cgroup, cargo_bin("pod-tool"))?;
        cmd.args(["http-get", url, "--timeout-ms", &timeout_ms.to_string()]);
        let out = PodProcess::spawn(cmd)?.wait_output(T)?;
        anyhow::ensure!(
            out.status.success(),
            "GET {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The interfaces in the pod's namespace (`lo`, and `eth0` once ADD has run).
    pub fn links(&self) -> String {
        ip(&["-n", &self.name, "-o", "link", "show"]).unwrap()
    }

    fn teardown(&self) {
        if let Err(e) = cgroup::remove(&self.cgroup, T) {
            eprintln!("cni test cleanup of {}: {e:#}", self.name);
        }
        if self.netns.exists() {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

impl Drop for CniPod {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
