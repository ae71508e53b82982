//! What request-level security costs on the HTTP path (issue 10): the mesh path's
//! requests/s at saturation and p50 at the fixed rate with no request policy on the server
//! pod, with an HTTP ALLOW policy (methods and paths), and with JWT validation (a
//! RequestAuthentication with an inline key set and a policy requiring a request principal,
//! every request carrying a valid token), alternating in the same run on the same bed.
//!
//! Same node, the source's HTTP proxy judges each request before it goes out (no extra hop);
//! across nodes, the destination's agent serves the port as HTTP in front of the app (a
//! second parse and HTTP hop on node-2) where without such policy it relays at L4. The bed's
//! config changes between variants (the agent's local config, or the control plane), and a
//! variant is measured only once probes from the mesh client show its policy in force; each
//! policy run must also raise the judging agent's `mesh_request_authz_total` allow count by
//! the requests the client completed, and the no-policy runs must leave it alone.

use std::fmt::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use mesh_tests::jwt::{claims, jwks, SigningKey};
use mesh_tests::two_nodes::sum_samples;
use serde_json::{json, Value};

use super::http::{fixed_rate, saturation, Load, RATE, WRK_CONNECTIONS};
use super::http_bed::{CrossHttp, SameNodeHttp};
use super::http_run::{Hop, HttpBed, Runner};
use super::report::{Compare, Row};
use super::scenario::{median, median_of};
use crate::cmd::progress;

const ISSUER: &str = "https://issuer.bench.mesh.example";
const AUDIENCE: &str = "bench";
/// The AuthorizationPolicy of both policy variants (the JWT one replaces the ALLOW one).
const POLICY: &str = "bench-request";
const AUTHN: &str = "bench-jwt";
/// Each variant's runs are shorter than the section's others: nine of them per bed.
const WRK_SECS: f64 = 2.0;
const RATE_SECS: f64 = 1.0;
/// How long a config change may take to be in force.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// No request-level policy: the mesh path as in the section's other rows.
    None,
    /// An ALLOW AuthorizationPolicy with HTTP fields: GET, paths `/*`.
    Allow,
    /// A RequestAuthentication (ES256, inline JWKS) and an ALLOW policy requiring a request
    /// principal; the clients send a valid token.
    Jwt,
}

const VARIANTS: [Variant; 3] = [Variant::None, Variant::Allow, Variant::Jwt];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Allow => "allow",
            Variant::Jwt => "jwt",
        }
    }

    /// Where the variant's samples are (its place in [`VARIANTS`]).
    fn index(self) -> usize {
        self as usize
    }
}

/// The token issuer of the JWT variant: one EC P-256 key and a token valid for an hour.
struct Issuer {
    key: SigningKey,
    bearer: String,
}

impl Issuer {
    fn new() -> Issuer {
        let key = SigningKey::es256("bench-1");
        let token = key.sign(&claims(ISSUER, "bench-client", AUDIENCE));
        Issuer {
            bearer: format!("authorization: Bearer {token}"),
            key,
        }
    }
}

/// One config resource of a variant.
#[derive(Clone)]
pub struct Resource {
    pub kind: &'static str,
    /// `namespace/name`.
    pub name: String,
    pub yaml: String,
}

/// The resources `variant` puts on the server pods labelled `app`.
fn resources(variant: Variant, app: &str, issuer: &Issuer) -> Vec<Resource> {
    let policy = |rules: &str| Resource {
        kind: "AuthorizationPolicy",
        name: format!("default/{POLICY}"),
        yaml: format!(
            "---\napiVersion: mesh/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {POLICY}, \
             namespace: default}}\nspec:\n  selector: {{app: {app}}}\n  action: ALLOW\n  \
             rules:\n{rules}"
        ),
    };
    match variant {
        Variant::None => Vec::new(),
        Variant::Allow => vec![policy("  - to: {methods: [GET], paths: [\"/*\"]}\n")],
        Variant::Jwt => vec![
            Resource {
                kind: "RequestAuthentication",
                name: format!("default/{AUTHN}"),
                yaml: format!(
                    "---\napiVersion: mesh/v1\nkind: RequestAuthentication\nmetadata: {{name: \
                     {AUTHN}, namespace: default}}\nspec:\n  selector: {{app: {app}}}\n  \
                     jwtRules:\n    - issuer: \"{ISSUER}\"\n      audiences: [{AUDIENCE}]\n      \
                     jwks: '{}'\n",
                    jwks(&[&issuer.key])
                ),
            },
            policy("  - from: {requestPrincipals: [\"*\"]}\n"),
        ],
    }
}

