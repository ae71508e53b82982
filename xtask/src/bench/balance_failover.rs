//! Failure recovery: steady HTTP load at a fixed rate (`pod-tool http-rate`, open loop)
//! against three endpoints, and one endpoint's server SIGKILLed mid-run (its port refuses
//! connections from then on); how many requests the client saw fail, and how many tries
//! reached the dead endpoint (TCP resets its kernel sent after the kill: a refused connect,
//! or a segment on a connection whose socket died with the server).
//!
//! - direct: the unenrolled client balances itself, round robin over the three pod IPs (one
//!   http-rate per IP at a third of the rate) and retries nothing: every request for the dead
//!   endpoint after the kill fails. That is what a client without connect retry sees.
//! - mesh, HTTP port (keep-alive from the client; the proxy balances each request,
//!   round_robin): a request whose endpoint refuses the connection is retried on another
//!   before any byte of it was sent.
//! - mesh, TCP port (`Connection: close`: one connection per request, balanced per
//!   connection): a refused connect is retried on another endpoint before the client's
//!   connection is accepted.
//! - both mesh ports again with `outlierDetection`: the dead endpoint is ejected after
//!   `consecutiveErrors` refused tries and tried no more for the rest of the run.
//!
//! The killed server is started again after each run (and outlier state dropped by removing
//! `outlierDetection`), so every run starts with three serving endpoints.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use super::balance_bed::{
    parse_json, resets_sent, rose, BalanceBed, Lb, Policy, Side, ENDPOINTS, HTTP_PORT,
    HTTP_VIP_PORT, TCP_HTTP_VIP_PORT, VIP,
};
use super::http::{RATE, RATE_CONNECTIONS};
use super::scenario::{strings, Plan};
use crate::cmd::progress;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Direct,
    Http,
    HttpOutlier,
    Tcp,
    TcpOutlier,
}

