//! The body of `POST /v1/pods` on the agent's admin socket (what `mesh-agent enroll` and a CNI
//! plugin send): parsed as the admin server does, then checked against the declared workloads
//! as enrollment does before it touches any namespace.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mesh_agent::pods::EnrollRequest;
use mesh_api::Snapshot;

/// Two workloads, one on this node: so requests can match, mismatch, or name no workload.
const DECLARED: &str = r#"
apiVersion: mesh/v1
kind: Workload
metadata: {name: web-1, namespace: shop}
spec: {uid: u1, ips: ["10.0.0.1", "fd00::1"], node: n1, serviceAccount: web}
---
apiVersion: mesh/v1
kind: Workload
metadata: {name: db-1, namespace: shop}
spec: {uid: u2, ips: ["10.0.0.2"], node: n2}
"#;

fn declared() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let resources = mesh_api::load_str("declared.yaml", DECLARED).expect("the fixture loads");
        Snapshot::from_resources(resources).expect("the fixture is consistent")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut request) = serde_json::from_slice::<EnrollRequest>(data) else {
        return;
    };
    let _ = request.pod_name();
    let _ = request.check_declared(declared(), "n1");
    // What the CLI sends is what the server reads.
    let json = serde_json::to_vec(&request).expect("a request serialises");
    assert_eq!(
        serde_json::from_slice::<EnrollRequest>(&json).ok(),
        Some(request)
    );
});
