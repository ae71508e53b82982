//! What `mesh-agent status` shows: built from the running agent, sent as JSON over the admin
//! socket, rendered by the CLI as a table, JSON or YAML.

mod routes;
mod security;

pub use routes::{route_statuses, RouteStatus, RuleStatus};

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::identity::IdentityStatus;
use crate::metrics::DirectionCounters;
use crate::proxy::ConnectionStatus;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub node: String,
    pub config: ConfigStatus,
    pub bpffs: String,
    pub cgroup_root: String,
    pub programs: Vec<ProgramStatus>,
    pub pods: Vec<PodStatus>,
    pub services: Vec<ServiceStatus>,
    /// Routes in force, with requests per rule on this node.
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
    /// Pods whose requests are judged one by one, and what was decided.
    #[serde(default)]
    pub request_security: Vec<security::PodRequestSecurity>,
    /// Destinations the kernel captures (prefixes).
    pub capture: Vec<String>,
    /// Counters kept by the eBPF programs.
    pub kernel: BTreeMap<String, u64>,
    /// Trust bundle and the certificates of this node's pod identities.
    pub identity: IdentityStatus,
    /// Proxied connections open now.
    pub connections: Vec<ConnectionStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub origin: String,
    pub version: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgramStatus {
    pub name: String,
    pub hook: String,
    pub attached_to: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub uid: String,
    pub pod: String,
    pub service_account: String,
    pub ips: Vec<String>,
    pub netns: String,
    pub cgroup: String,
    pub slot: u32,
    pub listeners: Vec<String>,
    /// Capture is in force: the pod's sk_lookup link is pinned and its namespace is in
    /// `MESH_POD_NETNS` under its slot.
    #[serde(default)]
    pub captured: bool,
    pub outbound: TrafficStatus,
    pub inbound: TrafficStatus,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficStatus {
    pub connections: u64,
    pub active: i64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub failures: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    pub vips: Vec<String>,
    pub ports: Vec<String>,
    /// The load-balancing policy, with its hash key and `locality` when set, e.g.
    /// `maglev(header x-user) locality`.
    #[serde(default)]
    pub policy: String,
    /// With `connectionPool`: what this node has in flight to the service against each
    /// limit, e.g. `connections 3/1024 pending 0/1024 requests 1/1024 retries 0/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub workload: String,
    pub ips: Vec<String>,
    pub node: String,
    /// "healthy", "unhealthy" (the proxy avoids it) or "unknown" (not checked yet).
    pub health: String,
    #[serde(default)]
    pub weight: u32,
    /// `region/zone` (or `region`), if the Workload declares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Under `least_request`: requests (connections) this node has outstanding to it and its
    /// latency estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadStatus>,
    /// Ejected by outlier detection on this node: for how much longer (ms).
    #[serde(default, rename = "ejectedMs", skip_serializing_if = "Option::is_none")]
    pub ejected_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadStatus {
    pub outstanding: u32,
    pub latency_ms: f64,
}

impl TrafficStatus {
    fn from_counters(c: &DirectionCounters) -> TrafficStatus {
        TrafficStatus {
            connections: c.connections.get(),
            active: c.active.get(),
            bytes_sent: c.bytes_sent.get(),
            bytes_received: c.bytes_received.get(),
            failures: c.failures_total(),
        }
    }
}

/// Whether the kernel captures `pod` now: its sk_lookup link still pinned (inbound) and its
/// namespace cookie in `MESH_POD_NETNS` under its slot (outbound, through the node-wide hooks).
fn captured(agent: &Agent, pod: &crate::pods::EnrolledPod) -> bool {
    let linked = pod.attachments.iter().any(|a| {
        a.program == mesh_common::programs::SK_LOOKUP
            && crate::sys::bpf::open_pinned(&a.pin).is_ok()
    });
    let cookie = pod.context.netns.cookie();
    linked && agent.datapath.maps.pod_netns_slot(cookie) == Some(pod.slot)
}

fn hook_of(program: &str) -> &'static str {
    use mesh_common::programs as p;
    match program {
        p::CONNECT4 => "cgroup/connect4",
        p::CONNECT6 => "cgroup/connect6",
        p::GETPEERNAME4 => "cgroup/getpeername4",
        p::GETPEERNAME6 => "cgroup/getpeername6",
        p::SOCK_OPS => "sockops",
        p::SK_LOOKUP => "sk_lookup",
        _ => "?",
    }
}

impl Status {
    pub async fn of(agent: &Agent) -> Status {
        let snapshot = agent.registry.snapshot();
        let source = agent.registry.source();
        let pods = agent.pods.lock().await;
        let mut programs: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let node = agent.node_attachments.iter();
        for a in node.chain(pods.values().flat_map(|p| &p.attachments)) {
            {
                let adopted = if a.adopted { " (adopted)" } else { "" };
                programs
                    .entry(a.program)
                    .or_default()
                    .push(format!("{}{adopted}", a.target.display()));
            }
        }
        Status {
            node: agent.node.clone(),
            config: ConfigStatus {
                origin: source.origin,
                version: source.version,
            },
            bpffs: agent.datapath.bpffs().display().to_string(),
            cgroup_root: agent.cgroup_root.display().to_string(),
            programs: programs
                .into_iter()
                .map(|(name, attached_to)| ProgramStatus {
                    name: name.to_owned(),
                    hook: hook_of(name).to_owned(),
                    attached_to,
                })
                .collect(),
            pods: pods
                .values()
                .map(|p| PodStatus {
                    uid: p.request.uid.clone(),
                    pod: p.request.pod_name(),
                    service_account: p.request.service_account.clone(),
                    ips: p
                        .addresses
                        .steered()
                        .iter()
                        .map(|ip| ip.to_string())
                        .collect(),
                    netns: p.request.netns.display().to_string(),
                    cgroup: p
                        .request
                        .cgroup
                        .as_ref()
                        .map(|c| c.display().to_string())
                        .unwrap_or_default(),
                    slot: p.slot,
                    listeners: p
                        .listeners
                        .iter()
                        .map(|(role, a)| format!("{role} {a}"))
                        .collect(),
                    captured: captured(agent, p),
                    outbound: TrafficStatus::from_counters(&p.context.counters.outbound),
                    inbound: TrafficStatus::from_counters(&p.context.counters.inbound),
                })
                .collect(),
            services: snapshot
                .services()
                .map(|s| ServiceStatus {
                    service: s.metadata.key().to_string(),
                    vips: s.spec.vips.iter().map(|v| v.to_string()).collect(),
                    ports: s
                        .spec
                        .ports
                        .iter()
                        .map(|p| {
                            format!("{}->{}/{:?}", p.port, p.target(), p.protocol).to_lowercase()
                        })
                        .collect(),
                    policy: s.spec.load_balancer.summary(),
                    circuit: s.spec.connection_pool.as_ref().map(|pool| {
                        let [c, p, r, t] = agent.proxy.circuits.in_flight(&s.metadata.key());
                        format!(
                            "connections {c}/{} pending {p}/{} requests {r}/{} retries {t}/{}",
                            pool.max_connections,
                            pool.max_pending_requests,
                            pool.max_requests,
                            pool.max_retries
                        )
                    }),
                    endpoints: snapshot
                        .endpoints(s)
                        .into_iter()
                        .map(|w| endpoint_status(agent, s, w))
                        .collect(),
                })
                .collect(),
            routes: route_statuses(agent),
            request_security: security::pod_request_security(
                &snapshot,
                pods.values()
                    .map(|p| (p.request.pod_name(), &p.context.workload)),
                &agent.proxy.http.telemetry.authz.list(),
            ),
            capture: agent
                .datapath
                .maps
                .capture_set()
                .iter()
                .map(|(ip, len)| format!("{ip}/{len}"))
                .collect(),
            kernel: agent
                .datapath
                .maps
                .kernel_stats()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            identity: agent.identities.status(),
            connections: agent.proxy.connections.list(),
        }
    }

    /// The human view: one section per kind of thing.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Node:    {}", self.node);
        let _ = writeln!(
            out,
            "Config:  {} (version {})",
            self.config.origin, self.config.version
        );
        let _ = writeln!(
            out,
            "bpffs:   {}    cgroup v2: {}",
            self.bpffs, self.cgroup_root
        );
        let _ = writeln!(out, "\nPROGRAMS");
        let rows: Vec<Vec<String>> = self
            .programs
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.hook.clone(),
                    p.attached_to.len().to_string(),
                    p.attached_to.join(", "),
                ]
            })
            .collect();
        table(
            &mut out,
            &["NAME", "HOOK", "ATTACHMENTS", "ATTACHED TO"],
            rows,
        );
        let _ = writeln!(out, "\nPODS");
        let rows = self
            .pods
            .iter()
            .map(|p| {
                vec![
                    p.pod.clone(),
                    p.uid.clone(),
                    list(&p.ips),
                    p.netns.clone(),
                    if p.captured { "yes" } else { "NO" }.to_string(),
                    format!("{}/{}", p.outbound.connections, p.outbound.active),
                    format!("{}/{}", p.inbound.connections, p.inbound.active),
                    format!("{}/{}", p.outbound.failures, p.inbound.failures),
                    format!(
                        "{}/{}",
                        p.outbound.bytes_sent + p.inbound.bytes_sent,
                        p.outbound.bytes_received + p.inbound.bytes_received
                    ),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "POD",
                "UID",
                "IPS",
                "NETNS",
                "CAPTURED",
                "OUT CONN/ACTIVE",
                "IN CONN/ACTIVE",
                "FAILED OUT/IN",
                "BYTES SENT/RECV",
            ],
            rows,
        );
        let _ = writeln!(out, "\nSERVICES");
        let rows = self
            .services
            .iter()
            .flat_map(|s| {
                let policy = match &s.circuit {
                    Some(circuit) => format!("{} [{circuit}]", s.policy),
                    None => s.policy.clone(),
                };
                let head = vec![s.service.clone(), list(&s.vips), list(&s.ports), policy];
                if s.endpoints.is_empty() {
                    return vec![[head, vec!["<none>".into()], vec![String::new(); 5]].concat()];
                }
                s.endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        let first = if i == 0 {
                            head.clone()
                        } else {
                            vec![String::new(); 4]
                        };
                        [
                            first,
                            vec![
                                e.workload.clone(),
                                list(&e.ips),
                                match e.ejected_ms {
                                    Some(ms) => format!(
                                        "{} ({}, ejected {}s)",
                                        e.node,
                                        e.health,
                                        ms.div_ceil(1000)
                                    ),
                                    None => format!("{} ({})", e.node, e.health),
                                },
                                e.weight.to_string(),
                                e.locality.clone().unwrap_or_default(),
                                e.load
                                    .as_ref()
                                    .map(|l| format!("{} @ {}ms", l.outstanding, l.latency_ms))
                                    .unwrap_or_default(),
                            ],
                        ]
                        .concat()
                    })
                    .collect()
            })
            .collect();
        table(
            &mut out,
            &[
                "SERVICE",
                "VIPS",
                "PORTS",
                "POLICY",
                "ENDPOINT",
                "ADDRESS",
                "NODE (HEALTH)",
                "WEIGHT",
                "LOCALITY",
                "IN FLIGHT @ LATENCY",
            ],
            rows,
        );
        routes::table(&self.routes, &mut out);
        security::table(&self.request_security, &mut out);
        self.identity_table(&mut out);
        let _ = writeln!(out, "\nOPEN CONNECTIONS: {}", self.connections.len());
        let rows = self
            .connections
            .iter()
            .map(|c| {
                vec![
                    c.pod.clone(),
                    format!("{:?}", c.direction).to_lowercase(),
                    format!("{:?}", c.transport).to_lowercase(),
                    c.peer.clone(),
                    c.peer_identity.clone().unwrap_or_else(|| "-".into()),
                    c.destination.clone(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "POD",
                "DIRECTION",
                "TRANSPORT",
                "PEER",
                "PEER IDENTITY",
                "DESTINATION",
            ],
            rows,
        );
        let _ = writeln!(out, "\nCAPTURED DESTINATIONS: {}", self.capture.join(" "));
        let counters: Vec<String> = self
            .kernel
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "KERNEL COUNTERS:       {}", counters.join(" "));
        out
    }
}

