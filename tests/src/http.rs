//! A minimal blocking HTTP/1.1 GET for tests (admin API, readiness). Deliberately tiny and
//! dependency-free: one request per connection (`Connection: close`), Content-Length, chunked
//! or read-to-EOF bodies. Traffic *through* the mesh uses the real client in `pod-tool`.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `GET http://<addr><path>` with a 5 s timeout; returns (status, body).
pub fn http_get(addr: impl ToSocketAddrs, path: &str) -> Result<(u16, String)> {
    http_get_timeout(addr, path, Duration::from_secs(5))
}

/// Like [`http_get`] with an explicit timeout for connect and for each read/write.
pub fn http_get_timeout(
    addr: impl ToSocketAddrs,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let addr: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("address resolves to nothing"))?;
    let what = || format!("GET http://{addr}{path}");
    let mut s = TcpStream::connect_timeout(&addr, timeout).with_context(what)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(what)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(what)?;
    parse_response(&raw).with_context(what)
}

fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete response header ({} bytes)", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end]).context("response header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = Some(v.parse::<usize>().context("bad Content-Length")?);
        }
    }
    let body = &raw[end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        if body.len() < n {
            bail!("body truncated: {} of {n} bytes", body.len());
        }
        body[..n].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size"))?;
        let size_str = std::str::from_utf8(&data[..eol])?
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let size = usize::from_str_radix(size_str, 16).context("bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn parses_length_chunked_and_eof_bodies() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(r).unwrap(), (200, "hello".into()));
        let r = b"HTTP/1.1 503 No\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (503, "abcde".into()));
        let r = b"HTTP/1.0 404 Not Found\r\n\r\ngone";
        assert_eq!(parse_response(r).unwrap(), (404, "gone".into()));
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
