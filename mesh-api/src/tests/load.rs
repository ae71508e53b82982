use std::net::IpAddr;

use super::{fixture_path, load_err, mesh_fixture_path, FIXTURE, MESH_FIXTURE};
use crate::*;

fn svc_doc(spec: &str) -> String {
    format!("apiVersion: mesh/v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n{spec}")
}

const GOOD_SPEC: &str =
    "  vips: [\"10.96.0.20\"]\n  ports: [{port: 80, targetPort: 8080, protocol: http}]\n  selector: {app: reviews}\n";

#[test]
fn loads_the_realistic_file() {
    let resources = load_file(&fixture_path()).unwrap();
    let kinds: Vec<_> = resources
        .iter()
        .map(|r| format!("{} {}", r.kind(), r.key()))
        .collect();
    assert_eq!(
        kinds,
        [
            "Service bookinfo/reviews",
            "Service bookinfo/ratings",
            "Workload bookinfo/reviews-v1",
            "Workload bookinfo/reviews-v2",
            "Workload bookinfo/ratings-v1",
        ]
    );
    let Resource::Service(reviews) = &resources[0] else {
        panic!("not a service")
    };
    assert_eq!(
        reviews.spec.vips[1],
        "fd00:96::20".parse::<IpAddr>().unwrap()
    );
    assert_eq!(reviews.spec.load_balancer.policy, LbPolicy::LeastRequest);
    assert_eq!(reviews.port(80).unwrap().target(), 9080);
    assert_eq!(reviews.port(80).unwrap().protocol, Protocol::Http);
    assert_eq!(reviews.port(9090).unwrap().target(), 9090);
    assert_eq!(reviews.port(9090).unwrap().protocol, Protocol::Grpc);
    assert_eq!(
        reviews.metadata.annotations["mesh.example/owner"],
        "Books Team <books@example.com>"
    );
    let Resource::Workload(ratings) = &resources[4] else {
        panic!("not a workload")
    };
    assert_eq!(ratings.spec.service_account, "default");
    assert_eq!(ratings.spec.node, "node-1");
}

#[test]
fn loads_a_file_with_every_kind() {
    let resources = load_file(&mesh_fixture_path()).unwrap();
    let kinds: Vec<_> = resources
        .iter()
        .map(|r| format!("{} {}", r.kind(), r.key()))
        .collect();
    assert_eq!(
        kinds,
        [
            "MeshConfig mesh",
            "Service bookinfo/productpage",
            "Service bookinfo/reviews",
            "Service bookinfo/reviews-v1",
            "Service bookinfo/reviews-v2",
            "Service bookinfo/ratings",
            "Workload bookinfo/productpage-v1",
            "Workload bookinfo/reviews-v1",
            "Workload bookinfo/reviews-v2",
            "Workload bookinfo/ratings-v1",
            "Route bookinfo/reviews-canary",
            "AuthorizationPolicy mesh-system/deny-quarantine",
            "AuthorizationPolicy bookinfo/allow-ingress",
            "AuthorizationPolicy bookinfo/allow-productpage",
            "AuthorizationPolicy bookinfo/allow-reviews",
            "AuthorizationPolicy bookinfo/audit-plaintext",
            "PeerAuthentication mesh-system/default",
            "PeerAuthentication bookinfo/ratings-metrics",
            "PeerAuthentication bookinfo/productpage-edge",
            "RequestAuthentication bookinfo/productpage-users",
        ]
    );
    let Resource::Route(route) = &resources[10] else {
        panic!("not a route")
    };
    assert_eq!(route.spec.rules.len(), 4);
    assert_eq!(route.spec.rules[3].backends[0].weight, 90);
    assert_eq!(route.spec.timeout_ms, Some(3000));
    assert_eq!(route.spec.retries, Some(Retries::new(2)));
    let Resource::AuthorizationPolicy(deny) = &resources[11] else {
        panic!("not a policy")
    };
    let from = deny.spec.rules[0].from.as_ref().unwrap();
    assert_eq!(
        from.ip_blocks,
        [
            "192.0.2.0/24".parse::<Cidr>().unwrap(),
            "2001:db8::/32".parse().unwrap()
        ]
    );
    assert_eq!(from.not_ip_blocks[0].to_string(), "192.0.2.1/32");
    assert_eq!(deny.spec.selector, None);
    assert_eq!(deny.spec.action, AuthzAction::Deny);
}

#[test]
fn serialises_cluster_scoped_metadata_without_a_namespace() {
    let yaml = serde_yaml_ng::to_string(&Resource::from(MeshConfig::default())).unwrap();
    assert_eq!(
        yaml,
        "apiVersion: mesh/v1\nkind: MeshConfig\nmetadata:\n  name: mesh\nspec:\n  trustDomain: cluster.local\n  rootNamespace: mesh-system\n  defaultMtlsMode: PERMISSIVE\n  defaultPolicy: ALLOW\n  connectTimeoutMs: 5000\n  idleTimeoutMs: 3600000\n  healthCheck:\n    intervalMs: 2000\n    timeoutMs: 1000\n    unhealthyThreshold: 2\n    healthyThreshold: 1\n  workloadCertTtlSeconds: 86400\n  nodeCertTtlSeconds: 86400\n  requestTimeoutMs: null\n  defaultRetryAttempts: 0\n  observability:\n    metrics: true\n    accessLog:\n      enabled: false\n      format: json\n      path: stdout\n    tracing:\n      enabled: false\n      samplingPercent: 1\n"
    );
}

