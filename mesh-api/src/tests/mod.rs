//! Unit tests for the crate; shared builders live here.

mod balancing;
mod fuzz;
mod json;
pub(crate) mod jwt_keys;
mod limits;
mod load;
mod policy;
mod request_security;
mod route_checks;
mod route_matching;
mod routes;
mod snapshot;
mod subsets;
mod validate;

use crate::{ConfigError, ObjectMeta, Resource, Service, ServicePort, ServiceSpec};
use crate::{Workload, WorkloadSpec};

/// The realistic fixture, as text (for mangling) and as a path (for `load_file`).
pub(crate) const FIXTURE: &str = include_str!("testdata/two-services.yaml");

pub(crate) fn fixture_path() -> std::path::PathBuf {
    testdata("two-services.yaml")
}

/// The realistic fixture with every kind.
pub(crate) const MESH_FIXTURE: &str = include_str!("testdata/mesh.yaml");

pub(crate) fn mesh_fixture_path() -> std::path::PathBuf {
    testdata("mesh.yaml")
}

fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/tests/testdata")
        .join(name)
}

/// One YAML document of `kind` with the given metadata and (indented) spec.
pub(crate) fn doc(kind: &str, metadata: &str, spec: &str) -> String {
    format!("apiVersion: mesh/v1\nkind: {kind}\nmetadata: {metadata}\nspec:\n{spec}")
}

/// Loads `text` as `config.yaml`, expecting failure; the issue lines.
pub(crate) fn load_err(text: &str) -> Vec<String> {
    lines(crate::load_str("config.yaml", text).expect_err("should fail"))
}

/// The issue lines of building a snapshot from YAML that loads.
pub(crate) fn snapshot_err(text: &str) -> Vec<String> {
    let resources = crate::load_str("config.yaml", text).unwrap();
    lines(crate::Snapshot::from_resources(resources).expect_err("should fail"))
}

pub(crate) fn snapshot(text: &str) -> crate::Snapshot {
    crate::Snapshot::from_resources(crate::load_str("config.yaml", text).unwrap()).unwrap()
}

pub(crate) fn service(name: &str, vip: &str, app: &str) -> Service {
    Service {
        metadata: ObjectMeta::new("default", name),
        spec: ServiceSpec {
            vips: vec![vip.parse().unwrap()],
            ports: vec![ServicePort {
                name: None,
                port: 80,
                target_port: Some(8080),
                protocol: Default::default(),
            }],
            selector: [("app".to_owned(), app.to_owned())].into(),
            load_balancer: Default::default(),
            outlier_detection: None,
            connection_pool: None,
            health_check: None,
            subsets: Vec::new(),
        },
    }
}

pub(crate) fn workload(name: &str, uid: &str, ip: &str, app: &str) -> Workload {
    Workload {
        metadata: ObjectMeta::new("default", name),
        spec: WorkloadSpec {
            uid: uid.to_owned(),
            ips: vec![ip.parse().unwrap()],
            node: "node-1".to_owned(),
            service_account: "default".to_owned(),
            labels: [("app".to_owned(), app.to_owned())].into(),
            weight: None,
            locality: None,
        },
    }
}

/// All issue lines of an error, for exact-text assertions.
pub(crate) fn lines(err: ConfigError) -> Vec<String> {
    err.to_string().lines().map(str::to_owned).collect()
}

/// The issue lines of validating one resource.
pub(crate) fn problems(r: impl Into<Resource>) -> Vec<String> {
    match r.into().validate() {
        Ok(()) => Vec::new(),
        Err(e) => lines(e),
    }
}
