//! What fuzzing does with one input: the property tests (src/tests/fuzz.rs) and the cargo-fuzz
//! targets (fuzz/ at the workspace root) share it. Built for tests and with the `fuzzing`
//! feature only.
//!
//! Every input must end in `Ok` or an error; whatever loads must survive a round trip and
//! answer every query of its snapshot.

use std::net::IpAddr;

use crate::{load_str, Peer, Resource, ResourceKey, Snapshot};

/// Load, and when that works, check the result serialises back to the same resources (YAML
/// and JSON), then build a snapshot and query everything it indexes.
pub fn exercise(text: &str) {
    let Ok(resources) = load_str("fuzz.yaml", text) else {
        return;
    };
    for r in &resources {
        let yaml = serde_yaml_ng::to_string(r).unwrap();
        assert_eq!(
            &serde_yaml_ng::from_str::<Resource>(&yaml).unwrap(),
            r,
            "{yaml}"
        );
        let json = r.to_json();
        assert_eq!(&Resource::from_json(json.as_bytes()).unwrap(), r, "{json}");
        assert_eq!(
            ResourceKey::from_storage_key(&r.storage_key()),
            Some(r.resource_key())
        );
    }
    if let Ok(snap) = Snapshot::from_resources(resources) {
        query(&snap);
    }
}

pub fn query(snap: &Snapshot) {
    let _ = snap.capture_prefixes();
    let _ = snap.mesh_config();
    for s in snap.services() {
        let _ = snap.endpoints(s);
        if let Some(route) = snap.route_for(s) {
            let _ = route.needs_http();
            let _ = route.tcp_rule();
            let _ = route.http_rule("/api/v2", |h| (h == "x-canary").then_some("true"));
        }
    }
    let ip: IpAddr = "10.244.1.4".parse().unwrap();
    let peers = [
        Peer {
            principal: None,
            ip,
        },
        Peer {
            principal: Some("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"),
            ip,
        },
    ];
    for w in snap.workloads() {
        let _ = snap.policies_for(w);
        for port in [0, 9080, 9091] {
            let _ = snap.mtls_mode_for(w, port);
            for peer in &peers {
                let _ = snap.authorize(w, peer, port);
            }
        }
    }
}
