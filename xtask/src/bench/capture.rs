//! Connect latency with eBPF capture (cgroup/connect4) vs iptables REDIRECT, both to the same
//! outbound proxy, same client pod, same VIP. The VIP's endpoint is the unenrolled `dserver`,
//! so the path behind the proxy is one plain hop: capture is all that differs, and the inbound
//! hop's CPU cost does not crowd the measurement.
//!
//! iptables variant: the node-wide connect4 link (`<bpffs>/node/`, capture keyed by network
//! namespace) is unpinned (which detaches it: the pin is the link's only reference), and
//! `iptables -t nat -A OUTPUT -p tcp -d <VIP> --dport 80 -j REDIRECT --to-ports 15001` runs
//! inside the pod's network namespace. The proxy finds no eBPF entry for the accepted
//! connection and asks netfilter (SO_ORIGINAL_DST). Back to eBPF: the rule is deleted and the
//! agent restarted, which attaches a fresh connect4. Every run checks the agent's counters:
//! both variants must go through the outbound proxy, and the iptables one must not be captured
//! by connect4.

use anyhow::{ensure, Context, Result};
use mesh_common::programs::CONNECT4;
use serde_json::json;

use super::report::{Compare, Row, Target};
use super::scenario::{connect_rate_args, median, Bench, Expect};
use super::testbed::{Via, OUT_VIP, VIP_PORT};

const WHAT: [&str; 3] = [
    "connect() p50, eBPF connect4 vs iptables REDIRECT",
    "connect() p99, eBPF connect4 vs iptables REDIRECT",
    "connections/s, eBPF connect4 vs iptables REDIRECT",
];

impl Bench<'_> {
    /// `iptables`: whether the iptables command is available (else why not).
    pub fn capture(&mut self, iptables: Result<(), String>) -> Vec<Row> {
        if let Err(why) = iptables {
            return WHAT.iter().map(|w| Row::failed(*w, why.clone())).collect();
        }
        let mut state = Expect::OutboundEbpf;
        let result = self.capture_runs(&mut state);
        // Leave the client as enrolled normally, whatever happened.
        if let Err(e) = self.switch(&mut state, Expect::OutboundEbpf) {
            self.notes.push(format!(
                "Warning: restoring eBPF capture of the client pod failed: {e:#}"
            ));
        }
        match result {
            Ok(rows) => rows,
            Err(e) => WHAT
                .iter()
                .map(|w| Row::failed(*w, format!("{e:#}")))
                .collect(),
        }
    }

    fn capture_runs(&mut self, state: &mut Expect) -> Result<Vec<Row>> {
        let (secs, concurrency) = (self.plan.connect_secs, self.plan.concurrency);
        let addr = format!("{OUT_VIP}:{VIP_PORT}");
        let (mut ebpf, mut iptables) = (Vec::new(), Vec::new());
        for r in 0..self.plan.repeats {
            let order = if r % 2 == 0 {
                [Expect::OutboundEbpf, Expect::OutboundIptables]
            } else {
                [Expect::OutboundIptables, Expect::OutboundEbpf]
            };
            for variant in order {
                self.switch(state, variant)?;
                let args = connect_rate_args(&addr, secs, concurrency);
                let v = self.measure(Via::OutboundOnly, variant, args, secs, None)?;
                match variant {
                    Expect::OutboundIptables => iptables.push(v),
                    _ => ebpf.push(v),
                }
            }
        }
        self.note_connect_errors("capture comparison", &iptables, &ebpf);
        let conns = |v: &serde_json::Value| v["connections"].as_f64().unwrap_or(f64::NAN);
        self.cpu_line(
            "new connections, iptables REDIRECT capture",
            &iptables,
            "connection",
            conns,
        );
        self.cpu_line(
            "new connections, eBPF connect4 capture",
            &ebpf,
            "connection",
            conns,
        );
        let names = ("iptables", "eBPF");
        self.record_named(
            "capture: connect() p50 (µs)",
            "connect_p50_us",
            names,
            &iptables,
            &ebpf,
        );
        self.record_named(
            "capture: connect() p99 (µs)",
            "connect_p99_us",
            names,
            &iptables,
            &ebpf,
        );
        self.record_named("capture: connections/s", "per_s", names, &iptables, &ebpf);
        self.raw.insert(
            "capture".into(),
            json!({"iptables": iptables, "ebpf": ebpf, "vip": addr}),
        );
        let row = |what: &str, unit, key, compare| {
            Row::new(what, unit).values(median(&iptables, key), median(&ebpf, key), compare)
        };
        Ok(vec![
            row(WHAT[0], "µs", "connect_p50_us", Compare::Delta).target(Target::Lower, " ³"),
            row(WHAT[1], "µs", "connect_p99_us", Compare::Delta),
            row(WHAT[2], "conn/s", "per_s", Compare::Ratio),
        ])
    }

    /// Moves the client pod's capture from `state` to `to`.
    fn switch(&mut self, state: &mut Expect, to: Expect) -> Result<()> {
        if *state == to {
            return Ok(());
        }
        let rule = |op: &str| {
            vec![
                "-t".to_string(),
                "nat".into(),
                op.into(),
                "OUTPUT".into(),
                "-p".into(),
                "tcp".into(),
                "-d".into(),
                OUT_VIP.into(),
                "--dport".into(),
                VIP_PORT.to_string(),
                "-j".into(),
                "REDIRECT".into(),
                "--to-ports".into(),
                mesh_common::ports::OUTBOUND.to_string(),
            ]
        };
        let timeout = std::time::Duration::from_secs(20);
        match to {
            Expect::OutboundIptables => {
                let pin = self.bed.node_link_pin(CONNECT4);
                ensure!(
                    pin.exists(),
                    "the node-wide connect4 link is not pinned at {}",
                    pin.display()
                );
                std::fs::remove_file(&pin)
                    .with_context(|| format!("unpinning {}", pin.display()))?;
                *state = Expect::OutboundIptables; // from here on, switching back needs a restart
                self.bed
                    .client
                    .run("iptables", rule("-A"), timeout)
                    .context("adding the REDIRECT rule inside the client pod")?;
                let listed =
                    self.bed
                        .client
                        .run("iptables", ["-t", "nat", "-S", "OUTPUT"], timeout)?;
                let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
                ensure!(
                    listed.contains("REDIRECT") && listed.contains(OUT_VIP),
                    "the REDIRECT rule is not in the client pod's nat table: {listed}"
                );
            }
            _ => {
                // The rule may be missing if adding it failed; the netns goes with the pod.
                let _ = self.bed.client.run("iptables", rule("-D"), timeout);
                self.restart_agent()
                    .context("restarting the agent to attach connect4 again")?;
                *state = Expect::OutboundEbpf;
                ensure!(
                    self.bed.node_link_pin(CONNECT4).exists(),
                    "the restarted agent did not pin connect4 again"
                );
            }
        }
        Ok(())
    }
}
