//! Apply-time warnings for AuthorizationPolicy rules that need the HTTP request (methods,
//! paths, hosts, request principals, `request.*` keys) on ports the agents never parse as
//! HTTP. The agents judge such a rule on the connection alone: it never matches in an ALLOW
//! or AUDIT policy and always matches in a DENY policy. That is the safe reading, so the
//! policy is still applied; the warning tells the operator it will not do what it says.
//!
//! A workload port is parsed as HTTP when some Service selecting the workload has a port
//! targeting it with protocol `http`, `http2`, `grpc` or `auto` (what the agent's registry
//! checks), so the check needs the Services and Workloads the config will have after the
//! change: the cached ones, overlaid with those in the change itself.

use std::collections::{BTreeSet, HashMap};

use mesh_api::{AuthorizationPolicy, AuthzAction, Resource, Service, Workload};

use super::cache::ConfigCache;
use crate::keys;

/// A rule that needs HTTP and can only be judged on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleOnTcp {
    /// Index into `spec.rules`.
    pub rule: usize,
    /// The port of the rule's `to.ports` that is TCP; `None` when the rule names no ports
    /// and no port of the selected workloads is HTTP.
    pub port: Option<u16>,
}

/// The rules of `policy` that need HTTP but apply only to ports that are not HTTP for any of
/// the workloads it selects (among `workloads`; `services` are the Services that may select
/// them). A policy selecting no workload gets none: there is nothing to enforce it on yet.
pub fn rules_on_tcp_ports(
    policy: &AuthorizationPolicy,
    workloads: &[&Workload],
    services: &[&Service],
    root_namespace: &str,
) -> Vec<RuleOnTcp> {
    let selected: Vec<&Workload> = workloads
        .iter()
        .copied()
        .filter(|w| policy.applies_to(w, root_namespace))
        .collect();
    if selected.is_empty() {
        return Vec::new();
    }
    let http_ports: BTreeSet<u16> = services
        .iter()
        .filter(|s| selected.iter().any(|w| s.selects(w)))
        .flat_map(|s| &s.spec.ports)
        .filter(|p| p.protocol.may_be_http())
        .map(|p| p.target())
        .collect();
    let mut found = Vec::new();
    for (rule, r) in policy.spec.rules.iter().enumerate() {
        if !r.needs_http() {
            continue;
        }
        let ports = r.to.as_ref().map(|t| t.ports.as_slice()).unwrap_or(&[]);
        if ports.is_empty() {
            if http_ports.is_empty() {
                found.push(RuleOnTcp { rule, port: None });
            }
            continue;
        }
        found.extend(
            ports
                .iter()
                .filter(|p| !http_ports.contains(p))
                .map(|&p| RuleOnTcp {
                    rule,
                    port: Some(p),
                }),
        );
    }
    found
}

/// The warning for one finding, naming the policy, the rule and the port.
pub fn describe(policy: &AuthorizationPolicy, finding: RuleOnTcp) -> String {
    let (where_, there) = match finding.port {
        Some(port) => (
            format!(
                "port {port} is not an HTTP port (http, http2, grpc or auto) of any Service \
                 selecting its workloads"
            ),
            format!("on port {port}"),
        ),
        None => (
            "its workloads have no HTTP port (http, http2, grpc or auto) in any Service".to_owned(),
            "on every port".to_owned(),
        ),
    };
    let effect = match policy.spec.action {
        AuthzAction::Deny => "matches every connection its other fields match (it denies more)",
        AuthzAction::Allow => "never matches (it allows nothing)",
        AuthzAction::Audit => "never matches (nothing is audited)",
    };
    format!(
        "AuthorizationPolicy {} spec.rules[{}] needs the HTTP request, but {where_}: as {} \
         it {effect} {there}",
        policy.metadata.key(),
        finding.rule,
        policy.spec.action.as_str(),
    )
}

