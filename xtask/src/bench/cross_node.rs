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

use super::cpu::{machine_ticks, Ticks};
use super::cross_bed::{
    CrossBed, Way, CLIENT_POD, ECHO_PORT, NODE_1, NODE_2, SERVER_POD, SINK_PORT,
};
use super::cross_iperf;
use super::evidence::{hbone_numbers, hbone_peers, passive_opens, rises, transports, Wire};
use super::machine::{Machine, Noise};
use super::report::{self, Compare, Row, Target};
use super::scenario::{connect_rate_args, median, median_of, strings, Plan};
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
struct Reading {
    client_out: (u64, u64),
    server_in: (u64, u64),
    kernel1: BTreeMap<String, u64>,
    kernel2: BTreeMap<String, u64>,
    hbone: BTreeMap<String, f64>,
}

impl Reading {
    fn take(bed: &CrossBed) -> Result<Reading> {
        let s1 = bed.node1.status_json()?;
        let s2 = bed.node2.status_json()?;
        let traffic = |status: &Value, pod: &str, dir: &str| -> Result<(u64, u64)> {
            let p = status["pods"]
                .as_array()
                .and_then(|pods| pods.iter().find(|p| p["pod"] == pod))
                .with_context(|| format!("pod {pod} is not in the agent's status"))?;
            Ok((
                p[dir]["connections"].as_u64().unwrap_or(0),
                p[dir]["failures"].as_u64().unwrap_or(0),
            ))
        };
        let kernel = |status: &Value| -> BTreeMap<String, u64> {
            status["kernel"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut hbone = BTreeMap::new();
        for (node, status, agent) in [(NODE_1, &s1, &bed.node1), (NODE_2, &s2, &bed.node2)] {
            let metrics = agent.metrics().unwrap_or_default();
            for (k, v) in hbone_numbers(status, &metrics) {
                hbone.insert(format!("{node} {k}"), v);
            }
        }
        Ok(Reading {
            client_out: traffic(&s1, CLIENT_POD, "outbound")?,
            server_in: traffic(&s2, SERVER_POD, "inbound")?,
            kernel1: kernel(&s1),
            kernel2: kernel(&s2),
            hbone,
        })
    }

    fn kernel(&self, node: u8, name: &str) -> u64 {
        let k = if node == 1 {
            &self.kernel1
        } else {
            &self.kernel2
        };
        k.get(name).copied().unwrap_or(0)
    }
}

/// CPU ticks of everything a transfer costs, taken before and after a run.
struct CpuReading {
    agents: Vec<Ticks>,
    children: Ticks,
    sink: Ticks,
    machine: (u64, u64),
    at: Instant,
}

impl CpuReading {
    fn take(agents: &[u32], sink: u32) -> CpuReading {
        CpuReading {
            agents: agents.iter().map(|p| Ticks::of_process(*p)).collect(),
            children: Ticks::of_waited_children(),
            sink: Ticks::of_process(sink),
            machine: machine_ticks(),
            at: Instant::now(),
        }
    }

    fn since(&self, before: &CpuReading) -> Value {
        let tick = 1.0 / super::cpu::clock_ticks();
        let agents: Vec<Ticks> = self
            .agents
            .iter()
            .zip(&before.agents)
            .map(|(a, b)| a.since(*b))
            .collect();
        let wall = self.at.duration_since(before.at).as_secs_f64();
        json!({
            "wall_s": wall,
            "agents_s": agents.iter().map(|t| t.seconds()).sum::<f64>(),
            "agents": agents.iter().zip([NODE_1, NODE_2]).map(|(t, n)| json!({"node": n, "cpu": t.to_json()})).collect::<Vec<_>>(),
            "client_s": self.children.since(before.children).seconds(),
            "client": self.children.since(before.children).to_json(),
            "sink_s": self.sink.since(before.sink).seconds(),
            "sink": self.sink.since(before.sink).to_json(),
            "irq_softirq_s": self.machine.1.saturating_sub(before.machine.1) as f64 * tick,
            "machine_busy_cores": self.machine.0.saturating_sub(before.machine.0) as f64 * tick / wall,
        })
    }
}

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

/// One mesh run's path from its evidence.
fn path_kind(wire: &Wire, hbone_rises: &BTreeMap<String, f64>) -> &'static str {
    let (hbone, plaintext) = wire.seen();
    match (hbone || !hbone_rises.is_empty(), plaintext) {
        (true, false) => "hbone",
        (false, true) => "plaintext",
        (true, true) => "mixed",
        (false, false) => "unseen",
    }
}

fn transport_of(runs: &[&Value]) -> Transport {
    let all = |k: &str| !runs.is_empty() && runs.iter().all(|r| r["path"] == k);
    if all("hbone") {
        Transport::Hbone
    } else if runs
        .iter()
        .all(|r| r["path"] == "plaintext" || r["path"] == "unseen")
        && runs.iter().any(|r| r["path"] == "plaintext")
    {
        Transport::Plaintext
    } else {
        Transport::Unclear
    }
}

/// CPU seconds per GB of one stream series (medians over the repetitions).
struct CpuPerGb {
    agents: f64,
    agents_user_share: f64,
    mesh_total: f64,
    direct_total: f64,
    direct_endpoints: f64,
    mesh_endpoints: f64,
    direct_irq: f64,
    mesh_irq: f64,
    busy_direct: f64,
    busy_mesh: f64,
}

impl CpuPerGb {
    fn of(direct: &[Value], mesh: &[Value]) -> CpuPerGb {
        let gb = |v: &Value| v["bytes"].as_f64().unwrap_or(f64::NAN) / 1e9;
        let per_gb = |runs: &[Value], f: &dyn Fn(&Value) -> f64| {
            median_of(runs.iter().map(|v| f(&v["cpu"]) / gb(v)).collect())
        };
        let endpoints =
            |c: &Value| c["client_s"].as_f64().unwrap_or(0.0) + c["sink_s"].as_f64().unwrap_or(0.0);
        let irq = |c: &Value| c["irq_softirq_s"].as_f64().unwrap_or(0.0);
        let agents = |c: &Value| c["agents_s"].as_f64().unwrap_or(0.0);
        let agents_user = |c: &Value| {
            c["agents"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|n| n["cpu"]["user_s"].as_f64().unwrap_or(0.0))
                        .sum()
                })
                .unwrap_or(0.0)
        };
        let user: f64 = mesh.iter().map(|v| agents_user(&v["cpu"])).sum();
        let all: f64 = mesh.iter().map(|v| agents(&v["cpu"])).sum();
        let busy = |runs: &[Value]| {
            median_of(
                runs.iter()
                    .filter_map(|v| v["cpu"]["machine_busy_cores"].as_f64())
                    .collect(),
            )
        };
        CpuPerGb {
            agents: per_gb(mesh, &agents),
            agents_user_share: user / all.max(f64::MIN_POSITIVE),
            mesh_total: per_gb(mesh, &|c| endpoints(c) + irq(c) + agents(c)),
            direct_total: per_gb(direct, &|c| endpoints(c) + irq(c)),
            direct_endpoints: per_gb(direct, &endpoints),
            mesh_endpoints: per_gb(mesh, &endpoints),
            direct_irq: per_gb(direct, &irq),
            mesh_irq: per_gb(mesh, &irq),
            busy_direct: busy(direct),
            busy_mesh: busy(mesh),
        }
    }
}

