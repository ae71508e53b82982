use super::{problems, service, workload};
use crate::*;

#[test]
fn valid_resources_pass() {
    assert_eq!(
        problems(service("reviews", "10.96.0.20", "reviews")),
        Vec::<String>::new()
    );
    assert_eq!(
        problems(workload("reviews-1", "7f3c-abc", "10.244.1.5", "reviews")),
        Vec::<String>::new()
    );
}

#[test]
fn names_must_be_dns_labels() {
    let mut s = service("reviews", "10.96.0.20", "r");
    s.metadata.name = String::new();
    s.metadata.namespace = "Prod_1".to_owned();
    assert_eq!(
        problems(s),
        [
            "Service Prod_1/: metadata.name: must not be empty",
            "Service Prod_1/: metadata.namespace: \"Prod_1\" is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
        ]
    );
}

#[test]
fn ports_are_checked() {
    let mut s = service("reviews", "10.96.0.20", "r");
    let p = s.spec.ports[0].clone();
    s.spec.ports = vec![
        ServicePort {
            port: 0,
            ..p.clone()
        },
        ServicePort {
            target_port: Some(0),
            name: Some("web".into()),
            ..p.clone()
        },
        ServicePort {
            name: Some("web".into()),
            ..p.clone()
        },
        ServicePort {
            port: 81,
            name: Some("Web".into()),
            ..p.clone()
        },
    ];
    assert_eq!(
        problems(s),
        [
            "Service default/reviews: spec.ports[0].port: must be between 1 and 65535, got 0",
            "Service default/reviews: spec.ports[1].targetPort: must be between 1 and 65535, got 0",
            "Service default/reviews: spec.ports[2].port: duplicate port 80 (also spec.ports[1])",
            "Service default/reviews: spec.ports[2].name: duplicate port name \"web\" (also spec.ports[1])",
            "Service default/reviews: spec.ports[3].name: \"Web\" is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)",
        ]
    );
}

#[test]
fn max_port_is_fine() {
    let mut s = service("reviews", "10.96.0.20", "r");
    s.spec.ports[0].port = 65535;
    s.spec.ports[0].target_port = Some(65535);
    assert!(problems(s).is_empty());
}

#[test]
fn vips_are_checked() {
    let mut s = service("reviews", "10.96.0.20", "r");
    s.spec.vips = [
        "10.96.0.20",
        "10.96.0.20",
        "0.0.0.0",
        "127.0.0.1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "::",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    assert_eq!(
        problems(s),
        [
            "Service default/reviews: spec.vips[1]: duplicate VIP 10.96.0.20 (also spec.vips[0])",
            "Service default/reviews: spec.vips[2]: 0.0.0.0 is the unspecified address",
            "Service default/reviews: spec.vips[3]: 127.0.0.1 is a loopback address",
            "Service default/reviews: spec.vips[4]: ::ffff:10.0.0.1 is IPv4-mapped; write the IPv4 address instead",
            "Service default/reviews: spec.vips[5]: 224.0.0.1 is a multicast address",
            "Service default/reviews: spec.vips[6]: 255.255.255.255 is the broadcast address",
            "Service default/reviews: spec.vips[7]: :: is the unspecified address",
        ]
    );
}

#[test]
fn empty_lists_and_selector_are_refused() {
    let mut s = service("reviews", "10.96.0.20", "r");
    s.spec.vips.clear();
    s.spec.ports.clear();
    s.spec.selector.clear();
    assert_eq!(
        problems(s),
        [
            "Service default/reviews: spec.vips: at least one VIP is required",
            "Service default/reviews: spec.ports: at least one port is required",
            "Service default/reviews: spec.selector: must not be empty (it picks the service's workloads)",
        ]
    );
}

#[test]
fn labels_are_checked() {
    let mut s = service("reviews", "10.96.0.20", "r");
    s.spec.selector.insert(String::new(), "x".into());
    s.spec
        .selector
        .insert("app.kubernetes.io/name".into(), "ok".into());
    s.spec.selector.insert("bad key".into(), "x".into());
    s.spec.selector.insert("tier".into(), "not ok!".into());
    s.metadata.labels.insert("team".into(), String::new());
    s.metadata
        .annotations
        .insert("note".into(), "anything goes, even spaces!".into());
    s.metadata.annotations.insert("/x".into(), "v".into());
    assert_eq!(
        problems(s),
        [
            "Service default/reviews: metadata.annotations[\"/x\"]: annotation key prefix \"\" is not a DNS-1123 subdomain",
            "Service default/reviews: spec.selector[\"\"]: label key must not be empty",
            "Service default/reviews: spec.selector[\"bad key\"]: label key \"bad key\" must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, after an optional 'prefix/'",
            "Service default/reviews: spec.selector.tier: label value \"not ok!\" must be empty or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ]
    );
}

#[test]
fn workload_fields_are_checked() {
    let mut w = workload("reviews-1", "", "10.244.1.5", "reviews");
    w.spec.ips.clear();
    w.spec.node.clear();
    w.spec.service_account = "Reviews".into();
    w.spec.labels.insert(String::new(), "v".into());
    assert_eq!(
        problems(w),
        [
            "Workload default/reviews-1: spec.uid: must not be empty",
            "Workload default/reviews-1: spec.ips: at least one IP is required",
            "Workload default/reviews-1: spec.node: must not be empty",
            "Workload default/reviews-1: spec.serviceAccount: \"Reviews\" is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.')",
            "Workload default/reviews-1: spec.labels[\"\"]: label key must not be empty",
        ]
    );

    let mut w = workload("reviews-1", "a/b", "10.244.1.5", "reviews");
    w.spec.ips.push("10.244.1.5".parse().unwrap());
    w.spec.node = "node 1".into();
    assert_eq!(
        problems(w),
        [
            "Workload default/reviews-1: spec.uid: \"a/b\" must be at most 253 letters, digits, '-', '_', '.' or ':'",
            "Workload default/reviews-1: spec.ips[1]: duplicate IP 10.244.1.5 (also spec.ips[0])",
            "Workload default/reviews-1: spec.node: \"node 1\" must not contain whitespace",
        ]
    );

    for uid in [".", ".."] {
        assert_eq!(
            problems(workload("reviews-1", uid, "10.244.1.5", "reviews")),
            [format!(
                "Workload default/reviews-1: spec.uid: {uid:?} must not consist of dots only"
            )]
        );
    }
}

#[test]
fn validation_runs_on_load_with_the_file_name() {
    let text = "apiVersion: mesh/v1\nkind: Workload\nmetadata: {name: w, namespace: prod}\nspec: {uid: '', ips: ['10.0.0.1'], node: n1}\n";
    let err = load_str("pods.yaml", text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pods.yaml: Workload prod/w: spec.uid: must not be empty"
    );
    let issue = &err.issues()[0];
    assert_eq!(issue.file.as_deref(), Some("pods.yaml"));
    assert_eq!(issue.document, Some(1));
    assert_eq!(issue.kind.as_deref(), Some("Workload"));
    assert_eq!(issue.object, Some(ObjectKey::new("prod", "w")));
    assert_eq!(issue.field.as_deref(), Some("spec.uid"));
    assert_eq!(issue.message, "must not be empty");
}