#[test]
fn defaults_are_filled_in() {
    let text = "apiVersion: mesh/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  vips: [\"10.96.0.1\"]\n  ports: [{port: 80}]\n  selector: {app: a}\n";
    let r = load_str("x.yaml", text).unwrap();
    let Resource::Service(s) = &r[0] else {
        panic!()
    };
    assert_eq!(s.metadata.namespace, "default");
    assert_eq!(s.spec.ports[0].target_port, None);
    assert_eq!(s.spec.ports[0].target(), 80);
    assert_eq!(s.spec.ports[0].protocol, Protocol::Tcp);
    assert_eq!(s.spec.load_balancer.policy, LbPolicy::RoundRobin);
}

#[test]
fn every_lb_policy_and_protocol_parses() {
    for policy in [
        "round_robin",
        "weighted",
        "least_request",
        "random",
        "ring_hash",
        "maglev",
    ] {
        for protocol in ["tcp", "http", "http2", "grpc"] {
            let spec = format!(
                "  vips: [\"10.96.0.1\"]\n  ports: [{{port: 80, protocol: {protocol}}}]\n  selector: {{app: a}}\n  loadBalancer: {{policy: {policy}}}\n"
            );
            load_str("x.yaml", &svc_doc(&spec)).unwrap();
        }
    }
}

#[test]
fn empty_inputs_give_no_resources() {
    for text in [
        "",
        "\n",
        "# only a comment\n",
        "---\n",
        "---\n---\n...\n",
        "~\n",
    ] {
        assert_eq!(load_str("x.yaml", text).unwrap(), Vec::new(), "{text:?}");
    }
}

#[test]
fn round_trips_through_yaml_and_json() {
    let mut resources = load_str("x.yaml", FIXTURE).unwrap();
    resources.extend(load_str("mesh.yaml", MESH_FIXTURE).unwrap());
    for r in &resources {
        let yaml = serde_yaml_ng::to_string(r).unwrap();
        assert!(yaml.starts_with("apiVersion: mesh/v1\nkind: "), "{yaml}");
        assert_eq!(&load_str("again.yaml", &yaml).unwrap()[0], r);
        assert_eq!(&serde_yaml_ng::from_str::<Resource>(&yaml).unwrap(), r);

        let json = serde_json::to_string(r).unwrap();
        assert_eq!(&serde_json::from_str::<Resource>(&json).unwrap(), r);
        // YAML is a superset of JSON, so JSON files load too.
        assert_eq!(&load_str("x.json", &json).unwrap()[0], r);
    }
}

#[test]
fn serialises_without_unset_optionals() {
    let yaml = serde_yaml_ng::to_string(&Resource::from(super::workload(
        "w",
        "u1",
        "10.244.0.1",
        "a",
    )))
    .unwrap();
    assert_eq!(
        yaml,
        "apiVersion: mesh/v1\nkind: Workload\nmetadata:\n  name: w\n  namespace: default\nspec:\n  uid: u1\n  ips:\n  - 10.244.0.1\n  node: node-1\n  serviceAccount: default\n  labels:\n    app: a\n"
    );
}

#[test]
fn error_names_file_resource_and_field_for_bad_value() {
    let text =
        svc_doc("  vips: [\"10.96.0.20\"]\n  ports: [{port: 70000}]\n  selector: {app: r}\n");
    assert_eq!(
        load_err(&text),
        ["config.yaml: Service default/reviews: spec.ports[0].port: invalid value: integer `70000`, expected u16"]
    );
}

#[test]
fn error_names_unknown_field() {
    let text = svc_doc(
        "  vips: [\"10.96.0.20\"]\n  ports: [{port: 80, tragetPort: 8080}]\n  selector: {app: r}\n",
    );
    assert_eq!(
        load_err(&text),
        ["config.yaml: Service default/reviews: spec.ports[0].tragetPort: unknown field `tragetPort`, expected one of `name`, `port`, `targetPort`, `protocol`"]
    );
    // Unknown fields are refused at every level, including the top and metadata.
    let top = format!("{}status: {{}}\n", svc_doc(GOOD_SPEC));
    assert_eq!(
        load_err(&top),
        ["config.yaml: Service default/reviews: status: unknown field `status`, expected `metadata` or `spec`"]
    );
    let meta = svc_doc(GOOD_SPEC).replace("{name: reviews}", "{name: reviews, uid: x}");
    assert!(load_err(&meta)[0]
        .starts_with("config.yaml: Service default/reviews: metadata.uid: unknown field `uid`"));
    let lb = svc_doc(&format!(
        "{GOOD_SPEC}  loadBalancer: {{policy: random, hash: x}}\n"
    ));
    assert!(load_err(&lb)[0].contains("spec.loadBalancer.hash: unknown field `hash`"));
}

