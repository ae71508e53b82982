//! `mesh-cni`: a CNI plugin chained after the node's network plugin. For each pod the runtime
//! starts, it asks the node's mesh agent to enroll the pod (by its network namespace), so the
//! pod's traffic is captured before any of its containers runs.
//!
//! Run by a runtime (`CNI_COMMAND` set): the CNI protocol, environment plus config on stdin,
//! result or error object on stdout. Run by hand or by the DaemonSet's init container:
//! `mesh-cni install` / `mesh-cni uninstall`.

mod agent;
mod commands;
mod config;
mod conflist;
mod env;
mod install;
mod spec;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::spec::{CniError, Code, LATEST_VERSION};

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return plugin();
    }
    match Cli::parse().command {
        Admin::Install { dirs, state_dir } => {
            let exe = match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => return fail(format!("finding this binary: {e}")),
            };
            match install::install(&dirs.as_dirs(), &state_dir, &exe) {
                Ok(config) => {
                    println!(
                        "installed {} and its entry in {}",
                        dirs.cni_bin_dir.join(conflist::PLUGIN_TYPE).display(),
                        config.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Admin::Uninstall { dirs } => match install::uninstall(&dirs.as_dirs()) {
            Ok(changed) => {
                for config in changed {
                    println!("removed the mesh-cni entry from {}", config.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// One CNI command: the result (if any) on stdout and exit 0, or the error object on stdout
/// (and its text on stderr, for the runtime's log) and exit 1.
fn plugin() -> ExitCode {
    let stdin = match read_stdin() {
        Ok(stdin) => stdin,
        Err(e) => return report(&e, LATEST_VERSION),
    };
    let var = |name: &str| std::env::var(name).ok();
    let (command, cni_args, netns) = (var("CNI_COMMAND"), var("CNI_ARGS"), var("CNI_NETNS"));
    let version = requested_version(&stdin);
    let command = match env::Command::parse(command.as_deref()) {
        Ok(command) => command,
        Err(e) => return report(&e, &version),
    };
    let invocation = commands::Invocation {
        command,
        cni_args: cni_args.as_deref(),
        netns: netns.as_deref(),
        stdin: &stdin,
    };
    match commands::run(&invocation) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(&e, &version),
    }
}

fn report(error: &CniError, version: &str) -> ExitCode {
    println!("{}", error.to_json(version));
    eprintln!("mesh-cni: {error}");
    ExitCode::FAILURE
}

/// The config's `cniVersion`, for the error object: a runtime reads errors in the version it
/// asked for.
fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

fn read_stdin() -> Result<Vec<u8>, CniError> {
    let mut stdin = Vec::new();
    let limit = config::MAX_CONFIG_BYTES as u64 + 1;
    std::io::stdin()
        .take(limit)
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(Code::IoFailure, format!("reading stdin: {e}")))?;
    if stdin.len() > config::MAX_CONFIG_BYTES {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!(
                "the network config on stdin is larger than {} bytes",
                config::MAX_CONFIG_BYTES
            ),
        ));
    }
    Ok(stdin)
}

#[derive(Parser)]
#[command(
    name = "mesh-cni",
    about = "Chained CNI plugin of the mesh (run by the container runtime with CNI_COMMAND set), and its installer"
)]
struct Cli {
    #[command(subcommand)]
    command: Admin,
}

#[derive(clap::Args)]
struct CniDirs {
    /// Where the runtime finds plugin binaries.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Where the runtime reads network configs.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
}

impl CniDirs {
    fn as_dirs(&self) -> install::Dirs<'_> {
        install::Dirs {
            bin: &self.cni_bin_dir,
            conf: &self.cni_conf_dir,
        }
    }
}

#[derive(Subcommand)]
enum Admin {
    /// Copy this binary into the CNI bin dir and add `{"type": "mesh-cni", "stateDir": ...}`
    /// last to the node's primary network config (the first in name order). Idempotent.
    Install {
        #[command(flatten)]
        dirs: CniDirs,
        /// The agent's --state-dir as seen from the node (the plugin runs on the node).
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: String,
    },
    /// Remove the mesh-cni entry from every network config and the binary. Idempotent.
    Uninstall {
        #[command(flatten)]
        dirs: CniDirs,
    },
}
