//! Two mesh nodes on one machine: one control plane, two agents (`node-1`, `node-2`, each with
//! its own bpffs, state directory, admin port) and pods on one shared [`Bridge`], each pod
//! declared as a Workload on its node (applied with `meshctl`) and enrolled with that node's
//! agent. Pods that are not declared are plain network namespaces on the same bridge: clients
//! outside the mesh.
//!
//! Cross-node traffic between two pods crosses the bridge, so a [`crate::sniff`] on the bridge
//! sees exactly what a network between two real nodes would.
//!
//! Everything is removed on drop (also on panic): agents first (their pins go with them),
//! then the pods' processes, the pods, the control planes and the bridge.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::control::ControlPlane;
use crate::mesh::MeshNode;
use crate::{cargo_bin, http_get, wait_until, wait_until_ok, Bridge, Pod, PodProcess};

/// The node names, index 0 and 1.
pub const NODE_NAMES: [&str; 2] = ["node-1", "node-2"];
/// The trust domain when the MeshConfig does not set one.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// Upper bound for anything the harness waits for.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Subnet indices tried for the shared bridge, first free one wins. The other suites use
/// fixed indices up to 38 (one per test) and the benchmark 40-55; [`Bridge`] stops at 55, so
/// this suite runs its tests one after the other on 39, falling back to indices no suite uses
/// today when another run holds it.
const BRIDGE_INDICES: [u8; 6] = [39, 29, 28, 27, 26, 25];

/// A pod of a [`TwoNodes`] setup.
#[derive(Clone, Debug)]
pub struct PodDef {
    pub name: String,
    /// 0 (`node-1`) or 1 (`node-2`); `None`: not in the mesh (not declared, not enrolled).
    pub node: Option<usize>,
    pub namespace: String,
    pub service_account: String,
    pub labels: Vec<(String, String)>,
    /// Declared on `node` but enrolled with the *other* node's agent (which must refuse).
    pub enroll_elsewhere: bool,
    /// Declared and enrolled with its IPv6 address too.
    pub dual_stack: bool,
}

impl PodDef {
    /// A mesh pod on node `node` (0 or 1), namespace `default`, service account `sa`, label
    /// `app: <name>`.
    pub fn mesh(name: &str, node: usize, sa: &str) -> PodDef {
        assert!(node < 2, "node index {node}: 0 or 1");
        PodDef {
            name: name.to_owned(),
            node: Some(node),
            namespace: "default".to_owned(),
            service_account: sa.to_owned(),
            labels: vec![("app".to_owned(), name.to_owned())],
            enroll_elsewhere: false,
            dual_stack: false,
        }
    }

    /// A pod outside the mesh (plaintext client, or a sniffing target).
    pub fn plain(name: &str) -> PodDef {
        PodDef {
            name: name.to_owned(),
            node: None,
            namespace: String::new(),
            service_account: String::new(),
            labels: Vec::new(),
            enroll_elsewhere: false,
            dual_stack: false,
        }
    }

    pub fn namespace(mut self, ns: &str) -> PodDef {
        self.namespace = ns.to_owned();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> PodDef {
        self.labels.retain(|(k, _)| k != key);
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn enroll_elsewhere(mut self) -> PodDef {
        self.enroll_elsewhere = true;
        self
    }

    pub fn dual_stack(mut self) -> PodDef {
        self.dual_stack = true;
        self
    }
}

/// A pod and what the mesh knows about it.
pub struct MeshPod {
    pub pod: Pod,
    pub def: PodDef,
}

impl MeshPod {
    pub fn ip(&self) -> IpAddr {
        self.pod.ip()
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(), port)
    }

    pub fn uid(&self) -> String {
        format!("{}-uid", self.def.name)
    }

    /// `namespace/name`, as the agent's status names pods.
    pub fn pod_name(&self) -> String {
        format!("{}/{}", self.def.namespace, self.def.name)
    }

    /// Its SPIFFE ID in trust domain `td`.
    pub fn spiffe_id_in(&self, td: &str) -> String {
        format!(
            "spiffe://{td}/ns/{}/sa/{}",
            self.def.namespace, self.def.service_account
        )
    }

    /// Its SPIFFE ID in [`TRUST_DOMAIN`].
    pub fn spiffe_id(&self) -> String {
        self.spiffe_id_in(TRUST_DOMAIN)
    }

    /// The Workload YAML declaring this pod on its node.
    pub fn workload_yaml(&self) -> String {
        let node = self.def.node.expect("a mesh pod");
        self.workload_yaml_on(NODE_NAMES[node])
    }

    /// The addresses the mesh knows: IPv4, and IPv6 for a dual-stack pod.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut ips = vec![self.pod.ip()];
        if self.def.dual_stack {
            ips.push(self.pod.ip6());
        }
        ips
    }

