//! `http-get`: one request with a real HTTP/1.1 or HTTP/2 client (hyper), so tests exercise the
//! same protocol handling as real applications behind the mesh.

use anyhow::{anyhow, ensure, Context, Result};
use http_body_util::BodyExt;
use hyper::HeaderMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http_client::{RequestSpec, Sender};

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
    /// Send the request this many times on one keep-alive connection and print each answer
    /// as a JSON line as it arrives (`{"status", "headers": {name: first value}, "body"}`);
    /// fails if the connection cannot carry the next request. `--timeout-ms` is per request.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// With `--repeat`: wait this long before each request after the first.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// With `--repeat`: before the k-th request (k >= 2), wait until this file has at least
    /// k-1 lines, so a test decides when each next request goes (e.g. after changing config).
    #[arg(long)]
    wait_file: Option<PathBuf>,
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
    if args.repeat != 1 || args.wait_file.is_some() || args.pause_ms != 0 {
        return rt.block_on(repeat(&args, &spec, timeout)).context(what);
    }
    let answer = rt
        .block_on(async {
            tokio::time::timeout(timeout, async {
                let mut sender = spec.connect().await?;
                fetch(&mut sender, &spec).await
            })
            .await
        })
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

/// `--repeat`: every request on the one connection, each answer a JSON line on stdout as soon
/// as it is complete.
async fn repeat(args: &GetArgs, spec: &RequestSpec, timeout: Duration) -> Result<()> {
    ensure!(args.repeat >= 1, "--repeat must be at least 1");
    let mut sender = tokio::time::timeout(timeout, spec.connect())
        .await
        .map_err(|_| anyhow!("connecting: timed out after {timeout:?}"))??;
    for k in 1..=args.repeat {
        if k > 1 {
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
            if let Some(path) = &args.wait_file {
                wait_for_lines(path, k - 1).await;
            }
            ensure!(
                !sender.is_closed(),
                "the connection closed before request {k}"
            );
        }
        let answer = tokio::time::timeout(timeout, fetch(&mut sender, spec))
            .await
            .map_err(|_| anyhow!("request {k}: timed out after {timeout:?}"))?
            .with_context(|| format!("request {k}"))?;
        let headers: serde_json::Map<String, serde_json::Value> = answer
            .headers
            .keys()
            .map(|name| {
                let value = String::from_utf8_lossy(answer.headers[name].as_bytes());
                (name.as_str().to_owned(), value.into_owned().into())
            })
            .collect();
        let line = serde_json::json!({
            "status": answer.status,
            "headers": headers,
            "body": String::from_utf8_lossy(&answer.body),
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

/// Waits until `path` holds at least `lines` lines (a missing file holds none).
async fn wait_for_lines(path: &Path, lines: usize) {
    loop {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        if text.lines().count() >= lines {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fetch(sender: &mut Sender, spec: &RequestSpec) -> Result<Answer> {
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
