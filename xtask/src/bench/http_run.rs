//! Running one HTTP measurement with proof of the path it took, on either HTTP bed (one node,
//! or two agents across nodes): the client tool runs in the hop's client pod, bracketed by
//! readings of the agents' counters. A mesh run must raise the agent's Istio request counter
//! of the Service by at least the requests the client completed (so every request went
//! through the L7 proxy) and its client pod's outbound connections and connect4 captures by
//! the connections the client opened; direct and nginx runs must leave all of them alone.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use mesh_tests::Pod;
use serde_json::{json, Value};

use super::cpu::CpuSnapshot;
use super::http_tools::{parse_h2load, parse_wrk, pod_cpu_s};
use super::machine::Noise;
use super::scenario::Plan;

/// Which way an HTTP measurement goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hop {
    /// An unenrolled client pod to an unenrolled origin pod's IP: no proxy at all.
    Direct,
    /// The enrolled client pod to the Service VIP (port protocol `http`): the agent's L7 path.
    Mesh,
    /// The unenrolled client pod to the nginx reverse-proxy pod, which proxies to the same
    /// origin pod as `Direct`.
    Nginx,
}

impl Hop {
    pub fn name(self) -> &'static str {
        match self {
            Hop::Direct => "direct",
            Hop::Mesh => "mesh",
            Hop::Nginx => "nginx",
        }
    }
}

/// What the agents said at one moment about the bed's client pod and Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// The mesh client pod's outbound connections (its agent's status).
    pub client_out: u64,
    /// connect4 captures on the client's node.
    pub captured: u64,
    /// Failed proxied connections the agents counted (client outbound + server inbound).
    pub failures: u64,
    /// `istio_requests_total` of the measured Service, by connection security policy.
    pub requests: BTreeMap<String, u64>,
}

impl Reading {
    pub fn requests_total(&self) -> u64 {
        self.requests.values().sum()
    }
}

/// A bed the HTTP runs measure on.
pub trait HttpBed {
    /// Where a hop's client runs.
    fn client(&self, hop: Hop) -> &Pod;
    /// `http://host:port/` of a hop (`h2`: the HTTP/2 prior-knowledge port).
    fn url(&self, hop: Hop, h2: bool) -> String;
    fn agent_pids(&mut self) -> Vec<u32>;
    /// Counters of the Service `service` and the mesh client pod.
    fn reading(&self, service: &str) -> Result<Reading>;
    /// The nginx reverse-proxy pod, if this bed has one.
    fn nginx_proxy(&self) -> Option<&Pod>;
    fn pod_tool(&self) -> &Path;
    /// The agents' last log lines (for errors).
    fn log_tail(&mut self) -> String;
}

/// The client program of a run.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    Wrk,
    H2load,
    /// `pod-tool` (prints one JSON line last).
    PodTool,
}

impl Client {
    fn program(self, bed: &dyn HttpBed) -> OsString {
        match self {
            Client::Wrk => "wrk".into(),
            Client::H2load => "h2load".into(),
            Client::PodTool => bed.pod_tool().into(),
        }
    }

    fn parse(self, stdout: &str) -> Result<Value> {
        match self {
            Client::Wrk => parse_wrk(stdout),
            Client::H2load => parse_h2load(stdout),
            Client::PodTool => {
                let line = stdout.lines().last().unwrap_or_default();
                let mut v: Value =
                    serde_json::from_str(line).with_context(|| format!("no JSON in {stdout:?}"))?;
                // `http-load` reports answers by status: together, the requests it completed.
                if v["requests"].is_null() {
                    let answered: u64 = v["statuses"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter_map(|(_, n)| n.as_u64())
                        .sum();
                    v["requests"] = json!(answered);
                }
                Ok(v)
            }
        }
    }
}

/// One run: a tool, its arguments, the Service its mesh requests count against and how
/// many connections it opens.
pub struct Run<'a> {
    pub client: Client,
    pub args: Vec<String>,
    pub service: &'a str,
    pub connections: u64,
    pub seconds: f64,
}

pub struct Runner<'a, B: HttpBed> {
    pub bed: &'a mut B,
    pub plan: &'a Plan,
    pub noise: Vec<Noise>,
    pub warnings: Vec<String>,
}

