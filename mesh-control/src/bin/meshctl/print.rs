//! What meshctl prints: apply results, resources (table, JSON, YAML), status, tables.

use anyhow::Result;
use mesh_api::{table, Resource};
use mesh_proto::v1 as pb;

use super::Output;

/// One line per resource on stdout; the server's warnings (applied, but probably not what
/// was meant) on stderr, so scripts reading stdout see the same lines either way.
pub fn print_results(response: &pb::ApplyResponse, dry_run: bool) {
    let suffix = if dry_run { " (dry run)" } else { "" };
    for result in &response.results {
        if let Some(r) = &result.r#ref {
            let name = if r.namespace.is_empty() {
                r.name.clone()
            } else {
                format!("{}/{}", r.namespace, r.name)
            };
            println!("{} {name} {}{suffix}", r.kind, result.outcome);
        }
        for warning in &result.warnings {
            eprintln!("warning: {warning}");
        }
    }
}

pub fn print_resources(resources: &[pb::Resource], output: Output) -> Result<()> {
    let parsed: Vec<Resource> = resources
        .iter()
        .map(|r| {
            Resource::from_json(&r.json)
                .map_err(|e| anyhow::anyhow!("server sent an unreadable resource: {e}"))
        })
        .collect::<Result<_>>()?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&parsed)?),
        Output::Yaml => {
            for r in &parsed {
                print!("---\n{}", serde_yaml_ng::to_string(r)?);
            }
        }
        Output::Table => {
            let rows = parsed
                .iter()
                .map(|r| {
                    let key = r.key();
                    vec![
                        r.kind().to_owned(),
                        key.namespace.clone(),
                        key.name.clone(),
                        summary(r),
                    ]
                })
                .collect();
            print_table(&["KIND", "NAMESPACE", "NAME", "SUMMARY"], rows);
        }
    }
    Ok(())
}

/// The SUMMARY cell. Lists are shortened to what fits a table cell, saying how many more
/// there are (`-o yaml` shows them all).
fn summary(resource: &Resource) -> String {
    /// Characters for each list: two of them, each with its "(+N more, see -o yaml)", and
    /// their labels fit in one cell (`table::MAX_CELL_WIDTH`).
    const LIST_BUDGET: usize = 24;
    match resource {
        Resource::Service(s) => {
            let ports: Vec<String> = s
                .spec
                .ports
                .iter()
                .map(|p| format!("{}->{}", p.port, p.target()))
                .collect();
            format!(
                "vips={} ports={}",
                table::list(&s.spec.vips, LIST_BUDGET),
                table::list(&ports, LIST_BUDGET)
            )
        }
        Resource::Workload(w) => format!(
            "ips={} node={} sa={}",
            table::list(&w.spec.ips, LIST_BUDGET),
            w.spec.node,
            w.spec.service_account
        ),
        // `service=reviews rules=2 canary: GET /api* x-canary=true -> reviews/v2:10,...`
        Resource::Route(r) => r.summary(),
        // `action=ALLOW rules=2 http`: `http` when some rule is judged per request.
        Resource::AuthorizationPolicy(p) => {
            let http = p.spec.rules.iter().any(|r| r.needs_http());
            format!(
                "action={} rules={}{}",
                p.spec.action.as_str(),
                p.spec.rules.len(),
                if http { " http" } else { "" }
            )
        }
        Resource::RequestAuthentication(r) => {
            let issuers: Vec<&str> = r.spec.jwt_rules.iter().map(|j| j.issuer.as_str()).collect();
            format!("issuers={}", table::list(&issuers, 2 * LIST_BUDGET))
        }
        _ => String::new(),
    }
}

/// `-o json` or `-o yaml` of a value built for output.
pub fn print_structured(value: &serde_json::Value, output: Output) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        _ => print!("{}", serde_yaml_ng::to_string(value)?),
    }
    Ok(())
}

pub fn print_status(status: pb::StatusResponse, output: Output) -> Result<()> {
    if output != Output::Table {
        let agents: Vec<serde_json::Value> = status
            .agents
            .iter()
            .map(|a| {
                serde_json::json!({
                    "node": a.node, "replica": a.replica, "connected": a.connected,
                    "ackedVersion": a.acked_version, "lastNack": a.last_nack,
                    "lastNackVersion": a.last_nack_version, "lastSeen": a.last_seen,
                })
            })
            .collect();
        let jwks: Vec<serde_json::Value> = status
            .jwks
            .iter()
            .map(|j| {
                serde_json::json!({
                    "uri": j.uri, "lastAttempt": j.last_attempt,
                    "lastSuccess": j.last_success, "lastError": j.last_error,
                })
            })
            .collect();
        let value = serde_json::json!({"version": status.version, "replica": status.replica, "store": status.store, "agents": agents, "jwks": jwks});
        return print_structured(&value, output);
    }
    println!(
        "Control plane: {} (store {}), config version {}",
        status.replica, status.store, status.version
    );
    let rows = status
        .agents
        .iter()
        .map(|a| {
            let nack = if a.last_nack.is_empty() {
                "-".to_owned()
            } else {
                format!("v{}: {}", a.last_nack_version, a.last_nack)
            };
            vec![
                a.node.clone(),
                if a.connected {
                    "connected".into()
                } else {
                    "disconnected".into()
                },
                a.replica.clone(),
                a.acked_version.to_string(),
                nack,
            ]
        })
        .collect();
    print_table(
        &["NODE", "STREAM", "REPLICA", "ACKED VERSION", "LAST NACK"],
        rows,
    );
    print_jwks_fetches(&status.jwks);
    Ok(())
}

/// This replica's jwksUri fetches: when each last succeeded and why the last one failed.
fn print_jwks_fetches(fetches: &[pb::JwksFetchStatus]) {
    if fetches.is_empty() {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ago = |t: u64| match t {
        0 => "never".to_owned(),
        t => format!("{}s ago", now.saturating_sub(t)),
    };
    let rows = fetches
        .iter()
        .map(|j| {
            let result = match (j.last_attempt, j.last_error.as_str()) {
                (0, _) => "pending".to_owned(),
                (_, "") => "ok".to_owned(),
                (_, error) => format!("failed: {error}"),
            };
            vec![j.uri.clone(), ago(j.last_success), result]
        })
        .collect();
    println!();
    print_table(&["JWKS URI", "LAST SUCCESS", "LAST FETCH"], rows);
}

pub fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", table::render(header, &rows));
}

/// `meshctl ca status` (and what a rotation step leaves): the phase and the roots.
pub fn print_ca_status(status: &pb::CaStatus, output: Output) -> Result<()> {
    if output != Output::Table {
        let roots: Vec<serde_json::Value> = status
            .roots
            .iter()
            .map(|r| {
                serde_json::json!({
                    "sha256": r.sha256, "subject": r.subject, "notAfter": r.not_after,
                    "role": r.role, "operatorSupplied": r.operator_supplied,
                })
            })
            .collect();
        let value = serde_json::json!({"phase": status.phase, "roots": roots});
        return print_structured(&value, output);
    }
    println!("CA phase: {}", status.phase);
    let rows = status
        .roots
        .iter()
        .map(|r| {
            vec![
                r.role.clone(),
                r.sha256.clone(),
                r.subject.clone(),
                if r.operator_supplied {
                    "operator"
                } else {
                    "mesh"
                }
                .into(),
            ]
        })
        .collect();
    print_table(&["ROLE", "SHA256", "SUBJECT", "ROOT"], rows);
    Ok(())
}
