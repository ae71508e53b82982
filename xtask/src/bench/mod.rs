//! `cargo xtask bench`: the mesh measured against direct connections between the same kind of
//! pods on the same bridge, in the same run, as ratios or deltas (absolute numbers drift from
//! run to run; see DESIGN.md, "Performance targets").
//!
//! - `testbed`: the bridge, the pods, the servers and the release agent.
//! - `same_node`: the same-node scenario as a whole, and its part of the results files.
//! - `scenario`: running one pod-tool client with proof of the path it took; latency,
//!   throughput and connection rate.
//! - `churn`: sustained connection churn, client or server closing first.
//! - `capture`: eBPF connect4 vs iptables REDIRECT in front of the same proxy.
//! - `node_hooks`: what the node-wide socket hooks cost a connect() outside the mesh.
//! - `upgrade`: new connections failed while the agent is replaced (restart vs handover).
//! - `memory`: agent RSS, idle and per idle proxied connection.
//! - `cross_bed`, `cross_node`, `evidence`: two agents (node-1, node-2) following one control
//!   plane, a client pod on one and a server pod on the other: HBONE (or, without it,
//!   plaintext) across two agents against direct, with proof of the path taken.
//! - `http`, `http_bed`, `http_run`, `http_tools`, `http_extra`, `http_report`: the L7 path
//!   (Service ports with `protocol: http`) against direct and nginx as a reverse proxy, on one
//!   node and across two (issue 8); `http_security`: what request-level security (an HTTP
//!   ALLOW policy, JWT validation) costs on that path (issue 10).
//! - `balance`, `balance_bed`, `balance_cost`, `balance_failover`: what each balancing policy
//!   costs per connection and how many requests fail while an endpoint is killed (issue 9).
//! - `machine`, `report`, `sections`: what it ran on, results.md / results.json, and the
//!   sections after the same-node table that partial runs replace.

mod balance;
mod balance_bed;
mod balance_cost;
mod balance_failover;
mod capture;
mod churn;
mod cpu;
mod cross_bed;
mod cross_iperf;
mod cross_node;
mod cross_notes;
mod cross_readings;
mod evidence;
mod http;
mod http_bed;
mod http_extra;
mod http_report;
mod http_run;
mod http_security;
mod http_tools;
mod machine;
mod memory;
mod node_hooks;
mod report;
mod same_node;
mod scenario;
mod sections;
mod testbed;
mod upgrade;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cmd::{progress, workspace_root};
use crate::setup;
use machine::{Machine, Noise};
use report::{Report, Row};
use scenario::Plan;

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
    /// The mesh-agent binary the same-node and cross-node scenarios measure [default:
    /// target/release/mesh-agent], e.g. an older build for before/after numbers.
    #[arg(long)]
    agent: Option<PathBuf>,
}

