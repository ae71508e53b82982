//! The load-balancing, outlier-detection and connection-pool fields of a Service and the
//! weight and locality of a Workload: what loads, what is refused and with which message.

use super::{doc, load_err};
use crate::*;

const SERVICE: &str =
    "  vips: [\"10.96.0.20\"]\n  ports: [{port: 80, protocol: http}]\n  selector: {app: r}\n";
const WORKLOAD: &str = "  uid: u1\n  ips: [\"10.244.0.5\"]\n  node: n1\n";

fn service(extra: &str) -> String {
    doc("Service", "{name: reviews}", &format!("{SERVICE}{extra}"))
}

fn workload(extra: &str) -> String {
    doc(
        "Workload",
        "{name: reviews-1}",
        &format!("{WORKLOAD}{extra}"),
    )
}

fn load_one(text: &str) -> Resource {
    let mut resources = load_str("config.yaml", text).unwrap();
    assert_eq!(resources.len(), 1);
    resources.remove(0)
}

fn loaded_service(extra: &str) -> Service {
    match load_one(&service(extra)) {
        Resource::Service(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_field_loads_and_round_trips() {
    let s = loaded_service(
        "  loadBalancer: {policy: maglev, hashOn: {header: x-user}, localityLb: true}\n  \
         outlierDetection: {consecutiveErrors: 3, intervalMs: 5000, baseEjectionMs: 1000, maxEjectionPercent: 50}\n  \
         connectionPool: {maxConnections: 10, maxPendingRequests: 20, maxRequests: 30, maxRetries: 2, connectTimeoutMs: 500, idleTimeoutMs: 60000}\n",
    );
    let lb = &s.spec.load_balancer;
    assert_eq!(lb.policy, LbPolicy::Maglev);
    assert_eq!(lb.hash_key(), Some(HashKey::Header("x-user")));
    assert!(lb.locality_lb);
    assert_eq!(lb.summary(), "maglev(header x-user) locality");
    let o = s.spec.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (
            o.consecutive_errors,
            o.interval_ms,
            o.base_ejection_ms,
            o.max_ejection_percent
        ),
        (3, 5000, 1000, 50)
    );
    let p = s.spec.connection_pool.as_ref().unwrap();
    assert_eq!(
        (
            p.max_connections,
            p.max_pending_requests,
            p.max_requests,
            p.max_retries
        ),
        (10, 20, 30, 2)
    );
    assert_eq!(
        (p.connect_timeout_ms, p.idle_timeout_ms),
        (Some(500), Some(60000))
    );
    let yaml = serde_yaml_ng::to_string(&Resource::from(s.clone())).unwrap();
    assert_eq!(load_one(&yaml), Resource::from(s));

    let w = match load_one(&workload(
        "  weight: 300\n  locality: {region: eu-west, zone: eu-west-1a}\n",
    )) {
        Resource::Workload(w) => w,
        other => panic!("{other:?}"),
    };
    assert_eq!(w.spec.weight(), 300);
    let locality = w.spec.locality.clone().unwrap();
    assert_eq!(
        (locality.region.as_str(), locality.zone.as_deref()),
        ("eu-west", Some("eu-west-1a"))
    );
    let yaml = serde_yaml_ng::to_string(&Resource::from(w.clone())).unwrap();
    assert_eq!(load_one(&yaml), Resource::from(w));
}

#[test]
fn omitted_fields_keep_old_configs_valid_and_take_documented_defaults() {
    let s = loaded_service("");
    assert_eq!(s.spec.load_balancer, LoadBalancer::default());
    assert_eq!(s.spec.load_balancer.hash_key(), None);
    assert_eq!(
        (s.spec.outlier_detection, s.spec.connection_pool),
        (None, None)
    );
    // A hash policy without hashOn hashes the source IP.
    let s = loaded_service("  loadBalancer: {policy: ring_hash}\n");
    assert_eq!(s.spec.load_balancer.hash_key(), Some(HashKey::SourceIp));
    assert_eq!(s.spec.load_balancer.summary(), "ring_hash(source ip)");
    assert_eq!(LoadBalancer::default().summary(), "round_robin");
    let s = loaded_service("  outlierDetection: {}\n  connectionPool: {}\n");
    let o = s.spec.outlier_detection.unwrap();
    assert_eq!(
        (
            o.consecutive_errors,
            o.interval_ms,
            o.base_ejection_ms,
            o.max_ejection_percent
        ),
        (5, 10_000, 30_000, 10)
    );
    let p = s.spec.connection_pool.unwrap();
    assert_eq!(
        (
            p.max_connections,
            p.max_pending_requests,
            p.max_requests,
            p.max_retries
        ),
        (1024, 1024, 1024, 3)
    );
    let w = match load_one(&workload("")) {
        Resource::Workload(w) => w,
        other => panic!("{other:?}"),
    };
    assert_eq!((w.spec.weight, w.spec.weight()), (None, DEFAULT_WEIGHT));
    assert_eq!(w.spec.locality, None);
    // Unset fields are not written back.
    let yaml = serde_yaml_ng::to_string(&Resource::from(w)).unwrap();
    assert!(
        !yaml.contains("weight") && !yaml.contains("locality"),
        "{yaml}"
    );
}

#[test]
fn an_unknown_policy_is_refused_naming_the_field() {
    assert_eq!(
        load_err(&service("  loadBalancer: {policy: fastest}\n")),
        ["config.yaml: Service default/reviews: spec.loadBalancer.policy: unknown variant `fastest`, expected one of `round_robin`, `weighted`, `least_request`, `random`, `ring_hash`, `maglev`"]
    );
}

#[test]
fn hash_on_is_refused_without_a_hash_policy_and_when_malformed() {
    let prefix = "config.yaml: Service default/reviews: spec.loadBalancer.hashOn";
    assert_eq!(
        load_err(&service(
            "  loadBalancer: {policy: least_request, hashOn: {header: x-user}}\n"
        )),
        [format!(
            "{prefix}: applies only to policy ring_hash or maglev, not least_request"
        )]
    );
    assert_eq!(
        load_err(&service("  loadBalancer: {hashOn: {sourceIp: true}}\n")),
        [format!(
            "{prefix}: applies only to policy ring_hash or maglev, not round_robin"
        )]
    );
    assert_eq!(
        load_err(&service(
            "  loadBalancer: {policy: maglev, hashOn: {header: x-user, cookie: session}}\n"
        )),
        [format!(
            "{prefix}: must set exactly one of header, cookie or sourceIp"
        )]
    );
    assert_eq!(
        load_err(&service("  loadBalancer: {policy: maglev, hashOn: {}}\n")),
        [format!(
            "{prefix}: must set exactly one of header, cookie or sourceIp"
        )]
    );
    assert_eq!(
        load_err(&service(
            "  loadBalancer: {policy: ring_hash, hashOn: {header: X-User}}\n"
        )),
        [format!("{prefix}.header: \"X-User\" is not a lowercase header name (letters a-z, digits and !#$%&'*+-.^_`|~)")]
    );
    assert_eq!(
        load_err(&service(
            "  loadBalancer: {policy: ring_hash, hashOn: {cookie: \"a b\"}}\n"
        )),
        [format!(
            "{prefix}.cookie: \"a b\" is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"
        )]
    );
    assert_eq!(
        load_err(&service(
            "  loadBalancer: {policy: ring_hash, hashOn: {sourceIp: false}}\n"
        )),
        [format!("{prefix}.sourceIp: must be true (to hash on something else, set header or cookie instead)")]
    );
    assert!(load_err(&service(
        "  loadBalancer: {policy: maglev, hashOn: {query: x}}\n"
    ))[0]
        .contains("spec.loadBalancer.hashOn.query: unknown field `query`"));
}

#[test]
fn outlier_detection_percent_over_100_and_zero_values_are_refused() {
    let prefix = "config.yaml: Service default/reviews: spec.outlierDetection";
    assert_eq!(
        load_err(&service(
            "  outlierDetection: {consecutiveErrors: 0, intervalMs: 0, baseEjectionMs: 0, maxEjectionPercent: 101}\n"
        )),
        [
            format!("{prefix}.consecutiveErrors: must be at least 1"),
            format!("{prefix}.intervalMs: must be greater than 0"),
            format!("{prefix}.baseEjectionMs: must be greater than 0"),
            format!("{prefix}.maxEjectionPercent: must be between 1 and 100, got 101"),
        ]
    );
    assert_eq!(
        load_err(&service("  outlierDetection: {maxEjectionPercent: 0}\n")),
        [format!(
            "{prefix}.maxEjectionPercent: must be between 1 and 100, got 0"
        )]
    );
}

#[test]
fn zero_connection_pool_limits_are_refused() {
    let prefix = "config.yaml: Service default/reviews: spec.connectionPool";
    let zero = "must be at least 1 (a limit of 0 would refuse all traffic)";
    assert_eq!(
        load_err(&service(
            "  connectionPool: {maxConnections: 0, maxPendingRequests: 0, maxRequests: 0, maxRetries: 0, connectTimeoutMs: 0, idleTimeoutMs: 86400001}\n"
        )),
        [
            format!("{prefix}.maxConnections: {zero}"),
            format!("{prefix}.maxPendingRequests: {zero}"),
            format!("{prefix}.maxRequests: {zero}"),
            format!("{prefix}.maxRetries: {zero}"),
            format!("{prefix}.connectTimeoutMs: must be greater than 0"),
            format!("{prefix}.idleTimeoutMs: must be at most 86400000 (1 day), got 86400001"),
        ]
    );
}

#[test]
fn weights_outside_1_to_1000_and_bad_localities_are_refused() {
    let prefix = "config.yaml: Workload default/reviews-1";
    for bad in [0, 1001] {
        assert_eq!(
            load_err(&workload(&format!("  weight: {bad}\n"))),
            [format!(
                "{prefix}: spec.weight: must be between 1 and 1000, got {bad}"
            )]
        );
    }
    for good in [1, 1000] {
        load_one(&workload(&format!("  weight: {good}\n")));
    }
    assert!(load_err(&workload("  weight: -1\n"))[0].contains("spec.weight: invalid value"));
    let rule = "must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
    assert_eq!(
        load_err(&workload("  locality: {region: \"\", zone: \"eu west\"}\n")),
        [
            format!("{prefix}: spec.locality.region: \"\" {rule}"),
            format!("{prefix}: spec.locality.zone: \"eu west\" {rule}"),
        ]
    );
    assert!(load_err(&workload("  locality: {zone: a}\n"))[0]
        .contains("spec.locality: missing field `region`"));
}