#[test]
fn error_for_bad_enum_ip_and_missing_field() {
    let text = svc_doc(
        "  vips: [\"10.96.0.20\"]\n  ports: [{port: 80, protocol: udp}]\n  selector: {app: r}\n",
    );
    assert_eq!(
        load_err(&text),
        ["config.yaml: Service default/reviews: spec.ports[0].protocol: unknown variant `udp`, expected one of `tcp`, `http`, `http2`, `grpc`, `auto`"]
    );
    let text = svc_doc("  vips: [\"10.96.0.300\"]\n  ports: [{port: 80}]\n  selector: {app: r}\n");
    assert_eq!(
        load_err(&text),
        ["config.yaml: Service default/reviews: spec.vips[0]: invalid IP address syntax"]
    );
    let text = svc_doc("  ports: [{port: 80}]\n  selector: {app: r}\n");
    assert_eq!(
        load_err(&text),
        ["config.yaml: Service default/reviews: spec: missing field `vips`"]
    );
    let text = svc_doc("  vips: [\"10.96.0.20\"]\n  ports: [{port: 80}]\n  selector: {app: 1}\n");
    assert_eq!(
        load_err(&text),
        ["config.yaml: Service default/reviews: spec.selector.app: invalid type: integer `1`, expected a string"]
    );
}

#[test]
fn error_for_envelope_problems() {
    let wrong_version = svc_doc(GOOD_SPEC).replace("mesh/v1", "mesh/v2");
    assert_eq!(
        load_err(&wrong_version),
        ["config.yaml: Service default/reviews: apiVersion: unsupported \"mesh/v2\", expected \"mesh/v1\""]
    );
    let no_version = svc_doc(GOOD_SPEC).replace("apiVersion: mesh/v1\n", "");
    assert_eq!(
        load_err(&no_version),
        ["config.yaml: Service default/reviews: apiVersion: missing field"]
    );
    let unknown_kind = svc_doc(GOOD_SPEC).replace("kind: Service", "kind: Gateway");
    assert_eq!(
        load_err(&unknown_kind),
        ["config.yaml: Gateway default/reviews: kind: unknown kind \"Gateway\", expected one of: Service, Workload, Route, AuthorizationPolicy, PeerAuthentication, RequestAuthentication, MeshConfig"]
    );
    let no_kind = svc_doc(GOOD_SPEC).replace("kind: Service\n", "");
    assert_eq!(
        load_err(&no_kind),
        ["config.yaml: document 1 (default/reviews): kind: missing field"]
    );
    assert_eq!(
        load_err("---\n- a\n- b\n"),
        ["config.yaml: document 1: expected a mapping with apiVersion, kind, metadata and spec, found a sequence"]
    );
}

#[test]
fn error_without_a_name_points_at_the_document() {
    let text = format!(
        "{}---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{namespace: prod}}\nspec: {{}}\n",
        svc_doc(GOOD_SPEC)
    );
    assert_eq!(
        load_err(&text),
        ["config.yaml: Service in document 2: metadata: missing field `name`"]
    );
}

#[test]
fn yaml_syntax_errors_have_a_location() {
    assert_eq!(
        load_err("apiVersion: mesh/v1\nkind: [\n"),
        ["config.yaml: document 1: did not find expected node content at line 3 column 1, while parsing a flow node"]
    );
    assert_eq!(
        load_err("a: 1\na: 2\n"),
        ["config.yaml: document 1: duplicate entry with key \"a\""]
    );
}

#[test]
fn reports_problems_from_every_document() {
    let text = format!(
        "{}---\n{}",
        svc_doc("  vips: []\n  ports: []\n  selector: {}\n"),
        svc_doc(GOOD_SPEC).replace("reviews}", "Reviews}")
    );
    assert_eq!(
        load_err(&text),
        [
            "config.yaml: Service default/reviews: spec.vips: at least one VIP is required",
            "config.yaml: Service default/reviews: spec.ports: at least one port is required",
            "config.yaml: Service default/reviews: spec.selector: must not be empty (it picks the service's workloads)",
            "config.yaml: Service default/Reviews: metadata.name: \"Reviews\" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
        ]
    );
}

#[test]
fn load_file_names_the_path() {
    let err = load_file(std::path::Path::new("/nonexistent/mesh.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().starts_with("/nonexistent/mesh.yaml: "),
        "{err}"
    );
    assert!(err.issues().is_empty());
}

#[test]
fn deserialize_impl_reports_paths_too() {
    let err = serde_json::from_str::<Resource>(
        r#"{"apiVersion":"mesh/v1","kind":"Workload","metadata":{"name":"w"},"spec":{"uid":"u","ips":["1.2.3.4"],"node":"n","colour":"red"}}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Workload default/w: spec.colour: unknown field `colour`"),
        "{err}"
    );
}