impl BenchArgs {
    fn agent_or_default(&self) -> PathBuf {
        self.agent
            .clone()
            .unwrap_or_else(|| setup::binary("mesh-agent", true))
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Only {
    /// One agent, mesh pods against direct pods on one bridge: latency, throughput,
    /// connection rate and sustained churn, capture, memory.
    SameNode,
    /// HBONE across two agents (node-1, node-2) against direct.
    CrossNode,
    /// HTTP through the agent's L7 path against direct and nginx as a reverse proxy, on one
    /// node and across two.
    Http,
    /// Balancing policies per connection, and requests failed while one of three endpoints
    /// is killed under load.
    Balance,
    /// The control plane at scale (embedded store and etcd): full config and one change
    /// reaching 100 and 1,000 simulated agents.
    ControlPlane,
}

pub fn run(args: BenchArgs) -> Result<()> {
    setup::require_root("cargo xtask bench")?;
    setup::ensure_packages(&[])?;
    match args.only {
        Some(Only::CrossNode) => return cross_node_only(args),
        Some(Only::SameNode) => return same_node_only(args),
        Some(Only::Http) => return http_only(args),
        Some(Only::Balance) => return balance_only(args),
        Some(Only::ControlPlane) => return control_plane_only(args),
        None => {}
    }
    let (iptables, out_dir, plan) = same_node_setup(&args)?;
    let mut machine = Machine::describe();
    let started = Instant::now();

    let same = same_node::run(&args.agent_or_default(), &plan, iptables)?;
    let (rows, mut notes, mut raw) = (same.rows, same.notes, same.raw);
    progress("cross-node: HBONE across two agents");
    let cross = cross_node::run(&release_dir(), &args.agent_or_default(), &plan);
    if let Err(e) = &cross {
        eprintln!("cross-node: {e:#}");
    }
    notes.push(cross_node::section(&cross, &machine, args.quick));
    let mut more_rows = cross_node::json_rows(&cross);
    raw["cross_node"] = match cross {
        Ok(c) => c.raw,
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    progress("http: the L7 path against direct and nginx");
    let http = http::run(&args.agent_or_default(), &release_dir(), &plan);
    if let Err(e) = &http {
        eprintln!("http: {e:#}");
    }
    notes.push(http_report::section(&http, &machine, args.quick));
    more_rows.extend(http_report::json_rows(&http));
    raw[sections::HTTP.raw_key] = match http {
        Ok(h) => h.raw,
        Err(e) => json!({"error": format!("{e:#}")}),
    };
    progress("balance: policies per connection, an endpoint killed under load");
    let balance = balance::run(&args.agent_or_default(), &release_dir(), &plan);
    if let Err(e) = &balance {
        eprintln!("balance: {e:#}");
    }
    notes.push(balance::section(&balance, &machine, args.quick));
    more_rows.extend(balance::json_rows(&balance));
    raw[sections::BALANCE.raw_key] = match balance {
        Ok(b) => b.raw,
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

/// What every run with the same-node scenario needs first: iptables (for the capture
/// comparison; without it only that row fails), the release build, where results go, and the plan.
fn same_node_setup(args: &BenchArgs) -> Result<(Result<(), String>, PathBuf, Plan)> {
    let iptables = setup::ensure_packages(&[("iptables", "iptables")])
        .map_err(|e| format!("iptables is not installed and installing it failed: {e:#}"));
    if !args.no_build {
        setup::build_all(true)?;
    }
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("bench"));
    Ok((iptables, out_dir, Plan::new(args.quick, args.repeats)))
}

/// `cargo xtask bench same-node`: only the same-node scenario; its part of results.md and
/// results.json is replaced, the other sections stay.
fn same_node_only(args: BenchArgs) -> Result<()> {
    let (iptables, out_dir, plan) = same_node_setup(&args)?;
    let mut machine = Machine::describe();
    let started = Instant::now();
    let mut same = same_node::run(&args.agent_or_default(), &plan, iptables)?;
    if let Some(left) = leftovers() {
        same.notes
            .push(format!("Warning: left behind after cleanup: {left}"));
    }
    machine.took_seconds = started.elapsed().as_secs_f64();
    let report = same_node::report(&machine, &same, args.quick);
    same_node::write_alone(&out_dir, &report)?;
    println!("\n{}", report::table(&same.rows));
    for note in &same.notes {
        println!("{note}\n");
    }
    progress(&format!(
        "updated the same-node part of {} and results.json",
        out_dir.join("results.md").display()
    ));
    Ok(())
}

/// `cargo xtask bench cross-node`: only the cross-node scenario; its section, rows and raw
/// samples replace the old ones in results.md and results.json, the rest stays.
fn cross_node_only(args: BenchArgs) -> Result<()> {
    let (quick, agent) = (args.quick, args.agent_or_default());
    section_only(args, &sections::CROSS_NODE, |plan, machine| {
        let cross = cross_node::run(&release_dir(), &agent, plan);
        // A failed scenario leaves the last results alone.
        let cross = Ok(cross.context("cross-node scenario (results files left unchanged)")?);
        Ok(SectionRun {
            text: cross_node::section(&cross, machine, quick),
            rows: cross_node::json_rows(&cross),
            raw: cross.map(|c| c.raw).unwrap_or_default(),
        })
    })
}

/// `cargo xtask bench http`: only the HTTP scenario, its section replaced as above.
fn http_only(args: BenchArgs) -> Result<()> {
    let (quick, agent) = (args.quick, args.agent_or_default());
    section_only(args, &sections::HTTP, |plan, machine| {
        let http = http::run(&agent, &release_dir(), plan);
        let http = Ok(http.context("HTTP scenario (results files left unchanged)")?);
        Ok(SectionRun {
            text: http_report::section(&http, machine, quick),
            rows: http_report::json_rows(&http),
            raw: http.map(|h| h.raw).unwrap_or_default(),
        })
    })
}

/// `cargo xtask bench balance`: only the load-balancing section, replaced as above.
fn balance_only(args: BenchArgs) -> Result<()> {
    let (quick, agent) = (args.quick, args.agent_or_default());
    section_only(args, &sections::BALANCE, |plan, machine| {
        let balance = balance::run(&agent, &release_dir(), plan);
        let balance = Ok(balance.context("balance scenario (results files left unchanged)")?);
        Ok(SectionRun {
            text: balance::section(&balance, machine, quick),
            rows: balance::json_rows(&balance),
            raw: balance.map(|b| b.raw).unwrap_or_default(),
        })
    })
}

/// What a scenario with a section of its own produced.
struct SectionRun {
    text: String,
    rows: Vec<serde_json::Value>,
    raw: serde_json::Value,
}

/// Builds (unless --no-build), runs `measure` and puts its section in place of the old one in
/// results.md and results.json (or writes files with only this section when there are none).
fn section_only(
    args: BenchArgs,
    which: &sections::Section,
    measure: impl FnOnce(&Plan, &Machine) -> Result<SectionRun>,
) -> Result<()> {
    if !args.no_build {
        setup::build_all(true)?;
    }
    let out_dir = args.out.unwrap_or_else(|| workspace_root().join("bench"));
    let plan = Plan::new(args.quick, args.repeats);
    let mut machine = Machine::describe();
    let started = Instant::now();
    let mut run = measure(&plan, &machine)?;
    machine.took_seconds = started.elapsed().as_secs_f64();
    if let Some(left) = leftovers() {
        run.text
            .push_str(&format!("\nWarning: left behind after cleanup: {left}\n"));
    }
    let md_path = out_dir.join("results.md");
    match report::earlier_results(&out_dir)? {
        Some((md, mut js)) => {
            which.splice_json(&mut js, run.rows, &run.text, run.raw);
            report::write_results(&out_dir, &which.splice_markdown(&md, &run.text), &js)?;
        }
        None => {
            let mut raw = json!({});
            raw[which.raw_key] = run.raw;
            Report {
                machine: &machine,
                rows: &[],
                notes: std::slice::from_ref(&run.text),
                raw,
                quick: args.quick,
                more_rows: run.rows,
            }
            .write(&out_dir)?
        }
    }
    println!("{}", run.text);
    progress(&format!(
        "updated the {} section of {} and results.json",
        which.heading.trim_start_matches("## "),
        md_path.display()
    ));
    Ok(())
}

fn release_dir() -> PathBuf {
    workspace_root().join("target").join("release")
}

/// A section's rows, or one row saying why it could not be measured.
pub(crate) fn section(rows: Result<Vec<Row>>, what: &str) -> Vec<Row> {
    rows.unwrap_or_else(|e| vec![Row::failed(what, format!("{e:#}"))])
}

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

/// `cargo xtask bench control-plane`: only the control-plane section (the last of
/// results.md), replaced; the rest of results.md and results.json stays.
fn control_plane_only(args: BenchArgs) -> Result<()> {
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("bench"));
    let machine = Machine::describe();
    let load = Noise::sample(None).load1;
    let started = Instant::now();
    let rows = crate::bench_control::run(args.quick)
        .context("control-plane scenario (results.md left unchanged)")?;
    let text = format!(
        "{}\nMeasured {} at commit {} in {:.0} s{} (load average {load:.1} when it started).\n",
        control_plane_section(Ok(rows)),
        machine.date,
        machine.git_commit,
        started.elapsed().as_secs_f64(),
        if args.quick { ", --quick" } else { "" },
    );
    let path = out_dir.join("results.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let kept = old
        .find(&format!("\n{CONTROL_PLANE_HEADING}"))
        .map_or(old.as_str(), |at| &old[..at]);
    std::fs::write(&path, format!("{}\n\n{}\n", kept.trim_end(), text.trim()))?;
    println!("{text}");
    progress(&format!(
        "updated the control-plane part of {}",
        path.display()
    ));
    Ok(())
}

const CONTROL_PLANE_HEADING: &str = "## Control plane at scale";

/// The control-plane rows (issue 3's scale targets), as their own table: they compare two
/// stores rather than the mesh with a direct path.
fn control_plane_section(result: Result<Vec<crate::bench_control::ControlPlaneRow>>) -> String {
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => return format!("\n{CONTROL_PLANE_HEADING}\n\nnot measured: {e:#}"),
    };
    let mut text = format!(
        "\n{CONTROL_PLANE_HEADING}\n\n10,000 services and 50,000 workloads (1,000 / 5,000 with \
         --quick), 100 and 1,000 simulated agents in one process; etcd is a 1-member cluster on \
         loopback. \
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
