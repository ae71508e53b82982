//! The CA signs a workload identity only for the node its Workload names: a pod enrolled on
//! another node gets no certificate there.

use mesh_tests::require_root;
use mesh_tests::two_nodes::TwoNodes;

use crate::support::*;

/// Workload `stray` is declared on node-2; enrolling it with node-1's agent is refused
/// (naming the node the Workload is on), and node-1 never holds a certificate for its
/// identity, while its legitimate pod `a` has one.
#[test]
fn a_pod_enrolled_on_a_node_its_workload_does_not_name_gets_no_certificate() {
    require_root();
    let mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::mesh("stray", 1, "stray").enroll_elsewhere())
        .start()
        .expect("starting two nodes");
    let stray = mesh.pod("stray");
    let node1 = mesh.agent(0);

    let mut args = mesh_tests::mesh::MeshNode::enroll_args(&stray.pod, &stray.uid(), "stray");
    args.extend(["--service-account".into(), "stray".into()]);
    let out = node1
        .cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "enrolling on the wrong node worked");
    assert!(stderr.contains("node-2"), "{stderr}");

    assert!(certificate(node1, &mesh.pod("a").spiffe_id()).is_some());
    // Give a wrongly triggered signing request time to come back.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let status = status(node1);
    assert!(
        !certificates(&status)
            .iter()
            .any(|c| c["spiffeId"] == stray.spiffe_id() && !c["serial"].is_null()),
        "node-1 holds a certificate for node-2's workload: {}",
        status["identity"]
    );
    assert!(
        !status["pods"].to_string().contains("stray"),
        "{}",
        status["pods"]
    );
}
