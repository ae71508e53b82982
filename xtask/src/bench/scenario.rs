//! Running measurements: each one is a pod-tool client run in a pod, bracketed by two reads of
//! the agent's counters that prove which path the traffic took. Direct and mesh runs
//! alternate (direct first in even repetitions, mesh first in odd ones); every row reports the
//! median of its repetitions.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Map, Value};

use super::cpu::CpuSnapshot;
use super::machine::Noise;
use super::report::{Compare, Row, Target};
use super::testbed::{Testbed, Via};

/// Durations and counts of one bench run.
pub struct Plan {
    pub repeats: usize,
    pub rr_count: usize,
    pub rr_warmup: usize,
    pub stream_secs: f64,
    pub stream4_secs: f64,
    pub connect_secs: f64,
    pub concurrency: usize,
    pub hold_per_step: usize,
    pub hold_steps: usize,
    /// Back-to-back connect-rate windows (of `connect_secs`) with TIME_WAIT sockets kept, per
    /// path and closing pattern: the sustained-churn rows.
    pub churn_windows: usize,
}

impl Plan {
    pub fn new(quick: bool, repeats: Option<usize>) -> Plan {
        let mut plan = if quick {
            Plan {
                repeats: 1,
                rr_count: 2000,
                rr_warmup: 200,
                stream_secs: 1.0,
                stream4_secs: 1.0,
                connect_secs: 1.0,
                concurrency: 2,
                hold_per_step: 200,
                hold_steps: 2,
                churn_windows: 2,
            }
        } else {
            Plan {
                repeats: 3,
                rr_count: 20000,
                rr_warmup: 1000,
                stream_secs: 5.0,
                stream4_secs: 3.0,
                connect_secs: 5.0,
                concurrency: 2,
                hold_per_step: 1000,
                hold_steps: 3,
                // 6 x 5 s: at least 30 s of sustained churn per path.
                churn_windows: 6,
            }
        };
        if let Some(n) = repeats {
            plan.repeats = n.max(1);
        }
        plan
    }

    pub fn to_json(&self) -> Value {
        json!({
            "repeats": self.repeats,
            "rr_count": self.rr_count,
            "rr_warmup": self.rr_warmup,
            "rr_size": 1024,
            "stream_secs": self.stream_secs,
            "stream4_secs": self.stream4_secs,
            "connect_secs": self.connect_secs,
            "connect_concurrency": self.concurrency,
            "hold_per_step": self.hold_per_step,
            "hold_steps": self.hold_steps,
            "churn_windows": self.churn_windows,
        })
    }
}

/// The path a measured connection must have taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Not through the agent at all: no counter of it moves.
    Direct,
    /// Captured by connect4, through the outbound and the inbound proxy.
    Mesh,
    /// Not captured on the client side; steered by sk_lookup to the inbound proxy.
    Inbound,
    /// Captured by connect4 into the outbound proxy, to an unenrolled server.
    OutboundEbpf,
    /// Captured by iptables REDIRECT (connect4 detached) into the outbound proxy, to an
    /// unenrolled server.
    OutboundIptables,
}

/// One metric's samples, for the "runs" list of the report.
pub struct Samples {
    pub label: String,
    pub baseline_name: &'static str,
    pub mesh_name: &'static str,
    pub baseline: Vec<f64>,
    pub mesh: Vec<f64>,
}

pub struct Bench<'a> {
    pub bed: &'a mut Testbed,
    pub plan: &'a Plan,
    pub raw: Map<String, Value>,
    pub samples: Vec<Samples>,
    pub notes: Vec<String>,
    pub noise: Vec<Noise>,
    /// "Where the agent's CPU goes" lines.
    pub cpu_lines: Vec<String>,
    /// Normally every run starts with the pods' TIME_WAIT sockets cleared; the churn series
    /// keeps them to show what accumulating them does.
    pub keep_time_wait: bool,
}

