//! Sustained connection churn: back-to-back connect-rate windows that keep the TIME_WAIT
//! sockets of the earlier ones, as a busy service's clients would, for both ways a connection
//! can end.
//!
//! Whoever closes first holds the TIME_WAIT. Client first: on the direct path the client pod's
//! own sockets; on the mesh path the client's sockets to the outbound listener (127.0.0.1, in
//! the client pod) and the proxy's delivery sockets to the app (in the server pod, from the
//! pod's address). Server first: the app's sockets on both paths (plus the outbound listener's
//! accepted sockets on the mesh path), which a new SYN may take over, so no side runs out of
//! ports. Each window of the mesh series is compared with the same window of the direct series
//! (same pod settings, same duration, the same number of earlier windows behind it).

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::report::{Compare, Row, Target};
use super::scenario::{connect_rate_args, expect_for, Bench};
use super::testbed::Via;

/// Which side closes each connection first.
#[derive(Clone, Copy)]
enum Pattern {
    /// connect-rate against the echo server: 1-byte echo, then the client closes.
    ClientFirst,
    /// connect-rate against the peer server: it answers and closes; the client closes after
    /// reading its FIN.
    ServerFirst,
}

impl Pattern {
    fn who(self) -> &'static str {
        match self {
            Pattern::ClientFirst => "client",
            Pattern::ServerFirst => "server",
        }
    }

    fn server(self, bench: &Bench, via: Via) -> String {
        match self {
            Pattern::ClientFirst => bench.bed.echo(via).1,
            Pattern::ServerFirst => bench.bed.peer(via).1,
        }
    }
}

/// Every window must reach this share of the direct path's rate in the same window.
const TARGET: f64 = 0.5;

impl Bench<'_> {
    /// One row per closing pattern: the worst window's mesh/direct ratio.
    pub fn churn(&mut self) -> Result<Vec<Row>> {
        let (secs, windows) = (self.plan.connect_secs, self.plan.churn_windows);
        let mut rows = Vec::new();
        let mut raw = Map::new();
        let mut holders = Vec::new();
        for pattern in [Pattern::ClientFirst, Pattern::ServerFirst] {
            let [direct, mesh] = [Via::Direct, Via::Mesh].map(|via| self.series(pattern, via));
            let (direct, mesh) = (direct?, mesh?);
            let who = pattern.who();
            self.note_connect_errors(&format!("{who}-closes-first churn"), &direct, &mesh);
            self.record(
                &format!(
                    "new connections/s, {windows} back-to-back windows, TIME_WAIT kept, {who} \
                     closes first"
                ),
                "per_s",
                &direct,
                &mesh,
            );
            let rate = |v: &Value| v["per_s"].as_f64().unwrap_or(0.0);
            let ratios: Vec<f64> = direct
                .iter()
                .zip(&mesh)
                .map(|(d, m)| rate(m) / rate(d).max(f64::MIN_POSITIVE))
                .collect();
            let worst = (0..ratios.len())
                .min_by(|&a, &b| ratios[a].total_cmp(&ratios[b]))
                .unwrap_or(0);
            let (d, m) = (direct.get(worst), mesh.get(worst));
            rows.push(
                Row::new(
                    format!(
                        "new connections per second, sustained churn, {who} closes first: worst \
                         of {windows} × {secs} s windows (window {}) ⁵",
                        worst + 1
                    ),
                    "conn/s",
                )
                .values(
                    d.map_or(f64::NAN, rate),
                    m.map_or(f64::NAN, rate),
                    Compare::Ratio,
                )
                .target(Target::RatioAtLeast(TARGET), " ⁵"),
            );
            holders.push(format!(
                "{who} closes first: direct {}; mesh {}",
                time_wait_holders(direct.last()),
                time_wait_holders(mesh.last())
            ));
            raw.insert(
                format!("{who}_closes_first"),
                json!({"direct": direct, "mesh": mesh, "mesh_to_direct_by_window": ratios}),
            );
        }
        self.notes.push(format!(
            "⁵ Sustained churn: {windows} back-to-back {secs} s windows per path ({:.0} s), TIME_WAIT \
             sockets kept from one window to the next (every other row starts with them \
             removed). Each mesh window is compared with the same window of the direct series; \
             the row shows the worst window and meets its target only if every window is ≥ \
             {TARGET}× direct. Client closes first: connect-rate against the echo server (1-byte \
             echo, then the client closes). Server closes first: against `pod-tool peer-serve`, \
             which answers and closes; the client closes after reading its FIN. All pods, \
             direct and mesh alike, run with net.ipv4.tcp_tw_reuse=1 and ports 1024-65000 (set \
             by the test harness in each pod's namespace). Under the kernel default \
             (tcp_tw_reuse=2: reuse only for 127.0.0.0/8 and ::1) a client that closes first \
             can open one port range of connections per destination per 60 s on either path; \
             on the mesh path that budget is the server pod's, for its delivery sockets. \
             TIME_WAIT sockets per pod after the last window: {}.",
            secs * windows as f64,
            holders.join("; ")
        ));
        self.raw
            .insert("connect_rate_churn".into(), Value::Object(raw));
        Ok(rows)
    }

    /// `churn_windows` connect-rate windows over `via`, from a start without TIME_WAIT
    /// sockets, keeping the ones each window leaves.
    fn series(&mut self, pattern: Pattern, via: Via) -> Result<Vec<Value>> {
        let (secs, concurrency) = (self.plan.connect_secs, self.plan.concurrency);
        self.bed.clear_time_wait()?;
        self.keep_time_wait = true;
        let mut args = connect_rate_args(&pattern.server(self, via), secs, concurrency);
        args.extend(["--close-first".to_string(), pattern.who().to_string()]);
        let runs = (0..self.plan.churn_windows)
            .map(|_| self.measure(via, expect_for(via), args.clone(), secs, None))
            .collect();
        self.keep_time_wait = false;
        runs
    }
}

/// "dclient 31989, server 12" from a run's `time_wait_after` (pods with none left out).
fn time_wait_holders(run: Option<&Value>) -> String {
    let held: Vec<String> = run
        .and_then(|r| r["time_wait_after"].as_object())
        .map(|pods| {
            pods.iter()
                .filter_map(|(pod, n)| Some((pod, n.as_u64()?)))
                .filter(|(_, n)| *n > 0)
                .map(|(pod, n)| format!("{pod} {n}"))
                .collect()
        })
        .unwrap_or_default();
    if held.is_empty() {
        "none".into()
    } else {
        held.join(", ")
    }
}
