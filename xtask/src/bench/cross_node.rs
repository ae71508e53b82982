//! The cross-node scenario: a client pod on node-1 and a server pod on node-2, each enrolled on
//! its own agent (see `cross_bed`), against the same kind of pods without any mesh ("direct"),
//! in the same run. It measures the DESIGN.md rows for HBONE across two agents: single- and
//! 4-stream throughput, 1 KiB request/response latency, new connections per second, and the
//! CPU the two agents spend per GB moved.
//!
//! Every run is bracketed by readings of both agents (their pods' connection counters, their
//! kernel counters, every HBONE-named number in `status -o json` and `/metrics`) and watched
//! on the wire (the server pod's sockets, sampled while the client runs), so each row says
//! which path it measured: HBONE (port 15008, HBONE counters rising, no plaintext connection
//! from the client pod on the app port) or plaintext through both agents.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use super::cross_bed::{CrossBed, Way, ECHO_PORT, NODE_2, SINK_PORT};
use super::cross_iperf;
use super::cross_notes::{
    cpu_note, footnotes, noise_note, path_kind, path_note, runs_note, transport_of, CpuPerGb, HOW,
};
use super::cross_readings::{CpuReading, Reading};
use super::evidence::{hbone_peers, passive_opens, rises, transports, Wire};
use super::machine::{Machine, Noise};
use super::report::{self, Compare, Row, Target};
use super::scenario::{connect_rate_args, median, strings, Plan};
use super::sections;
use crate::cmd::progress;

/// Row labels start with this; a cross-node-only run replaces exactly these rows.
const ROW_PREFIX: &str = sections::CROSS_NODE.row_prefix;
/// The section's heading; a cross-node-only run replaces the section it starts.
const HEADING: &str = sections::CROSS_NODE.heading;

/// How the mesh runs crossed from node-1 to node-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Hbone,
    Plaintext,
    /// Some runs one way, some the other, or no evidence either way.
    Unclear,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Hbone => "cross-node HBONE mTLS",
            Transport::Plaintext => "cross-node (plaintext, HBONE not active)",
            Transport::Unclear => "cross-node (path not verified as HBONE)",
        }
    }

    /// The target cell's note: the targets are HBONE's.
    fn target_note(self) -> &'static str {
        match self {
            Transport::Hbone => "",
            _ => " ⁶",
        }
    }
}

/// The scenario's outcome: rows for the table, the section's text and the raw samples.
pub struct CrossNode {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub raw: Value,
    pub took: f64,
}

