//! `cargo xtask bench`, control-plane section: the scale targets of DESIGN.md ("Performance
//! targets") against the release `mesh-control`, once on the embedded store and once on a
//! 1-member etcd.
//!
//! Per store: a fresh control plane, `cp-load populate` (10k services, 50k workloads; 1k/5k
//! with `quick`) through `MeshAdmin.Apply`, then `cp-load measure`: the full config to a freshly
//! connected agent, and 20 single changes (update a service's port, add a workload, delete it)
//! timed from just before the admin call to the push's arrival at each of 100 connected
//! agents (simulated, in one process, one gRPC channel each); then the same changes to 1,000
//! agents. The raw output of both tools goes to `bench/control-plane.json`.
//!
//! Everything runs on this machine: the load tool's 100 agents share the two cores with the
//! control plane (and etcd), so the latencies include their scheduling.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mesh_tests::control::ControlPlane;
use mesh_tests::etcd::{etcd_available, EtcdCluster};
use serde_json::{json, Value};

use crate::cmd::{exec, progress, workspace_root};

/// Simulated agents receiving every change.
const AGENTS: usize = 100;
/// The scale row: as many agents, in the same one load process (the full config is not
/// timed again, `--full-samples 1`).
const MANY_AGENTS: usize = 1000;
/// Measured changes per store.
const CHANGES: usize = 20;
/// Resources per Apply while populating. Every Apply validates the whole config, so fewer,
/// larger batches keep the (untimed) setup short.
const POPULATE_BATCH: usize = 2000;

/// One row of the section's table: a measurement on both stores, against its target.
#[derive(Clone, Debug)]
pub struct ControlPlaneRow {
    pub what: String,
    pub embedded: String,
    pub etcd: String,
    /// Empty when the row has no target (reported for information).
    pub target: String,
    /// Whether both stores meet the target; `None` without a target or with a store missing.
    pub met: Option<bool>,
}

#[derive(Clone, Copy)]
enum Store {
    Embedded,
    Etcd,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Embedded => "embedded",
            Store::Etcd => "etcd",
        }
    }
}

pub fn run(quick: bool) -> Result<Vec<ControlPlaneRow>> {
    let (services, workloads) = if quick {
        (1_000, 5_000)
    } else {
        (10_000, 50_000)
    };
    progress("building mesh-control and cp-load (release)");
    exec(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "mesh-control",
        "--bins",
    ]))?;
    let bin_dir = release_dir();
    let started = Instant::now();

    let mut results = Vec::new();
    for store in [Store::Embedded, Store::Etcd] {
        progress(&format!(
            "control plane on {}: {services} services, {workloads} workloads, {AGENTS} agents",
            store.name()
        ));
        let result = if matches!(store, Store::Etcd) && !etcd_available() {
            Err(anyhow::anyhow!(
                "etcd is not installed (apt-get install etcd-server)"
            ))
        } else {
            measure_store(&bin_dir, store, services, workloads)
        };
        if let Err(e) = &result {
            eprintln!("control plane on {}: {e:#}", store.name());
        }
        results.push(result);
    }
    let [embedded, etcd]: [Result<Value>; 2] = results
        .try_into()
        .map_err(|_| anyhow::anyhow!("two stores"))?;

    let rows = rows(&embedded, &etcd, services, workloads);
    let raw = json!({
        "quick": quick,
        "services": services,
        "workloads": workloads,
        "agents": AGENTS,
        "changes": CHANGES,
        "etcd_members": 1,
        "took_seconds": started.elapsed().as_secs_f64(),
        "embedded": embedded.as_ref().map(Clone::clone).unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
        "etcd": etcd.as_ref().map(Clone::clone).unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
        "rows": rows.iter().map(|r| json!({
            "what": r.what, "embedded": r.embedded, "etcd": r.etcd, "target": r.target, "met": r.met,
        })).collect::<Vec<_>>(),
    });
    let out = workspace_root().join("bench").join("control-plane.json");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::write(&out, serde_json::to_string_pretty(&raw)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    progress(&format!("control-plane results in {}", out.display()));
    Ok(rows)
}

/// Where `cargo build --release` put the binaries.
fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release")
}

