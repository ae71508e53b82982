//! `http-get`: a real HTTP/1.1 client (hyper), so tests exercise the same protocol handling
//! as real applications behind the mesh.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{header, Request, Uri};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::time::Duration;

/// A response arrived but its status was not 2xx (exit code 22, like `curl -f`).
#[derive(Debug)]
pub struct BadStatus(pub u16);

impl std::fmt::Display for BadStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP status {}", self.0)
    }
}

impl std::error::Error for BadStatus {}

/// GETs `url` and writes the body to stdout.
pub fn get(url: &str, timeout: Duration, show_status: bool) -> Result<()> {
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported, got {url:?}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt
        .block_on(async { tokio::time::timeout(timeout, fetch(&uri)).await })
        .map_err(|_| anyhow!("GET {url}: timed out after {timeout:?}"))?
        .with_context(|| format!("GET {url}"))?;
    let mut out = std::io::stdout().lock();
    if show_status {
        writeln!(out, "status={status}")?;
    }
    out.write_all(&body)?;
    out.flush()?;
    if !show_status && !(200..300).contains(&status) {
        return Err(BadStatus(status).into());
    }
    Ok(())
}

async fn fetch(uri: &Uri) -> Result<(u16, Bytes)> {
    let authority = uri.authority().context("URL has no host")?.clone();
    // Uri keeps the brackets of an IPv6 literal; the resolver wants them off.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    // The connection task drives the socket; its error (if any) also surfaces through
    // send_request below, so it is only logged here.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("pod-tool: connection: {e}");
        }
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = Request::get(path)
        .header(header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await.context("sending request")?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading body")?
        .to_bytes();
    Ok((status, body))
}
