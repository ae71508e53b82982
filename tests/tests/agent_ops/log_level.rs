//! The log filter of a running agent, changed without a restart.

use std::time::Duration;

use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::{http_get, require_root, wait_until};

/// Logged at debug by the admin module for every `/healthz/ready`.
const DEBUG_LINE: &str = "readiness asked";

/// Asks `/healthz/ready` and returns whether the debug line it logs showed up after `from`
/// bytes of the agent's log.
fn readiness_logged_after(node: &mut MeshNode, from: usize) -> bool {
    let (code, _) = http_get(node.admin(), "/healthz/ready").unwrap();
    assert_eq!(code, 200);
    let agent = node.agent().unwrap();
    // The line is written before the answer leaves; a moment for the file to show it.
    wait_until(Duration::from_millis(500), || {
        agent
            .log()
            .get(from..)
            .is_some_and(|l| l.contains(DEBUG_LINE))
    })
}

fn log_len(node: &mut MeshNode) -> usize {
    node.agent().unwrap().log().len()
}

/// `mesh-agent log-level`: shows the filter in force, replaces it (debug lines of a module
/// stop, then appear), refuses a misspelt level and a bad directive naming them while the
/// filter in force stays, and is not served on the loopback admin address.
#[test]
fn the_log_filter_changes_at_run_time_and_refuses_bad_directives() {
    require_root();
    let mut node = MeshNode::start(&workload_yaml(
        "x",
        "x-uid",
        &["10.9.0.1".parse().unwrap()],
        &[],
    ))
    .unwrap();
    // The harness starts agents with RUST_LOG=info,mesh_agent=debug.
    let current = node.cli_ok(&["log-level"]).unwrap();
    assert_eq!(current.trim(), "mesh_agent=debug,info");
    let start = log_len(&mut node);
    assert!(
        readiness_logged_after(&mut node, start),
        "debug is on at start"
    );

    assert_eq!(node.cli_ok(&["log-level", "info"]).unwrap().trim(), "info");
    let quiet = log_len(&mut node);
    assert!(
        !readiness_logged_after(&mut node, quiet),
        "a debug line after the filter went to info"
    );

    let set = node
        .cli_ok(&["log-level", "info,mesh_agent::admin=debug"])
        .unwrap();
    assert_eq!(set.trim(), "mesh_agent::admin=debug,info");
    let loud = log_len(&mut node);
    assert!(
        readiness_logged_after(&mut node, loud),
        "no debug line after mesh_agent::admin=debug"
    );

    for (bad, says) in [
        ("verbose", "\"verbose\" is not a log level"),
        (
            "info,mesh_agent=loud",
            "bad log filter \"info,mesh_agent=loud\"",
        ),
    ] {
        let out = node.cli(&["log-level", bad]).unwrap();
        assert!(!out.status.success(), "{bad} was taken");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{bad}: {stderr}");
    }
    let kept = node.cli_ok(&["log-level"]).unwrap();
    assert_eq!(kept.trim(), "mesh_agent::admin=debug,info");

    // Root only: the loopback address (any local user) has no such route.
    let (code, _) = http_get(node.admin(), "/logging").unwrap();
    assert_eq!(code, 404);
}
