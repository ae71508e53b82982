//! What the numbers were measured on, and what else was running meanwhile.

use std::process::Command;

use serde_json::{json, Value};

use crate::cmd::{output_of, workspace_root};

pub struct Machine {
    pub date: String,
    pub cpu_model: String,
    pub cores: usize,
    pub mem_total_kib: u64,
    pub kernel: String,
    pub git_commit: String,
    pub took_seconds: f64,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let git = |args: &[&str]| {
            output_of(Command::new("git").current_dir(workspace_root()).args(args))
                .map(|s| s.trim().to_string())
        };
        let mut git_commit =
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
            git_commit.push_str(" (with uncommitted changes)");
        }
        Machine {
            date: output_of(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "unknown".into()),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_total_kib,
            kernel: output_of(Command::new("uname").arg("-r"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "unknown".into()),
            git_commit,
            took_seconds: 0.0,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "date": self.date,
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "mem_total_kib": self.mem_total_kib,
            "kernel": self.kernel,
            "git_commit": self.git_commit,
            "took_seconds": self.took_seconds,
        })
    }
}

/// Signs of other work on the machine, sampled before every measurement: the numbers are
/// ratios measured in alternation, but a concurrent test run still adds noise.
#[derive(Clone, Debug, Default)]
pub struct Noise {
    /// 1-minute load average.
    pub load1: f64,
    /// `mesh-agent` processes other than ours (e.g. a concurrent end-to-end test run).
    pub other_agents: usize,
    /// Pods (cgroups) of other harness runs.
    pub other_pods: usize,
    /// Compilers running (a concurrent build).
    pub compilers: usize,
}

impl Noise {
    pub fn sample(our_agent: Option<u32>) -> Noise {
        Noise::sample_excluding(&our_agent.into_iter().collect::<Vec<_>>())
    }

    /// Like [`Noise::sample`], with several agents of our own (the cross-node bench's two).
    pub fn sample_excluding(our_agents: &[u32]) -> Noise {
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let (mut other_agents, mut compilers) = (0, 0);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            match comm.trim() {
                "mesh-agent" if !our_agents.contains(&pid) => other_agents += 1,
                "rustc" | "cc" | "ld" | "bpf-linker" => compilers += 1,
                _ => {}
            }
        }
        let ours = mesh_tests::prefix();
        let other_pods = mesh_tests::cgroup2_root()
            .ok()
            .and_then(|root| std::fs::read_dir(root.join("mesh-tests")).ok())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                mesh_tests::janitor::prefix_of(&name).is_some_and(|p| p != ours)
            })
            .count();
        Noise {
            load1,
            other_agents,
            other_pods,
            compilers,
        }
    }

    pub fn busy(&self) -> bool {
        self.other_agents > 0 || self.other_pods > 0 || self.compilers > 0
    }

    pub fn to_json(&self) -> Value {
        json!({
            "load1": self.load1,
            "other_agents": self.other_agents,
            "other_pods": self.other_pods,
            "compilers": self.compilers,
        })
    }
}
