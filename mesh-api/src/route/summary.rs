//! One-line forms of a Route for tables (`meshctl get routes`, `mesh-agent status`):
//! `canary: GET /api* x-canary=true -> reviews/v2:10,reviews/v1:90`. `-o yaml` is the full
//! form; this only has to let an operator recognise each rule.

use std::fmt::Write as _;

use super::{PathMatch, Route, RouteRule, StringMatch};

impl Route {
    /// `service=reviews rules=2 <rule>; <rule>`.
    pub fn summary(&self) -> String {
        let rules: Vec<String> = self.spec.rules.iter().map(RouteRule::summary).collect();
        format!(
            "service={} rules={} {}",
            self.spec.service,
            rules.len(),
            rules.join("; ")
        )
    }
}

impl RouteRule {
    /// `[name: ]<conditions or *> -> <backends>[ (extras)]`. Conditions: the method, the path
    /// (`/x` exact, `/api*` prefix, `~re` regex), headers (`h=v`, `h=v*`, `h~re`, `h` present,
    /// `!h` absent) and query parameters (the same, after `?`). Backends:
    /// `service[/subset][@port]`, with `:weight` when there are several.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if let Some(name) = &self.name {
            let _ = write!(out, "{name}: ");
        }
        let mut conditions = Vec::new();
        if let Some(m) = &self.r#match {
            conditions.extend(m.method.clone());
            conditions.extend(m.path_condition().map(|p| match p {
                PathMatch::Exact(s) => s,
                PathMatch::Prefix(s) => format!("{s}*"),
                PathMatch::Regex(s) => format!("~{s}"),
            }));
            conditions.extend(m.headers.iter().map(|(n, v)| condition(n, v)));
            conditions.extend(
                m.query_params
                    .iter()
                    .map(|(n, v)| format!("?{}", condition(n, v))),
            );
        }
        if conditions.is_empty() {
            conditions.push("*".to_owned());
        }
        out.push_str(&conditions.join(" "));
        out.push_str(" -> ");
        let weighted = self.backends.len() > 1;
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|b| {
                let mut s = b.service.clone();
                if let Some(subset) = &b.subset {
                    let _ = write!(s, "/{subset}");
                }
                if let Some(port) = b.port {
                    let _ = write!(s, "@{port}");
                }
                if weighted {
                    let _ = write!(s, ":{}", b.weight);
                }
                s
            })
            .collect();
        out.push_str(&backends.join(","));
        let extras = self.extras();
        if !extras.is_empty() {
            let _ = write!(out, " ({})", extras.join(", "));
        }
        out
    }

    fn extras(&self) -> Vec<String> {
        let mut extras = Vec::new();
        if let Some(t) = self.timeout_ms {
            extras.push(format!("timeout {t}ms"));
        }
        if let Some(r) = &self.retries {
            extras.push(format!("retries {}", r.attempts));
        }
        if let Some(f) = &self.fault {
            if let Some(d) = &f.delay {
                extras.push(format!("delay {}ms {}", d.ms, d.percent));
            }
            if let Some(a) = &f.abort {
                extras.push(format!("abort {} {}", a.status, a.percent));
            }
        }
        if self.headers.is_some() {
            extras.push("header rules".to_owned());
        }
        extras
    }
}

fn condition(name: &str, value: &StringMatch) -> String {
    match value {
        StringMatch::Exact(v) => format!("{name}={v}"),
        StringMatch::Prefix(v) => format!("{name}={v}*"),
        StringMatch::Regex(v) => format!("{name}~{v}"),
        StringMatch::Present(true) => name.to_owned(),
        StringMatch::Present(false) => format!("!{name}"),
    }
}
