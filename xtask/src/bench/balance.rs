//! The load-balancing section (issue 9): what each balancing policy costs on the
//! per-connection path (`balance_cost`) and how many requests fail while one of three
//! endpoints is killed under steady load (`balance_failover`), on one bed (`balance_bed`),
//! and the section's rows and text.

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Value};

use super::balance_bed::{BalanceBed, Policy, OUTLIER};
use super::balance_cost::{Cost, Path as CostPath};
use super::balance_failover::{Failover, Variant};
use super::http::{RATE, RATE_CONNECTIONS};
use super::machine::Machine;
use super::report::{self, Compare, Row, Target};
use super::scenario::Plan;
use super::sections;
use crate::cmd::progress;

pub struct BalanceResult {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub raw: Value,
    pub took: f64,
}

/// Runs both parts with the `agent` binary and `pod-tool` from `bins`.
pub fn run(agent: &Path, bins: &Path, plan: &Plan) -> Result<BalanceResult> {
    let started = Instant::now();
    let mut bed = BalanceBed::start(agent.to_owned(), bins.join("pod-tool"))?;
    let cost = super::balance_cost::run(&mut bed, plan)?;
    let failover = super::balance_failover::run(&mut bed, plan)?;
    progress("balance: cleaning up: agent, pods, bridge");
    drop(bed);
    let mut rows = cost_rows(&cost);
    rows.extend(failover_rows(&failover));
    let notes = vec![cost_note(&cost), failover_note(&failover), how()];
    Ok(BalanceResult {
        rows,
        notes,
        raw: json!({"cost": cost.to_json(), "failover": failover.to_json()}),
        took: started.elapsed().as_secs_f64(),
    })
}

fn what(s: &str) -> String {
    format!("{}: {s}", sections::BALANCE.row_prefix)
}

fn cost_rows(c: &Cost) -> Vec<Row> {
    let rr = CostPath::Mesh(Policy::RoundRobin);
    let conn = "new connections/s, Service of 3 endpoints (tcp)";
    let vs_rr = |policy: Policy, label: &str| {
        Row::new(what(&format!("{conn}, {label} vs round_robin ¹")), "conn/s").values(
            c.per_s(rr),
            c.per_s(CostPath::Mesh(policy)),
            Compare::Ratio,
        )
    };
    vec![
        Row::new(what(&format!("{conn}, round_robin vs direct")), "conn/s").values(
            c.per_s(CostPath::Direct),
            c.per_s(rr),
            Compare::Ratio,
        ),
        vs_rr(Policy::LeastRequest, "least_request"),
        vs_rr(Policy::Maglev, "maglev (hashOn sourceIp)"),
    ]
}

fn failover_rows(f: &Failover) -> Vec<Row> {
    let mut rows = Vec::new();
    let load = |v: Variant| match v {
        Variant::Http | Variant::HttpOutlier => "HTTP port, keep-alive",
        _ => "TCP port, a connection per request",
    };
    for v in [
        Variant::Http,
        Variant::Tcp,
        Variant::HttpOutlier,
        Variant::TcpOutlier,
    ] {
        let outlier = if v == Variant::HttpOutlier || v == Variant::TcpOutlier {
            " + outlierDetection"
        } else {
            ""
        };
        rows.push(
            Row::new(
                what(&format!(
                    "requests failed while 1 of 3 endpoints is killed, {}{outlier}, all runs ²",
                    load(v)
                )),
                "requests",
            )
            .values(
                f.failed(Variant::Direct) as f64,
                f.failed(v) as f64,
                Compare::None,
            )
            .target(Target::AtMost(0.0), ""),
        );
    }
    for v in [
        Variant::Http,
        Variant::Tcp,
        Variant::HttpOutlier,
        Variant::TcpOutlier,
    ] {
        let why = if matches!(v, Variant::HttpOutlier | Variant::TcpOutlier) {
            "before it was ejected"
        } else {
            "each hidden by connect retry"
        };
        rows.push(
            Row::new(
                what(&format!(
                    "tries on the killed endpoint per run, {} ({why}) ³",
                    v.name()
                )),
                "requests",
            )
            .values(
                median_u64(f.list(Variant::Direct, "tries_on_killed")),
                median_u64(f.list(v, "tries_on_killed")),
                Compare::None,
            ),
        );
    }
    rows
}

fn median_u64(v: Vec<u64>) -> f64 {
    super::scenario::median_of(v.into_iter().map(|n| n as f64).collect())
}

/// Connection rate, agent CPU and spread per policy, every run's rate.
fn cost_note(c: &Cost) -> String {
    let mut out = String::from("**Policies on the per-connection path:**");
    for p in super::balance_cost::PATHS {
        let runs = &c.runs[super::balance_cost::PATHS
            .iter()
            .position(|x| *x == p)
            .unwrap_or(0)];
        let rates: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r["per_s"].as_f64().unwrap_or(f64::NAN)))
            .collect();
        let spread: Vec<String> = runs
            .iter()
            .map(|r| r["endpoint_connections"].to_string())
            .collect();
        let _ = write!(
            out,
            "\n- {}: {:.0} connections/s (runs [{}]), connect() p50 {:.1} µs",
            p.name(),
            c.per_s(p),
            rates.join(", "),
            super::scenario::median(runs, "connect_p50_us"),
        );
        if p != CostPath::Direct {
            let _ = write!(
                out,
                ", agent CPU {:.1} µs per connection, connections per endpoint (each run) {}",
                c.cpu_us(p),
                spread.join(" ")
            );
        }
        if p == CostPath::Mesh(Policy::LeastRequest) {
            out.push_str(&starved(runs));
        }
    }
    out
}

