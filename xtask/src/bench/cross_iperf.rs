//! iperf3 over the cross-node bench's pods: the tool an outside check of a mesh reaches for,
//! run through the same paths as the pod-tool rows and verified the same way (both agents'
//! counters and the wire say which path each run took). Its single-stream ratio
//! cross-checks the bench's own.
//!
//! Only a client the mesh captures measures HBONE. A process that enters the client pod's
//! network namespace from outside the agents' `--cgroup-root` (e.g. `ip netns exec` from a
//! shell; the bench's root is the tests' cgroup, not the whole hierarchy) is not captured:
//! its connection goes plaintext to the server pod, where only node-2's inbound proxy is in
//! the path. That measures one proxy hop, not HBONE (it is how an outside check saw 0.44-0.51
//! of direct where this bench saw 0.25, issue 12).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use mesh_tests::{Pod, PodProcess};
use serde_json::{json, Value};

use super::cross_bed::Way;
use super::cross_node::Runner;
use crate::setup;

/// Where the iperf3 servers listen, in the mesh and in the direct server pod.
pub const IPERF_PORT: u16 = 5201;

/// iperf3 installed (Debian's package), then a server in each server pod.
pub fn start_servers(server: &Pod, dserver: &Pod) -> Result<Vec<PodProcess>> {
    setup::ensure_packages(&[("iperf3", "iperf3")])?;
    let port = IPERF_PORT.to_string();
    let mut servers = Vec::new();
    for pod in [server, dserver] {
        // Its stdout is a pipe: without --forceflush "Server listening" stays in a buffer.
        let mut process = pod.spawn("iperf3", ["-s", "-p", &port, "--forceflush"])?;
        if !mesh_tests::wait_until(Duration::from_secs(10), || {
            process.stdout().contains("Server listening")
        }) {
            bail!(
                "iperf3 -s in pod {} did not start (running: {}): {}",
                pod.name(),
                process.is_running(),
                process.stderr()
            );
        }
        servers.push(process);
    }
    Ok(servers)
}

/// Single-stream runs of `seconds` (whole seconds, at least one), direct and mesh alternated:
/// (direct, mesh), each with `gbit_per_s`, what the receiving server counted. The mesh client
/// dials the server pod's IP (a workload IP: captured and carried over HBONE like a VIP).
pub(super) fn single_stream(run: &mut Runner, seconds: f64) -> Result<(Vec<Value>, Vec<Value>)> {
    let seconds = seconds.round().max(1.0);
    run.rotated(|r, way| {
        let server = match way {
            Way::Direct => r.bed.dserver.ip(),
            Way::Mesh => r.bed.server.ip(),
        };
        let args = [
            "-c",
            &server.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ]
        .map(String::from)
        .to_vec();
        // A control connection and the data connection.
        let mut out =
            r.measure_with(Path::new("iperf3"), way, IPERF_PORT, args, seconds, Some(2))?;
        let received = out["end"]["sum_received"]["bits_per_second"].as_f64();
        let sent = out["end"]["sum_sent"]["bits_per_second"].as_f64();
        let Some(received) = received else {
            bail!("iperf3 reported no received throughput: {}", out["error"]);
        };
        let gbit = |bits: f64| (bits / 1e6).round() / 1e3;
        // The per-interval reports and connection details are not worth keeping.
        if let Some(o) = out.as_object_mut() {
            o.remove("intervals");
            o.remove("start");
            o.remove("end");
        }
        out["gbit_per_s"] = json!(gbit(received));
        out["sender_gbit_per_s"] = json!(sent.map(gbit));
        Ok(out)
    })
}

/// The row's footnote.
pub const NOTE: &str = "⁸ iperf3 (Debian's) single stream, `iperf3 -c <server pod IP> -t <s>`, \
client and server in the same pods as the rows above (cgroup and network namespace), the mesh \
client captured and carried over HBONE to the server pod's IP (a workload IP), checked like \
the other runs (two connections each: iperf3's control and data connections); the receiver's \
throughput. It cross-checks the pod-tool row. A client process outside the agents' \
--cgroup-root (here the tests' cgroup, not the whole hierarchy), e.g. `ip netns exec` from a \
shell, is not captured: it reaches the server pod in plaintext through node-2's inbound proxy \
only, one hop and no TLS, and measures that instead of HBONE.";