    pub fn workload_yaml_on(&self, node: &str) -> String {
        let labels: Vec<String> = self
            .def
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let ips: Vec<String> = self.ips().iter().map(|ip| format!("\"{ip}\"")).collect();
        format!(
            "---\napiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: {}, namespace: {}}}\nspec:\n  uid: {}\n  ips: [{}]\n  node: {node}\n  serviceAccount: {}\n  labels: {{{}}}\n",
            self.def.name,
            self.def.namespace,
            self.uid(),
            ips.join(", "),
            self.def.service_account,
            labels.join(", ")
        )
    }

    fn enroll_args(&self) -> Vec<String> {
        let mut args = MeshNode::enroll_args(&self.pod, &self.uid(), &self.def.name);
        if self.def.dual_stack {
            args.extend(["--ip".into(), self.pod.ip6().to_string()]);
        }
        args.extend([
            "--namespace".into(),
            self.def.namespace.clone(),
            "--service-account".into(),
            self.def.service_account.clone(),
        ]);
        args
    }
}

/// YAML of a Service `name` in `default` at `vip`:`port` -> `target_port`, selecting
/// `app: <app>`.
pub fn service_yaml(name: &str, vip: IpAddr, port: u16, target_port: u16, app: &str) -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  vips: [\"{vip}\"]\n  ports: [{{port: {port}, targetPort: {target_port}}}]\n  selector: {{app: {app}}}\n"
    )
}

/// YAML of the MeshConfig with `spec` lines (indented by two spaces), e.g.
/// `mesh_config("  defaultPolicy: DENY\n")`.
pub fn mesh_config(spec: &str) -> String {
    format!("---\napiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec:\n{spec}")
}

/// YAML of an AuthorizationPolicy `ns/name` with `spec` lines (indented by two spaces).
pub fn authz_policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

