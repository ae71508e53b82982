//! Two control-plane replicas sharing a real 3-member etcd cluster.

use std::time::Instant;

use mesh_tests::control::ControlPlane;
use mesh_tests::etcd::{require_etcd, EtcdCluster};
use mesh_tests::mesh::{service_yaml, NODE};
use mesh_tests::require_root;

use crate::support::*;

/// A change applied through replica A reaches an agent connected to replica B, and both
/// replicas report that agent; with one etcd member killed, applies through either replica
/// still succeed and still reach the agent. Replica B stopping ends its agent streams at once:
/// it exits promptly and the agent moves to A.
#[test]
fn replicas_on_etcd_share_config_and_survive_a_member_loss() {
    require_root();
    require_etcd();
    // Declared first, dropped last: the replicas and the agent go before their store.
    let mut etcd = EtcdCluster::start(3).expect("starting etcd");
    let a = ControlPlane::start_etcd(&etcd.endpoints()).expect("starting replica A");
    let mut b = ControlPlane::start_etcd(&etcd.endpoints()).expect("starting replica B");
    // One admin token for the whole mesh.
    assert_eq!(
        std::fs::read_to_string(a.token_file()).unwrap(),
        std::fs::read_to_string(b.token_file()).unwrap()
    );
    let b_url = b.url();
    let a_url = a.url();
    // Config applied through A; the agent follows B (and knows A as the next replica).
    let mesh = Mesh::start_on(
        34,
        a,
        &[b_url.clone(), a_url.clone()],
        &[web("web", "web")],
        &[],
    );
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
    let version = mesh.settle();

    // Both replicas see the agent, on B, with the same version ACKed.
    for (name, cp) in [("A", &mesh.cp), ("B", &b)] {
        let status = cp_status(cp);
        assert_eq!(status["version"], version, "replica {name}: {status}");
        let agent = agent_entry(&status, NODE)
            .unwrap_or_else(|| panic!("replica {name} does not show the agent: {status}"));
        assert_eq!(agent["connected"], true, "replica {name}: {agent}");
        assert_eq!(agent["ackedVersion"], version, "replica {name}: {agent}");
        assert_eq!(
            agent["replica"],
            b_url.trim_start_matches("https://"),
            "replica {name}: {agent}"
        );
        assert!(
            status["store"]
                .as_str()
                .unwrap_or_default()
                .contains("etcd"),
            "{status}"
        );
    }
    // A change through A reaches the agent on B.
    let vip2 = ip("10.96.0.21");
    mesh.cp
        .apply(&service_yaml("web", &[vip2], 80, APP_PORT, "web"))
        .unwrap();
    wait_synced(&mesh.cp, &mesh.node);
    assert_eq!(mesh.get_vip_through_mesh(vip2), "web");

    // Lose a member: a 2-of-3 cluster still has a quorum.
    etcd.kill_member(0);
    let vip3 = ip("10.96.0.22");
    let start = Instant::now();
    mesh.cp
        .apply(&service_yaml("web", &[vip3], 80, APP_PORT, "web"))
        .unwrap_or_else(|e| {
            etcd.print_logs();
            panic!("apply through A with a member down: {e:#}")
        });
    let v = cp_version(&mesh.cp);
    wait_agent_version(&mesh.node, v);
    eprintln!(
        "apply through A with an etcd member down, reaching the agent: {:?}",
        start.elapsed()
    );
    assert_eq!(mesh.get_vip_through_mesh(vip3), "web");
    // And through B, the agent's own replica.
    let start = Instant::now();
    b.apply(&service_yaml("web", &[vip()], 80, APP_PORT, "web"))
        .expect("apply through B with a member down");
    let v = cp_version(&b);
    wait_agent_version(&mesh.node, v);
    eprintln!(
        "apply through B with an etcd member down, reaching the agent: {:?}",
        start.elapsed()
    );
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
    wait_synced(&mesh.cp, &mesh.node);
    wait_synced(&b, &mesh.node);

    // B stops (SIGTERM): it ends the agent's stream rather than waiting for it, so it exits
    // at once; the agent reconnects to A, which then shows it there.
    let start = Instant::now();
    b.stop().expect("replica B did not exit on SIGTERM");
    eprintln!("replica B stopped in {:?}", start.elapsed());
    assert!(
        start.elapsed().as_secs() < 3,
        "stopping B took {:?}",
        start.elapsed()
    );
    let agent_on_a = mesh_tests::wait_until(T, || {
        agent_entry(&cp_status(&mesh.cp), NODE).is_some_and(|a| {
            a["connected"] == true && a["replica"] == a_url.trim_start_matches("https://")
        })
    });
    assert!(
        agent_on_a,
        "the agent never moved to A: {}",
        cp_status(&mesh.cp)
    );
    let vip4 = ip("10.96.0.23");
    mesh.cp
        .apply(&service_yaml("web", &[vip4], 80, APP_PORT, "web"))
        .unwrap();
    wait_synced(&mesh.cp, &mesh.node);
    assert_eq!(mesh.get_vip_through_mesh(vip4), "web");
}
