//! `meshctl`: manage the mesh through the control plane.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use mesh_api::Resource;
use mesh_control::client::{connect_admin, AdminClient};
use mesh_control::server::{canonical_kind, SECURITY_RULE_KINDS};
use mesh_proto::v1 as pb;

mod print;
use print::{print_ca_status, print_resources, print_results, print_status, print_table};

#[derive(Parser)]
#[command(name = "meshctl", version, about = "Manage the mesh")]
struct Cli {
    /// Control plane URL.
    #[arg(
        long,
        global = true,
        env = "MESHCTL_SERVER",
        default_value = "https://127.0.0.1:15010"
    )]
    server: String,
    /// File holding the admin token (the control plane writes DATA_DIR/admin.token).
    #[arg(
        long,
        global = true,
        env = "MESHCTL_TOKEN_FILE",
        default_value = "/var/lib/mesh-control/admin.token"
    )]
    token_file: PathBuf,
    /// The admin token itself (instead of --token-file).
    #[arg(long, global = true, env = "MESHCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The mesh's trust bundle (PEM) to verify the control plane with (the control plane
    /// writes DATA_DIR/ca.pem) [default: ca.pem next to the token file].
    #[arg(long, global = true, env = "MESHCTL_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update resources from a YAML file (multi-document; `-` for stdin).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Validate against the current config without storing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show resources of a kind, all or one (`NAME` or `NS/NAME`).
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete a resource: `meshctl delete KIND NS/NAME`.
    Delete { kind: String, name: String },
    /// Agents, their control-plane replica and the config version each has ACKed.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Service endpoints (workloads) and their health.
    Endpoints {
        #[command(subcommand)]
        command: EndpointsCommand,
    },
    /// Traffic rules (Route) and security rules (AuthorizationPolicy, RequestAuthentication,
    /// PeerAuthentication).
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Print the mesh's trust bundle: every CA root certificate agents trust (PEM).
    CaCert,
    /// The CA: its roots, and rotating to a new root.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Join tokens for new nodes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Certificates on demand.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Resource counts, agents connected, pushes, ACKs and NACKs.
    Metrics,
    /// Get or set the global MeshConfig.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum EndpointsCommand {
    /// Endpoints of a service.
    List {
        service: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Register a workload (endpoint).
    Register {
        #[arg(long)]
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        uid: String,
        #[arg(long = "ip", required = true)]
        ips: Vec<String>,
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "default")]
        service_account: String,
        /// Labels as KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Deregister a workload: `NS/NAME`.
    Deregister { name: String },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Add traffic rules (Route) and security rules (AuthorizationPolicy,
    /// RequestAuthentication, PeerAuthentication) from a file, one document at a time.
    Add {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// List traffic or security rules.
    List {
        #[arg(value_parser = ["traffic", "security"])]
        which: String,
        #[arg(short = 'n', long, default_value = "")]
        namespace: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Roots, which one signs, and the rotation phase.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Rotate the root: `prepare`, then `activate`, then `finish`, letting every agent get
    /// the new trust bundle in between (`meshctl status`).
    Rotate {
        #[command(subcommand)]
        phase: RotatePhase,
    },
}

#[derive(Subcommand)]
enum RotatePhase {
    /// A new root joins the trust bundle; the old one still signs.
    Prepare {
        /// Use this operator-supplied root (PEM) instead of making one; needs --ca-key.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The key of --ca-cert (PKCS#8 PEM), used once to sign an intermediate.
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
    },
    /// The new root signs every new certificate; both roots stay trusted.
    Activate,
    /// The old root leaves the trust bundle (once certificates it signed are replaced).
    Finish,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a short-lived, single-use join token for node NAME; prints the token alone.
    Create {
        #[arg(long)]
        node: String,
        /// How long it can be used: e.g. 90s, 10m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Sign a CSR (PEM, one SPIFFE ID as its URI SAN); prints the certificate chain.
    Issue {
        #[arg(long)]
        csr: PathBuf,
        /// Lifetime, e.g. 1h [default: the mesh's workloadCertTtlSeconds].
        #[arg(long)]
        ttl: Option<String>,
        /// Also write the trust bundle here.
        #[arg(long)]
        bundle_out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    Get {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Yaml)]
        output: Output,
    },
    Set {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn token(cli: &Cli) -> Result<String> {
    if let Some(token) = &cli.token {
        return Ok(token.clone());
    }
    std::fs::read_to_string(&cli.token_file).with_context(|| {
        format!(
            "reading the admin token from {} (set --token-file or MESHCTL_TOKEN_FILE)",
            cli.token_file.display()
        )
    })
}

/// Errors from the server carry their message; show it, not the gRPC envelope.
fn call<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    result
        .map(tonic::Response::into_inner)
        .map_err(|status| match status.code() {
            tonic::Code::Unauthenticated => anyhow::anyhow!("refused: {}", status.message()),
            _ => anyhow::anyhow!("{}", status.message()),
        })
}

/// The trust bundle to verify the control plane with: --ca-file, else ca.pem beside the
/// token file.
fn ca_pem(cli: &Cli) -> Result<String> {
    let path = match &cli.ca_file {
        Some(path) => path.clone(),
        None => cli
            .token_file
            .parent()
            .map(|dir| dir.join("ca.pem"))
            .unwrap_or_else(|| PathBuf::from("ca.pem")),
    };
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the control plane's CA bundle from {} (set --ca-file or MESHCTL_CA_FILE; \
             the control plane writes DATA_DIR/ca.pem)",
            path.display()
        )
    })
}

