//! The HTTP scenario's beds.
//!
//! Same node ([`SameNodeHttp`]): one agent and, on one bridge,
//! - `hclient` -> `hserver` (both enrolled): the client dials the `hweb` VIP, a Service port
//!   with `protocol: http`, so every request goes through the agent's L7 proxy (terminated,
//!   routed, sent on a pooled upstream connection delivered into `hserver`).
//! - `hdclient` -> `hdserver`: identical pods never enrolled ("direct").
//! - `hdclient` -> `hproxy` -> `hdserver`: nginx as a plain reverse proxy in a pod of its own
//!   between the same direct pods, where an operator would put one.
//! - `hs1`..`hs3` (enrolled) behind the `hspread` VIP, each running `pod-tool http-serve`:
//!   the endpoints one HTTP/2 connection's requests must spread over.
//!
//! `hserver` and `hdserver` run the same nginx origin ([`super::http_tools::origin_conf`]).
//!
//! Cross node ([`CrossHttp`]): the cross-node bed (`cross_bed`: control plane, node-1 and
//! node-2) with the same nginx origin in its server pods behind the `xweb` VIP (protocol
//! `http`); its client pod on node-1 reaches it over HBONE.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::{Bridge, Pod, PodProcess, TempDir};

use super::cross_bed::{self, CrossBed, Extra};
use super::http_run::{Hop, HttpBed, Reading};
use super::http_tools::{
    origin_conf, proxy_conf, requests_by_policy, start_nginx, ORIGIN_H2_PORT, ORIGIN_PORT,
    PROXY_H2_PORT, PROXY_PORT,
};
use crate::cmd::progress;

pub const WEB_VIP: &str = "10.96.0.24";
pub const SPREAD_VIP: &str = "10.96.0.25";
/// Away from the cross-node bench's TCP VIPs (10.96.0.40-41).
pub const CROSS_WEB_VIP: &str = "10.96.0.42";
/// The Service port of the VIPs for HTTP/1.1, and for HTTP/2 prior knowledge.
pub const VIP_PORT: u16 = 80;
pub const VIP_H2_PORT: u16 = 81;
pub const SPREAD_PORT: u16 = 8090;
pub const SPREAD_ENDPOINTS: usize = 3;
/// Service names, as the agent's request metrics label them.
pub const WEB: &str = "hweb";
pub const SPREAD: &str = "hspread";
pub const CROSS_WEB: &str = "xweb";
const CLIENT_POD: &str = "default/hclient";
const SERVER_POD: &str = "default/hserver";

/// nginx worker processes for the origin and the reverse proxy: as many as the agent's
/// worker threads (half the CPUs, at least one), so both proxies get the same parallelism.
pub fn nginx_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// A Service selecting `app: <app>` with an HTTP/1.1 port and, if `h2_target` is given, an
/// HTTP/2 one.
fn http_service(name: &str, vip: &str, target: u16, h2_target: Option<u16>, app: &str) -> String {
    let h2 = h2_target.map_or(String::new(), |t| {
        format!(", {{port: {VIP_H2_PORT}, targetPort: {t}, protocol: http2}}")
    });
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  vips: \
         [\"{vip}\"]\n  ports: [{{port: {VIP_PORT}, targetPort: {target}, protocol: http}}{h2}]\n  \
         selector: {{app: {app}}}\n"
    )
}

/// Fields drop in order: the agent first, then the servers, the pods, the bridge and the
/// nginx files.
pub struct SameNodeHttp {
    pub node: MeshNode,
    /// The agent's config file as the bed wrote it (request-security rows add to it).
    pub config: String,
    _servers: Vec<PodProcess>,
    pub client: Pod,
    _server: Pod,
    pub dclient: Pod,
    dserver: Pod,
    pub proxy: Pod,
    pub spread: Vec<Pod>,
    _bridge: Bridge,
    _nginx_dir: TempDir,
    pod_tool: PathBuf,
}

