//! An HBONE client of the tests' own: TLS 1.3 with a certificate the CA issued on an admin's
//! request (`meshctl cert issue`), then HTTP/2 CONNECT, from a pod outside the mesh, so the
//! tests can speak to an agent's HBONE server directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use mesh_identity::tls::{client_config, Expect};
use mesh_identity::{new_csr, Credential, SpiffeId, TrustBundle};
use mesh_tests::control::ControlPlane;
use mesh_tests::two_nodes::TRUST_DOMAIN;
use mesh_tests::Pod;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// What the HBONE server answered: a status, or an error before any status.
#[derive(Debug)]
pub enum Outcome {
    Status(u16, Vec<u8>),
    Failed(String),
}

pub struct Client<'a> {
    pub from: &'a Pod,
    pub credential: Option<Credential>,
    pub bundle: TrustBundle,
}

impl Client<'_> {
    /// CONNECT `target` through the HBONE server at `server` (which must present
    /// `server_id`), then send `payload` and read as many bytes back.
    pub fn connect(
        &self,
        server: SocketAddr,
        server_id: &str,
        target: &str,
        payload: &[u8],
    ) -> Outcome {
        self.request(server, server_id, http::Method::CONNECT, target, payload)
    }

    /// Like [`connect`](Self::connect), with `payload` sent right behind the CONNECT, before
    /// its answer (early data, as the agents' own client sends an app's first bytes); then,
    /// after a 200, reads as many bytes back.
    pub fn connect_early(
        &self,
        server: SocketAddr,
        server_id: &str,
        target: &str,
        payload: &[u8],
    ) -> Outcome {
        self.run(self.connect_async(
            server,
            server_id,
            http::Method::CONNECT,
            target,
            payload,
            When::Early,
        ))
    }

    /// Like [`connect`](Self::connect) with another method: `http://<target>/` is requested.
    pub fn request(
        &self,
        server: SocketAddr,
        server_id: &str,
        method: http::Method,
        target: &str,
        payload: &[u8],
    ) -> Outcome {
        self.run(self.connect_async(server, server_id, method, target, payload, When::After200))
    }

    fn run(&self, attempt: impl std::future::Future<Output = Result<(u16, Vec<u8>)>>) -> Outcome {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let attempt = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), attempt)
                .await
                .context("timed out")?
        });
        match attempt {
            Ok((status, data)) => Outcome::Status(status, data),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    async fn connect_async(
        &self,
        server: SocketAddr,
        server_id: &str,
        method: http::Method,
        target: &str,
        payload: &[u8],
        when: When,
    ) -> Result<(u16, Vec<u8>)> {
        // The socket is made in the client pod's namespace (not captured: the pod is not
        // in the mesh), so it leaves with the pod's address over the bridge.
        let tcp = self
            .from
            .in_netns(|| std::net::TcpStream::connect_timeout(&server, Duration::from_secs(3)))?
            .with_context(|| format!("connect {server}"))?;
        tcp.set_nonblocking(true)?;
        let tcp = tokio::net::TcpStream::from_std(tcp)?;
        let mut config = client_config(
            self.credential.as_ref(),
            &self.bundle,
            Expect::Exactly(SpiffeId::parse(server_id)?),
        )?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::from(server.ip()), tcp)
            .await
            .context("TLS handshake")?;
        let (send, connection) = h2::client::handshake(tls)
            .await
            .context("HTTP/2 handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut send = send.ready().await.context("HTTP/2 connection")?;
        let request = http::Request::builder()
            .uri(if method == http::Method::CONNECT {
                target.to_owned()
            } else {
                format!("http://{target}/")
            })
            .method(method)
            .body(())?;
        let (response, mut stream) = send.send_request(request, false).context("CONNECT")?;
        if when == When::Early && !payload.is_empty() {
            stream.send_data(Bytes::copy_from_slice(payload), false)?;
        }
        let response = response.await.context("CONNECT response")?;
        let status = response.status().as_u16();
        let mut echoed = Vec::new();
        if status == 200 && !payload.is_empty() {
            if when == When::After200 {
                stream.send_data(Bytes::copy_from_slice(payload), false)?;
            }
            let mut body = response.into_body();
            while echoed.len() < payload.len() {
                let Some(chunk) = body.data().await else {
                    break;
                };
                let chunk = chunk.context("reading the tunnel")?;
                let _ = body.flow_control().release_capacity(chunk.len());
                echoed.extend_from_slice(&chunk);
            }
        }
        Ok((status, echoed))
    }
}

