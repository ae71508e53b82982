//! Self-test of the harness: pods really are isolated netns + cgroups that talk over the
//! bridge, pod-tool works in both address families, and nothing outlives a test (also when it
//! panics or when an earlier run crashed). Needs root; fails otherwise.
//! Run with `--test-threads=1` like every end-to-end test (each test here also uses its own
//! subnet, so they do not collide if run in parallel).

use mesh_tests::{
    cargo_bin, cgroup2_root, http_get, require_root, wait_until, AgentProcess, Bridge, Pod,
    PodProcess,
};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

fn pod_tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pod-tool"))
}

/// Starts a pod-tool server and waits until it printed `listening` for each address.
fn serve(pod: &Pod, args: &[&str]) -> PodProcess {
    let mut p = pod.spawn(pod_tool(), args).expect("spawn server");
    let want = args.iter().filter(|a| **a == "--listen").count();
    wait_until(T, || {
        p.stdout().matches("listening").count() >= want || !p.is_running()
    });
    assert!(p.is_running(), "server {args:?} died: {}", p.stderr());
    p
}

fn run_tool(pod: &Pod, args: &[&str]) -> String {
    let out = pod
        .run(pod_tool(), args, T)
        .unwrap_or_else(|e| panic!("{e:#}"));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn json(pod: &Pod, args: &[&str]) -> Value {
    let text = run_tool(pod, args);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

fn assert_gone(netns: &Path, veth: &str, cgroup: &Path) {
    assert!(!netns.exists(), "{} still exists", netns.display());
    assert!(
        !Path::new("/sys/class/net").join(veth).exists(),
        "veth {veth} still exists"
    );
    assert!(!cgroup.exists(), "{} still exists", cgroup.display());
}

#[test]
fn http_between_pods_over_ipv4_and_ipv6() {
    require_root();
    let br = Bridge::new(0).unwrap();
    let a = Pod::new(&br, "a", 2).unwrap();
    let b = Pod::new(&br, "b", 3).unwrap();
    let _srv = serve(
        &b,
        &[
            "http-serve",
            "--listen",
            "0.0.0.0:8080",
            "--listen",
            "[::]:8080",
            "--name",
            "b",
        ],
    );

    let body = run_tool(&a, &["http-get", &format!("http://{}:8080/", b.ip())]);
    assert!(
        body.starts_with(&format!("name=b peer={}:", a.ip())),
        "{body}"
    );
    assert!(
        body.trim_end().ends_with(&format!("local={}:8080", b.ip())),
        "{body}"
    );

    let body = run_tool(
        &a,
        &["http-get", &format!("http://[{}]:8080/x?y=1", b.ip6())],
    );
    assert!(
        body.starts_with(&format!("name=b peer=[{}]:", a.ip6())),
        "{body}"
    );

    // Loopback inside the pod, both families.
    let body = run_tool(&b, &["http-get", "http://127.0.0.1:8080/"]);
    assert!(body.starts_with("name=b peer=127.0.0.1:"), "{body}");
    let body = run_tool(&b, &["http-get", "http://[::1]:8080/"]);
    assert!(body.starts_with("name=b peer=[::1]:"), "{body}");

    // The root namespace (where the agent runs) reaches pods through the bridge.
    let (status, body) = http_get((b.ip(), 8080), "/").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!("name=b peer={}:", br.gateway_v4())),
        "{body}"
    );
    let (status, body) = http_get((b.ip6(), 8080), "/").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!("name=b peer=[{}]:", br.gateway_v6())),
        "{body}"
    );

    let peer = run_tool(&a, &["peername", "--connect", &format!("{}:8080", b.ip())]);
    assert_eq!(peer.trim(), format!("peer={}:8080", b.ip()));

    // Errors are messages and exit codes, not panics or hangs.
    let err = a
        .run(
            pod_tool(),
            ["http-get", &format!("http://{}:8081/", b.ip())],
            T,
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
    assert!(!format!("{err:#}").contains("panicked"), "{err:#}");
    // Nobody has .99 on the bridge: the SYN goes unanswered, the timeout must fire.
    let dead = format!("http://{}:8080/", mesh_tests_ip(&br, 99));
    let err = a
        .run(pod_tool(), ["http-get", &dead, "--timeout-ms", "300"], T)
        .unwrap_err();
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
}

fn mesh_tests_ip(br: &Bridge, host: u8) -> String {
    let [a, b, c, _] = br.gateway_v4().octets();
    format!("{a}.{b}.{c}.{host}")
}

