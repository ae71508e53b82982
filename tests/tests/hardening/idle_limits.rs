//! Finding 5, "no idle limits": connections that never speak, or too many connections, held
//! the servers' file descriptors for good. Every listener now bounds both (see
//! `mesh_proto::limits`), and these tests speak to the real servers as such a client would:
//!
//! - the control plane closes a connection that never starts TLS, one that finishes TLS and
//!   sends nothing, and one that is a real HTTP/2 client making no call, but not connections
//!   in use; so does a pod's HBONE port (with a client holding a mesh certificate, so it gets
//!   past the handshake);
//! - past `--max-connections`, the control plane closes new connections at once and says so
//!   in its log, while the clients it already serves (an admin client, an agent's config
//!   stream) keep working, and the slots come back when the flood ends;
//! - the agent's admin HTTP port and admin socket close idle connections (before the first
//!   request and between keep-alive requests) and trickled request bodies, and the HTTP port
//!   closes new connections at once past its 128.
//!
//! Each bound is 10 s, so each wait here is a little over 10 s, spent on all probes at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_control::client::{connect_admin, control_plane_client_config};
use mesh_identity::tls::{client_config, Expect};
use mesh_identity::{Credential, SpiffeId, TrustBundle};
use mesh_proto::v1 as pb;
use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::{service_yaml, MeshNode, NODE};
use mesh_tests::two_nodes::{PodDef, TwoNodes};
use mesh_tests::{http_get, require_root, wait_until, wait_until_ok};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

#[allow(dead_code)] // only `issue` is used here
#[path = "../mesh_identity/hbone.rs"]
mod hbone;
#[path = "idle_limits/hbone_port.rs"]
mod hbone_port;

/// Every bound under test (TLS handshake, first request, admin request head and body).
const BOUND: Duration = Duration::from_secs(10);
/// A silent connection must be closed no earlier than this (so it is the bound that closed
/// it, not some refusal)...
const NOT_BEFORE: Duration = Duration::from_secs(8);
/// ... and no later than this (the bound, plus room for a loaded machine).
const NOT_AFTER: Duration = Duration::from_secs(16);
/// How long a probe waits for the close before it reports the connection still open.
const GIVE_UP: Duration = Duration::from_secs(20);
/// Past a connection limit, a new connection must be closed within this.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);
const HBONE_PORT: u16 = 15008;

/// How far a probe goes before falling silent.
#[derive(Clone)]
enum Speak {
    /// Not even the TLS handshake.
    Nothing,
    /// The TLS handshake, then nothing (not even the HTTP/2 preface).
    Tls(Arc<ClientConfig>),
    /// A real HTTP/2 client (preface, settings, answers pings) that never makes a request.
    Http2(Arc<ClientConfig>),
}

