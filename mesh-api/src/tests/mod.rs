//! Unit tests for the crate; shared builders live here.

mod fuzz;
mod load;
mod snapshot;
mod validate;

use crate::{ConfigError, ObjectMeta, Resource, Service, ServicePort, ServiceSpec};
use crate::{Workload, WorkloadSpec};

/// The realistic fixture, as text (for mangling) and as a path (for `load_file`).
pub(crate) const FIXTURE: &str = include_str!("testdata/two-services.yaml");

pub(crate) fn fixture_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tests/testdata/two-services.yaml")
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
