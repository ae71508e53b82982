//! Addresses a pod gets after enrollment (`ip addr add` inside the pod) are the pod's too: a
//! client outside the mesh reaches the app on them only through the mesh (steered, STRICT and
//! policy applied), and while the agent is down not at all. Link-local addresses, which the
//! mesh does not steer, are refused.
//!
//! Counters prove the path: `lookup_steered` and the pod's inbound connections for "through
//! the mesh", `lookup_unknown_address` and the pod's `PassiveOpens` for "refused before any
//! listener". A request answered around the mesh fails every test here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::two_nodes::{failures, peer_authentication};
use mesh_tests::{require_root, wait_until, Bridge, Pod, PodProcess};

use crate::support::*;

/// Pod `web` (declared with its IPv4 address, enrolled, serving HTTP) and pod `outsider` on
/// the same bridge, not in the mesh. Fields drop in order: the agent first.
struct WebAndOutsider {
    node: MeshNode,
    _server: PodProcess,
    web: Pod,
    outsider: Pod,
    /// Pods from [`start_with`](Self::start_with): declared, not enrolled.
    declared: Vec<Pod>,
    _bridge: Bridge,
}

impl WebAndOutsider {
    fn start(bridge_index: u8, extra_config: &str) -> WebAndOutsider {
        Self::start_with(bridge_index, extra_config, &[])
    }

    /// Also creates a pod per `(name, host octet)`, declared as Workload `name` (uid
    /// `<name>-uid`) but left for the test to enroll.
    fn start_with(bridge_index: u8, extra_config: &str, others: &[(&str, u8)]) -> WebAndOutsider {
        let bridge = Bridge::new(bridge_index).unwrap();
        let web = Pod::new(&bridge, "web", 3).unwrap();
        let outsider = Pod::new(&bridge, "outsider", 4).unwrap();
        let declared: Vec<Pod> = others
            .iter()
            .map(|(name, octet)| Pod::new(&bridge, name, *octet).unwrap())
            .collect();
        let server = http_server(&web, "web");
        let mut config =
            workload_yaml("web", "web-uid", &[web.ip()], &[("app", "web")]) + extra_config;
        for pod in &declared {
            let name = pod.short_name();
            config += &workload_yaml(name, &format!("{name}-uid"), &[pod.ip()], &[("app", name)]);
        }
        let node = MeshNode::start(&config).unwrap();
        node.enroll(&web, "web-uid", "web").unwrap();
        WebAndOutsider {
            node,
            _server: server,
            web,
            outsider,
            declared,
            _bridge: bridge,
        }
    }

    /// Adds an IPv4 and an IPv6 address to web's eth0, in the subnets of its own (so the
    /// outsider reaches them on the link), and returns them.
    fn add_addresses(&self) -> [IpAddr; 2] {
        let added = [host(self.web.ip(), 99), host(self.web.ip6(), 99)];
        for ip in added {
            let prefix = if ip.is_ipv4() { 24 } else { 64 };
            let address = format!("{ip}/{prefix}");
            let mut args = vec!["addr", "add", &address, "dev", "eth0"];
            if ip.is_ipv6() {
                args.push("nodad");
            }
            self.web.run("ip", args, T).unwrap();
        }
        added
    }

    /// The outsider's address in the family of `ip`.
    fn outsider_address(&self, ip: IpAddr) -> IpAddr {
        if ip.is_ipv4() {
            self.outsider.ip()
        } else {
            self.outsider.ip6()
        }
    }

    /// The addresses the agent steers for `pod` (e.g. `default/web`), from its status.
    fn steered_for(&self, pod: &str) -> Vec<IpAddr> {
        let status = Status::of(&self.node);
        let ips = &status.pod_entry(pod).expect("pod in status")["ips"];
        ips.as_array()
            .unwrap()
            .iter()
            .map(|ip| ip.as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Waits until the agent steers exactly `wanted` in addition to web's own two addresses.
    fn wait_steered(&self, wanted: &[IpAddr]) {
        let mut expected = vec![self.web.ip(), self.web.ip6()];
        expected.extend_from_slice(wanted);
        expected.sort();
        let mut last = Vec::new();
        let followed = wait_until(T, || {
            last = self.steered_for("default/web");
            last.sort();
            last == expected
        });
        assert!(
            followed,
            "web's steered addresses are {last:?}, expected {expected:?}"
        );
    }
}

/// `ip` with its last byte (IPv4) or group (IPv6) replaced by `last`, written the same way
/// in both (`10.x.0.99`, `fd00:x::99`), as the harness numbers pods.
fn host(ip: IpAddr, last: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, last))
        }
        IpAddr::V6(v6) => {
            let mut groups = v6.segments();
            groups[7] = u16::from_str_radix(&last.to_string(), 16).expect("decimal digits");
            IpAddr::V6(Ipv6Addr::from(groups))
        }
    }
}

