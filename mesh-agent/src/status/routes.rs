//! The Routes part of `mesh-agent status` and `/config_dump`: the Routes in force, with this
//! node's HTTP requests per rule.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::agent::Agent;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub route: String,
    pub service: String,
    pub rules: Vec<RuleStatus>,
    /// Requests no rule matched (they went to the service's own endpoints).
    pub unmatched_requests: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RuleStatus {
    /// The rule as `meshctl get routes` shows it.
    pub rule: String,
    /// HTTP requests this node's proxy sent by this rule.
    pub requests: u64,
}

/// The routes in force with this node's requests per rule.
pub fn route_statuses(agent: &Agent) -> Vec<RouteStatus> {
    let counts = &agent.proxy.http.rule_requests;
    agent
        .registry
        .snapshot()
        .routes()
        .map(|r| {
            let key = r.metadata.key();
            RouteStatus {
                route: key.to_string(),
                service: r.spec.service.clone(),
                rules: r
                    .spec
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| RuleStatus {
                        rule: rule.summary(),
                        requests: counts.get(&key, Some(i)),
                    })
                    .collect(),
                unmatched_requests: counts.get(&key, None),
            }
        })
        .collect()
}

/// The ROUTES section of the table view.
pub fn table(routes: &[RouteStatus], out: &mut String) {
    if routes.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nROUTES");
    let rows = routes
        .iter()
        .flat_map(|r| {
            let unmatched = vec![
                r.route.clone(),
                r.service.clone(),
                "(no rule matched)".into(),
                r.unmatched_requests.to_string(),
            ];
            r.rules
                .iter()
                .map(|rule| {
                    vec![
                        r.route.clone(),
                        r.service.clone(),
                        rule.rule.clone(),
                        rule.requests.to_string(),
                    ]
                })
                .chain([unmatched])
                .collect::<Vec<_>>()
        })
        .collect();
    super::table(out, &["ROUTE", "SERVICE", "RULE", "REQUESTS"], rows);
}
