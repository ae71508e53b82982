//! `kind: Service`: a set of virtual IPs and ports that the proxy load-balances over the
//! workloads its selector picks.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::balancing::{
    check_connection_pool, check_load_balancer, check_outlier_detection, ConnectionPool,
    LoadBalancer, OutlierDetection,
};
use crate::meta::{Labels, ObjectMeta};
use crate::resource::Kind;
use crate::validate::{
    check_http_path, check_ip, check_labels, check_meta, check_name, is_dns1123_label,
    selector_matches, Checker,
};
use crate::workload::Workload;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Addresses clients dial; each one is captured in the kernel and resolved by the proxy.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Workloads in the same namespace whose `spec.labels` contain all of these pairs.
    pub selector: Labels,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Passive ejection of failing endpoints (not enforced yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Per-client-node limits (not enforced yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// How agents probe this service's endpoints. Omitted: a TCP connect to the target port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Named groups of this service's endpoints, picked by extra labels, that Route backends
    /// can send traffic to (`subset: v2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
}

/// `spec.subsets[]` of a Service: the endpoints that also carry `labels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// A DNS-1123 label, unique within the service.
    pub name: String,
    /// Not empty: a subset of every endpoint is the service itself.
    pub labels: Labels,
}

impl Subset {
    /// Whether `workload` carries every label of this subset. Only the subset's labels are
    /// checked: ask this of the service's endpoints (e.g. `Snapshot::endpoints`), or use
    /// [`crate::Snapshot::subset_endpoints`].
    pub fn selects(&self, workload: &Workload) -> bool {
        !self.labels.is_empty() && selector_matches(&self.labels, &workload.spec.labels)
    }
}

/// `spec.healthCheck` of a Service. Interval, timeout and thresholds are mesh-wide, in
/// `MeshConfig` `spec.healthCheck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// Probe with `GET <httpPath>` (HTTP/1.1) on each service port's target port; any 2xx
    /// status is healthy. Must start with '/'.
    pub http_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// Kept optional (rather than filled in) so a loaded file serialises back as written;
    /// use [`ServicePort::target`] for the effective value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

impl ServicePort {
    /// The port on the workload that traffic for this service port goes to.
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// How the proxy treats the bytes: `tcp` is opaque L4; `http`, `http2` and `grpc` are
/// handled per request; `auto` looks at the client's first bytes (bounded wait) and handles
/// HTTP/1 or an HTTP/2 preface per request, anything else as `tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
    Http2,
    Grpc,
    Auto,
}

impl Protocol {
    /// Whether the port is definitely HTTP: `http`, `http2` or `grpc`.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Whether traffic on the port may be HTTP, so HTTP route matches can apply to it: the
    /// HTTP protocols and `auto`.
    pub fn may_be_http(self) -> bool {
        self.is_http() || self == Protocol::Auto
    }
}

impl Service {
    /// The subset named `name`, if the service has one.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.spec.subsets.iter().find(|s| s.name == name)
    }

    /// The service port a captured connection's original destination port maps to.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.spec.ports.iter().find(|p| p.port == port)
    }

    /// Whether `workload` is an endpoint of this service. An empty selector selects nothing:
    /// validation rejects it, and selecting the whole namespace by accident is worse.
    pub fn selects(&self, workload: &Workload) -> bool {
        !self.spec.selector.is_empty()
            && workload.metadata.namespace == self.metadata.namespace
            && selector_matches(&self.spec.selector, &workload.spec.labels)
    }
}

impl Kind for Service {
    const KIND: &'static str = "Service";

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, c: &mut Checker<'_>) {
        check_meta(c, &self.metadata);
        let spec = &self.spec;

        if spec.vips.is_empty() {
            c.fail("spec.vips", "at least one VIP is required");
        }
        let mut seen_vips: HashMap<IpAddr, usize> = HashMap::new();
        for (i, vip) in spec.vips.iter().enumerate() {
            let field = format!("spec.vips[{i}]");
            check_ip(c, &field, vip);
            if let Some(j) = seen_vips.get(vip) {
                c.fail(&field, format!("duplicate VIP {vip} (also spec.vips[{j}])"));
            } else {
                seen_vips.insert(*vip, i);
            }
        }

        if spec.ports.is_empty() {
            c.fail("spec.ports", "at least one port is required");
        }
        let mut seen_ports: HashMap<u16, usize> = HashMap::new();
        let mut seen_names: HashMap<&str, usize> = HashMap::new();
        for (i, p) in spec.ports.iter().enumerate() {
            if p.port == 0 {
                c.fail(
                    format!("spec.ports[{i}].port"),
                    "must be between 1 and 65535, got 0",
                );
            } else if let Some(j) = seen_ports.get(&p.port) {
                c.fail(
                    format!("spec.ports[{i}].port"),
                    format!("duplicate port {} (also spec.ports[{j}])", p.port),
                );
            } else {
                seen_ports.insert(p.port, i);
            }
            if p.target_port == Some(0) {
                c.fail(
                    format!("spec.ports[{i}].targetPort"),
                    "must be between 1 and 65535, got 0",
                );
            }
            if let Some(name) = &p.name {
                let field = format!("spec.ports[{i}].name");
                if !is_dns1123_label(name) {
                    c.fail(
                        &field,
                        format!("{name:?} is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)"),
                    );
                } else if let Some(j) = seen_names.get(name.as_str()) {
                    c.fail(
                        &field,
                        format!("duplicate port name {name:?} (also spec.ports[{j}])"),
                    );
                } else {
                    seen_names.insert(name, i);
                }
            }
        }

        if spec.selector.is_empty() {
            c.fail(
                "spec.selector",
                "must not be empty (it picks the service's workloads)",
            );
        }
        check_labels(c, "spec.selector", &spec.selector);

        if let Some(hc) = &spec.health_check {
            check_http_path(c, "spec.healthCheck.httpPath", &hc.http_path);
        }
        check_subsets(c, &spec.subsets);
        check_load_balancer(c, &spec.load_balancer);
        if let Some(o) = &spec.outlier_detection {
            check_outlier_detection(c, o);
        }
        if let Some(p) = &spec.connection_pool {
            check_connection_pool(c, p);
        }
    }
}

fn check_subsets(c: &mut Checker<'_>, subsets: &[Subset]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, subset) in subsets.iter().enumerate() {
        let field = format!("spec.subsets[{i}]");
        check_name(c, &format!("{field}.name"), &subset.name);
        if let Some(j) = seen.insert(&subset.name, i) {
            c.fail(
                format!("{field}.name"),
                format!(
                    "duplicate subset name {:?} (also spec.subsets[{j}])",
                    subset.name
                ),
            );
        }
        let labels = format!("{field}.labels");
        if subset.labels.is_empty() {
            c.fail(
                &labels,
                "must not be empty (they pick the subset's endpoints among the service's)",
            );
        }
        check_labels(c, &labels, &subset.labels);
    }
}
