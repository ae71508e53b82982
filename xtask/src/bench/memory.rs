//! Agent memory: resident set size (VmRSS of the agent process) when idle, and what each idle
//! proxied connection adds.
//!
//! Per connection: `pod-tool hold` in the client pod opens N connections to the echo VIP (each
//! proves itself with a 1-byte round trip) and keeps them open. Each of them is a full mesh
//! connection: 4 sockets and 2 relays in the agent (outbound and inbound). The agent's counters
//! must show N more active connections on both sides before RSS is read. Holders are added
//! one after the other without closing the earlier ones, so each step measures fresh
//! allocations: closing and reopening would let the allocator hand back memory it retained
//! and make later steps look free. Kernel socket memory is not in RSS and not counted.

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use mesh_tests::PodProcess;
use serde_json::json;

use super::report::{Row, Target};
use super::scenario::{median_of, Bench};
use super::testbed::{Via, ECHO_VIP, VIP_PORT};

impl Bench<'_> {
    /// RSS of the agent, in KiB (what /proc calls kB): the median of three reads.
    pub fn rss_kib(&mut self) -> Result<u64> {
        let mut reads = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(300));
            reads.push(self.bed.agent_rss_kib()? as f64);
        }
        Ok(median_of(reads) as u64)
    }

    /// Idle RSS with the pods enrolled; `label` says when.
    pub fn idle_rss(&mut self, label: &str, what: &str, target: bool) -> Row {
        match self.rss_kib() {
            Ok(kib) => {
                self.raw.insert(label.into(), json!({ "vm_rss_kib": kib }));
                let row = Row::new(what, "MB").mesh_only(kib as f64 * 1024.0 / 1e6);
                if target {
                    row.target(Target::AtMost(15.0), "")
                } else {
                    row
                }
            }
            Err(e) => Row::failed(what, format!("{e:#}")),
        }
    }

    pub fn per_connection(&mut self) -> Row {
        let what = "agent RSS per idle proxied connection";
        let mut holders = Vec::new();
        let result = self.per_connection_steps(&mut holders);
        drop(holders);
        // The agent should let go of them again; not a measurement, a sanity check.
        if result.is_ok() {
            let closed = mesh_tests::wait_until(Duration::from_secs(20), || {
                self.bed
                    .counters()
                    .is_ok_and(|c| c.client_out.active == 0 && c.server_in.active == 0)
            });
            if !closed {
                self.notes.push(
                    "Warning: after the held connections were closed the agent still counted \
                     some as active 20 s later."
                        .into(),
                );
            }
        }
        match result {
            Ok(per_conn_kb) => Row::new(what, "KB")
                .mesh_only(per_conn_kb)
                .target(Target::AtMost(30.0), ""),
            Err(e) => Row::failed(what, format!("{e:#}")),
        }
    }

    fn per_connection_steps(&mut self, holders: &mut Vec<PodProcess>) -> Result<f64> {
        let n = self.plan.hold_per_step;
        let addr = format!("{ECHO_VIP}:{VIP_PORT}");
        let start = self.bed.counters()?;
        ensure!(
            start.client_out.active == 0 && start.server_in.active == 0,
            "the agent has active connections before the memory test (outbound {}, inbound {})",
            start.client_out.active,
            start.server_in.active
        );
        let mut prev = self.rss_kib()?;
        let base_rss = prev;
        let mut steps = Vec::new();
        for step in 1..=self.plan.hold_steps {
            let count = n.to_string();
            let mut holder = self.bed.client.spawn(
                &self.bed.pod_tool,
                ["hold", "--connect", &addr, "--count", &count],
            )?;
            let held = mesh_tests::wait_until(Duration::from_secs(120), || {
                holder.stdout().contains("held") || !holder.is_running()
            });
            if !held || !holder.stdout().contains("held") {
                bail!(
                    "pod-tool hold did not open {n} connections: {}",
                    holder.stderr().trim()
                );
            }
            holders.push(holder);
            let want = (step * n) as i64;
            let seen = mesh_tests::wait_until(Duration::from_secs(20), || {
                self.bed
                    .counters()
                    .is_ok_and(|c| c.client_out.active >= want && c.server_in.active >= want)
            });
            let c = self.bed.counters()?;
            ensure!(
                seen,
                "the agent does not count {want} active proxied connections (outbound {}, \
                 inbound {})",
                c.client_out.active,
                c.server_in.active
            );
            let rss = self.rss_kib()?;
            let per_conn_kb = (rss as f64 - prev as f64) * 1024.0 / n as f64 / 1000.0;
            steps.push(json!({
                "held_total": want,
                "vm_rss_kib": rss,
                "delta_kib": rss as i64 - prev as i64,
                "per_connection_kb": per_conn_kb,
                "outbound_active": c.client_out.active,
                "inbound_active": c.server_in.active,
            }));
            prev = rss;
        }
        let per_step: Vec<f64> = steps
            .iter()
            .filter_map(|s| s["per_connection_kb"].as_f64())
            .collect();
        self.samples.push(super::scenario::Samples {
            label: "RSS per idle proxied connection (KB), per step".into(),
            baseline_name: "-",
            mesh_name: "mesh",
            baseline: Vec::new(),
            mesh: per_step.clone(),
        });
        self.raw.insert(
            "hold".into(),
            json!({
                "per_step": n,
                "base_vm_rss_kib": base_rss,
                "steps": steps,
                "via": format!("{:?}", Via::Mesh),
            }),
        );
        Ok(median_of(per_step))
    }
}