/// Addresses added after enrollment are followed: the agent steers them (status lists them),
/// and the outsider's requests to them go through web's inbound proxy, which shows the app
/// the real client. Even a request sent right after `ip addr add`, before the agent can have
/// followed, is refused or steered, never answered around the mesh. A removed address is
/// withdrawn.
#[test]
fn addresses_added_after_enrollment_go_through_the_mesh() {
    require_root();
    let mesh = WebAndOutsider::start(51, "");
    let before = Status::of(&mesh.node);
    let inbound = |s: &Status| s.pod("default/web", "inbound", "connections");

    let added = mesh.add_addresses();
    // Right away: refused (not registered yet) or through the proxy, whichever comes first.
    let racing = try_get(&mesh.outsider, &url(added[0], APP_PORT), 2000);
    let raced = Status::of(&mesh.node);
    match racing {
        Ok(body) => assert_eq!(
            inbound(&raced),
            inbound(&before) + 1,
            "answered around the mesh: {body}"
        ),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains("refused"), "{e}");
            assert_eq!(
                raced.kernel("lookup_unknown_address"),
                before.kernel("lookup_unknown_address") + 1
            );
        }
    }

    mesh.wait_steered(&added);
    // Saved too, so a restarted agent can withdraw them if the pod is deleted meanwhile.
    let state = mesh.node.state_dir().join("pods.json");
    let saved = wait_until(T, || {
        std::fs::read_to_string(&state)
            .is_ok_and(|text| added.iter().all(|ip| text.contains(&format!("\"{ip}\""))))
    });
    assert!(saved, "{} lacks {added:?}", state.display());
    let before = Status::of(&mesh.node);
    for ip in added {
        let r = get(&mesh.outsider, &url(ip, APP_PORT));
        assert_eq!(r.name, "web");
        assert_eq!(r.local, SocketAddr::new(ip, APP_PORT), "{r:?}");
        assert_eq!(r.peer.ip(), mesh.outsider_address(ip), "{r:?}");
    }
    let after = Status::of(&mesh.node);
    assert_eq!(inbound(&after), inbound(&before) + 2);
    let kernel = |name: &str| after.kernel(name) - before.kernel(name);
    assert_eq!(kernel("lookup_steered"), 2, "{}", after.0["kernel"]);
    assert_eq!(kernel("lookup_unknown_address"), 0, "{}", after.0["kernel"]);

    let gone = format!("{}/24", added[0]);
    mesh.web
        .run("ip", ["addr", "del", &gone, "dev", "eth0"], T)
        .unwrap();
    mesh.wait_steered(&added[1..]);
}

/// STRICT applies on added addresses as on declared ones: the outsider's plaintext requests
/// to them are never answered by the app; once the agent follows the addresses, web's
/// inbound proxy refuses them (counted as `PlaintextRefused`), before that the kernel does.
#[test]
fn strict_refuses_plaintext_on_added_addresses() {
    require_root();
    let strict = peer_authentication(
        "default",
        "web-strict",
        "  selector: {app: web}\n  mode: STRICT\n",
    );
    let mesh = WebAndOutsider::start(52, &strict);
    let plaintext_refused =
        || failures(&mesh.node, "PlaintextRefused", Some("default/web")).unwrap();
    let before = Status::of(&mesh.node);
    let added = mesh.add_addresses();
    for (i, ip) in added.into_iter().enumerate() {
        // get_fails panics on an answer.
        let refused_by_proxy = wait_until(T, || {
            get_fails(&mesh.outsider, &url(ip, APP_PORT), 2000);
            plaintext_refused() > i as u64
        });
        assert!(refused_by_proxy, "{ip}: web's proxy never refused it");
    }
    let after = Status::of(&mesh.node);
    let steered = after.kernel("lookup_steered") - before.kernel("lookup_steered");
    assert_eq!(steered, 2, "{}", after.0["kernel"]);
    assert_eq!(plaintext_refused(), 2);
    mesh.wait_steered(&added);
}

