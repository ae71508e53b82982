//! Bad input is refused with a message that says what and where, and never disturbs the pods
//! the agent already serves.

use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_tests::mesh::{MeshNode, NODE};
use mesh_tests::{cargo_bin, require_root};

use crate::support::*;

/// `mesh-agent run` on a malformed local config exits non-zero at once, naming the file, the
/// resource and the field, and touches nothing on bpffs.
#[test]
fn malformed_local_config_stops_the_agent_with_a_precise_error() {
    require_root();
    let dir = mesh_tests::temp_dir().unwrap();
    let bpffs = std::path::PathBuf::from(format!("/sys/fs/bpf/{}-bad", mesh_tests::prefix()));
    let cases = [
        (
            "spec:\n  vips: [\"10.96.0.20\"]\n  ports: [{port: 80}]\n  selector: {app: web}\n  \
             vipz: []\n",
            "Service default/web",
            "spec.vipz",
        ),
        (
            "spec:\n  vips: [\"10.96.0.20\"]\n  ports: [{port: 700000}]\n  selector: {app: web}\n",
            "Service default/web",
            "spec.ports[0].port",
        ),
        (
            "spec:\n  vips: [\"10.96.0.300\"]\n  ports: [{port: 80}]\n  selector: {app: web}\n",
            "Service default/web",
            "spec.vips[0]",
        ),
    ];
    for (i, (spec, resource, field)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.yaml"));
        let yaml = format!("apiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web}}\n{spec}");
        std::fs::write(&file, yaml).unwrap();
        let mut child = Command::new(cargo_bin("mesh-agent"))
            .args(["run", "--local-config"])
            .arg(&file)
            .args(["--node-name", NODE, "--admin-addr", "127.0.0.1:1"])
            .arg("--bpffs")
            .arg(&bpffs)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(5)).unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "case {i}: exited {status}");
        let file = file.display().to_string();
        for part in [file.as_str(), resource, field] {
            assert!(stderr.contains(part), "case {i}: {part:?} not in: {stderr}");
        }
        assert!(!bpffs.exists(), "case {i}: {} was created", bpffs.display());
    }
}

/// Every wrong enroll is a clear CLI error, leaves nothing behind, and the agent keeps serving
/// the pods it has; the same pod enrolls fine once the request is right.
#[test]
fn bad_enrollments_are_refused_and_the_agent_keeps_serving() {
    require_root();
    // `extra` is declared in the config but not enrolled yet.
    let mesh = ClientWeb::with_declared(19, &[("extra", 4)]);
    let extra = &mesh.declared[0];
    mesh.assert_vip_works();

    let args = MeshNode::enroll_args(extra, "extra-uid", "extra");
    let with = |key: &str, value: &str| -> Vec<String> {
        let mut a = args.clone();
        let at = a.iter().position(|x| x == key).unwrap();
        a[at + 1] = value.to_string();
        a
    };
    let missing_netns = "/run/netns/mesh-tests-no-such-netns";
    let missing_cgroup = extra.cgroup_path().with_file_name("no-such-cgroup");
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            with("--netns", missing_netns),
            vec!["extra-uid".into(), missing_netns.into()],
        ),
        (
            with("--cgroup", &missing_cgroup.display().to_string()),
            vec![
                "extra-uid".into(),
                format!("cgroup {} does not exist", missing_cgroup.display()),
            ],
        ),
        (
            MeshNode::enroll_args(&mesh.client, "client-uid", "client"),
            vec!["client-uid".into(), "already enrolled".into()],
        ),
        // Another pod's address: refused by the declaration check, which comes first (an IP
        // two Workloads declare is refused when the config is applied).
        (
            with("--ip", &mesh.web.ip().to_string()),
            vec![format!(
                "--ip {} is not an address of Workload default/extra",
                mesh.web.ip()
            )],
        ),
        (
            with("--ip", "10.1.2.3"),
            vec!["--ip 10.1.2.3 is not an address of Workload default/extra".into()],
        ),
        (
            with("--uid", "ghost-uid"),
            vec![
                "Workload default/extra is declared with uid \"extra-uid\", not \"ghost-uid\""
                    .into(),
            ],
        ),
    ];
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = cli_fails(&mesh.node, &args);
        for part in expected {
            assert!(
                err.contains(part.as_str()),
                "{args:?}: {part:?} not in: {err}"
            );
        }
        assert!(!err.contains("panicked"), "{err}");
        // Nothing of the failed attempt is left, and the others are untouched.
        let status = Status::of(&mesh.node);
        assert_eq!(
            status.pod_names(),
            ["default/client", "default/web"],
            "{args:?}"
        );
        let pods = mesh.node.bpffs().join("pods");
        for uid in ["extra-uid", "ghost-uid"] {
            assert!(!pods.join(uid).exists(), "{args:?}: pins of {uid} left");
        }
    }
    let before = Status::of(&mesh.node);
    mesh.assert_vip_works();
    let after = Status::of(&mesh.node);
    assert_eq!(
        after.pod("default/client", "outbound", "connections"),
        before.pod("default/client", "outbound", "connections") + 1
    );

    // Unenrolling a pod that is not enrolled is an error too.
    let err = cli_fails(&mesh.node, &["unenroll", "--uid", "ghost-uid"]);
    assert!(err.contains("no pod with this uid is enrolled"), "{err}");

    // The right request for the same pod works: failed attempts left nothing in the way.
    mesh.node.enroll(extra, "extra-uid", "extra").unwrap();
    let _extra_server = http_server(extra, "extra");
    let r = get(&mesh.client, &url(extra.ip(), APP_PORT));
    assert_eq!(r.name, "extra");
    assert_eq!(r.peer.ip(), mesh.client.ip(), "{r:?}");
    assert_eq!(
        Status::of(&mesh.node).pod("default/extra", "inbound", "connections"),
        1
    );
}
