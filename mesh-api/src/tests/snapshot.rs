use std::net::IpAddr;

use super::{fixture_path, lines, service, workload};
use crate::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn fixture() -> Snapshot {
    Snapshot::from_resources(load_file(&fixture_path()).unwrap()).unwrap()
}

fn names<'a>(ws: impl IntoIterator<Item = &'a Workload>) -> Vec<&'a str> {
    ws.into_iter().map(|w| w.metadata.name.as_str()).collect()
}

#[test]
fn realistic_file_builds_a_snapshot() {
    let snap = fixture();
    let services: Vec<_> = snap
        .services()
        .map(|s| s.metadata.key().to_string())
        .collect();
    assert_eq!(services, ["bookinfo/ratings", "bookinfo/reviews"]);
    assert_eq!(
        names(snap.workloads()),
        ["ratings-v1", "reviews-v1", "reviews-v2"]
    );

    let reviews = snap.service_by_vip(ip("10.96.0.20")).unwrap();
    assert_eq!(reviews.metadata.name, "reviews");
    assert_eq!(
        snap.service_by_vip(ip("fd00:96::20"))
            .unwrap()
            .metadata
            .name,
        "reviews"
    );
    assert_eq!(
        snap.service_by_vip(ip("10.96.0.30")).unwrap().metadata.name,
        "ratings"
    );
    assert!(snap.service_by_vip(ip("10.96.0.99")).is_none());
    // Dual-stack sockets report IPv4 peers as mapped IPv6.
    assert_eq!(
        snap.service_by_vip(ip("::ffff:10.96.0.30"))
            .unwrap()
            .metadata
            .name,
        "ratings"
    );

    assert_eq!(names(snap.endpoints(reviews)), ["reviews-v1", "reviews-v2"]);
    let ratings = snap.service("bookinfo", "ratings").unwrap();
    assert_eq!(names(snap.endpoints(ratings)), ["ratings-v1"]);

    assert_eq!(
        snap.workload_by_ip(ip("10.244.2.7")).unwrap().metadata.name,
        "reviews-v2"
    );
    assert_eq!(
        snap.workload_by_ip(ip("fd00:244:1::5"))
            .unwrap()
            .metadata
            .name,
        "reviews-v1"
    );
    assert_eq!(
        snap.workload_by_ip(ip("::ffff:10.244.1.9"))
            .unwrap()
            .metadata
            .name,
        "ratings-v1"
    );
    assert!(snap.workload_by_ip(ip("10.96.0.20")).is_none());
    assert_eq!(
        snap.workload_by_uid("7f3c-0003").unwrap().metadata.name,
        "ratings-v1"
    );
    assert!(snap.workload_by_uid("nope").is_none());
    assert_eq!(
        snap.workload("bookinfo", "reviews-v2").unwrap().spec.node,
        "node-2"
    );
    assert!(snap.workload("default", "reviews-v2").is_none());
    assert_eq!(
        names(snap.workloads_on_node("node-1")),
        ["ratings-v1", "reviews-v1"]
    );

    assert_eq!(
        snap.capture_prefixes(),
        [
            (ip("10.96.0.20"), 32),
            (ip("10.96.0.30"), 32),
            (ip("10.244.1.5"), 32),
            (ip("10.244.1.9"), 32),
            (ip("10.244.2.7"), 32),
            (ip("fd00:96::20"), 128),
            (ip("fd00:244:1::5"), 128),
        ]
    );
}

#[test]
fn resources_round_trip_through_a_snapshot() {
    let snap = fixture();
    let again = Snapshot::from_resources(snap.resources()).unwrap();
    assert_eq!(again.resources(), snap.resources());
    assert_eq!(snap.resources().len(), 5);
}

