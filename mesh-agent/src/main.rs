//! `mesh-agent`: the node agent of the mesh. The command line only: the agent itself is the
//! library (src/lib.rs).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use mesh_agent::cli::{Cli, Command, OutputFormat};
use mesh_agent::pods::EnrollRequest;
use mesh_agent::{admin, run, settings, status};

fn main() -> ExitCode {
    mesh_agent::logging::init();
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Half the CPUs, at least one: the node proxy shares the node with its pods. Measured on
/// 2 CPUs (bench/results.md), one worker moved HBONE traffic with less CPU and lower latency
/// than two, because each hop between the app socket, HTTP/2 and TLS stays on one thread.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).max(1))
        .unwrap_or(1)
}

fn dispatch(command: Command) -> Result<()> {
    let workers = match &command {
        Command::Run(args) => args.worker_threads.map(usize::from),
        _ => Some(1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.unwrap_or_else(default_worker_threads))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            Command::Run(args) => run::run(settings::Settings::resolve(args)?).await,
            Command::Enroll(args) => {
                let request = EnrollRequest {
                    uid: args.uid,
                    name: args.name,
                    namespace: args.namespace,
                    service_account: args.service_account,
                    netns: args.netns,
                    cgroup: args.cgroup,
                    ips: args.ips,
                };
                let socket = admin::socket_path(&args.local.state_dir);
                admin::client::call(
                    &socket,
                    "POST",
                    "/v1/pods",
                    Some(serde_json::to_string(&request)?),
                )
                .await?;
                println!("enrolled {} ({})", request.pod_name(), request.uid);
                Ok(())
            }
            Command::Unenroll { uid, local } => {
                let socket = admin::socket_path(&local.state_dir);
                admin::client::call(&socket, "DELETE", &format!("/v1/pods/{uid}"), None).await?;
                println!("unenrolled {uid}");
                Ok(())
            }
            Command::LogLevel { directives, local } => {
                let socket = admin::socket_path(&local.state_dir);
                let body = match directives {
                    Some(directives) => {
                        let request = serde_json::json!({ "level": directives }).to_string();
                        admin::client::call(&socket, "PUT", "/logging", Some(request)).await?
                    }
                    None => admin::client::call(&socket, "GET", "/logging", None).await?,
                };
                let answer: serde_json::Value = serde_json::from_slice(&body)?;
                println!("{}", answer["level"].as_str().unwrap_or_default());
                Ok(())
            }
            Command::Status { output, local } => {
                let socket = admin::socket_path(&local.state_dir);
                let body = admin::client::call(&socket, "GET", "/status", None).await?;
                let status: status::Status = serde_json::from_slice(&body)?;
                match output {
                    OutputFormat::Table => print!("{}", status.to_table()),
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                    OutputFormat::Yaml => print!("{}", serde_yaml_ng::to_string(&status)?),
                }
                Ok(())
            }
        }
    })
}
