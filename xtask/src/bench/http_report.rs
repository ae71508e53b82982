//! The HTTP scenario's samples, rows and section text (results.md), and its part of
//! results.json.

use std::collections::BTreeSet;
use std::fmt::Write;

use anyhow::Result;
use serde_json::{json, Value};

use super::http::{HttpResult, H2_STREAMS, RATE, RATE_CONNECTIONS, WRK_CONNECTIONS};
use super::http_run::{Hop, HttpBed, Runner};
use super::http_security::{self, Security};
use super::machine::{Machine, Noise};
use super::report::{self, Compare, Row, Target};
use super::scenario::{median, median_of};
use super::sections;

/// Every sample of one bed, by hop.
pub struct Measured {
    pub hops: Vec<Hop>,
    /// wrk at saturation, fixed-rate latency, h2load; each with one list per hop.
    pub wrk: Vec<Vec<Value>>,
    pub rate: Vec<Vec<Value>>,
    pub h2: Vec<Vec<Value>>,
    pub spread: Vec<Value>,
    /// perf's top entries, when the mesh missed nginx.
    pub profile: Option<Result<Profile>>,
    /// Memory per 1,000 idle connections, by hop.
    pub memory: Vec<(Hop, Result<Value>)>,
    /// The mesh path with and without request-level policy.
    pub security: Option<Result<Security>>,
    pub noise: Vec<Noise>,
    pub warnings: Vec<String>,
    pub raw: Value,
}

/// The agent's profile during one saturation run.
pub struct Profile {
    pub samples: String,
    pub top: Vec<String>,
    /// The agent's own functions by inclusive time (`perf report --children`).
    pub agent_code: Vec<String>,
    pub run: Value,
}

impl Measured {
    pub fn new(hops: &[Hop], [wrk, rate, h2]: [Vec<Vec<Value>>; 3]) -> Measured {
        Measured {
            hops: hops.to_vec(),
            wrk,
            rate,
            h2,
            spread: Vec::new(),
            profile: None,
            memory: Vec::new(),
            security: None,
            noise: Vec::new(),
            warnings: Vec::new(),
            raw: Value::Null,
        }
    }