async fn run(cli: Cli) -> Result<()> {
    let token = token(&cli)?;
    let ca = ca_pem(&cli)?;
    let mut client = connect_admin(&cli.server, &token, &ca).await?;
    match cli.command {
        Command::Apply { file, dry_run } => {
            let (source, resources) = read_resources(&file)?;
            let response = call(
                client
                    .apply(pb::ApplyRequest {
                        resources,
                        source,
                        dry_run,
                    })
                    .await,
            )?;
            print_results(&response, dry_run);
        }
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => {
            let (namespace, name) = split_name(name.as_deref(), namespace.as_deref());
            let response = call(
                client
                    .get(pb::GetRequest {
                        kind: kind.clone(),
                        namespace,
                        name,
                    })
                    .await,
            )?;
            print_resources(&response.resources, output)?;
        }
        Command::Delete { kind, name } => {
            let (namespace, name) = split_name(Some(&name), None);
            let kind = canonical_kind(&kind)
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .to_owned();
            let reference = pb::ResourceRef {
                kind: kind.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            };
            call(
                client
                    .delete(pb::DeleteRequest {
                        r#ref: Some(reference),
                    })
                    .await,
            )?;
            println!("{kind} {namespace}/{name} deleted");
        }
        Command::Status { output } => {
            print_status(call(client.status(pb::Empty {}).await)?, output)?
        }
        Command::Endpoints { command } => endpoints(&mut client, command).await?,
        Command::Rules { command } => rules(&mut client, command).await?,
        Command::CaCert => print!(
            "{}",
            call(client.get_ca_certificate(pb::Empty {}).await)?.pem
        ),
        Command::Ca { command } => ca_command(&mut client, command).await?,
        Command::Token {
            command: TokenCommand::Create { node, ttl },
        } => {
            let ttl = parse_duration(&ttl).context("--ttl")?;
            let token = call(
                client
                    .create_join_token(pb::CreateJoinTokenRequest {
                        node,
                        ttl_seconds: ttl.as_secs().max(1),
                    })
                    .await,
            )?;
            println!("{}", token.token);
        }
        Command::Cert {
            command:
                CertCommand::Issue {
                    csr,
                    ttl,
                    bundle_out,
                },
        } => {
            let csr_pem = std::fs::read_to_string(&csr)
                .with_context(|| format!("reading {}", csr.display()))?;
            let ttl_seconds = match ttl {
                Some(ttl) => parse_duration(&ttl).context("--ttl")?.as_secs(),
                None => 0,
            };
            let signed = call(
                client
                    .issue_certificate(pb::IssueCertificateRequest {
                        csr_pem,
                        ttl_seconds,
                    })
                    .await,
            )?;
            if let Some(path) = bundle_out {
                std::fs::write(&path, &signed.trust_bundle_pem)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print!("{}", signed.chain_pem);
        }
        Command::Metrics => {
            let m = call(client.mesh_metrics(pb::Empty {}).await)?;
            println!("version:          {}", m.version);
            println!("agents connected: {}", m.agents_connected);
            println!("pushes sent:      {}", m.pushes_sent);
            println!("acks / nacks:     {} / {}", m.acks, m.nacks);
            for (kind, count) in m.resources_by_kind {
                println!("{kind:<17} {count}");
            }
        }
        Command::Config { command } => match command {
            ConfigCommand::Get { output } => {
                let resource = call(client.get_mesh_config(pb::Empty {}).await)?;
                print_resources(&[resource], output)?;
            }
            ConfigCommand::Set { file } => {
                let (_, mut resources) = read_resources(&file)?;
                if resources.len() != 1 {
                    bail!("{file}: expected exactly one MeshConfig");
                }
                let response = call(
                    client
                        .set_mesh_config(pb::ResourceRequest {
                            resource: resources.pop(),
                        })
                        .await,
                )?;
                print_results(&response, false);
            }
        },
    }
    Ok(())
}

async fn ca_command(client: &mut AdminClient, command: CaCommand) -> Result<()> {
    let (status, output) = match command {
        CaCommand::Status { output } => (call(client.get_ca_status(pb::Empty {}).await)?, output),
        CaCommand::Rotate { phase } => {
            let mut request = pb::RotateCaRequest::default();
            match phase {
                RotatePhase::Prepare { ca_cert, ca_key } => {
                    request.phase = "prepare".into();
                    if let (Some(cert), Some(key)) = (ca_cert, ca_key) {
                        request.root_cert_pem = std::fs::read_to_string(&cert)
                            .with_context(|| format!("reading {}", cert.display()))?;
                        request.root_key_pem = std::fs::read_to_string(&key)
                            .with_context(|| format!("reading {}", key.display()))?;
                    }
                }
                RotatePhase::Activate => request.phase = "activate".into(),
                RotatePhase::Finish => request.phase = "finish".into(),
            }
            (call(client.rotate_ca(request).await)?, Output::Table)
        }
    };
    print_ca_status(&status, output)
}

/// `90s`, `10m`, `1h`, `2d` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<std::time::Duration> {
    mesh_control::server::tokens::parse_duration(text)
}

