//! `cargo xtask bench`: the mesh measured against direct connections between the same kind of
//! pods on the same bridge, in the same run, as ratios or deltas (absolute numbers drift from
//! run to run; see DESIGN.md, "Performance targets").
//!
//! - `testbed`: the bridge, the pods, the servers and the release agent.
//! - `scenario`: running one pod-tool client with proof of the path it took; latency,
//!   throughput and connection rate.
//! - `capture`: eBPF connect4 vs iptables REDIRECT in front of the same proxy.
//! - `memory`: agent RSS, idle and per idle proxied connection.
//! - `cross_bed`, `cross_node`, `evidence`: two agents (node-1, node-2) following one control
//!   plane, a client pod on one and a server pod on the other: HBONE (or, without it,
//!   plaintext) across two agents against direct, with proof of the path taken.
//! - `machine`, `report`: what it ran on, and results.md / results.json.

mod capture;
mod cpu;
mod cross_bed;
mod cross_node;
mod evidence;
mod machine;
mod memory;
mod report;
mod scenario;
mod testbed;

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::cmd::{progress, workspace_root};
use crate::setup;
use machine::{Machine, Noise};
use report::{Report, Row};
use scenario::{Bench, Plan, Samples};
use testbed::Testbed;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Run only this scenario and replace its part of results.md and results.json (the
    /// rest stays as the last full run left it). Without it: everything.
    #[arg(value_enum)]
    only: Option<Only>,
    /// A smoke run: short durations and one repetition (numbers not worth comparing).
    #[arg(long)]
    quick: bool,
    /// Directory for results.md and results.json [default: <workspace>/bench].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Repetitions of every measurement; rows show the median [default: 3, 1 with --quick].
    #[arg(long)]
    repeats: Option<usize>,
    /// Use the release binaries already in target/release instead of building them first.
    #[arg(long)]
    no_build: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Only {
    /// HBONE across two agents (node-1, node-2) against direct.
    CrossNode,
}

pub fn run(args: BenchArgs) -> Result<()> {
    setup::require_root("cargo xtask bench")?;
    setup::ensure_packages(&[])?;
    if let Some(Only::CrossNode) = args.only {
        return cross_node_only(args);
    }
    let iptables = setup::ensure_packages(&[("iptables", "iptables")])
        .map_err(|e| format!("iptables is not installed and installing it failed: {e:#}"));
    if !args.no_build {
        setup::build_all(true)?;
    }
    let out_dir = args.out.unwrap_or_else(|| workspace_root().join("bench"));
    let plan = Plan::new(args.quick, args.repeats);
    let mut machine = Machine::describe();
    let started = Instant::now();

    let mut bed = Testbed::start(
        setup::binary("mesh-agent", true),
        setup::binary("pod-tool", true),
    )?;
    let mut bench = Bench::new(&mut bed, &plan);
    progress("agent memory, idle");
    let idle = bench.idle_rss(
        "idle_rss_enrolled",
        "agent idle RSS (2 pods enrolled, no traffic yet)",
        true,
    );
    progress("1 KiB request/response latency");
    let latency = section(bench.latency(), "1 KiB request/response latency");
    progress("throughput (1 and 4 streams)");
    let throughput = section(bench.throughput(), "throughput");
    progress("new connections per second");
    let connect = section(bench.connect_rate(), "new connections per second");
    progress("connect latency: eBPF capture vs iptables REDIRECT");
    let capture = bench.capture(iptables);
    let idle_after = bench.idle_rss(
        "idle_rss_after_traffic",
        "agent idle RSS after the traffic above",
        false,
    );
    // Last: closing thousands of connections leaves memory in the allocator that would
    // hide what later connections cost.
    progress(&format!(
        "agent memory per idle proxied connection ({} x {} held connections)",
        plan.hold_steps, plan.hold_per_step
    ));
    let per_conn = bench.per_connection();
    let after_hold = bench.idle_rss(
        "idle_rss_after_hold",
        "agent RSS after the held connections closed",
        false,
    );

    let memory = vec![idle, per_conn, idle_after, after_hold];
    let rows: Vec<Row> = [latency, throughput, connect, capture, memory]
        .into_iter()
        .flatten()
        .collect();
    let mut notes = footnotes(&mesh_path(&bench.raw));
    notes.push(noise_summary(&bench.noise));
    notes.append(&mut bench.notes);
    notes.push(format!(
        "Where the agent's CPU goes (median per unit of work, from /proc/<agent>/task/*/stat; \
         10 ms tick resolution):\n\n- {}",
        bench.cpu_lines.join("\n- ")
    ));
    notes.push(runs(&bench.samples));
    notes.push(HOW.to_string());
    let mut raw = json!({
        "plan": plan.to_json(),
        "measurements": Value::Object(std::mem::take(&mut bench.raw)),
        "noise": bench.noise.iter().map(Noise::to_json).collect::<Vec<_>>(),
    });
    drop(bench);
    progress("cleaning up: agent, pods, bridge, pinned programs");
    drop(bed);
    progress("cross-node: HBONE across two agents");
    let cross = cross_node::run(&release_dir(), &plan);
    if let Err(e) = &cross {
        eprintln!("cross-node: {e:#}");
    }
    notes.push(cross_node::section(&cross, &machine, args.quick));
    let more_rows = cross_node::json_rows(&cross);
    raw["cross_node"] = match cross {
        Ok(c) => c.raw,
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    if let Some(left) = leftovers() {
        notes.push(format!("Warning: left behind after cleanup: {left}"));
    }
    progress("control plane at scale (embedded store and etcd)");
    notes.push(control_plane_section(crate::bench_control::run(args.quick)));
    machine.took_seconds = started.elapsed().as_secs_f64();

    let report = Report {
        machine: &machine,
        rows: &rows,
        notes: &notes,
        raw,
        quick: args.quick,
        more_rows,
    };
    report.write(&out_dir)?;
    println!("\n{}", report::table(&rows));
    for note in &notes {
        println!("{note}\n");
    }
    progress(&format!(
        "wrote {} and results.json",
        out_dir.join("results.md").display()
    ));
    Ok(())
}

/// `cargo xtask bench cross-node`: only the cross-node scenario; its section, rows and raw
/// samples replace the old ones in results.md and results.json, the rest stays.
fn cross_node_only(args: BenchArgs) -> Result<()> {
    if !args.no_build {
        setup::build_all(true)?;
    }
    let out_dir = args.out.unwrap_or_else(|| workspace_root().join("bench"));
    let plan = Plan::new(args.quick, args.repeats);
    let mut machine = Machine::describe();
    let started = Instant::now();
    let cross = cross_node::run(&release_dir(), &plan);
    machine.took_seconds = started.elapsed().as_secs_f64();
    // A failed scenario leaves the last results alone.
    let cross = Ok(cross.context("cross-node scenario (results files left unchanged)")?);
    let mut section = cross_node::section(&cross, &machine, args.quick);
    if let Some(left) = leftovers() {
        section.push_str(&format!("\nWarning: left behind after cleanup: {left}\n"));
    }
    let rows = cross_node::json_rows(&cross);
    let raw = cross.map(|c| c.raw).unwrap_or_default();

    std::fs::create_dir_all(&out_dir)?;
    let (md_path, json_path) = (out_dir.join("results.md"), out_dir.join("results.json"));
    match (
        std::fs::read_to_string(&md_path),
        std::fs::read_to_string(&json_path),
    ) {
        (Ok(md), Ok(js)) => {
            let mut js: Value = serde_json::from_str(&js)
                .with_context(|| format!("{} is not JSON", json_path.display()))?;
            cross_node::splice::json(&mut js, rows, &section, raw);
            std::fs::write(&md_path, cross_node::splice::markdown(&md, &section))?;
            std::fs::write(&json_path, serde_json::to_string_pretty(&js)? + "\n")?;
        }
        // No earlier full run: a results file with only this section.
        _ => Report {
            machine: &machine,
            rows: &[],
            notes: std::slice::from_ref(&section),
            raw: json!({ "cross_node": raw }),
            quick: args.quick,
            more_rows: rows,
        }
        .write(&out_dir)?,
    }
    println!("{section}");
    progress(&format!(
        "updated the cross-node section of {} and results.json",
        md_path.display()
    ));
    Ok(())
}

fn release_dir() -> PathBuf {
    workspace_root().join("target").join("release")
}

/// A section's rows, or one row saying why it could not be measured.
fn section(rows: Result<Vec<Row>>, what: &str) -> Vec<Row> {
    rows.unwrap_or_else(|e| vec![Row::failed(what, format!("{e:#}"))])
}

/// How the mesh runs went from client to server, from their counters: through sk_lookup and
/// the server's inbound proxy (two hops), or delivered by the outbound proxy straight into the
/// server pod (same-node delivery, one hop).
fn mesh_path(raw: &serde_json::Map<String, Value>) -> String {
    let runs = raw
        .get("latency")
        .and_then(|l| l["mesh"].as_array())
        .cloned()
        .unwrap_or_default();
    let steered = runs
        .iter()
        .filter(|r| r["verified"]["sk_lookup_steered"].as_u64().unwrap_or(0) > 0)
        .count();
    if runs.is_empty() {
        "client → connect4 → outbound proxy → server pod (not measured)".into()
    } else if steered == runs.len() {
        "client → connect4 → outbound proxy (127.0.0.1:15001 in the client pod) → server pod \
         IP → sk_lookup → inbound proxy → app over the server pod's loopback: two proxy hops, \
         four TCP connections in one agent"
            .into()
    } else if steered == 0 {
        "client → connect4 → outbound proxy (127.0.0.1:15001 in the client pod) → delivered \
         straight to the app over the server pod's loopback (same-node delivery; sk_lookup \
         not involved): one proxy hop, two TCP connections in one agent"
            .into()
    } else {
        format!(
            "client → connect4 → outbound proxy → server pod; {steered} of {} runs went \
             through sk_lookup and the inbound proxy, the others did not",
            runs.len()
        )
    }
}

fn footnotes(mesh_path: &str) -> Vec<String> {
    vec![format!(
        "¹ The design's latency target is for the full mesh path with HBONE mTLS between \
         nodes (see the cross-node section below). \"mesh\" here is the same-node path, as \
         the agent's counters showed it in these runs: {mesh_path}. ² The design's ≥ 0.5 \
         target is for HBONE (cross-node section); this is the same-node L4 path. ³ Baseline column = iptables \
         REDIRECT, mesh column = eBPF connect4, both in front of the same outbound proxy; the \
         VIP's endpoint is an unenrolled pod, so only the outbound hop follows and capture is \
         all that differs. ⁴ Only the inbound hop: an unenrolled client dials the enrolled \
         server's pod IP (sk_lookup → inbound proxy → app), to split the mesh's cost."
    )]
}

fn noise_summary(noise: &[Noise]) -> String {
    let busy = noise.iter().filter(|n| n.busy()).count();
    let max_load = noise.iter().map(|n| n.load1).fold(0.0, f64::max);
    let max_agents = noise.iter().map(|n| n.other_agents).max().unwrap_or(0);
    let max_pods = noise.iter().map(|n| n.other_pods).max().unwrap_or(0);
    let max_cc = noise.iter().map(|n| n.compilers).max().unwrap_or(0);
    if busy == 0 {
        return format!(
            "Other work on the machine: none seen (no other mesh agents, test pods or \
             compilers in {} samples; max 1-min load average {max_load:.2}).",
            noise.len()
        );
    }
    format!(
        "**Noise:** other work was running during {busy} of {} measurements (up to \
         {max_agents} other mesh-agent processes, {max_pods} pods of other test runs, \
         {max_cc} compiler processes; max 1-min load average {max_load:.2}) on this \
         {}-core machine. Direct and mesh runs alternate so both see it, but expect more \
         spread than on an idle machine; see the runs below.",
        noise.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    )
}

fn runs(samples: &[Samples]) -> String {
    let mut out = String::from("Runs (each repetition, in run order; rows show the median):\n");
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for s in samples {
        let _ = write!(out, "\n- {}:", s.label);
        if !s.baseline.is_empty() {
            let _ = write!(out, " {} [{}];", s.baseline_name, list(&s.baseline));
        }
        let _ = write!(out, " {} [{}]", s.mesh_name, list(&s.mesh));
    }
    out
}

const HOW: &str = "How each number is measured. Every client is `pod-tool` running inside a pod \
(its cgroup and network namespace). Pods on one bridge: `client` → `server` are enrolled and the \
client dials service VIPs (full mesh path ¹); `dclient` → `dserver` are identical pods that are \
never enrolled and dial the server pod IP (direct: no agent involvement); `dclient` → `server` \
pod IP is the inbound hop alone ⁴; `client` → a VIP whose endpoint is `dserver` is the outbound \
hop alone ³. The paths alternate in every repetition (rotating which goes first), rows show \
the median of the repetitions, and every run starts with the pods' TIME_WAIT sockets removed \
(`ss -K`) except in the back-to-back row ⁵. Before and after every run the agent's status \
counters are read and must show the path: the client pod's outbound and the server pod's \
inbound connection counts and the connect4 captures rise by at least the connections the \
client made where the path has them and stay unchanged where it has not; inbound-only runs \
must also be steered by sk_lookup (a direct run changes no counter at all; an iptables run has \
zero connect4 captures); a run that fails this check fails its row. \
Latency: `rr`, 1 KiB echo round trips on one connection after a warm-up. Throughput: `stream` \
to a sink, the clock stops when the sink has read everything. Connections: `connect-rate` \
(connect, 1-byte echo, close; 2 threads; connect() p50/p99 from the same runs). iptables \
variant: the client's pinned connect4 link is removed (which detaches it) and `iptables -t nat \
-A OUTPUT -p tcp -d <VIP> --dport 80 -j REDIRECT --to-ports 15001` added in the client pod; \
the proxy then finds the destination with SO_ORIGINAL_DST; switching back re-enrolls the \
client. Memory: VmRSS of the agent process; per connection: RSS growth after `pod-tool hold` \
opened N more idle mesh connections (confirmed by the agent's active-connection gauges on \
both hops), divided by N, over several steps without closing earlier ones; kernel socket \
buffers are not in RSS. Agent CPU: utime+stime of the agent's threads across each run.";

/// Harness objects of this process that survived cleanup.
fn leftovers() -> Option<String> {
    let prefix = mesh_tests::prefix();
    let mut left = Vec::new();
    for dir in ["/run/netns", "/sys/fs/bpf", "/sys/class/net"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if mesh_tests::janitor::prefix_of(&name) == Some(prefix.as_str()) {
                left.push(format!("{dir}/{name}"));
            }
        }
    }
    (!left.is_empty()).then(|| left.join(", "))
}

/// The control-plane rows (issue 3's scale targets), as their own table: they compare two
/// stores rather than the mesh with a direct path.
fn control_plane_section(result: Result<Vec<crate::bench_control::ControlPlaneRow>>) -> String {
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => return format!("\n## Control plane at scale\n\nnot measured: {e:#}"),
    };
    let mut text = String::from(
        "\n## Control plane at scale\n\n10,000 services and 50,000 workloads (1,000 / 5,000 with \
         --quick), 100 simulated agents in one process; etcd is a 1-member cluster on loopback. \
         Raw numbers: control-plane.json.\n\n\
         | what | embedded | etcd (1 member) | target | met? |\n|---|---|---|---|---|\n",
    );
    for row in rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "info",
        };
        let target = if row.target.is_empty() {
            "—"
        } else {
            &row.target
        };
        text.push_str(&format!(
            "| {} | {} | {} | {target} | {met} |\n",
            row.what, row.embedded, row.etcd
        ));
    }
    text
}
