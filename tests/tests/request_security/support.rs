//! Building blocks of the request-security tests: one node with a client pod, a web pod
//! (HTTP and gRPC apps) and a pod outside the mesh; the policies and the JWT issuer they
//! use; what a refusal looks like.

use std::io::Write;
use std::path::{Path, PathBuf};

use mesh_tests::jwt::{claims, jwks, SigningKey};
use mesh_tests::mesh::{workload_yaml, MeshNode};
use mesh_tests::observe::{grpc_server, http_server, pod_tool_json};
use mesh_tests::two_nodes::authz_policy;
use mesh_tests::{temp_dir, wait_until, wait_until_ok, Bridge, Pod, PodProcess, TempDir};
use serde_json::Value;

pub use crate::http_support::{served_on, show, Shown, APP_PORT, T};

/// This suite's bridge subnets (no other suite uses them); each test takes the first free.
const BRIDGES: [u8; 6] = [47, 48, 49, 43, 16, 19];

/// The VIP of Service `web` (HTTP on port 80 and gRPC on [`GRPC_PORT`]).
pub const VIP: &str = "10.96.0.47";
/// How many ways into web [`Bed::every_way`] takes.
pub const WAYS: u64 = 3;
/// Where the gRPC app listens, on the VIP and in the pod.
pub const GRPC_PORT: u16 = 9090;

/// The issuer of every token in this suite, and the audience its tokens are for.
pub const ISSUER: &str = "https://issuer.mesh-tests.example";
pub const AUDIENCE: &str = "web";

/// Service `web` (`app: web`): port 80 -> [`APP_PORT`] as HTTP/1.1, [`GRPC_PORT`] as gRPC.
pub fn web_service() -> String {
    format!(
        "---\napiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  vips: [\"{VIP}\"]\n  ports:\n  - {{port: 80, targetPort: {APP_PORT}, protocol: http}}\n  - {{port: {GRPC_PORT}, targetPort: {GRPC_PORT}, protocol: grpc}}\n  selector: {{app: web}}\n"
    )
}

/// An AuthorizationPolicy `name` for `app: web` with `action` and these `rules` (YAML list
/// items, indented by two spaces, e.g. `"  - to: {methods: [GET]}\n"`).
pub fn web_policy(name: &str, action: &str, rules: &str) -> String {
    authz_policy(
        "default",
        name,
        &format!("  selector: {{app: web}}\n  action: {action}\n  rules:\n{rules}"),
    )
}

/// The suite's token issuer: an EC and an RSA key, both in its published key set.
pub struct Issuer {
    pub ec: SigningKey,
    pub rsa: SigningKey,
}

impl Issuer {
    pub fn generate() -> Issuer {
        Issuer {
            ec: SigningKey::es256("ec-1"),
            rsa: SigningKey::rs256("rsa-1"),
        }
    }

    /// The key set as a JSON string.
    pub fn jwks(&self) -> String {
        jwks(&[&self.ec, &self.rsa])
    }

    /// A RequestAuthentication `name` for `app: web` accepting this issuer's tokens for
    /// [`AUDIENCE`] in `Authorization: Bearer`; `more` adds lines to its one jwtRule
    /// (indented by six spaces, e.g. `"      forwardOriginalToken: true\n"`).
    pub fn request_authentication(&self, name: &str, more: &str) -> String {
        format!(
            "---\napiVersion: mesh/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{app: web}}\n  jwtRules:\n    - issuer: \"{ISSUER}\"\n      audiences: [{AUDIENCE}]\n      jwks: '{}'\n{more}",
            self.jwks()
        )
    }

    /// A valid ES256 token for `subject` with these extra claims merged in.
    pub fn token(&self, subject: &str, extra: &Value) -> String {
        self.ec.sign(&mesh_tests::jwt::merged(
            &claims(ISSUER, subject, AUDIENCE),
            extra,
        ))
    }
}

/// `Authorization: Bearer <token>` as a pod-tool `-H` argument.
pub fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}")
}

/// Fails unless `r` is the mesh's refusal by AuthorizationPolicy.
pub fn assert_rbac_denied(r: &Shown, what: &str) {
    assert_eq!(r.status, 403, "{what}: {r:?}");
    assert_eq!(r.body, "RBAC: access denied\n", "{what}: {r:?}");
    assert_eq!(
        r.header("x-mesh-response-flags"),
        Some("RBAC"),
        "{what}: {r:?}"
    );
    assert_eq!(
        r.header("x-served-by"),
        None,
        "{what}: the app answered: {r:?}"
    );
}

