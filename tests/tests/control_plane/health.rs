//! Endpoint health: the agent checks its pods' apps, the control plane records and pushes the
//! result, and the proxy steers around an unhealthy endpoint.

use std::collections::BTreeMap;

use mesh_tests::require_root;

use crate::support::*;

/// Two endpoints behind a service. The app in one dies: within seconds `meshctl endpoints
/// list` shows it unhealthy and every request goes to the other one, without even trying the
/// dead one (its inbound proxy sees no connection). The app comes back: healthy again, and
/// round robin uses both.
#[test]
fn unhealthy_endpoint_is_reported_and_avoided_until_it_recovers() {
    require_root();
    let mut mesh = Mesh::start(37, &[web("web-1", "web"), web("web-2", "web")], &[]);
    wait_health(&mesh.cp, "web", "default/web-1", "healthy");
    wait_health(&mesh.cp, "web", "default/web-2", "healthy");
    wait_synced(&mesh.cp, &mesh.node);
    let spread = |mesh: &Mesh, n: usize| {
        let mut hits: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..n {
            *hits.entry(mesh.get_vip_through_mesh(vip())).or_default() += 1;
        }
        hits
    };
    assert_eq!(
        spread(&mesh, 4),
        BTreeMap::from([("web-1".into(), 2), ("web-2".into(), 2)])
    );

    mesh.servers.get_mut("web-1").unwrap().kill();
    let took = wait_health(&mesh.cp, "web", "default/web-1", "unhealthy");
    eprintln!("app killed -> meshctl shows it unhealthy in {took:?}");
    let list = mesh.cp.meshctl_ok(&["endpoints", "list", "web"]).unwrap();
    // The reason is shown: the probe of the target port failed.
    let row = list
        .lines()
        .find(|l| l.starts_with("default/web-1"))
        .unwrap();
    assert!(row.contains(":8080"), "{list}");
    assert_eq!(endpoints(&mesh.cp, "web")["default/web-2"], "healthy");
    wait_synced(&mesh.cp, &mesh.node);
    let before = AgentStatus::of(&mesh.node);
    assert_eq!(spread(&mesh, 6), BTreeMap::from([("web-2".into(), 6)]));
    let after = AgentStatus::of(&mesh.node);
    let web1 = |s: &AgentStatus, c: &str| s.pod("default/web-1", "inbound", c);
    assert_eq!(web1(&after, "connections"), web1(&before, "connections"));
    assert_eq!(
        after.pod("default/client", "outbound", "failures"),
        before.pod("default/client", "outbound", "failures")
    );

    mesh.servers
        .insert("web-1".into(), http_server(mesh.web("web-1"), "web-1"));
    let took = wait_health(&mesh.cp, "web", "default/web-1", "healthy");
    eprintln!("app restarted -> meshctl shows it healthy in {took:?}");
    wait_synced(&mesh.cp, &mesh.node);
    assert_eq!(
        spread(&mesh, 4),
        BTreeMap::from([("web-1".into(), 2), ("web-2".into(), 2)])
    );
}