/// Runs the scenario with the release binaries in `bins`, both nodes running `agent`.
pub fn run(bins: &Path, agent: &Path, plan: &Plan) -> Result<CrossNode> {
    let started = Instant::now();
    let bed = CrossBed::start(bins, agent, bins.join("pod-tool"))?;
    let mut run = Runner {
        bed,
        plan,
        noise: Vec::new(),
        warnings: Vec::new(),
        raw: Map::new(),
    };
    let warmup = run.warm_up()?;
    run.raw.insert("warmup".into(), warmup);
    progress("cross-node: 1 KiB request/response latency");
    let (rr_direct, rr_mesh) = run.rotated(|r, way| {
        let (count, warmup) = (r.plan.rr_count, r.plan.rr_warmup);
        let args = strings(&[
            "rr",
            "--connect",
            &r.bed.echo(way),
            "--size",
            "1024",
            "--count",
            &count.to_string(),
            "--warmup",
            &warmup.to_string(),
        ]);
        r.measure(way, ECHO_PORT, args, count as f64 * 0.01, Some(1))
    })?;
    let mut streams = Vec::new();
    for (n, secs) in [(1usize, plan.stream_secs), (4, plan.stream4_secs)] {
        progress(&format!("cross-node: throughput, {n} stream(s)"));
        streams.push(run.rotated(|r, way| {
            let args = strings(&[
                "stream",
                "--connect",
                &r.bed.sink(way),
                "--seconds",
                &secs.to_string(),
                "--streams",
                &n.to_string(),
            ]);
            r.measure(way, SINK_PORT, args, secs, Some(n as u64))
        })?);
    }
    progress("cross-node: iperf3 single stream (a cross-check with an outside tool)");
    let iperf = cross_iperf::start_servers(&run.bed.server, &run.bed.dserver).and_then(|servers| {
        let measured = cross_iperf::single_stream(&mut run, plan.stream_secs);
        drop(servers);
        measured
    });
    progress("cross-node: new connections per second");
    let (secs, concurrency) = (plan.connect_secs, plan.concurrency);
    let (cr_direct, cr_mesh) = run.rotated(|r, way| {
        let args = connect_rate_args(&r.bed.echo(way), secs, concurrency);
        r.measure(way, ECHO_PORT, args, secs, None)
    })?;
    let [(s1_direct, s1_mesh), (s4_direct, s4_mesh)]: [(Vec<Value>, Vec<Value>); 2] = streams
        .try_into()
        .map_err(|_| anyhow::anyhow!("two stream series"))?;

    let mesh_runs: Vec<&Value> = [&rr_mesh, &s1_mesh, &s4_mesh, &cr_mesh]
        .into_iter()
        .flatten()
        .collect();
    let transport = transport_of(&mesh_runs);
    let label = transport.label();
    let note = transport.target_note();
    let cpu1 = CpuPerGb::of(&s1_direct, &s1_mesh);
    let cpu4 = CpuPerGb::of(&s4_direct, &s4_mesh);
    let mut rows = vec![
        Row::new(format!("{label}: single-stream throughput"), "Gbit/s")
            .values(
                median(&s1_direct, "gbit_per_s"),
                median(&s1_mesh, "gbit_per_s"),
                Compare::Ratio,
            )
            .target(Target::RatioAtLeast(0.33), note),
        Row::new(format!("{label}: 4-stream throughput"), "Gbit/s").values(
            median(&s4_direct, "gbit_per_s"),
            median(&s4_mesh, "gbit_per_s"),
            Compare::Ratio,
        ),
        Row::new(format!("{label}: 1 KiB request/response, p50"), "µs")
            .values(
                median(&rr_direct, "p50_us"),
                median(&rr_mesh, "p50_us"),
                Compare::Delta,
            )
            .target(Target::DeltaAtMost(60.0), note),
        Row::new(format!("{label}: 1 KiB request/response, p99"), "µs").values(
            median(&rr_direct, "p99_us"),
            median(&rr_mesh, "p99_us"),
            Compare::Delta,
        ),
        Row::new(
            format!("{label}: new connections per second (concurrency {concurrency})"),
            "conn/s",
        )
        .values(
            median(&cr_direct, "per_s"),
            median(&cr_mesh, "per_s"),
            Compare::Ratio,
        )
        .target(Target::RatioAtLeast(0.5), note),
        Row::new(format!("{label}: connect() latency p50, same runs"), "µs").values(
            median(&cr_direct, "connect_p50_us"),
            median(&cr_mesh, "connect_p50_us"),
            Compare::Delta,
        ),
        Row::new(
            format!("{label}: agents' CPU per GB moved, single stream (both agents) ⁷"),
            "s/GB",
        )
        .mesh_only(cpu1.agents),
        Row::new(
            format!("{label}: all CPU per GB moved, single stream (direct: kernel only) ⁷"),
            "s/GB",
        )
        .values(cpu1.direct_total, cpu1.mesh_total, Compare::Ratio),
    ];

    if let Ok((direct, mesh)) = &iperf {
        // Beside the throughput rows it cross-checks.
        let row = Row::new(
            format!("{label}: iperf3 single-stream throughput ⁸"),
            "Gbit/s",
        )
        .values(
            median(direct, "gbit_per_s"),
            median(mesh, "gbit_per_s"),
            Compare::Ratio,
        );
        rows.insert(2, row);
    }
    let mut notes = vec![path_note(
        transport,
        &mesh_runs,
        run.bed.join_tokens,
        run.bed.certificates,
    )];
    notes.push(footnotes(transport));
    notes.push(cpu_note(&[("single stream", &cpu1), ("4 streams", &cpu4)]));
    notes.push(match &iperf {
        Ok(_) => cross_iperf::NOTE.to_string(),
        Err(e) => format!("⁸ iperf3 not measured: {e:#}"),
    });
    notes.push(noise_note(&run.noise));
    notes.append(&mut run.warnings);
    let mut series = vec![
        ("1 KiB round trip p50 (µs)", "p50_us", &rr_direct, &rr_mesh),
        ("1 KiB round trip p99 (µs)", "p99_us", &rr_direct, &rr_mesh),
        (
            "single-stream throughput (Gbit/s)",
            "gbit_per_s",
            &s1_direct,
            &s1_mesh,
        ),
        (
            "4-stream throughput (Gbit/s)",
            "gbit_per_s",
            &s4_direct,
            &s4_mesh,
        ),
        ("new connections/s", "per_s", &cr_direct, &cr_mesh),
    ];
    if let Ok((direct, mesh)) = &iperf {
        series.push(("iperf3 single stream (Gbit/s)", "gbit_per_s", direct, mesh));
    }
    notes.push(runs_note(&series));
    notes.push(HOW.to_string());
    run.raw.insert(
        "latency".into(),
        json!({"direct": rr_direct, "mesh": rr_mesh}),
    );
    run.raw.insert(
        "stream_1".into(),
        json!({"direct": s1_direct, "mesh": s1_mesh}),
    );
    run.raw.insert(
        "stream_4".into(),
        json!({"direct": s4_direct, "mesh": s4_mesh}),
    );
    if let Ok((direct, mesh)) = &iperf {
        run.raw.insert(
            "iperf3_stream_1".into(),
            json!({"direct": direct, "mesh": mesh}),
        );
    }
    run.raw.insert(
        "connect_rate".into(),
        json!({"direct": cr_direct, "mesh": cr_mesh}),
    );
    run.raw.insert(
        "transport".into(),
        json!(format!("{transport:?}").to_lowercase()),
    );
    run.raw
        .insert("join_tokens".into(), json!(run.bed.join_tokens));
    run.raw.insert("plan".into(), plan.to_json());
    let raw = Value::Object(std::mem::take(&mut run.raw));
    progress(&format!(
        "cross-node: the mesh path was {}; cleaning up: agents, control plane, pods, bridge",
        transport.label()
    ));
    drop(run);
    Ok(CrossNode {
        rows,
        notes,
        raw,
        took: started.elapsed().as_secs_f64(),
    })
}

