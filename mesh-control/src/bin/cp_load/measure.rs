//! `cp-load measure`: full config to a fresh agent, then one change at a time to N agents.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mesh_api::{Resource, Snapshot};
use mesh_control::server::MAX_MESSAGE;
use mesh_proto::v1::agent_message::Message;
use mesh_proto::v1::config_distribution_client::ConfigDistributionClient;
use mesh_proto::v1::{self as pb, Ack, AgentMessage, ConfigPush, Hello};
use prost::Message as _;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::populate::{workload_with, NODES};
use crate::Target;

#[derive(clap::Args)]
pub struct Options {
    #[command(flatten)]
    target: Target,
    /// Simulated agents that receive every change.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Measured changes (cycling: update a service's port, add a workload, delete it).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Fresh agents timed one after another for the full-config time.
    #[arg(long, default_value_t = 3)]
    full_samples: usize,
    /// Dry-run Applies timed (validation cost alone: no store write, no push).
    #[arg(long, default_value_t = 3)]
    dry_run_probes: usize,
    /// Pause after every agent ACKed a change, so the ACK bookkeeping writes are done before
    /// the next change (each change is measured on its own).
    #[arg(long, default_value_t = 200)]
    settle_ms: u64,
    /// Give up waiting for an agent's push after this long.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// The control plane's PID (same machine): its RSS is reported at each stage.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn rss(pid: Option<u32>) -> Value {
    let Some(status) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
    else {
        return Value::Null;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    json!({"rss_kib": field("VmRSS:"), "peak_kib": field("VmHWM:")})
}

/// What an agent task reports to the main task.
enum Report {
    Push {
        agent: usize,
        version: u64,
        at: Instant,
        bytes: usize,
        upserts: usize,
        deletes: usize,
        full: bool,
    },
    Closed {
        agent: usize,
        error: String,
    },
}

struct AgentStream {
    tx: mpsc::Sender<AgentMessage>,
    pushes: Streaming<ConfigPush>,
}

/// Node credentials (issued through the admin API), one per simulated node name.
#[derive(Default)]
struct Credentials {
    configs: std::collections::HashMap<String, rustls::ClientConfig>,
}

impl Credentials {
    async fn config(
        &mut self,
        admin: &mut mesh_control::client::AdminClient,
        node: &str,
    ) -> Result<rustls::ClientConfig> {
        if let Some(config) = self.configs.get(node) {
            return Ok(config.clone());
        }
        let (credential, bundle) = mesh_control::client::issue_node_credential(admin, node).await?;
        let config = mesh_control::client::node_client_config(&credential, &bundle)?;
        self.configs.insert(node.to_owned(), config.clone());
        Ok(config)
    }
}

async fn open_stream(
    url: &str,
    config: rustls::ClientConfig,
    node: &str,
    version: u64,
) -> Result<AgentStream> {
    let channel = mesh_control::client::tls_channel(url, config)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut client = ConfigDistributionClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(16);
    tx.send(hello(node, version)).await?;
    let pushes = client
        .stream_config(ReceiverStream::new(rx))
        .await
        .context("opening the config stream")?
        .into_inner();
    Ok(AgentStream { tx, pushes })
}

fn hello(node: &str, version: u64) -> AgentMessage {
    AgentMessage {
        message: Some(Message::Hello(Hello {
            node: node.to_owned(),
            version,
            agent_version: "cp-load".into(),
        })),
    }
}

fn ack(push: &ConfigPush) -> AgentMessage {
    AgentMessage {
        message: Some(Message::Ack(Ack {
            version: push.version,
            nonce: push.nonce.clone(),
        })),
    }
}

/// Parses every resource of a push as a real agent does (JSON + per-resource validation).
fn decode(push: &ConfigPush) -> Result<Vec<Resource>> {
    push.upserts
        .iter()
        .map(|r| Resource::from_json(&r.json).map_err(|e| anyhow::anyhow!("{e}")))
        .collect()
}

#[derive(serde::Serialize)]
struct FullSample {
    connect_ms: f64,
    /// From before connecting to the decoded protobuf message in hand.
    receive_ms: f64,
    /// Parsing every upsert's JSON (Resource::from_json).
    decode_ms: f64,
    /// receive + decode: the target's "full config".
    total_ms: f64,
    /// Building the agent's validated Snapshot from it (agent-side work, for information).
    snapshot_ms: f64,
    bytes: usize,
    upserts: usize,
    version: u64,
}

/// What the full push showed: things to change, and addresses in use.
struct Mesh {
    services: Vec<Value>,
    used_ips: HashSet<IpAddr>,
    counts: std::collections::BTreeMap<String, usize>,
}

async fn full_config(
    url: &str,
    config: rustls::ClientConfig,
    node: &str,
    keep: Option<&mut Option<Mesh>>,
) -> Result<FullSample> {
    let started = Instant::now();
    let mut stream = open_stream(url, config, node, 0).await?;
    let connect_ms = ms(started.elapsed());
    let push = stream
        .pushes
        .message()
        .await
        .context("receiving the full config")?
        .context("the control plane closed the stream before the first push")?;
    let received = started.elapsed();
    let resources = decode(&push)?;
    let decoded = started.elapsed();
    if !push.full {
        bail!("the first push to a version-0 agent is not a full config");
    }
    stream.tx.send(ack(&push)).await?;
    let snapshot_started = Instant::now();
    let snapshot = Snapshot::from_resources(resources.iter().cloned());
    let snapshot_ms = ms(snapshot_started.elapsed());
    snapshot.map_err(|e| anyhow::anyhow!("the full config does not validate: {e}"))?;
    if let Some(keep) = keep {
        let mut mesh = Mesh {
            services: Vec::new(),
            used_ips: HashSet::new(),
            counts: Default::default(),
        };
        for r in &resources {
            *mesh.counts.entry(r.kind().to_owned()).or_default() += 1;
            match r {
                Resource::Service(s) => {
                    mesh.used_ips.extend(s.spec.vips.iter().copied());
                    mesh.services.push(serde_json::from_str(&r.to_json())?);
                }
                Resource::Workload(w) => mesh.used_ips.extend(w.spec.ips.iter().copied()),
                _ => {}
            }
        }
        *keep = Some(mesh);
    }
    // Let the ACK reach the control plane before the stream closes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(FullSample {
        connect_ms,
        receive_ms: ms(received),
        decode_ms: ms(decoded - received),
        total_ms: ms(decoded),
        snapshot_ms,
        bytes: push.encoded_len(),
        upserts: push.upserts.len(),
        version: push.version,
    })
}