/// One store: fresh control plane, populate, measure. The raw JSON of both tools, plus RSS.
fn measure_store(bin_dir: &Path, store: Store, services: usize, workloads: usize) -> Result<Value> {
    let control = bin_dir.join("mesh-control");
    // Declared first so it is dropped (killed) after the control plane.
    let mut _etcd = None;
    let mut cp = match store {
        Store::Embedded => ControlPlane::start_with_binary(&control, "embedded")?,
        Store::Etcd => {
            let cluster = EtcdCluster::start(1).context("starting a 1-member etcd")?;
            let spec = format!("etcd://{}", cluster.endpoints().join(","));
            _etcd = Some(cluster);
            ControlPlane::start_with_binary(&control, &spec)?
        }
    };
    let pid = cp
        .process()
        .map(|p| p.pid())
        .context("the control plane is not running")?;
    let url = cp.url();
    let token_file = cp.token_file();
    let cp_load = |args: &[String]| -> Result<Value> {
        let out = Command::new(bin_dir.join("cp-load"))
            .args(args)
            .args(["--server", &url])
            .arg("--token-file")
            .arg(&token_file)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running cp-load")?;
        if !out.status.success() {
            bail!("cp-load {} failed with {}", args[0], out.status);
        }
        serde_json::from_slice(&out.stdout).context("cp-load printed no JSON object")
    };
    let populate = cp_load(&[
        "populate".into(),
        "--services".into(),
        services.to_string(),
        "--workloads".into(),
        workloads.to_string(),
        "--batch".into(),
        POPULATE_BATCH.to_string(),
    ])?;
    let rss_populated = rss_kib(pid);
    let measure = cp_load(&[
        "measure".into(),
        "--agents".into(),
        AGENTS.to_string(),
        "--changes".into(),
        CHANGES.to_string(),
        "--server-pid".into(),
        pid.to_string(),
    ])?;
    let measure_many = cp_load(&[
        "measure".into(),
        "--agents".into(),
        MANY_AGENTS.to_string(),
        "--changes".into(),
        CHANGES.to_string(),
        "--full-samples".into(),
        "1".into(),
        "--server-pid".into(),
        pid.to_string(),
    ])?;
    let result = json!({
        "store": store.name(),
        "populate": populate,
        "measure": measure,
        "measure_many_agents": measure_many,
        "rss_kib_after_populate": rss_populated,
        "rss_kib_end": rss_kib(pid),
    });
    cp.stop()?;
    Ok(result)
}

/// `VmRSS` and `VmHWM` (peak) in KiB.
fn rss_kib(pid: u32) -> Value {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    json!({"rss": field("VmRSS:"), "peak": field("VmHWM:")})
}

fn rows(
    embedded: &Result<Value>,
    etcd: &Result<Value>,
    services: usize,
    workloads: usize,
) -> Vec<ControlPlaneRow> {
    let scale = format!(
        "{}k services, {}k workloads",
        services / 1000,
        workloads / 1000
    );
    let ms = |v: f64| format!("{v:.0} ms");
    let bytes = |v: f64| format!("{v:.0} B");
    let kib = |v: f64| format!("{:.0} KiB", v / 1024.0);
    let mib = |v: f64| format!("{:.0} MiB", v / 1024.0);
    let seconds = |v: f64| format!("{v:.1} s");
    let stores = [embedded, etcd];
    vec![
        row(
            stores,
            format!("full config to a freshly connected agent ({scale}), median of 3"),
            "/measure/full_config/median_total_ms",
            ms,
            Some(("<= 1 s", 1000.0)),
        ),
        row(
            stores,
            format!("one config change reaching {AGENTS} agents, p99 ({scale})"),
            "/measure/change/latency/p99_ms",
            ms,
            Some(("<= 100 ms", 100.0)),
        ),
        row(
            stores,
            format!("one config change reaching {AGENTS} agents, p50"),
            "/measure/change/latency/p50_ms",
            ms,
            None,
        ),
        row(
            stores,
            format!("one config change reaching {MANY_AGENTS} agents, p99 ({scale})"),
            "/measure_many_agents/change/latency/p99_ms",
            ms,
            None,
        ),
        row(
            stores,
            "dry-run Apply of one resource (checked against the current config's indexes)".into(),
            "/measure/dry_run_apply_ms/0",
            ms,
            None,
        ),
        row(
            stores,
            "bytes per change, per agent (protobuf)".into(),
            "/measure/change/bytes_per_agent",
            bytes,
            None,
        ),
        row(
            stores,
            format!("bytes per change, all {AGENTS} agents"),
            "/measure/change/bytes_total",
            bytes,
            None,
        ),
        row(
            stores,
            "full config push size".into(),
            "/measure/full_config/samples/0/bytes",
            kib,
            None,
        ),
        row(
            stores,
            format!("control-plane RSS, {AGENTS} agents connected"),
            "/measure/server_memory/agents_connected/rss_kib",
            mib,
            None,
        ),
        row(
            stores,
            "control-plane peak RSS (VmHWM) over the run".into(),
            "/rss_kib_end/peak",
            mib,
            None,
        ),
        row(
            stores,
            format!("populate through MeshAdmin.Apply ({scale}, batches of {POPULATE_BATCH})"),
            "/populate/seconds",
            seconds,
            None,
        ),
    ]
}

/// The value at `path` (a JSON pointer) of each store's result, formatted, and whether every
/// store that has it meets `target` (`None` without a target, or when one store has no value
/// and the others meet it).
fn row(
    stores: [&Result<Value>; 2],
    what: String,
    path: &str,
    format: fn(f64) -> String,
    target: Option<(&str, f64)>,
) -> ControlPlaneRow {
    let values = stores.map(|r| r.as_ref().ok().and_then(|v| v.pointer(path)?.as_f64()));
    let cells = std::array::from_fn::<String, 2, _>(|i| match (values[i], stores[i]) {
        (Some(v), _) => format(v),
        (None, Err(_)) => "failed".to_owned(),
        (None, Ok(_)) => "-".to_owned(),
    });
    let met = target.and_then(|(_, limit)| {
        if values.iter().flatten().any(|v| *v > limit) {
            Some(false)
        } else {
            values.iter().all(Option::is_some).then_some(true)
        }
    });
    let [embedded, etcd] = cells;
    ControlPlaneRow {
        what,
        embedded,
        etcd,
        target: target.map(|(t, _)| t.to_owned()).unwrap_or_default(),
        met,
    }
}
