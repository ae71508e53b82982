//! Which ports are served as HTTP, and for `auto` ports, telling HTTP from other protocols
//! by the client's first bytes.
//!
//! The wait is bounded: a protocol where the server speaks first (SMTP, MySQL, ...) sends
//! nothing from the client until the server's greeting, so after [`SNIFF_WAIT`] without a
//! byte the connection is relayed as opaque TCP and the greeting flows as usual.

use std::time::Duration;

use mesh_api::Protocol;
use tokio::net::TcpStream;

/// How long an `auto` port waits for the client's first bytes.
pub const SNIFF_WAIT: Duration = Duration::from_millis(300);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token we wait for; longer first words are not HTTP/1 methods we know.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

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

/// Classifies a connection's first bytes (any input, never panics).
pub fn classify(first: &[u8]) -> Sniffed {
    if first.is_empty() {
        return Sniffed::NeedMore;
    }
    let candidates = METHODS.iter().copied().chain([H2_PREFACE]);
    let mut need_more = false;
    for candidate in candidates {
        let n = first.len().min(candidate.len());
        if first[..n] == candidate[..n] {
            if n == candidate.len() {
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
        assert_eq!(classify(b"GETX / HTTP/1.1"), Sniffed::Opaque);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Sniffed::Opaque);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Sniffed::Opaque);
        assert_eq!(classify(b"get / HTTP/1.1"), Sniffed::Opaque);
        assert_eq!(classify(b""), Sniffed::NeedMore);
    }
}