/// The section for results.md: heading, when and on what it ran, the table, the notes.
pub fn section(result: &Result<CrossNode>, machine: &Machine, quick: bool) -> String {
    let (mut out, cross) = sections::begin(HEADING, result, quick);
    let Some(cross) = cross else {
        return out;
    };
    let _ = writeln!(
        out,
        "Measured {} at commit {} in {:.0} s. Node-1's agent proxies the client pod, node-2's \
         the server pod; both agents and the control plane (embedded store) run on this \
         machine, and direct runs use a second, unenrolled pod pair on the same bridge.\n",
        machine.date, machine.git_commit, cross.took
    );
    out.push_str(&report::table_and_notes(&cross.rows, &cross.notes));
    out
}

/// The rows for results.json: the measured ones, or one saying why there are none.
pub fn json_rows(result: &Result<CrossNode>) -> Vec<Value> {
    let rows = result.as_ref().map(|r| r.rows.as_slice());
    report::json_rows_or_failure(rows, format!("{ROW_PREFIX}: HBONE across two agents"))
}

pub(super) struct Runner<'a> {
    pub(super) bed: CrossBed,
    pub(super) plan: &'a Plan,
    noise: Vec<Noise>,
    warnings: Vec<String>,
    raw: Map<String, Value>,
}

