//! Routes in a snapshot: checked against the services they name, indexed by host service.

use std::collections::hash_map::Entry;

use super::{find_sorted, issue, lookup, Snapshot};
use crate::error::Issue;
use crate::route::Route;
use crate::service::Service;

impl Snapshot {
    /// Checks every service (and port, and subset) a route names exists in its namespace,
    /// that each host service has at most one route, and that HTTP matches sit on services
    /// with HTTP (or `auto`) ports.
    pub(super) fn index_routes(&mut self, issues: &mut Vec<Issue>) {
        let mut hosts = std::mem::take(&mut self.route_hosts);
        for (i, route) in self.routes.iter().enumerate() {
            let ns = route.metadata.namespace.as_str();
            let host_name = route.spec.service.as_str();
            let host = self.service(ns, host_name);
            check_route_host(route, host, issues);
            match hosts
                .entry(ns.to_owned())
                .or_default()
                .entry(host_name.to_owned())
            {
                Entry::Occupied(e) => issues.push(issue(
                    route,
                    "spec.service",
                    format!(
                        "Service {ns}/{host_name} already has Route {} (one Route per Service)",
                        self.routes[*e.get()].metadata.key()
                    ),
                )),
                Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
            check_route_backends(route, host, |ns, name| self.service(ns, name), issues);
        }
        self.route_hosts = hosts;
    }

    /// The route governing traffic to `service` (matched by namespace and name), if any.
    pub fn route_for(&self, service: &Service) -> Option<&Route> {
        let m = &service.metadata;
        lookup(&self.route_hosts, &m.namespace, &m.name).map(|i| &self.routes[i])
    }

    pub fn route(&self, namespace: &str, name: &str) -> Option<&Route> {
        find_sorted(&self.routes, namespace, name)
    }

    /// All routes in `(namespace, name)` order.
    pub fn routes(&self) -> impl ExactSizeIterator<Item = &Route> + DoubleEndedIterator {
        self.routes.iter()
    }
}

/// The route's host service exists in its namespace, with an HTTP port if a rule matches on
/// HTTP. `host` is that service as looked up.
pub(super) fn check_route_host(route: &Route, host: Option<&Service>, issues: &mut Vec<Issue>) {
    let ns = route.metadata.namespace.as_str();
    match host {
        None => issues.push(issue(
            route,
            "spec.service",
            format!("no Service {ns}/{}", route.spec.service),
        )),
        Some(host) => check_http_ports(route, host, issues),
    }
}

/// Every backend service a route names exists in its namespace (`service` looks one up by
/// namespace and name) and has the port traffic would reach it on, and the subset named.
pub(super) fn check_route_backends<'a>(
    route: &Route,
    host: Option<&Service>,
    service: impl Fn(&str, &str) -> Option<&'a Service>,
    issues: &mut Vec<Issue>,
) {
    let ns = route.metadata.namespace.as_str();
    let host_name = route.spec.service.as_str();
    for (r, rule) in route.spec.rules.iter().enumerate() {
        for (b, backend) in rule.backends.iter().enumerate() {
            let field = format!("spec.rules[{r}].backends[{b}]");
            let Some(target) = service(ns, &backend.service) else {
                issues.push(issue(
                    route,
                    &format!("{field}.service"),
                    format!("no Service {ns}/{}", backend.service),
                ));
                continue;
            };
            if let Some(subset) = &backend.subset {
                if target.subset(subset).is_none() {
                    issues.push(issue(
                        route,
                        &format!("{field}.subset"),
                        no_subset(target, subset),
                    ));
                }
            }
            let missing = match (backend.port, host) {
                (Some(port), _) => (target.port(port).is_none()).then_some(port),
                // The client's port is used: every host port this rule can see must
                // exist on the backend too.
                (None, Some(host)) => host
                    .spec
                    .ports
                    .iter()
                    .filter(|p| !rule.is_http() || p.protocol.may_be_http())
                    .map(|p| p.port)
                    .find(|&p| target.port(p).is_none()),
                (None, None) => None,
            };
            if let Some(port) = missing {
                let (at, why) = if backend.port.is_some() {
                    (format!("{field}.port"), String::new())
                } else {
                    (
                        format!("{field}.service"),
                        format!(", which Service {ns}/{host_name} has; set {field}.port"),
                    )
                };
                issues.push(issue(
                    route,
                    &at,
                    format!("Service {} has no port {port}{why}", target.metadata.key()),
                ));
            }
        }
    }
}

fn no_subset(service: &Service, subset: &str) -> String {
    let names: Vec<&str> = service
        .spec
        .subsets
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let has = if names.is_empty() {
        "it has none".to_owned()
    } else {
        format!("it has {}", names.join(", "))
    };
    format!(
        "Service {} has no subset {subset:?} ({has})",
        service.metadata.key()
    )
}

/// A rule with HTTP conditions can only ever match on an HTTP (or `auto`) port of its host
/// service.
fn check_http_ports(route: &Route, host: &Service, issues: &mut Vec<Issue>) {
    if host.spec.ports.iter().any(|p| p.protocol.may_be_http()) {
        return;
    }
    if let Some(r) = route.spec.rules.iter().position(|r| r.is_http()) {
        issues.push(issue(
            route,
            &format!("spec.rules[{r}].match"),
            format!(
                "HTTP match, but Service {} has no http, http2, grpc or auto port",
                host.metadata.key()
            ),
        ));
    }
}
