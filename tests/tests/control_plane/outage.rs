//! The control plane going away and coming back: the data plane never depends on it being up,
//! and the embedded store keeps everything across a restart.

use mesh_tests::mesh::{service_yaml, NODE};
use mesh_tests::require_root;

use crate::support::*;

/// Control plane crashed: traffic keeps flowing on the last config; an agent restarted while
/// it is still down serves from its cache; once the control plane is back the agent
/// reconnects and follows new changes.
#[test]
fn data_plane_survives_the_control_plane_and_serves_from_cache() {
    require_root();
    let mut mesh = Mesh::start(32, &[web("web", "web")], &[]);
    let version = mesh.settle();
    // The cache is written off the push path (at most every 500 ms).
    let state_dir = mesh.node.state_dir();
    assert!(
        mesh_tests::wait_until(T, || cached_version(&state_dir) == version),
        "config cache has version {}, expected {version}",
        cached_version(&state_dir)
    );

    mesh.cp.kill();
    for _ in 0..2 {
        assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
    }

    // A restarted agent cannot reach the control plane: it serves the cached config.
    mesh.node.kill_agent();
    mesh.node.start_agent().unwrap();
    let local = AgentStatus::of(&mesh.node);
    assert_eq!(local.config_version(), version);
    assert!(
        local.origin().contains("cache"),
        "origin {:?}",
        local.origin()
    );
    assert!(
        local.capture().contains(&format!("{VIP}/32")),
        "{:?}",
        local.capture()
    );
    for _ in 0..2 {
        assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
    }

    // Back: the agent reconnects (backoff <= 5 s) and follows a change made after that.
    mesh.cp.start_process().unwrap();
    wait_synced(&mesh.cp, &mesh.node);
    let new_vip = ip("10.96.0.21");
    mesh.cp
        .apply(&service_yaml("web", &[new_vip], 80, APP_PORT, "web"))
        .unwrap();
    let v = wait_synced(&mesh.cp, &mesh.node);
    assert!(v > version);
    let local = AgentStatus::of(&mesh.node);
    assert!(
        local.origin().contains(&mesh.cp.url()),
        "origin {:?}",
        local.origin()
    );
    assert_eq!(mesh.get_vip_through_mesh(new_vip), "web");
    let status = cp_status(&mesh.cp);
    assert_eq!(agent_entry(&status, NODE).unwrap()["connected"], true);
}

/// The embedded store survives a clean restart of the control plane on the same data dir:
/// every resource, the version, the admin token; the agent reconnects and keeps following.
#[test]
fn embedded_store_survives_a_restart() {
    require_root();
    let mut mesh = Mesh::start(33, &[web("web", "web")], &[]);
    mesh.cp
        .apply(&service_yaml(
            "other",
            &[ip("10.96.0.22")],
            81,
            APP_PORT,
            "web",
        ))
        .unwrap();
    let version = mesh.settle();
    let token = std::fs::read_to_string(mesh.cp.token_file()).unwrap();
    let all = |cp: &mesh_tests::control::ControlPlane| {
        ["services", "workloads", "meshconfig"]
            .map(|kind| cp.meshctl_ok(&["get", kind, "-o", "yaml"]).unwrap())
    };
    let before = all(&mesh.cp);
    assert!(before[0].contains("name: other"), "{}", before[0]);
    assert_eq!(
        before[1].matches("kind: Workload").count(),
        2,
        "{}",
        before[1]
    );

    mesh.cp.stop().unwrap();
    mesh.cp.start_process().unwrap();

    assert_eq!(
        all(&mesh.cp),
        before,
        "resources changed across the restart"
    );
    assert_eq!(
        std::fs::read_to_string(mesh.cp.token_file()).unwrap(),
        token,
        "the admin token changed"
    );
    // The version never goes back (the store's revision survives).
    let after = wait_synced(&mesh.cp, &mesh.node);
    assert!(
        after >= version,
        "version {after} < {version} before the restart"
    );
    // Health survives too: nothing is unknown after the restart.
    let health = endpoints(&mesh.cp, "web");
    assert_eq!(
        health.get("default/web").map(String::as_str),
        Some("healthy"),
        "{health:?}"
    );

    // The agent follows changes made after the restart.
    mesh.cp
        .meshctl_ok(&["delete", "service", "default/other"])
        .unwrap();
    let v = wait_synced(&mesh.cp, &mesh.node);
    assert!(v > after);
    let services = AgentStatus::of(&mesh.node).0["services"].clone();
    assert_eq!(services.as_array().unwrap().len(), 1, "{services}");
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
}
