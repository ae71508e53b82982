//! Two HTTP measurements that are not client runs: what idle keep-alive connections cost in
//! memory (the agent's and the nginx proxy's), and where the agent's CPU goes (perf) when
//! its L7 path serves fewer requests per second than nginx.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use mesh_tests::PodProcess;
use serde_json::{json, Value};

use super::evidence::established_on;
use super::http::{WRK_CONNECTIONS, WRK_THREADS};
use super::http_bed::{SameNodeHttp, WEB};
use super::http_report::Profile;
use super::http_run::{Client, Hop, HttpBed, Run, Runner};
use super::http_tools::{pod_rss_kib, wrk_args, PROXY_PORT};
use super::scenario::median_of;

/// RSS growth per 1,000 idle HTTP/1.1 keep-alive connections, each of which made one request
/// (`pod-tool http-hold`), through the mesh (the agent's RSS) or nginx (its pod's processes).
/// Holders are added without closing the earlier ones, as the L4 memory rows do, so every
/// step measures fresh allocations.
pub fn held_memory(r: &mut Runner<SameNodeHttp>, hop: Hop) -> Result<Value> {
    let (n, steps) = (r.plan.hold_per_step, r.plan.hold_steps);
    let url = r.bed.url(hop, false);
    let active = |bed: &SameNodeHttp| -> Result<i64> {
        let status = bed.node.status_json()?;
        Ok(status["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["pod"] == "default/hclient"))
            .map_or(0, |p| p["outbound"]["active"].as_i64().unwrap_or(0)))
    };
    let base_active = active(r.bed)?;
    let mut holders: Vec<PodProcess> = Vec::new();
    let mut prev = rss_kib(r.bed, hop)?;
    let base = prev;
    let mut out = Vec::new();
    for step in 1..=steps {
        let mut holder = r.bed.client(hop).spawn(
            r.bed.pod_tool(),
            ["http-hold", "--url", &url, "--count", &n.to_string()],
        )?;
        let held = mesh_tests::wait_until(Duration::from_secs(120), || {
            holder.stdout().contains("held") || !holder.is_running()
        });
        if !held || !holder.stdout().contains("held") {
            bail!(
                "pod-tool http-hold did not hold {n} connections: {}",
                holder.stderr().trim()
            );
        }
        holders.push(holder);
        // The agent must count them as open, nginx's pod must have them established.
        let want = (step * n) as i64;
        match hop {
            Hop::Mesh => {
                let seen = mesh_tests::wait_until(Duration::from_secs(20), || {
                    active(r.bed).is_ok_and(|a| a >= base_active + want)
                });
                let now = active(r.bed)?;
                ensure!(seen, "the agent counts {now} open connections of hclient, not {want} more than {base_active}");
            }
            _ => {
                let pid = *r
                    .bed
                    .proxy
                    .pids()
                    .first()
                    .context("no process in the nginx pod")?;
                let open = || established_on(pid as u32, PROXY_PORT) as i64;
                let seen = mesh_tests::wait_until(Duration::from_secs(20), || open() >= want);
                ensure!(
                    seen,
                    "the nginx pod has {} connections established on {PROXY_PORT}, not {want}",
                    open()
                );
            }
        }
        let rss = rss_kib(r.bed, hop)?;
        out.push(json!({
            "held_total": step * n,
            "vm_rss_kib": rss,
            "delta_kib": rss as i64 - prev as i64,
            "mb_per_1000": (rss as f64 - prev as f64) * 1024.0 / 1e6 * 1000.0 / n as f64,
        }));
        prev = rss;
    }
    drop(holders);
    if hop == Hop::Mesh
        && !mesh_tests::wait_until(Duration::from_secs(20), || {
            active(r.bed).is_ok_and(|a| a <= base_active)
        })
    {
        r.warnings.push(
            "Warning: 20 s after the held HTTP connections closed the agent still counted some \
             of them as open."
                .into(),
        );
    }
    let per_step: Vec<f64> = out
        .iter()
        .filter_map(|s| s["mb_per_1000"].as_f64())
        .collect();
    Ok(json!({
        "per_step": n,
        "base_vm_rss_kib": base,
        "steps": out,
        "mb_per_1000": median_of(per_step),
    }))
}

/// RSS of what serves `hop`'s connections, in KiB: the median of three reads.
fn rss_kib(bed: &mut SameNodeHttp, hop: Hop) -> Result<u64> {
    let mut reads = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        reads.push(match hop {
            Hop::Mesh => {
                let pid = bed.agent_pids().first().copied().context("no agent")?;
                let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .context("no VmRSS in /proc/<agent>/status")?
            }
            Hop::Nginx => pod_rss_kib(&bed.proxy),
            Hop::Direct => bail!("the direct path has no proxy"),
        } as f64);
    }
    Ok(median_of(reads) as u64)
}

