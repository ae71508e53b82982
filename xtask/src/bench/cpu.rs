//! CPU time of the agent (by thread group) and of the whole machine across one measurement:
//! where the mesh path spends its time, and whether the cores were saturated.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{json, Value};

use crate::cmd::output_of;

/// A reading taken before a run; [`CpuSnapshot::since`] turns two into a report.
pub struct CpuSnapshot {
    at: Instant,
    agent_total: u64,
    agent_threads: BTreeMap<String, u64>,
    system_busy: u64,
}

impl CpuSnapshot {
    pub fn take(agent: Option<u32>) -> CpuSnapshot {
        let (agent_total, agent_threads) = agent.map(agent_ticks).unwrap_or_default();
        CpuSnapshot {
            at: Instant::now(),
            agent_total,
            agent_threads,
            system_busy: system_busy_ticks(),
        }
    }

    /// CPU seconds since `self` was taken: the agent's, per thread group, and the machine's
    /// busy time expressed as cores (2.0 = both cores of this machine busy all along).
    pub fn since(&self, agent: Option<u32>) -> Value {
        let now = CpuSnapshot::take(agent);
        let tick = 1.0 / clock_ticks();
        let wall = now.at.duration_since(self.at).as_secs_f64();
        let threads: BTreeMap<&String, f64> = now
            .agent_threads
            .iter()
            .map(|(name, t)| {
                let before = self.agent_threads.get(name).copied().unwrap_or(0);
                (name, t.saturating_sub(before) as f64 * tick)
            })
            .collect();
        json!({
            "wall_s": wall,
            "agent_s": now.agent_total.saturating_sub(self.agent_total) as f64 * tick,
            "agent_threads_s": threads,
            "machine_busy_cores": now.system_busy.saturating_sub(self.system_busy) as f64 * tick / wall,
        })
    }
}

pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        output_of(Command::new("getconf").arg("CLK_TCK"))
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime from a /proc stat line, and the command name.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the comm: state is field 3 of stat(5), utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// User and system CPU ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticks {
    pub user: u64,
    pub system: u64,
}

impl Ticks {
    /// A process's own time (all its threads, including exited ones), from /proc/<pid>/stat.
    pub fn of_process(pid: u32) -> Ticks {
        stat_fields(&format!("/proc/{pid}/stat"), 11)
    }

    /// The time of this process's children that have exited and been waited for
    /// (cutime/cstime of /proc/self/stat): a pod-tool client once `Pod::run` returned.
    pub fn of_waited_children() -> Ticks {
        stat_fields("/proc/self/stat", 13)
    }

    pub fn since(self, before: Ticks) -> Ticks {
        Ticks {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }

    pub fn seconds(self) -> f64 {
        (self.user + self.system) as f64 / clock_ticks()
    }

    pub fn to_json(self) -> Value {
        let t = 1.0 / clock_ticks();
        json!({"user_s": self.user as f64 * t, "system_s": self.system as f64 * t})
    }
}

/// Two consecutive stat fields (counted after the command name, from 0 = state).
fn stat_fields(path: &str, first: usize) -> Ticks {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return Ticks::default();
    };
    let f: Vec<u64> = stat[close + 1..]
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Ticks {
        user: f.get(first).copied().unwrap_or(0),
        system: f.get(first + 1).copied().unwrap_or(0),
    }
}

/// Machine-wide busy ticks and, separately, interrupt + softirq ticks (/proc/stat): packet
/// processing the kernel does outside any process's account.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let irq = v.get(5).copied().unwrap_or(0) + v.get(6).copied().unwrap_or(0);
    (system_busy_ticks(), irq)
}

/// The process total (including exited threads) and live threads grouped by role.
fn agent_ticks(pid: u32) -> (u64, BTreeMap<String, u64>) {
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .map_or(0, |(_, t)| t);
    let mut groups = BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for task in tasks.into_iter().flatten().flatten() {
        let Some((comm, ticks)) = std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue;
        };
        let group = if comm.starts_with("netns-") {
            "netns socket helpers".to_string()
        } else if comm.starts_with("tokio-runtime") {
            "tokio workers".to_string()
        } else {
            comm
        };
        *groups.entry(group).or_insert(0) += ticks;
    }
    (total, groups)
}

/// Busy ticks of all CPUs (everything but idle and iowait) from /proc/stat.
fn system_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    v.iter().take(8).sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}
