//! Building blocks of the capture tests: servers and clients in pods, reading the agent's
//! counters, and the common "client + web behind a service VIP" setup.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mesh_tests::mesh::{service_yaml, workload_yaml, MeshNode};
use mesh_tests::{wait_until, Bridge, Pod, PodProcess};

/// Upper bound for anything a test waits for; the happy path takes milliseconds.
pub const T: Duration = Duration::from_secs(10);

/// The IPv4 service VIP of the tests (not routed anywhere: only capture makes it reachable).
pub const VIP: &str = "10.96.0.20";
/// The HTTP port apps listen on (the service's targetPort).
pub const APP_PORT: u16 = 8080;
/// The echo server's port in web (pod IPs are captured: the client reaches it through the
/// mesh, delivered on the same node).
pub const ECHO_PORT: u16 = 9090;

pub fn pod_tool() -> &'static str {
    env!("CARGO_BIN_EXE_pod-tool")
}

pub fn vip() -> IpAddr {
    VIP.parse().unwrap()
}

/// `http://<ip>:<port>/`, with brackets for IPv6.
pub fn url(ip: IpAddr, port: u16) -> String {
    format!("http://{}/", SocketAddr::new(ip, port))
}

/// Starts the test app (`pod-tool http-serve`) in `pod` on [`APP_PORT`].
pub fn http_server(pod: &Pod, name: &str) -> PodProcess {
    mesh_tests::observe::http_server(pod, name, APP_PORT)
}

pub use mesh_tests::observe::{get, try_get};

/// A GET that must fail; returns the error message and how long the attempt took.
pub fn get_fails(pod: &Pod, url: &str, timeout_ms: u64) -> (String, Duration) {
    let start = Instant::now();
    match try_get(pod, url, timeout_ms) {
        Ok(body) => panic!(
            "GET {url} from {} was expected to fail but answered {body:?}",
            pod.name()
        ),
        Err(e) => (format!("{e:#}"), start.elapsed()),
    }
}

/// `pod-tool peername --connect <addr>` from inside `pod`: what getpeername() returned.
pub fn peername(pod: &Pod, addr: SocketAddr) -> String {
    let out = pod
        .run(pod_tool(), ["peername", "--connect", &addr.to_string()], T)
        .unwrap_or_else(|e| panic!("peername {addr} from {}: {e:#}", pod.name()));
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("peer=")
        .unwrap_or_else(|| panic!("unexpected peername output {text:?}"))
        .to_string()
}

pub use mesh_tests::observe::{AgentStatus as Status, Response};

/// Waits until the agent's per-pod counter reaches `at_least` (byte counters are updated when
/// a relay ends, a moment after the client has its answer).
pub fn wait_pod_counter(node: &MeshNode, pod: &str, direction: &str, counter: &str, at_least: u64) {
    let mut last = 0;
    let reached = wait_until(T, || {
        last = Status::of(node).pod(pod, direction, counter);
        last >= at_least
    });
    assert!(
        reached,
        "{pod} {direction}.{counter} = {last}, expected >= {at_least}"
    );
}

/// Runs the CLI and expects it to fail; returns its stderr.
pub fn cli_fails(node: &MeshNode, args: &[&str]) -> String {
    let out = node.cli(args).expect("running mesh-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "mesh-agent {args:?} was expected to fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Enrolls `pod` as Workload `name` with every one of `ips` (e.g. dual stack).
pub fn enroll_ips(node: &MeshNode, pod: &Pod, uid: &str, name: &str, ips: &[IpAddr]) -> Result<()> {
    let mut args = MeshNode::enroll_args(pod, uid, name);
    // enroll_args passes the pod's IPv4 address; replace it with the requested set.
    let at = args.iter().position(|a| a == "--ip").context("--ip")?;
    args.drain(at..at + 2);
    for ip in ips {
        args.push("--ip".into());
        args.push(ip.to_string());
    }
    node.cli_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(())
}

/// Waits for a process to exit on its own; fails if it is still running after `timeout`.
pub fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The most common setup: pods `client` (.2) and `web` (.3) on their own bridge, both declared
/// (labels app=client / app=web) and enrolled, an HTTP server named `web` in web, and Service
/// `web` at [`VIP`]:80 -> 8080.
///
/// Fields drop in order: the agent (and its pins) first, then the server, the pods, the bridge.
pub struct ClientWeb {
    pub node: MeshNode,
    /// The HTTP server in web; kept so it lives as long as the setup.
    pub _server: PodProcess,
    pub client: Pod,
    pub web: Pod,
    /// Pods from [`with_declared`](Self::with_declared): declared, not enrolled.
    pub declared: Vec<Pod>,
    pub bridge: Bridge,
}

impl ClientWeb {
    pub fn new(bridge_index: u8) -> ClientWeb {
        Self::with_declared(bridge_index, &[])
    }

    /// Also creates a pod per `(name, host octet)`, declared in the config as Workload
    /// `name` (uid `<name>-uid`, label app=`name`) but left for the test to enroll.
    pub fn with_declared(bridge_index: u8, others: &[(&str, u8)]) -> ClientWeb {
        let bridge = Bridge::new(bridge_index).unwrap();
        let client = Pod::new(&bridge, "client", 2).unwrap();
        let web = Pod::new(&bridge, "web", 3).unwrap();
        let declared: Vec<Pod> = others
            .iter()
            .map(|(name, octet)| Pod::new(&bridge, name, *octet).unwrap())
            .collect();
        let mut config = [
            service_yaml("web", &[vip()], 80, APP_PORT, "web"),
            workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")]),
            workload_yaml("web", "web-uid", &[web.ip()], &[("app", "web")]),
        ]
        .concat();
        for pod in &declared {
            let name = pod.short_name();
            config += &workload_yaml(name, &format!("{name}-uid"), &[pod.ip()], &[("app", name)]);
        }
        let server = http_server(&web, "web");
        let node = MeshNode::start(&config).unwrap();
        node.enroll(&client, "client-uid", "client").unwrap();
        node.enroll(&web, "web-uid", "web").unwrap();
        ClientWeb {
            node,
            _server: server,
            client,
            web,
            declared,
            bridge,
        }
    }

    pub fn vip_url(&self) -> String {
        url(vip(), 80)
    }

    /// A GET from client to the VIP that must be answered by web, seeing the client's address.
    pub fn assert_vip_works(&self) {
        let r = get(&self.client, &self.vip_url());
        assert_eq!(r.name, "web", "{r:?}");
        assert_eq!(r.peer.ip(), self.client.ip(), "{r:?}");
    }
}

/// TCP connections accepted in `pod`'s network namespace so far (`PassiveOpens` of
/// /proc/net/snmp, which shows the reader's namespace): proof of whether anything reached a
/// listener in the pod at all, the proxy's or the app's.
pub fn passive_opens(pod: &Pod) -> u64 {
    let out = pod.run("cat", ["/proc/net/snmp"], T).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|n| n == "PassiveOpens")
        .expect("PassiveOpens column");
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// An echo server in web on [`ECHO_PORT`], and its address as the client dials it.
pub fn echo_server(mesh: &ClientWeb) -> (PodProcess, SocketAddr) {
    let addr = SocketAddr::new(mesh.web.ip(), ECHO_PORT);
    let server = mesh
        .web
        .spawn(
            pod_tool(),
            ["echo-serve", "--listen", &format!("0.0.0.0:{ECHO_PORT}")],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    (server, addr)
}