/// A request that tells the variants apart: (method, with the token, the status in force).
type Probe = (&'static str, bool, u16);

/// Every pair of variants differs in at least one probe, and each switch's last step
/// changes one (see [`SecurityBed::switch`] for the cross-node order), so probes passing
/// means the wanted variant is in force.
fn probes(variant: Variant) -> [Probe; 2] {
    match variant {
        Variant::None => [("POST", false, 200), ("GET", false, 200)],
        Variant::Allow => [("POST", false, 403), ("GET", false, 200)],
        Variant::Jwt => [("GET", false, 403), ("GET", true, 200)],
    }
}

/// A bed whose server pod's request-security config the rows change.
pub trait SecurityBed: HttpBed {
    /// The `app` label (and Workload name) of the mesh server pod.
    fn server_app(&self) -> &'static str;
    /// Puts the resources `to` in place of `from`.
    fn switch(&mut self, from: &[Resource], to: &[Resource]) -> Result<()>;
    /// `/metrics` of the agent that judges the mesh client's requests.
    fn judge_metrics(&self) -> Result<String>;
}

impl SecurityBed for SameNodeHttp {
    fn server_app(&self) -> &'static str {
        "hserver"
    }

    /// Rewrites the agent's config file (SIGHUP) and waits for its config version to move.
    fn switch(&mut self, _from: &[Resource], to: &[Resource]) -> Result<()> {
        let version = |bed: &SameNodeHttp| -> Result<u64> {
            Ok(bed.node.status_json()?["config"]["version"]
                .as_u64()
                .unwrap_or(0))
        };
        let before = version(self)?;
        let config = to.iter().fold(self.config.clone(), |c, r| c + &r.yaml);
        self.node.reload_config(&config)?;
        ensure!(
            mesh_tests::wait_until(APPLY_TIMEOUT, || version(self).is_ok_and(|v| v > before)),
            "the agent did not load the changed config (version still {before})"
        );
        Ok(())
    }

    fn judge_metrics(&self) -> Result<String> {
        super::http_bed::metrics_of(self.node.admin())
    }
}

impl SecurityBed for CrossHttp {
    fn server_app(&self) -> &'static str {
        "xserver"
    }

    /// `meshctl delete` of what `to` has not (RequestAuthentication first: a policy
    /// requiring a principal without it refuses every request, so the probes cannot pass
    /// half-way), then one `meshctl apply` of `to`.
    fn switch(&mut self, from: &[Resource], to: &[Resource]) -> Result<()> {
        let mut gone: Vec<&Resource> = from
            .iter()
            .filter(|r| !to.iter().any(|t| t.kind == r.kind && t.name == r.name))
            .collect();
        gone.sort_by_key(|r| r.kind != "RequestAuthentication");
        for r in gone {
            self.bed.delete(r.kind, &r.name)?;
        }
        if !to.is_empty() {
            let yaml: String = to.iter().map(|r| r.yaml.as_str()).collect();
            self.bed.apply(&yaml)?;
        }
        Ok(())
    }

    /// node-2's: the destination judges requests that arrive over HBONE.
    fn judge_metrics(&self) -> Result<String> {
        self.bed.node2.metrics()
    }
}

