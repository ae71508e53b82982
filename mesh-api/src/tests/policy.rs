//! AuthorizationPolicy, PeerAuthentication and MeshConfig: validation, lookups and decisions.

use std::net::IpAddr;

use super::{doc, load_err, mesh_fixture_path, snapshot, snapshot_err, workload};
use crate::*;

fn fixture() -> Snapshot {
    Snapshot::from_resources(load_file(&mesh_fixture_path()).unwrap()).unwrap()
}

fn peer(principal: Option<&'static str>, ip: &str) -> Peer<'static> {
    Peer {
        principal,
        ip: ip.parse::<IpAddr>().unwrap(),
    }
}

fn names(policies: Vec<&AuthorizationPolicy>) -> Vec<String> {
    policies
        .into_iter()
        .map(|p| p.metadata.key().to_string())
        .collect()
}

fn authz(meta: &str, spec: &str) -> String {
    doc("AuthorizationPolicy", meta, spec)
}

fn peer_auth(meta: &str, spec: &str) -> String {
    doc("PeerAuthentication", meta, spec)
}

fn workload_doc(name: &str, ns: &str, ip: &str, labels: &str) -> String {
    doc(
        "Workload",
        &format!("{{name: {name}, namespace: {ns}}}"),
        &format!("  uid: {name}-{ns}\n  ips: [\"{ip}\"]\n  node: n1\n  labels: {labels}\n"),
    )
}

// ---- AuthorizationPolicy -------------------------------------------------------------------

#[test]
fn authorization_policy_fields_are_checked() {
    let text = authz(
        "{name: p}",
        "  selector: {}
  action: ALLOW
  rules:
  - from:
      principals: [\"cluster.local/ns/a/sa/b\", \"spiffe://td/*/sa/*\", \"*\", \"\"]
      notPrincipals: [\"*/sa/x\", \"spiffe://td/ns/a *\"]
      namespaces: [\"Prod\", \"prod-*\"]
      notNamespaces: [\"*-test\", \"a*b\"]
    to: {ports: [0, 8080]}
",
    );
    assert_eq!(
        load_err(&text),
        [
            "config.yaml: AuthorizationPolicy default/p: spec.selector: must not be empty; omit it to select every workload in the namespace",
            "config.yaml: AuthorizationPolicy default/p: spec.rules[0].from.principals[0]: \"cluster.local/ns/a/sa/b\" must be a SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<account>), optionally with '*' at the start or end",
            "config.yaml: AuthorizationPolicy default/p: spec.rules[0].from.principals[1]: \"spiffe://td/*/sa/*\" may have one '*', only at the start or the end",
            "config.yaml: AuthorizationPolicy default/p: spec.rules[0].from.principals[3]: must not be empty",
            "config.yaml: AuthorizationPolicy default/p: spec.rules[0].from.notPrincipals[1]: \"spiffe://td/ns/a *\" must not contain whitespace",
            "config.yaml: AuthorizationPolicy default/p: spec.rules[0].from.namespaces[0]: \"Prod\" must be a namespace name (lowercase letters, digits and '-'), optionally with '*' at the start or end",
            "config.yaml: AuthorizationPolicy default/p: spec.rules[0].from.notNamespaces[1]: \"a*b\" may have one '*', only at the start or the end",
            "config.yaml: AuthorizationPolicy default/p: spec.rules[0].to.ports[0]: must be between 1 and 65535, got 0",
        ]
    );
}

#[test]
fn authorization_policy_parse_errors_have_paths() {
    assert_eq!(
        load_err(&authz("{name: p}", "  action: allow\n")),
        ["config.yaml: AuthorizationPolicy default/p: spec.action: unknown variant `allow`, expected one of `ALLOW`, `DENY`, `AUDIT`"]
    );
    assert_eq!(
        load_err(&authz(
            "{name: p}",
            "  action: DENY\n  rules: [{from: {ipBlocks: [\"10.0.0.0/8\", \"10.0.0.1/8\"]}}]\n"
        )),
        ["config.yaml: AuthorizationPolicy default/p: spec.rules[0].from.ipBlocks[1]: \"10.0.0.1/8\" has bits set after the prefix; did you mean \"10.0.0.0/8\"?"]
    );
    assert_eq!(
        load_err(&authz(
            "{name: p}",
            "  action: DENY\n  rules: [{from: {notIpBlocks: [\"10.0.0.0/99\"]}}]\n"
        )),
        ["config.yaml: AuthorizationPolicy default/p: spec.rules[0].from.notIpBlocks[0]: \"10.0.0.0/99\": prefix length must be at most 32"]
    );
    assert_eq!(
        load_err(&authz(
            "{name: p}",
            "  action: DENY\n  rules: [{to: {verbs: [GET]}}]\n"
        )),
        ["config.yaml: AuthorizationPolicy default/p: spec.rules[0].to.verbs: unknown field `verbs`, expected one of `ports`, `hosts`, `methods`, `paths`, `notHosts`, `notMethods`, `notPaths`"]
    );
    assert_eq!(
        load_err(&authz("{name: p}", "  rules: []\n")),
        ["config.yaml: AuthorizationPolicy default/p: spec: missing field `action`"]
    );
}

#[test]
fn policies_for_a_workload_include_the_root_namespace() {
    let snap = fixture();
    let w = |name| snap.workload("bookinfo", name).unwrap();
    assert_eq!(
        names(snap.policies_for(w("reviews-v1"))),
        [
            "bookinfo/allow-productpage",
            "bookinfo/audit-plaintext",
            "mesh-system/deny-quarantine"
        ]
    );
    assert_eq!(
        names(snap.policies_for(w("ratings-v1"))),
        [
            "bookinfo/allow-reviews",
            "bookinfo/audit-plaintext",
            "mesh-system/deny-quarantine"
        ]
    );
    // Another namespace sees only the mesh-wide policy.
    let mut elsewhere = workload("x", "u", "10.1.1.1", "reviews");
    elsewhere.metadata.namespace = "other".into();
    assert_eq!(
        names(snap.policies_for(&elsewhere)),
        ["mesh-system/deny-quarantine"]
    );
    assert_eq!(snap.authorization_policies().len(), 5);
    assert_eq!(
        snap.authorization_policy("bookinfo", "allow-reviews")
            .unwrap()
            .spec
            .rules
            .len(),
        2
    );
}

#[test]
fn authorize_follows_deny_then_allow_then_default() {
    let snap = fixture();
    let reviews = snap.workload("bookinfo", "reviews-v1").unwrap();
    let ratings = snap.workload("bookinfo", "ratings-v1").unwrap();
    const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";
    const REVIEWS: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews";

    let d = snap.authorize(reviews, &peer(Some(PRODUCTPAGE), "10.244.1.4"), 9080);
    assert!(d.allowed);
    assert!(matches!(d.reason, AuthzReason::Allowed(p) if p.metadata.name == "allow-productpage"));
    assert_eq!(d.audit, None);

    // The mesh-wide DENY wins over the matching ALLOW.
    let d = snap.authorize(reviews, &peer(Some(PRODUCTPAGE), "192.0.2.7"), 9080);
    assert!(!d.allowed);
    assert!(matches!(d.reason, AuthzReason::Denied(p) if p.metadata.name == "deny-quarantine"));
    // ... except for its notIpBlocks carve-out.
    assert!(
        snap.authorize(reviews, &peer(Some(PRODUCTPAGE), "192.0.2.1"), 9080)
            .allowed
    );

    // ALLOW policies apply and none matches.
    let d = snap.authorize(reviews, &peer(Some(REVIEWS), "10.244.2.7"), 9080);
    assert_eq!(d.reason, AuthzReason::NoAllowMatched);
    assert!(!d.allowed);

    // Plaintext: audited, and allowed only by the ipBlocks rule on the metrics port.
    let plain = peer(None, "10.244.1.5");
    let d = snap.authorize(ratings, &plain, 9091);
    assert!(d.allowed);
    assert_eq!(d.audit.unwrap().metadata.name, "audit-plaintext");
    assert!(!snap.authorize(ratings, &plain, 9080).allowed);
    assert!(
        snap.authorize(ratings, &peer(Some(REVIEWS), "10.244.1.5"), 9080)
            .allowed
    );

    // No ALLOW applies to a workload elsewhere: the mesh is default-deny.
    let mut elsewhere = workload("x", "u", "10.1.1.1", "web");
    elsewhere.metadata.namespace = "other".into();
    let d = snap.authorize(&elsewhere, &peer(Some(REVIEWS), "10.1.1.2"), 80);
    assert_eq!(d.reason, AuthzReason::Default(DefaultPolicy::Deny));
    assert!(!d.allowed);
}

#[test]
fn without_policies_the_default_allows() {
    let snap = Snapshot::from_resources(Vec::new()).unwrap();
    let w = workload("w", "u", "10.0.0.1", "a");
    let d = snap.authorize(&w, &peer(None, "10.0.0.2"), 80);
    assert!(d.allowed);
    assert_eq!(d.reason, AuthzReason::Default(DefaultPolicy::Allow));
    assert!(snap.policies_for(&w).is_empty());
}

#[test]
fn an_allow_policy_without_rules_denies_all() {
    let snap = snapshot(&authz("{name: lockdown}", "  action: ALLOW\n"));
    let w = workload("w", "u", "10.0.0.1", "a");
    let d = snap.authorize(
        &w,
        &peer(Some("spiffe://td/ns/default/sa/a"), "10.0.0.2"),
        80,
    );
    assert_eq!(d.reason, AuthzReason::NoAllowMatched);
}

#[test]
fn root_namespace_follows_the_mesh_config() {
    let text = [
        doc(
            "MeshConfig",
            "{name: mesh}",
            "  rootNamespace: istio-system\n",
        ),
        authz(
            "{name: web-only, namespace: istio-system}",
            "  selector: {app: web}\n  action: DENY\n  rules: [{}]\n",
        ),
        authz(
            "{name: ignored, namespace: mesh-system}",
            "  action: DENY\n  rules: [{}]\n",
        ),
    ]
    .join("---\n");
    let snap = snapshot(&text);
    assert_eq!(snap.mesh_config().root_namespace, "istio-system");
    let mut web = workload("w", "u", "10.0.0.1", "web");
    web.metadata.namespace = "shop".into();
    let api = workload("a", "u2", "10.0.0.2", "api");
    assert_eq!(names(snap.policies_for(&web)), ["istio-system/web-only"]);
    assert!(snap.policies_for(&api).is_empty());
    assert!(!snap.authorize(&web, &peer(None, "10.0.0.9"), 1).allowed);
    assert!(snap.authorize(&api, &peer(None, "10.0.0.9"), 1).allowed);
}

// ---- PeerAuthentication --------------------------------------------------------------------

#[test]
fn mtls_mode_precedence() {
    let snap = fixture();
    let w = |name| snap.workload("bookinfo", name).unwrap();
    // Port-level entry of a selector policy, then its mode.
    assert_eq!(
        snap.mtls_mode_for(w("ratings-v1"), 9091),
        MtlsMode::Permissive
    );
    assert_eq!(snap.mtls_mode_for(w("ratings-v1"), 9080), MtlsMode::Strict);
    // A selector policy beats the mesh-wide STRICT.
    assert_eq!(
        snap.mtls_mode_for(w("productpage-v1"), 9080),
        MtlsMode::Permissive
    );
    // No bookinfo namespace policy: the root namespace's.
    assert_eq!(snap.mtls_mode_for(w("reviews-v1"), 9080), MtlsMode::Strict);

    // A namespace policy beats the root one; the mesh default comes last.
    let text = [
        peer_auth("{name: ns}", "  mode: DISABLE\n"),
        doc("MeshConfig", "{name: mesh}", "  defaultMtlsMode: STRICT\n"),
    ]
    .join("---\n");
    let snap = snapshot(&format!(
        "{text}---\n{}",
        peer_auth(
            "{name: root, namespace: mesh-system}",
            "  mode: PERMISSIVE\n"
        )
    ));
    let here = workload("w", "u", "10.0.0.1", "a");
    let mut there = here.clone();
    there.metadata.namespace = "other".into();
    assert_eq!(snap.mtls_mode_for(&here, 80), MtlsMode::Disable);
    assert_eq!(snap.mtls_mode_for(&there, 80), MtlsMode::Permissive);
    let snap = snapshot(&text);
    assert_eq!(snap.mtls_mode_for(&there, 80), MtlsMode::Strict);
    assert_eq!(
        Snapshot::default().mtls_mode_for(&there, 80),
        MtlsMode::Permissive
    );
}

#[test]
fn root_namespace_selectors_stay_in_the_root_namespace() {
    let snap = snapshot(&peer_auth(
        "{name: p, namespace: mesh-system}",
        "  selector: {app: a}\n  mode: STRICT\n",
    ));
    let w = workload("w", "u", "10.0.0.1", "a");
    assert_eq!(snap.mtls_mode_for(&w, 80), MtlsMode::Permissive);
    let mut root = w.clone();
    root.metadata.namespace = "mesh-system".into();
    assert_eq!(snap.mtls_mode_for(&root, 80), MtlsMode::Strict);
}

#[test]
fn peer_authentication_fields_are_checked() {
    assert_eq!(
        load_err(&peer_auth(
            "{name: p}",
            "  mode: STRICT\n  portLevelMtls: {8080: DISABLE}\n"
        )),
        ["config.yaml: PeerAuthentication default/p: spec.portLevelMtls: needs spec.selector: ports belong to workloads, not namespaces"]
    );
    assert_eq!(
        load_err(&peer_auth(
            "{name: p}",
            "  selector: {app: a}\n  mode: STRICT\n  portLevelMtls: {0: DISABLE}\n"
        )),
        ["config.yaml: PeerAuthentication default/p: spec.portLevelMtls.0: must be between 1 and 65535, got 0"]
    );
    assert_eq!(
        load_err(&peer_auth(
            "{name: p}",
            "  selector: {app: a}\n  mode: STRICT\n  portLevelMtls: {8080: OFF}\n"
        )),
        ["config.yaml: PeerAuthentication default/p: spec.portLevelMtls.8080: unknown variant `OFF`, expected one of `STRICT`, `PERMISSIVE`, `DISABLE`"]
    );
    assert_eq!(
        load_err(&peer_auth(
            "{name: p}",
            "  selector: {app: a}\n  mode: STRICT\n  portLevelMtls: {http: DISABLE}\n"
        )),
        ["config.yaml: PeerAuthentication default/p: spec.portLevelMtls.http: \"http\" is not a port number"]
    );
    assert_eq!(
        load_err(&peer_auth(
            "{name: p}",
            "  selector: {app: a}\n  mode: STRICT\n  portLevelMtls: {70000: DISABLE}\n"
        )),
        ["config.yaml: PeerAuthentication default/p: spec.portLevelMtls.70000: port 70000 is out of range 1..=65535"]
    );
    assert_eq!(
        load_err(&peer_auth(
            "{name: p}",
            "  selector: {app: a}\n  mode: STRICT\n  portLevelMtls: {8080: DISABLE, \"8080\": STRICT}\n"
        )),
        ["config.yaml: PeerAuthentication default/p: spec.portLevelMtls: duplicate port 8080"]
    );
    assert_eq!(
        load_err(&peer_auth("{name: p}", "  mode: strict\n")),
        ["config.yaml: PeerAuthentication default/p: spec.mode: unknown variant `strict`, expected one of `STRICT`, `PERMISSIVE`, `DISABLE`"]
    );
}

#[test]
fn conflicting_peer_authentications_name_both() {
    let text = [
        peer_auth("{name: a}", "  mode: STRICT\n"),
        peer_auth("{name: b}", "  mode: PERMISSIVE\n"),
        peer_auth("{name: web}", "  selector: {app: web}\n  mode: STRICT\n"),
        peer_auth(
            "{name: web-v2}",
            "  selector: {version: v2}\n  mode: DISABLE\n",
        ),
        // Overlaps too, but no workload is selected by both: fine.
        peer_auth(
            "{name: api}",
            "  selector: {app: api, version: v2}\n  mode: DISABLE\n",
        ),
        workload_doc("web-1", "default", "10.0.0.1", "{app: web, version: v1}"),
        workload_doc("web-2", "default", "10.0.0.2", "{app: web, version: v2}"),
        workload_doc("web-3", "default", "10.0.0.3", "{app: web, version: v2}"),
        // Different namespace: not selected by either.
        workload_doc("web-4", "other", "10.0.0.4", "{app: web, version: v2}"),
    ]
    .join("---\n");
    assert_eq!(
        snapshot_err(&text),
        [
            "PeerAuthentication default/b: spec.selector: PeerAuthentication default/a already covers namespace default; only one policy per namespace may omit the selector",
            "PeerAuthentication default/web-v2: spec.selector: selects Workload default/web-2, as does PeerAuthentication default/web; a workload may have only one workload-level policy",
        ]
    );
}

#[test]
fn peer_authentication_lookups() {
    let snap = fixture();
    assert_eq!(snap.peer_authentications().len(), 3);
    let p = snap
        .peer_authentication("bookinfo", "ratings-metrics")
        .unwrap();
    assert_eq!(p.spec.port_level_mtls[&9091], MtlsMode::Permissive);
    assert_eq!(p.mode_for_port(9091), MtlsMode::Permissive);
    assert_eq!(p.mode_for_port(1), MtlsMode::Strict);
    assert!(snap.peer_authentication("bookinfo", "nope").is_none());
}

// ---- MeshConfig ----------------------------------------------------------------------------

#[test]
fn mesh_config_defaults_fill_in_per_field() {
    let snap = fixture();
    let mesh = snap.mesh_config();
    assert_eq!(mesh.trust_domain, "cluster.local");
    assert_eq!(mesh.root_namespace, DEFAULT_ROOT_NAMESPACE);
    assert_eq!(mesh.default_mtls_mode, MtlsMode::Permissive);
    assert_eq!(mesh.default_policy, DefaultPolicy::Deny);
    assert_eq!(mesh.connect_timeout_ms, 2000);
    assert_eq!(mesh.idle_timeout_ms, 3_600_000);
    assert_eq!(
        mesh.health_check,
        HealthCheckSettings {
            interval_ms: 5000,
            timeout_ms: 1000,
            unhealthy_threshold: 3,
            healthy_threshold: 1,
        }
    );
    assert_eq!(
        mesh.identity_of(snap.workload("bookinfo", "reviews-v2").unwrap()),
        "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
    );
    let resource = snap.mesh_config_resource().unwrap();
    assert_eq!(resource.metadata.key(), ObjectKey::new("", "mesh"));
    assert_eq!(resource.metadata, ObjectMeta::cluster_scoped("mesh"));

    // No MeshConfig, or one with no spec: every default.
    let empty = Snapshot::from_resources(Vec::new()).unwrap();
    assert_eq!(*empty.mesh_config(), MeshConfigSpec::default());
    assert!(empty.mesh_config_resource().is_none());
    let bare = load_str(
        "m.yaml",
        "apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\n",
    )
    .unwrap();
    assert_eq!(bare, [Resource::MeshConfig(MeshConfig::default())]);
    assert_eq!(bare[0].key().to_string(), "mesh");
    assert!(!bare[0].is_namespaced());
}

#[test]
fn mesh_config_is_a_cluster_scoped_singleton() {
    assert_eq!(
        load_err("apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: cluster, namespace: default}\nspec: {}\n"),
        [
            "config.yaml: MeshConfig default/cluster: metadata.namespace: MeshConfig is cluster-scoped; omit the namespace (got \"default\")",
            "config.yaml: MeshConfig default/cluster: metadata.name: must be \"mesh\" (MeshConfig is a singleton), got \"cluster\"",
        ]
    );
    // An empty namespace is the same as none.
    load_str(
        "m.yaml",
        "apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: \"\"}\n",
    )
    .unwrap();
    let two = [
        doc("MeshConfig", "{name: mesh}", "  trustDomain: a.example\n"),
        doc("MeshConfig", "{name: mesh}", "  trustDomain: b.example\n"),
    ]
    .join("---\n");
    assert_eq!(
        Snapshot::from_resources(load_str("x.yaml", &two).unwrap())
            .unwrap_err()
            .to_string(),
        "MeshConfig mesh: metadata.name: MeshConfig mesh is defined more than once"
    );
    // Differently named ones are reported even though their names are already wrong.
    let mut other = MeshConfig::default();
    other.metadata.name = "other".into();
    let err =
        Snapshot::from_resources(vec![MeshConfig::default().into(), other.into()]).unwrap_err();
    assert_eq!(
        super::lines(err),
        [
            "MeshConfig other: metadata.name: must be \"mesh\" (MeshConfig is a singleton), got \"other\"",
            "MeshConfig other: metadata.name: only one MeshConfig is allowed (also MeshConfig mesh)",
        ]
    );
}

#[test]
fn mesh_config_values_are_checked() {
    let text = doc(
        "MeshConfig",
        "{name: mesh}",
        "  trustDomain: Cluster.Local
  rootNamespace: mesh_system
  connectTimeoutMs: 0
  idleTimeoutMs: 0
  healthCheck: {intervalMs: 1000, timeoutMs: 2000, unhealthyThreshold: 0, healthyThreshold: 0}
",
    );
    assert_eq!(
        load_err(&text),
        [
            "config.yaml: MeshConfig mesh: spec.trustDomain: \"Cluster.Local\" is not a trust domain (lowercase letters, digits, '.', '-' and '_', at most 255)",
            "config.yaml: MeshConfig mesh: spec.rootNamespace: \"mesh_system\" is not a namespace name (a DNS-1123 label)",
            "config.yaml: MeshConfig mesh: spec.connectTimeoutMs: must be greater than 0",
            "config.yaml: MeshConfig mesh: spec.idleTimeoutMs: must be greater than 0",
            "config.yaml: MeshConfig mesh: spec.healthCheck.timeoutMs: 2000 must not exceed spec.healthCheck.intervalMs (1000)",
            "config.yaml: MeshConfig mesh: spec.healthCheck.unhealthyThreshold: must be at least 1",
            "config.yaml: MeshConfig mesh: spec.healthCheck.healthyThreshold: must be at least 1",
        ]
    );
    assert_eq!(
        load_err(&doc("MeshConfig", "{name: mesh}", "  defaultPolicy: AUDIT\n")),
        ["config.yaml: MeshConfig mesh: spec.defaultPolicy: unknown variant `AUDIT`, expected `ALLOW` or `DENY`"]
    );
    assert_eq!(
        load_err(&doc("MeshConfig", "{name: mesh}", "  trustdomain: x\n")),
        ["config.yaml: MeshConfig mesh: spec.trustdomain: unknown field `trustdomain`, expected one of `trustDomain`, `rootNamespace`, `defaultMtlsMode`, `defaultPolicy`, `connectTimeoutMs`, `idleTimeoutMs`, `healthCheck`, `workloadCertTtlSeconds`, `nodeCertTtlSeconds`, `requestTimeoutMs`, `defaultRetryAttempts`, `observability`"]
    );
    assert!(
        load_err("apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh, uid: x}\n")[0]
            .starts_with("config.yaml: MeshConfig mesh: metadata.uid: unknown field `uid`")
    );
}

#[test]
fn service_health_checks() {
    let snap = fixture();
    let hc = |name| {
        snap.service("bookinfo", name)
            .unwrap()
            .spec
            .health_check
            .clone()
    };
    assert_eq!(
        hc("productpage"),
        Some(HealthCheck {
            http_path: "/healthz".into()
        })
    );
    assert_eq!(hc("ratings"), None);
    let text = doc(
        "Service",
        "{name: s}",
        "  vips: [\"10.96.0.1\"]\n  ports: [{port: 80}]\n  selector: {app: s}\n  healthCheck: {httpPath: healthz}\n",
    );
    assert_eq!(
        load_err(&text),
        ["config.yaml: Service default/s: spec.healthCheck.httpPath: \"healthz\" must start with '/'"]
    );
    assert_eq!(
        load_err(&text.replace("httpPath: healthz", "path: /x")),
        ["config.yaml: Service default/s: spec.healthCheck.path: unknown field `path`, expected `httpPath`"]
    );
}