impl SameNodeHttp {
    pub fn start(agent: PathBuf, pod_tool: PathBuf) -> Result<SameNodeHttp> {
        progress(
            "http: a bridge and pods hclient, hserver (mesh), hdclient, hdserver (direct), \
             hproxy (nginx), hs1-hs3 (HTTP/2 spread)",
        );
        let bridge = super::testbed::new_bridge()?;
        let client = Pod::new(&bridge, "hclient", 2)?;
        let server = Pod::new(&bridge, "hserver", 3)?;
        let dclient = Pod::new(&bridge, "hdclient", 4)?;
        let dserver = Pod::new(&bridge, "hdserver", 5)?;
        let proxy = Pod::new(&bridge, "hproxy", 6)?;
        let spread = (1..=SPREAD_ENDPOINTS)
            .map(|i| Pod::new(&bridge, &format!("hs{i}"), 6 + i as u8))
            .collect::<Result<Vec<_>>>()?;
        let dir = mesh_tests::temp_dir()?;
        let workers = nginx_workers();
        let mut servers = Vec::new();
        for pod in [&server, &dserver] {
            let d = dir.path().join(pod.short_name());
            servers.push(start_nginx(
                pod,
                &d,
                &origin_conf(&d, workers),
                ORIGIN_PORT,
            )?);
        }
        let d = dir.path().join("hproxy");
        let conf = proxy_conf(&d, workers, dserver.ip());
        servers.push(start_nginx(&proxy, &d, &conf, PROXY_PORT)?);
        for pod in &spread {
            servers.push(http_serve(pod, &pod_tool, SPREAD_PORT)?);
        }
        let mut config = [
            http_service(WEB, WEB_VIP, ORIGIN_PORT, Some(ORIGIN_H2_PORT), "hserver"),
            http_service(SPREAD, SPREAD_VIP, SPREAD_PORT, None, "hspread"),
            workload_yaml(
                "hclient",
                "hclient-uid",
                &[client.ip()],
                &[("app", "hclient")],
            ),
            workload_yaml(
                "hserver",
                "hserver-uid",
                &[server.ip()],
                &[("app", "hserver")],
            ),
        ]
        .concat();
        for pod in &spread {
            let name = pod.short_name();
            config += &workload_yaml(
                name,
                &format!("{name}-uid"),
                &[pod.ip()],
                &[("app", "hspread")],
            );
        }
        progress("http: starting mesh-agent (release) and enrolling the mesh pods");
        let node = MeshNode::start_with_binary(agent, &config)?;
        node.enroll(&server, "hserver-uid", "hserver")?;
        for pod in &spread {
            let name = pod.short_name();
            node.enroll(pod, &format!("{name}-uid"), name)?;
        }
        node.enroll(&client, "hclient-uid", "hclient")?;
        Ok(SameNodeHttp {
            node,
            config,
            _servers: servers,
            client,
            _server: server,
            dclient,
            dserver,
            proxy,
            spread,
            _bridge: bridge,
            _nginx_dir: dir,
            pod_tool,
        })
    }
}

/// `pod-tool http-serve` named after its pod.
fn http_serve(pod: &Pod, pod_tool: &Path, port: u16) -> Result<PodProcess> {
    let listen = format!("0.0.0.0:{port}");
    let args = [
        "http-serve",
        "--listen",
        &listen,
        "--name",
        pod.short_name(),
    ];
    let mut server = pod.spawn(pod_tool, args)?;
    if !mesh_tests::wait_until(Duration::from_secs(10), || {
        server.stdout().contains("listening") || !server.is_running()
    }) || !server.is_running()
    {
        bail!(
            "http-serve in pod {} did not start: {}",
            pod.name(),
            server.stderr()
        );
    }
    Ok(server)
}

