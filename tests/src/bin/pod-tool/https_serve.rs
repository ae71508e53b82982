//! `https-serve`: one file over HTTPS (HTTP/1.1), as an issuer publishes its JSON Web Key Set
//! for the control plane's `jwksUri` fetcher. Every request, whatever its path, gets the
//! file's content as it is at that moment (read per request), so a test rotates keys by
//! rewriting the file. `/redirect` answers 302 to `/` instead, for the fetcher's refusal to
//! follow redirects.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, LOCATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// The server's certificate chain (PEM), leaf first.
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    #[arg(long)]
    key: PathBuf,
    /// The file every request is answered with.
    #[arg(long)]
    file: PathBuf,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let acceptor = acceptor(&args)?;
    let file: Arc<PathBuf> = Arc::new(args.file);
    super::tcp::serve_with(&args.listen, |listener| {
        tokio::spawn(accept_loop(listener, acceptor.clone(), file.clone()))
    })
}

fn acceptor(args: &ServeArgs) -> Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&args.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("--cert {}: {e}", args.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .map_err(|e| anyhow!("--key {}: {e}", args.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate does not fit the key")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, file: Arc<PathBuf>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, file) = (acceptor.clone(), file.clone());
        tokio::spawn(async move {
            // A client that refuses the certificate ends here: nothing to serve.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| answer(request, file.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    file: Arc<PathBuf>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if request.uri().path() == "/redirect" {
        Response::builder()
            .status(StatusCode::FOUND)
            .header(LOCATION, "/")
            .body(Full::default())
    } else {
        match tokio::fs::read(&*file).await {
            Ok(content) => Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(content))),
            Err(e) => Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Full::new(Bytes::from(format!("reading the file: {e}\n")))),
        }
    };
    Ok(response.unwrap_or_default())
}
