//! `jwksUri` (issue 10): the control plane fetches an issuer's JSON Web Key Set from an HTTPS
//! server in a test pod (`pod-tool https-serve`, with a certificate from a CA the test makes
//! and gives to `mesh-control serve --jwks-ca`) and pushes it to the agent inline; the agent
//! itself makes no outbound call. What the agent holds is read from its `/config_dump`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_tests::control::ControlPlane;
use mesh_tests::jwt::{claims, jwks, SigningKey};
use mesh_tests::mesh::MeshNode;
use mesh_tests::{cargo_bin, wait_until, Pod, PodProcess, TempDir};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

use super::support::{apply_fails, cp_status, url, vip, web, Mesh, APP_PORT, T, VIP};

/// How often the control plane fetches each URI in these tests (`--jwks-refresh-secs`).
const REFRESH: Duration = Duration::from_secs(1);
/// The issuer pod's HTTPS port.
const ISSUER_PORT: u16 = 8443;
const RULE_NAME: &str = "web-jwt";
const ISSUER: &str = "https://issuer.test";

/// A certificate authority made for one test.
struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            cert_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `ip` and its key (PEM).
    fn server_cert(&self, ip: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![ip.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The issuer: a pod (not in the mesh) serving `jwks.json` over HTTPS.
struct IssuerServer {
    server: Option<PodProcess>,
    pod: Pod,
    dir: TempDir,
}

impl IssuerServer {
    /// Serving from `dir`.
    fn start(pod: Pod, dir: TempDir, ca: &TestCa, jwks: &str) -> IssuerServer {
        let mut issuer = IssuerServer {
            server: None,
            pod,
            dir,
        };
        issuer.publish(jwks);
        issuer.serve_with_cert_from(ca);
        issuer
    }

    fn uri(&self) -> String {
        format!("https://{}:{ISSUER_PORT}/keys.json", self.pod.ip())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the served key set at once (written aside, then renamed over).
    fn publish(&self, jwks: &str) {
        let tmp = self.file("jwks.json.tmp");
        std::fs::write(&tmp, jwks).unwrap();
        std::fs::rename(&tmp, self.file("jwks.json")).unwrap();
    }

    /// (Re)starts the server with a certificate issued by `ca`.
    fn serve_with_cert_from(&mut self, ca: &TestCa) {
        drop(self.server.take());
        let (cert, key) = ca.server_cert(&self.pod.ip().to_string());
        std::fs::write(self.file("cert.pem"), cert).unwrap();
        std::fs::write(self.file("key.pem"), key).unwrap();
        let listen = format!("{}:{ISSUER_PORT}", self.pod.ip());
        let path = |name| self.file(name).display().to_string();
        let args = [
            "https-serve",
            "--listen",
            &listen,
            "--cert",
            &path("cert.pem"),
            "--key",
            &path("key.pem"),
            "--file",
            &path("jwks.json"),
        ];
        self.server = Some(mesh_tests::observe::start_server(&self.pod, &args));
    }
}

/// A control plane trusting `ca` for jwksUris (refreshing every [`REFRESH`]), an agent with
/// the web pod, and the issuer pod serving `first` with a certificate from `ca`.
fn start(bridge_index: u8, ca: &TestCa, first: &str) -> (Mesh, IssuerServer) {
    let dir = mesh_tests::temp_dir().unwrap();
    let ca_file = dir.path().join("jwks-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let refresh = REFRESH.as_secs().to_string();
    let cp = ControlPlane::start_embedded_with_args(&[
        "--jwks-ca",
        &ca_file.display().to_string(),
        "--jwks-refresh-secs",
        &refresh,
    ])
    .expect("starting mesh-control");
    let urls = [cp.url()];
    let mesh = Mesh::start_on(bridge_index, cp, &urls, &[web("web", "web")], &[]);
    // Port 80 as HTTP, so the web pod's agent judges each request (tokens included).
    mesh.cp
        .apply(&format!(
            "apiVersion: mesh/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  vips: [\"{VIP}\"]\n  \
             ports: [{{port: 80, targetPort: {APP_PORT}, protocol: http}}]\n  selector: {{app: web}}\n"
        ))
        .unwrap();
    let pod = Pod::new(&mesh._bridge, "issuer", 10).unwrap();
    (mesh, IssuerServer::start(pod, dir, ca, first))
}

fn request_authentication(name: &str, uri: &str) -> String {
    format!(
        "apiVersion: mesh/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  selector: {{app: web}}\n  jwtRules:\n  - issuer: {ISSUER}\n    jwksUri: {uri}\n"
    )
}

/// The first rule of RequestAuthentication `name` as the agent holds it.
fn agent_rule(node: &MeshNode, name: &str) -> Option<Value> {
    let (code, body) = mesh_tests::http::http_get(node.admin(), "/config_dump").ok()?;
    assert_eq!(code, 200, "{body}");
    let dump: Value = serde_json::from_str(&body).unwrap();
    dump["resources"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == "RequestAuthentication" && r["metadata"]["name"] == name)
        .map(|r| r["spec"]["jwtRules"][0].clone())
}

/// The key set the agent holds for RequestAuthentication `name`, if any.
fn agent_jwks(node: &MeshNode, name: &str) -> Option<String> {
    agent_rule(node, name)?["jwks"].as_str().map(str::to_owned)
}

/// Waits until the agent holds `jwks` for [`RULE_NAME`]; returns how long that took.
fn wait_agent_jwks(node: &MeshNode, jwks: &str) -> Duration {
    let start = Instant::now();
    let mut last = None;
    let arrived = wait_until(T, || {
        last = agent_jwks(node, RULE_NAME);
        last.as_deref() == Some(jwks)
    });
    assert!(arrived, "the agent holds {last:?}, expected {jwks}");
    start.elapsed()
}

/// The status of a GET from the client pod to the web service carrying `token` as a bearer
/// token: the web pod's agent verifies it with the keys it was pushed.
fn status_with_token(mesh: &Mesh, token: &str) -> String {
    let header = format!("authorization: Bearer {token}");
    let target = url(vip(), 80);
    let args = ["http-get", "--show-status", "-H", &header, &target];
    let out = mesh
        .client
        .run(cargo_bin("pod-tool"), args, T)
        .expect("pod-tool http-get");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

/// `meshctl status`'s entry for the fetches of `uri`.
fn fetch_status(mesh: &Mesh, uri: &str) -> Value {
    let status = cp_status(&mesh.cp);
    let entry = status["jwks"]
        .as_array()
        .and_then(|all| all.iter().find(|j| j["uri"] == uri).cloned());
    entry.unwrap_or_else(|| panic!("no fetch of {uri} in {status}"))
}

fn control_plane_log(mesh: &mut Mesh) -> String {
    mesh.cp.process().expect("mesh-control runs").log()
}

/// The key set is fetched once the RequestAuthentication is applied and arrives inline at
/// the agent, while `meshctl get` shows the resource as written; a key rotated on the
/// server arrives within the refresh interval (plus the push), after which the destination's
/// agent accepts tokens signed with the new key and refuses those signed with the old one.
#[test]
fn fetched_keys_reach_the_agent_inline_and_rotations_follow() {
    mesh_tests::require_root();
    let ca = TestCa::new("jwks test CA");
    let (old_key, new_key) = (SigningKey::es256("old"), SigningKey::es256("new"));
    let first = jwks(&[&old_key]);
    let (mesh, issuer) = start(44, &ca, &first);

    mesh.cp
        .apply(&request_authentication(RULE_NAME, &issuer.uri()))
        .unwrap();
    let took = wait_agent_jwks(&mesh.node, &first);
    let rule = agent_rule(&mesh.node, RULE_NAME).unwrap();
    assert_eq!(rule["jwksUri"], issuer.uri(), "the URI is kept: {rule}");
    let mut fetched = Value::Null;
    let shown = wait_until(T, || {
        fetched = fetch_status(&mesh, &issuer.uri());
        fetched["lastSuccess"].as_u64() > Some(0) && fetched["lastError"] == ""
    });
    assert!(shown, "meshctl status -o json: {fetched}");
    let table = mesh.cp.meshctl_ok(&["status"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&issuer.uri()) && l.trim_end().ends_with(" ok")),
        "{table}"
    );
    println!("first key set at the agent {took:?} after the apply");
    let stored = mesh
        .cp
        .meshctl_ok(&["get", "requestauthentication", "-o", "json"])
        .unwrap();
    assert!(
        stored.contains(&issuer.uri()) && !stored.contains("\"jwks\""),
        "meshctl get shows the resource as written: {stored}"
    );

    let (old_token, new_token) = (
        old_key.sign(&claims(ISSUER, "alice", "web")),
        new_key.sign(&claims(ISSUER, "alice", "web")),
    );
    assert_eq!(status_with_token(&mesh, &old_token), "status=200");
    assert_eq!(status_with_token(&mesh, &new_token), "status=401");

    let rotated = jwks(&[&new_key]);
    issuer.publish(&rotated);
    let took = wait_agent_jwks(&mesh.node, &rotated);
    println!("rotated key set at the agent {took:?} after it was published");
    assert!(
        took <= REFRESH + Duration::from_secs(2),
        "the rotated set took {took:?} with a {REFRESH:?} refresh"
    );
    assert_eq!(status_with_token(&mesh, &new_token), "status=200");
    assert_eq!(status_with_token(&mesh, &old_token), "status=401");
}

/// What the fetcher refuses keeps the last good set at the agent, and says why in the log:
/// a server whose certificate is from a CA not given with --jwks-ca, a body that is not a
/// valid key set, a redirect. A plain-http jwksUri is refused at apply.
#[test]
fn untrusted_or_invalid_key_sets_are_not_pushed_and_the_last_good_stays() {
    mesh_tests::require_root();
    let ca = TestCa::new("jwks test CA");
    let good = jwks(&[&SigningKey::es256("good")]);
    let (mut mesh, mut issuer) = start(45, &ca, &good);
    mesh.cp
        .apply(&request_authentication(RULE_NAME, &issuer.uri()))
        .unwrap();
    wait_agent_jwks(&mesh.node, &good);

    let err = apply_fails(
        &mesh.cp,
        &request_authentication("plain", "http://issuer.test/keys"),
    );
    assert!(
        err.contains("spec.jwtRules[0].jwksUri") && err.contains("must be an https:// URL"),
        "{err}"
    );

    // Served by a certificate the control plane does not trust: never fetched.
    issuer.serve_with_cert_from(&TestCa::new("someone else's CA"));
    issuer.publish(&jwks(&[&SigningKey::es256("from-an-impostor")]));
    let uri = issuer.uri();
    let logged = wait_until(T, || {
        let log = control_plane_log(&mut mesh);
        log.lines().any(|l| {
            l.contains("fetching a JSON Web Key Set failed")
                && l.contains(&uri)
                && l.contains("TLS handshake failed")
        })
    });
    assert!(
        logged,
        "no failed fetch logged: {}",
        control_plane_log(&mut mesh)
    );
    let failed = fetch_status(&mesh, &uri);
    assert!(
        failed["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("TLS handshake failed")),
        "meshctl status shows why: {failed}"
    );
    assert_eq!(
        agent_jwks(&mesh.node, RULE_NAME).as_deref(),
        Some(good.as_str())
    );

    // Trusted again, but what it serves is no key set.
    issuer.serve_with_cert_from(&ca);
    issuer.publish(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#);
    let logged = wait_until(T, || {
        control_plane_log(&mut mesh)
            .lines()
            .any(|l| l.contains(&uri) && l.contains("the key set is invalid"))
    });
    assert!(
        logged,
        "no invalid set logged: {}",
        control_plane_log(&mut mesh)
    );

    // A redirect is not followed.
    let redirect = format!("https://{}:{ISSUER_PORT}/redirect", issuer.pod.ip());
    mesh.cp
        .apply(&request_authentication("redirected", &redirect))
        .unwrap();
    let logged = wait_until(T, || {
        control_plane_log(&mut mesh)
            .lines()
            .any(|l| l.contains(&redirect) && l.contains("redirects are not followed"))
    });
    assert!(
        logged,
        "no refused redirect logged: {}",
        control_plane_log(&mut mesh)
    );
    assert_eq!(agent_jwks(&mesh.node, "redirected"), None);
    assert_eq!(
        agent_jwks(&mesh.node, RULE_NAME).as_deref(),
        Some(good.as_str())
    );
}
