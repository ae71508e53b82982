//! `cargo xtask demo`: the mesh in one minute, on this machine.
//!
//! Builds everything, starts an agent on a static config, creates two pods (each a network
//! namespace and a cgroup) on a bridge, enrolls them, sends HTTP requests from `client` to the `web`
//! service VIP through the mesh, prints `mesh-agent status`, and removes everything again.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_tests::mesh::{service_yaml, workload_yaml, MeshNode};
use mesh_tests::{Bridge, Pod};

use crate::cmd::progress;
use crate::setup;

const VIP: &str = "10.96.0.20";

pub fn run() -> Result<()> {
    setup::require_root("cargo xtask demo")?;
    setup::ensure_packages(&[])?;
    setup::build_all(false)?;
    let pod_tool = setup::binary("pod-tool", false);

    progress("creating a bridge and two pods: client, web");
    let bridge = Bridge::new(0)?;
    let client = Pod::new(&bridge, "client", 2)?;
    let web = Pod::new(&bridge, "web", 3)?;
    let vip: IpAddr = VIP.parse()?;
    let config = [
        service_yaml("web", &[vip], 80, 8080, "web"),
        workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")]),
        workload_yaml("web", "web-uid", &[web.ip()], &[("app", "web")]),
    ]
    .concat();
    println!("\n--- mesh config ---\n{config}");

    progress("starting an HTTP server in pod web on :8080");
    let _server = web.spawn(
        &pod_tool,
        ["http-serve", "--listen", "0.0.0.0:8080", "--name", "web"],
    )?;

    progress("starting mesh-agent on that config");
    let node = MeshNode::start_with_binary(setup::binary("mesh-agent", false), &config)?;
    progress("enrolling both pods (what a CNI plugin would do)");
    print!("{}", node.enroll(&client, "client-uid", "client")?);
    print!("{}", node.enroll(&web, "web-uid", "web")?);

    progress(&format!(
        "client -> http://{VIP}/ (the service VIP), three times"
    ));
    for _ in 0..3 {
        let out = client.run(
            &pod_tool,
            [
                "http-get",
                &format!("http://{VIP}/"),
                "--timeout-ms",
                "3000",
            ],
            Duration::from_secs(10),
        )?;
        print!("  {}", String::from_utf8_lossy(&out.stdout));
    }
    println!(
        "  (web answers with the peer it accepted: the client pod's own address {}, although the\n   \
         proxy delivered the connection: connect4 captured it, the agent delivered it inside web's\n   \
         namespace, and the getpeername hook shows web's app the real client)",
        client.ip()
    );

    progress("mesh-agent status");
    print!("{}", node.cli_ok(&["status"]).context("mesh-agent status")?);
    progress("cleaning up: agent, pods, bridge, pinned programs");
    drop(node);
    Ok(())
}
