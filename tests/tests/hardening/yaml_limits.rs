//! Finding: 200 KB of 100,000 nested flow sequences (`[[[[...`) took 15 s of CPU in
//! `meshctl apply` and 17 s in the agent (blocking its main loop on SIGHUP) before being
//! rejected. Resource and settings files now have a size, nesting and alias-expansion limit,
//! checked before the real parse: each tool refuses such a file at once, naming the file and
//! the limit.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::{service_yaml, MeshNode};
use mesh_tests::observe::AgentStatus;
use mesh_tests::{cargo_bin, require_root, temp_dir, wait_until, PodProcess};

/// 100,000 levels of flow sequences and mappings. libyaml's cost grows with the square of the
/// depth, more steeply for mappings: 100,000 `[` took 1.5 s here (15 s on the prober's
/// machine), 10,000 `{a: ` half a second, and this well over the 10 s the tests wait.
fn deep_yaml() -> String {
    "[{a: ".repeat(50_000)
}

/// Fast enough for a person (the old code: 15 s and more).
const FAST: Duration = Duration::from_secs(2);

const LIMIT: &str = "deeper than the limit of 64 levels";

/// Runs `command` to its end (killed after 10 s: the old code took minutes), failing unless it exits non-zero within
/// [`FAST`]; its stderr.
fn fails_fast(command: Command) -> String {
    let started = Instant::now();
    let out: Output = PodProcess::spawn(command)
        .unwrap()
        .wait_output(Duration::from_secs(10))
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert!(took < FAST, "took {took:?} to fail: {stderr}");
    stderr
}

fn assert_names(stderr: &str, file: &Path) {
    let file = file.display().to_string();
    assert!(
        stderr.contains(&format!("{file}: ")) && stderr.contains(LIMIT),
        "the error does not name {file} and the limit: {stderr}"
    );
}

#[test]
fn meshctl_apply_refuses_deep_yaml_at_once() {
    require_root();
    let cp = ControlPlane::start_embedded().unwrap();
    let dir = temp_dir().unwrap();
    let file = dir.path().join("deep.yaml");
    std::fs::write(&file, deep_yaml()).unwrap();
    let mut command = Command::new(cargo_bin("meshctl"));
    command
        .args(["--server", &cp.url()])
        .arg("--token-file")
        .arg(cp.token_file())
        .arg("--ca-file")
        .arg(cp.ca_file())
        .arg("apply")
        .arg("-f")
        .arg(&file);
    assert_names(&fails_fast(command), &file);
    // JSON is read as YAML: the same limit.
    let json = dir.path().join("deep.json");
    std::fs::write(&json, "{\"a\": ".repeat(100_000)).unwrap();
    let mut command = Command::new(cargo_bin("meshctl"));
    command
        .args(["--server", &cp.url()])
        .arg("--token-file")
        .arg(cp.token_file())
        .arg("--ca-file")
        .arg(cp.ca_file())
        .args(["apply", "--dry-run", "-f"])
        .arg(&json);
    assert_names(&fails_fast(command), &json);
}

/// `run --local-config` and `run --config` (the settings file) both refuse it at start-up,
/// before anything is loaded into the kernel.
#[test]
fn the_agent_refuses_deep_yaml_at_start() {
    require_root();
    let dir = temp_dir().unwrap();
    let deep = dir.path().join("deep.yaml");
    std::fs::write(&deep, deep_yaml()).unwrap();
    let run = |source: &str| {
        let mut command = Command::new(cargo_bin("mesh-agent"));
        command
            .args(["run", source])
            .arg(&deep)
            .arg("--bpffs")
            .arg(dir.path().join("bpffs-never-used"))
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        command
    };
    assert_names(&fails_fast(run("--local-config")), &deep);
    assert_names(&fails_fast(run("--config")), &deep);
}

/// SIGHUP with a deep file: rejected within a second or two, and the agent keeps serving the
/// last good config (the old code blocked its main loop for 17 s).
#[test]
fn the_agent_rejects_a_deep_reload_at_once() {
    require_root();
    let good = service_yaml("web", &["10.96.0.20".parse().unwrap()], 80, 8080, "web");
    let mut node = MeshNode::start(&good).unwrap();
    let version = AgentStatus::of(&node).config_version();
    node.reload_config(&deep_yaml()).unwrap();
    let agent = node.agent().unwrap();
    let rejected = wait_until(FAST, || agent.log().contains("reload rejected"));
    let log = agent.log();
    assert!(rejected, "not rejected within {FAST:?}:\n{log}");
    let rejection = log
        .lines()
        .rfind(|l| l.contains("reload rejected"))
        .unwrap();
    assert_names(rejection, node.config_path());
    assert!(node.agent().unwrap().is_running());
    let status = AgentStatus::of(&node);
    assert_eq!(status.config_version(), version);
    assert_eq!(
        status.0["services"][0]["service"], "default/web",
        "{}",
        status.0
    );
}
