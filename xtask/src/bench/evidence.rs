//! Which way cross-node traffic went, from two independent sources:
//!
//! - the wire: the sockets in the server pod's network namespace while a client runs
//!   (`/proc/<pid in the pod>/net/tcp{,6}`). HBONE arrives on the pod IP's port 15008; the
//!   plaintext path arrives on the app's port straight from the client pod's address.
//! - the agents: every counter or gauge whose name mentions HBONE, in `mesh-agent status -o
//!   json` (any numeric field under a key containing "hbone", e.g. a transport breakdown per
//!   pod) and in `/metrics` (any sample whose name or labels contain "hbone").

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Value};

use super::cross_bed::HBONE_PORT;

/// The listening state in /proc/net/tcp.
const LISTEN: u8 = 0x0A;

/// One socket of /proc/net/tcp{,6}: local port, remote address (IPv4 or v4-mapped), state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Socket {
    local_port: u16,
    remote: Option<IpAddr>,
    state: u8,
}

/// Sockets of the network namespace `pid` lives in.
fn sockets(pid: u32) -> Vec<Socket> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_line)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Established TCP connections on local port `port` in the network namespace `pid` lives in
/// (e.g. the clients a proxy holds).
pub fn established_on(pid: u32, port: u16) -> usize {
    const ESTABLISHED: u8 = 0x01;
    sockets(pid)
        .iter()
        .filter(|s| s.local_port == port && s.state == ESTABLISHED)
        .count()
}

/// `  0: 0300CF0A:1F90 0200CF0A:D2F4 01 ...`
fn parse_line(line: &str) -> Option<Socket> {
    let mut fields = line.split_whitespace().skip(1);
    let local = fields.next()?;
    let remote = fields.next()?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let (_, port) = local.split_once(':')?;
    let (raddr, _) = remote.split_once(':')?;
    Some(Socket {
        local_port: u16::from_str_radix(port, 16).ok()?,
        remote: parse_v4(raddr),
        state,
    })
}

/// The name of a /proc/net/tcp state (include/net/tcp_states.h).
fn state_name(state: u8) -> &'static str {
    match state {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "other",
    }
}

/// The IPv4 address of a /proc/net/tcp address (host-order words: little-endian here), also
/// when it is v4-mapped in tcp6 (`0000000000000000FFFF0000` + the v4 word).
fn parse_v4(hex: &str) -> Option<IpAddr> {
    let word = match hex.len() {
        8 => hex,
        32 if hex[..24].eq_ignore_ascii_case("0000000000000000FFFF0000") => &hex[24..],
        _ => return None,
    };
    let v = u32::from_str_radix(word, 16).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(v.to_le_bytes())))
}

/// `Tcp: PassiveOpens` of the network namespace `pid` lives in (/proc/<pid>/net/snmp): TCP
/// connections accepted there, by anyone.
pub fn passive_opens(pid: u32) -> u64 {
    let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "PassiveOpens")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// What the wire showed during one run (the most seen in any one sample), and what the
/// client's agent listed as open connections once in the middle of it.
#[derive(Clone, Debug, Default)]
pub struct Wire {
    pub samples: u32,
    /// Connections on the HBONE port (any state but LISTEN).
    pub hbone: usize,
    /// The HBONE-port connections by TCP state (the most of each seen in one sample).
    pub hbone_states: BTreeMap<String, usize>,
    /// Connections on the app's port from the client pod's address (any state but LISTEN).
    pub plaintext: usize,
    /// An HBONE listener (LISTEN on 15008) in the server pod.
    pub hbone_listener: bool,
    /// Open connections by transport in each agent's status (`node-1`, `node-2`), sampled
    /// once mid-run.
    pub transports: BTreeMap<String, BTreeMap<String, u64>>,
    /// Peer identities of the HBONE connections node-2 listed then (verified by mTLS).
    pub peer_identities: Vec<String>,
}

impl Wire {
    /// Adds one sample of the namespace of `pid`: `app_port` is where the plaintext path
    /// arrives, from `client`.
    pub fn sample(&mut self, pid: u32, app_port: u16, client: IpAddr) {
        let socks = sockets(pid);
        let count = |f: &dyn Fn(&Socket) -> bool| socks.iter().filter(|s| f(s)).count();
        let hbone = count(&|s| s.local_port == HBONE_PORT && s.state != LISTEN);
        let plaintext =
            count(&|s| s.local_port == app_port && s.state != LISTEN && s.remote == Some(client));
        let mut states: BTreeMap<&str, usize> = BTreeMap::new();
        for s in socks
            .iter()
            .filter(|s| s.local_port == HBONE_PORT && s.state != LISTEN)
        {
            *states.entry(state_name(s.state)).or_default() += 1;
        }
        for (state, n) in states {
            let max = self.hbone_states.entry(state.to_string()).or_default();
            *max = (*max).max(n);
        }
        self.samples += 1;
        self.hbone = self.hbone.max(hbone);
        self.plaintext = self.plaintext.max(plaintext);
        self.hbone_listener |= socks
            .iter()
            .any(|s| s.local_port == HBONE_PORT && s.state == LISTEN);
    }