/// YAML of a PeerAuthentication `ns/name` with `spec` lines (indented by two spaces).
pub fn peer_authentication(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

/// Builds a [`TwoNodes`].
pub struct Builder {
    pods: Vec<PodDef>,
    config: String,
    agent_args: Vec<String>,
    wait_certificates: bool,
    node2_cp: Option<ControlPlane>,
}

impl Builder {
    pub fn pod(mut self, def: PodDef) -> Builder {
        self.pods.push(def);
        self
    }

    /// More resources (YAML) applied with the Workloads, before the agents start.
    pub fn config(mut self, yaml: &str) -> Builder {
        self.config.push_str(yaml);
        self
    }

    /// Extra `mesh-agent run` arguments for both agents.
    pub fn agent_args(mut self, args: &[&str]) -> Builder {
        self.agent_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Makes `node-2` follow `cp` (its own control plane, so its own CA) instead of the
    /// common one; every apply goes to both control planes.
    pub fn node2_control_plane(mut self, cp: ControlPlane) -> Builder {
        self.node2_cp = Some(cp);
        self
    }

    /// Don't wait for every enrolled pod's certificate before returning.
    pub fn no_certificate_wait(mut self) -> Builder {
        self.wait_certificates = false;
        self
    }

    /// Creates the bridge and pods, starts the control plane, applies the Workloads and the
    /// extra config, starts both agents, enrolls every mesh pod with its node's agent and
    /// (unless told otherwise) waits until each agent holds a certificate for each of its
    /// pods.
    pub fn start(self) -> Result<TwoNodes> {
        let cp = ControlPlane::start_embedded().context("starting mesh-control")?;
        self.start_on(cp)
    }

    /// Like [`start`](Self::start) on an already running control plane.
    pub fn start_on(self, cp: ControlPlane) -> Result<TwoNodes> {
        let bridge = free_bridge()?;
        let mut pods = Vec::new();
        for (i, def) in self.pods.into_iter().enumerate() {
            let pod = Pod::new(&bridge, &def.name, 2 + i as u8)
                .with_context(|| format!("creating pod {}", def.name))?;
            pods.push(MeshPod { pod, def });
        }
        let node2_own_cp = self.node2_cp.is_some();
        let mut mesh = TwoNodes {
            agents: Vec::new(),
            servers: Vec::new(),
            pods,
            other_cps: self.node2_cp.into_iter().collect(),
            agent_cps: [0, usize::from(node2_own_cp)],
            cp,
            bridge,
        };
        let mut yaml = self.config;
        for p in mesh.pods.iter().filter(|p| p.def.node.is_some()) {
            yaml.push_str(&p.workload_yaml());
        }
        for cp in mesh.control_planes() {
            cp.apply(&yaml).context("applying the config")?;
        }
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        for (i, name) in NODE_NAMES.iter().enumerate() {
            let agent = start_agent(mesh.cp_of(i), name, &args)
                .with_context(|| format!("starting the agent of {name}"))?;
            mesh.agents.push(agent);
        }
        mesh.wait_synced()?;
        for p in &mesh.pods {
            let (Some(node), false) = (p.def.node, p.def.enroll_elsewhere) else {
                continue;
            };
            let args = p.enroll_args();
            mesh.agents[node]
                .cli_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .with_context(|| format!("enrolling {} on {}", p.def.name, NODE_NAMES[node]))?;
        }
        if self.wait_certificates {
            for p in &mesh.pods {
                if let (Some(node), false) = (p.def.node, p.def.enroll_elsewhere) {
                    mesh.wait_certificate(node, &p.spiffe_id())?;
                }
            }
        }
        Ok(mesh)
    }
}

/// Starts the agent `node` following `cp` (joining it with a token `cp` issues).
pub fn start_agent(cp: &ControlPlane, node: &str, extra_args: &[&str]) -> Result<MeshNode> {
    MeshNode::start_with_control_plane(node, &[cp.url()], extra_args)
}

/// A bridge on the first free one of this suite's subnets (index 39, else 29 down to 25).
pub fn free_bridge() -> Result<Bridge> {
    Bridge::first_free(&BRIDGE_INDICES)
}

/// See the [module documentation](self).
pub struct TwoNodes {
    /// `node-1`, `node-2`. Dropped first.
    pub agents: Vec<MeshNode>,
    pub servers: Vec<PodProcess>,
    pub pods: Vec<MeshPod>,
    /// Further control planes (e.g. one with another CA, see
    /// [`Builder::node2_control_plane`]).
    pub other_cps: Vec<ControlPlane>,
    /// Which control plane each agent follows: 0 is `cp`, `i` is `other_cps[i - 1]`.
    agent_cps: [usize; 2],
    pub cp: ControlPlane,
    pub bridge: Bridge,
}

impl TwoNodes {
    pub fn builder() -> Builder {
        Builder {
            pods: Vec::new(),
            config: String::new(),
            agent_args: Vec::new(),
            wait_certificates: true,
            node2_cp: None,
        }
    }

    /// `cp` and the other control planes.
    pub fn control_planes(&self) -> impl Iterator<Item = &ControlPlane> {
        std::iter::once(&self.cp).chain(&self.other_cps)
    }

    /// The control plane agent `node` (0 or 1) follows.
    pub fn cp_of(&self, node: usize) -> &ControlPlane {
        match self.agent_cps[node] {
            0 => &self.cp,
            i => &self.other_cps[i - 1],
        }
    }

    pub fn pod(&self, name: &str) -> &MeshPod {
        self.pods
            .iter()
            .find(|p| p.def.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The agent of node 0 or 1.
    pub fn agent(&self, node: usize) -> &MeshNode {
        &self.agents[node]
    }

    /// The agent `pod` is declared on.
    pub fn agent_of(&self, pod: &str) -> &MeshNode {
        let node = self.pod(pod).def.node.expect("a mesh pod");
        &self.agents[node]
    }

    /// `pod-tool http-serve --name <name>` in `pod` on `port` (v4 and v6), kept running.
    pub fn serve_http(&mut self, pod: &str, port: u16, name: &str) {
        let server = crate::observe::http_server(&self.pod(pod).pod, name, port);
        self.servers.push(server);
    }

    /// `pod-tool echo-serve` in `pod` on `0.0.0.0:<port>`, kept running.
    pub fn serve_echo(&mut self, pod: &str, port: u16) {
        let listen = format!("0.0.0.0:{port}");
        let mut server = self
            .pod(pod)
            .pod
            .spawn(cargo_bin("pod-tool"), ["echo-serve", "--listen", &listen])
            .expect("spawning echo-serve");
        wait_until(PATIENCE, || {
            server.stdout().contains("listening") || !server.is_running()
        });
        assert!(
            server.is_running(),
            "echo-serve in {pod} died: {}",
            server.stderr()
        );
        self.servers.push(server);
    }

    /// Applies `yaml` through every control plane and waits until both agents serve it.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        for cp in self.control_planes() {
            cp.apply(yaml)?;
        }
        self.wait_synced()
    }

    /// The config version of control plane `cp`.
    pub fn cp_version(cp: &ControlPlane) -> Result<u64> {
        let text = cp.meshctl_ok(&["status", "-o", "json"])?;
        let status: Value = serde_json::from_str(&text)?;
        status["version"]
            .as_u64()
            .with_context(|| format!("no version in meshctl status: {status}"))
    }

    /// Waits until both agents serve their control plane's current config version.
    pub fn wait_synced(&self) -> Result<()> {
        for (i, agent) in self.agents.iter().enumerate() {
            let version = Self::cp_version(self.cp_of(i))?;
            wait_until_ok(PATIENCE, || {
                let v = agent.status_json()?["config"]["version"]
                    .as_u64()
                    .unwrap_or(0);
                ensure!(
                    v >= version,
                    "{} serves version {v} < {version}",
                    NODE_NAMES[i]
                );
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Waits until the agent of `node` holds a certificate for `spiffe_id` (an entry with a
    /// serial: entries without one are identities still waiting for their first).
    pub fn wait_certificate(&self, node: usize, spiffe_id: &str) -> Result<Value> {
        let agent = &self.agents[node];
        wait_until_ok(PATIENCE, || {
            let status = agent.status_json()?;
            certificates(&status)
                .into_iter()
                .find(|c| c["spiffeId"] == spiffe_id && c["serial"].is_string())
                .with_context(|| {
                    format!(
                        "{} has no certificate for {spiffe_id}; identity: {}",
                        NODE_NAMES[node], status["identity"]
                    )
                })
        })
    }
}

/// `identity.certificates` of a `mesh-agent status -o json` (`spiffeId`, `serial`,
/// `notBefore`, `notAfter`, ...; `serial` is null until the first certificate arrives).
pub fn certificates(status: &Value) -> Vec<Value> {
    status["identity"]["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The open proxied connections (`connections`) of a `mesh-agent status -o json`.
pub fn connections(status: &Value) -> Vec<Value> {
    status["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The agent's Prometheus text (`/metrics` on its admin address).
pub fn metrics(agent: &MeshNode) -> Result<String> {
    let (code, body) = http_get(agent.admin(), "/metrics")?;
    ensure!(code == 200, "/metrics answered {code}: {body}");
    Ok(body)
}

/// Sum of `mesh_proxy_failures_total` samples with `reason="<reason>"` (and, if given,
/// `pod="<pod>"`).
pub fn failures(agent: &MeshNode, reason: &str, pod: Option<&str>) -> Result<u64> {
    let text = metrics(agent)?;
    let reason = format!("reason=\"{reason}\"");
    let pod = pod.map(|p| format!("pod=\"{p}\""));
    Ok(sum_samples(&text, "mesh_proxy_failures_total", |labels| {
        labels.contains(&reason) && pod.as_ref().is_none_or(|p| labels.contains(p))
    }))
}

/// Sum of the samples of metric `name` whose label text passes `filter`.
pub fn sum_samples(text: &str, name: &str, filter: impl Fn(&str) -> bool) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None => ("", rest),
            };
            if !filter(labels) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::sum_samples;

    #[test]
    fn sums_labelled_samples() {
        let text = "# TYPE mesh_proxy_failures counter\n\
            mesh_proxy_failures_total{pod=\"default/b\",direction=\"inbound\",reason=\"AuthzDenied\"} 2\n\
            mesh_proxy_failures_total{pod=\"default/c\",direction=\"inbound\",reason=\"AuthzDenied\"} 1\n\
            mesh_proxy_failures_total{pod=\"default/b\",direction=\"inbound\",reason=\"NoEndpoint\"} 5\n\
            mesh_other 7\n";
        let denied = |l: &str| l.contains("reason=\"AuthzDenied\"");
        assert_eq!(sum_samples(text, "mesh_proxy_failures_total", denied), 3);
        assert_eq!(sum_samples(text, "mesh_other", |_| true), 7);
        assert_eq!(sum_samples(text, "mesh_none", |_| true), 0);
    }
}