/// Fails unless `r` is the mesh's refusal of an invalid token; returns its
/// `error_description`.
pub fn assert_jwt_refused(r: &Shown, what: &str) -> String {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    assert_eq!(
        r.header("x-mesh-response-flags"),
        Some("JWT"),
        "{what}: {r:?}"
    );
    assert_eq!(
        r.header("x-served-by"),
        None,
        "{what}: the app answered: {r:?}"
    );
    let challenge = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no www-authenticate: {r:?}"));
    let description = challenge
        .strip_prefix("Bearer error=\"invalid_token\", error_description=\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{what}: www-authenticate {challenge:?}"));
    description.to_owned()
}

/// Fails unless the app answered `r` with 200.
pub fn assert_served(r: &Shown, what: &str) {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    assert_eq!(r.header("x-served-by"), Some("web"), "{what}: {r:?}");
}

/// One node: `client` (.2, in the mesh), `web` (.3, in the mesh, `app: web`, http-serve on
/// [`APP_PORT`] and grpc-serve on [`GRPC_PORT`], both named `web`), and `outsider` (.4, on
/// the same bridge but not in the mesh: plaintext into web). The node's config is the
/// Workloads, [`web_service`], a MeshConfig writing the access log to [`Bed::access_log`],
/// and the policies under test, which [`Bed::set_policies`] replaces.
///
/// Fields drop in order: the agent first, then servers, pods, the bridge.
pub struct Bed {
    pub node: MeshNode,
    _servers: Vec<PodProcess>,
    pub client: Pod,
    pub web: Pod,
    pub outsider: Pod,
    _bridge: Bridge,
    /// Everything but the policies.
    base: String,
    dir: TempDir,
}

impl Bed {
    pub fn new(policies: &str) -> Bed {
        let dir = temp_dir().unwrap();
        let bridge = Bridge::first_free(&BRIDGES).unwrap();
        let client = Pod::new(&bridge, "client", 2).unwrap();
        let web = Pod::new(&bridge, "web", 3).unwrap();
        let outsider = Pod::new(&bridge, "outsider", 4).unwrap();
        let servers = vec![
            http_server(&web, "web", APP_PORT),
            grpc_server(&web, "web", GRPC_PORT),
        ];
        let base = workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")])
            + &workload_yaml("web", "web-uid", &[web.ip()], &[("app", "web")])
            + &web_service()
            + &format!(
                "---\napiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec:\n  observability:\n    accessLog: {{enabled: true, path: \"{}\"}}\n",
                access_log_in(dir.path()).display()
            );
        let node = MeshNode::start(&(base.clone() + policies)).unwrap();
        node.enroll(&client, "client-uid", "client").unwrap();
        node.enroll(&web, "web-uid", "web").unwrap();
        Bed {
            node,
            _servers: servers,
            client,
            web,
            outsider,
            _bridge: bridge,
            base,
            dir,
        }
    }

    /// Replaces the policies (and RequestAuthentications) and waits until the agent serves
    /// the new config.
    pub fn set_policies(&mut self, policies: &str) {
        self.node
            .reload_config_and_wait(&(self.base.clone() + policies))
            .unwrap();
    }

    /// A request from `client` to Service `web` (`path` with query): the same-node path.
    pub fn via_mesh(&self, method: &str, path: &str, extra: &[&str]) -> Shown {
        let url = format!("http://{VIP}{path}");
        show(
            &self.client,
            &url,
            &[&["--method", method][..], extra].concat(),
        )
    }

    /// A request from `client` straight to web's app port: the same-node path without a
    /// Service in between.
    pub fn direct(&self, method: &str, path: &str, extra: &[&str]) -> Shown {
        let url = format!("http://{}:{APP_PORT}{path}", self.web.ip());
        show(
            &self.client,
            &url,
            &[&["--method", method][..], extra].concat(),
        )
    }

    /// A request from `outsider` straight to web's app port: plaintext into the pod.
    pub fn plaintext(&self, method: &str, path: &str, extra: &[&str]) -> Shown {
        let url = format!("http://{}:{APP_PORT}{path}", self.web.ip());
        show(
            &self.outsider,
            &url,
            &[&["--method", method][..], extra].concat(),
        )
    }

    /// The request every way in ([`WAYS`]), labelled for messages: `(way, response)`.
    pub fn every_way(
        &self,
        method: &str,
        path: &str,
        extra: &[&str],
    ) -> Vec<(&'static str, Shown)> {
        vec![
            (
                "same node via the Service",
                self.via_mesh(method, path, extra),
            ),
            ("same node to the pod", self.direct(method, path, extra)),
            ("plaintext", self.plaintext(method, path, extra)),
        ]
    }

