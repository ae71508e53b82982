//! Changes that must not take effect: invalid resources and conflicts (refused by meshctl and
//! the control plane), a config the agent cannot apply (NACKed, the old one keeps serving),
//! and callers without the admin token.

use mesh_tests::mesh::{service_yaml, NODE};
use mesh_tests::{require_root, wait_until};

use crate::support::*;

/// Everything `meshctl get` shows, to prove a refused change changed nothing.
fn everything(mesh: &Mesh) -> Vec<String> {
    ["services", "workloads", "meshconfig"]
        .map(|kind| mesh.cp.meshctl_ok(&["get", kind, "-o", "json"]).unwrap())
        .to_vec()
}

/// A resource that fails validation (a port out of range, an unknown field) or conflicts with
/// the rest of the config (a second service on the same VIP) is refused with the field or the
/// conflict named; nothing changes: not the resources, not the version, not the agent.
#[test]
fn invalid_and_conflicting_resources_change_nothing() {
    require_root();
    let mesh = Mesh::start(35, &[web("web", "web")], &[]);
    let version = mesh.settle();
    let before = everything(&mesh);

    let bad_port = "apiVersion: mesh/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  vips: [\"10.96.0.20\"]\n  ports: [{port: 80, targetPort: 70000}]\n  selector: {app: web}\n";
    let err = apply_fails(&mesh.cp, bad_port);
    eprintln!("port 70000: {err}");
    assert!(err.contains("spec.ports[0].targetPort"), "{err}");
    assert!(err.contains("70000"), "{err}");
    assert!(err.contains(".yaml"), "the file is not named: {err}");

    let unknown = "apiVersion: mesh/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  vips: [\"10.96.0.20\"]\n  ports: [{port: 80, targetPort: 8080}]\n  selector: {app: web}\n  sessionAffinity: ClientIP\n";
    let err = apply_fails(&mesh.cp, unknown);
    eprintln!("unknown field: {err}");
    assert!(err.contains("sessionAffinity"), "{err}");

    // Valid on its own; conflicts with Service web. The same file also creates an unrelated,
    // valid service: an apply is all or nothing.
    let conflict = [
        service_yaml("fine", &[ip("10.96.0.30")], 80, APP_PORT, "web"),
        service_yaml("web-copy", &[vip()], 80, APP_PORT, "web"),
    ]
    .concat();
    let err = apply_fails(&mesh.cp, &conflict);
    eprintln!("duplicate VIP: {err}");
    assert!(err.contains(VIP), "{err}");
    assert!(err.contains("web-copy"), "{err}");
    assert!(
        err.contains("default/web"),
        "the other service is not named: {err}"
    );

    assert_eq!(
        everything(&mesh),
        before,
        "a refused apply changed the config"
    );
    let not_found = mesh
        .cp
        .meshctl(&["get", "service", "default/fine"])
        .unwrap();
    assert!(!not_found.status.success());
    assert!(
        String::from_utf8_lossy(&not_found.stderr).contains("not found"),
        "{not_found:?}"
    );
    let status = cp_status(&mesh.cp);
    assert_eq!(status["version"], version, "{status}");
    let agent = agent_entry(&status, NODE).unwrap();
    assert_eq!(agent["ackedVersion"], version, "{agent}");
    assert_eq!(agent["lastNack"], "", "{agent}");
    assert_eq!(AgentStatus::of(&mesh.node).config_version(), version);
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
}