/// In results order.
pub const VARIANTS: [Variant; 5] = [
    Variant::Direct,
    Variant::Http,
    Variant::HttpOutlier,
    Variant::Tcp,
    Variant::TcpOutlier,
];

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Http => "mesh http",
            Variant::HttpOutlier => "mesh http + outlierDetection",
            Variant::Tcp => "mesh tcp",
            Variant::TcpOutlier => "mesh tcp + outlierDetection",
        }
    }

    fn side(self) -> Side {
        match self {
            Variant::Direct => Side::Direct,
            _ => Side::Mesh,
        }
    }

    fn outlier(self) -> bool {
        matches!(self, Variant::HttpOutlier | Variant::TcpOutlier)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Repetitions at most (each variant once per repetition): failures are counted, not
/// averaged, and a few runs show whether any slip through.
const MAX_REPEATS: usize = 2;
/// Measured seconds of a run: this share of the plan's stream runs, at least [`MIN_SECS`].
const SHARE_OF_PLAN: f64 = 0.3;
const MIN_SECS: f64 = 0.8;
/// Requests before the measured part (same schedule), so connections and pools settle.
const WARMUP_SECS: f64 = 0.2;
/// The kill comes this far into the measured part.
const KILL_AT: f64 = 0.3;
/// Keep-alive connections of each direct client (one per endpoint IP).
const DIRECT_CONNECTIONS: usize = 2;

/// Every run, by variant (in [`VARIANTS`] order).
pub struct Failover {
    pub runs: Vec<Vec<Value>>,
    pub secs: f64,
}

impl Failover {
    /// Requests the clients saw fail in all runs of `v`.
    pub fn failed(&self, v: Variant) -> u64 {
        self.sum(v, "failed")
    }

    pub fn sum(&self, v: Variant, key: &str) -> u64 {
        self.runs[v.index()]
            .iter()
            .filter_map(|r| r[key].as_u64())
            .sum()
    }

    pub fn list(&self, v: Variant, key: &str) -> Vec<u64> {
        self.runs[v.index()]
            .iter()
            .map(|r| r[key].as_u64().unwrap_or(0))
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let runs: serde_json::Map<String, Value> = VARIANTS
            .iter()
            .map(|v| (v.name().to_string(), json!(self.runs[v.index()])))
            .collect();
        json!({
            "runs": runs,
            "secs": self.secs,
            "warmup_secs": WARMUP_SECS,
            "kill_at_secs": WARMUP_SECS + KILL_AT * self.secs,
            "rate": RATE,
            "connections": {"mesh": RATE_CONNECTIONS, "direct_per_ip": DIRECT_CONNECTIONS},
            "outlier_detection": super::balance_bed::OUTLIER,
        })
    }
}

pub fn run(bed: &mut BalanceBed, plan: &Plan) -> Result<Failover> {
    let secs = (plan.stream_secs * SHARE_OF_PLAN).max(MIN_SECS);
    let mut runs = vec![Vec::new(); VARIANTS.len()];
    for rep in 0..plan.repeats.min(MAX_REPEATS) {
        for k in 0..VARIANTS.len() {
            let v = VARIANTS[(rep + k) % VARIANTS.len()];
            progress(&format!(
                "balance: one of three endpoints killed under load, {} (repetition {})",
                v.name(),
                rep + 1
            ));
            let measured = one(bed, v, secs);
            // Whatever happened, the next run starts with three serving endpoints and no
            // outlier state.
            let restored = restore(bed, v);
            runs[v.index()].push(measured?);
            restored?;
        }
    }
    Ok(Failover { runs, secs })
}

fn restore(bed: &mut BalanceBed, v: Variant) -> Result<()> {
    bed.restart_http(v.side())?;
    if v.outlier() {
        bed.set_lb(lb(false))?;
    }
    Ok(())
}

fn lb(outlier: bool) -> Lb {
    Lb {
        policy: Policy::RoundRobin,
        outlier,
    }
}

/// The clients of a variant: (pod-tool arguments, keep-alive connections) each.
fn clients(bed: &BalanceBed, v: Variant, secs: f64) -> Vec<Vec<String>> {
    let rate_args = |url: String, rate: f64, connections: usize, close: bool| {
        let mut args = strings(&[
            "http-rate",
            "--url",
            &url,
            "--rate",
            &rate.to_string(),
            "--seconds",
            &secs.to_string(),
            "--connections",
            &connections.to_string(),
            "--warmup",
            &((rate * WARMUP_SECS).round() as u64).to_string(),
        ]);
        if close {
            args.extend(strings(&["-H", "connection: close"]));
        }
        args
    };
    let vip = |port: u16| format!("http://{VIP}:{port}/");
    match v {
        Variant::Direct => bed
            .direct
            .iter()
            .map(|pod| {
                let url = format!("http://{}:{HTTP_PORT}/", pod.ip());
                rate_args(url, RATE / ENDPOINTS as f64, DIRECT_CONNECTIONS, false)
            })
            .collect(),
        Variant::Http | Variant::HttpOutlier => {
            vec![rate_args(vip(HTTP_VIP_PORT), RATE, RATE_CONNECTIONS, false)]
        }
        Variant::Tcp | Variant::TcpOutlier => {
            vec![rate_args(
                vip(TCP_HTTP_VIP_PORT),
                RATE,
                RATE_CONNECTIONS,
                true,
            )]
        }
    }
}

/// One run: the clients started, the victim's server killed `KILL_AT` into the measured
/// part, the clients' tallies summed and the tries on the victim counted.
fn one(bed: &mut BalanceBed, v: Variant, secs: f64) -> Result<Value> {
    if v != Variant::Direct {
        bed.set_lb(lb(v.outlier()))?;
    }
    bed.clear_time_wait()?;
    let side = v.side();
    let before = bed.counters()?;
    let trouble_before = bed.trouble()?;
    let resets_start = resets_sent(bed.victim(side))?;
    let pod = match side {
        Side::Direct => &bed.dclient,
        Side::Mesh => &bed.client,
    };
    let started = Instant::now();
    let mut procs = clients(bed, v, secs)
        .iter()
        .map(|args| bed.spawn_tool(pod, args))
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_secs_f64(WARMUP_SECS + KILL_AT * secs));
    let resets_at_kill = resets_sent(bed.victim(side))?;
    let killed_at = started.elapsed().as_secs_f64();
    bed.kill_http(side);
    let outputs = procs
        .iter_mut()
        .map(|p| {
            let out = p.wait_output(Duration::from_secs_f64(secs + 30.0))?;
            parse_json(&String::from_utf8_lossy(&out.stdout))
        })
        .collect::<Result<Vec<Value>>>();
    let outputs = match outputs {
        Ok(o) => o,
        Err(e) => return Err(e.context(format!("agent log (tail):\n{}", bed.log_tail()))),
    };
    let tries = resets_sent(bed.victim(side))?.saturating_sub(resets_at_kill);
    let d = before.until(&bed.counters()?);
    let trouble = rose(&trouble_before, &bed.trouble()?);
    let ejected = bed.ejected(bed.victim(Side::Mesh))?;
    let total = |key: &str| -> u64 { outputs.iter().filter_map(|o| o[key].as_u64()).sum() };
    let (errors, other, connections) =
        (total("errors"), total("other_status"), total("connections"));
    let seen = format!(
        "{} run: the clients answered {} requests ({} 2xx), {errors} errors, {other} other \
         statuses on {connections} connections; the killed endpoint's kernel reset {tries} \
         tries; the agent counted client outbound +{}, connect4 captures +{}; ejected: \
         {ejected}",
        v.name(),
        total("requests"),
        total("ok"),
        d.client_out,
        d.captured
    );
    let path_ok = match side {
        Side::Direct => d.nothing(),
        Side::Mesh => d.client_out >= connections && d.captured >= connections,
    };
    ensure!(
        path_ok,
        "the traffic did not take the expected path: {seen}"
    );
    // Without tries on the killed endpoint the run says nothing about recovering from it.
    ensure!(tries > 0, "nothing tried the killed endpoint: {seen}");
    ensure!(
        ejected == v.outlier(),
        "the killed endpoint's ejection is not what the config asks for: {seen}"
    );
    Ok(json!({
        "requests": total("requests") + errors,
        "ok": total("ok"),
        "failed": errors + other,
        "errors": errors,
        "other_status": other,
        "error_samples": outputs.iter().flat_map(|o| o["error_samples"].as_array().cloned().unwrap_or_default()).collect::<Vec<_>>(),
        "tries_on_killed": tries,
        "resets_before_kill": resets_at_kill.saturating_sub(resets_start),
        "killed_at_s": killed_at,
        "ejected": ejected,
        "agent_trouble": trouble,
        "clients": outputs,
        "verified": {
            "client_outbound_connections": d.client_out,
            "connect4_captured": d.captured,
            "endpoints_inbound_connections": d.endpoints_in,
        },
    }))
}