impl Status {
    fn identity_table(&self, out: &mut String) {
        let identity = &self.identity;
        if !identity.enabled {
            let _ = writeln!(
                out,
                "\nIDENTITY: none (no control plane): traffic between nodes is plaintext"
            );
            return;
        }
        let _ = writeln!(out, "\nTRUST BUNDLE");
        let rows = identity
            .trust_bundle
            .iter()
            .map(|r| {
                vec![
                    r.fingerprint[..16].to_owned(),
                    r.subject.clone(),
                    when(r.not_after),
                ]
            })
            .collect();
        table(out, &["SHA-256", "SUBJECT", "NOT AFTER"], rows);
        let _ = writeln!(out, "\nCERTIFICATES");
        let rows = identity
            .node
            .iter()
            .chain(&identity.certificates)
            .map(|c| {
                vec![
                    c.spiffe_id.clone(),
                    c.serial.clone().unwrap_or_else(|| "<pending>".into()),
                    c.not_after.map(when).unwrap_or_default(),
                    c.renew_at.map(when).unwrap_or_default(),
                    c.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(
            out,
            &["SPIFFE ID", "SERIAL", "EXPIRES", "RENEWS", "LAST ERROR"],
            rows,
        );
    }
}

fn endpoint_status(
    agent: &Agent,
    service: &mesh_api::Service,
    w: &mesh_api::Workload,
) -> EndpointStatus {
    let least_request = service.spec.load_balancer.policy == mesh_api::LbPolicy::LeastRequest;
    let balancers = agent.registry.balancers();
    EndpointStatus {
        workload: w.metadata.key().to_string(),
        ips: w.spec.ips.iter().map(|ip| ip.to_string()).collect(),
        node: w.spec.node.clone(),
        health: match agent.registry.health_of(&w.metadata.key()) {
            Some(true) => "healthy",
            Some(false) => "unhealthy",
            None => "unknown",
        }
        .into(),
        weight: w.spec.weight(),
        locality: w.spec.locality.as_ref().map(|l| match &l.zone {
            Some(zone) => format!("{}/{zone}", l.region),
            None => l.region.clone(),
        }),
        ejected_ms: service
            .spec
            .outlier_detection
            .as_ref()
            .and_then(|_| {
                let now = std::time::Instant::now();
                let key = service.metadata.key();
                w.spec
                    .ips
                    .iter()
                    .find_map(|ip| balancers.outliers.ejected_for(&key, *ip, now))
            })
            .map(|left| left.as_millis() as u64),
        load: least_request
            .then(|| w.spec.ips.iter().find_map(|ip| balancers.load_of(*ip)))
            .flatten()
            .map(|(outstanding, latency)| LoadStatus {
                outstanding,
                latency_ms: (latency.as_secs_f64() * 10_000.0).round() / 10.0,
            }),
    }
}

/// Unix seconds as "in 12h 3m" / "5s ago", relative to now.
fn when(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let span = |s: u64| match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h{}m", s / 3600, s / 60 % 60),
    };
    if unix >= now {
        format!("in {}", span(unix - now))
    } else {
        format!("{} ago", span(now - unix))
    }
}

/// A list cell: as many items as fit, then how many more (a Service may have 10,000 VIPs).
fn list(items: &[String]) -> String {
    mesh_api::table::list(items, 80)
}

fn table(out: &mut String, header: &[&str], rows: Vec<Vec<String>>) {
    out.push_str(&mesh_api::table::render(header, &rows));
}