    /// Whether the run showed HBONE, and whether it showed plaintext.
    pub fn seen(&self) -> (bool, bool) {
        let t = |k: &str| {
            self.transports
                .values()
                .any(|by| by.get(k).copied().unwrap_or(0) > 0)
        };
        (
            self.hbone > 0 || t("hbone"),
            self.plaintext > 0 || t("plaintext"),
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "open_connections_by_transport_mid_run": self.transports,
            "hbone_peer_identities_node2_mid_run": self.peer_identities,
            "samples": self.samples,
            "hbone_port_connections_max": self.hbone,
            "hbone_port_connections_by_state_max": self.hbone_states,
            "plaintext_app_port_connections_from_client_max": self.plaintext,
            "hbone_listener": self.hbone_listener,
        })
    }
}

/// Every HBONE number an agent reports: `status:<json path>` for numeric fields under a key
/// containing "hbone" and for values that are exactly "hbone" (a connection's `transport`),
/// `metrics:<sample>` for samples whose metric name contains "hbone" or that have a label
/// value exactly "hbone" (not, say, a failure reason such as `HboneHandshake`).
pub fn hbone_numbers(status: &Value, metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    walk(status, "status:", false, &mut out);
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((sample, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = sample.split_once('{').unwrap_or((sample, ""));
        let hbone_label = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .any(|(_, v)| {
                v.trim_matches(|c| c == '"' || c == '}')
                    .eq_ignore_ascii_case("hbone")
            });
        if name.to_ascii_lowercase().contains("hbone") || hbone_label {
            if let Ok(v) = value.parse::<f64>() {
                out.insert(format!("metrics:{sample}"), v);
            }
        }
    }
    out
}

/// The identities of the HBONE peers among the open connections of a `status -o json`.
pub fn hbone_peers(status: &Value) -> Vec<String> {
    let mut ids: Vec<String> = status["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["transport"] == "hbone")
        .filter_map(|c| c["peerIdentity"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// How many of the open connections in a `status -o json` use each transport.
pub fn transports(status: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in status["connections"].as_array().into_iter().flatten() {
        if let Some(t) = c["transport"].as_str() {
            *out.entry(t.to_string()).or_default() += 1;
        }
    }
    out
}

fn walk(v: &Value, path: &str, hbone: bool, out: &mut BTreeMap<String, f64>) {
    let named = |k: &str| hbone || k.to_ascii_lowercase().contains("hbone");
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                walk(v, &format!("{path}.{k}"), named(k), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                // Pods and connections by name when they have one, so paths stay stable.
                let key = v["pod"]
                    .as_str()
                    .map_or_else(|| i.to_string(), str::to_string);
                walk(v, &format!("{path}[{key}]"), hbone, out);
            }
        }
        Value::Number(n) if hbone => {
            out.insert(path.to_string(), n.as_f64().unwrap_or(0.0));
        }
        // A connection listed with `transport: hbone` counts as one.
        Value::String(s) if s.eq_ignore_ascii_case("hbone") => {
            *out.entry(format!("{path}=hbone")).or_default() += 1.0;
        }
        _ => {}
    }
}

/// How much the HBONE numbers rose between two readings (only the ones that rose).
pub fn rises(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = a - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let v4 = "   0: 0300CF0A:1F90 0200CF0A:D2F4 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1";
        let s = parse_line(v4).unwrap();
        assert_eq!(s.local_port, 8080);
        assert_eq!(s.remote, Some("10.207.0.2".parse().unwrap()));
        assert_eq!(s.state, 0x01, "established");
        let v6 = "   0: 0000000000000000FFFF00000300CF0A:3AA0 0000000000000000FFFF00000200CF0A:D2F4 01 0 0 0";
        let s = parse_line(v6).unwrap();
        assert_eq!(s.local_port, 15008);
        assert_eq!(s.remote, Some("10.207.0.2".parse().unwrap()));
    }

    #[test]
    fn finds_hbone_numbers() {
        let status = json!({"pods": [{"pod": "default/x", "outbound": {"hbone": {"connections": 3}, "connections": 9}}],
                            "connections": [{"transport": "hbone"}, {"transport": "tcp"}]});
        let metrics = "# HELP x\nmesh_hbone_streams_total{pod=\"a\"} 7\nmesh_other 1\n\
                       mesh_proxy_failures_total{pod=\"a\",reason=\"HboneHandshake\"} 2\n\
                       mesh_conns_total{pod=\"a\",transport=\"hbone\"} 4\n";
        let n = hbone_numbers(&status, metrics);
        assert_eq!(n["status:.pods[default/x].outbound.hbone.connections"], 3.0);
        assert_eq!(n["metrics:mesh_hbone_streams_total{pod=\"a\"}"], 7.0);
        assert_eq!(
            n["metrics:mesh_conns_total{pod=\"a\",transport=\"hbone\"}"],
            4.0
        );
        assert_eq!(n.len(), 4, "{n:?}");
        assert_eq!(transports(&status)["hbone"], 1);
    }
}