/// Warnings for each of `changes` (store key, new resource or `None` for a delete), in the
/// same order, judged on the config as it will be after them. Empty for every change that
/// is not such an AuthorizationPolicy.
pub fn for_changes(
    cache: &ConfigCache,
    changes: &[(String, Option<Resource>)],
) -> Vec<Vec<String>> {
    let mut warnings = vec![Vec::new(); changes.len()];
    let policies: Vec<(usize, &AuthorizationPolicy)> = changes
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| match r {
            Some(Resource::AuthorizationPolicy(p))
                if p.spec.rules.iter().any(|r| r.needs_http()) =>
            {
                Some((i, p))
            }
            _ => None,
        })
        .collect();
    if policies.is_empty() {
        return warnings;
    }
    let view = ConfigAfter::new(cache, changes);
    for (i, policy) in policies {
        // Only workloads (and the Services selecting them) in the policy's namespace can be
        // selected, or in every namespace for a policy in the root namespace.
        let namespace = &policy.metadata.namespace;
        let scope = (*namespace != view.root_namespace).then_some(namespace.as_str());
        let workloads = view.of_kind("Workload", scope);
        let services = view.of_kind("Service", scope);
        let workloads: Vec<&Workload> = workloads
            .iter()
            .filter_map(|r| match &**r {
                Resource::Workload(w) => Some(w),
                _ => None,
            })
            .collect();
        let services: Vec<&Service> = services
            .iter()
            .filter_map(|r| match &**r {
                Resource::Service(s) => Some(s),
                _ => None,
            })
            .collect();
        warnings[i] = rules_on_tcp_ports(policy, &workloads, &services, &view.root_namespace)
            .into_iter()
            .map(|finding| describe(policy, finding))
            .collect();
    }
    warnings
}

/// The cached config with `changes` laid over it, read one kind (and namespace) at a time.
struct ConfigAfter<'a> {
    cache: &'a ConfigCache,
    /// Store key -> the resource it will hold (`None`: deleted), the last of a key given
    /// twice.
    changed: HashMap<&'a str, Option<&'a Resource>>,
    root_namespace: String,
}

impl<'a> ConfigAfter<'a> {
    fn new(cache: &'a ConfigCache, changes: &'a [(String, Option<Resource>)]) -> Self {
        let changed: HashMap<&str, Option<&Resource>> = changes
            .iter()
            .map(|(key, r)| (key.as_str(), r.as_ref()))
            .collect();
        let new_config = changed.values().flatten().find_map(|r| match r {
            Resource::MeshConfig(c) => Some(c.spec.root_namespace.clone()),
            _ => None,
        });
        let root_namespace =
            new_config.unwrap_or_else(|| super::mesh_config_spec(cache).root_namespace);
        ConfigAfter {
            cache,
            changed,
            root_namespace,
        }
    }

