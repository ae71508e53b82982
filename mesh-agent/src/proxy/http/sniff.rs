//! Which ports are served as HTTP, and for `auto` ports, telling HTTP from other protocols
//! by the client's first bytes.
//!
//! The wait is bounded: a protocol where the server speaks first (SMTP, MySQL, ...) sends
//! nothing from the client until the server's greeting, so after [`SNIFF_WAIT`] without a
//! byte the connection is relayed as opaque TCP and the greeting flows as usual.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_api::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long an `auto` port waits for the client's first bytes.
pub const SNIFF_WAIT: Duration = Duration::from_millis(300);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token taken for HTTP/1 (the registered ones are at most 17 bytes).
const MAX_METHOD: usize = 32;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// HTTP/1.x request line or the HTTP/2 preface.
    Http,
    /// Not HTTP.
    Opaque,
    /// Consistent with HTTP so far; more bytes needed to tell.
    NeedMore,
}

/// Classifies a connection's first bytes (any input, never panics) as HTTP servers read
/// them: leading empty lines are skipped (RFC 9112 2.2), then the HTTP/2 preface, or any
/// method token followed by a space and a request target (`/`, `*`, or a scheme or
/// authority). Any method counts, not a known list: what a server would serve as HTTP must
/// be judged as HTTP.
pub fn classify(first: &[u8]) -> Sniffed {
    let Some(start) = first.iter().position(|b| *b != b'\r' && *b != b'\n') else {
        return Sniffed::NeedMore;
    };
    let line = &first[start..];
    let n = line.len().min(H2_PREFACE.len());
    if line[..n] == H2_PREFACE[..n] && n < H2_PREFACE.len() {
        return Sniffed::NeedMore;
    }
    let method = line.iter().take_while(|b| is_token_byte(**b)).count();
    if method > MAX_METHOD {
        return Sniffed::Opaque;
    }
    match line.get(method) {
        None => Sniffed::NeedMore,
        Some(b' ') if method > 0 => request_target(&line[..method], &line[method + 1..]),
        _ => Sniffed::Opaque,
    }
}

/// Whether what follows the method is a request target: origin form (`/`), `*`, absolute
/// form (`http://`, `https://`), or authority form after CONNECT. A looser test would take
/// e.g. an SSH banner (`SSH-2.0-OpenSSH_9.2p1 Debian`) for a request line.
fn request_target(method: &[u8], target: &[u8]) -> Sniffed {
    match target.first() {
        None => Sniffed::NeedMore,
        Some(b'/' | b'*') => Sniffed::Http,
        Some(c) if method == b"CONNECT" && c.is_ascii_alphanumeric() => Sniffed::Http,
        Some(_) => {
            let schemes: [&[u8]; 2] = [b"http://", b"https://"];
            let mut need_more = false;
            for scheme in schemes {
                let n = target.len().min(scheme.len());
                if target[..n].eq_ignore_ascii_case(&scheme[..n]) {
                    if n == scheme.len() {
                        return Sniffed::Http;
                    }
                    need_more = true;
                }
            }
            if need_more {
                Sniffed::NeedMore
            } else {
                Sniffed::Opaque
            }
        }
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether to serve this connection as HTTP (true) or relay it (false). Only `auto` ports
/// look at the bytes; peeking leaves them in the socket for whichever path takes it.
pub async fn decide(stream: TcpStream, protocol: Protocol) -> std::io::Result<(TcpStream, bool)> {
    if protocol != Protocol::Auto {
        return Ok((stream, protocol.is_http()));
    }
    let deadline = tokio::time::Instant::now() + SNIFF_WAIT;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut seen = 0;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Err(_) => return Ok((stream, false)),
            Ok(Ok(0)) => return Ok((stream, false)),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
        };
        match classify(&buf[..n]) {
            Sniffed::Http => return Ok((stream, true)),
            Sniffed::Opaque => return Ok((stream, false)),
            Sniffed::NeedMore if n == buf.len() => return Ok((stream, false)),
            Sniffed::NeedMore => {}
        }
        // peek() returns at once while the same bytes sit in the socket: wait a moment for
        // more instead of spinning (a request line split over segments is rare).
        if n == seen {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen = n;
        if tokio::time::Instant::now() >= deadline {
            return Ok((stream, false));
        }
    }
}

/// [`decide`] for a stream that cannot be peeked (an HBONE stream): the first bytes are
/// read (within [`SNIFF_WAIT`]) and handed back in front of the stream.
pub async fn decide_buffered<S>(mut stream: S, protocol: Protocol) -> (Rewound<S>, bool)
where
    S: AsyncRead + Unpin,
{
    let mut first = Vec::new();
    if protocol != Protocol::Auto {
        return (Rewound::new(first, stream), protocol.is_http());
    }
    let deadline = tokio::time::Instant::now() + SNIFF_WAIT;
    let mut buf = [0u8; H2_PREFACE.len()];
    let is_http = loop {
        let room = buf.len() - first.len();
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[..room])).await {
            Ok(Ok(n)) if n > 0 => first.extend_from_slice(&buf[..n]),
            // Closed, failed or silent: not HTTP (whatever was read still goes on).
            _ => break false,
        }
        match classify(&first) {
            Sniffed::Http => break true,
            Sniffed::Opaque => break false,
            Sniffed::NeedMore if first.len() == buf.len() => break false,
            Sniffed::NeedMore => {}
        }
    };
    (Rewound::new(first, stream), is_http)
}