/// Addresses added while the agent is down are refused at once, before any listener in the
/// pod (the app's or the proxy's) sees the connection. The next agent re-reads the pod's
/// addresses when it resumes it, and from then on they go through the mesh.
#[test]
fn addresses_added_while_the_agent_is_down_are_refused() {
    require_root();
    let mut mesh = WebAndOutsider::start(53, "");
    let before = Status::of(&mesh.node);
    mesh.node.stop_agent().unwrap();
    let added = mesh.add_addresses();
    let accepted_in_web = passive_opens(&mesh.web);
    for ip in added {
        let (e, took) = get_fails(&mesh.outsider, &url(ip, APP_PORT), 3000);
        assert!(e.contains("refused"), "{ip}: {e}");
        assert!(took < Duration::from_secs(1), "{ip}: took {took:?}");
    }
    assert_eq!(
        passive_opens(&mesh.web),
        accepted_in_web,
        "a connection reached a listener in web"
    );

    mesh.node.start_agent().unwrap();
    let after = Status::of(&mesh.node);
    // Kernel counters live in the pinned maps: the two refusals are there.
    assert_eq!(
        after.kernel("lookup_unknown_address") - before.kernel("lookup_unknown_address"),
        2,
        "{}",
        after.0["kernel"]
    );
    mesh.wait_steered(&added);
    for ip in added {
        let r = get(&mesh.outsider, &url(ip, APP_PORT));
        assert_eq!(r.peer.ip(), mesh.outsider_address(ip), "{r:?}");
    }
    wait_pod_counter(&mesh.node, "default/web", "inbound", "connections", 2);
}

