//! The HTTP scenario (issue 8): the agent's L7 path (a Service port with `protocol: http`,
//! every request terminated and routed by the node proxy) against the same requests sent
//! direct and through nginx as a plain reverse proxy, between the same kind of pods in the
//! same run (beds in `http_bed`, runs and their proof of path in `http_run`, the outside
//! tools in `http_tools`, memory and profile in `http_extra`, the section text in
//! `http_report`).
//!
//! Same node: HTTP/1.1 keep-alive requests/s at saturation (`wrk`), latency at a fixed
//! moderate rate (`pod-tool http-rate`, open loop), HTTP/2 requests/s on one connection
//! (`h2load`), how one HTTP/2 connection's requests spread over three endpoints, agent CPU
//! per 1,000 requests and agent memory per 1,000 idle keep-alive connections (nginx's beside
//! each). Cross node: requests/s and fixed-rate latency over HBONE between two agents.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::http_bed::{
    CrossHttp, SameNodeHttp, CROSS_WEB, SPREAD, SPREAD_ENDPOINTS, SPREAD_VIP, VIP_PORT, WEB,
};
use super::http_report::{cross_rows, same_node_rows, Measured};
use super::http_run::{Client, Hop, HttpBed, Run, Runner};
use super::http_tools::{h2load_args, wrk_args, PACKAGES};
use super::report::Row;
use super::scenario::{strings, Plan};
use crate::cmd::progress;
use crate::setup;

/// wrk's load: one thread (this machine has two cores) and 32 keep-alive connections.
pub const WRK_THREADS: usize = 1;
pub const WRK_CONNECTIONS: usize = 32;
/// The fixed rate of the latency runs, well under what any path saturates at.
pub const RATE: f64 = 1000.0;
pub const RATE_CONNECTIONS: usize = 4;
/// h2load: one connection, this many requests in flight on it.
pub const H2_STREAMS: usize = 10;
/// `http-load --http2`: one connection, this many requests in flight, this many in all
/// (a random pick would be within 10% of a third with 3000 at ~4 standard deviations).
const SPREAD_CONCURRENCY: usize = 10;
const SPREAD_REQUESTS: usize = 3000;

/// The scenario's outcome.
pub struct HttpResult {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub raw: Value,
    pub took: f64,
}

/// Runs the scenario with the `agent` binary (same node) and the release binaries in `bins`
/// (cross node, pod-tool).
pub fn run(agent: &Path, bins: &Path, plan: &Plan) -> Result<HttpResult> {
    setup::ensure_packages(PACKAGES)?;
    let started = Instant::now();
    let mut raw = Map::new();
    let same = same_node(agent, bins, plan)?;
    raw.insert("same_node".into(), same.raw.clone());
    let (mut rows, mut notes) = same_node_rows(&same);
    progress("http: cross-node, HTTP over HBONE between two agents");
    match cross_node(bins, plan) {
        Ok(cross) => {
            raw.insert("cross_node".into(), cross.raw.clone());
            let (r, n) = cross_rows(&cross);
            rows.extend(r);
            notes.extend(n);
        }
        Err(e) => {
            eprintln!("http cross-node: {e:#}");
            rows.push(Row::failed("HTTP cross-node over HBONE", format!("{e:#}")));
            raw.insert("cross_node".into(), json!({"error": format!("{e:#}")}));
        }
    }
    raw.insert("plan".into(), plan_json(plan));
    notes.push(super::http_report::HOW.to_string());
    Ok(HttpResult {
        rows,
        notes,
        raw: Value::Object(raw),
        took: started.elapsed().as_secs_f64(),
    })
}

fn plan_json(plan: &Plan) -> Value {
    json!({
        "repeats": plan.repeats,
        "seconds": plan.stream_secs,
        "wrk": {"threads": WRK_THREADS, "connections": WRK_CONNECTIONS},
        "rate": {"per_s": RATE, "connections": RATE_CONNECTIONS},
        "h2load": {"connections": 1, "streams": H2_STREAMS},
        "spread": {"requests": SPREAD_REQUESTS, "concurrency": SPREAD_CONCURRENCY},
        "hold": {"per_step": plan.hold_per_step, "steps": plan.hold_steps},
    })
}