impl<'a, B: HttpBed> Runner<'a, B> {
    pub fn new(bed: &'a mut B, plan: &'a Plan) -> Runner<'a, B> {
        Runner {
            bed,
            plan,
            noise: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Runs `run` on `hop` and checks the agents' counters for the path it took.
    pub fn measure(&mut self, hop: Hop, run: &Run) -> Result<Value> {
        let agents = self.bed.agent_pids();
        ensure!(!agents.is_empty(), "no agent is running");
        let noise = Noise::sample_excluding(&agents);
        let before = self.bed.reading(run.service)?;
        let cpu: Vec<CpuSnapshot> = agents.iter().map(|p| CpuSnapshot::take(Some(*p))).collect();
        let nginx_before = self.bed.nginx_proxy().map(pod_cpu_s);
        let pod = self.bed.client(hop);
        let timeout = Duration::from_secs_f64(run.seconds + 60.0);
        let out = match pod.run(run.client.program(&*self.bed), &run.args, timeout) {
            Ok(out) => out,
            Err(e) if hop == Hop::Mesh => {
                return Err(e.context(format!("agent log (tail):\n{}", self.bed.log_tail())))
            }
            Err(e) => return Err(e),
        };
        let cpu: Vec<Value> = cpu
            .iter()
            .zip(&agents)
            .map(|(c, p)| c.since(Some(*p)))
            .collect();
        let nginx_s = match (nginx_before, self.bed.nginx_proxy()) {
            (Some(b), Some(pod)) => pod_cpu_s(pod) - b,
            _ => f64::NAN,
        };
        let after = self.bed.reading(run.service)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut v = run.client.parse(&stdout)?;
        let done = v["requests"].as_u64().unwrap_or(0);
        let requests = after
            .requests_total()
            .saturating_sub(before.requests_total());
        let by_policy: BTreeMap<&String, u64> = after
            .requests
            .iter()
            .map(|(k, n)| (k, n.saturating_sub(*before.requests.get(k).unwrap_or(&0))))
            .filter(|(_, n)| *n > 0)
            .collect();
        let conns = after.client_out.saturating_sub(before.client_out);
        let captured = after.captured.saturating_sub(before.captured);
        let seen = format!(
            "{hop:?} run of `{}`: the client completed {done} requests on {} connection(s); the \
             agent counted {requests} requests to {} ({by_policy:?}), client outbound \
             connections +{conns}, connect4 captures +{captured}",
            run.args.join(" "),
            run.connections,
            run.service
        );
        let ok = match hop {
            Hop::Mesh => {
                done > 0 && requests >= done && conns >= run.connections && captured >= conns
            }
            Hop::Direct | Hop::Nginx => requests == 0 && conns == 0 && captured == 0,
        };
        ensure!(ok, "the traffic did not take the expected path: {seen}");
        let failures = after.failures.saturating_sub(before.failures);
        if failures > 0 {
            self.warnings.push(format!(
                "Warning: the agents counted {failures} failed connection(s) during a {hop:?} \
                 run of `{}`.",
                run.args.join(" ")
            ));
        }
        self.warn_on_errors(hop, run, &v);
        let agent_s: f64 = cpu.iter().filter_map(|c| c["agent_s"].as_f64()).sum();
        v["verified"] = json!({
            "agent_requests": requests,
            "agent_requests_by_security": by_policy,
            "client_outbound_connections": conns,
            "connect4_captured": captured,
            "agent_failures": failures,
        });
        v["cpu"] = json!({
            "agents_s": agent_s,
            "agents": cpu,
            "nginx_proxy_s": nginx_s,
        });
        v["noise"] = noise.to_json();
        self.noise.push(noise);
        Ok(v)
    }

    fn warn_on_errors(&mut self, hop: Hop, run: &Run, v: &Value) {
        let bad: u64 = [
            "non_2xx",
            "socket_errors",
            "errors",
            "other_status",
            "failed",
        ]
        .iter()
        .filter_map(|k| v[*k].as_u64())
        .sum();
        if bad > 0 {
            self.warnings.push(format!(
                "Warning: {bad} request(s) failed or were not answered 2xx during a {hop:?} \
                 run of `{}` (see results.json); rates count 2xx answers only.",
                run.args.join(" ")
            ));
        }
    }

    /// Runs `one(hop)` for every hop, `repeats` times, rotating which goes first; the samples
    /// of each hop in the order of `hops`.
    pub fn rotated(
        &mut self,
        hops: &[Hop],
        mut one: impl FnMut(&mut Self, Hop) -> Result<Value>,
    ) -> Result<Vec<Vec<Value>>> {
        let n = hops.len();
        let mut samples = vec![Vec::new(); n];
        for r in 0..self.plan.repeats {
            for k in 0..n {
                let i = (r + k) % n;
                samples[i].push(one(self, hops[i])?);
            }
        }
        Ok(samples)
    }
}
