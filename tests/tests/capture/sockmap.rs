//! `--sockmap-redirect`: the same-node legs (app -> proxy in the client pod, proxy -> app in
//! the server pod) handed socket to socket by the sk_msg program instead of through loopback
//! TCP. What must hold: every byte arrives, in order, with none of it crossing either pod's
//! loopback interface; policy still closes the connections; and with the switch off again,
//! new connections go back to TCP.

use std::time::Duration;

use mesh_tests::held::Held;
use mesh_tests::two_nodes::authz_policy;
use mesh_tests::{require_root, Pod};
use serde_json::Value;

use crate::support::*;

/// Round trips of [`ROUND_TRIP_BYTES`] each way: 8 MiB through each leg in each direction.
const ROUND_TRIPS: usize = 128;
const ROUND_TRIP_BYTES: usize = 64 * 1024;

#[test]
fn redirected_legs_deliver_every_byte_in_order_without_loopback_segments() {
    require_root();
    let mut mesh = ClientWeb::new(55);
    let (_server, addr) = echo_server(&mesh);
    restart_with(&mut mesh, &["--sockmap-redirect"]);

    let before = LoopbackBytes::of(&mesh);
    let echoed = round_trips(&mesh, addr);
    let moved = LoopbackBytes::of(&mesh).since(&before);
    // Each leg carries the payload both ways (16 MiB per pod over TCP); redirected, only
    // handshakes, FINs and ACKs cross loopback.
    assert!(
        moved.client < 1 << 20 && moved.web < 1 << 20,
        "loopback bytes with the legs redirected: {moved:?} for {echoed}"
    );
    let status = Status::of(&mesh.node);
    assert!(status.pod("default/client", "outbound", "connections") >= 1);
    assert!(status.pod("default/web", "inbound", "connections") >= 1);

    // Policy closes redirected connections like any other: the proxy still holds both legs.
    let held = Held::open(&mesh.client, addr, 4).unwrap();
    let mut config = std::fs::read_to_string(mesh.node.config_path()).unwrap();
    config += &authz_policy(
        "default",
        "deny-all",
        "  selector: {app: web}\n  action: DENY\n  rules:\n  - {}\n",
    );
    mesh.node.reload_config_and_wait(&config).unwrap();
    let closed = mesh_tests::wait_until(T, || {
        Status::of(&mesh.node).pod("default/web", "inbound", "active") == 0
    });
    assert!(closed, "{:?}", Status::of(&mesh.node).0);
    let after = held.check().unwrap();
    assert_eq!(after["alive"], 0, "denied connections still open: {after}");

    // Off again (the program stays attached to the map): new connections use TCP.
    let config = config.replace("action: DENY", "action: ALLOW");
    mesh.node.reload_config_and_wait(&config).unwrap();
    restart_with(&mut mesh, &[]);
    let before = LoopbackBytes::of(&mesh);
    round_trips(&mesh, addr);
    let moved = LoopbackBytes::of(&mesh).since(&before);
    let payload = (2 * ROUND_TRIPS * ROUND_TRIP_BYTES) as u64;
    assert!(
        moved.client >= payload && moved.web >= payload,
        "loopback bytes with the switch off: {moved:?}"
    );
}

/// Restarts the agent with `args` (it resumes the enrolled pods).
fn restart_with(mesh: &mut ClientWeb, args: &[&str]) {
    mesh.node.stop_agent().unwrap();
    mesh.node.set_extra_args(args);
    mesh.node.start_agent().unwrap();
    mesh.assert_vip_works();
}

/// Echo round trips whose every byte pod-tool checks (each round sends different bytes).
fn round_trips(mesh: &ClientWeb, addr: std::net::SocketAddr) -> Value {
    let out = mesh
        .client
        .run(
            pod_tool(),
            [
                "rr",
                "--connect",
                &addr.to_string(),
                "--size",
                &ROUND_TRIP_BYTES.to_string(),
                "--count",
                &ROUND_TRIPS.to_string(),
                "--warmup",
                "0",
            ],
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "rr failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Bytes received on the loopback interface of each pod.
#[derive(Debug)]
struct LoopbackBytes {
    client: u64,
    web: u64,
}

impl LoopbackBytes {
    fn of(mesh: &ClientWeb) -> LoopbackBytes {
        LoopbackBytes {
            client: lo_rx_bytes(&mesh.client),
            web: lo_rx_bytes(&mesh.web),
        }
    }

    fn since(&self, earlier: &LoopbackBytes) -> LoopbackBytes {
        LoopbackBytes {
            client: self.client - earlier.client,
            web: self.web - earlier.web,
        }
    }
}

/// The first column of `lo` in /proc/net/dev, read inside the pod's namespace.
fn lo_rx_bytes(pod: &Pod) -> u64 {
    let out = pod.run("cat", ["/proc/net/dev"], T).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| line.trim_start().strip_prefix("lo:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|bytes| bytes.parse().ok())
        .unwrap_or_else(|| panic!("no lo line in /proc/net/dev: {text}"))
}
