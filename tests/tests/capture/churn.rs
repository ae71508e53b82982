//! Connection churn through the inbound delivery path: many short connections from a client
//! outside the mesh to an enrolled pod's app (sk_lookup -> inbound proxy -> delivery socket
//! inside the pod -> app), more of them than the pod has ephemeral ports, all within one
//! TIME_WAIT period (60 s).
//!
//! When the client closes first, the proxy passes the FIN on and its delivery socket in the
//! server pod is the one that ends in TIME_WAIT. Those sockets must not use up the pod's
//! ports: the delivery port is chosen by connect(), which may reuse a 4-tuple whose earlier
//! connection is in TIME_WAIT (`net.ipv4.tcp_tw_reuse`, 1 in the test pods). When the server
//! closes first the app's socket holds the TIME_WAIT instead, and the delivery ports are free
//! at once. Either way every connection must work and the app must see the real client
//! (accept() and getpeername()), which the proxy records on its delivery socket before it
//! connects.
//!
//! To make "more connections than ports" quick, the server pod's port range is narrowed to
//! [`PORTS`] ports (the sysctl is per network namespace).

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::{require_root, wait_until, Bridge, Pod, PodProcess};
use serde_json::Value;

use crate::support::*;

/// Ephemeral ports in the server pod: 200.
const PORTS: (u16, u16) = (40000, 40199);
/// Three port ranges' worth of connections...
const CONNECTIONS: usize = 600;
/// ...paced under what TIME_WAIT reuse allows (each 4-tuple once per second), so the test
/// takes about 5 s.
const PER_SECOND: u32 = 120;

#[test]
fn client_closes_first_churn_keeps_delivering() {
    require_root();
    let bed = ChurnBed::new(33);
    let run = bed.churn("client");
    // The proxy closed first on the app side: its delivery sockets (local port in the narrowed
    // range) are in TIME_WAIT, and there were more connections than ports.
    let delivery_tw = bed.web_time_wait(|local| (PORTS.0..=PORTS.1).contains(&local));
    assert!(delivery_tw > 0, "no delivery socket in TIME_WAIT: {run}");
}

#[test]
fn server_closes_first_churn_keeps_delivering() {
    require_root();
    let bed = ChurnBed::new(34);
    let run = bed.churn("server");
    // The app closed first: its own sockets hold the TIME_WAIT.
    let app_tw = bed.web_time_wait(|local| local == APP_PORT);
    assert!(app_tw > 0, "no app socket in TIME_WAIT: {run}");
}

/// An enrolled pod `web` running a peer server on [`APP_PORT`], and an `outsider` pod that is
/// not in the mesh.
struct ChurnBed {
    node: MeshNode,
    _server: PodProcess,
    web: Pod,
    outsider: Pod,
    _bridge: Bridge,
}

impl ChurnBed {
    fn new(bridge_index: u8) -> ChurnBed {
        let bridge = Bridge::new(bridge_index).unwrap();
        let web = Pod::new(&bridge, "web", 3).unwrap();
        let outsider = Pod::new(&bridge, "outsider", 4).unwrap();
        let range = format!("{} {}", PORTS.0, PORTS.1);
        web.in_netns(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", &range).unwrap();
            let reuse = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_tw_reuse").unwrap();
            // The harness's pods reuse TIME_WAIT 4-tuples, as the direct path does.
            assert_eq!(reuse.trim(), "1", "tcp_tw_reuse in the server pod");
        })
        .unwrap();
        let server = peer_server(&web);
        let config = workload_yaml("web", "web-uid", &[web.ip()], &[("app", "web")]);
        let node = MeshNode::start(&config).unwrap();
        node.enroll(&web, "web-uid", "web").unwrap();
        ChurnBed {
            node,
            _server: server,
            web,
            outsider,
            _bridge: bridge,
        }
    }

    /// Runs the churn client in `outsider` with `close_first` ("client" or "server") and
    /// checks that every connection worked, went through the mesh, and showed the real client
    /// to the app. Returns the client's report.
    fn churn(&self, close_first: &str) -> Value {
        let before = Status::of(&self.node);
        let target = SocketAddr::new(self.web.ip(), APP_PORT).to_string();
        let args = [
            "churn",
            "--connect",
            &target,
            "--count",
            &CONNECTIONS.to_string(),
            "--per-second",
            &PER_SECOND.to_string(),
            "--close-first",
            close_first,
            "--expect-own-address",
        ];
        let out = self
            .outsider
            .run(pod_tool(), args, Duration::from_secs(60))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let run: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "churn printed no JSON ({e}): {stdout:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(run["errors"], 0, "connections failed: {run}");
        assert_eq!(run["wrong_peer"], 0, "the app saw another peer: {run}");
        assert_eq!(run["connections"], CONNECTIONS, "{run}");

        // Through the mesh: steered by sk_lookup and delivered by the proxy, every one.
        let n = CONNECTIONS as u64;
        let after = Status::of(&self.node);
        let kernel = |name: &str| after.kernel(name) - before.kernel(name);
        assert!(kernel("lookup_steered") >= n, "{}", after.0["kernel"]);
        // accept() and getpeername() of each connection.
        assert!(
            kernel("peername_rewritten") >= 2 * n,
            "{}",
            after.0["kernel"]
        );
        let inbound = |s: &Status, counter| s.pod("default/web", "inbound", counter);
        assert!(inbound(&after, "connections") - inbound(&before, "connections") >= n);
        assert_eq!(inbound(&after, "failures"), 0, "{run}");
        run
    }

    /// TIME_WAIT sockets in web's namespace whose local port passes `local_port`.
    fn web_time_wait(&self, local_port: impl Fn(u16) -> bool) -> usize {
        let table = self
            .web
            .in_netns(|| std::fs::read_to_string("/proc/thread-self/net/tcp"))
            .unwrap()
            .unwrap();
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = fields.get(1)?.rsplit(':').next()?;
                let port = u16::from_str_radix(port, 16).ok()?;
                // State 06 is TIME_WAIT.
                (fields.get(3) == Some(&"06") && local_port(port)).then_some(())
            })
            .count()
    }
}

/// `pod-tool peer-serve` on [`APP_PORT`] in `pod`.
fn peer_server(pod: &Pod) -> PodProcess {
    let listen = format!("0.0.0.0:{APP_PORT}");
    let mut server = pod
        .spawn(pod_tool(), ["peer-serve", "--listen", &listen])
        .unwrap();
    wait_until(T, || {
        server.stdout().contains("listening") || !server.is_running()
    });
    assert!(
        server.is_running(),
        "peer-serve in {} died: {}",
        pod.name(),
        server.stderr()
    );
    server
}
