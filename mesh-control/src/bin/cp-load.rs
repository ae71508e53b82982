//! `cp-load`: load generator and latency probe for the control plane (the scale benchmark).
//!
//! - `populate`: applies N Services and M Workloads through `MeshAdmin.Apply`, in batches.
//! - `measure`: times the full config to a freshly connected simulated agent, then connects
//!   `--agents` simulated agents (one gRPC channel and stream each, all in this process) and
//!   times single config changes from just before the admin call to the receipt of the push
//!   carrying the change by every agent. Prints one JSON object on stdout.
//!
//! The simulated agents do what a real agent does on the wire (Hello, ACK every push at once)
//! but not what it does locally with the config (beyond parsing each resource's JSON), so the
//! numbers are the control plane's.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[path = "cp_load/measure.rs"]
mod measure;
#[path = "cp_load/populate.rs"]
mod populate;

#[derive(Parser)]
#[command(
    name = "cp-load",
    about = "Control-plane scale benchmark: populate and measure"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct Target {
    /// Control plane URL.
    #[arg(long, default_value = "https://127.0.0.1:15010")]
    server: String,
    /// File holding the admin token (the control plane writes DATA_DIR/admin.token).
    #[arg(long)]
    token_file: PathBuf,
    /// The trust bundle (the control plane writes DATA_DIR/ca.pem) [default: ca.pem next to
    /// the token file].
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

impl Target {
    pub fn ca_pem(&self) -> Result<String> {
        let path = self.ca_file.clone().unwrap_or_else(|| {
            self.token_file
                .parent()
                .map(|dir| dir.join("ca.pem"))
                .unwrap_or_else(|| "ca.pem".into())
        });
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    pub async fn admin(&self) -> Result<mesh_control::client::AdminClient> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("reading {}", self.token_file.display()))?;
        mesh_control::client::connect_admin(&self.server, &token, &self.ca_pem()?).await
    }
}

#[derive(Subcommand)]
enum Command {
    /// Apply N services and M workloads (each service gets M/N endpoints).
    Populate {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        services: usize,
        #[arg(long)]
        workloads: usize,
        /// Resources per Apply call.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Full-config time to a fresh agent, then change-propagation latency to N agents.
    Measure(measure::Options),
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Populate {
            target,
            services,
            workloads,
            batch,
        } => {
            let started = Instant::now();
            let summary = populate::run(&target, services, workloads, batch.max(1)).await?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "services": services,
                    "workloads": workloads,
                    "batch": batch,
                    "applies": summary.applies,
                    "seconds": seconds,
                    "resources_per_second": (services + workloads) as f64 / seconds,
                    "slowest_apply_ms": summary.slowest_apply_ms,
                    "version": summary.version,
                })
            );
            Ok(())
        }
        Command::Measure(options) => {
            let report = measure::run(options).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
