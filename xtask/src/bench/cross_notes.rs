//! What the cross-node section says besides its table: which path each series measured (from
//! the agents' counters and the wire), the agents' CPU per GB, the footnotes, the noise seen
//! and every run's numbers.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use super::cross_node::Transport;
use super::evidence::Wire;
use super::machine::Noise;
use super::scenario::median_of;

/// One mesh run's path from its evidence.
pub(super) fn path_kind(wire: &Wire, hbone_rises: &BTreeMap<String, f64>) -> &'static str {
    let (hbone, plaintext) = wire.seen();
    match (hbone || !hbone_rises.is_empty(), plaintext) {
        (true, false) => "hbone",
        (false, true) => "plaintext",
        (true, true) => "mixed",
        (false, false) => "unseen",
    }
}

pub(super) fn transport_of(runs: &[&Value]) -> Transport {
    let all = |k: &str| !runs.is_empty() && runs.iter().all(|r| r["path"] == k);
    if all("hbone") {
        Transport::Hbone
    } else if runs
        .iter()
        .all(|r| r["path"] == "plaintext" || r["path"] == "unseen")
        && runs.iter().any(|r| r["path"] == "plaintext")
    {
        Transport::Plaintext
    } else {
        Transport::Unclear
    }
}

/// CPU seconds per GB of one stream series (medians over the repetitions).
pub(super) struct CpuPerGb {
    pub(super) agents: f64,
    pub(super) agents_user_share: f64,
    pub(super) mesh_total: f64,
    pub(super) direct_total: f64,
    pub(super) direct_endpoints: f64,
    pub(super) mesh_endpoints: f64,
    pub(super) direct_irq: f64,
    pub(super) mesh_irq: f64,
    pub(super) busy_direct: f64,
    pub(super) busy_mesh: f64,
}

impl CpuPerGb {
    pub(super) fn of(direct: &[Value], mesh: &[Value]) -> CpuPerGb {
        let gb = |v: &Value| v["bytes"].as_f64().unwrap_or(f64::NAN) / 1e9;
        let per_gb = |runs: &[Value], f: &dyn Fn(&Value) -> f64| {
            median_of(runs.iter().map(|v| f(&v["cpu"]) / gb(v)).collect())
        };
        let endpoints =
            |c: &Value| c["client_s"].as_f64().unwrap_or(0.0) + c["sink_s"].as_f64().unwrap_or(0.0);
        let irq = |c: &Value| c["irq_softirq_s"].as_f64().unwrap_or(0.0);
        let agents = |c: &Value| c["agents_s"].as_f64().unwrap_or(0.0);
        let agents_user = |c: &Value| {
            c["agents"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|n| n["cpu"]["user_s"].as_f64().unwrap_or(0.0))
                        .sum()
                })
                .unwrap_or(0.0)
        };
        let user: f64 = mesh.iter().map(|v| agents_user(&v["cpu"])).sum();
        let all: f64 = mesh.iter().map(|v| agents(&v["cpu"])).sum();
        let busy = |runs: &[Value]| {
            median_of(
                runs.iter()
                    .filter_map(|v| v["cpu"]["machine_busy_cores"].as_f64())
                    .collect(),
            )
        };
        CpuPerGb {
            agents: per_gb(mesh, &agents),
            agents_user_share: user / all.max(f64::MIN_POSITIVE),
            mesh_total: per_gb(mesh, &|c| endpoints(c) + irq(c) + agents(c)),
            direct_total: per_gb(direct, &|c| endpoints(c) + irq(c)),
            direct_endpoints: per_gb(direct, &endpoints),
            mesh_endpoints: per_gb(mesh, &endpoints),
            direct_irq: per_gb(direct, &irq),
            mesh_irq: per_gb(mesh, &irq),
            busy_direct: busy(direct),
            busy_mesh: busy(mesh),
        }
    }
}

