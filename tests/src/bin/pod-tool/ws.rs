//! WebSocket on both ends: `http-serve`'s `/ws` (the RFC 6455 handshake answered through
//! hyper's upgrade, then tungstenite's framing, echoing every message) and the `ws-echo`
//! client (tungstenite's handshake, which checks `Sec-WebSocket-Accept`). Real frames both
//! ways, so a relay that altered or reordered bytes after the upgrade is caught.

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::http_client::Target;
use crate::http_serve::{full, has_token, Body};

/// Answers a WebSocket handshake with 101 and echoes messages on the upgraded connection, or
/// says with a 400 what is missing from the request.
pub fn accept(mut req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers();
    let problem = if req.version() != Version::HTTP_11 {
        Some("WebSocket needs an HTTP/1.1 Upgrade request")
    } else if !has_token(headers, &UPGRADE, "websocket") {
        Some("no `Upgrade: websocket`")
    } else if !has_token(headers, &CONNECTION, "upgrade") {
        Some("no `Connection: upgrade`")
    } else if headers.get(SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        Some("no `Sec-WebSocket-Version: 13`")
    } else {
        None
    };
    if let Some(problem) = problem {
        return full(StatusCode::BAD_REQUEST, format!("{problem}\n"));
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return full(StatusCode::BAD_REQUEST, "no `Sec-WebSocket-Key`\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                echo_messages(WebSocketStream::from_raw_socket(io, Role::Server, None).await).await
            }
            Err(e) => eprintln!("pod-tool: websocket upgrade: {e}"),
        }
    });
    let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    resp
}

async fn echo_messages<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Pings are answered and Close is acknowledged by tungstenite itself.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

#[derive(clap::Args)]
pub struct EchoArgs {
    /// e.g. ws://10.200.0.3:8080/ws
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// For the whole exchange.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// Upgrades, sends each message and waits for its echo; prints
/// `{"echoed": N, "served_by": <x-served-by of the 101>}`. Fails on any difference.
pub fn echo(args: EchoArgs) -> Result<()> {
    let Some(rest) = args.url.strip_prefix("ws://") else {
        bail!("only ws:// URLs are supported, got {:?}", args.url);
    };
    let target = Target::parse(&format!("http://{rest}"))?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served_by = rt
        .block_on(async {
            tokio::time::timeout(timeout, exchange(&args.url, &target, args.messages)).await
        })
        .with_context(|| format!("{}: timed out after {timeout:?}", args.url))??;
    println!(
        "{}",
        json!({"echoed": args.messages, "served_by": served_by})
    );
    Ok(())
}

async fn exchange(url: &str, target: &Target, messages: usize) -> Result<Option<String>> {
    let addr = target.resolve().await?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream)
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    for i in 0..messages {
        let sent = format!("message {i} of {messages}");
        ws.send(Message::text(sent.clone()))
            .await
            .with_context(|| format!("sending message {i}"))?;
        let got = ws
            .next()
            .await
            .with_context(|| format!("connection closed before echo {i}"))?
            .with_context(|| format!("reading echo {i}"))?;
        if got.to_text().ok() != Some(sent.as_str()) {
            bail!("echo {i}: sent {sent:?}, got {got:?}");
        }
    }
    ws.close(None).await.context("closing")?;
    Ok(resp
        .headers()
        .get("x-served-by")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()))
}
