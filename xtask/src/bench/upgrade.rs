//! Replacing the agent under load (issue 11): the client opens connections back to back
//! through the mesh while the agent is replaced, and every failed connection is counted.
//! Baseline: the agent killed and started again (what an agent without a handover offers:
//! while none runs, captured connections fail closed). Mesh: an upgrade, a second agent
//! taking over from the running one, which then drains and exits.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::report::{Compare, Row, Target};
use super::scenario::{connect_rate_args, median, Bench};
use super::testbed::Via;

const FAILED: &str =
    "failed new connections while the agent is replaced under load (restart vs handover)";
const MADE: &str = "new connections opened meanwhile (restart vs handover)";

#[derive(Clone, Copy)]
enum Replace {
    /// SIGKILL, then a new agent.
    Restart,
    /// A new agent beside the running one; the old one drains and exits.
    Handover,
}

impl Bench<'_> {
    pub fn upgrade(&mut self) -> Vec<Row> {
        match self.upgrade_runs() {
            Ok(rows) => rows,
            Err(e) => [FAILED, MADE]
                .iter()
                .map(|w| Row::failed(*w, format!("{e:#}")))
                .collect(),
        }
    }

    fn upgrade_runs(&mut self) -> Result<Vec<Row>> {
        // Long enough that the replacement falls well inside the run.
        let secs = self.plan.connect_secs.max(3.0);
        let (_, addr) = self.bed.echo(Via::Mesh);
        let (mut restart, mut handover) = (Vec::new(), Vec::new());
        for _ in 0..self.plan.repeats {
            restart.push(self.replaced_under_load(&addr, secs, Replace::Restart)?);
            handover.push(self.replaced_under_load(&addr, secs, Replace::Handover)?);
        }
        let of = |runs: &[Value], key: &str| median(runs, key);
        let failed = Row::new(FAILED, "")
            .values(
                of(&restart, "errors"),
                of(&handover, "errors"),
                Compare::Delta,
            )
            .target(Target::AtMost(0.0), "");
        let made = Row::new(MADE, "")
            .values(
                of(&restart, "connections"),
                of(&handover, "connections"),
                Compare::Ratio,
            )
            .target(Target::Info, "");
        self.notes.push(format!(
            "**Agent replaced under load:** `pod-tool connect-rate` (2 threads, {secs} s, \
             connections closed with RST) from the mesh client to the echo server through the \
             mesh; a quarter into each run the agent is replaced: killed and started again \
             (baseline), or upgraded (a second agent takes over over the handover socket, the \
             first drains and exits). Each run's connections all went through connect4 (the \
             kernel's `connect_captured` rose by at least as many). Runs: restart {}; handover \
             {}.",
            Value::Array(restart.clone()),
            Value::Array(handover.clone())
        ));
        self.raw.insert(
            "agent_replaced".into(),
            json!({"restart": restart, "handover": handover}),
        );
        Ok(vec![failed, made])
    }

    fn replaced_under_load(&mut self, addr: &str, secs: f64, how: Replace) -> Result<Value> {
        let captured = self.bed.counters()?.kernel("connect_captured");
        let mut args = connect_rate_args(addr, secs, 2);
        args.push("--linger0".into());
        let client = self.bed.client_pod(Via::Mesh);
        let mut rate = client
            .spawn(&self.bed.pod_tool, &args)
            .context("starting connect-rate")?;
        std::thread::sleep(Duration::from_secs_f64(secs / 4.0));
        let started = Instant::now();
        match how {
            Replace::Restart => {
                self.bed.node.kill_agent();
                self.bed.node.start_agent()?;
            }
            Replace::Handover => {
                let mut old = self.bed.node.upgrade_agent()?;
                let gone = mesh_tests::wait_until(Duration::from_secs(20), || !old.is_running());
                ensure!(gone, "the old agent did not exit after its drain");
                ensure!(
                    old.log().contains("handed over to the successor"),
                    "the old agent did not hand over"
                );
            }
        }
        let replaced_ms = started.elapsed().as_secs_f64() * 1000.0;
        let out = rate.wait_output(Duration::from_secs_f64(secs * 4.0 + 10.0))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let run: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .with_context(|| format!("connect-rate printed no JSON: {stdout:?}"))?;
        let connections = run["connections"].as_u64().unwrap_or(0);
        let rose = self.bed.counters()?.kernel("connect_captured") - captured;
        ensure!(
            rose >= connections,
            "connections went around the mesh: {connections} opened, connect4 captured {rose}"
        );
        Ok(json!({
            "connections": connections,
            "errors": run["errors"],
            "replaced_ms": replaced_ms.round(),
        }))
    }
}