#[test]
fn every_kind_round_trips_through_a_snapshot() {
    let snap = Snapshot::from_resources(load_file(&super::mesh_fixture_path()).unwrap()).unwrap();
    let resources = snap.resources();
    let kinds: Vec<&str> = resources.iter().map(Resource::kind).collect();
    let mut expected = Vec::new();
    for (kind, n) in [
        ("Service", 5),
        ("Workload", 4),
        ("Route", 1),
        ("AuthorizationPolicy", 5),
        ("PeerAuthentication", 3),
        ("RequestAuthentication", 1),
        ("MeshConfig", 1),
    ] {
        expected.extend(std::iter::repeat_n(kind, n));
    }
    assert_eq!(kinds, expected);
    // Each kind in key order.
    assert_eq!(
        resources[9..]
            .iter()
            .map(|r| r.key().to_string())
            .collect::<Vec<_>>(),
        [
            "bookinfo/reviews-canary",
            "bookinfo/allow-ingress",
            "bookinfo/allow-productpage",
            "bookinfo/allow-reviews",
            "bookinfo/audit-plaintext",
            "mesh-system/deny-quarantine",
            "bookinfo/productpage-edge",
            "bookinfo/ratings-metrics",
            "mesh-system/default",
            "bookinfo/productpage-users",
            "mesh",
        ]
    );
    let again = Snapshot::from_resources(resources.clone()).unwrap();
    assert_eq!(again.resources(), resources);
    let reviews = snap.service("bookinfo", "reviews").unwrap();
    assert_eq!(
        snap.route_for(reviews).unwrap().metadata.name,
        "reviews-canary"
    );
}

#[test]
fn endpoints_respect_namespace_and_whole_selector() {
    let mut s = service("web", "10.96.0.1", "web");
    s.spec.selector.insert("version".into(), "v2".into());
    let mut v1 = workload("web-1", "u1", "10.244.0.1", "web");
    v1.spec.labels.insert("version".into(), "v1".into());
    let mut v2 = workload("web-2", "u2", "10.244.0.2", "web");
    v2.spec.labels.insert("version".into(), "v2".into());
    let mut other_ns = workload("web-3", "u3", "10.244.0.3", "web");
    other_ns.spec.labels.insert("version".into(), "v2".into());
    other_ns.metadata.namespace = "other".into();
    let snap = Snapshot::from_resources(vec![
        Resource::from(s.clone()),
        v1.into(),
        v2.into(),
        other_ns.into(),
    ])
    .unwrap();
    assert_eq!(names(snap.endpoints(&s)), ["web-2"]);

    // A service from elsewhere (not in this snapshot) is matched on the spot.
    let mut foreign = s.clone();
    foreign.metadata.name = "elsewhere".into();
    foreign.spec.selector.remove("version");
    assert_eq!(names(snap.endpoints(&foreign)), ["web-1", "web-2"]);
}

#[test]
fn empty_snapshot_is_fine() {
    let snap = Snapshot::from_resources(Vec::new()).unwrap();
    assert_eq!(snap.services().len(), 0);
    assert!(snap.capture_prefixes().is_empty());
    assert!(snap.service_by_vip(ip("10.0.0.1")).is_none());
}

#[test]
fn duplicates_are_refused() {
    let err = Snapshot::from_resources(vec![
        Resource::from(service("a", "10.96.0.1", "a")),
        service("a", "10.96.0.2", "a").into(),
        // Same name, different kind: fine.
        workload("a", "u1", "10.244.0.1", "a").into(),
    ])
    .unwrap_err();
    assert_eq!(
        lines(err),
        ["Service default/a: metadata.name: Service default/a is defined more than once"]
    );
}

#[test]
fn cross_resource_conflicts_are_reported_together() {
    let err = Snapshot::from_resources(vec![
        Resource::from(service("a", "10.96.0.1", "a")),
        service("b", "10.96.0.1", "b").into(),
        service("c", "10.244.0.1", "c").into(),
        workload("w1", "uid-1", "10.244.0.1", "a").into(),
        workload("w2", "uid-1", "10.244.0.1", "b").into(),
    ])
    .unwrap_err();
    assert_eq!(
        lines(err),
        [
            "Workload default/w2: spec.uid: \"uid-1\" is already used by Workload default/w1",
            "Workload default/w2: spec.ips[0]: 10.244.0.1 is already used by Workload default/w1",
            "Service default/b: spec.vips[0]: 10.96.0.1 is already the VIP of Service default/a",
            "Service default/c: spec.vips[0]: 10.244.0.1 is also an IP of Workload default/w1",
        ]
    );
}

#[test]
fn per_resource_validation_runs_too() {
    let mut s = service("a", "10.96.0.1", "a");
    s.spec.ports.clear();
    let err = Snapshot::from_resources(vec![Resource::from(s)]).unwrap_err();
    assert_eq!(
        lines(err),
        ["Service default/a: spec.ports: at least one port is required"]
    );
}
