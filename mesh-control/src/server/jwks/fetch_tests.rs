//! The fetcher's bounds against a real TLS server on loopback that misbehaves on purpose
//! (answers written by hand, so they can be what no HTTP library would send).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::jwt::MAX_JWKS_BYTES;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::fetch::JwksClient;

const SMALL: &str = r#"{"keys": []}"#;

/// The raw answer to a request for `path`; `None`: never answer.
fn answer(path: &str) -> Option<Vec<u8>> {
    let response = |head: &str, body: &[u8]| [head.as_bytes(), b"\r\n\r\n", body].concat();
    Some(match path {
        "/ok" => response(
            &format!("HTTP/1.1 200 OK\r\ncontent-length: {}", SMALL.len()),
            SMALL.as_bytes(),
        ),
        // Declared too large: refused before the body is read.
        "/declared-large" => response(
            &format!("HTTP/1.1 200 OK\r\ncontent-length: {}", MAX_JWKS_BYTES + 1),
            b"",
        ),
        // Chunked, so only counting the bytes read finds it too large.
        "/streamed-large" => {
            let chunk = vec![b' '; 4096];
            let mut body = Vec::new();
            for _ in 0..=MAX_JWKS_BYTES / chunk.len() {
                body.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
                body.extend(&chunk);
                body.extend(b"\r\n");
            }
            body.extend(b"0\r\n\r\n");
            response("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked", &body)
        }
        "/moved" => response(
            "HTTP/1.1 301 Moved Permanently\r\nlocation: http://elsewhere/keys\r\ncontent-length: 0",
            b"",
        ),
        "/missing" => response("HTTP/1.1 404 Not Found\r\ncontent-length: 0", b""),
        _ => return None,
    })
}

/// An HTTPS server on loopback with a self-signed certificate for 127.0.0.1; returns its
/// address and the file holding its certificate (to trust it).
async fn server(dir: &tempfile::TempDir) -> (std::net::SocketAddr, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca_file = dir.path().join("server.pem");
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = vec![0; 4096];
                let n = tls.read(&mut request).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&request[..n]).into_owned();
                let path = text.split(' ').nth(1).unwrap_or_default().to_owned();
                match answer(&path) {
                    Some(bytes) => {
                        let _ = tls.write_all(&bytes).await;
                        let _ = tls.shutdown().await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    (addr, ca_file)
}

#[tokio::test]
async fn fetches_are_bounded_and_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, ca_file) = server(&dir).await;
    let client = JwksClient::new(&[ca_file])
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let url = |path: &str| format!("https://{addr}{path}");

    assert_eq!(client.fetch(&url("/ok")).await.unwrap(), SMALL);
    let error = |path: &str| {
        let client = client.clone();
        let uri = if path.starts_with('/') {
            url(path)
        } else {
            path.to_owned()
        };
        async move { format!("{:#}", client.fetch(&uri).await.unwrap_err()) }
    };
    let large = error("/declared-large").await;
    assert!(large.contains("at most 65536 bytes"), "{large}");
    let large = error("/streamed-large").await;
    assert!(large.contains("at most 65536 bytes"), "{large}");
    let moved = error("/moved").await;
    assert!(
        moved.contains("301") && moved.contains("redirects are not followed"),
        "{moved}"
    );
    let missing = error("/missing").await;
    assert!(missing.contains("answered 404"), "{missing}");
    let silent = error("/silent").await;
    assert!(
        silent.contains("no complete answer within 500ms"),
        "{silent}"
    );
    let plain = error(&format!("http://{addr}/ok")).await;
    assert!(plain.contains("only https:// is fetched"), "{plain}");

    // Not trusted: no CA given, or another one.
    let untrusting = JwksClient::new(&[]).unwrap();
    let refused = format!("{:#}", untrusting.fetch(&url("/ok")).await.unwrap_err());
    assert!(refused.contains("no --jwks-ca was given"), "{refused}");
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_ca) = server(&other_dir).await;
    let other = JwksClient::new(&[other_ca]).unwrap();
    let refused = format!("{:#}", other.fetch(&url("/ok")).await.unwrap_err());
    assert!(refused.contains("TLS handshake failed"), "{refused}");

    // A CA file that is not one is refused at start, naming the file.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let start = JwksClient::new(&[bad]).err().expect("refused");
    assert!(
        format!("{start:#}").contains("bad.pem: holds no PEM certificate"),
        "{start:#}"
    );
}