/// An agent whose capture map holds 4 destinations: a config that fits is applied; one that
/// needs more is NACKed (the reason in `meshctl status`), the agent keeps serving the old
/// config, and once the config fits again it ACKs the newest version.
#[test]
fn config_the_agent_cannot_apply_is_nacked_and_the_old_one_serves() {
    require_root();
    // client + web + the VIP: 3 destinations.
    let mesh = Mesh::start(36, &[web("web", "web")], &["--capture-capacity", "4"]);
    let vip2 = ip("10.96.0.21");
    mesh.cp
        .apply(&service_yaml("web-2", &[vip2], 80, APP_PORT, "web"))
        .unwrap();
    let good = mesh.settle();
    assert_eq!(AgentStatus::of(&mesh.node).capture().len(), 4);
    assert_eq!(mesh.get_vip_through_mesh(vip2), "web");

    // A fifth destination.
    let vip3 = ip("10.96.0.22");
    mesh.cp
        .apply(&service_yaml("web-3", &[vip3], 80, APP_PORT, "web"))
        .unwrap();
    let rejected = cp_version(&mesh.cp);
    assert!(rejected > good);
    let mut agent = serde_json::Value::Null;
    let nacked = wait_until(T, || {
        agent = agent_entry(&cp_status(&mesh.cp), NODE).unwrap_or_default();
        agent["lastNackVersion"] == rejected
    });
    assert!(nacked, "no NACK of version {rejected}: {agent}");
    let reason = agent["lastNack"].as_str().unwrap_or_default();
    assert!(reason.contains("capture map"), "{reason}");
    assert!(reason.contains("--capture-capacity"), "{reason}");
    assert_eq!(agent["ackedVersion"], good, "{agent}");
    assert_eq!(agent["connected"], true, "{agent}");
    let table = mesh.cp.meshctl_ok(&["status"]).unwrap();
    assert!(
        table.contains(&format!("v{rejected}: ")) && table.contains("capture map"),
        "LAST NACK missing from the table:\n{table}"
    );
    // The agent still serves the last good config, all of it and only it.
    let local = AgentStatus::of(&mesh.node);
    assert_eq!(local.config_version(), good);
    assert_eq!(local.capture().len(), 4, "{:?}", local.capture());
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
    assert_eq!(mesh.get_vip_through_mesh(vip2), "web");
    get_fails(&mesh.client, &url(vip3, 80), 300);

    // Fits again: the newest version is ACKed.
    mesh.cp
        .meshctl_ok(&["delete", "service", "default/web-2"])
        .unwrap();
    let newest = wait_synced(&mesh.cp, &mesh.node);
    assert!(newest > rejected);
    let local = AgentStatus::of(&mesh.node);
    assert_eq!(local.capture().len(), 4, "{:?}", local.capture());
    assert_eq!(mesh.get_vip_through_mesh(vip3), "web");
    assert_eq!(mesh.get_vip_through_mesh(vip()), "web");
    get_fails(&mesh.client, &url(vip2, 80), 300);
}

/// Without the right admin token meshctl is refused, saying why, and nothing is applied;
/// reads are refused too.
#[test]
fn wrong_or_missing_token_is_refused() {
    require_root();
    let cp = mesh_tests::control::ControlPlane::start_embedded().unwrap();
    let server = cp.url();
    let ca = cp.ca_file().display().to_string();
    let yaml = service_yaml("web", &[vip()], 80, APP_PORT, "web");
    let file = write_temp(&yaml);
    let file = file.path().display().to_string();
    let dir = mesh_tests::temp_dir().unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "0123456789abcdef\n").unwrap();
    let wrong = wrong.display().to_string();
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.display().to_string();
    let missing = dir.path().join("missing.token").display().to_string();

    let refused = |args: &[&str], want: &str| {
        let mut all = vec!["--server", &server, "--ca-file", &ca];
        all.extend_from_slice(args);
        let out = meshctl_raw(&all, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "meshctl {args:?} succeeded");
        assert!(stderr.contains(want), "meshctl {args:?}: {stderr}");
        eprintln!("meshctl {args:?}: {}", stderr.trim());
    };
    refused(
        &["--token-file", &wrong, "apply", "-f", &file],
        "refused: wrong admin token",
    );
    refused(
        &["--token", "not-the-token", "apply", "-f", &file],
        "refused: wrong admin token",
    );
    refused(
        &["--token-file", &wrong, "get", "services"],
        "refused: wrong admin token",
    );
    refused(
        &["--token-file", &wrong, "status"],
        "refused: wrong admin token",
    );
    // No token at all: an empty file, or none.
    refused(&["--token-file", &empty, "apply", "-f", &file], "refused: ");
    refused(&["--token-file", &missing, "apply", "-f", &file], &missing);

    // Nothing was applied.
    let services = cp.meshctl_ok(&["get", "services", "-o", "json"]).unwrap();
    assert_eq!(services.trim(), "[]", "{services}");
    let metrics = cp.meshctl_ok(&["metrics"]).unwrap();
    assert!(!metrics.contains("Service"), "{metrics}");
    // The right token works.
    let token = std::fs::read_to_string(cp.token_file()).unwrap();
    let out = meshctl_raw(
        &[
            "--server",
            &server,
            "--ca-file",
            &ca,
            "--token",
            token.trim(),
            "apply",
            "-f",
            &file,
        ],
        None,
    );
    assert_eq!(
        stdout_ok("apply with the right token", &out)
            .unwrap()
            .trim(),
        "Service default/web created"
    );
    // The token file is for the operator only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cp.token_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token mode {mode:o}");
}
