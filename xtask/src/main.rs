//! Project automation: `cargo xtask build-ebpf | demo | test | bench`.
//!
//! Every command installs what it needs and is missing, so a fresh machine needs only the two
//! commands of the README.

mod build_ebpf;
mod cmd;

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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf => build_ebpf::build().map(|_| ()),
    }
}