/// Every sample of the rows of one bed.
#[derive(Default)]
pub struct Security {
    /// wrk at saturation and the fixed-rate runs, by variant (in [`VARIANTS`] order).
    pub wrk: [Vec<Value>; 3],
    pub rate: [Vec<Value>; 3],
    /// Seconds from starting a config change to its probes passing.
    pub applied_s: Vec<f64>,
    /// The token's length in bytes.
    pub token_bytes: usize,
    /// How long the rows took, config changes included.
    pub took_s: f64,
}

impl Security {
    pub fn to_json(&self) -> Value {
        let by_variant = |series: &[Vec<Value>; 3]| -> Value {
            VARIANTS
                .iter()
                .map(|v| (v.name().to_string(), json!(series[v.index()])))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        json!({
            "wrk": by_variant(&self.wrk),
            "rate": by_variant(&self.rate),
            "config_applied_s": self.applied_s,
            "token_bytes": self.token_bytes,
            "took_s": self.took_s,
            "secs": {"wrk": WRK_SECS, "rate": RATE_SECS},
        })
    }
}

/// Measures every variant on `r`'s bed (which has no request policy), `repeats` times,
/// rotating which goes first, and leaves the bed without request policy again.
pub fn run<B: SecurityBed>(r: &mut Runner<B>, service: &str) -> Result<Security> {
    let started = Instant::now();
    let issuer = Issuer::new();
    let mut at = Variant::None;
    let mut m = Security {
        token_bytes: issuer.bearer.len() - "authorization: Bearer ".len(),
        ..Security::default()
    };
    let measured = measure_all(r, service, &issuer, &mut at, &mut m);
    // Whatever happened, what the bed measures next runs without request policy.
    let restored = switch(r, &issuer, at, Variant::None).map(|_| ());
    measured.and(restored)?;
    m.took_s = started.elapsed().as_secs_f64();
    Ok(m)
}

fn measure_all<B: SecurityBed>(
    r: &mut Runner<B>,
    service: &str,
    issuer: &Issuer,
    at: &mut Variant,
    m: &mut Security,
) -> Result<()> {
    let (wrk_secs, rate_secs) = (
        r.plan.stream_secs.min(WRK_SECS),
        r.plan.stream_secs.min(RATE_SECS),
    );
    for rep in 0..r.plan.repeats {
        for k in 0..VARIANTS.len() {
            let variant = VARIANTS[(rep + k) % VARIANTS.len()];
            if variant != *at {
                m.applied_s.push(switch(r, issuer, *at, variant)?);
                *at = variant;
            }
            let token = [issuer.bearer.clone()];
            let headers: &[String] = if variant == Variant::Jwt { &token } else { &[] };
            let i = variant.index();
            let load = Load {
                secs: wrk_secs,
                headers,
            };
            m.wrk[i].push(judged(r, variant, |r| {
                saturation(r, Hop::Mesh, service, load)
            })?);
            let load = Load {
                secs: rate_secs,
                headers,
            };
            m.rate[i].push(judged(r, variant, |r| {
                fixed_rate(r, Hop::Mesh, service, load)
            })?);
        }
    }
    Ok(())
}

/// Changes the bed's config from `from` to `to` and waits until probes from the mesh
/// client see `to` in force; the seconds that took.
fn switch<B: SecurityBed>(
    r: &mut Runner<B>,
    issuer: &Issuer,
    from: Variant,
    to: Variant,
) -> Result<f64> {
    progress(&format!(
        "http request security: {} -> {}",
        from.name(),
        to.name()
    ));
    let started = Instant::now();
    let app = r.bed.server_app();
    let (old, new) = (resources(from, app, issuer), resources(to, app, issuer));
    r.bed.switch(&old, &new)?;
    let mut last = String::new();
    let in_force = mesh_tests::wait_until(APPLY_TIMEOUT, || {
        match probes(to)
            .iter()
            .map(|p| probe(&*r.bed, issuer, *p))
            .collect::<Result<Vec<_>>>()
        {
            Ok(seen) => {
                last = format!("{seen:?}");
                seen.iter().zip(probes(to)).all(|(s, p)| *s == p.2)
            }
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        }
    });
    if !in_force {
        bail!(
            "the {} request-security config was not in force after {APPLY_TIMEOUT:?}: probes \
             {:?} answered {last}",
            to.name(),
            probes(to)
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The status one probe gets from the mesh client.
fn probe<B: HttpBed>(bed: &B, issuer: &Issuer, (method, token, _): Probe) -> Result<u16> {
    let url = bed.url(Hop::Mesh, false);
    let mut args = vec!["http-get", &url, "--show-status", "--method", method];
    if token {
        args.extend(["-H", &issuer.bearer]);
    }
    let out = bed
        .client(Hop::Mesh)
        .run(bed.pod_tool(), &args, Duration::from_secs(10))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("status="))
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("pod-tool http-get printed no status: {text:?}"))
}

/// Runs `one` and checks the judging agent's decisions: a policy run must add at least one
/// allow decision per request the client completed, a run without policy none; either way
/// no request may be refused.
fn judged<B: SecurityBed>(
    r: &mut Runner<B>,
    variant: Variant,
    one: impl FnOnce(&mut Runner<B>) -> Result<Value>,
) -> Result<Value> {
    let app = r.bed.server_app();
    let count = |bed: &B, decision: &str| -> Result<u64> {
        let workload = format!("destination_workload=\"{app}\"");
        let decision = format!("decision=\"{decision}\"");
        Ok(sum_samples(
            &bed.judge_metrics()?,
            "mesh_request_authz_total",
            |l| l.contains(&workload) && l.contains(&decision),
        ))
    };
    let decisions = |bed: &B| -> Result<[u64; 3]> {
        Ok([
            count(bed, "allow")?,
            count(bed, "deny")?,
            count(bed, "unauthenticated")?,
        ])
    };
    let before = decisions(r.bed)?;
    let mut v = one(r)?;
    let after = decisions(r.bed)?;
    let [allowed, denied, unauthenticated] = [0, 1, 2].map(|i| after[i] - before[i].min(after[i]));
    let done = v["requests"].as_u64().unwrap_or(0);
    let ok = match variant {
        Variant::None => allowed == 0,
        Variant::Allow | Variant::Jwt => allowed >= done,
    } && denied == 0
        && unauthenticated == 0;
    ensure!(
        ok,
        "the {} run's requests were not judged as expected: the client completed {done}, the \
         judging agent counted {allowed} allowed, {denied} denied, {unauthenticated} \
         unauthenticated",
        variant.name()
    );
    v["verified"]["authz"] = json!({
        "allowed": allowed, "denied": denied, "unauthenticated": unauthenticated,
    });
    Ok(v)
}

/// The rows of one bed (`label`: e.g. "HTTP same node") and its note.
pub fn rows(label: &str, measured: &Result<Security>) -> (Vec<Row>, Vec<String>) {
    let what = |s: &str| format!("{label}, request security ¹²: {s}");
    let m = match measured {
        Ok(m) => m,
        Err(e) => {
            let row = Row::failed(
                what("HTTP ALLOW policy and JWT validation"),
                format!("{e:#}"),
            );
            return (vec![row], Vec::new());
        }
    };
    let w = |v: Variant| median(&m.wrk[v.index()], "ok_per_s");
    let p = |v: Variant| median(&m.rate[v.index()], "p50_us");
    let (none, allow, jwt) = (Variant::None, Variant::Allow, Variant::Jwt);
    let wrk = format!("keep-alive requests/s (wrk, {WRK_CONNECTIONS} connections)");
    let at = format!("request latency p50 at {RATE:.0} requests/s");
    let allow_what = "HTTP ALLOW policy (GET, paths /*) vs none";
    let jwt_what = "JWT (ES256) validated per request and requestPrincipals [*] vs none";
    let rows = vec![
        Row::new(what(&format!("{wrk}, {allow_what}")), "req/s").values(
            w(none),
            w(allow),
            Compare::Ratio,
        ),
        Row::new(what(&format!("{wrk}, {jwt_what}")), "req/s").values(
            w(none),
            w(jwt),
            Compare::Ratio,
        ),
        Row::new(what(&format!("{at}, {allow_what}")), "µs").values(
            p(none),
            p(allow),
            Compare::Delta,
        ),
        Row::new(what(&format!("{at}, {jwt_what}")), "µs").values(p(none), p(jwt), Compare::Delta),
    ];
    (rows, vec![note(label, m)])
}

/// The cost in words, how the runs were proven, CPU and every repetition's numbers.
fn note(label: &str, m: &Security) -> String {
    let w = |v: Variant| median(&m.wrk[v.index()], "ok_per_s");
    let p = |v: Variant| median(&m.rate[v.index()], "p50_us");
    let cpu = |v: Variant| {
        median_of(
            m.wrk[v.index()]
                .iter()
                .map(|s| {
                    s["cpu"]["agents_s"].as_f64().unwrap_or(f64::NAN) * 1e6
                        / s["requests"].as_f64().unwrap_or(f64::NAN)
                })
                .collect(),
        )
    };
    let judged: u64 = m.wrk[1..]
        .iter()
        .chain(&m.rate[1..])
        .flatten()
        .filter_map(|s| s["verified"]["authz"]["allowed"].as_u64())
        .sum();
    let mut out = format!("**{label}, request security:**");
    for v in [Variant::Allow, Variant::Jwt] {
        let _ = write!(
            out,
            " {}: {:+.1} % requests/s, {:+.1} µs p50, agent CPU {:.1} µs per request (none: \
             {:.1});",
            v.name(),
            100.0 * (w(v) / w(Variant::None) - 1.0),
            p(v) - p(Variant::None),
            cpu(v),
            cpu(Variant::None),
        );
    }
    let _ = write!(
        out,
        " the judging agent counted {judged} allowed requests in the policy runs (each run at \
         least its client's, none in the runs without policy, no refusals); config changes \
         were in force after {:.2} s (median of {}, probes from the mesh client); token {} \
         bytes; these rows took {:.0} s. Runs (each repetition in run order):",
        median_of(m.applied_s.clone()),
        m.applied_s.len(),
        m.token_bytes,
        m.took_s
    );
    for (series, key, what) in [
        (&m.wrk, "ok_per_s", "requests/s"),
        (&m.rate, "p50_us", "p50 (µs)"),
    ] {
        let _ = write!(out, "\n- {what}:");
        for v in VARIANTS {
            let list: Vec<String> = series[v.index()]
                .iter()
                .map(|s| format!("{:.1}", s[key].as_f64().unwrap_or(f64::NAN)))
                .collect();
            let _ = write!(out, " {} [{}];", v.name(), list.join(", "));
        }
        out.pop();
    }
    out
}

/// The footnote of the rows' mark.
pub const FOOTNOTE: &str = "¹² Baseline column: the mesh path with no request-level policy \
on the server pod; mesh column: with one, measured alternately in the same run (each variant \
once per repetition, rotating which goes first; wrk for 2 s and the fixed rate for 1 s per run, \
less with `--quick`). ALLOW \
policy: `to: {methods: [GET], paths: [\"/*\"]}`. JWT: a RequestAuthentication with an inline \
JWKS (one EC P-256 key) and an ALLOW policy `from: {requestPrincipals: [\"*\"]}`; every \
request carries a valid ES256 token in `authorization: Bearer`, verified by the agent per \
request and removed before the app. Same node, the source's HTTP proxy judges the request \
before sending it (no extra hop); cross node, the destination's agent serves the port as HTTP \
in front of the app (a second parse and HTTP hop on node-2), where without such policy it \
relays the HBONE stream at L4.";
