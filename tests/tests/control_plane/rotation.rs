//! Root rotation with overlap, an agent that missed a rotation, and an operator-supplied root
//! (split from `identity.rs`, whose helpers these use).

use std::time::Duration;

use mesh_identity::TrustBundle;
use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::{service_yaml, MeshNode, NODE};
use mesh_tests::{require_root, wait_until};
use serde_json::Value;

use crate::identity::{certificates, identity_file};
use crate::support::*;

/// prepare -> activate -> finish: the agent holds both roots during the overlap, moves its
/// node certificate to the new root, keeps its stream, and reconnects afterwards (control
/// plane and agent restarts) trusting only the new root.
#[test]
fn root_rotation_keeps_the_agent_connected() {
    require_root();
    let mut mesh = Mesh::start(34, &[web("web", "web")], &[]);
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
    mesh.settle();
    let old_bundle = mesh.cp.meshctl_ok(&["ca-cert"]).unwrap();
    assert_eq!(certificates(&old_bundle), 1);
    assert_eq!(identity_file(&mesh.node, "ca.pem"), old_bundle);
    let ca_status = |cp: &ControlPlane| -> Value {
        serde_json::from_str(&cp.meshctl_ok(&["ca", "status", "-o", "json"]).unwrap()).unwrap()
    };

    mesh.cp.meshctl_ok(&["ca", "rotate", "prepare"]).unwrap();
    assert_eq!(ca_status(&mesh.cp)["phase"], "prepared");
    let both = mesh.cp.meshctl_ok(&["ca-cert"]).unwrap();
    assert_eq!(certificates(&both), 2, "{both}");
    assert!(
        wait_until(Duration::from_secs(5), || certificates(&identity_file(
            &mesh.node, "ca.pem"
        )) == 2),
        "the agent never got the two-root bundle"
    );
    if let Ok(status) = mesh.node.status_json() {
        if let Some(roots) = status["identity"]["trustBundle"].as_array() {
            assert_eq!(roots.len(), 2, "{}", status["identity"]);
        }
    }
    // Another prepare before activate is refused.
    let out = mesh.cp.meshctl(&["ca", "rotate", "prepare"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already prepared"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let before = identity_file(&mesh.node, "node.pem");
    mesh.cp.meshctl_ok(&["ca", "rotate", "activate"]).unwrap();
    assert_eq!(ca_status(&mesh.cp)["phase"], "activated");
    assert!(
        wait_until(Duration::from_secs(10), || identity_file(
            &mesh.node, "node.pem"
        ) != before),
        "the node certificate was not renewed after activate"
    );
    assert_eq!(certificates(&identity_file(&mesh.node, "ca.pem")), 2);
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");

    mesh.cp.meshctl_ok(&["ca", "rotate", "finish"]).unwrap();
    let new_bundle = mesh.cp.meshctl_ok(&["ca-cert"]).unwrap();
    assert_eq!(certificates(&new_bundle), 1);
    assert_ne!(new_bundle, old_bundle);
    assert!(
        wait_until(Duration::from_secs(5), || identity_file(
            &mesh.node, "ca.pem"
        ) == new_bundle),
        "the agent never dropped the old root"
    );
    // The stream lives on.
    apply_and_sync(&mesh, 80);
    // New connections trust only the new root, both ways.
    mesh.cp.stop().unwrap();
    mesh.cp.start_process().unwrap();
    wait_synced(&mesh.cp, &mesh.node);
    mesh.node.stop_agent().unwrap();
    mesh.node.start_agent().unwrap();
    apply_and_sync(&mesh, 81);
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
}

/// Applies Service `other` (selecting web) on `port` and waits until the agent has it: a
/// change the control plane can only push over a working stream.
fn apply_and_sync(mesh: &Mesh, port: u16) {
    mesh.cp
        .apply(&service_yaml(
            "other",
            &[ip("10.96.0.23")],
            port,
            APP_PORT,
            "web",
        ))
        .unwrap();
    wait_synced(&mesh.cp, &mesh.node);
}

/// An agent that was down during a whole rotation holds only the old root: it cannot
/// reconnect, and a new join token (naming the new root) brings it back.
#[test]
fn an_agent_that_missed_a_rotation_joins_again() {
    require_root();
    let cp = ControlPlane::start_embedded().unwrap();
    let mut node = MeshNode::start_with_control_plane(NODE, &[cp.url()], &[]).unwrap();
    cp.apply(&service_yaml("web", &[vip()], 80, APP_PORT, "web"))
        .unwrap();
    wait_synced(&cp, &node);
    node.stop_agent().unwrap();
    for phase in ["prepare", "activate", "finish"] {
        cp.meshctl_ok(&["ca", "rotate", phase]).unwrap();
    }
    // Restarted as it was (its used token still in its arguments): it serves its cache but
    // cannot reach the control plane.
    node.start_agent().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let status = cp_status(&cp);
    assert_eq!(
        agent_entry(&status, NODE).unwrap()["connected"],
        false,
        "{status}"
    );
    node.stop_agent().unwrap();
    let token = cp.join_token(NODE).unwrap();
    node.set_extra_args(&["--join-token", &token]);
    node.start_agent().unwrap();
    cp.apply(&service_yaml("web", &[vip()], 81, APP_PORT, "web"))
        .unwrap();
    wait_synced(&cp, &node);
    assert_eq!(
        identity_file(&node, "ca.pem"),
        cp.meshctl_ok(&["ca-cert"]).unwrap()
    );
}

/// `serve --ca-cert --ca-key`: agents trust the operator's root; the control plane signs with
/// an intermediate under it (chains are leaf + intermediate).
#[test]
fn operator_supplied_root_signs_through_an_intermediate() {
    require_root();
    let root = mesh_control::server::ca::generate_root_authority("operator").unwrap();
    let dir = mesh_tests::temp_dir().unwrap();
    let cert = dir.path().join("root.pem");
    let key = dir.path().join("root-key.pem");
    std::fs::write(&cert, &root.root_pem).unwrap();
    std::fs::write(&key, &root.issuer_key_pem).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let mut cp =
        ControlPlane::start_embedded_with_args(&["--ca-cert", &cert, "--ca-key", &key]).unwrap();
    let bundle = cp.meshctl_ok(&["ca-cert"]).unwrap();
    assert_eq!(
        TrustBundle::from_pem(&bundle).unwrap(),
        TrustBundle::from_pem(&root.root_pem).unwrap(),
        "agents trust the operator's root"
    );
    let status: Value =
        serde_json::from_str(&cp.meshctl_ok(&["ca", "status", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(status["roots"][0]["operatorSupplied"], true, "{status}");

    let node = MeshNode::start_with_control_plane(NODE, &[cp.url()], &[]).unwrap();
    cp.apply(&service_yaml("web", &[vip()], 80, APP_PORT, "web"))
        .unwrap();
    wait_synced(&cp, &node);
    assert_eq!(
        certificates(&identity_file(&node, "node.pem")),
        2,
        "leaf + intermediate"
    );
    // Restarting with the same root is fine.
    cp.stop().unwrap();
    cp.start_process().unwrap();
    cp.apply(&service_yaml("web", &[vip()], 81, APP_PORT, "web"))
        .unwrap();
    wait_synced(&cp, &node);
}
