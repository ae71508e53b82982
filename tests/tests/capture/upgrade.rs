//! Upgrading the agent under load: a second agent process takes over from the running one
//! (the handover socket in the state directory), the old one drains and exits. New connections
//! opened all along never fail, none goes around the mesh, and connections the old agent was
//! relaying are handed to the new one and survive. SIGTERM without a successor drains.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::held::Held;
use mesh_tests::mesh::MeshNode;
use mesh_tests::two_nodes::authz_policy;
use mesh_tests::{require_root, PodProcess};

use crate::support::*;

/// Starts a new agent that must wait until an agent still draining has exited before it
/// serves: `draining`, or (None) the one the node runs, stopped by SIGTERM. Returns the agent
/// it took over from.
fn upgrade_after_waiting(
    node: &mut MeshNode,
    draining: Option<mesh_tests::AgentProcess>,
) -> mesh_tests::AgentProcess {
    let mut previous = node.upgrade_agent().unwrap();
    let exited = match draining {
        Some(mut draining) => !draining.is_running(),
        None => !previous.is_running(),
    };
    assert!(
        exited,
        "the new agent served before the draining one exited"
    );
    let log = node.agent().unwrap().log();
    assert!(
        log.contains("waiting for the running agent to exit"),
        "{log}"
    );
    previous
}