/// A stream whose first bytes were already read: they come first again.
pub struct Rewound<S> {
    first: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Rewound<S> {
    fn new(first: Vec<u8>, inner: S) -> Self {
        Rewound {
            first,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.first[this.offset..];
        if !rest.is_empty() {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_and_h2_are_told_from_other_protocols() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Sniffed::Http);
        assert_eq!(classify(b"OPTIONS * HTTP/1.1\r\n"), Sniffed::Http);
        assert_eq!(classify(H2_PREFACE), Sniffed::Http);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Sniffed::NeedMore);
        assert_eq!(classify(b"GE"), Sniffed::NeedMore);
        assert_eq!(classify(b"P"), Sniffed::NeedMore);
        // Any method a server would take, and empty lines before the request line.
        assert_eq!(classify(b"PROPFIND /x HTTP/1.1"), Sniffed::Http);
        assert_eq!(classify(b"\r\nGET /x HTTP/1.1"), Sniffed::Http);
        assert_eq!(classify(b"GET http://web/ HTTP/1.1"), Sniffed::Http);
        assert_eq!(classify(b"\r\n"), Sniffed::NeedMore);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Sniffed::Opaque);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Sniffed::NeedMore);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Sniffed::Opaque);
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Sniffed::Opaque);
        assert_eq!(classify(b"PING\r\n"), Sniffed::Opaque);
        assert_eq!(classify(b"GET  /"), Sniffed::Opaque);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2p1 Debian"), Sniffed::Opaque);
        assert_eq!(classify(b"GET htt"), Sniffed::NeedMore);
        assert_eq!(classify(b"CONNECT web:443 HTTP/1.1"), Sniffed::Http);
        assert_eq!(classify(&[b'A'; 40]), Sniffed::Opaque);
        assert_eq!(classify(b""), Sniffed::NeedMore);
    }

    #[tokio::test]
    async fn bytes_read_to_decide_are_read_again() {
        for (sent, http) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], true),
            (&b"\x16\x03\x01 hello"[..], false),
        ] {
            let (mut client, server) = tokio::io::duplex(1024);
            tokio::io::AsyncWriteExt::write_all(&mut client, sent)
                .await
                .unwrap();
            drop(client);
            let (mut rewound, is_http) = decide_buffered(server, Protocol::Auto).await;
            assert_eq!(is_http, http);
            let mut all = Vec::new();
            rewound.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, sent);
        }
    }
}
