//! `cargo xtask bench` (being written).

use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<()> {
    bail!("the benchmark is not written yet")
}
