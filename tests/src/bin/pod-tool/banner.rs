//! A server-speaks-first protocol (like SMTP or MySQL): `banner-serve` writes its banner line
//! as soon as it accepts, then echoes; `banner-get` connects and reads that line without
//! writing anything. A protocol sniffer that waited for the client's first bytes forever
//! would hang them; one with a bounded wait must pass them through after it.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Writes `banner\n` on a just-accepted connection, then echoes until the client closes.
pub async fn serve_connection(mut sock: tokio::net::TcpStream, banner: Arc<str>) {
    let line = format!("{banner}\n");
    if sock.write_all(line.as_bytes()).await.is_ok() {
        crate::tcp::echo(sock).await;
    }
}

/// Connects, reads the first line (without sending anything) and prints it.
pub fn get(addr: std::net::SocketAddr, timeout: Duration) -> Result<()> {
    let sock =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    sock.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    let n = BufReader::new(sock)
        .read_line(&mut line)
        .with_context(|| format!("reading the banner from {addr} (waited up to {timeout:?})"))?;
    if n == 0 {
        bail!("{addr} closed without sending a banner");
    }
    print!("{line}");
    Ok(())
}