/// A simulated agent following the control plane: ACKs every push at once.
async fn follow(agent: usize, mut stream: AgentStream, reports: mpsc::UnboundedSender<Report>) {
    let error = loop {
        match stream.pushes.message().await {
            Ok(Some(push)) => {
                let at = Instant::now();
                // Parse what came, as an agent would (a change is one or two resources).
                if let Err(e) = decode(&push) {
                    break format!("push v{} does not parse: {e}", push.version);
                }
                if stream.tx.send(ack(&push)).await.is_err() {
                    break "the request stream closed".to_owned();
                }
                let _ = reports.send(Report::Push {
                    agent,
                    version: push.version,
                    at,
                    bytes: push.encoded_len(),
                    upserts: push.upserts.len(),
                    deletes: push.deletes.len(),
                    full: push.full,
                });
            }
            Ok(None) => break "the control plane ended the stream".to_owned(),
            Err(e) => break format!("stream error: {e}"),
        }
    };
    let _ = reports.send(Report::Closed { agent, error });
}

#[derive(Clone, Copy, Default)]
struct Received {
    version: u64,
    at: Option<Instant>,
    bytes: usize,
    upserts: usize,
    deletes: usize,
    full: bool,
}

/// Collects reports until every agent received a push of at least `version` (the first such
/// push per agent is returned).
async fn wait_all(
    reports: &mut mpsc::UnboundedReceiver<Report>,
    agents: usize,
    version: u64,
    timeout: Duration,
) -> Result<Vec<Option<Received>>> {
    let mut got: Vec<Option<Received>> = vec![None; agents];
    let mut missing = agents;
    let deadline = tokio::time::Instant::now() + timeout;
    while missing > 0 {
        let report = match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => bail!("every agent task ended"),
            Err(_) => {
                eprintln!("cp-load: {missing} agents did not receive v{version} in {timeout:?}");
                break;
            }
        };
        match report {
            Report::Push {
                agent,
                version: v,
                at,
                bytes,
                upserts,
                deletes,
                full,
            } => {
                if v >= version && got[agent].is_none() {
                    got[agent] = Some(Received {
                        version: v,
                        at: Some(at),
                        bytes,
                        upserts,
                        deletes,
                        full,
                    });
                    missing -= 1;
                }
            }
            Report::Closed { agent, error } => bail!("agent {agent}: {error}"),
        }
    }
    Ok(got)
}

#[derive(serde::Serialize)]
struct ChangeResult {
    kind: &'static str,
    version: u64,
    /// The admin call itself (validation, store write, wait for the cache).
    admin_ms: f64,
    first_ms: f64,
    p50_ms: f64,
    last_ms: f64,
    bytes_per_agent: f64,
    bytes_total: usize,
    agents_missing: usize,
    /// Pushes that were not a one-resource diff (should be 0).
    unexpected_pushes: usize,
}

