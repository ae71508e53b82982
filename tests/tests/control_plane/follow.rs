//! An agent following the control plane: config applied with meshctl reaches the data plane,
//! and changes reach it within a second.

use std::time::Instant;

use mesh_tests::mesh::{service_yaml, NODE};
use mesh_tests::require_root;

use crate::support::*;

/// A Service and Workloads applied with meshctl are all the agent knows: a client pod reaches
/// the VIP through the agent (kernel capture, client outbound and web inbound counters), and
/// `meshctl status` shows the agent connected with the control plane's version ACKed.
#[test]
fn applied_config_carries_traffic_and_status_shows_the_ack() {
    require_root();
    let mesh = Mesh::start(30, &[web("web", "web")], &[]);

    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");

    let version = mesh.settle();
    let status = cp_status(&mesh.cp);
    let agent = agent_entry(&status, NODE).expect("the agent is in meshctl status");
    assert_eq!(agent["connected"], true, "{agent}");
    assert_eq!(agent["ackedVersion"], version, "{agent}");
    assert_eq!(agent["lastNack"], "", "{agent}");
    // The table says the same.
    let table = mesh.cp.meshctl_ok(&["status"]).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with(NODE))
        .unwrap_or_else(|| panic!("no {NODE} row in:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "connected", "{table}");
    assert_eq!(cells[3], version.to_string(), "{table}");
    assert!(
        table.contains(&format!("config version {version}")),
        "{table}"
    );
    // The agent's own view: the config came from the control plane, at that version.
    let local = AgentStatus::of(&mesh.node);
    assert_eq!(local.config_version(), version);
    assert!(
        local.origin().contains(&mesh.cp.url()),
        "origin {:?}",
        local.origin()
    );
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
}

/// Re-labelling workloads moves the service to another pod, and changing the VIP moves the
/// service to a new address: each change reaches the agent in under a second, and traffic
/// follows (the old VIP is no longer captured at all).
#[test]
fn endpoint_and_vip_changes_reach_the_agent_within_a_second() {
    require_root();
    let mesh = Mesh::start(31, &[web("web-a", "web"), web("web-b", "spare")], &[]);
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web-a");
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web-a");
    let v0 = mesh.settle();

    // The selector now picks web-b only.
    let relabel = [
        mesh.web_workload("web-a", "spare"),
        mesh.web_workload("web-b", "web"),
    ]
    .concat();
    let start = Instant::now();
    let out = mesh.cp.apply(&relabel).unwrap();
    let v1 = cp_version(&mesh.cp);
    wait_agent_version(&mesh.node, v1);
    let took = start.elapsed();
    eprintln!("re-label: apply + agent follows in {took:?}");
    assert!(v1 > v0);
    assert!(out.contains("Workload default/web-a configured"), "{out}");
    assert!(took.as_millis() < 1000, "the agent took {took:?} to follow");
    for _ in 0..3 {
        assert_eq!(mesh.get_vip_through_mesh(vip()), "web-b");
    }

    // A new VIP for the service.
    let new_vip = ip("10.96.0.21");
    let start = Instant::now();
    mesh.cp
        .apply(&service_yaml("web", &[new_vip], 80, APP_PORT, "web"))
        .unwrap();
    let v2 = cp_version(&mesh.cp);
    wait_agent_version(&mesh.node, v2);
    let took = start.elapsed();
    eprintln!("VIP change: apply + agent follows in {took:?}");
    assert!(took.as_millis() < 1000, "the agent took {took:?} to follow");
    assert_eq!(mesh.get_vip_through_mesh(new_vip), "web-b");
    let capture = AgentStatus::of(&mesh.node).capture();
    assert!(capture.contains(&"10.96.0.21/32".to_owned()), "{capture:?}");
    assert!(!capture.contains(&format!("{VIP}/32")), "{capture:?}");
    // The old VIP is just an unroutable address now.
    let err = get_fails(&mesh.client, &url(vip(), 80), 300);
    assert!(
        err.contains("timed out") || err.contains("unreachable"),
        "{err}"
    );
    wait_synced(&mesh.cp, &mesh.node);
}
