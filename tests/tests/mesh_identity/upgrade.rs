//! Upgrading an agent under cross-node load: new HBONE connections never fail while either
//! node's agent is replaced, and the HBONE connections the old agent carried drain: they keep
//! working until its deadline and are then closed, never left hanging.

use std::time::Duration;

use mesh_tests::held::Held;
use mesh_tests::two_nodes::TwoNodes;
use mesh_tests::{cargo_bin, require_root, wait_until};

use crate::support::*;

/// Client `a` on node-1 opens connections back to back to `b` on node-2 (HBONE) while first
/// node-2's agent, then node-1's (its successor without a config cache) is upgraded: none
/// fails or goes uncaptured. Connections held through the old
/// agent work during its drain and are closed at its deadline (3 s in tests).
#[test]
fn upgrading_either_node_under_cross_node_load_fails_no_connection() {
    require_root();
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("a", 0, "client-a"))
        .pod(PodDef::mesh("b", 1, "web").label("app", "web"))
        .start()
        .expect("starting two nodes");
    mesh.serve_echo("b", ECHO_PORT);
    let target = mesh.pod("b").addr(ECHO_PORT);
    for node in [1, 0] {
        // Node-1's successor finds no cached config (a new version that cannot read the old
        // cache is the same): it must leave the client's capture set alone and wait for the
        // control plane's config before it takes over.
        if node == 0 {
            std::fs::remove_file(mesh.agents[0].state_dir().join("config-cache.json")).unwrap();
        }
        let captured = mesh.agents[0].kernel_counter("connect_captured").unwrap();
        let client = &mesh.pod("a").pod;
        let holder = Held::open(client, target, 4).unwrap();
        let rate = client
            .spawn(
                cargo_bin("pod-tool"),
                [
                    "connect-rate",
                    "--connect",
                    &target.to_string(),
                    "--seconds",
                    "3",
                    "--concurrency",
                    "2",
                    "--linger0",
                ],
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let mut old = mesh.agents[node].upgrade_agent().unwrap();
        let during = holder.check().unwrap();
        assert_eq!(
            during["alive"], 4,
            "node {node}: held HBONE connections during the drain: {during}"
        );
        // Once the old agent drains, its peers have been told (GOAWAY) to open new streams
        // elsewhere: these go to the new agent.
        assert!(wait_until(T, || old.log().contains("draining")));
        std::thread::sleep(Duration::from_millis(300));
        let late = Held::open(&mesh.pod("a").pod, target, 2).unwrap();
        let mut rate = rate;
        let out = rate.wait_output(Duration::from_secs(30)).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let result: serde_json::Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("connect-rate printed {text:?}: {e}"));
        assert_eq!(
            result["errors"], 0,
            "node {node}: connections failed during the upgrade: {result}"
        );
        let made = result["connections"].as_u64().unwrap();
        assert!(made > 50, "{result}");
        let rose = mesh.agents[0].kernel_counter("connect_captured").unwrap() - captured;
        assert!(
            rose >= made,
            "node {node}: {made} connections, connect4 captured {rose}"
        );
        assert!(
            wait_until(Duration::from_secs(10), || !old.is_running()),
            "node {node}: the old agent did not exit after its drain"
        );
        assert!(
            old.log().contains("handed over to the successor"),
            "{}",
            old.log_tail(20)
        );
        // Opened after the takeover: the new agents carry them, they outlive the old one.
        let late = late.check().unwrap();
        assert_eq!(
            late["alive"], 2,
            "node {node}: connections opened after the takeover: {late}"
        );
    }
}
