//! IPv6: connect6, sock_ops, getpeername6 and sk_lookup for AF_INET6, with dual-stack
//! workloads and a service that has an IPv4 and an IPv6 VIP.

use std::net::{IpAddr, SocketAddr};

use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::{require_root, Bridge, Pod};

use crate::support::*;

const VIP6: &str = "fd00:96::20";

/// A dual-stack Service (one VIP per family) selecting dual-stack workloads.
fn dual_stack_service() -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  \
         vips: [\"{VIP}\", \"{VIP6}\"]\n  ports: [{{port: 80, targetPort: {APP_PORT}}}]\n  \
         selector: {{app: web}}\n"
    )
}

#[test]
fn ipv6_vip_and_inbound_capture() {
    require_root();
    let bridge = Bridge::new(18).unwrap();
    let client = Pod::new(&bridge, "client", 2).unwrap();
    let web = Pod::new(&bridge, "web", 3).unwrap();
    let outsider = Pod::new(&bridge, "outsider", 4).unwrap();
    let _server = http_server(&web, "web");
    let config = [
        dual_stack_service(),
        workload_yaml(
            "client",
            "client-uid",
            &[client.ip(), client.ip6()],
            &[("app", "client")],
        ),
        workload_yaml("web", "web-uid", &[web.ip(), web.ip6()], &[("app", "web")]),
    ]
    .concat();
    let node = MeshNode::start(&config).unwrap();
    enroll_ips(
        &node,
        &client,
        "client-uid",
        "client",
        &[client.ip(), client.ip6()],
    )
    .unwrap();
    enroll_ips(&node, &web, "web-uid", "web", &[web.ip(), web.ip6()]).unwrap();
    let status = Status::of(&node);
    let web_ips = &status.pod_entry("default/web").unwrap()["ips"];
    assert_eq!(web_ips.as_array().unwrap().len(), 2, "{web_ips}");

    // Outbound through the IPv6 VIP: captured by connect6, routed to web's IPv6 address.
    let vip6: IpAddr = VIP6.parse().unwrap();
    let before = Status::of(&node);
    let r = get(&client, &url(vip6, 80));
    assert_eq!(r.name, "web");
    assert_eq!(r.local, SocketAddr::new(web.ip6(), APP_PORT), "{r:?}");
    assert_eq!(r.peer.ip(), client.ip6(), "{r:?}");
    // The IPv4 VIP of the same service keeps to IPv4.
    let r = get(&client, &url(vip(), 80));
    assert_eq!(r.local, SocketAddr::new(web.ip(), APP_PORT), "{r:?}");
    assert_eq!(r.peer.ip(), client.ip(), "{r:?}");
    // A workload's IPv6 address is captured as well.
    let r = get(&client, &url(web.ip6(), APP_PORT));
    assert_eq!(r.peer.ip(), client.ip6(), "{r:?}");
    let after = Status::of(&node);
    let delta = |pod: &str, dir: &str| {
        after.pod(pod, dir, "connections") - before.pod(pod, dir, "connections")
    };
    assert_eq!(delta("default/client", "outbound"), 3);
    assert_eq!(delta("default/web", "inbound"), 3);
    let kernel = |name: &str| after.kernel(name) - before.kernel(name);
    assert_eq!(kernel("connect_captured"), 3, "{}", after.0["kernel"]);
    assert_eq!(kernel("orig_dst_recorded"), 3, "{}", after.0["kernel"]);
    // Same node: the agent delivers straight into web's namespace, no sk_lookup hop.
    assert_eq!(kernel("lookup_steered"), 0, "{}", after.0["kernel"]);

    // getpeername6 shows the IPv6 VIP.
    let vip6_80 = SocketAddr::new(vip6, 80);
    assert_eq!(peername(&client, vip6_80), vip6_80.to_string());

    // A dual-stack AF_INET6 socket dialling the IPv4 VIP v4-mapped (as Java does) is
    // captured as IPv4, shown the mapped VIP as its peer, and carried over IPv4.
    let mapped: IpAddr = format!("::ffff:{VIP}").parse().unwrap();
    let mapped_80 = SocketAddr::new(mapped, 80);
    assert_eq!(peername(&client, mapped_80), mapped_80.to_string());
    let r = get(&client, &url(mapped, 80));
    assert_eq!(r.local, SocketAddr::new(web.ip(), APP_PORT), "{r:?}");
    assert_eq!(r.peer.ip(), client.ip(), "{r:?}");

    // Inbound over IPv6 from outside the mesh: steered, delivered, real client shown.
    let before = Status::of(&node);
    let r = get(&outsider, &url(web.ip6(), APP_PORT));
    assert_eq!(r.name, "web");
    assert_eq!(r.local, SocketAddr::new(web.ip6(), APP_PORT), "{r:?}");
    assert_eq!(r.peer.ip(), outsider.ip6(), "{r:?}");
    let after = Status::of(&node);
    assert_eq!(
        after.pod("default/web", "inbound", "connections"),
        before.pod("default/web", "inbound", "connections") + 1
    );
    assert_eq!(
        after.kernel("lookup_steered"),
        before.kernel("lookup_steered") + 1
    );
    for dir in ["outbound", "inbound"] {
        assert_eq!(after.pod("default/client", dir, "failures"), 0);
        assert_eq!(after.pod("default/web", dir, "failures"), 0);
    }
}
