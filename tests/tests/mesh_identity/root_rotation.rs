//! CA root rotation (`meshctl ca rotate prepare|activate|finish`) under cross-node traffic:
//! every phase keeps HBONE between the nodes working, also for connections whose TLS
//! handshake happens after the phase (each from a pod that never connected before, so no
//! pooled connection hides a handshake).

use std::time::Duration;

use mesh_tests::require_root;
use mesh_tests::two_nodes::TwoNodes;
use serde_json::Value;

use crate::support::*;

fn roots(status: &Value) -> Vec<String> {
    status["identity"]["trustBundle"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["fingerprint"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until both agents trust exactly `want`.
fn wait_roots(mesh: &TwoNodes, want: &[String], phase: &str) {
    for (node, name) in NODE_NAMES.iter().enumerate() {
        mesh_tests::wait_until_ok(T, || {
            let mut have = roots(&mesh.agent(node).status_json()?);
            have.sort();
            anyhow::ensure!(have == want, "{name} trusts {have:?}");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("after {phase}: {e:#}; expected {want:?}"));
    }
}

fn serial(mesh: &TwoNodes, node: usize, id: &str) -> Value {
    certificate(mesh.agent(node), id)
        .unwrap_or_else(|| panic!("{} has no certificate for {id}", NODE_NAMES[node]))["serial"]
        .clone()
}

/// `a`..`a3` on node-1, `b` on node-2 (HTTP on 8080), `a` serving too. Before, during and
/// after the rotation, GETs between the nodes work: after `prepare` both agents trust both
/// roots; after `activate` every workload certificate moves to the new root (new serials,
/// which `finish` must wait for: the old root's certificates would no longer be trusted) and
/// a fresh connection (`a2`) works; after `finish` both agents trust only the new root and
/// fresh connections both ways (`a3` -> `b`, `b` -> `a`) work.
#[test]
fn root_rotation_keeps_cross_node_traffic_working() {
    require_root();
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::mesh("a2", 0, "client-a2"))
        .pod(PodDef::mesh("a3", 0, "client-a3"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .start()
        .expect("starting two nodes");
    mesh.serve_http("b", APP_PORT, "b");
    mesh.serve_http("a", APP_PORT, "a");
    let b_url = url(mesh.pod("b").addr(APP_PORT), "/");
    let a_url = url(mesh.pod("a").addr(APP_PORT), "/");
    let get_b = |from: &str| {
        let body =
            try_get(&mesh.pod(from).pod, &b_url).unwrap_or_else(|e| panic!("{from} -> b: {e:#}"));
        assert!(body.contains("name=b"), "{body}");
    };
    get_b("a");
    let old = roots(&status(mesh.agent(0)));
    assert_eq!(old.len(), 1, "{old:?}");

    mesh.cp.meshctl_ok(&["ca", "rotate", "prepare"]).unwrap();
    let mut both: Vec<String> = mesh
        .cp
        .meshctl_ok(&["ca", "status", "-o", "json"])
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|s| {
            s["roots"].as_array().map(|r| {
                r.iter()
                    .map(|r| r["sha256"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
        })
        .unwrap_or_default();
    both.sort();
    assert_eq!(both.len(), 2, "meshctl ca status after prepare: {both:?}");
    wait_roots(&mesh, &both, "prepare");
    get_b("a");

    let ids = [
        (0, mesh.pod("a").spiffe_id()),
        (0, mesh.pod("a2").spiffe_id()),
        (0, mesh.pod("a3").spiffe_id()),
        (1, mesh.pod("b").spiffe_id()),
    ];
    let before: Vec<Value> = ids.iter().map(|(n, id)| serial(&mesh, *n, id)).collect();
    mesh.cp.meshctl_ok(&["ca", "rotate", "activate"]).unwrap();
    for ((node, id), old_serial) in ids.iter().zip(&before) {
        let renewed = mesh_tests::wait_until(Duration::from_secs(10), || {
            certificate(mesh.agent(*node), id).is_some_and(|c| c["serial"] != *old_serial)
        });
        assert!(
            renewed,
            "{id} on {} still has its certificate from before activate (serial {old_serial}): after finish the old root is gone and it would no longer be trusted",
            NODE_NAMES[*node]
        );
    }
    get_b("a");
    get_b("a2");

    mesh.cp.meshctl_ok(&["ca", "rotate", "finish"]).unwrap();
    let new: Vec<String> = both.iter().filter(|r| !old.contains(r)).cloned().collect();
    assert_eq!(new.len(), 1, "old {old:?}, during {both:?}");
    wait_roots(&mesh, &new, "finish");
    get_b("a3");
    get_b("a");
    let body = try_get(&mesh.pod("b").pod, &a_url).unwrap_or_else(|e| panic!("b -> a: {e:#}"));
    assert!(body.contains("name=a"), "{body}");
}