/// What both agents said at one moment.
impl Runner<'_> {
    /// Runs pod-tool `args` on `way`, watching the wire, and checks with both agents'
    /// counters that the traffic took that way. `app_port` is the server's port for the
    /// plaintext check; `connections` how many connections the run opens (`None`: from the
    /// tool's output).
    fn measure(
        &mut self,
        way: Way,
        app_port: u16,
        args: Vec<String>,
        seconds: f64,
        connections: Option<u64>,
    ) -> Result<Value> {
        let pod_tool = self.bed.pod_tool.clone();
        self.measure_with(&pod_tool, way, app_port, args, seconds, connections)
    }

    /// [`measure`](Self::measure) with another client `program` (it must print JSON: one
    /// object on its last line, or as its whole output).
    pub(super) fn measure_with(
        &mut self,
        program: &Path,
        way: Way,
        app_port: u16,
        args: Vec<String>,
        seconds: f64,
        connections: Option<u64>,
    ) -> Result<Value> {
        let agents = self.bed.agent_pids();
        ensure!(agents.len() == 2, "an agent is not running");
        let noise = Noise::sample_excluding(&agents);
        let cleared = self.clear_time_wait()?;
        let before = Reading::take(&self.bed)?;
        let sink = self.bed.sink_pid(way);
        let server_pod = self.bed.server_pod_pid();
        let accepted_before = passive_opens(server_pod);
        let cpu_before = CpuReading::take(&agents, sink);
        let (mut out, wire) = self.tool(program, way, app_port, &args, seconds)?;
        let cpu = CpuReading::take(&agents, sink).since(&cpu_before);
        let accepted = passive_opens(server_pod).saturating_sub(accepted_before);
        let after = Reading::take(&self.bed)?;
        let n = connections
            .or_else(|| out["connections"].as_u64())
            .unwrap_or(1);
        let out_conns = after.client_out.0.saturating_sub(before.client_out.0);
        let in_conns = after.server_in.0.saturating_sub(before.server_in.0);
        let failures = (after.client_out.1 + after.server_in.1)
            .saturating_sub(before.client_out.1 + before.server_in.1);
        let captured = after
            .kernel(1, "connect_captured")
            .saturating_sub(before.kernel(1, "connect_captured"));
        let steered = after
            .kernel(2, "lookup_steered")
            .saturating_sub(before.kernel(2, "lookup_steered"));
        let hbone = rises(&before.hbone, &after.hbone);
        let seen = format!(
            "expected {n} connection(s) via {way:?}; node-1 counted client outbound \
             +{out_conns}, connect4 captures +{captured}; node-2 counted server inbound \
             +{in_conns}, sk_lookup steered +{steered}; HBONE numbers that rose: {hbone:?}; \
             wire: {wire:?}"
        );
        let ok = match way {
            Way::Direct => {
                out_conns == 0
                    && in_conns == 0
                    && after.kernel1 == before.kernel1
                    && after.kernel2 == before.kernel2
                    && !wire.seen().0
            }
            Way::Mesh => out_conns >= n && in_conns >= n && captured >= n,
        };
        ensure!(ok, "the traffic did not take the expected path: {seen}");
        if failures > 0 {
            self.warnings.push(format!(
                "Warning: the agents counted {failures} failed connection(s) during a {way:?} \
                 run of `{}`.",
                args.join(" ")
            ));
        }
        let errors = out["errors"].as_u64().unwrap_or(0);
        if errors > 0 {
            self.warnings.push(format!(
                "Warning: {errors} connection attempt(s) failed during a {way:?} run of `{}` \
                 (rates count successful ones only).",
                args.join(" ")
            ));
        }
        out["path"] = json!(match way {
            Way::Direct => "direct",
            Way::Mesh => path_kind(&wire, &hbone),
        });
        out["verified"] = json!({
            "client_outbound_connections": out_conns,
            "server_inbound_connections": in_conns,
            "connect4_captured_node1": captured,
            "sk_lookup_steered_node2": steered,
            "agent_failures": failures,
            "hbone_rises": hbone,
            // Node-2 delivers each connection to the app over the server pod's loopback
            // (one accept there each); the rest of the server pod's accepts are the
            // connections that arrived from node-1: HBONE connections (pooled, so few) or
            // one plaintext connection per proxied one.
            "server_pod_tcp_accepts": accepted,
            "tcp_connections_from_node1": accepted.saturating_sub(in_conns),
        });
        out["wire"] = wire.to_json();
        out["cpu"] = cpu;
        out["noise"] = noise.to_json();
        out["time_wait_cleared_before"] = json!(cleared);
        self.noise.push(noise);
        Ok(out)
    }

    /// Runs the client to completion, sampling the server pod's sockets every 200 ms.
    fn tool(
        &self,
        program: &Path,
        way: Way,
        app_port: u16,
        args: &[String],
        seconds: f64,
    ) -> Result<(Value, Wire)> {
        let (observe, client) = match way {
            Way::Mesh => (self.bed.server_pod_pid(), self.bed.client.ip()),
            Way::Direct => (self.bed.dserver_pid(), self.bed.dclient.ip()),
        };
        let pod = self.bed.client_pod(way);
        let timeout = Duration::from_secs_f64(seconds + 60.0);
        let mut child = pod.spawn(program, args)?;
        let started = Instant::now();
        let mut wire = Wire::default();
        // One sample right away, so even a run shorter than the interval has one.
        wire.sample(observe, app_port, client);
        let mut next = started + Duration::from_millis(100);
        // Once, 0.3 s into the run (both ways alike, so they pay the same for it).
        let status_at = started + Duration::from_millis(300);
        let mut status_taken = false;
        while child.try_wait()?.is_none() && started.elapsed() < timeout {
            let now = Instant::now();
            if now >= next {
                wire.sample(observe, app_port, client);
                next += Duration::from_millis(200);
            }
            if !status_taken && now >= status_at {
                status_taken = true;
                for agent in [&self.bed.node1, &self.bed.node2] {
                    if let Ok(status) = agent.status_json() {
                        wire.transports
                            .insert(agent.node.to_string(), transports(&status));
                        if agent.node == NODE_2 {
                            wire.peer_identities = hbone_peers(&status);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_output(Duration::from_secs(5))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            let logs = match way {
                Way::Mesh => format!(
                    "\n--- node-1 agent log (tail) ---\n{}\n--- node-2 agent log (tail) ---\n{}",
                    self.bed.node1.log_tail(15),
                    self.bed.node2.log_tail(15)
                ),
                Way::Direct => String::new(),
            };
            bail!(
                "{} {} in pod {} failed ({}): {stderr}{logs}",
                program.display(),
                args.join(" "),
                pod.name(),
                out.status
            );
        }
        let line = stdout.lines().last().unwrap_or_default();
        let mut value: Value = serde_json::from_str(line)
            .or_else(|_| serde_json::from_str(&stdout))
            .with_context(|| {
                format!("{} {args:?} printed no JSON: {stdout:?}", program.display())
            })?;
        if !stderr.is_empty() {
            value["stderr"] = Value::String(stderr);
        }
        Ok((value, wire))
    }

    fn clear_time_wait(&self) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        for pod in self.bed.pods() {
            let n = super::testbed::time_wait(pod)?;
            if n > 0 {
                pod.run("ss", ["-K", "state", "time-wait"], Duration::from_secs(30))
                    .with_context(|| format!("clearing TIME_WAIT sockets in pod {}", pod.name()))?;
            }
            counts.insert(pod.short_name().to_string(), n);
        }
        Ok(counts)
    }

    /// Direct and mesh, `repeats` times, alternating which goes first.
    pub(super) fn rotated(
        &mut self,
        mut one: impl FnMut(&mut Self, Way) -> Result<Value>,
    ) -> Result<(Vec<Value>, Vec<Value>)> {
        let (mut direct, mut mesh) = (Vec::new(), Vec::new());
        for r in 0..self.plan.repeats {
            let order = if r % 2 == 0 {
                [Way::Direct, Way::Mesh]
            } else {
                [Way::Mesh, Way::Direct]
            };
            for way in order {
                let v = one(self, way)?;
                match way {
                    Way::Direct => direct.push(v),
                    Way::Mesh => mesh.push(v),
                }
            }
        }
        Ok((direct, mesh))
    }

    /// A few short mesh round trips before measuring: the first connection sets up whatever
    /// the path needs (e.g. the pooled HBONE connection). Up to three tries, 1 s apart, while
    /// the path is not settled (both or neither of HBONE and plaintext seen).
    fn warm_up(&mut self) -> Result<Value> {
        progress("cross-node: warm-up (and which path the mesh takes)");
        let args = strings(&[
            "rr",
            "--connect",
            &self.bed.echo(Way::Mesh),
            "--size",
            "1024",
            "--count",
            "2000",
            "--warmup",
            "10",
        ]);
        let mut tries = Vec::new();
        loop {
            let before = Reading::take(&self.bed)?;
            let pod_tool = self.bed.pod_tool.clone();
            let (_, wire) = self.tool(&pod_tool, Way::Mesh, ECHO_PORT, &args, 10.0)?;
            let after = Reading::take(&self.bed)?;
            let hbone = rises(&before.hbone, &after.hbone);
            let kind = path_kind(&wire, &hbone);
            tries.push(json!({"path": kind, "wire": wire.to_json(), "hbone_rises": hbone}));
            if kind == "hbone" || kind == "plaintext" || tries.len() >= 3 {
                return Ok(json!({
                    "tries": tries,
                    "hbone_numbers_node1_node2": after.hbone,
                }));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
