//! The same-node scenario: one agent, the mesh pod pair against the direct pod pair on one
//! bridge (latency, throughput, connection rate and churn, capture, memory), and how its part
//! of results.md / results.json is written, alone or in a full run.

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::machine::{Machine, Noise};
use super::report::{Report, Row};
use super::scenario::{Bench, Plan, Samples};
use super::section;
use super::sections;
use super::testbed::Testbed;
use crate::cmd::progress;
use crate::setup;

/// Rows, notes and raw samples of one same-node run.
pub struct SameNode {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub raw: Value,
}

/// Runs every same-node measurement with the `agent` binary.
pub fn run(agent: &Path, plan: &Plan, iptables: Result<(), String>) -> Result<SameNode> {
    let mut bed = Testbed::start(agent.to_owned(), setup::binary("pod-tool", true))?;
    let mut bench = Bench::new(&mut bed, plan);
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
    progress("connect latency of a non-mesh socket: node-wide socket hooks vs none");
    let node_hooks = bench.node_hooks();
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
    // After everything that reads the agent's memory and counters: the agent is replaced.
    progress("new connections while the agent is replaced: restart vs handover");
    let upgrade = bench.upgrade();

    let memory = vec![idle, per_conn, idle_after, after_hold];
    let rows: Vec<Row> = [
        latency, throughput, connect, capture, node_hooks, memory, upgrade,
    ]
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
    let raw = json!({
        "plan": plan.to_json(),
        "measurements": Value::Object(std::mem::take(&mut bench.raw)),
        "noise": bench.noise.iter().map(Noise::to_json).collect::<Vec<_>>(),
    });
    drop(bench);
    progress("cleaning up: agent, pods, bridge, pinned programs");
    drop(bed);
    Ok(SameNode { rows, notes, raw })
}

/// results.md and results.json with the same-node part (header, table, notes) replaced by
/// `report`'s and the sections after it (cross-node, HTTP, control plane) kept from `old_md` /
/// `old_json`.
pub mod splice {
    use super::*;

    pub fn markdown(old: &str, report: &Report) -> String {
        let sections = old.find("\n## ").map_or("", |i| &old[i..]);
        let mut new = report.markdown();
        new.push_str(
            "\n(Same-node part measured alone with `cargo xtask bench same-node`; the sections \
             below are from their own runs.)\n",
        );
        format!(
            "{}{}",
            new.trim_end_matches('\n').to_string() + "\n",
            sections
        )
    }

    pub fn json(old: &mut Value, report: &Report) {
        let new = report.json();
        let kept_rows: Vec<Value> = old["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| sections::is_section_row(r["what"].as_str().unwrap_or("")))
            .cloned()
            .collect();
        let kept_notes: Vec<Value> = old["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| sections::is_section_note(n.as_str().unwrap_or("")))
            .cloned()
            .collect();
        let mut rows = new["rows"].as_array().cloned().unwrap_or_default();
        rows.extend(kept_rows);
        let mut notes = new["notes"].as_array().cloned().unwrap_or_default();
        notes.extend(kept_notes);
        let kept_raw: Vec<(&str, Value)> = sections::ALL
            .iter()
            .map(|s| (s.raw_key, old["raw"][s.raw_key].take()))
            .collect();
        old["machine"] = new["machine"].clone();
        old["quick"] = new["quick"].clone();
        old["rows"] = Value::Array(rows);
        old["notes"] = Value::Array(notes);
        old["raw"] = new["raw"].clone();
        for (key, raw) in kept_raw.into_iter().filter(|(_, v)| !v.is_null()) {
            old["raw"][key] = raw;
        }
    }
}

/// `cargo xtask bench same-node`: the same-node part of results.md / results.json replaced,
/// the rest kept (or a file with only this part when there is none yet).
pub fn write_alone(out_dir: &Path, report: &Report) -> Result<()> {
    match super::report::earlier_results(out_dir)? {
        Some((md, mut js)) => {
            splice::json(&mut js, report);
            super::report::write_results(out_dir, &splice::markdown(&md, report), &js)
        }
        None => report.write(out_dir),
    }
}

/// The report of a same-node run alone.
pub fn report<'a>(machine: &'a Machine, same: &'a SameNode, quick: bool) -> Report<'a> {
    Report {
        machine,
        rows: &same.rows,
        notes: &same.notes,
        raw: same.raw.clone(),
        quick,
        more_rows: Vec::new(),
    }
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
(`ss -K`) except in the sustained-churn rows ⁵. Before and after every run the agent's status \
counters are read and must show the path: the client pod's outbound and the server pod's \
inbound connection counts and the connect4 captures rise by at least the connections the \
client made where the path has them and stay unchanged where it has not; inbound-only runs \
must also be steered by sk_lookup (a direct run changes no counter at all; an iptables run has \
zero connect4 captures); a run that fails this check fails its row. \
Latency: `rr`, 1 KiB echo round trips on one connection after a warm-up. Throughput: `stream` \
to a sink, the clock stops when the sink has read everything. Connections: `connect-rate` \
(connect, 1-byte echo, close; 2 threads; connect() p50/p99 from the same runs; the \
client closes first; with `--close-first server` against `peer-serve` the server does). iptables \
variant: the node-wide connect4 link's pin is removed (which detaches it) and `iptables -t nat \
-A OUTPUT -p tcp -d <VIP> --dport 80 -j REDIRECT --to-ports 15001` added in the client pod; \
the proxy then finds the destination with SO_ORIGINAL_DST; switching back restarts the agent, \
which attaches connect4 again. Memory: VmRSS of the agent process; per connection: RSS growth after `pod-tool hold` \
opened N more idle mesh connections (confirmed by the agent's active-connection gauges on \
both hops), divided by N, over several steps without closing earlier ones; kernel socket \
buffers are not in RSS. Agent CPU: utime+stime of the agent's threads across each run.";
