//! Findings 1 and 2: enrollment of the node's own network namespace or cgroup, and a path
//! that blocks when opened (a FIFO) given as `--netns`.
//!
//! Enrolling the node's namespace would steer every connection to the node's addresses into
//! the mesh (and refuse it, STRICT), pinned beyond the agent's life; the cgroup root would
//! capture every process of the node. A FIFO without a writer used to block the agent's
//! runtime thread in `open()` while it held the pods lock: every pod's traffic, `status`,
//! `/healthz/ready` and other (un)enrollments waited for a writer.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mesh_tests::mesh::MeshNode;
use mesh_tests::{cargo_bin, require_root, Pod};

use crate::support::*;

/// Runs `mesh-agent <args>` against `node`, failing the test if it has not finished within
/// `limit` (a CLI call the agent never answers must not hang the test).
fn cli_within(node: &MeshNode, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(cargo_bin("mesh-agent"))
        .args(args)
        .arg("--state-dir")
        .arg(node.state_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running mesh-agent");
    if let Err(e) = wait_exit(&mut child, limit) {
        panic!("mesh-agent {args:?}: {e:#}");
    }
    child.wait_with_output().unwrap()
}

/// The enroll arguments of `pod` (Workload `name`) with `key`'s value replaced.
fn enroll_with(pod: &Pod, name: &str, key: &str, value: &str) -> Vec<String> {
    let mut args = MeshNode::enroll_args(pod, &format!("{name}-uid"), name);
    let at = args.iter().position(|a| a == key).unwrap();
    args[at + 1] = value.to_string();
    args
}

/// A TCP listener of the node itself (root namespace) on the bridge address: what a node
/// cut off by a wrong enrollment stops answering.
fn node_listener(mesh: &ClientWeb) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((mesh.bridge.ip(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The kernel completes the handshake from the listener's backlog: a connect that succeeds
/// proves the node's own address is reachable around the mesh as it should be.
fn assert_node_reachable(from: &Pod, node: SocketAddr, after: &str) {
    let peer = peername(from, node);
    assert_eq!(peer, node.to_string(), "after {after}");
}

/// The agent's cgroup v2 directory.
fn cgroup_of(pid: u32) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    mesh_tests::cgroup2_root()
        .unwrap()
        .join(relative.trim_start_matches('/'))
}

/// `--netns` of the node's own or init namespace, a namespace without the pod's IPs, the
/// cgroup root and a cgroup holding the agent are each refused with a message naming what is
/// wrong; nothing of the attempts is left, the node's own address stays reachable, and the
/// right request for the same pod then works.
#[test]
fn enrolling_the_nodes_own_namespace_or_cgroup_is_refused() {
    require_root();
    let mut mesh = ClientWeb::with_declared(47, &[("extra", 4), ("other", 5)]);
    let agent_pid = mesh.node.agent().unwrap().pid();
    let (extra, other) = (&mesh.declared[0], &mesh.declared[1]);
    let (_listener, node_addr) = node_listener(&mesh);
    assert_node_reachable(&mesh.client, node_addr, "setup");

    let init = "/proc/1/ns/net";
    // Where even root may not read pid 1's namespaces (a sandbox), the agent cannot either.
    let init_expected = if std::fs::File::open(init).is_ok() {
        "is the node's init network namespace"
    } else {
        "/proc/1/ns/net cannot be opened"
    };
    let own = [
        "is the node's init network namespace",
        "is the agent's own network namespace",
    ];
    let agent_netns = format!("/proc/{agent_pid}/ns/net");
    let root = mesh_tests::cgroup2_root().unwrap();
    let root = root.display().to_string();
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        // First the one the old agent accepted without harming the node.
        (
            enroll_with(
                extra,
                "extra",
                "--netns",
                &other.netns_path().display().to_string(),
            ),
            vec![format!(
                "holds none of the pod's IPs ({}); it holds {}, {}",
                extra.ip(),
                other.ip(),
                other.ip6()
            )],
        ),
        (
            enroll_with(extra, "extra", "--netns", "/proc/self/ns/net"),
            own.iter().map(|s| s.to_string()).collect(),
        ),
        (
            enroll_with(extra, "extra", "--netns", &agent_netns),
            own.iter().map(|s| s.to_string()).collect(),
        ),
        (
            enroll_with(extra, "extra", "--netns", init),
            vec![init_expected.to_string()],
        ),
        (
            enroll_with(extra, "extra", "--cgroup", &root),
            vec![format!("cgroup {root} is the cgroup root")],
        ),
    ];
    for (args, any_of) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = cli_fails(&mesh.node, &args);
        assert!(
            err.contains("enroll extra-uid") && any_of.iter().any(|m| err.contains(m.as_str())),
            "{args:?}: none of {any_of:?} in: {err}"
        );
        assert_nothing_left(&mesh, &args);
        assert_node_reachable(&mesh.client, node_addr, &format!("{args:?}"));
    }

    // A cgroup the agent runs in (here: the agent moved into extra's cgroup for the attempt).
    let agent_cgroup = cgroup_of(agent_pid);
    let move_agent = |to: &Path| {
        std::fs::write(to.join("cgroup.procs"), agent_pid.to_string()).unwrap();
    };
    move_agent(&extra.cgroup_path());
    let args = MeshNode::enroll_args(extra, "extra-uid", "extra");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = cli_fails(&mesh.node, &args);
    move_agent(&agent_cgroup);
    let expected = format!(
        "cgroup {} contains the agent's own process",
        extra.cgroup_path().display()
    );
    assert!(err.contains(&expected), "{expected:?} not in: {err}");
    assert_nothing_left(&mesh, &args);
    assert_node_reachable(&mesh.client, node_addr, "the cgroup holding the agent");

    // The right request works: the failed attempts left nothing in the way.
    mesh.node.enroll(extra, "extra-uid", "extra").unwrap();
    let _server = http_server(extra, "extra");
    assert_eq!(get(&mesh.client, &url(extra.ip(), APP_PORT)).name, "extra");
    assert_node_reachable(&mesh.client, node_addr, "the right enrollment");
    mesh.assert_vip_works();
}

fn assert_nothing_left(mesh: &ClientWeb, args: &[&str]) {
    assert_eq!(
        Status::of(&mesh.node).pod_names(),
        ["default/client", "default/web"],
        "{args:?}"
    );
    let pins = mesh.node.bpffs().join("pods").join("extra-uid");
    assert!(!pins.exists(), "{args:?}: pins of extra-uid left");
}

/// A saved enrollment that the checks refuse (as an older agent may have accepted it: here
/// a namespace holding none of the pod's IPs) is not attached again after a restart: its
/// links are unpinned and it is dropped from the state, with an error in the log saying why.
/// The other pods resume as usual.
#[test]
fn a_saved_enrollment_that_is_now_refused_is_cleaned_up_on_restart() {
    require_root();
    let mut mesh = ClientWeb::with_declared(49, &[("extra", 4), ("other", 5)]);
    mesh.node
        .enroll(&mesh.declared[0], "extra-uid", "extra")
        .unwrap();
    let other_netns = mesh.declared[1].netns_path().display().to_string();
    mesh.node.stop_agent().unwrap();
    let state = mesh.node.state_dir().join("pods.json");
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    saved["pods"]["extra-uid"]["request"]["netns"] = other_netns.clone().into();
    std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();
    let pins = mesh.node.bpffs().join("pods").join("extra-uid");
    assert!(pins.exists(), "the stopped agent's links stay pinned");

    mesh.node.start_agent().unwrap();
    assert_eq!(
        Status::of(&mesh.node).pod_names(),
        ["default/client", "default/web"]
    );
    assert!(!pins.exists(), "the refused pod's links are still pinned");
    let log = mesh.node.agent().unwrap().log();
    let why = format!("netns {other_netns} holds none of the pod's IPs");
    assert!(
        log.contains("saved pod must not be enrolled") && log.contains(&why),
        "{why:?} not in the log:\n{log}"
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(!saved.contains("extra-uid"), "{saved}");
    mesh.assert_vip_works();
}

/// A saved pod whose resume fails for a passing reason (here its proxy port 15001 is taken
/// in its namespace) stays in the state file with its capture attached (failing closed), and
/// unenroll still takes it out: links unpinned, state entry gone. It used to be dropped from
/// the state by the resume's save, and unenroll answered "no pod with this uid".
#[test]
fn a_pod_whose_resume_failed_stays_saved_and_can_be_unenrolled() {
    require_root();
    let mut mesh = ClientWeb::with_declared(43, &[("extra", 4)]);
    let extra = &mesh.declared[0];
    mesh.node.enroll(extra, "extra-uid", "extra").unwrap();
    mesh.node.stop_agent().unwrap();
    // Bound in the pod's namespace while no agent runs: the resumed pod's listener can't bind.
    let squatter = extra
        .in_netns(|| TcpListener::bind("127.0.0.1:15001"))
        .unwrap()
        .unwrap();
    let state = mesh.node.state_dir().join("pods.json");
    let pins = mesh.node.bpffs().join("pods").join("extra-uid");

    mesh.node.start_agent().unwrap();
    assert_eq!(
        Status::of(&mesh.node).pod_names(),
        ["default/client", "default/web"]
    );
    let log = mesh.node.agent().unwrap().log();
    assert!(log.contains("resuming pod failed"), "{log}");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains("extra-uid"),
        "the failed pod was forgotten: {saved}"
    );
    assert!(
        pins.exists(),
        "the failed pod's capture must stay on (fail closed)"
    );

    mesh.node.unenroll("extra-uid").unwrap();
    assert!(
        !pins.exists(),
        "unenroll left the failed pod's links pinned"
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(!saved.contains("extra-uid"), "{saved}");
    // Its uid, IP and slot are free again.
    drop(squatter);
    mesh.node.enroll(extra, "extra-uid", "extra").unwrap();
    mesh.assert_vip_works();
}

/// A FIFO without a writer as `--netns` (or `--cgroup`) is refused at once; while that enroll
/// is in flight the pods keep passing traffic, `status` and `/healthz/ready` answer, and
/// another pod can be unenrolled.
#[test]
fn a_fifo_as_netns_fails_fast_and_stalls_nothing() {
    require_root();
    let mesh = ClientWeb::with_declared(48, &[("extra", 4), ("spare", 5)]);
    let (extra, spare) = (&mesh.declared[0], &mesh.declared[1]);
    mesh.node.enroll(spare, "spare-uid", "spare").unwrap();
    let dir = mesh_tests::temp_dir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let fifo = fifo.display().to_string();
    // Whatever happens, a writer at the end releases an agent stuck opening the FIFO, so the
    // test's teardown is not held up by it.
    let _release = ReleaseFifo(fifo.clone());

    let started = Instant::now();
    let args = enroll_with(extra, "extra", "--netns", &fifo);
    let mut pending = Command::new(cargo_bin("mesh-agent"))
        .args(&args)
        .arg("--state-dir")
        .arg(mesh.node.state_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the request time to reach the agent (an agent that blocks on it is blocked by now).
    std::thread::sleep(Duration::from_millis(500));

    let quick = Duration::from_secs(5);
    mesh.assert_vip_works();
    let status = cli_within(&mesh.node, &["status", "-o", "json"], quick);
    assert!(status.status.success(), "{status:?}");
    let (code, body) =
        mesh_tests::http_get_timeout(mesh.node.admin(), "/healthz/ready", quick).unwrap();
    assert_eq!(code, 200, "{body}");
    let unenrolled = cli_within(&mesh.node, &["unenroll", "--uid", "spare-uid"], quick);
    assert!(unenrolled.status.success(), "{unenrolled:?}");

    wait_exit(&mut pending, Duration::from_secs(8)).expect("the FIFO enroll did not end");
    let out = pending.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "enrolling a FIFO succeeded");
    let expected = format!("netns {fifo} is not a namespace file (it is a FIFO)");
    assert!(err.contains(&expected), "{expected:?} not in: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // The same for --cgroup: a FIFO or a regular file is named for what it is.
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    for (path, kind) in [
        (fifo.clone(), "a FIFO"),
        (file.display().to_string(), "a regular file"),
    ] {
        let args = enroll_with(extra, "extra", "--cgroup", &path);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli_within(&mesh.node, &args, quick);
        let err = String::from_utf8_lossy(&out.stderr);
        let expected = format!("cgroup {path} is not a directory (it is {kind})");
        assert!(
            !out.status.success() && err.contains(&expected),
            "{expected:?} not in: {err}"
        );
    }
    assert_eq!(
        Status::of(&mesh.node).pod_names(),
        ["default/client", "default/web"]
    );
    mesh.assert_vip_works();
}

/// Opens the FIFO for writing (without blocking), which lets a reader blocked in `open()` go.
struct ReleaseFifo(String);

impl Drop for ReleaseFifo {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0);
    }
}
