//! The incremental check against the full one: on random configs and random changes, a change
//! the index calls valid must pass `Snapshot::from_resources`, so the control plane, which
//! falls back to the full check otherwise, accepts and rejects exactly what the full check does.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{Change, ConfigIndex, Snapshot, Verdict};
use crate::meta::ObjectKey;
use crate::resource::Resource;

/// Small pools, so collisions (shared IPs, missing services, two routes per host) are common.
fn name(prefix: &'static str) -> impl Strategy<Value = String> {
    (0..3u8).prop_map(move |i| format!("{prefix}{i}"))
}

fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just("a".to_owned()), 1 => Just("b".to_owned())]
}

fn ips() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec((1..8u8).prop_map(|i| format!("10.0.0.{i}")), 0..3)
}

fn labels() -> impl Strategy<Value = Value> {
    prop_oneof![Just(json!({"app": "x"})), Just(json!({"app": "y"}))]
}

fn service() -> impl Strategy<Value = Value> {
    let port = (prop_oneof![Just(80u16), Just(81), Just(82)], any::<bool>()).prop_map(
        |(port, http)| json!({"name": format!("p{port}"), "port": port, "protocol": if http { "http" } else { "tcp" }}),
    );
    (
        name("s"),
        namespace(),
        ips(),
        proptest::collection::vec(port, 1..3),
        labels(),
        any::<bool>(),
    )
        .prop_map(|(name, ns, vips, ports, selector, subset)| {
            let mut spec = json!({"vips": vips, "ports": ports, "selector": selector});
            if subset {
                spec["subsets"] = json!([{"name": "v1", "labels": {"version": "v1"}}]);
            }
            json!({"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec})
        })
}

fn workload() -> impl Strategy<Value = Value> {
    (name("w"), namespace(), name("u"), ips(), labels()).prop_map(|(name, ns, uid, ips, labels)| {
        json!({"kind": "Workload", "metadata": {"name": name, "namespace": ns},
                   "spec": {"uid": uid, "ips": ips, "node": "n1", "labels": labels}})
    })
}

fn route() -> impl Strategy<Value = Value> {
    (name("r"), namespace(), name("s")).prop_flat_map(|(name, ns, host)| {
        // Often the host itself on the client's port, so many routes are valid.
        let other = (
            self::name("s"),
            prop::option::of(prop_oneof![Just(80u16), Just(81)]),
            any::<bool>(),
        )
            .prop_map(|(service, port, subset)| {
                let mut backend = json!({"service": service});
                if let Some(port) = port {
                    backend["port"] = json!(port);
                }
                if subset {
                    backend["subset"] = json!("v1");
                }
                backend
            });
        let backend = prop_oneof![Just(json!({"service": host.clone()})), other];
        let rule = (proptest::collection::vec(backend, 1..3), any::<bool>()).prop_map(
            |(backends, http)| {
                if http {
                    json!({"match": {"pathPrefix": "/x"}, "backends": backends})
                } else {
                    json!({"backends": backends})
                }
            },
        );
        proptest::collection::vec(rule, 1..3).prop_map(move |rules| {
            json!({"kind": "Route", "metadata": {"name": name, "namespace": ns},
                   "spec": {"service": host, "rules": rules}})
        })
    })
}

fn peer_authentication() -> impl Strategy<Value = Value> {
    (name("p"), namespace(), prop::option::of(labels())).prop_map(|(name, ns, selector)| {
        let mut spec = json!({"mode": "STRICT"});
        if let Some(selector) = selector {
            spec["selector"] = selector;
        }
        json!({"kind": "PeerAuthentication", "metadata": {"name": name, "namespace": ns}, "spec": spec})
    })
}

fn authorization_policy() -> impl Strategy<Value = Value> {
    (name("z"), namespace()).prop_map(|(name, ns)| {
        json!({"kind": "AuthorizationPolicy", "metadata": {"name": name, "namespace": ns},
               "spec": {"action": "ALLOW", "rules": [{"from": {"namespaces": ["a"]}}]}})
    })
}

fn resource() -> impl Strategy<Value = Resource> {
    prop_oneof![
        3 => service(),
        3 => workload(),
        2 => route(),
        2 => peer_authentication(),
        1 => authorization_policy(),
    ]
    // Resources that break their own rules never get as far as the config check.
    .prop_filter_map("breaks its own rules", |mut v| {
        v["apiVersion"] = json!("mesh/v1");
        Resource::from_json(v.to_string().as_bytes()).ok()
    })
}

#[derive(Debug, Clone)]
enum Step {
    Put(Box<Resource>),
    /// Deletes the n-th resource of the config (modulo its size).
    Delete(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => resource().prop_map(|r| Step::Put(Box::new(r))),
        1 => any::<usize>().prop_map(Step::Delete),
    ]
}

type Config = BTreeMap<(&'static str, ObjectKey), Resource>;

fn full_check(config: &Config) -> bool {
    Snapshot::from_resources(config.values().cloned()).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Replays what the control plane does: a change is accepted when the index proves it
    /// valid or else when the full check passes; accepted changes are applied. Every change
    /// the index calls valid must pass the full check.
    #[test]
    fn index_never_accepts_what_the_full_check_rejects(
        base in proptest::collection::vec(resource(), 0..14),
        steps in proptest::collection::vec(step(), 1..12),
    ) {
        let mut config: Config = base.into_iter().map(|r| ((r.kind(), r.key()), r)).collect();
        let mut index = ConfigIndex::default();
        for r in config.values() {
            index.put(Arc::new(r.clone()));
        }
        if full_check(&config) {
            index.mark_validated(index.generation());
        }
        for step in steps {
            let mut next = config.clone();
            let (verdict, id) = match &step {
                Step::Put(r) => {
                    next.insert((r.kind(), r.key()), (**r).clone());
                    (index.check(Change::Put(r)), (r.kind(), r.key()))
                }
                Step::Delete(n) => {
                    let Some(id) = config.keys().nth(n % config.len().max(1)).cloned() else {
                        continue;
                    };
                    next.remove(&id);
                    (index.check(Change::Delete(id.0, &id.1)), id)
                }
            };
            let full = full_check(&next);
            prop_assert!(verdict == Verdict::NeedsFullCheck || full,
                "index accepted {step:?}, the full check rejects it");
            if verdict == Verdict::Valid || full {
                match step {
                    Step::Put(r) => index.put(Arc::new(*r)),
                    Step::Delete(_) => index.delete(id.0, &id.1),
                }
                if verdict == Verdict::NeedsFullCheck {
                    index.mark_validated(index.generation());
                }
                prop_assert!(index.is_validated());
                config = next;
            }
        }
    }
}

fn parse(yaml: &str) -> Vec<Resource> {
    crate::load_str("test.yaml", yaml).expect("valid test config")
}

const BASE: &str = "
apiVersion: mesh/v1
kind: Service
metadata: {name: web, namespace: a}
spec: {vips: [10.96.0.1], ports: [{name: http, port: 80, protocol: http}], selector: {app: web}}
---
apiVersion: mesh/v1
kind: Service
metadata: {name: api, namespace: a}
spec: {vips: [10.96.0.2], ports: [{name: http, port: 80, protocol: http}], selector: {app: api}}
---
apiVersion: mesh/v1
kind: Route
metadata: {name: web, namespace: a}
spec: {service: web, rules: [{backends: [{service: web}]}]}
---
apiVersion: mesh/v1
kind: Workload
metadata: {name: web-1, namespace: a}
spec: {uid: u1, ips: [10.0.0.1], node: n1, labels: {app: web}}
";

fn validated_index(resources: &[Resource]) -> ConfigIndex {
    let mut index = ConfigIndex::default();
    for r in resources {
        index.put(Arc::new(r.clone()));
    }
    assert!(Snapshot::from_resources(resources.iter().cloned()).is_ok());
    index.mark_validated(index.generation());
    index
}

fn workload_named(name: &str, uid: &str, ip: &str) -> Resource {
    parse(&format!(
        "apiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: {name}, namespace: a}}\n\
         spec: {{uid: {uid}, ips: [{ip}], node: n1, labels: {{app: web}}}}\n"
    ))
    .remove(0)
}

/// The common changes take the fast path; the ones that need another resource's view go to
/// the full check.
#[test]
fn common_changes_are_proved_valid_and_conflicts_are_not() {
    let base = parse(BASE);
    let index = validated_index(&base);
    let fresh = workload_named("web-2", "u2", "10.0.0.2");
    assert_eq!(index.check(Change::Put(&fresh)), Verdict::Valid);
    // Re-applying an existing workload does not conflict with itself.
    assert_eq!(index.check(Change::Put(&base[3])), Verdict::Valid);
    let same_ip = workload_named("web-2", "u2", "10.0.0.1");
    assert_eq!(index.check(Change::Put(&same_ip)), Verdict::NeedsFullCheck);
    let same_uid = workload_named("web-2", "u1", "10.0.0.2");
    assert_eq!(index.check(Change::Put(&same_uid)), Verdict::NeedsFullCheck);
    let on_a_vip = workload_named("web-2", "u2", "10.96.0.2");
    assert_eq!(index.check(Change::Put(&on_a_vip)), Verdict::NeedsFullCheck);
    let web = ObjectKey::new("a", "web");
    let api = ObjectKey::new("a", "api");
    assert_eq!(
        index.check(Change::Delete("Service", &web)),
        Verdict::NeedsFullCheck
    );
    assert_eq!(index.check(Change::Delete("Service", &api)), Verdict::Valid);
    assert_eq!(index.check(Change::Delete("Route", &web)), Verdict::Valid);
    // The route reads web's ports: changing web is not judged from the indexes.
    let web_v2 = parse(
        &BASE
            .split("---")
            .next()
            .unwrap()
            .replace("port: 80", "port: 81"),
    );
    assert_eq!(
        index.check(Change::Put(&web_v2[0])),
        Verdict::NeedsFullCheck
    );
    let api_v2 = parse(
        &BASE
            .split("---")
            .nth(1)
            .unwrap()
            .replace("port: 80", "port: 81"),
    );
    assert_eq!(index.check(Change::Put(&api_v2[0])), Verdict::Valid);
}

/// A workload two selector PeerAuthentications would both select conflicts; one is fine.
#[test]
fn a_workload_selected_by_two_peer_authentications_needs_the_full_check() {
    let mut resources = parse(BASE);
    resources.extend(parse(
        "
apiVersion: mesh/v1
kind: PeerAuthentication
metadata: {name: by-app, namespace: a}
spec: {mode: STRICT, selector: {app: db}}
---
apiVersion: mesh/v1
kind: PeerAuthentication
metadata: {name: by-tier, namespace: a}
spec: {mode: PERMISSIVE, selector: {tier: db}}
",
    ));
    let index = validated_index(&resources);
    let one = parse(
        "apiVersion: mesh/v1\nkind: Workload\nmetadata: {name: db-1, namespace: a}\n\
         spec: {uid: u9, ips: [10.0.0.9], node: n1, labels: {app: db}}\n",
    );
    assert_eq!(index.check(Change::Put(&one[0])), Verdict::Valid);
    let both = parse(
        "apiVersion: mesh/v1\nkind: Workload\nmetadata: {name: db-1, namespace: a}\n\
         spec: {uid: u9, ips: [10.0.0.9], node: n1, labels: {app: db, tier: db}}\n",
    );
    assert_eq!(index.check(Change::Put(&both[0])), Verdict::NeedsFullCheck);
}

/// Until a full check has passed, nothing is proved valid: the store may hold a config the
/// control plane did not write.
#[test]
fn an_unvalidated_config_always_needs_the_full_check() {
    let mut index = ConfigIndex::default();
    for r in parse(BASE) {
        index.put(Arc::new(r));
    }
    let fresh = workload_named("web-2", "u2", "10.0.0.2");
    assert_eq!(index.check(Change::Put(&fresh)), Verdict::NeedsFullCheck);
    // A full check of an older set does not count.
    let generation = index.generation();
    index.put(Arc::new(fresh));
    index.mark_validated(generation);
    assert!(!index.is_validated());
}

/// A re-list replaces the index; a full check of the old index's set, finishing after that,
/// must not validate the new one (both counted generations from 0).
#[test]
fn a_full_check_of_the_replaced_index_does_not_count() {
    let mut old = ConfigIndex::default();
    old.put(Arc::new(workload_named("web-1", "u1", "10.0.0.1")));
    let checked = old.generation();
    let mut relisted = ConfigIndex::default();
    relisted.put(Arc::new(workload_named("web-2", "u2", "10.0.0.1")));
    relisted.continue_after(&old);
    relisted.mark_validated(checked);
    assert!(!relisted.is_validated());
}

/// A Service change that drops a subset a Route uses, like one that drops a port, is not
/// judged from the indexes; the full check then refuses it.
#[test]
fn dropping_a_subset_a_route_uses_needs_the_full_check() {
    let with_subset = BASE.replace(
        "selector: {app: web}}",
        "selector: {app: web}, subsets: [{name: v1, labels: {version: v1}}]}",
    );
    let with_route = with_subset.replace(
        "rules: [{backends: [{service: web}]}]",
        "rules: [{backends: [{service: web, subset: v1}]}]",
    );
    let base = parse(&with_route);
    let index = validated_index(&base);
    let without = parse(BASE.split("---").next().unwrap()).remove(0);
    assert_eq!(index.check(Change::Put(&without)), Verdict::NeedsFullCheck);
    let mut after: Vec<Resource> = base[1..].to_vec();
    after.push(without);
    let err = Snapshot::from_resources(after).unwrap_err().to_string();
    assert_eq!(
        err,
        "Route a/web: spec.rules[0].backends[0].subset: Service a/web has no subset \"v1\" (it has none)"
    );
    // A route naming a subset is proved from the indexes when the subset is there, and not
    // when it is missing.
    let to = |subset: &str| {
        parse(&format!(
            "apiVersion: mesh/v1\nkind: Route\nmetadata: {{name: web, namespace: a}}\n\
             spec: {{service: web, rules: [{{backends: [{{service: web, subset: {subset}}}]}}]}}\n"
        ))
        .remove(0)
    };
    assert_eq!(index.check(Change::Put(&to("v1"))), Verdict::Valid);
    assert_eq!(index.check(Change::Put(&to("v2"))), Verdict::NeedsFullCheck);
}