/// The pod's IPv6 link-local address is not steered (the mesh serves pods on their routable
/// addresses), so it is refused rather than left open around the mesh.
#[test]
fn link_local_addresses_are_refused() {
    require_root();
    let mesh = WebAndOutsider::start(54, "");
    let out = mesh
        .web
        .run(
            "ip",
            ["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
            T,
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let link_local = text
        .split_whitespace()
        .find_map(|word| word.strip_suffix("/64").filter(|a| a.starts_with("fe80")))
        .unwrap_or_else(|| panic!("no link-local address on web's eth0: {text}"))
        .to_owned();
    let before = Status::of(&mesh.node);
    let accepted_in_web = passive_opens(&mesh.web);
    // curl, for the zone (%25eth0) in the URL.
    let target = format!("http://[{link_local}%25eth0]:{APP_PORT}/");
    let curl = mesh
        .outsider
        .run("curl", ["-sS", "-g", "--max-time", "3", &target], T);
    let error = match curl {
        Ok(out) => panic!(
            "{target} answered: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("refused") || error.contains("Couldn't connect"),
        "{error}"
    );
    assert_eq!(passive_opens(&mesh.web), accepted_in_web);
    let after = Status::of(&mesh.node);
    assert_eq!(
        after.kernel("lookup_unknown_address") - before.kernel("lookup_unknown_address"),
        1
    );
}

/// A pod that has another enrolled pod's addresses does not take over their steering, neither
/// when it is enrolled with one nor when it adds one later: connections to web's addresses
/// still reach web, through web's proxy.
#[test]
fn another_pods_address_is_not_taken_over() {
    require_root();
    let mesh = WebAndOutsider::start_with(50, "", &[("intruder", 5)]);
    let intruder = &mesh.declared[0];
    let add = |address: &str, device: &str| {
        let mut args = vec!["addr", "add", address, "dev", device];
        if address.contains(':') {
            args.push("nodad");
        }
        intruder.run("ip", args, T).unwrap();
    };
    // On intruder's loopback device, and intruder answers ARP only for its eth0 addresses: the
    // bridge keeps delivering web's traffic to web.
    let arp_ignore = "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore";
    intruder.run("sh", ["-c", arp_ignore], T).unwrap();
    add(&format!("{}/32", mesh.web.ip()), "lo");
    mesh.node
        .enroll(intruder, "intruder-uid", "intruder")
        .unwrap();
    add(&format!("{}/128", mesh.web.ip6()), "lo");
    // A marker added after it: once the agent steers the marker, it has seen web's address too.
    let marker = host(intruder.ip(), 77);
    add(&format!("{marker}/24"), "eth0");
    let mut steered = Vec::new();
    let synced = wait_until(T, || {
        steered = mesh.steered_for("default/intruder");
        steered.contains(&marker)
    });
    assert!(synced, "intruder's steered addresses stay {steered:?}");
    assert!(
        !steered.contains(&mesh.web.ip()) && !steered.contains(&mesh.web.ip6()),
        "intruder took over web's addresses: {steered:?}"
    );
    mesh.wait_steered(&[]);

    let before = Status::of(&mesh.node);
    for ip in [mesh.web.ip(), mesh.web.ip6()] {
        let r = get(&mesh.outsider, &url(ip, APP_PORT));
        assert_eq!(r.name, "web", "{r:?}");
    }
    let after = Status::of(&mesh.node);
    let inbound = |s: &Status| s.pod("default/web", "inbound", "connections");
    assert_eq!(inbound(&after), inbound(&before) + 2);
}

/// The agent's cap on addresses steered to one pod beyond its declared IPs
/// (`MAX_UNDECLARED` in `mesh-agent/src/pods/addresses.rs`).
const MAX_UNDECLARED: usize = 16;

/// A pod that adds many addresses cannot fill the node-wide map: at most the cap beyond its
/// declared IPs are steered (web's own IPv6 address counts), the rest stay refused by the
/// kernel (never answered around the mesh), and the agent keeps answering quickly.
#[test]
fn a_pod_adding_many_addresses_gets_at_most_the_cap_steered() {
    require_root();
    let mesh = WebAndOutsider::start(55, "");
    let added: Vec<IpAddr> = (100..140).map(|last| host(mesh.web.ip(), last)).collect();
    let script: String = added
        .iter()
        .map(|ip| format!("ip addr add {ip}/24 dev eth0\n"))
        .collect();
    mesh.web.run("sh", ["-c", &script], T).unwrap();

    let own = [mesh.web.ip(), mesh.web.ip6()];
    let mut steered = Vec::new();
    let capped = wait_until(T, || {
        steered = mesh.steered_for("default/web");
        steered.len() == 1 + MAX_UNDECLARED
    });
    assert!(capped, "web's steered addresses: {steered:?}");
    // Settled at the cap, not on the way past it.
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let steered = mesh.steered_for("default/web");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "status took {:?}",
        started.elapsed()
    );
    assert_eq!(steered.len(), 1 + MAX_UNDECLARED, "{steered:?}");
    assert!(
        own.iter().all(|ip| steered.contains(ip)),
        "web's own addresses must stay steered: {steered:?}"
    );

    let through = *steered.iter().find(|ip| added.contains(ip)).unwrap();
    assert_eq!(get(&mesh.outsider, &url(through, APP_PORT)).name, "web");

    let refused = *added.iter().find(|ip| !steered.contains(ip)).unwrap();
    let before = Status::of(&mesh.node);
    let accepted_in_web = passive_opens(&mesh.web);
    let error = match try_get(&mesh.outsider, &url(refused, APP_PORT), 2000) {
        Ok(body) => panic!("{refused} (over the cap) answered: {body}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("refused"), "{error}");
    assert_eq!(passive_opens(&mesh.web), accepted_in_web);
    let after = Status::of(&mesh.node);
    assert_eq!(
        after.kernel("lookup_unknown_address") - before.kernel("lookup_unknown_address"),
        1
    );
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), which the kernel lets a pod add, is not
/// claimed: the map would store it as `a.b.c.d`, here the outsider's address, steering that
/// to web. An ordinary address added with it is followed, so the agent did re-read.
#[test]
fn ipv4_mapped_addresses_are_not_claimed() {
    require_root();
    let mesh = WebAndOutsider::start(45, "");
    let IpAddr::V4(outsider) = mesh.outsider.ip() else {
        panic!("the outsider's first address is IPv4");
    };
    let mapped = format!("{}/128", outsider.to_ipv6_mapped());
    mesh.web
        .run("ip", ["addr", "add", &mapped, "dev", "eth0", "nodad"], T)
        .unwrap();
    let marker = host(mesh.web.ip(), 99);
    let with_prefix = format!("{marker}/24");
    mesh.web
        .run("ip", ["addr", "add", &with_prefix, "dev", "eth0"], T)
        .unwrap();
    mesh.wait_steered(&[marker]);
}
