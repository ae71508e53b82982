//! `raw-send`: writes bytes no HTTP client library would send (malformed requests, oversized
//! headers, broken HTTP/2 frames) on one TCP connection and reports what came back and how the
//! connection ended, so tests can check what the mesh's HTTP proxy does with bad input.
//!
//! Writing and reading run at the same time: a server may answer and close before it has read
//! everything (e.g. 431 after the first 400 KiB of a header), and a client that only read after
//! writing would block on a full send buffer and never see the answer.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Received bytes shown in the output (text and hex); the count covers them all.
const SHOWN: usize = 4096;

#[derive(clap::Args)]
pub struct RawArgs {
    #[arg(long)]
    connect: String,
    /// Bytes to send, with escapes `\r`, `\n`, `\t`, `\\` and `\xHH`; repeat to append more.
    #[arg(long)]
    data: Vec<String>,
    /// Sent after every `--data` (e.g. a large request the test wrote to a file).
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// How long to wait for the server to close after the last byte came.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

/// Sends, reads until the server closes (or resets, or goes quiet for the timeout) and prints
/// `{"sent", "write_error", "received_bytes", "received", "received_hex", "ended"}` with
/// `ended` one of `eof`, `reset`, `timeout` or another read error's text.
pub fn send(args: RawArgs) -> Result<()> {
    let addr = crate::resolve(&args.connect)?;
    let mut data = Vec::new();
    for text in &args.data {
        data.extend(unescape(text)?);
    }
    if let Some(path) = &args.data_file {
        data.extend(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let result = exchange(addr, data, timeout)?;
    println!("{result}");
    Ok(())
}

fn exchange(addr: SocketAddr, data: Vec<u8>, timeout: Duration) -> Result<serde_json::Value> {
    let mut sock =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    sock.set_nodelay(true)?;
    let mut writer = sock.try_clone()?;
    let writing = std::thread::spawn(move || {
        let mut sent = 0;
        for chunk in data.chunks(16 * 1024) {
            if let Err(e) = writer.write_all(chunk) {
                return (sent, Some(e.to_string()));
            }
            sent += chunk.len();
        }
        (sent, None)
    });
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut quiet_since = Instant::now();
    let ended = loop {
        let left = timeout.saturating_sub(quiet_since.elapsed());
        if left.is_zero() {
            break "timeout".to_owned();
        }
        sock.set_read_timeout(Some(left))?;
        match sock.read(&mut buf) {
            Ok(0) => break "eof".to_owned(),
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                quiet_since = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break "timeout".to_owned()
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset".to_owned(),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break e.to_string(),
        }
    };
    // Unblocks a writer the server stopped reading from.
    let _ = sock.shutdown(Shutdown::Both);
    let (sent, write_error) = writing.join().expect("writer thread");
    let shown = &received[..received.len().min(SHOWN)];
    Ok(json!({
        "sent": sent,
        "write_error": write_error,
        "received_bytes": received.len(),
        "received": String::from_utf8_lossy(shown),
        "received_hex": shown.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "ended": ended,
    }))
}

/// `\r`, `\n`, `\t`, `\\` and `\xHH` in `text`, as bytes.
fn unescape(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let hex = std::str::from_utf8(&hex).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) if hex.len() == 2 => out.push(v),
                    _ => bail!("bad escape \\x{hex} in {text:?}: want two hex digits"),
                }
            }
            Some(other) => bail!(
                "unknown escape \\{} in {text:?} (known: \\r \\n \\t \\\\ \\xHH)",
                other as char
            ),
            None => bail!("{text:?} ends with a lone backslash"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn escapes_become_bytes() {
        assert_eq!(
            unescape(r"GET /\r\n\x00\xff\\t\t").unwrap(),
            b"GET /\r\n\x00\xff\\t\t"
        );
        assert!(unescape(r"\x4").is_err());
        assert!(unescape(r"\xzz").is_err());
        assert!(unescape(r"\q").is_err());
        assert!(unescape("end\\").is_err());
    }
}