/// `perf record` of the agent during one more mesh saturation run, with DWARF call graphs
/// (the release build keeps no frame pointers): the top entries of `perf report
/// --no-children` (self time by symbol) and the agent's own functions by inclusive time.
pub fn profile(r: &mut Runner<SameNodeHttp>) -> Result<Profile> {
    let pid = r.bed.agent_pids().first().copied().context("no agent")?;
    let dir = mesh_tests::temp_dir()?;
    let data = dir.path().join("perf.data");
    let secs = r.plan.stream_secs;
    let perf = Command::new("perf")
        .args([
            "record",
            "-F",
            "499",
            "--call-graph",
            "dwarf,32768",
            "-p",
            &pid.to_string(),
        ])
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", &format!("{}", secs.ceil() + 1.0)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf (Debian: linux-perf)")?;
    std::thread::sleep(Duration::from_millis(300));
    let run = Run {
        client: Client::Wrk,
        args: wrk_args(
            &r.bed.url(Hop::Mesh, false),
            secs,
            WRK_THREADS,
            WRK_CONNECTIONS,
            &[],
        ),
        service: WEB,
        connections: WRK_CONNECTIONS as u64,
        seconds: secs,
    };
    let measured = r.measure(Hop::Mesh, &run);
    let recorded = perf.wait_with_output().context("waiting for perf record")?;
    let run = measured?;
    ensure!(
        recorded.status.success(),
        "perf record failed: {}",
        String::from_utf8_lossy(&recorded.stderr).trim()
    );
    let report = |children: &str| -> Result<String> {
        let out = Command::new("perf")
            .args([
                "report", "--stdio", children, "--sort", "symbol", "-g", "none",
            ])
            .args(["--percent-limit", "1", "-i"])
            .arg(&data)
            .output()
            .context("running perf report")?;
        ensure!(
            out.status.success(),
            "perf report failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let own = report("--no-children")?;
    let inclusive = report("--children")?;
    Ok(Profile {
        samples: own
            .lines()
            .find(|l| l.starts_with("# Samples:"))
            .map_or("? samples".into(), |l| {
                l.trim_start_matches("# ").to_string()
            }),
        top: entries(&own, |_| true).take(20).collect(),
        // Where in the agent's own code the time goes, callees included.
        agent_code: entries(&inclusive, |l| l.contains("mesh_agent::"))
            .take(20)
            .collect(),
        run,
    })
}

/// The entry lines of a `perf report --stdio` (`  12.34%  [.] symbol  -  -`) that pass
/// `keep`, without perf's empty IPC columns.
fn entries<'a>(
    report: &'a str,
    keep: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = String> + 'a {
    report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.ends_with('%'))
        })
        .filter(move |l| keep(l))
        .map(|l| l.trim_end_matches(['-', ' ']).trim_start().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_report_entries() {
        let text = "# Samples: 12K of event 'cpu-clock:pppH'\n#\n# Overhead  Symbol   IPC\n\
                    #\n    12.50%  [k] _raw_spin_unlock_irqrestore        -      -   \n     \
                    3.10%  [.] <core::hash::sip::Hasher<S> as core::hash::Hasher>::write   -      -\n\n";
        let all: Vec<String> = entries(text, |_| true).collect();
        assert_eq!(
            all,
            [
                "12.50%  [k] _raw_spin_unlock_irqrestore",
                "3.10%  [.] <core::hash::sip::Hasher<S> as core::hash::Hasher>::write"
            ]
        );
        assert_eq!(entries(text, |l| l.contains("sip")).count(), 1);
    }
}
