//! The agent DaemonSet's privileges (deploy/agent/daemonset.yaml), checked against the real
//! agent: the capabilities its container adds are read from the manifest, and the agent is
//! started as the container runtime would start it: the bounding and inheritable sets cut
//! to exactly those (what `drop: [ALL]` plus `add` means for a root process), in a mount
//! namespace of its own that follows the node's mounts (`HostToContainer`), with the cgroup
//! v2 root mounted read-only (the DaemonSet's `cgroup` volume).
//!
//! - `agent_works_with_exactly_the_daemonset_capabilities`: with those capabilities the agent loads and attaches its programs, enrolls
//!   pods and carries a pod's connection to a service VIP, captured in the kernel.
//! - `every_capability_the_daemonset_adds_is_needed`: without any one of them it refuses to start, naming it; a capability
//!   added to the manifest that the agent does not need fails this test.
//!
//! Needs root, `cargo xtask build-ebpf && cargo build -p mesh-agent`, and util-linux's
//! `unshare` and `setpriv`.

use std::path::{Path, PathBuf};

use mesh_tests::mesh::{service_yaml, workload_yaml, MeshNode};
use mesh_tests::observe::{get, http_server, AgentStatus};
use mesh_tests::{cargo_bin, cgroup2_root, require_root, temp_dir, Bridge, Pod};

const BRIDGES: [u8; 3] = [45, 38, 37];
const APP_PORT: u16 = 8080;

#[test]
fn agent_works_with_exactly_the_daemonset_capabilities() {
    require_root();
    let caps = daemonset_capabilities();
    let dir = temp_dir().unwrap();
    let bridge = Bridge::first_free(&BRIDGES).unwrap();
    let client = Pod::new(&bridge, "client", 2).unwrap();
    let web = Pod::new(&bridge, "web", 3).unwrap();
    let _server = http_server(&web, "web", APP_PORT);
    let vip = "10.96.0.45".parse().unwrap();
    let config = [
        service_yaml("web", &[vip], 80, APP_PORT, "web"),
        workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")]),
        workload_yaml("web", "web-uid", &[web.ip()], &[("app", "web")]),
    ]
    .concat();
    let mut node = MeshNode::start_with_binary(confined_agent(dir.path(), &caps), &config)
        .unwrap_or_else(|e| panic!("the agent with only {caps:?} did not start: {e:#}"));
    // The confinement really applies: the agent holds these capabilities and no others.
    let pid = node.agent().unwrap().pid();
    assert_eq!(
        effective_capabilities(pid),
        capability_mask(&caps),
        "CapEff of the agent (pid {pid})"
    );
    node.enroll(&client, "client-uid", "client").unwrap();
    node.enroll(&web, "web-uid", "web").unwrap();

    let before = AgentStatus::of(&node);
    let answer = get(&client, &format!("http://{vip}:80/"));
    assert_eq!(answer.name, "web", "{answer:?}");
    assert_eq!(answer.peer.ip(), client.ip(), "{answer:?}");
    let after = AgentStatus::of(&node);
    let captured = after.kernel("connect_captured") - before.kernel("connect_captured");
    assert_eq!(captured, 1, "{}", after.0["kernel"]);
}

#[test]
fn every_capability_the_daemonset_adds_is_needed() {
    require_root();
    let caps = daemonset_capabilities();
    let dir = temp_dir().unwrap();
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let agent = confined_agent(dir.path(), &fewer);
        match MeshNode::start_with_binary(agent, "") {
            Ok(_) => panic!(
                "the agent started without CAP_{missing}: the DaemonSet grants a capability \
                 it does not need (remove it from deploy/agent/daemonset.yaml)"
            ),
            Err(e) => {
                let message = format!("{e:#}");
                assert!(
                    message.contains(&format!("CAP_{missing}")),
                    "without CAP_{missing} the agent failed without naming it: {message}"
                );
            }
        }
    }
}

/// The capabilities the agent container adds, as written in the DaemonSet (`BPF`, ...). The
/// agent container is the only one with an `add:` list.
fn daemonset_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent/daemonset.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut lines = text.lines().map(str::trim);
    assert!(
        lines.any(|line| line == "add:"),
        "no capabilities `add:` list in {}",
        path.display()
    );
    let caps: Vec<String> = lines
        .filter(|line| !line.starts_with('#'))
        .map_while(|line| line.strip_prefix("- "))
        .map(|cap| cap.trim().trim_matches('"').to_owned())
        .collect();
    assert!(!caps.is_empty(), "empty `add:` list in {}", path.display());
    caps
}

/// A script that starts the real agent confined as the DaemonSet's container is (see the
/// module comment). MeshNode runs it for `run` and for the CLI alike.
fn confined_agent(dir: &Path, caps: &[String]) -> PathBuf {
    let bounding: Vec<String> = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect();
    let cgroup = cgroup2_root().unwrap();
    let script = format!(
        "#!/bin/sh\n\
         exec unshare --mount --propagation slave sh -c '\
         mount --bind \"$0\" \"$0\" && mount -o remount,bind,ro \"$0\" || exit 1; \
         exec setpriv --bounding-set={} --inh-caps=-all -- \"$@\"' {} {} \"$@\"\n",
        bounding.join(","),
        cgroup.display(),
        cargo_bin("mesh-agent").display(),
    );
    let path = dir.join(format!("mesh-agent-{}", caps.join("-").to_lowercase()));
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .expect("CapEff in /proc/PID/status");
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// Linux capability numbers (linux/capability.h), by the name Kubernetes uses.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn capability_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|cap| {
            let bit = CAPABILITIES
                .iter()
                .position(|known| known == cap)
                .unwrap_or_else(|| panic!("unknown capability {cap} in the DaemonSet"));
            1u64 << bit
        })
        .fold(0, |mask, bit| mask | bit)
}
