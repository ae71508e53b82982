//! `mesh_bpf_map_entries` / `mesh_bpf_map_capacity` in `/metrics`, and `captured` in status.

use std::collections::BTreeMap;

use mesh_tests::mesh::{service_yaml, workload_yaml, MeshNode};
use mesh_tests::{http_get, require_root, Bridge, Pod};

use crate::BRIDGES;

/// `{map: (entries, capacity)}` from the agent's `/metrics`.
fn map_fill(node: &MeshNode) -> BTreeMap<String, (u64, u64)> {
    let (code, text) = http_get(node.admin(), "/metrics").unwrap();
    assert_eq!(code, 200);
    let mut fill: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in text.lines() {
        for (metric, capacity) in [
            ("mesh_bpf_map_entries", false),
            ("mesh_bpf_map_capacity", true),
        ] {
            let Some(rest) = line.strip_prefix(&format!("{metric}{{map=\"")) else {
                continue;
            };
            let (map, value) = rest.split_once("\"} ").unwrap();
            let value: u64 = value.parse().unwrap();
            let entry = fill.entry(map.to_string()).or_default();
            if capacity {
                entry.1 = value;
            } else {
                entry.0 = value;
            }
        }
    }
    fill
}

fn pod_status(node: &MeshNode, uid: &str) -> serde_json::Value {
    let status = node.status_json().unwrap();
    status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["uid"] == uid)
        .cloned()
        .unwrap_or_else(|| panic!("{uid} not in status: {status}"))
}

/// The gauges count what config and enrollment put in the maps, against their sizes; an
/// enrolled pod shows as captured until its sk_lookup link is taken away.
#[test]
fn map_gauges_follow_enrollment_and_status_says_whether_a_pod_is_captured() {
    require_root();
    let bridge = Bridge::first_free(&BRIDGES).unwrap();
    let web = Pod::new(&bridge, "web", 3).unwrap();
    let config = service_yaml("web", &["10.96.0.20".parse().unwrap()], 80, 8080, "web")
        + &workload_yaml("web", "web-uid", &[web.ip()], &[("app", "web")]);
    let node = MeshNode::start(&config).unwrap();

    let before = map_fill(&node);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        [
            "MESH_CAPTURE_V4",
            "MESH_CAPTURE_V6",
            "MESH_POD_BY_IP",
            "MESH_POD_NETNS"
        ]
    );
    assert_eq!(before["MESH_POD_NETNS"], (0, 1024), "{before:?}");
    assert_eq!(before["MESH_POD_BY_IP"], (0, 4096), "{before:?}");
    // The VIP and the Workload's address.
    assert_eq!(before["MESH_CAPTURE_V4"].0, 2, "{before:?}");
    assert!(before["MESH_CAPTURE_V4"].1 >= 2, "{before:?}");

    node.enroll(&web, "web-uid", "web").unwrap();
    let enrolled = map_fill(&node);
    assert_eq!(enrolled["MESH_POD_NETNS"], (1, 1024), "{enrolled:?}");
    // Its declared address, and any other it has (IPv6 too).
    assert!(enrolled["MESH_POD_BY_IP"].0 >= 1, "{enrolled:?}");
    assert_eq!(pod_status(&node, "web-uid")["captured"], true);

    // Taking the link's pin away detaches sk_lookup from the pod's namespace: status says so.
    let pin = node.bpffs().join("pods/web-uid").join("mesh_sk_lookup");
    std::fs::remove_file(&pin).unwrap();
    assert_eq!(pod_status(&node, "web-uid")["captured"], false);
    let table = node.cli_ok(&["status"]).unwrap();
    let row = table.lines().find(|l| l.contains("default/web")).unwrap();
    assert!(row.contains(" NO "), "{row}");

    node.unenroll("web-uid").unwrap();
    let after = map_fill(&node);
    assert_eq!(after["MESH_POD_NETNS"].0, 0, "{after:?}");
    assert_eq!(after["MESH_POD_BY_IP"].0, 0, "{after:?}");
}
