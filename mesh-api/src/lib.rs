//! The mesh's resource model: typed `mesh/v1` resources, loading them from Kubernetes-style
//! YAML (or JSON), validating them, and an indexed [`Snapshot`] the proxy queries per
//! connection.
//!
//! Kinds: [`Service`], [`Workload`], [`Route`], [`AuthorizationPolicy`],
//! [`PeerAuthentication`], [`RequestAuthentication`] (all namespaced) and [`MeshConfig`]
//! (cluster-scoped singleton).
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

mod authz;
mod balancing;
mod cidr;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod jwt;
mod key;
pub mod limits;
mod load;
mod mesh_config;
mod meta;
mod observability;
mod peer_auth;
mod percent;
mod request_auth;
mod resource;
mod route;
mod service;
mod snapshot;
pub mod table;
mod validate;
mod workload;
mod yaml_events;

pub use authz::{
    normalize_path, AuthorizationPolicy, AuthorizationPolicySpec, AuthzAction, AuthzRule,
    Condition, ConditionKey, HttpRequest, Operation, Peer, Source,
};
pub use balancing::{
    ConnectionPool, HashKey, HashOn, LbPolicy, LoadBalancer, Locality, OutlierDetection,
    DEFAULT_WEIGHT, MAX_ENDPOINT_WEIGHT,
};
pub use cidr::{Cidr, CidrError};
pub use error::{ConfigError, Issue};
pub use key::{ResourceKey, STORAGE_PREFIX};
pub use load::{load_file, load_reader, load_str};
pub use mesh_config::{
    DefaultPolicy, HealthCheckSettings, MeshConfig, MeshConfigSpec, DEFAULT_CERT_TTL_SECONDS,
    DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, MAX_CERT_TTL_SECONDS, MESH_CONFIG_NAME,
    MIN_CERT_TTL_SECONDS,
};
pub use meta::{Labels, ObjectKey, ObjectMeta, DEFAULT_NAMESPACE};
pub use observability::{AccessLog, AccessLogFormat, Observability, Tracing, ACCESS_LOG_STDOUT};
pub use peer_auth::{MtlsMode, PeerAuthentication, PeerAuthenticationSpec};
pub use percent::Percent;
pub use request_auth::{
    check_jwks, ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication, RequestAuthenticationSpec,
};
pub use resource::{Resource, API_VERSION};
pub use route::{
    parse_query, Backend, CompiledRoute, Fault, FaultAbort, FaultDelay, HeaderOps, HeaderRules,
    PathMatch, RequestAttributes, Retries, RetryOn, Route, RouteMatch, RouteRule, RouteSpec,
    StringMatch, MAX_FAULT_DELAY_MS, MAX_RETRY_ATTEMPTS, MAX_TIMEOUT_MS, MAX_WEIGHT,
};
pub use service::{HealthCheck, Protocol, Service, ServicePort, ServiceSpec, Subset};
pub use snapshot::{AuthzDecision, AuthzReason, Change, ConfigIndex, Snapshot, Verdict};
pub use workload::{Workload, WorkloadSpec, DEFAULT_SERVICE_ACCOUNT};

#[cfg(test)]
mod tests;
