//! `http-get`: one request with a real HTTP/1.1 or HTTP/2 client (hyper), so tests exercise the
//! same protocol handling as real applications behind the mesh.

use anyhow::{anyhow, Result};
use http_body_util::BodyExt;
use hyper::HeaderMap;
use std::io::Write;
use std::time::Duration;

use crate::http_client::RequestSpec;

/// A response arrived but its status was not 2xx (exit code 22, like `curl -f`).
#[derive(Debug)]
pub struct BadStatus(pub u16);

impl std::fmt::Display for BadStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP status {}", self.0)
    }
}

impl std::error::Error for BadStatus {}

#[derive(clap::Args)]
pub struct GetArgs {
    /// e.g. http://10.200.0.3:8080/ or http://[fd00:200::3]:8080/
    url: String,
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Print `status=<code>` as the first line and exit 0 for any status.
    #[arg(long)]
    show_status: bool,
    /// Print `status=<code>`, the response headers (`name: value`), a blank line, the body,
    /// then any trailers as `trailer name: value` lines (on a line of their own). Exit 0 for
    /// any status.
    #[arg(long)]
    show_headers: bool,
    /// HTTP/2 over cleartext with prior knowledge (h2c), instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    #[arg(long, default_value = "GET")]
    method: String,
    /// A request header, `name: value`; repeat for more.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Send a body of this many bytes (`x`s).
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: bytes::Bytes,
    trailers: Option<HeaderMap>,
}

/// Sends the request and writes the body (and, as asked, status and headers) to stdout.
pub fn get(args: GetArgs) -> Result<()> {
    let spec = RequestSpec::new(
        &args.url,
        &args.method,
        &args.headers,
        args.body_bytes,
        args.http2,
    )?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let what = format!("{} {}", spec.method, args.url);
    let answer = rt
        .block_on(async { tokio::time::timeout(timeout, fetch(&spec)).await })
        .map_err(|_| anyhow!("{what}: timed out after {timeout:?}"))?
        .map_err(|e| e.context(what))?;
    // Showing the status means any status is an answer worth exit code 0.
    let any_status = args.show_status || args.show_headers;
    let mut out = std::io::stdout().lock();
    if any_status {
        writeln!(out, "status={}", answer.status)?;
    }
    if args.show_headers {
        write_headers(&mut out, &answer.headers, "")?;
        writeln!(out)?;
    }
    out.write_all(&answer.body)?;
    if let (true, Some(trailers)) = (args.show_headers, &answer.trailers) {
        if !answer.body.ends_with(b"\n") {
            writeln!(out)?;
        }
        write_headers(&mut out, trailers, "trailer ")?;
    }
    out.flush()?;
    if !any_status && !(200..300).contains(&answer.status) {
        return Err(BadStatus(answer.status).into());
    }
    Ok(())
}

async fn fetch(spec: &RequestSpec) -> Result<Answer> {
    let mut sender = spec.connect().await?;
    let resp = sender.send(spec.request()?).await?;
    let (parts, body) = resp.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|e| anyhow!("reading body: {e}"))?;
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    })
}

fn write_headers(out: &mut impl Write, headers: &HeaderMap, prefix: &str) -> Result<()> {
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        writeln!(out, "{prefix}{name}: {value}")?;
    }
    Ok(())
}
