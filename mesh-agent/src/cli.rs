//! Command line: `run`, `enroll`, `unenroll`, `status`, `log-level`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_STATE_DIR: &str = "/var/run/mesh-agent";

#[derive(Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "Node agent of the mesh: eBPF capture and the node proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent: load the eBPF programs, resume enrolled pods, serve their traffic.
    Run(RunArgs),
    /// Enroll a pod: turn capture on for its network namespace and open its proxy listeners.
    Enroll(EnrollArgs),
    /// Unenroll a pod: detach capture and close its listeners.
    Unenroll {
        #[arg(long)]
        uid: String,
        #[command(flatten)]
        local: LocalAgent,
    },
    /// Show the running agent's log filter, or replace it (no restart), e.g. `debug` or
    /// `info,mesh_agent::proxy=debug` (RUST_LOG syntax: LEVEL or TARGET=LEVEL, comma-separated).
    LogLevel {
        /// The new filter; omitted: print the one in force.
        directives: Option<String>,
        #[command(flatten)]
        local: LocalAgent,
    },
    /// Show programs, pods, services, endpoints and counters.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        #[command(flatten)]
        local: LocalAgent,
    },
}

/// How the CLI finds the running agent.
#[derive(Args)]
pub struct LocalAgent {
    /// State directory of the running agent (its admin socket lives there).
    #[arg(long, env = "MESH_AGENT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Args, Clone, Default)]
pub struct RunArgs {
    /// Agent settings file (YAML; keys as the long flags in camelCase). Flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Static mesh config: Service and Workload resources (YAML, multi-document).
    #[arg(long)]
    pub local_config: Option<PathBuf>,
    /// Control plane URL(s), comma-separated replicas (e.g. https://cp-1:15010,https://cp-2:15010).
    /// Replaces --local-config as the source of the mesh config.
    #[arg(long, env = "MESH_CONTROL_PLANE", value_delimiter = ',')]
    pub control_plane: Vec<String>,
    /// Join token (`meshctl token create --node NAME`) for the first start with a control
    /// plane; later starts reuse the node credential kept in the state directory.
    #[arg(long, env = "MESH_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Destinations the kernel capture map can hold (sets its size when first created).
    #[arg(long)]
    pub capture_capacity: Option<u32>,
    /// This node's name, as Workloads name it in `spec.node` [default: hostname].
    #[arg(long, env = "MESH_NODE_NAME")]
    pub node_name: Option<String>,
    /// Admin HTTP address (loopback only) [default: 127.0.0.1:15000].
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// Directory on bpffs for pinned maps and links [default: /sys/fs/bpf/mesh].
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// cgroup v2 mount [default: detected from /proc/self/mounts].
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Where enrollments and the admin socket live [default: /var/run/mesh-agent].
    #[arg(long, env = "MESH_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the node's credential (key, certificate, trust bundle) is kept [default:
    /// <state-dir>/identity]. Put it on storage that survives a reboot (the state dir is
    /// usually a tmpfs): a node that keeps its credential needs no new join token.
    #[arg(long, env = "MESH_AGENT_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,
    /// Upstream connect timeout in milliseconds [default: 5000].
    #[arg(long)]
    pub connect_timeout_ms: Option<u64>,
    /// How long a stopping agent (handed over to a successor, or SIGTERM) lets open
    /// connections finish before it exits and closes the rest [default: 50]. Keep it below
    /// the pod's terminationGracePeriodSeconds.
    #[arg(long)]
    pub drain_timeout_secs: Option<u64>,
    /// Proxy worker threads [default: half the CPUs, at least 1]. Fewer threads mean fewer
    /// cross-thread wake-ups per proxied byte; more serve more connections in parallel. Flag or
    /// environment only (the runtime starts before the settings file is read).
    #[arg(long, env = "MESH_AGENT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

#[derive(Args)]
pub struct EnrollArgs {
    #[arg(long)]
    pub uid: String,
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Checked against the declared Workload; omitted: the Workload's.
    #[arg(long, default_value = "")]
    pub service_account: String,
    /// The pod's network namespace file (e.g. /run/netns/NAME or /proc/PID/ns/net): capture
    /// follows it, whatever cgroup the pod's processes are in.
    #[arg(long)]
    pub netns: PathBuf,
    /// The pod's cgroup v2 directory. Optional and no longer used for capture (kept so older
    /// scripts work; still refused if it is the cgroup root or holds the agent).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// The pod's IP (repeat for dual stack).
    #[arg(long = "ip", required = true)]
    pub ips: Vec<IpAddr>,
    #[command(flatten)]
    pub local: LocalAgent,
}
