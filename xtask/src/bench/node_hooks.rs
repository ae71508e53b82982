//! What capture keyed by network namespace costs the sockets it does not capture: the socket
//! hooks (connect4/6, getpeername4/6, sock_ops) are attached once to the node-wide cgroup, so
//! every connect() on the node runs connect4 and a `MESH_POD_NETNS` lookup that misses for a
//! socket outside the mesh's pods. Measured as connect latency and rate of the unenrolled
//! `dclient` to the unenrolled `dserver` (no agent on the path) with the node-wide hooks
//! attached, then with none (their link pins removed, which detaches them: the pins are the
//! links' only references), then attached again (the agent restarted attaches them anew), so
//! the attached runs straddle the one without.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde_json::json;

use super::report::{Compare, Row};
use super::scenario::{connect_rate_args, median, Bench, Expect};
use super::testbed::Via;

const WHAT: [&str; 3] = [
    "non-mesh connect() p50, node-wide socket hooks vs none",
    "non-mesh connect() p99, node-wide socket hooks vs none",
    "non-mesh connections/s, node-wide socket hooks vs none",
];

impl Bench<'_> {
    /// The price of the node-wide hooks for a socket outside the mesh. Leaves the hooks
    /// attached, whatever happened.
    pub fn node_hooks(&mut self) -> Vec<Row> {
        let result = self.node_hooks_runs();
        if !self.node_hook_pins().is_ok_and(|pins| !pins.is_empty()) {
            if let Err(e) = self.restart_agent() {
                self.notes.push(format!(
                    "Warning: attaching the node-wide socket hooks again failed: {e:#}"
                ));
            }
        }
        match result {
            Ok(rows) => rows,
            Err(e) => WHAT
                .iter()
                .map(|w| Row::failed(*w, format!("{e:#}")))
                .collect(),
        }
    }

    fn node_hooks_runs(&mut self) -> Result<Vec<Row>> {
        let (secs, concurrency) = (self.plan.connect_secs, self.plan.concurrency);
        let (_, addr) = self.bed.echo(Via::Direct);
        let (mut attached, mut none) = (Vec::new(), Vec::new());
        for _ in 0..self.plan.repeats {
            let run = |b: &mut Self| {
                b.measure(
                    Via::Direct,
                    Expect::Direct,
                    connect_rate_args(&addr, secs, concurrency),
                    secs,
                    None,
                )
            };
            ensure!(
                !self.node_hook_pins()?.is_empty(),
                "the node-wide hooks are not pinned"
            );
            attached.push(run(self)?);
            for pin in self.node_hook_pins()? {
                std::fs::remove_file(&pin)
                    .with_context(|| format!("unpinning {}", pin.display()))?;
            }
            none.push(run(self)?);
            self.restart_agent()?;
            attached.push(run(self)?);
        }
        self.note_connect_errors("node-wide hooks comparison", &none, &attached);
        self.notes.push(
            "Non-mesh connect() rows: `dclient` → `dserver` (neither enrolled, no agent on the \
             path), baseline column with no socket hooks attached anywhere (their link pins \
             removed), mesh column with the node-wide hooks the agent attaches to \
             `--cgroup-root` (connect4 runs and its MESH_POD_NETNS lookup misses): what capture \
             by network namespace costs every socket on the node that it does not capture. The \
             attached runs come before and after the one without (the agent restarted \
             re-attaches them)."
                .to_string(),
        );
        let names = ("no hooks", "node-wide hooks");
        self.record_named(
            "non-mesh connect() p50 (µs)",
            "connect_p50_us",
            names,
            &none,
            &attached,
        );
        self.record_named(
            "non-mesh connect() p99 (µs)",
            "connect_p99_us",
            names,
            &none,
            &attached,
        );
        self.record_named("non-mesh connections/s", "per_s", names, &none, &attached);
        self.raw.insert(
            "node_hooks".into(),
            json!({"none": none, "attached": attached, "target": addr}),
        );
        let row = |what: &str, unit, key, compare| {
            Row::new(what, unit).values(median(&none, key), median(&attached, key), compare)
        };
        Ok(vec![
            row(WHAT[0], "µs", "connect_p50_us", Compare::Delta),
            row(WHAT[1], "µs", "connect_p99_us", Compare::Delta),
            row(WHAT[2], "conn/s", "per_s", Compare::Ratio),
        ])
    }

    /// The link pins of the socket hooks the agent attached to the node-wide cgroup.
    fn node_hook_pins(&self) -> Result<Vec<PathBuf>> {
        let dir = self.bed.node_link_dir();
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        Ok(entries.flatten().map(|e| e.path()).collect())
    }

    /// Stops the agent and starts it again: it attaches the node-wide hooks whose pins are
    /// gone and resumes the pods.
    pub(super) fn restart_agent(&mut self) -> Result<()> {
        self.bed.node.stop_agent()?;
        self.bed.node.start_agent()?;
        ensure!(
            !self.node_hook_pins()?.is_empty(),
            "the restarted agent did not attach the node-wide hooks"
        );
        Ok(())
    }
}