/// Runs in which an endpoint got no connection at all, said in words (empty when none).
fn starved(runs: &[Value]) -> String {
    let n = runs
        .iter()
        .filter(|r| {
            r["endpoint_connections"]
                .as_array()
                .is_some_and(|c| c.iter().any(|n| n.as_u64() == Some(0)))
        })
        .count();
    if n == 0 {
        return String::new();
    }
    let estimates: Vec<String> = runs
        .iter()
        .map(|r| {
            let e = &r["latency_estimates_ms"];
            format!("{} → {}", e["before"], e["after"])
        })
        .collect();
    format!(
        "; **an endpoint got no connection in {n} of {} runs**: an endpoint whose latency \
         estimate is high (the 30 ms default before its first sample, or one slow sample) \
         loses every two-choice comparison with endpoints measured in µs, so it is not \
         measured again until its estimate fades (time constant 10 s); the agent's \
         estimates per endpoint (ms) before → after each run: {}",
        runs.len(),
        estimates.join(", ")
    )
}

/// Every run's failures and tries, by variant.
fn failover_note(f: &Failover) -> String {
    let mut out = format!(
        "**One of three endpoints killed under load** ({} measured seconds per run, the kill \
         {:.2} s in; failed requests and tries on the killed endpoint, each run):",
        f.secs,
        f.to_json()["kill_at_secs"].as_f64().unwrap_or(f64::NAN)
    );
    for v in super::balance_failover::VARIANTS {
        let _ = write!(
            out,
            "\n- {}: failed {:?} of {:?} requests, tries {:?}",
            v.name(),
            f.list(v, "failed"),
            f.list(v, "requests"),
            f.list(v, "tries_on_killed"),
        );
        let samples: Vec<String> = f.runs[v.index()]
            .iter()
            .flat_map(|r| r["error_samples"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e.as_str().map(str::to_owned))
            .take(2)
            .collect();
        if !samples.is_empty() {
            let _ = write!(out, " (e.g. {})", samples.join("; "));
        }
        let trouble: Vec<String> = f.runs[v.index()]
            .iter()
            .filter_map(|r| r["agent_trouble"].as_object())
            .filter(|t| !t.is_empty())
            .map(|t| Value::Object(t.clone()).to_string())
            .collect();
        if !trouble.is_empty() {
            let _ = write!(out, "; the agent counted {}", trouble.join(", "));
        }
    }
    out
}

pub fn section(result: &Result<BalanceResult>, machine: &Machine, quick: bool) -> String {
    let (mut out, b) = sections::begin(sections::BALANCE.heading, result, quick);
    let Some(b) = b else {
        return out;
    };
    let _ = writeln!(
        out,
        "Measured {} at commit {} in {:.0} s. One agent; the mesh client dials a Service VIP \
         with three enrolled endpoints on the same node, the direct client the pod IPs of three \
         identical unenrolled pods.\n",
        machine.date, machine.git_commit, b.took
    );
    out.push_str(&report::table_and_notes(&b.rows, &b.notes));
    out
}

pub fn json_rows(result: &Result<BalanceResult>) -> Vec<Value> {
    let rows = result.as_ref().map(|r| r.rows.as_slice());
    report::json_rows_or_failure(rows, what("policies and failure recovery"))
}

const HOW: &str = "¹ Baseline column: round_robin; mesh column: the policy named, \
alternating in the same run (each path once per repetition, rotating which goes first; \
`pod-tool connect-rate`: connect, 1-byte echo, close, 2 threads). Policies change through the \
agent's local config (SIGHUP) and a run starts only once `mesh-agent status -o json` shows the \
new config version and policy; each run must raise the agent's counters (client outbound, \
connect4 captures, the endpoints' inbound connections) by the client's connections, and their \
spread must show the policy: round robin gives every endpoint at least a quarter, maglev on the \
client's one source IP gives one endpoint all. \
² Baseline column: direct, the client balancing itself round robin over the three pod IPs \
(one `http-rate` per IP at a third of the rate, keep-alive) with no retry: every request for \
the dead endpoint after the kill fails. Mesh column: the mesh client at the same total rate \
through the VIP, round_robin; HTTP port: keep-alive, each request balanced by the agent's HTTP \
proxy; TCP port: `Connection: close`, each request a connection balanced by the L4 path. The \
endpoint's `pod-tool http-serve` is SIGKILLed mid-run (its port refuses connections from then \
on) and started again after the run. Active health checks are slowed for these rows (one probe \
a minute, 1000 failures to go unhealthy) so only connect retry and outlier ejection act; with \
the defaults (every 2 s, 2 failures) the agent stops picking a dead endpoint within 2-4 s \
anyway. Failed: transport errors plus non-2xx answers the clients saw, summed over the runs. Connect \
retry covers tries of which no byte reached the endpoint; a request already written to one of \
its connections when the server died (HTTP: the agent answers 502 with flag UC) or a connection \
its kernel had already accepted (TCP: the client's connection is closed) is not retried, and \
counts as failed; the note lists what the agent counted. \
³ TCP resets the killed endpoint's kernel sent after the kill (a refused connect, or a segment \
on a connection that died with the server), median per run; baseline column: the direct \
client's, each a failed request. Every mesh try is one a client without connect retry would \
have seen fail; with outlierDetection";

/// The footnotes' end (the outlier settings are a constant of the bed).
fn how() -> String {
    format!(
        "{HOW} `{OUTLIER}` the killed endpoint is ejected after its fifth refusal in a row \
         (checked in the agent's status after each run) and not tried again. Fixed rate: \
         {RATE:.0} requests/s over {RATE_CONNECTIONS} connections (mesh)."
    )
}
