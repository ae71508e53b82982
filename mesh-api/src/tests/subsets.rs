//! Service subsets (named groups of endpoints a Route backend can pick) and `auto` ports.

use super::{doc, load_err, snapshot, snapshot_err};
use crate::*;

fn reviews(extra: &str) -> String {
    doc(
        "Service",
        "{name: reviews}",
        &format!(
            "  vips: [\"10.96.0.1\"]\n  ports: [{{port: 80, protocol: http}}]\n  selector: {{app: reviews}}\n{extra}"
        ),
    )
}

const TWO_SUBSETS: &str =
    "  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n";

fn workload(name: &str, version: &str, ip: &str) -> String {
    doc(
        "Workload",
        &format!("{{name: {name}}}"),
        &format!("  uid: {name}\n  ips: [\"{ip}\"]\n  node: n1\n  labels: {{app: reviews, version: {version}}}\n"),
    )
}

fn route_to(backends: &str) -> String {
    doc(
        "Route",
        "{name: r}",
        &format!("  service: reviews\n  rules:\n  - backends: {backends}\n"),
    )
}

#[test]
fn subsets_are_checked() {
    assert_eq!(
        load_err(&reviews(
            "  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v1, labels: {version: v2}}\n  - {name: V3, labels: {}}\n  - {name: v4, labels: {\"-bad\": x}}\n"
        )),
        [
            "config.yaml: Service default/reviews: spec.subsets[1].name: duplicate subset name \"v1\" (also spec.subsets[0])",
            "config.yaml: Service default/reviews: spec.subsets[2].name: \"V3\" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
            "config.yaml: Service default/reviews: spec.subsets[2].labels: must not be empty (they pick the subset's endpoints among the service's)",
            "config.yaml: Service default/reviews: spec.subsets[3].labels.-bad: label key \"-bad\" must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, after an optional 'prefix/'",
        ]
    );
}

#[test]
fn a_subset_picks_the_services_endpoints_with_its_labels() {
    let snap = snapshot(
        &[
            reviews(TWO_SUBSETS),
            workload("reviews-1", "v1", "10.244.0.1"),
            workload("reviews-2", "v2", "10.244.0.2"),
            workload("reviews-3", "v2", "10.244.0.3"),
        ]
        .join("---\n"),
    );
    let svc = snap.service("default", "reviews").unwrap();
    let names = |subset: &str| -> Vec<String> {
        snap.subset_endpoints(svc, subset)
            .iter()
            .map(|w| w.metadata.name.clone())
            .collect()
    };
    assert_eq!(names("v1"), ["reviews-1"]);
    assert_eq!(names("v2"), ["reviews-2", "reviews-3"]);
    assert!(names("v3").is_empty());
    let v2 = svc.subset("v2").unwrap();
    assert!(v2.selects(snap.workload("default", "reviews-2").unwrap()));
    assert!(!v2.selects(snap.workload("default", "reviews-1").unwrap()));
    assert!(svc.subset("v3").is_none());
}

#[test]
fn a_backend_subset_must_exist_on_its_service() {
    let text = [
        reviews(TWO_SUBSETS),
        reviews("").replace("name: reviews", "name: plain").replace("10.96.0.1", "10.96.0.2"),
        route_to("[{service: reviews, subset: v3}, {service: plain, subset: v1}, {service: reviews, subset: v1}]"),
    ]
    .join("---\n");
    assert_eq!(
        snapshot_err(&text),
        [
            "Route default/r: spec.rules[0].backends[0].subset: Service default/reviews has no subset \"v3\" (it has v1, v2)",
            "Route default/r: spec.rules[0].backends[1].subset: Service default/plain has no subset \"v1\" (it has none)",
        ]
    );
}

#[test]
fn the_same_service_in_two_subsets_is_two_backends() {
    let text = [
        reviews(TWO_SUBSETS),
        route_to("[{service: reviews, subset: v1, weight: 90}, {service: reviews, subset: v2, weight: 10}]"),
    ]
    .join("---\n");
    let snap = snapshot(&text);
    let route = snap.route("default", "r").unwrap();
    assert_eq!(route.spec.rules[0].total_weight(), 100);
    let twice = route_to("[{service: reviews, subset: v1}, {service: reviews, subset: v1}]");
    assert_eq!(
        load_err(&twice),
        ["config.yaml: Route default/r: spec.rules[0].backends[1]: duplicate backend \"reviews/v1\" (also spec.rules[0].backends[0]); merge their weights"]
    );
}

/// `auto` ports may carry HTTP, so HTTP matches are allowed on them; they are not
/// definitely HTTP.
#[test]
fn auto_ports_accept_http_matches() {
    assert!(Protocol::Auto.may_be_http() && !Protocol::Auto.is_http());
    assert!(Protocol::Grpc.is_http() && Protocol::Grpc.may_be_http());
    assert!(!Protocol::Tcp.may_be_http());
    let text = [
        reviews("").replace("protocol: http", "protocol: auto"),
        doc(
            "Route",
            "{name: r}",
            "  service: reviews\n  rules:\n  - match: {method: GET}\n    backends: [{service: reviews}]\n",
        ),
    ]
    .join("---\n");
    let snap = snapshot(&text);
    let svc = snap.service("default", "reviews").unwrap();
    assert_eq!(svc.port(80).unwrap().protocol, Protocol::Auto);
    assert!(snap.route_for(svc).unwrap().needs_http());
}
