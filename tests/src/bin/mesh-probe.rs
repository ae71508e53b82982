//! `mesh-probe`: long-running clients for the mesh identity tests, run inside pods (so the
//! mesh captures them) where `pod-tool`'s one-shot clients are not enough:
//!
//! - `echo-loop`: one connection to an echo server, a round trip every interval for a while
//!   (a long-lived connection that must survive certificate rotation);
//! - `get-loop`: a new HTTP connection every interval for a while, counting failures;
//! - `watch`: one connection, one round trip, then wait for the peer (or the mesh) to close
//!   it, saying when and how.
//!
//! Each prints one JSON object on stdout when done (`watch` prints `connected` first) and
//! never panics on a network error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(name = "mesh-probe")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One connection; a 32-byte round trip every `interval-ms` for `seconds` (at least one).
    EchoLoop {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// `GET <path>` on a new connection every `interval-ms` for `seconds` (at least once).
    GetLoop {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Connect, one 1-byte round trip with an echo server, print `connected`, then wait until
    /// the connection is closed and print how (`{"closed": "eof"|"error: ...", "after_ms"}`).
    Watch {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-probe: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::EchoLoop {
            connect,
            seconds,
            interval_ms,
            timeout_ms,
        } => echo_loop(
            connect,
            Duration::from_secs_f64(seconds),
            Duration::from_millis(interval_ms),
            Duration::from_millis(timeout_ms),
        ),
        Cmd::GetLoop {
            connect,
            path,
            seconds,
            interval_ms,
            timeout_ms,
        } => get_loop(
            connect,
            &path,
            Duration::from_secs_f64(seconds),
            Duration::from_millis(interval_ms),
            Duration::from_millis(timeout_ms),
        ),
        Cmd::Watch {
            connect,
            timeout_ms,
        } => watch(connect, Duration::from_millis(timeout_ms)),
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

fn echo_loop(
    addr: SocketAddr,
    duration: Duration,
    interval: Duration,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    let mut s = connect(addr, timeout)?;
    let mut n: u64 = 0;
    // At least one round trip, however short the duration.
    while n == 0 || start.elapsed() < duration {
        let mut req = [0x2du8; 32];
        req[..8].copy_from_slice(&n.to_be_bytes());
        let mut resp = [0u8; 32];
        let round_trip = s.write_all(&req).and_then(|()| s.read_exact(&mut resp));
        if let Err(e) = round_trip {
            println!(
                "{}",
                json!({"ok": n, "error": e.to_string(), "at_ms": start.elapsed().as_millis() as u64})
            );
            bail!("round trip {n} failed after {:?}: {e}", start.elapsed());
        }
        if resp != req {
            bail!("round trip {n}: the echo differs");
        }
        n += 1;
        std::thread::sleep(interval);
    }
    println!("{}", json!({"ok": n}));
    Ok(())
}

fn get_once(addr: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
    let mut s = connect(addr, timeout)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the response")?;
    let head = String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        bail!("unexpected response {head:?}");
    }
    Ok(())
}

fn get_loop(
    addr: SocketAddr,
    path: &str,
    duration: Duration,
    interval: Duration,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errors = Vec::new();
    while ok + failed == 0 || start.elapsed() < duration {
        match get_once(addr, path, timeout) {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(format!("at {} ms: {e:#}", start.elapsed().as_millis()));
                }
            }
        }
        std::thread::sleep(interval);
    }
    println!("{}", json!({"ok": ok, "failed": failed, "errors": errors}));
    Ok(())
}

fn watch(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let mut s = connect(addr, timeout)?;
    s.write_all(&[7]).context("write")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).context("read the echo")?;
    println!("connected");
    std::io::stdout().flush()?;
    s.set_read_timeout(None)?;
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let how = loop {
        match s.read(&mut buf) {
            Ok(0) => break "eof".to_owned(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break format!("error: {e}"),
        }
    };
    println!(
        "{}",
        json!({"closed": how, "after_ms": start.elapsed().as_millis() as u64})
    );
    Ok(())
}
