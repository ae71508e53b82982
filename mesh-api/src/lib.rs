//! The mesh's resource model: typed `mesh/v1` resources, loading them from Kubernetes-style
//! YAML, validating them, and an indexed [`Snapshot`] the proxy queries per connection.
//!
//! ```
//! let resources = mesh_api::load_str("example.yaml", r#"
//! apiVersion: mesh/v1
//! kind: Service
//! metadata: {name: reviews}
//! spec:
//!   vips: ["10.96.0.20"]
//!   ports: [{port: 80, targetPort: 8080, protocol: http}]
//!   selector: {app: reviews}
//! "#).unwrap();
//! let snapshot = mesh_api::Snapshot::from_resources(resources).unwrap();
//! let svc = snapshot.service_by_vip("10.96.0.20".parse().unwrap()).unwrap();
//! assert_eq!(svc.port(80).unwrap().target(), 8080);
//! ```

mod error;
mod load;
mod meta;
mod resource;
mod service;
mod snapshot;
mod validate;
mod workload;

pub use error::{ConfigError, Issue};
pub use load::{load_file, load_str};
pub use meta::{Labels, ObjectKey, ObjectMeta, DEFAULT_NAMESPACE};
pub use resource::{Resource, API_VERSION};
pub use service::{LbPolicy, LoadBalancer, Protocol, Service, ServicePort, ServiceSpec};
pub use snapshot::Snapshot;
pub use workload::{Workload, WorkloadSpec, DEFAULT_SERVICE_ACCOUNT};

#[cfg(test)]
mod tests;