fn same_node(agent: &Path, bins: &Path, plan: &Plan) -> Result<Measured> {
    let mut bed = SameNodeHttp::start(agent.to_owned(), bins.join("pod-tool"))?;
    let mut r = Runner::new(&mut bed, plan);
    let hops = [Hop::Direct, Hop::Mesh, Hop::Nginx];
    warm_up(&mut r, &hops, WEB)?;
    let load = Load::plain(plan.stream_secs);
    progress("http: HTTP/1.1 keep-alive requests/s at saturation (wrk): direct, mesh, nginx");
    let wrk = r.rotated(&hops, |r, hop| saturation(r, hop, WEB, load))?;
    progress(&format!(
        "http: latency at {RATE} requests/s (pod-tool http-rate, open loop)"
    ));
    let rate = r.rotated(&hops, |r, hop| fixed_rate(r, hop, WEB, load))?;
    progress("http: HTTP/2 requests/s on one connection (h2load)");
    let h2 = r.rotated(&hops, h2_saturation)?;
    progress("http: one HTTP/2 connection's requests over three endpoints");
    let spread = (0..plan.repeats)
        .map(|_| spread_run(&mut r))
        .collect::<Result<Vec<_>>>()?;
    let mut m = Measured::new(&hops, [wrk, rate, h2]);
    m.spread = spread;
    let target = |k: usize| super::scenario::median(&m.wrk[k], "ok_per_s");
    if target(1) < target(2) {
        progress("http: the mesh missed nginx: profiling the agent (perf) during one more run");
        m.profile = Some(super::http_extra::profile(&mut r));
    }
    progress("http: request-level security: none, an HTTP ALLOW policy, JWT validation");
    m.security = Some(super::http_security::run(&mut r, WEB));
    // Last: closing thousands of connections leaves memory in the allocator.
    progress(&format!(
        "http: memory per idle keep-alive connection ({} x {} held connections)",
        plan.hold_steps, plan.hold_per_step
    ));
    for hop in [Hop::Mesh, Hop::Nginx] {
        let held = super::http_extra::held_memory(&mut r, hop);
        m.memory.push((hop, held));
    }
    m.finish(&mut r);
    drop(r);
    progress("http: cleaning up: agent, nginx, pods, bridge");
    drop(bed);
    Ok(m)
}

fn cross_node(bins: &Path, plan: &Plan) -> Result<Measured> {
    let mut bed = CrossHttp::start(bins)?;
    let mut r = Runner::new(&mut bed, plan);
    let hops = [Hop::Direct, Hop::Mesh];
    warm_up(&mut r, &hops, CROSS_WEB)?;
    let load = Load::plain(plan.stream_secs);
    progress("http cross-node: requests/s at saturation (wrk): direct, mesh");
    let wrk = r.rotated(&hops, |r, hop| saturation(r, hop, CROSS_WEB, load))?;
    progress(&format!("http cross-node: latency at {RATE} requests/s"));
    let rate = r.rotated(&hops, |r, hop| fixed_rate(r, hop, CROSS_WEB, load))?;
    let mut m = Measured::new(&hops, [wrk, rate, Vec::new()]);
    progress("http cross-node: request-level security: none, an HTTP ALLOW policy, JWT");
    m.security = Some(super::http_security::run(&mut r, CROSS_WEB));
    m.finish(&mut r);
    drop(r);
    progress("http cross-node: cleaning up: agents, control plane, pods, bridge");
    drop(bed);
    Ok(m)
}