    /// The agent's access log lines so far, parsed.
    pub fn access_log(&self) -> Vec<Value> {
        access_log_lines(&access_log_in(self.dir.path()))
    }

    /// `pod-tool grpc-call` from `pod` to `addr` (`ip:port`): its JSON summary.
    pub fn grpc_call(&self, pod: &Pod, addr: &str, count: usize, extra: &[&str]) -> Value {
        let count = count.to_string();
        let args = [
            &["grpc-call", "--connect", addr, "--count", &count][..],
            extra,
        ]
        .concat();
        pod_tool_json(pod, &args)
    }
}

fn access_log_in(dir: &Path) -> PathBuf {
    dir.join("access.log")
}

/// Clients that each send several requests on one keep-alive connection (`pod-tool
/// http-get --repeat`), each request after the first only once the test lets them (so it
/// can change config in between).
pub struct KeepAliveClients {
    clients: Vec<(&'static str, PodProcess)>,
    gate: PathBuf,
    _dir: TempDir,
}

impl KeepAliveClients {
    /// Starts one client per `(way, pod, url, extra args)`, sending `requests` requests.
    pub fn start(requests: usize, clients: &[(&'static str, &Pod, String, &[&str])]) -> Self {
        let dir = temp_dir().unwrap();
        let gate = dir.path().join("gate");
        let (repeat, gate_arg) = (requests.to_string(), gate.display().to_string());
        let clients = clients
            .iter()
            .map(|(way, pod, url, extra)| {
                let args = [
                    &[
                        "http-get",
                        url,
                        "--repeat",
                        &repeat,
                        "--wait-file",
                        &gate_arg,
                    ][..],
                    extra,
                ]
                .concat();
                let process = pod
                    .spawn(env!("CARGO_BIN_EXE_pod-tool"), &args)
                    .unwrap_or_else(|e| panic!("pod-tool {args:?}: {e:#}"));
                (*way, process)
            })
            .collect();
        KeepAliveClients {
            clients,
            gate,
            _dir: dir,
        }
    }

    /// Lets every client send its next request.
    pub fn release(&self) {
        let mut gate = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.gate)
            .unwrap();
        writeln!(gate, "next").unwrap();
    }

    /// Each client's `n`-th answer (from 1) as `(way, answer)`, once all have it or have
    /// exited: `{"status", "headers", "body"}`, or `None` when the client failed first (its
    /// connection closed); the client's error is then in `errors`.
    pub fn nth(&mut self, n: usize) -> Vec<(&'static str, Option<Value>)> {
        self.clients
            .iter_mut()
            .map(|(way, client)| {
                wait_until(T, || printed(client).len() >= n || !client.is_running());
                (*way, printed(client).into_iter().nth(n - 1))
            })
            .collect()
    }

    /// Each client's `n`-th answer as `(status, x-mesh-response-flags)`; fails if one is
    /// missing.
    pub fn statuses(&mut self, n: usize) -> Vec<(&'static str, u64, Value)> {
        let answers = self.nth(n);
        answers
            .into_iter()
            .map(|(way, answer)| {
                let a = answer.unwrap_or_else(|| panic!("{way}: no answer {n}: {}", self.errors()));
                (
                    way,
                    a["status"].as_u64().unwrap(),
                    a["headers"]["x-mesh-response-flags"].clone(),
                )
            })
            .collect()
    }

    /// What the clients wrote on stderr.
    pub fn errors(&self) -> String {
        self.clients
            .iter()
            .map(|(way, c)| format!("{way}: {}", c.stderr()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Waits for every client to exit and fails unless all succeeded (every request went
    /// out on its one connection).
    pub fn finish(mut self) {
        for (way, client) in &mut self.clients {
            let out = client.wait_output(T).unwrap();
            assert!(out.status.success(), "{way} failed: {}", client.stderr());
        }
    }
}

/// The answers a keep-alive client printed so far.
fn printed(client: &PodProcess) -> Vec<Value> {
    client
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The lines of a JSON access log, parsed (none when the file does not exist yet).
pub fn access_log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits until the access log has a line for `path` with `code` and `flags`, and returns
/// it (a request is logged as its response ends, a moment after the client has it).
pub fn wait_log_line(bed: &Bed, path: &str, code: u16, flags: &str) -> Value {
    wait_until_ok(T, || {
        let lines = bed.access_log();
        lines
            .iter()
            .find(|l| {
                l["path"] == path && l["response_code"] == code && l["response_flags"] == flags
            })
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!("no access log line for {path} with {code} {flags}: {lines:#?}")
            })
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}
