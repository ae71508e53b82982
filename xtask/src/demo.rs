//! `cargo xtask demo`: the whole mesh in a minute, on this machine.
//!
//! Builds everything, then starts a control plane and two node agents (`node-1`, `node-2`,
//! joined with tokens, certificates from the mesh CA), creates pods (network namespaces and
//! cgroups on one bridge) and enrolls each with its node's agent:
//!
//! - `client` on node-1; `web-v1` on node-1 and `web-v2` on node-2 behind Service `web`
//!   (HTTP, subsets v1 and v2); `db` on node-2 behind Service `db`.
//! - A Route sends requests with `x-canary: true` to v2 and splits the rest 90/10, per
//!   request; cross-node requests travel over HBONE (mutual TLS between the agents).
//! - An AuthorizationPolicy lets only `web`'s identity call `db`: the client's request is
//!   denied with 403.
//! - Another lets `web` take only GET and HEAD, judged per request where it arrives: the
//!   client's DELETE is refused with 403 while its GETs pass, on the same connection.
//!
//! It prints what each request got, `mesh-agent status` of node-1 (routes with requests per
//! rule, open connections and their transport) and the Istio request metrics, then removes
//! everything again.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_tests::two_nodes::{authz_policy, metrics, PodDef, TwoNodes};
use mesh_tests::Pod;

use crate::cmd::progress;
use crate::setup;

const WEB_VIP: &str = "10.96.0.20";
const DB_VIP: &str = "10.96.0.21";

pub fn run() -> Result<()> {
    setup::require_root("cargo xtask demo")?;
    setup::ensure_packages(&[])?;
    setup::build_all(false)?;

    let config = format!(
        "{}{}{}{}{}",
        http_service("web", WEB_VIP, "web", "  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n"),
        http_service("db", DB_VIP, "db", ""),
        "---\napiVersion: mesh/v1\nkind: Route\nmetadata: {name: web, namespace: default}\nspec:\n  service: web\n  timeoutMs: 3000\n  retries: {attempts: 2, retryOn: [connect-failure, reset, gateway-error]}\n  rules:\n  - name: canary\n    match: {headers: {x-canary: \"true\"}}\n    backends: [{service: web, subset: v2}]\n  - name: split\n    backends: [{service: web, subset: v1, weight: 90}, {service: web, subset: v2, weight: 10}]\n",
        authz_policy(
            "default",
            "db-only-from-web",
            "  selector: {app: db}\n  action: ALLOW\n  rules:\n  - from: {principals: [\"spiffe://cluster.local/ns/default/sa/web\"]}\n"
        ),
        authz_policy(
            "default",
            "web-read-only",
            "  selector: {app: web}\n  action: ALLOW\n  rules:\n  - to: {methods: [GET, HEAD]}\n"
        ),
    );
    println!("\n--- mesh config (applied with meshctl) ---\n{config}");
    progress("starting mesh-control, two node agents, and pods client, web-v1 (node-1), web-v2, db (node-2)");
    let mut mesh = TwoNodes::builder()
        .pod(PodDef::mesh("client", 0, "client"))
        .pod(
            PodDef::mesh("web-v1", 0, "web")
                .label("app", "web")
                .label("version", "v1"),
        )
        .pod(
            PodDef::mesh("web-v2", 1, "web")
                .label("app", "web")
                .label("version", "v2"),
        )
        .pod(PodDef::mesh("db", 1, "db"))
        .config(&config)
        .start()
        .context("starting the demo mesh")?;
    mesh.serve_http("web-v1", 8080, "web-v1");
    mesh.serve_http("web-v2", 8080, "web-v2");
    mesh.serve_http("db", 8080, "db");
    let client = &mesh.pod("client").pod;

    progress(&format!(
        "client -> http://{WEB_VIP}/ twenty times: the split rule (90/10)"
    ));
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let out = get(client, WEB_VIP, &[])?;
        *answered.entry(served_by(&out)).or_default() += 1;
    }
    println!("  answered by: {answered:?}");

    progress("client -> web with `x-canary: true`, three times: the canary rule (v2, on node-2, over HBONE)");
    for _ in 0..3 {
        let out = get(client, WEB_VIP, &["-H", "x-canary: true"])?;
        println!("  {}", served_by(&out));
    }

    progress(&format!(
        "client -> http://{DB_VIP}/: only web's identity may call db"
    ));
    let out = get(client, DB_VIP, &[])?;
    println!("  {}", out.lines().next().unwrap_or_default());
    println!(
        "  (node-2's agent checked the client's certificate identity against db's policy and\n   \
         refused the HBONE stream; the client's node answered 403 to that request)"
    );

    progress("client -> DELETE http://web/: web takes only GET and HEAD (judged per request)");
    let out = get(client, WEB_VIP, &["--method", "DELETE"])?;
    for line in out
        .lines()
        .filter(|l| l.starts_with("status=") || l.starts_with("x-mesh-response-flags"))
    {
        println!("  {line}");
    }
    println!(
        "  (the destination's agent judged the request: on node-2 its inbound HTTP server, on\n   \
         node-1 the source's proxy with web's policy; the connection stays open for GETs)"
    );

    progress("mesh-agent status on node-1");
    print!(
        "{}",
        mesh.agent(0)
            .cli_ok(&["status"])
            .context("mesh-agent status")?
    );
    progress("istio_requests_total on node-1 (/metrics)");
    for line in metrics(mesh.agent(0))?
        .lines()
        .filter(|l| l.starts_with("istio_requests_total"))
    {
        println!("  {line}");
    }
    progress("cleaning up: agents, control plane, pods, bridge, pinned programs");
    drop(mesh);
    Ok(())
}

/// A Service `name` at `vip`:80 -> 8080 (HTTP) selecting `app: <app>`, with `extra` spec lines.
fn http_service(name: &str, vip: &str, app: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  vips: [\"{vip}\"]\n  ports: [{{port: 80, targetPort: 8080, protocol: http}}]\n  selector: {{app: {app}}}\n{extra}"
    )
}

/// `pod-tool http-get --show-headers` from `pod` to `http://<vip>/`: status line, headers,
/// body.
fn get(pod: &Pod, vip: &str, extra: &[&str]) -> Result<String> {
    let url = format!("http://{vip}/");
    let mut args = vec!["http-get", &url, "--timeout-ms", "3000", "--show-headers"];
    args.extend_from_slice(extra);
    let out = pod.run(
        mesh_tests::cargo_bin("pod-tool"),
        args,
        Duration::from_secs(10),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `x-served-by` header of a `--show-headers` answer.
fn served_by(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-served-by: "))
        .unwrap_or("?")
        .to_owned()
}
