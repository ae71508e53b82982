//! One HTTPS GET of a JSON Web Key Set, bounded every way a server could abuse it: https
//! only (no plaintext ever), only the certificate authorities the operator named
//! (`--jwks-ca`), [`FETCH_TIMEOUT`] for the whole exchange, no redirects, and a body of at
//! most [`MAX_JWKS_BYTES`] (read no further).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use mesh_api::jwt::MAX_JWKS_BYTES;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio_rustls::TlsConnector;

use super::AbortOnDrop;

/// Connecting, TLS, request and body together: an issuer slower than this is retried later.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches key sets over HTTPS, trusting only the operator's CAs.
#[derive(Clone)]
pub struct JwksClient {
    tls: TlsConnector,
    /// False when no `--jwks-ca` was given: every fetch fails saying so, instead of
    /// trusting nothing silently.
    has_roots: bool,
    /// [`FETCH_TIMEOUT`] (shorter in tests).
    timeout: Duration,
}

impl JwksClient {
    /// Trusting every certificate in the PEM bundles `ca_files` (none: fetches fail).
    pub fn new(ca_files: &[PathBuf]) -> Result<JwksClient> {
        let mut roots = RootCertStore::empty();
        for file in ca_files {
            let pem = std::fs::read(file)
                .with_context(|| format!("reading --jwks-ca {}", file.display()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow!("--jwks-ca {}: malformed PEM: {e}", file.display()))?;
            ensure!(
                !certs.is_empty(),
                "--jwks-ca {}: holds no PEM certificate",
                file.display()
            );
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    anyhow!("--jwks-ca {}: unusable certificate: {e}", file.display())
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(JwksClient {
            tls: TlsConnector::from(Arc::new(config)),
            has_roots: !ca_files.is_empty(),
            timeout: FETCH_TIMEOUT,
        })
    }

    /// The body of `uri`, if it answered 200 within [`FETCH_TIMEOUT`] with at most
    /// [`MAX_JWKS_BYTES`] of UTF-8. The error says what went wrong, for the log.
    pub async fn fetch(&self, uri: &str) -> Result<String> {
        ensure!(
            self.has_roots,
            "no --jwks-ca was given, so no issuer's certificate can be trusted"
        );
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.get(uri))
            .await
            .map_err(|_| anyhow!("no complete answer within {timeout:?}"))?
    }

    async fn get(&self, uri: &str) -> Result<String> {
        let uri: Uri = uri.parse().context("not a valid URI")?;
        ensure!(
            uri.scheme_str() == Some("https"),
            "only https:// is fetched"
        );
        let authority = uri.authority().context("the URI has no host")?.clone();
        // `[::1]` in a URI, `::1` for the resolver and the certificate check.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(443);
        let tcp = connect(host, port).await?;
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host:?} is not a valid server name"))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .context("TLS handshake failed")?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("starting HTTP/1.1")?;
        // Driven apart from the request; ended with it (the timeout drops this future).
        let _connection = AbortOnDrop(tokio::spawn(connection));
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(HOST, authority.as_str())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("mesh-control/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())?;
        let response = sender
            .send_request(request)
            .await
            .context("the request failed")?;
        let status = response.status();
        if status.is_redirection() {
            let to = response
                .headers()
                .get(LOCATION)
                .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                .unwrap_or_default();
            bail!("answered {status} (to {to:?}); redirects are not followed, configure the final URI");
        }
        ensure!(status == StatusCode::OK, "answered {status}");
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            bail!(
                "the key set is {} bytes; at most {MAX_JWKS_BYTES} bytes are read",
                declared.unwrap_or(0)
            );
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| {
                anyhow!("reading the key set: {e} (at most {MAX_JWKS_BYTES} bytes are read)")
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).context("the key set is not UTF-8 text")
    }
}

#[cfg(test)]
impl JwksClient {
    pub(super) fn with_timeout(mut self, timeout: Duration) -> JwksClient {
        self.timeout = timeout;
        self
    }
}

/// A TCP connection to the first address of `host` that answers.
async fn connect(host: &str, port: u16) -> Result<tokio::net::TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .collect();
    let mut last = anyhow!("{host} resolves to no address");
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = anyhow!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}