/// Goes as far as `speak` on `tcp`, then stays silent: how long until the server closed the
/// connection, measured from the moment the probe fell silent.
async fn silent(tcp: TcpStream, speak: Speak) -> Result<Duration, String> {
    let config = match speak {
        Speak::Nothing => return closed_after(tcp, Instant::now(), GIVE_UP).await,
        Speak::Tls(ref config) | Speak::Http2(ref config) => config.clone(),
    };
    let server = ServerName::from(tcp.peer_addr().map_err(|e| e.to_string())?.ip());
    let tls = TlsConnector::from(config)
        .connect(server, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    if let Speak::Tls(_) = speak {
        return closed_after(tls, Instant::now(), GIVE_UP).await;
    }
    let (requests, connection) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let since = Instant::now();
    // The connection ends when the server closes it (holding `requests` keeps the client
    // from closing it itself).
    let ended = tokio::time::timeout(GIVE_UP, connection).await;
    drop(requests);
    match ended {
        Ok(_) => Ok(since.elapsed()),
        Err(_) => Err(format!("still open after {GIVE_UP:?}")),
    }
}

/// Reads (discarding whatever the server sends) until the server closes `stream`: the time
/// from `since`, or an error if it is still open `give_up` after `since`.
async fn closed_after(
    mut stream: impl AsyncRead + Unpin,
    since: Instant,
    give_up: Duration,
) -> Result<Duration, String> {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(since + give_up, stream.read(&mut buf)).await {
            Err(_) => return Err(format!("still open after {give_up:?}")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

type Probes = Vec<(String, tokio::task::JoinHandle<Result<Duration, String>>)>;

/// Runs every probe at once; each must have been closed by its bound.
async fn expect_closed_by_the_bound(probes: Probes) {
    expect_closed_within(probes, NOT_BEFORE..=NOT_AFTER).await
}

/// Each probe must have been closed within `window`.
async fn expect_closed_within(probes: Probes, window: std::ops::RangeInclusive<Duration>) {
    let mut failures = Vec::new();
    for (what, probe) in probes {
        match probe.await.expect("probe task") {
            Ok(waited) if window.contains(&waited) => {
                eprintln!("{what}: closed after {waited:?}")
            }
            Ok(waited) => failures.push(format!(
                "{what}: closed after {waited:?}, expected {window:?}"
            )),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn with_h2(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn control_plane_tls(bundle: &TrustBundle) -> Arc<ClientConfig> {
    with_h2(client_config(None, bundle, Expect::ControlPlane).unwrap())
}

/// Whether the server closed a connection while it was busy: `mesh_proto::channel` (what
/// agents and meshctl use) sets the slot on every connect, so after clearing it once
/// connected, `Some` means the channel had to connect again.
fn reconnected(peer: &mesh_proto::channel::PeerSlot) -> bool {
    peer.lock().is_some()
}

/// An admin client on a channel of its own (one connection), with the slot that tells
/// whether it reconnected.
async fn admin_channel(
    cp: &ControlPlane,
) -> (
    pb::mesh_admin_client::MeshAdminClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor,
        >,
    >,
    mesh_proto::channel::PeerSlot,
) {
    let ca = std::fs::read_to_string(cp.ca_file()).unwrap();
    let config = control_plane_client_config(&ca).unwrap();
    let (channel, peer) = mesh_proto::channel::connect(&cp.url(), config, Duration::from_secs(5))
        .await
        .expect("connecting to the control plane");
    *peer.lock() = None;
    let token = std::fs::read_to_string(cp.token_file()).unwrap();
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", token.trim()).parse().unwrap();
    let client = pb::mesh_admin_client::MeshAdminClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        },
    );
    (client, peer)
}

/// The control plane closes, after 10 s, a connection that never starts TLS, one that stops
/// after the handshake, and a real HTTP/2 client that never calls (the TLS bound held before;
/// the others were open for good). Connections in use are left alone past that bound: one
/// that made a call and then idles, and one carrying a stream (as every agent's config
/// stream) still work 14 s on, without reconnecting.
#[test]
fn control_plane_closes_connections_that_never_call_and_keeps_busy_ones() {
    require_root();
    let cp = ControlPlane::start_embedded().expect("starting mesh-control");
    let bundle = TrustBundle::from_pem(&std::fs::read_to_string(cp.ca_file()).unwrap()).unwrap();
    let tls = control_plane_tls(&bundle);
    let addr = cp.listen();
    runtime().block_on(async {
        let mut probes = Vec::new();
        for (what, speak) in [
            ("no TLS handshake", Speak::Nothing),
            ("TLS, then silence", Speak::Tls(tls.clone())),
            ("HTTP/2, no call", Speak::Http2(tls)),
        ] {
            let tcp = TcpStream::connect(addr).await.unwrap();
            probes.push((
                format!("control plane {addr}: {what}"),
                tokio::spawn(silent(tcp, speak)),
            ));
        }
        let started = Instant::now();
        let (mut called, called_peer) = admin_channel(&cp).await;
        called.status(pb::Empty {}).await.expect("status");
        let (mut streaming, streaming_peer) = admin_channel(&cp).await;
        let mut watch = streaming
            .watch(pb::WatchRequest {
                kind: "Service".into(),
                from_version: 0,
            })
            .await
            .expect("watch")
            .into_inner();
        tokio::time::sleep_until(started + BOUND + Duration::from_secs(4)).await;

        called.status(pb::Empty {}).await.expect("status, later");
        let yaml = service_yaml("late", &["10.96.0.78".parse().unwrap()], 80, 8080, "late");
        let applied = tokio::task::spawn_blocking(move || cp.apply(&yaml).map(|_| cp));
        let cp = applied.await.unwrap().expect("meshctl apply");
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(event) = watch.message().await.expect("the watch stream") {
                if let Some(pb::watch_event::Event::Upsert(r)) = event.event {
                    if String::from_utf8_lossy(&r.json).contains("\"late\"") {
                        return true;
                    }
                }
            }
            false
        })
        .await;
        assert_eq!(
            seen,
            Ok(true),
            "the watch stream did not deliver the change"
        );
        assert!(
            !reconnected(&called_peer),
            "a connection idle for {:?} after a call was closed (the idle bound is minutes)",
            Duration::from_secs(14)
        );
        assert!(
            !reconnected(&streaming_peer),
            "a connection carrying a stream was closed"
        );
        expect_closed_by_the_bound(probes).await;
        drop(cp);
    });
}

/// A call whose request body never comes: the headers of a Join (which needs no client
/// certificate) and nothing more. The control plane answers it with an error after its call
/// bound, so the call is no longer in flight and cannot hold the connection (and its slot)
/// for good; before, no answer ever came.
#[test]
fn control_plane_ends_a_call_whose_body_never_arrives() {
    require_root();
    let cp = ControlPlane::start_embedded().expect("starting mesh-control");
    let bundle = TrustBundle::from_pem(&std::fs::read_to_string(cp.ca_file()).unwrap()).unwrap();
    let addr = cp.listen();
    runtime().block_on(async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = TlsConnector::from(control_plane_tls(&bundle))
            .connect(ServerName::from(addr.ip()), tcp)
            .await
            .expect("TLS handshake");
        let (mut requests, connection) = h2::client::handshake(tls).await.expect("HTTP/2");
        tokio::spawn(connection);
        let join = http::Request::post(format!("https://{addr}/mesh.v1.NodeIdentity/Join"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        // The body stays open (no END_STREAM) and empty; `_body` keeps it so.
        let (answer, _body) = requests
            .send_request(join, false)
            .expect("sending the headers");
        let since = Instant::now();
        let answer = tokio::time::timeout(GIVE_UP, answer)
            .await
            .unwrap_or_else(|_| panic!("no answer to a bodiless call after {GIVE_UP:?}"))
            .expect("the answer");
        let waited = since.elapsed();
        let status = answer
            .headers()
            .get("grpc-status")
            .map(|s| s.to_str().unwrap().to_owned());
        assert!(
            status.as_deref().is_some_and(|s| s != "0"),
            "expected a gRPC error, got {answer:?}"
        );
        assert!(
            (NOT_BEFORE..=NOT_AFTER).contains(&waited),
            "answered after {waited:?}, expected {NOT_BEFORE:?}..{NOT_AFTER:?} (bound {BOUND:?})"
        );
    });
}

/// A Service as the admin API takes it (JSON).
fn service_json(name: &str) -> pb::Resource {
    let json = format!(
        r#"{{"apiVersion":"mesh/v1","kind":"Service","metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"vips":["10.96.0.77"],"ports":[{{"port":80,"targetPort":8080}}],"selector":{{"app":"{name}"}}}}}}"#
    );
    pb::Resource {
        json: json.into_bytes(),
    }
}

/// `mesh-control serve --max-connections 24` with an agent following it and an admin client
/// connected: 24 more TLS connections that never call fill it (the first ones; the rest are
/// refused), then a new connection is closed at once and the log says why, while the admin
/// client still applies a change and the agent's config stream still delivers it. Once the
/// flood closes, new clients are served again.
#[test]
fn control_plane_past_its_connection_limit_refuses_new_connections_and_keeps_its_clients() {
    require_root();
    const LIMIT: usize = 24;
    let mut cp = ControlPlane::start_embedded_with_args(&["--max-connections", &LIMIT.to_string()])
        .expect("starting mesh-control --max-connections");
    let agent =
        MeshNode::start_with_control_plane(NODE, &[cp.url()], &[]).expect("starting the agent");
    let bundle = TrustBundle::from_pem(&std::fs::read_to_string(cp.ca_file()).unwrap()).unwrap();
    let token = std::fs::read_to_string(cp.token_file()).unwrap();
    let ca_pem = std::fs::read_to_string(cp.ca_file()).unwrap();
    let addr = cp.listen();
    let rt = runtime();
    let mut admin = rt
        .block_on(connect_admin(&cp.url(), &token, &ca_pem))
        .expect("the admin client connects before the flood");

    let flood = rt.block_on(async {
        let mut flood = Vec::new();
        for _ in 0..LIMIT {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let server = ServerName::from(addr.ip());
            if let Ok(tls) = TlsConnector::from(control_plane_tls(&bundle))
                .connect(server, tcp)
                .await
            {
                flood.push(tls);
            }
        }
        flood
    });
    eprintln!("{} flood connections hold a slot", flood.len());
    assert!(!flood.is_empty(), "no flood connection got through at all");

    let refused = rt.block_on(async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        closed_after(tcp, Instant::now(), REFUSED_WITHIN).await
    });
    assert!(
        refused.is_ok(),
        "a connection past --max-connections {LIMIT} was not closed: {}",
        refused.unwrap_err()
    );
    let log = cp.process().unwrap().log();
    assert!(
        log.contains("connection limit reached"),
        "no warning in the control plane's log:\n{log}"
    );

    // The clients it already serves keep working: the admin client applies, and the agent's
    // stream delivers the change.
    let applied = rt.block_on(admin.apply(pb::ApplyRequest {
        resources: vec![service_json("during-flood")],
        source: "idle_limits test".into(),
        dry_run: false,
    }));
    applied.expect("apply on the admin client connected before the flood");
    let version = rt
        .block_on(admin.status(pb::Empty {}))
        .expect("status on the admin client connected before the flood")
        .into_inner()
        .version;
    wait_until_ok(Duration::from_secs(5), || {
        let v = agent.status_json()?["config"]["version"]
            .as_u64()
            .unwrap_or(0);
        anyhow::ensure!(
            v >= version,
            "the agent serves version {v}, the control plane {version}"
        );
        Ok(())
    })
    .expect("the agent's config stream keeps working during the flood");

    drop(flood);
    let served = wait_until(Duration::from_secs(5), || {
        cp.meshctl(&["status"])
            .is_ok_and(|out| out.status.success())
    });
    assert!(served, "meshctl status still fails after the flood closed");
}

/// Reads an HTTP/1.1 response up to the end of a body that ends with `tail`.
async fn read_response(stream: &mut (impl AsyncRead + Unpin), tail: &str) -> String {
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&text).ends_with(tail) {
            let n = stream.read(&mut buf).await.expect("reading the response");
            assert!(
                n > 0,
                "closed before the response: {}",
                String::from_utf8_lossy(&text)
            );
            text.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&text).into_owned();
    assert!(read.is_ok(), "no whole response within 5 s: {text}");
    text
}

/// The agent's admin HTTP port and admin socket close, after 10 s: a connection that sends
/// nothing, a keep-alive connection idle after its request, and (socket) an enroll request
/// whose body never comes (answered 408). With 128 connections open on the HTTP port, a new
/// one is closed at once; once the held ones time out, the port answers again.
#[test]
fn admin_listeners_close_idle_connections_and_cap_them() {
    require_root();
    let node = MeshNode::start(&service_yaml(
        "web",
        &["10.96.0.20".parse().unwrap()],
        80,
        8080,
        "web",
    ))
    .expect("starting the agent");
    let admin: SocketAddr = node.admin();
    let socket = node.state_dir().join("agent.sock");
    const ADMIN_LIMIT: usize = 128;
    runtime().block_on(async {
        let mut probes = Vec::new();
        let tcp = TcpStream::connect(admin).await.unwrap();
        probes.push((
            format!("admin HTTP {admin}: no request"),
            tokio::spawn(closed_after(tcp, Instant::now(), GIVE_UP)),
        ));
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: agent\r\n\r\n").await.unwrap();
        // The readiness body is JSON ending with its (empty) pending list.
        let response = read_response(&mut tcp, "\"pending\":[]}").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        probes.push((
            format!("admin HTTP {admin}: idle after a keep-alive request"),
            tokio::spawn(closed_after(tcp, Instant::now(), GIVE_UP)),
        ));
        let unix = UnixStream::connect(&socket).await.unwrap();
        probes.push((
            "admin socket: no request".into(),
            tokio::spawn(closed_after(unix, Instant::now(), GIVE_UP)),
        ));
        let mut unix = UnixStream::connect(&socket).await.unwrap();
        unix.write_all(b"POST /v1/pods HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        let since = Instant::now();
        let trickled = tokio::spawn(async move {
            let mut answer = Vec::new();
            let read = tokio::time::timeout(GIVE_UP, unix.read_to_end(&mut answer)).await;
            (since.elapsed(), read.is_ok(), String::from_utf8_lossy(&answer).into_owned())
        });

        // Fill the HTTP port (the two probes above hold slots too), then one more.
        let mut held = Vec::new();
        for _ in 0..ADMIN_LIMIT {
            held.push(TcpStream::connect(admin).await.unwrap());
        }
        let flooded = Instant::now();
        let extra = TcpStream::connect(admin).await.unwrap();
        let refused = closed_after(extra, Instant::now(), REFUSED_WITHIN).await;
        assert!(
            refused.is_ok(),
            "a connection past the admin port's {ADMIN_LIMIT} was not closed: {}",
            refused.unwrap_err()
        );
        for stream in held {
            let closed = closed_after(stream, flooded, GIVE_UP).await;
            assert!(
                closed.as_ref().is_ok_and(|waited| *waited <= NOT_AFTER),
                "a connection held on the admin port: {closed:?}"
            );
        }

        expect_closed_by_the_bound(probes).await;
        let (waited, closed, answer) = trickled.await.unwrap();
        assert!(closed, "admin socket: an enroll body that never comes held the connection for {GIVE_UP:?}");
        assert!(
            (NOT_BEFORE..=NOT_AFTER).contains(&waited) && answer.contains(" 408 "),
            "admin socket: an enroll body that never comes: after {waited:?}: {answer}"
        );
    });
    let (code, body) = http_get(admin, "/healthz/ready").expect("the admin port answers again");
    assert_eq!(code, 200, "{body}");
}
