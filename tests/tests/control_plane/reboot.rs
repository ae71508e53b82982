//! A node that reboots: the state dir (a tmpfs) is gone, the node credential need not be.

use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::{service_yaml, MeshNode, NODE};
use mesh_tests::require_root;

use crate::support::*;

/// A reboot empties the state dir (a tmpfs): with `--identity-dir` on lasting storage the
/// agent keeps its node credential and needs no new join token; without it, the used token
/// is refused and the agent says so.
#[test]
fn a_node_credential_in_identity_dir_survives_a_reboot() {
    require_root();
    let cp = ControlPlane::start_embedded().unwrap();
    let lasting = tempfile::tempdir().unwrap();
    let identity_dir = lasting.path().join("identity");
    let token = cp.join_token(NODE).unwrap();
    let identity_arg = identity_dir.display().to_string();
    let args = ["--join-token", &token, "--identity-dir", &identity_arg];
    let mut node = MeshNode::start_with_control_plane_args(NODE, &[cp.url()], &args).unwrap();
    let version = wait_synced(&cp, &node);
    assert_eq!(mode(&identity_dir.join("node.key")), 0o600);
    assert!(!node.state_dir().join("identity").exists());

    // The reboot: the agent stops, the state dir (and the pins) are gone.
    node.stop_agent().unwrap();
    std::fs::remove_dir_all(node.state_dir()).unwrap();
    std::fs::create_dir_all(node.state_dir()).unwrap();
    node.start_agent().unwrap();
    cp.apply(&service_yaml("web", &[vip()], 81, APP_PORT, "web"))
        .unwrap();
    assert!(wait_synced(&cp, &node) > version);
    let log = node.agent().unwrap().log();
    assert!(log.contains("using the stored node credential"), "{log}");

    // Without it, the same reboot leaves the node with a used token only.
    node.stop_agent().unwrap();
    std::fs::remove_dir_all(&identity_dir).unwrap();
    std::fs::remove_dir_all(node.state_dir()).unwrap();
    std::fs::create_dir_all(node.state_dir()).unwrap();
    let e = format!("{:#}", node.start_agent().unwrap_err());
    assert!(e.contains("join token"), "{e}");
}