/// SIGTERM to the agent (no successor), once it has started draining.
fn sigterm(node: &mut MeshNode) -> &mut mesh_tests::AgentProcess {
    let agent = node.agent().unwrap();
    let pid = nix::unistd::Pid::from_raw(agent.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(mesh_tests::wait_until(T, || agent
        .log()
        .contains("draining")));
    agent
}

fn connect_rate(mesh: &ClientWeb, addr: SocketAddr, seconds: f64) -> PodProcess {
    mesh.client
        .spawn(
            pod_tool(),
            [
                "connect-rate",
                "--connect",
                &addr.to_string(),
                "--seconds",
                &seconds.to_string(),
                "--concurrency",
                "2",
                "--linger0",
            ],
        )
        .unwrap()
}

fn rate_result(mut rate: PodProcess) -> serde_json::Value {
    let out = rate.wait_output(Duration::from_secs(30)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "connect-rate printed {text:?} ({e}); stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A new agent takes over while the client opens connections back to back: none of them
/// fails or goes around the mesh (the kernel's connect4 counter rises by every one of them),
/// the new agent serves afterwards, and the connections the old agent relayed are handed to
/// the new one and outlive the old process.
#[test]
fn a_second_agent_takes_over_without_refusing_a_connection() {
    require_root();
    let mut mesh = ClientWeb::new(51);
    let (_server, addr) = echo_server(&mesh);
    let holder = Held::open(&mesh.client, addr, 300).unwrap();
    // Checked after a policy change on the new agent, which must close them.
    let denied = Held::open(&mesh.client, addr, 4).unwrap();
    let captured_before = Status::of(&mesh.node).kernel("connect_captured");

    let rate = connect_rate(&mesh, addr, 3.0);
    std::thread::sleep(Duration::from_millis(700));
    let mut old = mesh.node.upgrade_agent().unwrap();

    let result = rate_result(rate);
    let made = result["connections"].as_u64().unwrap();
    assert_eq!(
        result["errors"], 0,
        "connections failed during the upgrade: {result}"
    );
    assert!(
        made > 100,
        "too few connections to prove anything: {result}"
    );
    let status = Status::of(&mesh.node);
    assert!(
        status.kernel("connect_captured") >= captured_before + made,
        "connections went around the mesh: {made} made, captured {} -> {}",
        captured_before,
        status.kernel("connect_captured")
    );
    // The old agent hands its relayed connections over and exits well before its drain
    // deadline (3 s in tests), nothing being left to drain.
    assert!(
        mesh_tests::wait_until(Duration::from_secs(10), || !old.is_running()),
        "the old agent did not exit after draining"
    );
    let log = old.log();
    assert!(
        log.contains("handed over to the successor"),
        "{}",
        old.log_tail(20)
    );
    assert!(log.contains("closed_at_deadline=0"), "{}", old.log_tail(20));
    // The held connections outlived the process that accepted them: the new agent relays
    // them (its gauge counts them on both pods).
    let status = Status::of(&mesh.node);
    assert!(
        status.pod("default/client", "outbound", "active") >= 304,
        "{:?}",
        status.0
    );
    assert!(
        status.pod("default/web", "inbound", "active") >= 304,
        "{:?}",
        status.0
    );
    let after = holder.check().unwrap();
    assert_eq!(
        after["alive"], 300,
        "held connections after the upgrade: {after}"
    );
    assert_eq!(status.pod_names(), ["default/client", "default/web"]);
    mesh.assert_vip_works();
    assert!(Status::of(&mesh.node).pod("default/client", "outbound", "connections") >= 1);
    // Enrollment works on the new agent (the admin socket it took over).
    mesh.node.unenroll("web-uid").unwrap();
    mesh.node.enroll(&mesh.web, "web-uid", "web").unwrap();
    mesh.assert_vip_works();
    // The new agent enforces policy on the connections it took over, as on its own.
    let mut config = std::fs::read_to_string(mesh.node.config_path()).unwrap();
    config += &authz_policy(
        "default",
        "deny-all",
        "  selector: {app: web}\n  action: DENY\n  rules:\n  - {}\n",
    );
    mesh.node.reload_config_and_wait(&config).unwrap();
    // The tracker re-checks open connections on the new snapshot's tick, just after the
    // version rises: wait for the web pod's inbound gauge to empty before asking the app.
    let closed = mesh_tests::wait_until(T, || {
        Status::of(&mesh.node).pod("default/web", "inbound", "active") == 0
    });
    assert!(closed, "{:?}", Status::of(&mesh.node).0);
    let after_deny = denied.check().unwrap();
    assert_eq!(
        after_deny["alive"], 0,
        "denied connections still open: {after_deny}"
    );
}

/// SIGTERM without a successor: the agent stops accepting (captured connections are refused,
/// never sent around the mesh) and lets the connections it relays finish until its deadline.
#[test]
fn sigterm_drains_open_connections_and_refuses_new_ones() {
    require_root();
    let mut mesh = ClientWeb::new(52);
    let (_server, addr) = echo_server(&mesh);
    let holder = Held::open(&mesh.client, addr, 8).unwrap();
    let agent = sigterm(&mut mesh.node);
    assert!(agent.is_running(), "the agent exited without draining");
    let during = holder.check().unwrap();
    assert_eq!(
        during["alive"], 8,
        "held connections during the drain: {during}"
    );
    let web_opens = passive_opens(&mesh.web);
    let (error, _) = get_fails(&mesh.client, &url(vip(), 80), 2000);
    assert!(
        error.contains("refused") || error.contains("reset"),
        "{error}"
    );
    assert_eq!(
        passive_opens(&mesh.web),
        web_opens,
        "a connection reached web around the mesh"
    );
    assert!(
        mesh_tests::wait_until(Duration::from_secs(10), || !agent.is_running()),
        "the agent did not exit after draining"
    );
}

/// A new agent whose programs need another map layout than the one pinned (another version)
/// says so and exits; the running agent goes on serving and enrolling as before.
#[test]
fn an_agent_that_cannot_share_the_pinned_maps_leaves_the_running_one_alone() {
    require_root();
    let mut mesh = ClientWeb::new(53);
    mesh.assert_vip_works();
    // As another version would have pinned it: same name, 8-byte values instead of 4. The
    // running agent's programs keep the map they were loaded with.
    let pin = mesh.node.bpffs().join("maps").join("MESH_POD_NETNS");
    std::fs::remove_file(&pin).unwrap();
    pin_hash_map(&pin, 8, 8);

    let error = match mesh.node.upgrade_agent() {
        Ok(_) => panic!("an agent took over with a different map layout"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("exited") && error.contains("another layout"),
        "{error}"
    );
    let log = mesh.node.agent().unwrap().log();
    assert!(!log.contains("handed over"), "{log}");
    mesh.assert_vip_works();
    mesh.node.unenroll("web-uid").unwrap();
    mesh.node.enroll(&mesh.web, "web-uid", "web").unwrap();
    mesh.assert_vip_works();
}

/// A new agent started while the old one drains after SIGTERM (a pod deleted and its
/// replacement starting at once) waits until the old one has exited, then starts afresh and
/// serves every pod: it never serves pods with the listeners the old one already closed.
#[test]
fn a_successor_during_a_sigterm_drain_waits_and_then_serves() {
    require_root();
    let mut mesh = ClientWeb::new(50);
    let (_server, addr) = echo_server(&mesh);
    // Keeps the old agent draining until its deadline (3 s in tests).
    let _held = Held::open(&mesh.client, addr, 2).unwrap();
    sigterm(&mut mesh.node);
    upgrade_after_waiting(&mut mesh.node, None);
    mesh.assert_vip_works();
    let status = Status::of(&mesh.node);
    assert_eq!(status.pod_names(), ["default/client", "default/web"]);
}

/// Two upgrades in a row, the second while the first old agent still drains (an HTTP request
/// it serves takes 2.5 s): the third agent waits until the first has exited, then takes over
/// from the second. No new connection fails throughout, and connections relayed since the
/// first agent live on.
#[test]
fn back_to_back_upgrades_take_turns() {
    require_root();
    let mut mesh = ClientWeb::new(49);
    let (_server, addr) = echo_server(&mesh);
    let _slow = mesh
        .web
        .spawn(
            pod_tool(),
            [
                "http-serve",
                "--listen",
                "0.0.0.0:8081",
                "--name",
                "slow",
                "--delay-ms",
                "2500",
            ],
        )
        .unwrap();
    let mut config = std::fs::read_to_string(mesh.node.config_path()).unwrap();
    config += "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {name: slow}\nspec:\n  \
               vips: [\"10.96.0.30\"]\n  ports: [{port: 80, targetPort: 8081, protocol: http}]\n  \
               selector: {app: web}\n";
    mesh.node.reload_config_and_wait(&config).unwrap();
    let held = Held::open(&mesh.client, addr, 8).unwrap();
    let rate = connect_rate(&mesh, addr, 6.0);
    std::thread::sleep(Duration::from_millis(300));
    // In flight through the first agent's HTTP proxy while it drains.
    let slow_url = url("10.96.0.30".parse().unwrap(), 80);
    let mut slow = mesh
        .client
        .spawn(pod_tool(), ["http-get", &slow_url])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let first = mesh.node.upgrade_agent().unwrap();
    let mut second = upgrade_after_waiting(&mut mesh.node, Some(first));
    let answer = slow.wait_output(T).unwrap();
    assert!(
        answer.status.success(),
        "the request the first agent drained failed: {answer:?}"
    );
    let result = rate_result(rate);
    assert_eq!(
        result["errors"], 0,
        "connections failed during the upgrades: {result}"
    );
    assert!(mesh_tests::wait_until(Duration::from_secs(10), || !second.is_running()));
    let after = held.check().unwrap();
    assert_eq!(
        after["alive"], 8,
        "held connections after two upgrades: {after}"
    );
    mesh.assert_vip_works();
}

/// A successor started for another `--cgroup-root` (or node, or bpffs) than the running agent
/// would serve the node differently: it says so and exits, and the running agent carries on.
#[test]
fn a_successor_configured_differently_is_refused() {
    require_root();
    let mut mesh = ClientWeb::new(54);
    let other_root = mesh.web.cgroup_path().display().to_string();
    mesh.node.set_extra_args(&["--cgroup-root", &other_root]);
    let error = match mesh.node.upgrade_agent() {
        Ok(_) => panic!("a differently configured agent took over"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("must serve the same node the same way"),
        "{error}"
    );
    mesh.node.set_extra_args(&[]);
    mesh.assert_vip_works();
    mesh.node.unenroll("web-uid").unwrap();
    mesh.node.enroll(&mesh.web, "web-uid", "web").unwrap();
    mesh.assert_vip_works();
}

/// Creates a BPF hash map and pins it at `path` (what another agent version would leave).
fn pin_hash_map(path: &std::path::Path, key_size: u32, value_size: u32) {
    use std::os::unix::ffi::OsStrExt;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    // bpf_attr for BPF_MAP_CREATE starts with type, key size, value size, max entries.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, key_size, value_size, 16]);
    // SAFETY: a valid, zero-padded bpf_attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // bpf_attr for BPF_OBJ_PIN: the path pointer, then the fd.
    let mut pin = [0u64; 16];
    pin[0] = name.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: as above; `name` outlives the call.
    let pinned = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            pin.as_ptr(),
            std::mem::size_of_val(&pin),
        )
    };
    assert_eq!(
        pinned,
        0,
        "BPF_OBJ_PIN: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: our descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}
