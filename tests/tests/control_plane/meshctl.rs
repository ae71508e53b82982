//! meshctl's commands against a real control plane with an agent following it.

use mesh_tests::mesh::NODE;
use mesh_tests::require_root;
use serde_json::Value;

use crate::support::*;

/// A TCP route (Service web has no HTTP port, so an HTTP match would be refused).
const ROUTE: &str = "apiVersion: mesh/v1\nkind: Route\nmetadata: {name: web-route}\nspec:\n  service: web\n  timeoutMs: 2000\n  rules:\n  - backends: [{service: web, weight: 1}]\n";
const POLICY: &str = "apiVersion: mesh/v1\nkind: AuthorizationPolicy\nmetadata: {name: web-allow}\nspec:\n  selector: {app: web}\n  action: ALLOW\n  rules:\n  - from: {ipBlocks: [\"10.0.0.0/8\"]}\n    to: {ports: [8080]}\n";

/// get -o json/yaml round trips (applying the output again changes nothing), apply from
/// stdin, delete, endpoints register/list/deregister, rules add/list for a Route and an
/// AuthorizationPolicy, config get/set, ca-cert, metrics; the agent ACKs every resulting
/// version.
#[test]
fn meshctl_commands_work_end_to_end() {
    require_root();
    let mesh = Mesh::start(38, &[web("web", "web")], &[]);
    let cp = &mesh.cp;
    let mut version = mesh.settle();

    // get -o yaml, applied again: unchanged, and no new version.
    let yaml = cp.meshctl_ok(&["get", "services", "-o", "yaml"]).unwrap();
    assert!(
        yaml.contains("kind: Service") && yaml.contains(VIP),
        "{yaml}"
    );
    let again = cp.apply(&yaml).unwrap();
    assert_eq!(again.trim(), "Service default/web unchanged", "{again}");
    // get -o json: an array of resources; each one, as a YAML document (JSON is YAML), applies
    // unchanged too (through stdin this time).
    let json: Value =
        serde_json::from_str(&cp.meshctl_ok(&["get", "workloads", "-o", "json"]).unwrap()).unwrap();
    let workloads = json.as_array().expect("get -o json prints an array");
    assert_eq!(workloads.len(), 2, "{json}");
    assert!(workloads.iter().all(|w| w["kind"] == "Workload"), "{json}");
    let docs: String = workloads.iter().map(|w| format!("---\n{w}\n")).collect();
    let token = std::fs::read_to_string(cp.token_file()).unwrap();
    let token = token.trim();
    let server = cp.url();
    let out = meshctl_raw(
        &[
            "--server",
            &server,
            "--ca-file",
            &cp.ca_file().display().to_string(),
            "--token",
            token,
            "apply",
            "-f",
            "-",
        ],
        Some(&docs),
    );
    let applied = stdout_ok("apply -f - of get -o json", &out).unwrap();
    assert_eq!(applied.matches(" unchanged").count(), 2, "{applied}");
    // One by name, in the table.
    let one = cp.meshctl_ok(&["get", "workload", "default/web"]).unwrap();
    assert!(one.contains("Workload") && one.contains("node-1"), "{one}");
    assert_eq!(
        cp_version(cp),
        version,
        "unchanged applies made a new version"
    );
    // A dry run stores nothing.
    let extra = mesh_tests::mesh::service_yaml("extra", &[ip("10.96.0.40")], 80, APP_PORT, "web");
    let file = write_temp(&extra);
    let dry = cp
        .meshctl_ok(&[
            "apply",
            "--dry-run",
            "-f",
            &file.path().display().to_string(),
        ])
        .unwrap();
    assert!(dry.contains("created (dry run)"), "{dry}");
    assert!(
        cp.meshctl(&["get", "service", "extra"])
            .unwrap()
            .status
            .code()
            != Some(0)
    );

    // delete
    cp.apply(&extra).unwrap();
    version = wait_synced(cp, &mesh.node);
    assert_eq!(mesh.get_vip_through_mesh(ip("10.96.0.40")), "web");
    let deleted = cp
        .meshctl_ok(&["delete", "service", "default/extra"])
        .unwrap();
    assert_eq!(deleted.trim(), "Service default/extra deleted");
    let gone = cp.meshctl(&["delete", "service", "default/extra"]).unwrap();
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("not found"),
        "{gone:?}"
    );
    let v = wait_synced(cp, &mesh.node);
    assert!(v > version);
    assert!(!AgentStatus::of(&mesh.node)
        .capture()
        .contains(&"10.96.0.40/32".to_owned()));

    // endpoints register / list / deregister
    let registered = cp
        .meshctl_ok(&[
            "endpoints",
            "register",
            "--name",
            "web-vm",
            "--uid",
            "vm-1",
            "--ip",
            "10.250.0.9",
            "--node",
            "node-2",
            "--label",
            "app=web",
            "--label",
            "version=vm",
        ])
        .unwrap();
    assert_eq!(registered.trim(), "Workload default/web-vm created");
    let list = cp.meshctl_ok(&["endpoints", "list", "web"]).unwrap();
    let row = list
        .lines()
        .find(|l| l.starts_with("default/web-vm"))
        .unwrap_or_else(|| panic!("no web-vm in:\n{list}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // Default weight, no locality.
    assert_eq!(
        cells[1..],
        ["10.250.0.9", "node-2", "100", "-", "unknown"],
        "{list}"
    );
    assert_eq!(endpoints(cp, "web")["default/web"], "healthy", "{list}");
    let workload: Value = serde_json::from_str(
        &cp.meshctl_ok(&["get", "workload", "web-vm", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(workload[0]["spec"]["labels"]["version"], "vm", "{workload}");
    wait_synced(cp, &mesh.node);
    let services = AgentStatus::of(&mesh.node).0["services"].clone();
    assert_eq!(
        services[0]["endpoints"].as_array().unwrap().len(),
        2,
        "{services}"
    );
    let deregistered = cp
        .meshctl_ok(&["endpoints", "deregister", "default/web-vm"])
        .unwrap();
    assert_eq!(deregistered.trim(), "Workload default/web-vm deregistered");
    assert_eq!(endpoints(cp, "web").len(), 1);
    let missing = cp.meshctl(&["endpoints", "list", "nope"]).unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not found"),
        "{missing:?}"
    );

    // rules add / list
    let route = write_temp(ROUTE);
    let added = cp
        .meshctl_ok(&["rules", "add", "-f", &route.path().display().to_string()])
        .unwrap();
    assert_eq!(added.trim(), "Route default/web-route created");
    let policy = write_temp(POLICY);
    let added = cp
        .meshctl_ok(&["rules", "add", "-f", &policy.path().display().to_string()])
        .unwrap();
    assert_eq!(
        added.trim(),
        "AuthorizationPolicy default/web-allow created"
    );
    let traffic = cp.meshctl_ok(&["rules", "list", "traffic"]).unwrap();
    assert!(
        traffic.contains("Route") && traffic.contains("web-route"),
        "{traffic}"
    );
    // Each route's table row shows its service, how many rules and each rule in short.
    assert!(
        traffic.contains("service=web rules=1 * -> web"),
        "{traffic}"
    );
    assert!(!traffic.contains("web-allow"), "{traffic}");
    let security = cp.meshctl_ok(&["rules", "list", "security"]).unwrap();
    assert!(
        security.contains("AuthorizationPolicy") && security.contains("web-allow"),
        "{security}"
    );
    assert!(!security.contains("web-route"), "{security}");
    // A policy's row shows its action and rule count (and `http` if judged per request).
    assert!(security.contains("action=ALLOW rules=1"), "{security}");
    let not_a_rule = write_temp(&mesh_tests::mesh::service_yaml(
        "x",
        &[ip("10.96.0.41")],
        80,
        80,
        "x",
    ));
    let out = cp
        .meshctl(&[
            "rules",
            "add",
            "-f",
            &not_a_rule.path().display().to_string(),
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not Service"),
        "{out:?}"
    );
    wait_synced(cp, &mesh.node);

    // config get / set
    let config = cp.meshctl_ok(&["config", "get"]).unwrap();
    assert!(config.contains("kind: MeshConfig"), "{config}");
    assert!(config.contains("intervalMs: 200"), "{config}");
    let changed = config.replace("trustDomain: cluster.local", "trustDomain: example.org");
    assert_ne!(changed, config, "{config}");
    let file = write_temp(&changed);
    let set = cp
        .meshctl_ok(&["config", "set", "-f", &file.path().display().to_string()])
        .unwrap();
    assert_eq!(set.trim(), "MeshConfig mesh configured");
    let config: Value =
        serde_json::from_str(&cp.meshctl_ok(&["config", "get", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(config[0]["spec"]["trustDomain"], "example.org", "{config}");
    assert_eq!(
        config[0]["spec"]["healthCheck"]["intervalMs"], 200,
        "{config}"
    );
    wait_synced(cp, &mesh.node);

    // ca-cert: one PEM certificate.
    let pem = cp.meshctl_ok(&["ca-cert"]).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert!(
        pem.trim_end().ends_with("-----END CERTIFICATE-----"),
        "{pem}"
    );
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1, "{pem}");
    assert_eq!(cp.meshctl_ok(&["ca-cert"]).unwrap(), pem, "the CA changed");

    // metrics
    let metrics = cp.meshctl_ok(&["metrics"]).unwrap();
    let value = |name: &str| -> String {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
            .trim()
            .to_owned()
    };
    assert_eq!(value("agents connected:"), "1", "{metrics}");
    assert_eq!(value("version:"), cp_version(cp).to_string(), "{metrics}");
    let acks: u64 = value("acks / nacks:")
        .split(" / ")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(acks >= 5, "{metrics}");
    assert!(value("acks / nacks:").ends_with("/ 0"), "{metrics}");
    for (kind, count) in [
        ("Service", 1),
        ("Workload", 2),
        ("Route", 1),
        ("AuthorizationPolicy", 1),
        ("MeshConfig", 1),
    ] {
        assert_eq!(value(kind), count.to_string(), "{kind}: {metrics}");
    }
    let status = cp_status(cp);
    assert_eq!(
        agent_entry(&status, NODE).unwrap()["lastNack"],
        "",
        "{status}"
    );
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
}