impl<'a> Bench<'a> {
    pub fn new(bed: &'a mut Testbed, plan: &'a Plan) -> Bench<'a> {
        Bench {
            bed,
            plan,
            raw: Map::new(),
            samples: Vec::new(),
            notes: Vec::new(),
            noise: Vec::new(),
            cpu_lines: Vec::new(),
            keep_time_wait: false,
        }
    }

    /// Runs pod-tool `args` over `via` and checks that the agent's counters show the traffic
    /// took the `expect`ed path. `connections` is how many connections the run opens, or
    /// `None` to take it from the tool's output (connect-rate).
    pub fn measure(
        &mut self,
        via: Via,
        expect: Expect,
        args: Vec<String>,
        seconds: f64,
        connections: Option<u64>,
    ) -> Result<Value> {
        let agent = self.bed.agent_pid().ok();
        let noise = Noise::sample(agent);
        let pod = self.bed.client_pod(via);
        let time_wait = if self.keep_time_wait {
            self.bed.time_wait()?
        } else {
            self.bed.clear_time_wait()?
        };
        let before = self.bed.counters()?;
        let timeout = Duration::from_secs_f64(seconds + 60.0);
        let cpu = CpuSnapshot::take(agent);
        let mut out = self.bed.tool(pod, &args, timeout)?;
        let cpu = cpu.since(agent);
        let after = self.bed.counters()?;
        let n = connections
            .or_else(|| out["connections"].as_u64())
            .unwrap_or(1);
        // Saturating: a counter that went backwards (reset) shows as no progress and fails.
        let out_conns = after
            .client_out
            .connections
            .saturating_sub(before.client_out.connections);
        let in_conns = after
            .server_in
            .connections
            .saturating_sub(before.server_in.connections);
        let kernel = |name| after.kernel(name).saturating_sub(before.kernel(name));
        let (captured, steered) = (kernel("connect_captured"), kernel("lookup_steered"));
        let failures = (after.client_out.failures + after.server_in.failures)
            .saturating_sub(before.client_out.failures + before.server_in.failures);
        let seen = format!(
            "expected {n} connection(s) via {expect:?}; agent counted outbound +{out_conns}, \
             inbound +{in_conns}, connect4 captures +{captured}, sk_lookup steered +{steered}"
        );
        let ok = match expect {
            Expect::Direct => out_conns == 0 && in_conns == 0 && after.kernel == before.kernel,
            // Two hops (sk_lookup into the server's inbound proxy) or same-node delivery in
            // one: both are the mesh path; which one it was is recorded and reported.
            Expect::Mesh => out_conns >= n && in_conns >= n && captured >= n,
            Expect::Inbound => out_conns == 0 && in_conns >= n && captured == 0 && steered >= n,
            Expect::OutboundEbpf => {
                out_conns >= n && in_conns == 0 && captured >= n && steered == 0
            }
            Expect::OutboundIptables => {
                out_conns >= n && in_conns == 0 && captured == 0 && steered == 0
            }
        };
        ensure!(ok, "the traffic did not take the expected path: {seen}");
        out["verified"] = json!({
            "outbound_connections": out_conns,
            "inbound_connections": in_conns,
            "connect4_captured": captured,
            "sk_lookup_steered": steered,
            "agent_failures": failures,
        });
        out["noise"] = noise.to_json();
        out["cpu"] = cpu;
        let key = if self.keep_time_wait {
            "time_wait_before"
        } else {
            "time_wait_cleared_before"
        };
        out[key] = json!(time_wait);
        out["time_wait_after"] = json!(self.bed.time_wait()?);
        if failures > 0 {
            self.notes.push(format!(
                "Warning: the agent counted {failures} failed connection(s) during a {expect:?} \
                 run of `{}`.",
                args.join(" ")
            ));
        }
        self.noise.push(noise);
        Ok(out)
    }

    /// Runs `one(via)` for every path in `vias`, `repeats` times, rotating which goes first;
    /// returns the samples of each path in the order of `vias`.
    pub fn rotated<const N: usize>(
        &mut self,
        vias: [Via; N],
        one: impl FnMut(&mut Self, Via) -> Result<Value>,
    ) -> Result<[Vec<Value>; N]> {
        let samples = self.rotated_vec(&vias, one)?;
        Ok(samples.try_into().expect("one sample list per path"))
    }

    pub fn rotated_vec(
        &mut self,
        vias: &[Via],
        mut one: impl FnMut(&mut Self, Via) -> Result<Value>,
    ) -> Result<Vec<Vec<Value>>> {
        let n = vias.len();
        let mut samples = vec![Vec::new(); n];
        for r in 0..self.plan.repeats {
            for k in 0..n {
                let i = (r + k) % n;
                let v = one(self, vias[i])?;
                samples[i].push(v);
            }
        }
        Ok(samples)
    }

    /// Where the agent's CPU went in the `via` runs of one scenario: `per` names the unit of
    /// work, `units` counts it in one sample.
    pub fn cpu_line(
        &mut self,
        what: &str,
        samples: &[Value],
        per: &str,
        units: impl Fn(&Value) -> f64,
    ) {
        let per_unit: Vec<f64> = samples
            .iter()
            .map(|v| v["cpu"]["agent_s"].as_f64().unwrap_or(f64::NAN) / units(v))
            .collect();
        let threads = |v: &Value| -> Vec<(String, f64)> {
            v["cpu"]["agent_threads_s"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, t)| (k.clone(), t.as_f64().unwrap_or(0.0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        // Thread shares summed over the samples.
        let mut shares: std::collections::BTreeMap<String, f64> = Default::default();
        for v in samples {
            for (k, t) in threads(v) {
                *shares.entry(k).or_default() += t;
            }
        }
        let total: f64 = shares.values().sum();
        let split = shares
            .iter()
            .filter(|(_, t)| **t > 0.0)
            .map(|(k, t)| format!("{k} {:.0}%", 100.0 * t / total.max(f64::MIN_POSITIVE)))
            .collect::<Vec<_>>()
            .join(", ");
        let busy = median_of(
            samples
                .iter()
                .filter_map(|v| v["cpu"]["machine_busy_cores"].as_f64())
                .collect(),
        );
        self.cpu_lines.push(format!(
            "{what}: agent CPU {} per {per} ({split}); machine busy {busy:.2} of {} cores",
            fmt_cpu(median_of(per_unit)),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        ));
    }

    pub fn record(&mut self, label: &str, key: &str, baseline: &[Value], mesh: &[Value]) {
        self.record_named(label, key, ("direct", "mesh"), baseline, mesh);
    }

    pub fn record_named(
        &mut self,
        label: &str,
        key: &str,
        names: (&'static str, &'static str),
        baseline: &[Value],
        mesh: &[Value],
    ) {
        self.samples.push(Samples {
            label: label.to_string(),
            baseline_name: names.0,
            mesh_name: names.1,
            baseline: values(baseline, key),
            mesh: values(mesh, key),
        });
    }

    /// 1 KiB request/response latency.
    pub fn latency(&mut self) -> Result<Vec<Row>> {
        let (count, warmup) = (self.plan.rr_count, self.plan.rr_warmup);
        let vias = [Via::Direct, Via::Mesh, Via::InboundOnly];
        let [direct, mesh, inbound] = self.rotated(vias, |b, via| {
            let (_, addr) = b.bed.echo(via);
            let args = strings(&[
                "rr",
                "--connect",
                &addr,
                "--size",
                "1024",
                "--count",
                &count.to_string(),
                "--warmup",
                &warmup.to_string(),
            ]);
            b.measure(via, expect_for(via), args, count as f64 * 0.01, Some(1))
        })?;
        self.record("1 KiB round trip p50 (µs)", "p50_us", &direct, &mesh);
        self.record("1 KiB round trip p99 (µs)", "p99_us", &direct, &mesh);
        self.record_named(
            "1 KiB round trip p50 (µs), inbound hop only",
            "p50_us",
            ("direct", "inbound only"),
            &direct,
            &inbound,
        );
        let trips = (count + warmup) as f64;
        self.cpu_line("1 KiB round trips, mesh", &mesh, "round trip", |_| trips);
        self.cpu_line(
            "1 KiB round trips, inbound hop only",
            &inbound,
            "round trip",
            |_| trips,
        );
        let rows = vec![
            Row::new("1 KiB request/response, p50", "µs")
                .values(
                    median(&direct, "p50_us"),
                    median(&mesh, "p50_us"),
                    Compare::Delta,
                )
                .target(Target::DeltaAtMost(60.0), " ¹"),
            Row::new("1 KiB request/response, p99", "µs").values(
                median(&direct, "p99_us"),
                median(&mesh, "p99_us"),
                Compare::Delta,
            ),
            Row::new("1 KiB request/response p50, inbound hop only ⁴", "µs").values(
                median(&direct, "p50_us"),
                median(&inbound, "p50_us"),
                Compare::Delta,
            ),
        ];
        self.raw.insert(
            "latency".into(),
            json!({"direct": direct, "mesh": mesh, "inbound_only": inbound}),
        );
        Ok(rows)
    }

    /// Bulk throughput, one stream and four.
    pub fn throughput(&mut self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        let runs = [
            (1usize, self.plan.stream_secs, "single-stream throughput"),
            (4, self.plan.stream4_secs, "4-stream throughput"),
        ];
        for (streams, secs, what) in runs {
            // The inbound-only split only for one stream: it is the row with a target.
            let vias = if streams == 1 {
                vec![Via::Direct, Via::Mesh, Via::InboundOnly]
            } else {
                vec![Via::Direct, Via::Mesh]
            };
            let mut runs = self.rotated_vec(&vias, |b, via| {
                let (_, addr) = b.bed.sink(via);
                let args = strings(&[
                    "stream",
                    "--connect",
                    &addr,
                    "--seconds",
                    &secs.to_string(),
                    "--streams",
                    &streams.to_string(),
                ]);
                b.measure(via, expect_for(via), args, secs, Some(streams as u64))
            })?;
            let inbound = if runs.len() > 2 { runs.pop() } else { None };
            let mesh = runs.pop().unwrap_or_default();
            let direct = runs.pop().unwrap_or_default();
            self.record(&format!("{what} (Gbit/s)"), "gbit_per_s", &direct, &mesh);
            let gb = |v: &Value| v["bytes"].as_f64().unwrap_or(f64::NAN) / 1e9;
            self.cpu_line(&format!("{what}, mesh"), &mesh, "GB", gb);
            let mut row = Row::new(what, "Gbit/s").values(
                median(&direct, "gbit_per_s"),
                median(&mesh, "gbit_per_s"),
                Compare::Ratio,
            );
            if streams == 1 {
                row = row.target(Target::RatioAtLeast(0.55), "");
            }
            rows.push(row);
            if let Some(inbound) = &inbound {
                self.record_named(
                    &format!("{what} (Gbit/s), inbound hop only"),
                    "gbit_per_s",
                    ("direct", "inbound only"),
                    &direct,
                    inbound,
                );
                self.cpu_line(&format!("{what}, inbound hop only"), inbound, "GB", gb);
                rows.push(
                    Row::new(format!("{what}, inbound hop only ⁴"), "Gbit/s").values(
                        median(&direct, "gbit_per_s"),
                        median(inbound, "gbit_per_s"),
                        Compare::Ratio,
                    ),
                );
            }
            self.raw.insert(
                format!("stream_{streams}"),
                json!({"direct": direct, "mesh": mesh, "inbound_only": inbound}),
            );
        }
        Ok(rows)
    }

    /// New connections per second (open, 1-byte echo, close).
    pub fn connect_rate(&mut self) -> Result<Vec<Row>> {
        let secs = self.plan.connect_secs;
        let concurrency = self.plan.concurrency;
        let vias = [Via::Direct, Via::Mesh, Via::InboundOnly];
        let [direct, mesh, inbound] = self.rotated(vias, |b, via| {
            let (_, addr) = b.bed.echo(via);
            b.measure(
                via,
                expect_for(via),
                connect_rate_args(&addr, secs, concurrency),
                secs,
                None,
            )
        })?;
        self.note_connect_errors("connect-rate", &direct, &mesh);
        self.note_connect_errors("inbound-only connect-rate", &[], &inbound);
        let conns = |v: &Value| v["connections"].as_f64().unwrap_or(f64::NAN);
        self.cpu_line("new connections, mesh", &mesh, "connection", conns);
        self.cpu_line(
            "new connections, inbound hop only",
            &inbound,
            "connection",
            conns,
        );
        self.record_named(
            "new connections/s, inbound hop only",
            "per_s",
            ("direct", "inbound only"),
            &direct,
            &inbound,
        );
        self.record("new connections/s", "per_s", &direct, &mesh);
        self.record("connect() p50 (µs)", "connect_p50_us", &direct, &mesh);
        self.record("connect() p99 (µs)", "connect_p99_us", &direct, &mesh);
        let mut rows = vec![
            Row::new(
                format!("new connections per second (concurrency {concurrency})"),
                "conn/s",
            )
            .values(
                median(&direct, "per_s"),
                median(&mesh, "per_s"),
                Compare::Ratio,
            )
            .target(Target::RatioAtLeast(0.5), " ²"),
            Row::new("connect() latency p50, same runs", "µs").values(
                median(&direct, "connect_p50_us"),
                median(&mesh, "connect_p50_us"),
                Compare::Delta,
            ),
            Row::new("connect() latency p99, same runs", "µs").values(
                median(&direct, "connect_p99_us"),
                median(&mesh, "connect_p99_us"),
                Compare::Delta,
            ),
            Row::new("new connections per second, inbound hop only ⁴", "conn/s").values(
                median(&direct, "per_s"),
                median(&inbound, "per_s"),
                Compare::Ratio,
            ),
        ];
        self.raw.insert(
            "connect_rate".into(),
            json!({"direct": direct, "mesh": mesh, "inbound_only": inbound}),
        );
        rows.extend(self.churn()?);
        Ok(rows)
    }

    pub fn note_connect_errors(&mut self, what: &str, a: &[Value], b: &[Value]) {
        let errors: u64 = a.iter().chain(b).filter_map(|v| v["errors"].as_u64()).sum();
        if errors > 0 {
            self.notes.push(format!(
                "Warning: {errors} connection attempt(s) failed during the {what} runs (see \
                 `errors` and `stderr` in results.json); the rates count successful ones only."
            ));
        }
    }
}

pub fn expect_for(via: Via) -> Expect {
    match via {
        Via::Direct => Expect::Direct,
        Via::Mesh => Expect::Mesh,
        Via::InboundOnly => Expect::Inbound,
        Via::OutboundOnly => Expect::OutboundEbpf,
    }
}

/// CPU seconds per unit, in a readable unit.
fn fmt_cpu(s: f64) -> String {
    if s >= 0.1 {
        format!("{s:.2} s")
    } else if s >= 1e-4 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

pub fn connect_rate_args(addr: &str, secs: f64, concurrency: usize) -> Vec<String> {
    strings(&[
        "connect-rate",
        "--connect",
        addr,
        "--seconds",
        &secs.to_string(),
        "--concurrency",
        &concurrency.to_string(),
    ])
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

pub fn values(samples: &[Value], key: &str) -> Vec<f64> {
    samples.iter().filter_map(|v| v[key].as_f64()).collect()
}

/// Median of one key over the samples (mean of the middle two for an even count).
pub fn median(samples: &[Value], key: &str) -> f64 {
    median_of(values(samples, key))
}

pub fn median_of(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}