pub(super) fn cpu_note(series: &[(&str, &CpuPerGb)]) -> String {
    let mut out = String::from(
        "⁷ CPU per GB moved (median over the repetitions; utime+stime from /proc, 10 ms \
         ticks): the two agents' processes (/proc/<pid>/stat, all threads), the sending \
         pod-tool client (its waited-for cutime/cstime), the receiving sink server \
         (/proc/<pid>/stat) and the machine's interrupt + softirq time (/proc/stat, where the \
         kernel accounts packet processing that no process is charged for; machine-wide, so \
         it includes any other work's interrupts). Direct moves bytes with nothing but \
         kernel work (the sender and the sink only make syscalls), so its total is the \
         kernel-only cost.\n",
    );
    for (what, c) in series {
        let _ = write!(
            out,
            "\n- {what}: agents {:.3} s/GB ({:.0}% user, the rest system); sender + sink {:.3} \
             s/GB direct, {:.3} s/GB mesh; interrupts + softirq {:.3} s/GB direct, {:.3} s/GB \
             mesh; all together {:.3} s/GB direct, {:.3} s/GB mesh ({:.1}×); machine busy \
             {:.2} (direct) and {:.2} (mesh) of {} cores",
            c.agents,
            100.0 * c.agents_user_share,
            c.direct_endpoints,
            c.mesh_endpoints,
            c.direct_irq,
            c.mesh_irq,
            c.direct_total,
            c.mesh_total,
            c.mesh_total / c.direct_total,
            c.busy_direct,
            c.busy_mesh,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
    }
    out
}

pub(super) fn path_note(
    transport: Transport,
    mesh_runs: &[&Value],
    tokens: bool,
    certificates: [Option<bool>; 2],
) -> String {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut counters: BTreeMap<String, f64> = BTreeMap::new();
    let (mut hbone_max, mut plain_max) = (0u64, 0u64);
    let mut listed: BTreeMap<String, u64> = BTreeMap::new();
    let mut peers = std::collections::BTreeSet::new();
    let mut listener = false;
    let (mut tcp_from_node1, mut proxied) = (0u64, 0u64);
    for r in mesh_runs {
        *kinds
            .entry(r["path"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        for (k, v) in r["verified"]["hbone_rises"]
            .as_object()
            .into_iter()
            .flatten()
        {
            *counters.entry(k.clone()).or_default() += v.as_f64().unwrap_or(0.0);
        }
        hbone_max = hbone_max.max(
            r["wire"]["hbone_port_connections_max"]
                .as_u64()
                .unwrap_or(0),
        );
        plain_max = plain_max.max(
            r["wire"]["plaintext_app_port_connections_from_client_max"]
                .as_u64()
                .unwrap_or(0),
        );
        let wire = &r["wire"];
        let by_node = wire["open_connections_by_transport_mid_run"].as_object();
        for (node, by) in by_node.into_iter().flatten() {
            for (t, n) in by.as_object().into_iter().flatten() {
                let e = listed.entry(format!("{t} on {node}")).or_default();
                *e = (*e).max(n.as_u64().unwrap_or(0));
            }
        }
        for id in wire["hbone_peer_identities_node2_mid_run"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            peers.insert(id.to_string());
        }
        listener |= wire["hbone_listener"] == true;
        tcp_from_node1 += r["verified"]["tcp_connections_from_node1"]
            .as_u64()
            .unwrap_or(0);
        proxied += r["verified"]["server_inbound_connections"]
            .as_u64()
            .unwrap_or(0);
    }
    let kinds = kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let peers = if peers.is_empty() {
        "none".to_string()
    } else {
        peers.into_iter().collect::<Vec<_>>().join(", ")
    };
    let counters = if counters.is_empty() {
        "none rose".to_string()
    } else {
        counters
            .iter()
            .take(8)
            .map(|(k, v)| format!("`{k}` +{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let listed = if listed.is_empty() {
        "none".to_string()
    } else {
        listed
            .iter()
            .map(|(t, n)| format!("up to {n} {t}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cert = |c: Option<bool>| match c {
        None => "no identities",
        Some(true) => "yes",
        Some(false) => "not within 20 s",
    };
    let verdict = match transport {
        Transport::Hbone => {
            "**Path: HBONE.** The mesh runs went client → connect4 → node-1's \
                            outbound proxy → HTTP/2 CONNECT over mutual TLS to the server pod's \
                            IP:15008 → node-2's HBONE listener → the app."
        }
        Transport::Plaintext => {
            "**Path: plaintext through both agents; HBONE was not active.** \
                                 The mesh runs went client → connect4 → node-1's outbound proxy \
                                 → plain TCP to the server pod's IP:port → sk_lookup → node-2's \
                                 inbound proxy → the app."
        }
        Transport::Unclear => {
            "**Path: not verified as HBONE** (the runs disagree or showed \
                               no evidence; see the per-run `path` in results.json)."
        }
    };
    format!(
        "{verdict} Evidence over all {} mesh runs: per-run verdicts {kinds}; on the wire, up \
         to {hbone_max} connection(s) on the server pod's port 15008 and up to {plain_max} \
         plaintext connection(s) from the client pod on the app's port (sampled every 200 ms \
         while the client ran); the agents' open connections by transport, once mid-run: \
         {listed}; HBONE peer identities node-2 listed: {peers}; TCP connections node-1 \
         opened into the server pod: {tcp_from_node1} for {proxied} proxied connections \
         ({:.2} per connection, from the pod's `Tcp: PassiveOpens` minus node-2's deliveries \
         to the app, so node-2's health checks of the app count too; a pooled HBONE \
         connection carries many); HBONE listener in the server pod: {}; HBONE numbers of the agents that \
         rose: {counters}. Agents joined with tokens: {}; certificate for the client pod on \
         node-1: {}, for the server pod on node-2: {}.",
        mesh_runs.len(),
        tcp_from_node1 as f64 / proxied.max(1) as f64,
        if listener { "yes" } else { "no" },
        if tokens {
            "yes"
        } else {
            "no (meshctl has no `token create`)"
        },
        cert(certificates[0]),
        cert(certificates[1]),
    )
}

pub(super) fn footnotes(transport: Transport) -> String {
    let mut s = String::new();
    if transport != Transport::Hbone {
        s.push_str(
            "⁶ The targets are DESIGN.md's for HBONE mTLS across two agents; this run's mesh \
             path was not HBONE, so \"met\" says nothing about them yet. ",
        );
    }
    s.push_str(
        "Targets: single stream ≥ 0.33 of direct, new connections ≥ 0.5 of direct, ≤ +60 µs \
         p50 per 1 KiB round trip (\"full mesh path\").",
    );
    s
}

pub(super) fn noise_note(noise: &[Noise]) -> String {
    let busy = noise.iter().filter(|n| n.busy()).count();
    let max_load = noise.iter().map(|n| n.load1).fold(0.0, f64::max);
    if busy == 0 {
        return format!(
            "Other work on the machine: none seen in {} samples (max 1-min load average \
             {max_load:.2}).",
            noise.len()
        );
    }
    format!(
        "**Noise:** other work ran during {busy} of {} measurements (up to {} other \
         mesh-agent processes, {} compiler processes; max 1-min load average {max_load:.2}). \
         Direct and mesh alternate, so both see it.",
        noise.len(),
        noise.iter().map(|n| n.other_agents).max().unwrap_or(0),
        noise.iter().map(|n| n.compilers).max().unwrap_or(0),
    )
}

pub(super) fn runs_note(series: &[(&str, &str, &Vec<Value>, &Vec<Value>)]) -> String {
    let list = |v: &[Value], key: &str| {
        v.iter()
            .map(|x| format!("{:.2}", x[key].as_f64().unwrap_or(f64::NAN)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from("Runs (each repetition, in run order; rows show the median):\n");
    for (what, key, direct, mesh) in series {
        let _ = write!(
            out,
            "\n- {what}: direct [{}]; mesh [{}]",
            list(direct, key),
            list(mesh, key)
        );
    }
    out
}

pub(super) const HOW: &str =
    "How: the same pod-tool clients as above (`rr` 1 KiB echo round trips, \
`stream` to a sink with the clock stopped when the sink has read everything, `connect-rate` \
with 2 threads), each run bracketed by both agents' `status -o json` and `/metrics`: a mesh \
run must raise node-1's client outbound and connect4 counters and node-2's server inbound \
counter by at least the connections it made; a direct run must change no counter of either \
agent. Direct and mesh alternate (direct first in even repetitions); every run starts with \
the pods' TIME_WAIT sockets removed.";