async fn endpoints(client: &mut AdminClient, command: EndpointsCommand) -> Result<()> {
    match command {
        EndpointsCommand::List { service, namespace } => {
            let response = call(
                client
                    .list_endpoints(pb::ListEndpointsRequest { namespace, service })
                    .await,
            )?;
            let rows = response
                .endpoints
                .iter()
                .map(|e| {
                    let health = if e.health_detail.is_empty() {
                        e.health.clone()
                    } else {
                        format!("{} ({})", e.health, e.health_detail)
                    };
                    let locality = if e.locality.is_empty() {
                        "-".to_owned()
                    } else {
                        e.locality.clone()
                    };
                    vec![
                        format!("{}/{}", e.namespace, e.workload),
                        e.ips.join(","),
                        e.node.clone(),
                        e.weight.to_string(),
                        locality,
                        health,
                    ]
                })
                .collect();
            print_table(
                &["WORKLOAD", "IPS", "NODE", "WEIGHT", "LOCALITY", "HEALTH"],
                rows,
            );
        }
        EndpointsCommand::Register {
            name,
            namespace,
            uid,
            ips,
            node,
            service_account,
            labels,
        } => {
            let labels = labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .with_context(|| format!("--label {l:?}: expected KEY=VALUE"))
                })
                .collect::<Result<_>>()?;
            let request = pb::RegisterEndpointRequest {
                namespace,
                name,
                uid,
                ips,
                node,
                service_account,
                labels,
            };
            print_results(&call(client.register_endpoint(request).await)?, false);
        }
        EndpointsCommand::Deregister { name } => {
            let (namespace, name) = split_name(Some(&name), None);
            call(
                client
                    .deregister_endpoint(pb::DeregisterEndpointRequest {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    })
                    .await,
            )?;
            println!("Workload {namespace}/{name} deregistered");
        }
    }
    Ok(())
}

async fn rules(client: &mut AdminClient, command: RulesCommand) -> Result<()> {
    match command {
        RulesCommand::Add { file } => {
            let (_, resources) = read_resources(&file)?;
            for resource in resources {
                let kind = Resource::from_json(&resource.json)
                    .map(|r| r.kind())
                    .unwrap_or_default();
                let request = pb::ResourceRequest {
                    resource: Some(resource),
                };
                let response = match kind {
                    "Route" => call(client.add_traffic_rule(request).await)?,
                    kind if SECURITY_RULE_KINDS.contains(&kind) => {
                        call(client.add_security_rule(request).await)?
                    }
                    other => bail!(
                        "{file}: rules are Route, {}, not {other}",
                        SECURITY_RULE_KINDS.join(", ")
                    ),
                };
                print_results(&response, false);
            }
        }
        RulesCommand::List { which, namespace } => {
            let request = pb::ListRequest { namespace };
            let response = if which == "traffic" {
                call(client.list_traffic_rules(request).await)?
            } else {
                call(client.list_security_rules(request).await)?
            };
            print_resources(&response.resources, Output::Table)?;
        }
    }
    Ok(())
}

/// Reads and validates a YAML (or JSON) file, or stdin for `-`, locally (errors name the
/// file; the size, nesting and alias limits of `mesh_api::limits` apply), as JSON documents.
fn read_resources(file: &str) -> Result<(String, Vec<pb::Resource>)> {
    let (source, resources) = if file == "-" {
        let source = "<stdin>".to_owned();
        let resources = mesh_api::load_reader(&source, std::io::stdin().lock());
        (source, resources)
    } else {
        (file.to_owned(), mesh_api::load_file(file.as_ref()))
    };
    let resources = resources.map_err(|e| anyhow::anyhow!("{e}"))?;
    let json = resources
        .iter()
        .map(|r| serde_json::to_vec(r).map(|json| pb::Resource { json }))
        .collect::<Result<_, _>>()?;
    Ok((source, json))
}

/// `NS/NAME`, `NAME` (namespace from -n, else default), or nothing.
fn split_name(name: Option<&str>, namespace: Option<&str>) -> (String, String) {
    match name {
        Some(n) => match n.split_once('/') {
            Some((ns, name)) => (ns.to_owned(), name.to_owned()),
            None => (namespace.unwrap_or("default").to_owned(), n.to_owned()),
        },
        None => (namespace.unwrap_or_default().to_owned(), String::new()),
    }
}
