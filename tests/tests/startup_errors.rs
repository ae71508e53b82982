//! The agent refuses to start without what it needs, and says exactly what is missing.

use std::process::Command;

use mesh_tests::{cargo_bin, require_root, temp_dir};

fn agent_error(prefix: &[&str], args: &[&str]) -> String {
    let mut command = Command::new(prefix[0]);
    command
        .args(&prefix[1..])
        .arg(cargo_bin("mesh-agent"))
        .args(args);
    let out = command.output().expect("run mesh-agent");
    assert!(!out.status.success(), "mesh-agent {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_bpf_permission_the_agent_names_the_missing_capabilities() {
    require_root();
    let dir = temp_dir().unwrap();
    let state = dir.path().join("state");
    let bpffs = format!("/sys/fs/bpf/{}-noperm", mesh_tests::prefix());
    // Drop every privilege: uid/gid nobody, no capabilities.
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ];
    let _ = std::fs::create_dir_all(&bpffs);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let stderr = agent_error(
        &nobody,
        &[
            "run",
            "--bpffs",
            &bpffs,
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_dir_all(&bpffs);
    assert!(
        stderr.contains("no BPF permission") && stderr.contains("CAP_BPF (to load eBPF programs"),
        "unexpected error: {stderr}"
    );
}

#[test]
fn a_cgroup_root_that_is_not_cgroup_v2_is_named() {
    require_root();
    let dir = temp_dir().unwrap();
    let not_cgroup = dir.path().display().to_string();
    let stderr = agent_error(&["env"], &["run", "--cgroup-root", &not_cgroup]);
    assert!(
        stderr.contains(&format!("{not_cgroup} is not a cgroup v2 directory")),
        "unexpected error: {stderr}"
    );
}

#[test]
fn a_bpffs_dir_on_another_filesystem_is_named() {
    require_root();
    let dir = temp_dir().unwrap();
    let not_bpffs = dir.path().display().to_string();
    let state = dir.path().join("state").display().to_string();
    let stderr = agent_error(
        &["env"],
        &["run", "--bpffs", &not_bpffs, "--state-dir", &state],
    );
    assert!(
        stderr.contains(&format!("{not_bpffs} is not on a BPF filesystem")),
        "unexpected error: {stderr}"
    );
}