    /// Resources of `kind` (in `namespace`, or all), as they will be.
    fn of_kind(&self, kind: &str, namespace: Option<&str>) -> Vec<std::sync::Arc<Resource>> {
        let prefix = match namespace {
            Some(ns) => format!("{}{kind}/{ns}/", keys::RESOURCES),
            None => format!("{}{kind}/", keys::RESOURCES),
        };
        let mut found: Vec<std::sync::Arc<Resource>> = self
            .cache
            .resources_under(&prefix)
            .into_iter()
            .filter(|c| {
                let meta = c.resource.metadata();
                let key = keys::resource(kind, &meta.namespace, &meta.name);
                !self.changed.contains_key(key.as_str())
            })
            .map(|c| c.resource)
            .collect();
        found.extend(
            self.changed
                .iter()
                .filter(|(key, _)| key.starts_with(&prefix))
                .filter_map(|(_, r)| *r)
                .map(|r| std::sync::Arc::new(r.clone())),
        );
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Vec<Resource> {
        mesh_api::load_str("test.yaml", yaml).unwrap()
    }

    /// Service `web` (port 80 -> 8080 as `protocol`, and 9000 TCP) selecting `app: web`,
    /// and two workloads `web-1` (app web) and `db` (app db), in namespace `shop`.
    fn config(protocol: &str) -> Vec<Resource> {
        load(&format!(
            "apiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
             spec: {{vips: [10.96.0.1], selector: {{app: web}}, ports: [\
             {{port: 80, targetPort: 8080, protocol: {protocol}}}, {{port: 9000}}]}}\n\
             ---\napiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: web-1, namespace: shop}}\n\
             spec: {{uid: w1, ips: [10.0.0.1], node: n1, labels: {{app: web}}}}\n\
             ---\napiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: db, namespace: shop}}\n\
             spec: {{uid: d1, ips: [10.0.0.2], node: n1, labels: {{app: db}}}}\n"
        ))
    }

    fn policy(namespace: &str, app: &str, action: &str, rules: &str) -> AuthorizationPolicy {
        match load(&format!(
            "apiVersion: mesh/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: p, namespace: {namespace}}}\n\
             spec: {{selector: {{app: {app}}}, action: {action}, rules: {rules}}}\n"
        ))
        .remove(0)
        {
            Resource::AuthorizationPolicy(p) => p,
            other => panic!("not a policy: {other:?}"),
        }
    }

    fn findings(config: &[Resource], policy: &AuthorizationPolicy) -> Vec<RuleOnTcp> {
        let workloads: Vec<&Workload> = config
            .iter()
            .filter_map(|r| match r {
                Resource::Workload(w) => Some(w),
                _ => None,
            })
            .collect();
        let services: Vec<&Service> = config
            .iter()
            .filter_map(|r| match r {
                Resource::Service(s) => Some(s),
                _ => None,
            })
            .collect();
        rules_on_tcp_ports(policy, &workloads, &services, "mesh-system")
    }

    fn on(rule: usize, port: Option<u16>) -> RuleOnTcp {
        RuleOnTcp { rule, port }
    }

    #[test]
    fn http_rules_on_tcp_ports_are_found_by_rule_and_port() {
        let config = config("http");
        // Rule 0 on the HTTP target port and the TCP one, rule 1 L4 only (never warned
        // about), rule 2 on any port (the workload has an HTTP port: fine).
        let p = policy(
            "shop",
            "web",
            "ALLOW",
            "[{to: {ports: [8080, 9000], methods: [GET]}}, {to: {ports: [9000]}}, \
             {to: {paths: [/api/*]}}]",
        );
        assert_eq!(findings(&config, &p), [on(0, Some(9000))]);
        // The service port (80) is not the workload port: only targetPort counts.
        let p = policy(
            "shop",
            "web",
            "DENY",
            "[{to: {ports: [80], methods: [GET]}}]",
        );
        assert_eq!(findings(&config, &p), [on(0, Some(80))]);
        // A workload no Service selects has no HTTP port at all.
        let p = policy(
            "shop",
            "db",
            "ALLOW",
            "[{from: {requestPrincipals: ['*']}}, \
             {when: [{key: source.ip, values: [10.0.0.0/8]}]}, \
             {when: [{key: 'request.headers[x-a]', values: [b]}]}]",
        );
        assert_eq!(findings(&config, &p), [on(0, None), on(2, None)]);
    }

    #[test]
    fn auto_and_every_http_protocol_count_as_http() {
        for protocol in ["http", "http2", "grpc", "auto"] {
            let p = policy(
                "shop",
                "web",
                "ALLOW",
                "[{to: {ports: [8080], methods: [GET]}}]",
            );
            assert_eq!(findings(&config(protocol), &p), [], "{protocol}");
        }
        let p = policy(
            "shop",
            "web",
            "ALLOW",
            "[{to: {ports: [8080], methods: [GET]}}]",
        );
        assert_eq!(findings(&config("tcp"), &p), [on(0, Some(8080))]);
        let p = policy("shop", "web", "ALLOW", "[{to: {methods: [GET]}}]");
        assert_eq!(findings(&config("tcp"), &p), [on(0, None)]);
    }

    #[test]
    fn a_policy_selecting_no_workload_gets_no_warning() {
        let config = config("tcp");
        let elsewhere = policy("other", "web", "ALLOW", "[{to: {methods: [GET]}}]");
        assert_eq!(findings(&config, &elsewhere), []);
        let nobody = policy("shop", "nobody", "ALLOW", "[{to: {methods: [GET]}}]");
        assert_eq!(findings(&config, &nobody), []);
        // The root namespace's policy selects workloads of every namespace.
        let root = policy("mesh-system", "web", "DENY", "[{to: {methods: [GET]}}]");
        assert_eq!(findings(&config, &root), [on(0, None)]);
    }

    #[test]
    fn the_warning_names_policy_rule_port_and_effect() {
        let allow = policy("shop", "web", "ALLOW", "[{to: {methods: [GET]}}]");
        let text = describe(&allow, on(0, Some(9000)));
        assert!(
            text.starts_with("AuthorizationPolicy shop/p spec.rules[0] needs the HTTP request")
                && text.contains("port 9000 is not an HTTP port")
                && text.ends_with("as ALLOW it never matches (it allows nothing) on port 9000"),
            "{text}"
        );
        let deny = policy("shop", "web", "DENY", "[{to: {methods: [GET]}}]");
        let text = describe(&deny, on(0, None));
        assert!(
            text.contains("its workloads have no HTTP port")
                && text.ends_with(
                    "as DENY it matches every connection its other fields match (it denies \
                     more) on every port"
                ),
            "{text}"
        );
    }
}