/// The agent's counters about `client_pod`'s outbound traffic and `service`'s requests, from
/// its status and `/metrics`; `server` is the pod whose inbound failures count too.
fn reading_of(
    status: &serde_json::Value,
    metrics: &str,
    client_pod: &str,
    server: Option<(&serde_json::Value, &str)>,
    service: &str,
) -> Result<Reading> {
    let pod = |status: &serde_json::Value, name: &str| -> Result<serde_json::Value> {
        status["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["pod"] == name))
            .cloned()
            .with_context(|| format!("pod {name} is not in the agent's status"))
    };
    let client = pod(status, client_pod)?;
    let server_failures = match server {
        Some((status, name)) => pod(status, name)?["inbound"]["failures"]
            .as_u64()
            .unwrap_or(0),
        None => 0,
    };
    Ok(Reading {
        client_out: client["outbound"]["connections"].as_u64().unwrap_or(0),
        captured: status["kernel"]["connect_captured"].as_u64().unwrap_or(0),
        failures: client["outbound"]["failures"].as_u64().unwrap_or(0) + server_failures,
        requests: requests_by_policy(metrics, service),
    })
}

pub fn metrics_of(admin: std::net::SocketAddr) -> Result<String> {
    let (code, body) = mesh_tests::http_get_timeout(admin, "/metrics", Duration::from_secs(5))?;
    anyhow::ensure!(code == 200, "GET /metrics: status {code}");
    Ok(body)
}

impl HttpBed for SameNodeHttp {
    fn client(&self, hop: Hop) -> &Pod {
        match hop {
            Hop::Mesh => &self.client,
            Hop::Direct | Hop::Nginx => &self.dclient,
        }
    }

    fn url(&self, hop: Hop, h2: bool) -> String {
        let (host, port) = match (hop, h2) {
            (Hop::Direct, false) => (self.dserver.ip().to_string(), ORIGIN_PORT),
            (Hop::Direct, true) => (self.dserver.ip().to_string(), ORIGIN_H2_PORT),
            (Hop::Mesh, false) => (WEB_VIP.to_string(), VIP_PORT),
            (Hop::Mesh, true) => (WEB_VIP.to_string(), VIP_H2_PORT),
            (Hop::Nginx, false) => (self.proxy.ip().to_string(), PROXY_PORT),
            (Hop::Nginx, true) => (self.proxy.ip().to_string(), PROXY_H2_PORT),
        };
        format!("http://{host}:{port}/")
    }

    fn agent_pids(&mut self) -> Vec<u32> {
        self.node.agent().map(|a| a.pid()).into_iter().collect()
    }

    fn reading(&self, service: &str) -> Result<Reading> {
        let status = self.node.status_json()?;
        let metrics = metrics_of(self.node.admin())?;
        reading_of(
            &status,
            &metrics,
            CLIENT_POD,
            Some((&status, SERVER_POD)),
            service,
        )
    }

    fn nginx_proxy(&self) -> Option<&Pod> {
        Some(&self.proxy)
    }

    fn pod_tool(&self) -> &Path {
        &self.pod_tool
    }

    fn log_tail(&mut self) -> String {
        self.node
            .agent()
            .map(|a| a.log_tail(30))
            .unwrap_or_default()
    }
}

/// The cross-node bed with the nginx origin behind `xweb` (no nginx proxy there).
pub struct CrossHttp {
    pub bed: CrossBed,
    _nginx_dir: TempDir,
}

impl CrossHttp {
    pub fn start(bins: &Path) -> Result<CrossHttp> {
        let dir = mesh_tests::temp_dir()?;
        let root = dir.path().to_path_buf();
        let origins = move |server: &Pod, dserver: &Pod| -> Result<Vec<PodProcess>> {
            [server, dserver]
                .into_iter()
                .map(|pod| {
                    let d = root.join(pod.short_name());
                    let conf = origin_conf(&d, nginx_workers());
                    start_nginx(pod, &d, &conf, ORIGIN_PORT)
                })
                .collect()
        };
        let extra = Extra {
            config: http_service(CROSS_WEB, CROSS_WEB_VIP, ORIGIN_PORT, None, "xserver"),
            servers: &origins,
        };
        let bed = CrossBed::start_with(bins, bins.join("pod-tool"), Some(extra))?;
        Ok(CrossHttp {
            bed,
            _nginx_dir: dir,
        })
    }
}

impl HttpBed for CrossHttp {
    fn client(&self, hop: Hop) -> &Pod {
        match hop {
            Hop::Mesh => &self.bed.client,
            Hop::Direct | Hop::Nginx => &self.bed.dclient,
        }
    }

    fn url(&self, hop: Hop, _h2: bool) -> String {
        match hop {
            Hop::Mesh => format!("http://{CROSS_WEB_VIP}:{VIP_PORT}/"),
            Hop::Direct | Hop::Nginx => format!("http://{}:{ORIGIN_PORT}/", self.bed.dserver.ip()),
        }
    }

    fn agent_pids(&mut self) -> Vec<u32> {
        self.bed.agent_pids()
    }

    /// Node-1 reports the requests (Istio's `reporter="source"`) and sees the client;
    /// node-2's server pod adds its inbound failures.
    fn reading(&self, service: &str) -> Result<Reading> {
        let s1 = self.bed.node1.status_json()?;
        let s2 = self.bed.node2.status_json()?;
        let metrics = self.bed.node1.metrics()?;
        let server = Some((&s2, cross_bed::SERVER_POD));
        reading_of(&s1, &metrics, cross_bed::CLIENT_POD, server, service)
    }

    fn nginx_proxy(&self) -> Option<&Pod> {
        None
    }

    fn pod_tool(&self) -> &Path {
        &self.bed.pod_tool
    }

    fn log_tail(&mut self) -> String {
        format!(
            "--- node-1 ---\n{}\n--- node-2 ---\n{}",
            self.bed.node1.log_tail(15),
            self.bed.node2.log_tail(15)
        )
    }
}