    /// One hop's samples of a series (empty when the series or the hop was not run).
    pub fn of<'a>(&self, series: &'a [Vec<Value>], hop: Hop) -> &'a [Value] {
        self.hops
            .iter()
            .position(|h| *h == hop)
            .and_then(|i| series.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// Takes the runner's noise samples and warnings, and keeps every sample as raw JSON.
    pub fn finish<B: HttpBed>(&mut self, r: &mut Runner<B>) {
        self.noise = std::mem::take(&mut r.noise);
        self.warnings = std::mem::take(&mut r.warnings);
        let by_hop = |series: &[Vec<Value>]| -> Value {
            self.hops
                .iter()
                .map(|h| (h.name().to_string(), json!(self.of(series, *h))))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        self.raw = json!({
            "wrk": by_hop(&self.wrk),
            "rate": by_hop(&self.rate),
            "h2load": by_hop(&self.h2),
            "h2_spread": self.spread,
            "memory": self.memory.iter().map(|(h, m)| (h.name().to_string(), match m {
                Ok(v) => v.clone(),
                Err(e) => json!({"error": format!("{e:#}")}),
            })).collect::<serde_json::Map<_, _>>(),
            "profile": self.profile.as_ref().map(|p| match p {
                Ok(p) => json!({"samples": p.samples, "top": p.top, "agent_code": p.agent_code, "run": p.run}),
                Err(e) => json!({"error": format!("{e:#}")}),
            }),
            "request_security": self.security.as_ref().map(|s| match s {
                Ok(s) => s.to_json(),
                Err(e) => json!({"error": format!("{e:#}")}),
            }),
            "noise": self.noise.iter().map(Noise::to_json).collect::<Vec<_>>(),
        });
    }

    fn med(&self, series: &[Vec<Value>], hop: Hop, key: &str) -> f64 {
        median(self.of(series, hop), key)
    }

    /// Agent CPU (all agents) per 1,000 requests of a hop's saturation runs, in ms; or the
    /// nginx proxy pod's.
    fn cpu_per_1000(&self, hop: Hop, key: &str) -> f64 {
        median_of(
            self.of(&self.wrk, hop)
                .iter()
                .map(|v| {
                    v["cpu"][key].as_f64().unwrap_or(f64::NAN) * 1e3 * 1000.0
                        / v["requests"].as_f64().unwrap_or(f64::NAN)
                })
                .collect(),
        )
    }
}

/// Rows and notes of the same-node bed.
pub fn same_node_rows(m: &Measured) -> (Vec<Row>, Vec<String>) {
    let (d, me, n) = (Hop::Direct, Hop::Mesh, Hop::Nginx);
    let w = |hop| m.med(&m.wrk, hop, "ok_per_s");
    let p = |hop, key| m.med(&m.rate, hop, key);
    let h = |hop| m.med(&m.h2, hop, "per_s");
    let wrk_what = format!("HTTP/1.1 keep-alive requests/s (wrk, {WRK_CONNECTIONS} connections)");
    let at = format!("at {RATE:.0} requests/s (open loop)");
    let h2_what = format!("HTTP/2 requests/s, one connection, {H2_STREAMS} streams (h2load)");
    let label = |s: &str| format!("HTTP same node: {s}");
    let mut rows = vec![
        Row::new(label(&wrk_what), "req/s").values(w(d), w(me), Compare::Ratio),
        Row::new(
            label(&format!("{wrk_what}, nginx reverse proxy ⁸")),
            "req/s",
        )
        .values(w(n), w(me), Compare::Ratio)
        .target(Target::RatioAtLeast(1.0), " ⁸"),
        Row::new(label(&format!("request latency p50 {at}")), "µs").values(
            p(d, "p50_us"),
            p(me, "p50_us"),
            Compare::Delta,
        ),
        Row::new(label(&format!("request latency p99 {at}")), "µs").values(
            p(d, "p99_us"),
            p(me, "p99_us"),
            Compare::Delta,
        ),
        Row::new(label(&format!("request latency p50 {at}, nginx ⁸")), "µs").values(
            p(n, "p50_us"),
            p(me, "p50_us"),
            Compare::Delta,
        ),
        Row::new(label(&h2_what), "req/s").values(h(d), h(me), Compare::Ratio),
        Row::new(label(&format!("{h2_what}, nginx ⁸ ⁹")), "req/s").values(
            h(n),
            h(me),
            Compare::Ratio,
        ),
    ];
    let worst = m
        .spread
        .iter()
        .filter_map(|v| v["worst_deviation_pct"].as_f64())
        .fold(f64::NAN, f64::max);
    rows.push(
        Row::new(
            label("HTTP/2, one connection's requests over 3 endpoints: farthest endpoint from its 1/3 share (worst run) ¹⁰"),
            "%",
        )
        .mesh_only(worst)
        .target(Target::AtMost(10.0), ""),
    );
    rows.push(
        Row::new(
            label("CPU per 1,000 requests at saturation: nginx pod ⁸ vs agent"),
            "ms",
        )
        .values(
            m.cpu_per_1000(n, "nginx_proxy_s"),
            m.cpu_per_1000(me, "agents_s"),
            Compare::Ratio,
        ),
    );
    let memory_row = |hop: Hop| -> Result<f64, String> {
        match m.memory.iter().find(|(h, _)| *h == hop) {
            Some((_, Ok(v))) => Ok(v["mb_per_1000"].as_f64().unwrap_or(f64::NAN)),
            Some((_, Err(e))) => Err(format!("{e:#}")),
            None => Err("not run".into()),
        }
    };
    let mem_what = label(
        "memory per 1,000 idle keep-alive connections (one request each): nginx pod ⁸ vs agent ¹¹",
    );
    rows.push(match (memory_row(n), memory_row(me)) {
        (Ok(a), Ok(b)) => Row::new(mem_what, "MB").values(a, b, Compare::Ratio),
        (Err(e), _) | (_, Err(e)) => Row::failed(mem_what, e),
    });
    let mut notes = vec![footnotes(), http_security::FOOTNOTE.to_string()];
    notes.push(path_note("Same node", m, "local"));
    notes.extend(security_rows(&mut rows, "HTTP same node", m));
    notes.push(cpu_note(m));
    notes.extend(profile_note(m));
    notes.push(memory_note(m));
    notes.push(spread_note(m));
    notes.extend(common_notes(m, "same node"));
    (rows, notes)
}

/// Rows and notes of the cross-node bed.
pub fn cross_rows(m: &Measured) -> (Vec<Row>, Vec<String>) {
    let (d, me) = (Hop::Direct, Hop::Mesh);
    let mtls = security_of(m) == ["mutual_tls"];
    let (label, note) = if mtls {
        ("HTTP cross-node HBONE mTLS", "")
    } else {
        ("HTTP cross-node (not verified as mTLS ⁶)", " ⁶")
    };
    let at = format!("at {RATE:.0} requests/s (open loop)");
    let p = |hop, key| m.med(&m.rate, hop, key);
    let mut rows = vec![
        Row::new(
            format!("{label}: HTTP/1.1 keep-alive requests/s (wrk, {WRK_CONNECTIONS} connections)"),
            "req/s",
        )
        .values(
            m.med(&m.wrk, d, "ok_per_s"),
            m.med(&m.wrk, me, "ok_per_s"),
            Compare::Ratio,
        ),
        Row::new(format!("{label}: request latency p50 {at}"), "µs")
            .values(p(d, "p50_us"), p(me, "p50_us"), Compare::Delta)
            .target(Target::DeltaAtMost(150.0), note),
        Row::new(format!("{label}: request latency p99 {at}"), "µs").values(
            p(d, "p99_us"),
            p(me, "p99_us"),
            Compare::Delta,
        ),
        Row::new(
            format!("{label}: CPU per 1,000 requests at saturation, both agents"),
            "ms",
        )
        .mesh_only(m.cpu_per_1000(me, "agents_s")),
    ];
    let mut notes = vec![path_note("Cross node", m, "mutual_tls")];
    notes.extend(security_rows(&mut rows, label, m));
    notes.extend(common_notes(m, "cross node"));
    (rows, notes)
}

/// Adds the request-security rows of a bed that measured them; their note.
fn security_rows(rows: &mut Vec<Row>, label: &str, m: &Measured) -> Vec<String> {
    let Some(security) = &m.security else {
        return Vec::new();
    };
    let (r, notes) = http_security::rows(label, security);
    rows.extend(r);
    notes
}

/// The connection security policies the agent labelled the mesh runs' requests with.
fn security_of(m: &Measured) -> Vec<String> {
    let mut seen = BTreeSet::new();
    for v in m
        .of(&m.wrk, Hop::Mesh)
        .iter()
        .chain(m.of(&m.rate, Hop::Mesh))
    {
        for (k, _) in v["verified"]["agent_requests_by_security"]
            .as_object()
            .into_iter()
            .flatten()
        {
            seen.insert(k.clone());
        }
    }
    seen.into_iter().collect()
}

fn footnotes() -> String {
    "⁸ Baseline column: nginx (Debian's) as a plain reverse proxy in a pod of its own between \
     the direct client and origin pods (`proxy_pass` to an upstream with `keepalive 256`, \
     HTTP/1.1 upstream, no access log, as many worker processes as the agent has worker \
     threads); mesh column: the agent's L7 path. The CPU row compares the nginx pod's CPU \
     (its cgroup's `cpu.stat`) with the agent's (/proc), the memory row the nginx pod's \
     processes' RSS with the agent's. ⁹ nginx terminates HTTP/2 and proxies each request over \
     HTTP/1.1 (it cannot speak HTTP/2 to upstreams); the mesh keeps HTTP/2 upstream. \
     ¹⁰ DESIGN.md: every endpoint within 10% of its share, taken as |count − 1/3 of all| ≤ 10% \
     of 1/3 of all. ¹¹ RSS growth (VmRSS; kernel socket buffers are not in it) per step of \
     held connections, scaled to 1,000; no DESIGN.md target for HTTP (the L4 one is 30 KB per \
     idle proxied connection, i.e. 30 MB per 1,000)."
        .to_string()
}

fn path_note(what: &str, m: &Measured, expected: &str) -> String {
    let runs: Vec<&Value> = [&m.wrk, &m.rate, &m.h2]
        .into_iter()
        .flat_map(|s| m.of(s, Hop::Mesh))
        .collect();
    let client: u64 = runs.iter().filter_map(|v| v["requests"].as_u64()).sum();
    let agent: u64 = runs
        .iter()
        .filter_map(|v| v["verified"]["agent_requests"].as_u64())
        .sum();
    let security = security_of(m).join(", ");
    let verdict = if security == expected {
        format!("every request was labelled `connection_security_policy=\"{expected}\"`")
    } else {
        format!("**the requests were labelled `{security}`, not only `{expected}`**")
    };
    format!(
        "**{what}, path of the mesh runs:** in {} measured mesh runs the clients completed \
         {client} requests and the agent's `istio_requests_total` for the Service rose by \
         {agent} (each run must count at least its client's; direct and nginx runs must \
         leave it, the mesh client's outbound connections and connect4 captures unchanged); \
         {verdict}.",
        runs.len()
    )
}

fn cpu_note(m: &Measured) -> String {
    let threads: Vec<String> = m
        .of(&m.wrk, Hop::Mesh)
        .first()
        .and_then(|v| {
            v["cpu"]["agents"][0]["agent_threads_s"]
                .as_object()
                .cloned()
        })
        .into_iter()
        .flatten()
        .filter(|(_, s)| s.as_f64().unwrap_or(0.0) > 0.0)
        .map(|(k, s)| format!("{k} {:.2} s", s.as_f64().unwrap_or(0.0)))
        .collect();
    format!(
        "CPU at saturation (wrk runs, medians): agent {:.2} ms per 1,000 requests, nginx \
         proxy pod {:.2} ms per 1,000 requests; agent threads in the first mesh run: {}; \
         machine busy {:.2} (direct), {:.2} (mesh), {:.2} (nginx) of {} cores.",
        m.cpu_per_1000(Hop::Mesh, "agents_s"),
        m.cpu_per_1000(Hop::Nginx, "nginx_proxy_s"),
        threads.join(", "),
        machine_busy(m, Hop::Direct),
        machine_busy(m, Hop::Mesh),
        machine_busy(m, Hop::Nginx),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    )
}

fn machine_busy(m: &Measured, hop: Hop) -> f64 {
    median_of(
        m.of(&m.wrk, hop)
            .iter()
            .filter_map(|v| v["cpu"]["agents"][0]["machine_busy_cores"].as_f64())
            .collect(),
    )
}

fn profile_note(m: &Measured) -> Option<String> {
    Some(match m.profile.as_ref()? {
        Ok(p) => format!(
            "**Profile** (the mesh missed nginx): `perf record --call-graph dwarf` of the agent \
             during one more mesh wrk run ({} req/s), {}. Self time by symbol (`perf report \
             --no-children`, entries ≥ 1%):\n\n```\n{}\n```\n\nThe agent's own functions by time including \
             what they call (`perf report --children`; `[.]` user space, `[k]` kernel):\n\n```\n{}\n```",
            p.run["ok_per_s"].as_f64().map_or("?".into(), |x| format!("{x:.0}")),
            p.samples,
            p.top.join("\n"),
            p.agent_code.join("\n")
        ),
        Err(e) => format!("Profile (the mesh missed nginx): not taken: {e:#}"),
    })
}

fn memory_note(m: &Measured) -> String {
    let mut out = String::from(
        "Memory of idle keep-alive connections (`pod-tool http-hold`: each connection made one \
         request, then stays open; the agent's open-connection gauge of the client pod, or the \
         nginx pod's established sockets, must show them before RSS is read); growth per step \
         in MB per 1,000, and the RSS before the first step:",
    );
    for (hop, r) in &m.memory {
        let steps = match r {
            Ok(v) => format!(
                "[{}] from {:.1} MB",
                v["steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| format!("{:.2}", s["mb_per_1000"].as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", "),
                v["base_vm_rss_kib"].as_f64().unwrap_or(f64::NAN) * 1024.0 / 1e6
            ),
            Err(e) => format!("not measured: {e:#}"),
        };
        let _ = write!(out, " {} {steps};", hop.name());
    }
    out.pop();
    out.push_str(
        ". nginx allocates its connection table (`worker_connections`, 8192 here) when it \
         starts and keeps no buffers for an idle keep-alive connection, so its RSS hardly grows \
         with them; the agent's does, per connection.",
    );
    out
}

fn spread_note(m: &Measured) -> String {
    let runs: Vec<String> = m
        .spread
        .iter()
        .map(|v| {
            format!(
                "{} ({:.1}%)",
                v["endpoint_counts"],
                v["worst_deviation_pct"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    format!(
        "HTTP/2 spread: `pod-tool http-load --http2` (one connection, 10 requests in flight) \
         to a VIP with 3 endpoints (`pod-tool http-serve`), answers counted by their \
         `x-served-by`; per run, requests per endpoint (farthest from 1/3): {}.",
        runs.join("; ")
    )
}

/// Noise, warnings and every repetition's numbers.
fn common_notes(m: &Measured, what: &str) -> Vec<String> {
    let busy = m.noise.iter().filter(|n| n.busy()).count();
    let max_load = m.noise.iter().map(|n| n.load1).fold(0.0, f64::max);
    let mut notes = vec![if busy == 0 {
        format!("Other work on the machine ({what}): none seen in {} samples (max 1-min load {max_load:.2}).", m.noise.len())
    } else {
        format!(
            "**Noise ({what}):** other work ran during {busy} of {} measurements (up to {} \
             other mesh-agent processes, {} pods of other runs, {} compiler processes; max \
             1-min load {max_load:.2}). The paths alternate, so all see it.",
            m.noise.len(),
            m.noise.iter().map(|n| n.other_agents).max().unwrap_or(0),
            m.noise.iter().map(|n| n.other_pods).max().unwrap_or(0),
            m.noise.iter().map(|n| n.compilers).max().unwrap_or(0),
        )
    }];
    notes.extend(m.warnings.iter().cloned());
    let mut runs = format!("Runs, {what} (each repetition in run order; rows show the median):\n");
    for (series, key, label) in [
        (&m.wrk, "ok_per_s", "HTTP/1.1 requests/s"),
        (&m.rate, "p50_us", "p50 at the fixed rate (µs)"),
        (&m.rate, "p99_us", "p99 at the fixed rate (µs)"),
        (&m.h2, "per_s", "HTTP/2 requests/s"),
    ] {
        if series.iter().all(Vec::is_empty) {
            continue;
        }
        let _ = write!(runs, "\n- {label}:");
        for hop in &m.hops {
            let list: Vec<String> = m
                .of(series, *hop)
                .iter()
                .map(|v| format!("{:.1}", v[key].as_f64().unwrap_or(f64::NAN)))
                .collect();
            let _ = write!(runs, " {} [{}];", hop.name(), list.join(", "));
        }
        runs.pop();
    }
    notes.push(runs);
    notes
}

pub const HOW: &str = "How: every client runs inside a pod. Saturation: `wrk -t1 -c32 -d<s>s \
--latency` (closed loop, keep-alive) against a 64-byte static answer from nginx (the origin, in \
the server pods); rows count 2xx answers. Latency: `pod-tool http-rate` sends GETs on a fixed \
schedule (open loop) over 4 keep-alive connections and measures each request from the time it \
was due (so a stall counts against every request it delayed; no coordinated omission); its \
threads sleep on the kernel's high-resolution timer, and the median send lag is in \
results.json. HTTP/2: `h2load -c1 -m10 -D <s>` against the origin's h2c port (the mesh Service \
port `http2`). The paths alternate in every repetition, rotating which goes first; rows show \
the median. Mesh Service ports are `protocol: http` (and `http2`), with the agent's default \
MeshConfig (metrics on, access log and tracing off).";

/// The section for results.md: heading, when and on what it ran, the table, the notes.
pub fn section(result: &Result<HttpResult>, machine: &Machine, quick: bool) -> String {
    let (mut out, http) = sections::begin(sections::HTTP.heading, result, quick);
    let Some(http) = http else {
        return out;
    };
    let _ = writeln!(
        out,
        "Measured {} at commit {} in {:.0} s. Same node: one agent; the mesh pods dial a \
         Service VIP whose port is `protocol: http`, the direct pods dial the origin pod's IP, \
         and the nginx rows go through an nginx reverse-proxy pod between the direct pods. \
         Cross node: two agents and a control plane as in the section above, HTTP over HBONE. \
         Fixed rate: {RATE:.0} requests/s over {RATE_CONNECTIONS} connections.\n",
        machine.date, machine.git_commit, http.took
    );
    out.push_str(&report::table_and_notes(&http.rows, &http.notes));
    out
}

/// The rows for results.json: the measured ones, or one saying why there are none.
pub fn json_rows(result: &Result<HttpResult>) -> Vec<Value> {
    let rows = result.as_ref().map(|r| r.rows.as_slice());
    report::json_rows_or_failure(rows, format!("{}: the L7 path", sections::HTTP.row_prefix))
}