/// When the client sends its payload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    /// Once the CONNECT was answered 200.
    After200,
    /// Right behind the CONNECT, before any answer.
    Early,
}

/// A credential for `spiffe://<td>/ns/default/sa/<sa>` signed by `cp`'s CA (key and CSR
/// made here, signed through `meshctl cert issue --csr`), and `cp`'s trust bundle.
pub fn issue(cp: &ControlPlane, sa: &str) -> (Credential, TrustBundle) {
    let id = SpiffeId::workload(TRUST_DOMAIN, "default", sa).unwrap();
    let (key_pem, csr_pem) = new_csr(&id).unwrap();
    let csr = tempfile::Builder::new().suffix(".csr").tempfile().unwrap();
    std::fs::write(csr.path(), csr_pem).unwrap();
    let chain = cp
        .meshctl_ok(&["cert", "issue", "--csr", &csr.path().display().to_string()])
        .expect("meshctl cert issue");
    let bundle = cp.meshctl_ok(&["ca-cert"]).expect("meshctl ca-cert");
    (
        Credential::from_pem(&chain, &key_pem).expect("the issued chain"),
        TrustBundle::from_pem(&bundle).expect("the CA certificate"),
    )
}

/// An HBONE server of the tests' own in a pod outside the mesh: TLS 1.3 with `credential`
/// (client certificates required, verified against `bundle`), HTTP/2; every CONNECT is
/// answered 200 and, inside the tunnel, with a minimal HTTP response whose body is `body`.
/// Records what happened, one line per event (`tls-error ...`, `connect <authority> from
/// <client SPIFFE ID>`). Stops when dropped.
pub struct FakeServer {
    events: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    pub fn start(
        pod: &Pod,
        listen: SocketAddr,
        credential: &Credential,
        bundle: &TrustBundle,
        body: &'static str,
    ) -> Result<FakeServer> {
        let listener = pod.in_netns(|| std::net::TcpListener::bind(listen))??;
        listener.set_nonblocking(true)?;
        let mut config = mesh_identity::tls::server_config(
            credential,
            bundle,
            mesh_identity::tls::ClientAuth::Required,
        )?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(tokio::sync::Notify::new());
        let (log, stopped) = (events.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (tcp, _) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                        _ = stopped.notified() => return,
                    };
                    let (acceptor, log) = (acceptor.clone(), log.clone());
                    tokio::spawn(async move {
                        let note = |line: String| log.lock().unwrap().push(line);
                        let tls = match acceptor.accept(tcp).await {
                            Ok(tls) => tls,
                            Err(e) => return note(format!("tls-error {e}")),
                        };
                        let client = mesh_identity::tls::peer_id(tls.get_ref().1)
                            .map(|id| id.to_string())
                            .unwrap_or_else(|| "-".into());
                        let Ok(mut h2) = h2::server::handshake(tls).await else {
                            return note("h2-error".into());
                        };
                        while let Some(Ok((request, mut respond))) = h2.accept().await {
                            let authority = request
                                .uri()
                                .authority()
                                .map(|a| a.to_string())
                                .unwrap_or_default();
                            note(format!("{} {authority} from {client}", request.method()));
                            let response = http::Response::builder().status(200).body(()).unwrap();
                            let Ok(mut send) = respond.send_response(response, false) else {
                                continue;
                            };
                            let mut request_body = request.into_body();
                            tokio::spawn(async move {
                                // The app's request, then our answer.
                                let _ = request_body.data().await;
                                let answer = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                    body.len()
                                );
                                let _ = send.send_data(Bytes::from(answer), true);
                            });
                        }
                    });
                }
            });
        });
        Ok(FakeServer {
            events,
            stop,
            thread: Some(thread),
        })
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