fn cpu_note(series: &[(&str, &CpuPerGb)]) -> String {
    let mut out = String::from(
        "⁷ CPU per GB moved (median over the repetitions; utime+stime from /proc, 10 ms \
         ticks): the two agents' processes (/proc/<pid>/stat, all threads), the sending \
         pod-tool client (its waited-for cutime/cstime), the receiving sink server \
         (/proc/<pid>/stat) and the machine's interrupt + softirq time (/proc/stat, where the \
         kernel accounts packet processing that no process is charged for; machine-wide, so \
         it includes any other work's interrupts). Direct moves bytes with nothing but \
         kernel work (the sender and the sink only make syscalls), so its total is the \
         kernel-only cost.\n",
    );
    for (what, c) in series {
        let _ = write!(
            out,
            "\n- {what}: agents {:.3} s/GB ({:.0}% user, the rest system); sender + sink {:.3} \
             s/GB direct, {:.3} s/GB mesh; interrupts + softirq {:.3} s/GB direct, {:.3} s/GB \
             mesh; all together {:.3} s/GB direct, {:.3} s/GB mesh ({:.1}×); machine busy \
             {:.2} (direct) and {:.2} (mesh) of {} cores",
            c.agents,
            100.0 * c.agents_user_share,
            c.direct_endpoints,
            c.mesh_endpoints,
            c.direct_irq,
            c.mesh_irq,
            c.direct_total,
            c.mesh_total,
            c.mesh_total / c.direct_total,
            c.busy_direct,
            c.busy_mesh,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
    }
    out
}

fn path_note(
    transport: Transport,
    mesh_runs: &[&Value],
    tokens: bool,
    certificates: [Option<bool>; 2],
) -> String {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut counters: BTreeMap<String, f64> = BTreeMap::new();
    let (mut hbone_max, mut plain_max) = (0u64, 0u64);
    let mut listed: BTreeMap<String, u64> = BTreeMap::new();
    let mut peers = std::collections::BTreeSet::new();
    let mut listener = false;
    let (mut tcp_from_node1, mut proxied) = (0u64, 0u64);
    for r in mesh_runs {
        *kinds
            .entry(r["path"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        for (k, v) in r["verified"]["hbone_rises"]
            .as_object()
            .into_iter()
            .flatten()
        {
            *counters.entry(k.clone()).or_default() += v.as_f64().unwrap_or(0.0);
        }
        hbone_max = hbone_max.max(
            r["wire"]["hbone_port_connections_max"]
                .as_u64()
                .unwrap_or(0),
        );
        plain_max = plain_max.max(
            r["wire"]["plaintext_app_port_connections_from_client_max"]
                .as_u64()
                .unwrap_or(0),
        );
        let wire = &r["wire"];
        let by_node = wire["open_connections_by_transport_mid_run"].as_object();
        for (node, by) in by_node.into_iter().flatten() {
            for (t, n) in by.as_object().into_iter().flatten() {
                let e = listed.entry(format!("{t} on {node}")).or_default();
                *e = (*e).max(n.as_u64().unwrap_or(0));
            }
        }
        for id in wire["hbone_peer_identities_node2_mid_run"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            peers.insert(id.to_string());
        }
        listener |= wire["hbone_listener"] == true;
        tcp_from_node1 += r["verified"]["tcp_connections_from_node1"]
            .as_u64()
            .unwrap_or(0);
        proxied += r["verified"]["server_inbound_connections"]
            .as_u64()
            .unwrap_or(0);
    }
    let kinds = kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let peers = if peers.is_empty() {
        "none".to_string()
    } else {
        peers.into_iter().collect::<Vec<_>>().join(", ")
    };
    let counters = if counters.is_empty() {
        "none rose".to_string()
    } else {
        counters
            .iter()
            .take(8)
            .map(|(k, v)| format!("`{k}` +{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let listed = if listed.is_empty() {
        "none".to_string()
    } else {
        listed
            .iter()
            .map(|(t, n)| format!("up to {n} {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cert = |c: Option<bool>| match c {
        None => "no identities",
        Some(true) => "yes",
        Some(false) => "not within 20 s",
    };
    let verdict = match transport {
        Transport::Hbone => {
            "**Path: HBONE.** The mesh runs went client → connect4 → node-1's \
                            outbound proxy → HTTP/2 CONNECT over mutual TLS to the server pod's \
                            IP:15008 → node-2's HBONE listener → the app."
        }
        Transport::Plaintext => {
            "**Path: plaintext through both agents; HBONE was not active.** \
                                 The mesh runs went client → connect4 → node-1's outbound proxy \
                                 → plain TCP to the server pod's IP:port → sk_lookup → node-2's \
                                 inbound proxy → the app."
        }
        Transport::Unclear => {
            "**Path: not verified as HBONE** (the runs disagree or showed \
                               no evidence; see the per-run `path` in results.json)."
        }
    };
    format!(
        "{verdict} Evidence over all {} mesh runs: per-run verdicts {kinds}; on the wire, up \
         to {hbone_max} connection(s) on the server pod's port 15008 and up to {plain_max} \
         plaintext connection(s) from the client pod on the app's port (sampled every 200 ms \
         while the client ran); the agents' open connections by transport, once mid-run: \
         {listed}; HBONE peer identities node-2 listed: {peers}; TCP connections node-1 \
         opened into the server pod: {tcp_from_node1} for {proxied} proxied connections \
         ({:.2} per connection, from the pod's `Tcp: PassiveOpens` minus node-2's deliveries \
         to the app, so node-2's health checks of the app count too; a pooled HBONE \
         connection carries many); HBONE listener in the server pod: {}; HBONE numbers of the agents that \
         rose: {counters}. Agents joined with tokens: {}; certificate for the client pod on \
         node-1: {}, for the server pod on node-2: {}.",
        mesh_runs.len(),
        tcp_from_node1 as f64 / proxied.max(1) as f64,
        if listener { "yes" } else { "no" },
        if tokens {
            "yes"
        } else {
            "no (meshctl has no `token create`)"
        },
        cert(certificates[0]),
        cert(certificates[1]),
    )
}

fn footnotes(transport: Transport) -> String {
    let mut s = String::new();
    if transport != Transport::Hbone {
        s.push_str(
            "⁶ The targets are DESIGN.md's for HBONE mTLS across two agents; this run's mesh \
             path was not HBONE, so \"met\" says nothing about them yet. ",
        );
    }
    s.push_str(
        "Targets: single stream ≥ 0.33 of direct, new connections ≥ 0.5 of direct, ≤ +60 µs \
         p50 per 1 KiB round trip (\"full mesh path\").",
    );
    s
}

fn noise_note(noise: &[Noise]) -> String {
    let busy = noise.iter().filter(|n| n.busy()).count();
    let max_load = noise.iter().map(|n| n.load1).fold(0.0, f64::max);
    if busy == 0 {
        return format!(
            "Other work on the machine: none seen in {} samples (max 1-min load average \
             {max_load:.2}).",
            noise.len()
        );
    }
    format!(
        "**Noise:** other work ran during {busy} of {} measurements (up to {} other \
         mesh-agent processes, {} compiler processes; max 1-min load average {max_load:.2}). \
         Direct and mesh alternate, so both see it.",
        noise.len(),
        noise.iter().map(|n| n.other_agents).max().unwrap_or(0),
        noise.iter().map(|n| n.compilers).max().unwrap_or(0),
    )
}

fn runs_note(series: &[(&str, &str, &Vec<Value>, &Vec<Value>)]) -> String {
    let list = |v: &[Value], key: &str| {
        v.iter()
            .map(|x| format!("{:.2}", x[key].as_f64().unwrap_or(f64::NAN)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from("Runs (each repetition, in run order; rows show the median):\n");
    for (what, key, direct, mesh) in series {
        let _ = write!(
            out,
            "\n- {what}: direct [{}]; mesh [{}]",
            list(direct, key),
            list(mesh, key)
        );
    }
    out
}

const HOW: &str = "How: the same pod-tool clients as above (`rr` 1 KiB echo round trips, \
`stream` to a sink with the clock stopped when the sink has read everything, `connect-rate` \
with 2 threads), each run bracketed by both agents' `status -o json` and `/metrics`: a mesh \
run must raise node-1's client outbound and connect4 counters and node-2's server inbound \
counter by at least the connections it made; a direct run must change no counter of either \
agent. Direct and mesh alternate (direct first in even repetitions); every run starts with \
the pods' TIME_WAIT sockets removed.";
