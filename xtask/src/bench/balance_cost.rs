//! What each balancing policy costs on the per-connection path: new TCP connections per
//! second (`pod-tool connect-rate`: connect, 1-byte echo, close) from the mesh client to the
//! `lb` VIP (protocol tcp, three endpoints) with `round_robin`, `least_request` and `maglev`
//! (`hashOn: {sourceIp: true}`), and direct to one endpoint's IP, alternating in the same run.
//!
//! Every run is checked against the agent's counters: a mesh run must raise the client's
//! outbound connections, the connect4 captures and the endpoints' inbound connections by at
//! least the connections the client made, a direct run none of them; how the connections
//! spread over the three endpoints must show the policy (round robin: every endpoint at least
//! a quarter; maglev on the one source IP: all on one endpoint).

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use super::balance_bed::{BalanceBed, Lb, Policy, ECHO_PORT, ECHO_VIP_PORT, VIP};
use super::cpu::CpuSnapshot;
use super::scenario::{connect_rate_args, median, median_of, Plan};
use crate::cmd::progress;

/// What a connection-rate run goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    Mesh(Policy),
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Mesh(p) => p.name(),
        }
    }
}

/// In results order.
pub const PATHS: [Path; 4] = [
    Path::Direct,
    Path::Mesh(Policy::RoundRobin),
    Path::Mesh(Policy::LeastRequest),
    Path::Mesh(Policy::Maglev),
];

/// A run lasts this share of the plan's connection-rate runs: 1 s (0.3 s with `--quick`).
const SHARE_OF_PLAN: f64 = 0.2;
const MIN_SECS: f64 = 0.3;
/// Client threads, each opening one connection after another (as the same-node row).
const CONCURRENCY: usize = 2;

/// Every run's output, by path (in [`PATHS`] order).
pub struct Cost {
    pub runs: Vec<Vec<Value>>,
    pub secs: f64,
}

impl Cost {
    pub fn per_s(&self, path: Path) -> f64 {
        median(&self.runs[index(path)], "per_s")
    }

    /// Median agent CPU per connection, µs.
    pub fn cpu_us(&self, path: Path) -> f64 {
        median_of(
            self.runs[index(path)]
                .iter()
                .map(|v| {
                    v["cpu"]["agent_s"].as_f64().unwrap_or(f64::NAN) * 1e6
                        / v["connections"].as_f64().unwrap_or(f64::NAN)
                })
                .collect(),
        )
    }

    pub fn to_json(&self) -> Value {
        let runs: serde_json::Map<String, Value> = PATHS
            .iter()
            .map(|p| (p.name().to_string(), json!(self.runs[index(*p)])))
            .collect();
        json!({"runs": runs, "secs": self.secs, "concurrency": CONCURRENCY})
    }
}

fn index(path: Path) -> usize {
    PATHS.iter().position(|p| *p == path).unwrap_or(0)
}

/// Every path `repeats` times, rotating which goes first.
pub fn run(bed: &mut BalanceBed, plan: &Plan) -> Result<Cost> {
    let secs = (plan.connect_secs * SHARE_OF_PLAN).max(MIN_SECS);
    let mut runs = vec![Vec::new(); PATHS.len()];
    for rep in 0..plan.repeats {
        for k in 0..PATHS.len() {
            let i = (rep + k) % PATHS.len();
            progress(&format!(
                "balance: new connections/s, {} (repetition {})",
                PATHS[i].name(),
                rep + 1
            ));
            runs[i].push(one(bed, PATHS[i], secs)?);
        }
    }
    Ok(Cost { runs, secs })
}

fn one(bed: &mut BalanceBed, path: Path, secs: f64) -> Result<Value> {
    let addr = match path {
        Path::Direct => format!("{}:{ECHO_PORT}", bed.direct[0].ip()),
        Path::Mesh(policy) => {
            bed.set_lb(Lb {
                policy,
                outlier: false,
            })?;
            format!("{VIP}:{ECHO_VIP_PORT}")
        }
    };
    bed.clear_time_wait()?;
    let least_request = path == Path::Mesh(Policy::LeastRequest);
    let estimates_before = if least_request {
        bed.latency_estimates()?
    } else {
        Vec::new()
    };
    let before = bed.counters()?;
    let agent = bed.agent_pid();
    let cpu = CpuSnapshot::take(agent);
    let args = connect_rate_args(&addr, secs, CONCURRENCY);
    let timeout = Duration::from_secs_f64(secs + 60.0);
    let pod = match path {
        Path::Direct => &bed.dclient,
        Path::Mesh(_) => &bed.client,
    };
    let mut v = match bed.tool(pod, &args, timeout) {
        Ok(v) => v,
        Err(e) => return Err(e.context(format!("agent log (tail):\n{}", bed.log_tail()))),
    };
    v["cpu"] = cpu.since(agent);
    let d = before.until(&bed.counters()?);
    let n = v["connections"].as_u64().unwrap_or(0);
    let spread: u64 = d.endpoints_in.iter().sum();
    let seen = format!(
        "{} run: the client made {n} connections; the agent counted client outbound +{}, \
         connect4 captures +{}, endpoints' inbound {:?}",
        path.name(),
        d.client_out,
        d.captured,
        d.endpoints_in
    );
    match path {
        Path::Direct => ensure!(n > 0 && d.nothing(), "not the direct path: {seen}"),
        Path::Mesh(policy) => {
            ensure!(
                n > 0 && d.client_out >= n && d.captured >= n && spread >= n,
                "not the mesh path: {seen}"
            );
            check_spread(policy, &d.endpoints_in, &seen)?;
        }
    }
    v["endpoint_connections"] = json!(d.endpoints_in);
    if least_request {
        v["latency_estimates_ms"] = json!({
            "before": estimates_before,
            "after": bed.latency_estimates()?,
        });
    }
    Ok(v)
}

/// Whether the connections spread as `policy` spreads them.
fn check_spread(policy: Policy, counts: &[u64], seen: &str) -> Result<()> {
    let total: u64 = counts.iter().sum();
    let (min, max) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    match policy {
        Policy::RoundRobin => ensure!(
            4 * min >= total,
            "round robin left an endpoint under a quarter of the connections: {seen}"
        ),
        Policy::Maglev => ensure!(
            max == total,
            "maglev on one source IP spread connections over several endpoints: {seen}"
        ),
        Policy::LeastRequest => {}
    }
    Ok(())
}
