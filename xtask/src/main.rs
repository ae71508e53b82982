//! Project automation: `cargo xtask build-ebpf | demo | test | validate-manifests | fuzz | bench`.
//!
//! Every command installs what it needs and is missing, so a fresh machine needs only the two
//! commands of the README.

mod bench;
mod bench_control;
mod build_ebpf;
mod cmd;
mod demo;
mod fuzz;
mod manifests;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, demo, test and benchmark the mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (installs nightly, rust-src and bpf-linker when missing).
    BuildEbpf,
    /// Start an agent on a static config, create two pods, send requests through the mesh,
    /// print `mesh-agent status`, clean up.
    Demo,
    /// Run every test: the manifest check, unit tests and the end-to-end tests (as root,
    /// real eBPF). With a filter, only the matching tests.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Validate every Kubernetes manifest in deploy/ offline against the Kubernetes schemas,
    /// strictly (installs PyPI's kubernetes-validate into target/ when missing).
    ValidateManifests,
    /// Build the fuzz targets in fuzz/ (installs cargo-fuzz when missing) and run each briefly.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 20)]
        seconds: u32,
    },
    /// Measure the mesh against direct connections; writes bench/results.md.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf => build_ebpf::build().map(|_| ()),
        Command::Demo => demo::run(),
        Command::Test { filter } => test::run(filter),
        Command::ValidateManifests => manifests::run(),
        Command::Fuzz { seconds } => fuzz::run(seconds),
        Command::Bench(args) => bench::run(args),
    }
}