/// A few hundred requests on every path before measuring: connections, pools and health
/// checks settle, and a path that does not work fails here with its own message.
fn warm_up<B: HttpBed>(r: &mut Runner<B>, hops: &[Hop], service: &str) -> Result<()> {
    progress("http: warm-up (and a check that every path answers)");
    for hop in hops {
        let url = r.bed.url(*hop, false);
        let run = Run {
            client: Client::PodTool,
            args: strings(&[
                "http-load",
                "--url",
                &url,
                "--requests",
                "300",
                "--concurrency",
                "4",
            ]),
            service,
            connections: 4,
            seconds: 10.0,
        };
        let v = r.measure(*hop, &run)?;
        anyhow::ensure!(
            v["ok"].as_u64() == Some(300),
            "warm-up on the {hop:?} path: not every request was answered 2xx: {v}"
        );
    }
    Ok(())
}

/// How long a measured run lasts and the headers its requests carry (the request-security
/// rows send a token).
#[derive(Clone, Copy)]
pub struct Load<'a> {
    pub secs: f64,
    pub headers: &'a [String],
}

impl Load<'_> {
    pub fn plain(secs: f64) -> Load<'static> {
        Load { secs, headers: &[] }
    }
}

pub fn saturation<B: HttpBed>(
    r: &mut Runner<B>,
    hop: Hop,
    service: &str,
    load: Load,
) -> Result<Value> {
    let url = r.bed.url(hop, false);
    let run = Run {
        client: Client::Wrk,
        args: wrk_args(&url, load.secs, WRK_THREADS, WRK_CONNECTIONS, load.headers),
        service,
        connections: WRK_CONNECTIONS as u64,
        seconds: load.secs,
    };
    r.measure(hop, &run)
}

pub fn fixed_rate<B: HttpBed>(
    r: &mut Runner<B>,
    hop: Hop,
    service: &str,
    load: Load,
) -> Result<Value> {
    let mut args = strings(&[
        "http-rate",
        "--url",
        &r.bed.url(hop, false),
        "--rate",
        &RATE.to_string(),
        "--seconds",
        &load.secs.to_string(),
        "--connections",
        &RATE_CONNECTIONS.to_string(),
    ]);
    for h in load.headers {
        args.extend(["-H".into(), h.clone()]);
    }
    let run = Run {
        client: Client::PodTool,
        args,
        service,
        connections: RATE_CONNECTIONS as u64,
        seconds: load.secs,
    };
    r.measure(hop, &run)
}

fn h2_saturation<B: HttpBed>(r: &mut Runner<B>, hop: Hop) -> Result<Value> {
    let secs = r.plan.stream_secs;
    let run = Run {
        client: Client::H2load,
        args: h2load_args(&r.bed.url(hop, true), secs, 1, H2_STREAMS),
        service: WEB,
        connections: 1,
        seconds: secs,
    };
    r.measure(hop, &run)
}

/// One HTTP/2 connection (`pod-tool http-load --http2`) to the three-endpoint VIP; each
/// endpoint's share of the answers (by their `x-served-by`) and the worst one's distance
/// from 1/3, relative to 1/3, in percent.
fn spread_run(r: &mut Runner<SameNodeHttp>) -> Result<Value> {
    let url = format!("http://{SPREAD_VIP}:{VIP_PORT}/");
    let args = strings(&[
        "http-load",
        "--url",
        &url,
        "--requests",
        &SPREAD_REQUESTS.to_string(),
        "--concurrency",
        &SPREAD_CONCURRENCY.to_string(),
        "--http2",
    ]);
    let run = Run {
        client: Client::PodTool,
        args,
        service: SPREAD,
        connections: 1,
        seconds: 30.0,
    };
    let mut v = r.measure(Hop::Mesh, &run)?;
    anyhow::ensure!(
        v["connections"].as_u64() == Some(1),
        "http-load --http2 used more than one connection: {v}"
    );
    let counts: Vec<u64> = r
        .bed
        .spread
        .iter()
        .map(|pod| v["served_by"][pod.short_name()].as_u64().unwrap_or(0))
        .collect();
    let total: u64 = counts.iter().sum();
    let share = total as f64 / SPREAD_ENDPOINTS as f64;
    let worst = counts
        .iter()
        .map(|n| 100.0 * (*n as f64 - share).abs() / share)
        .fold(0.0, f64::max);
    v["endpoint_counts"] = json!(counts);
    v["worst_deviation_pct"] = json!(worst);
    Ok(v)
}
