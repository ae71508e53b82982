//! Readings of both agents around a cross-node run: the pods' connection counters, the
//! kernel counters, the HBONE numbers, and the CPU the agents and the machine spent.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::cpu::{machine_ticks, Ticks};
use super::cross_bed::{CrossBed, CLIENT_POD, NODE_1, NODE_2, SERVER_POD};
use super::evidence::hbone_numbers;

pub(super) struct Reading {
    pub(super) client_out: (u64, u64),
    pub(super) server_in: (u64, u64),
    pub(super) kernel1: BTreeMap<String, u64>,
    pub(super) kernel2: BTreeMap<String, u64>,
    pub(super) hbone: BTreeMap<String, f64>,
}

impl Reading {
    pub(super) fn take(bed: &CrossBed) -> Result<Reading> {
        let s1 = bed.node1.status_json()?;
        let s2 = bed.node2.status_json()?;
        let traffic = |status: &Value, pod: &str, dir: &str| -> Result<(u64, u64)> {
            let p = status["pods"]
                .as_array()
                .and_then(|pods| pods.iter().find(|p| p["pod"] == pod))
                .with_context(|| format!("pod {pod} is not in the agent's status"))?;
            Ok((
                p[dir]["connections"].as_u64().unwrap_or(0),
                p[dir]["failures"].as_u64().unwrap_or(0),
            ))
        };
        let kernel = |status: &Value| -> BTreeMap<String, u64> {
            status["kernel"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut hbone = BTreeMap::new();
        for (node, status, agent) in [(NODE_1, &s1, &bed.node1), (NODE_2, &s2, &bed.node2)] {
            let metrics = agent.metrics().unwrap_or_default();
            for (k, v) in hbone_numbers(status, &metrics) {
                hbone.insert(format!("{node} {k}"), v);
            }
        }
        Ok(Reading {
            client_out: traffic(&s1, CLIENT_POD, "outbound")?,
            server_in: traffic(&s2, SERVER_POD, "inbound")?,
            kernel1: kernel(&s1),
            kernel2: kernel(&s2),
            hbone,
        })
    }

    pub(super) fn kernel(&self, node: u8, name: &str) -> u64 {
        let k = if node == 1 {
            &self.kernel1
        } else {
            &self.kernel2
        };
        k.get(name).copied().unwrap_or(0)
    }
}

/// CPU ticks of everything a transfer costs, taken before and after a run.
pub(super) struct CpuReading {
    pub(super) agents: Vec<Ticks>,
    pub(super) children: Ticks,
    pub(super) sink: Ticks,
    pub(super) machine: (u64, u64),
    pub(super) at: Instant,
}

impl CpuReading {
    pub(super) fn take(agents: &[u32], sink: u32) -> CpuReading {
        CpuReading {
            agents: agents.iter().map(|p| Ticks::of_process(*p)).collect(),
            children: Ticks::of_waited_children(),
            sink: Ticks::of_process(sink),
            machine: machine_ticks(),
            at: Instant::now(),
        }
    }

    pub(super) fn since(&self, before: &CpuReading) -> Value {
        let tick = 1.0 / super::cpu::clock_ticks();
        let agents: Vec<Ticks> = self
            .agents
            .iter()
            .zip(&before.agents)
            .map(|(a, b)| a.since(*b))
            .collect();
        let wall = self.at.duration_since(before.at).as_secs_f64();
        json!({
            "wall_s": wall,
            "agents_s": agents.iter().map(|t| t.seconds()).sum::<f64>(),
            "agents": agents.iter().zip([NODE_1, NODE_2]).map(|(t, n)| json!({"node": n, "cpu": t.to_json()})).collect::<Vec<_>>(),
            "client_s": self.children.since(before.children).seconds(),
            "client": self.children.since(before.children).to_json(),
            "sink_s": self.sink.since(before.sink).seconds(),
            "sink": self.sink.since(before.sink).to_json(),
            "irq_softirq_s": self.machine.1.saturating_sub(before.machine.1) as f64 * tick,
            "machine_busy_cores": self.machine.0.saturating_sub(before.machine.0) as f64 * tick / wall,
        })
    }
}