#[test]
fn processes_live_in_the_pod_cgroup_and_netns() {
    require_root();
    let root = cgroup2_root().unwrap();
    assert!(root.join("cgroup.procs").exists(), "{}", root.display());

    let br = Bridge::new(1).unwrap();
    let a = Pod::new(&br, "a", 2).unwrap();
    assert_eq!(a.netns_path(), Path::new("/run/netns").join(a.name()));
    assert_eq!(a.cgroup_path(), root.join("mesh-tests").join(a.name()));
    assert_eq!(a.short_name(), "a");

    let p = a.spawn("sleep", ["30"]).unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid())).unwrap();
    assert!(
        cg.lines()
            .any(|l| l == format!("0::/mesh-tests/{}", a.name())),
        "{cg}"
    );
    let ns = std::fs::metadata(format!("/proc/{}/ns/net", p.pid())).unwrap();
    assert_eq!(ns.ino(), std::fs::metadata(a.netns_path()).unwrap().ino());
    assert!(a.pids().contains(&(p.pid() as i32)));

    // Per-netns sysctls set for connect-rate benchmarks.
    let out = a
        .run("cat", ["/proc/sys/net/ipv4/tcp_tw_reuse"], T)
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // in_netns: the pod's address is only bindable inside the pod.
    let ip = a.ip();
    let bound = a
        .in_netns(|| std::net::TcpListener::bind((ip, 0)).map(|_| ()))
        .unwrap();
    assert!(bound.is_ok(), "{bound:?}");
    assert!(
        std::net::TcpListener::bind((ip, 0)).is_err(),
        "root netns must not own {ip}"
    );

    // run() reports failures with stderr.
    let err = a
        .run("sh", ["-c", "echo oops-on-stderr >&2; exit 7"], T)
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("oops-on-stderr") && msg.contains("exit code 7"),
        "{msg}"
    );
}

#[test]
fn benchmark_clients_print_sane_json() {
    require_root();
    let br = Bridge::new(2).unwrap();
    let a = Pod::new(&br, "client", 2).unwrap();
    let b = Pod::new(&br, "server", 3).unwrap();
    let _echo = serve(
        &b,
        &[
            "echo-serve",
            "--listen",
            "0.0.0.0:9000",
            "--listen",
            "[::]:9000",
        ],
    );
    let _sink = serve(&b, &["sink-serve", "--listen", "0.0.0.0:9001"]);
    let echo4 = format!("{}:9000", b.ip());
    let echo6 = format!("[{}]:9000", b.ip6());

    for target in [&echo4, &echo6] {
        let rr = json(
            &a,
            &[
                "rr",
                "--connect",
                target,
                "--size",
                "1024",
                "--count",
                "200",
                "--warmup",
                "10",
            ],
        );
        assert_eq!(rr["count"], 200, "{rr}");
        let (p50, p99, mean) = (
            rr["p50_us"].as_f64().unwrap(),
            rr["p99_us"].as_f64().unwrap(),
            rr["mean_us"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p99 >= p50 && mean > 0.0 && p99 < 1e6, "{rr}");
    }

    let st = json(
        &a,
        &[
            "stream",
            "--connect",
            &format!("{}:9001", b.ip()),
            "--seconds",
            "1",
            "--streams",
            "2",
        ],
    );
    let (bytes, secs, gbit) = (
        st["bytes"].as_u64().unwrap(),
        st["seconds"].as_f64().unwrap(),
        st["gbit_per_s"].as_f64().unwrap(),
    );
    assert!(
        bytes > 1 << 20 && (1.0..10.0).contains(&secs) && gbit > 0.0,
        "{st}"
    );

    let cr = json(
        &a,
        &[
            "connect-rate",
            "--connect",
            &echo4,
            "--seconds",
            "1",
            "--concurrency",
            "2",
        ],
    );
    let n = cr["connections"].as_u64().unwrap();
    let (p50, p99) = (
        cr["connect_p50_us"].as_f64().unwrap(),
        cr["connect_p99_us"].as_f64().unwrap(),
    );
    assert!(
        n > 10 && cr["per_s"].as_f64().unwrap() > 10.0 && p50 > 0.0 && p99 >= p50,
        "{cr}"
    );
    assert_eq!(cr["errors"], 0, "{cr}");
}

#[test]
fn dropping_pods_removes_netns_veth_and_cgroup() {
    require_root();
    let br = Bridge::new(3).unwrap();
    let bridge_name = br.name().to_string();
    let a = Pod::new(&br, "a", 2).unwrap();
    let (netns, veth, cgroup) = (a.netns_path(), a.host_veth().to_string(), a.cgroup_path());
    assert!(netns.exists() && Path::new("/sys/class/net").join(&veth).exists() && cgroup.exists());
    // A daemonised grandchild nobody holds a handle to: only the cgroup knows about it.
    a.run("sh", ["-c", "sleep 300 >/dev/null 2>&1 &"], T)
        .unwrap();
    let orphans = a.pids();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    drop(a);
    assert_gone(&netns, &veth, &cgroup);
    for pid in orphans {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "process {pid} survived: {state}"
        );
    }
    drop(br);
    assert!(!Path::new("/sys/class/net").join(bridge_name).exists());
}