#[derive(serde::Serialize, Default)]
struct Stats {
    samples: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    if v.is_empty() {
        return Stats::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        samples: v.len(),
        p50_ms: pick(0.50),
        p90_ms: pick(0.90),
        p99_ms: pick(0.99),
        max_ms: *v.last().unwrap(),
        mean_ms: v.iter().sum::<f64>() / v.len() as f64,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn resource(value: &Value) -> pb::Resource {
    pb::Resource {
        json: serde_json::to_vec(value).expect("JSON values serialise"),
    }
}

/// A free address in 10.240.0.0/12 (inside the workload range, outside what populate uses).
fn free_ip(used: &mut HashSet<IpAddr>) -> IpAddr {
    loop {
        let offset = rand::random::<u32>() % (1 << 20);
        let ip = IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 240, 0, 0)) + offset,
        ));
        if offset != 0 && used.insert(ip) {
            return ip;
        }
    }
}

pub async fn run(options: Options) -> Result<Value> {
    let url = options.target.server.clone();
    let timeout = Duration::from_secs(options.timeout_s);
    let mut admin = options.target.admin().await?;
    let mut credentials = Credentials::default();
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);

    // 1. Full config to fresh agents, one at a time.
    let mut mesh = None;
    let mut full = Vec::new();
    for k in 0..options.full_samples.max(1) {
        let keep = if k == 0 { Some(&mut mesh) } else { None };
        let node = format!("cp-load-fresh-{run_id}-{k}");
        let config = credentials.config(&mut admin, &node).await?;
        let sample = full_config(&url, config, &node, keep).await?;
        eprintln!(
            "cp-load: full config {k}: {:.0} ms received + {:.0} ms decoded, {} resources, {} bytes",
            sample.receive_ms, sample.decode_ms, sample.upserts, sample.bytes
        );
        full.push(sample);
    }
    let rss_after_full = rss(options.server_pid);
    let mut mesh = mesh.expect("the first sample keeps the mesh");
    if mesh.services.is_empty() {
        bail!("the control plane has no Service to change: run `cp-load populate` first");
    }
    let base_version = full.last().map(|s| s.version).unwrap_or(0);

    // 2. Validation cost alone: dry-run Applies of a one-resource change.
    let mut dry_run_ms = Vec::new();
    for _ in 0..options.dry_run_probes {
        let started = Instant::now();
        admin
            .apply(pb::ApplyRequest {
                resources: vec![resource(&mesh.services[0])],
                source: "cp-load dry run".into(),
                dry_run: true,
            })
            .await
            .context("dry-run apply")?;
        dry_run_ms.push(ms(started.elapsed()));
    }

    // 3. N agents, resuming at the current version (as agents with a config cache do).
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let mut configs = Vec::new();
    for i in 0..options.agents {
        let node = format!("node-{}", i % NODES.max(1));
        configs.push((credentials.config(&mut admin, &node).await?, node));
    }
    let connect_started = Instant::now();
    let streams = futures::future::try_join_all(configs.into_iter().map(|(config, node)| {
        let url = url.clone();
        async move { open_stream(&url, config, &node, base_version).await }
    }))
    .await?;
    let connect_ms = ms(connect_started.elapsed());
    for (i, stream) in streams.into_iter().enumerate() {
        tokio::spawn(follow(i, stream, report_tx.clone()));
    }
    drop(report_tx);
    // The sessions save their agent records; let those writes finish.
    tokio::time::sleep(Duration::from_millis(options.settle_ms * 2)).await;
    let rss_connecting = rss(options.server_pid);

    // 4. Changes. Every agent must see each one; the first is a warm-up.
    let mut port_bump = rand::random::<u16>() % 1000;
    let mut added: Vec<String> = Vec::new();
    let mut results = Vec::new();
    let mut samples = Vec::new();
    let mut per_kind: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut admin_ms = Vec::new();
    let mut warmup = None;
    for i in 0..=options.changes {
        let kind = match i % 3 {
            0 => "update-service-port",
            1 => "add-workload",
            _ if added.is_empty() => "update-service-port",
            _ => "delete-workload",
        };
        let started;
        let version = match kind {
            "update-service-port" => {
                let n = mesh.services.len();
                let service = &mut mesh.services[(i * 7919) % n];
                port_bump += 1;
                let port = 10_000 + (port_bump % 50_000);
                service["spec"]["ports"][0]["port"] = json!(port);
                let request = pb::ApplyRequest {
                    resources: vec![resource(service)],
                    source: "cp-load change".into(),
                    dry_run: false,
                };
                started = Instant::now();
                admin.apply(request).await?.into_inner().version
            }
            "add-workload" => {
                let n = mesh.services.len();
                let app = mesh.services[(i * 104_729) % n]["spec"]["selector"]["app"]
                    .as_str()
                    .unwrap_or("cp-load")
                    .to_owned();
                let name = format!("cp-load-{run_id}-{i}");
                let ip = free_ip(&mut mesh.used_ips);
                let value =
                    workload_with(&name, &ip.to_string(), &format!("node-{}", i % 100), &app);
                let request = pb::ApplyRequest {
                    resources: vec![resource(&value)],
                    source: "cp-load change".into(),
                    dry_run: false,
                };
                added.push(name);
                started = Instant::now();
                admin.apply(request).await?.into_inner().version
            }
            _ => {
                let name = added.pop().expect("checked above");
                let request = pb::DeleteRequest {
                    r#ref: Some(pb::ResourceRef {
                        kind: "Workload".into(),
                        namespace: super::populate::NAMESPACE.into(),
                        name,
                    }),
                };
                started = Instant::now();
                admin.delete(request).await?.into_inner().version
            }
        };
        let admin_elapsed = ms(started.elapsed());
        let got = wait_all(&mut reports, options.agents, version, timeout).await?;
        let mut latencies = Vec::new();
        let mut bytes_total = 0;
        let mut unexpected = 0;
        for r in got.iter().flatten() {
            let at = r.at.expect("set for every push");
            latencies.push(ms(at.saturating_duration_since(started)));
            bytes_total += r.bytes;
            if r.full || r.upserts + r.deletes != 1 || r.version != version {
                unexpected += 1;
            }
        }
        let missing = options.agents - latencies.len();
        let s = stats(latencies.clone());
        let result = ChangeResult {
            kind,
            version,
            admin_ms: admin_elapsed,
            first_ms: latencies.iter().copied().fold(f64::INFINITY, f64::min),
            p50_ms: s.p50_ms,
            last_ms: s.max_ms,
            bytes_per_agent: bytes_total as f64 / latencies.len().max(1) as f64,
            bytes_total,
            agents_missing: missing,
            unexpected_pushes: unexpected,
        };
        eprintln!(
            "cp-load: change {i} ({kind}) v{version}: admin {:.1} ms, agents first {:.1} / p50 {:.1} / last {:.1} ms{}",
            result.admin_ms,
            result.first_ms,
            result.p50_ms,
            result.last_ms,
            if i == 0 { " (warm-up)" } else { "" }
        );
        if i == 0 {
            warmup = Some(result);
        } else {
            per_kind.entry(kind).or_default().extend(&latencies);
            samples.extend(latencies);
            admin_ms.push(admin_elapsed);
            results.push(result);
        }
        tokio::time::sleep(Duration::from_millis(options.settle_ms)).await;
    }
    let rss_after_changes = rss(options.server_pid);
    // Leave the mesh as populate made it (apart from ports).
    for name in added {
        admin
            .delete(pb::DeleteRequest {
                r#ref: Some(pb::ResourceRef {
                    kind: "Workload".into(),
                    namespace: super::populate::NAMESPACE.into(),
                    name,
                }),
            })
            .await?;
    }
    let metrics = admin.mesh_metrics(pb::Empty {}).await?.into_inner();

    let mut full_totals: Vec<f64> = full.iter().map(|s| s.total_ms).collect();
    full_totals.sort_by(|a, b| a.total_cmp(b));
    let n_changes = results.len().max(1) as f64;
    let change_bytes_total: usize = results.iter().map(|r| r.bytes_total).sum();
    let agents_missing: usize = results.iter().map(|r| r.agents_missing).sum();
    let unexpected: usize = results.iter().map(|r| r.unexpected_pushes).sum();
    Ok(json!({
        "server": url,
        "resources": mesh.counts,
        "full_config": {
            "median_total_ms": full_totals[full_totals.len() / 2],
            "samples": full,
        },
        "dry_run_apply_ms": dry_run_ms,
        "agents": options.agents,
        "agents_connect_ms": connect_ms,
        "warmup": warmup,
        "change": {
            "latency": stats(samples),
            "latency_by_kind": per_kind.into_iter().map(|(k, v)| (k, stats(v))).collect::<std::collections::BTreeMap<_, _>>(),
            "admin_call": stats(admin_ms),
            "bytes_per_agent": change_bytes_total as f64 / n_changes / options.agents.max(1) as f64,
            "bytes_total": change_bytes_total as f64 / n_changes,
            "agents_missing": agents_missing,
            "unexpected_pushes": unexpected,
            "changes": results,
        },
        "server_memory": {
            "after_full_configs": rss_after_full,
            "agents_connected": rss_connecting,
            "after_changes": rss_after_changes,
        },
        "server_metrics": {
            "agents_connected": metrics.agents_connected,
            "pushes_sent": metrics.pushes_sent,
            "acks": metrics.acks,
            "nacks": metrics.nacks,
        },
    }))
}