#[test]
fn a_panicking_test_still_cleans_up() {
    require_root();
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let br = Bridge::new(4).unwrap();
        let p = Pod::new(&br, "panicky", 2).unwrap();
        let _sleeper = p.spawn("sleep", ["300"]).unwrap();
        seen = Some((p.netns_path(), p.host_veth().to_string(), p.cgroup_path()));
        panic!("deliberate panic while a pod is alive");
    }));
    assert!(result.is_err());
    let (netns, veth, cgroup) = seen.expect("pod was created");
    assert_gone(&netns, &veth, &cgroup);
}

#[test]
fn janitor_sweeps_leftovers_of_dead_runs_only() {
    require_root();
    // Make sure this process is registered (as any run is before creating things).
    mesh_tests::janitor::sweep_once();
    let cg_parent = cgroup2_root().unwrap().join("mesh-tests");
    std::fs::create_dir_all(&cg_parent).unwrap();
    // "mt99999" can't be produced by pid % 10000: a run that crashed and has no owner file.
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args:?}");
    };
    ip(&["netns", "add", "mt99999-ghost"]);
    ip(&["link", "add", "mt99999br9", "type", "bridge"]);
    let ghost_cg = cg_parent.join("mt99999-ghost");
    std::fs::create_dir_all(&ghost_cg).unwrap();
    let mut cmd =
        mesh_tests::process::command_in(Path::new("/run/netns/mt99999-ghost"), &ghost_cg, "sleep")
            .unwrap();
    cmd.arg("300");
    let mut ghost = PodProcess::spawn(cmd).unwrap();
    // A live run (its owner file names our own process) must be left alone.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    std::fs::write(
        "/run/mesh-tests/mt99998",
        format!("{} {start}\n", std::process::id()),
    )
    .unwrap();
    ip(&["netns", "add", "mt99998-alive"]);

    mesh_tests::janitor::sweep();

    assert!(!Path::new("/run/netns/mt99999-ghost").exists());
    assert!(!Path::new("/sys/class/net/mt99999br9").exists());
    assert!(!ghost_cg.exists());
    assert!(
        wait_until(T, || !ghost.is_running()),
        "ghost process survived"
    );
    assert!(
        Path::new("/run/netns/mt99998-alive").exists(),
        "a live run's netns was removed"
    );
    ip(&["netns", "del", "mt99998-alive"]);
    std::fs::remove_file("/run/mesh-tests/mt99998").unwrap();
}

#[test]
fn agent_process_readiness_logs_and_stop() {
    require_root();
    let tool = cargo_bin("pod-tool");
    assert_eq!(
        std::fs::canonicalize(&tool).unwrap(),
        std::fs::canonicalize(pod_tool()).unwrap()
    );
    // pod-tool's HTTP server answers /healthz/ready with 200: a stand-in for the agent.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut agent = AgentProcess::spawn(
        &tool,
        [
            "http-serve",
            "--listen",
            &addr.to_string(),
            "--name",
            "agent",
        ],
    )
    .unwrap();
    agent.wait_ready(addr, T).unwrap();
    let (status, body) = http_get(addr, "/healthz/ready").unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("name=agent peer=127.0.0.1:"), "{body}");
    assert!(
        wait_until(T, || agent.log().contains("listening")),
        "{}",
        agent.log()
    );
    let status = agent.stop().unwrap();
    assert!(!status.success());
    assert!(!agent.is_running());

    // Exits before ready: the error carries the log tail.
    let mut bad = AgentProcess::spawn("sh", ["-c", "echo boom-marker >&2; exit 3"]).unwrap();
    let err = format!("{:#}", bad.wait_ready(addr, T).unwrap_err());
    assert!(
        err.contains("exited") && err.contains("boom-marker"),
        "{err}"
    );

    // Never ready: times out.
    let mut slow = AgentProcess::spawn("sleep", ["30"]).unwrap();
    let err = format!(
        "{:#}",
        slow.wait_ready(addr, Duration::from_millis(300))
            .unwrap_err()
    );
    assert!(err.contains("not ready"), "{err}");
    slow.kill();
    assert!(!slow.is_running());

    let missing = AgentProcess::spawn(cargo_bin("no-such-binary-xyz"), ["run"]);
    assert!(missing.is_err());
}
