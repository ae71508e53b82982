//! `churn`: opens and closes connections to a peer server (`peer-serve`) one after another at
//! a steady pace, each closed first by the client or by the server, and checks the address the
//! server saw every time. Prints JSON; failures are counted, not fatal, so the caller sees how
//! many and the first one.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::tcp::PEER_CLOSE_FIRST;

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Which side of each connection closes first (and so ends in TIME_WAIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CloseFirst {
    Client,
    Server,
}

pub struct Plan {
    pub addr: SocketAddr,
    pub count: usize,
    /// At most this many connections start per second (no catching up after a slow one).
    pub per_second: f64,
    pub close_first: CloseFirst,
    /// The server must have seen this client's own address (IP and port) in accept() and
    /// getpeername().
    pub expect_own_address: bool,
}

pub fn churn(plan: &Plan) -> Result<()> {
    anyhow::ensure!(plan.per_second > 0.0, "--per-second must be > 0");
    let interval = Duration::from_secs_f64(1.0 / plan.per_second);
    let start = Instant::now();
    let (mut ok, mut errors, mut wrong_peer) = (0u64, 0u64, 0u64);
    let (mut first_error, mut first_wrong) = (None, None);
    for i in 0..plan.count {
        let began = Instant::now();
        match one(plan) {
            Ok(None) => ok += 1,
            Ok(Some(mismatch)) => {
                wrong_peer += 1;
                first_wrong.get_or_insert(format!("connection {i}: {mismatch}"));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("connection {i}: {e:#}"));
            }
        }
        if let Some(rest) = interval.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        json!({
            "connections": ok,
            "errors": errors,
            "first_error": first_error,
            "wrong_peer": wrong_peer,
            "first_wrong_peer": first_wrong,
            "seconds": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        })
    )?;
    out.flush()?;
    Ok(())
}

/// One connection; `Some(text)` if the server saw another address than ours.
fn one(plan: &Plan) -> Result<Option<String>> {
    let mut s = TcpStream::connect_timeout(&plan.addr, IO_TIMEOUT)
        .with_context(|| format!("connect {}", plan.addr))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let own = s.local_addr().context("getsockname")?;
    let mode = match plan.close_first {
        CloseFirst::Server => PEER_CLOSE_FIRST,
        CloseFirst::Client => b'C',
    };
    s.write_all(&[mode]).context("write")?;
    let reply = match plan.close_first {
        // Read to the server's FIN, then close: the server holds the TIME_WAIT.
        CloseFirst::Server => {
            let mut all = String::new();
            s.read_to_string(&mut all)
                .context("read until the server closes")?;
            all
        }
        // Read the one line, then close while the server waits: we hold the TIME_WAIT.
        CloseFirst::Client => read_line(&mut s)?,
    };
    drop(s);
    let line = reply.trim();
    let (accepted, seen) = line
        .strip_prefix("peer=")
        .and_then(|rest| rest.split_once(" getpeername="))
        .with_context(|| format!("unexpected reply {line:?} (not a peer-serve server?)"))?;
    if !plan.expect_own_address {
        return Ok(None);
    }
    let own = own.to_string();
    if accepted != own || seen != own {
        return Ok(Some(format!(
            "server saw accept()={accepted} getpeername()={seen}, client is {own}"
        )));
    }
    Ok(None)
}

fn read_line(s: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut byte).context("read the reply")? {
            0 => bail!("the server closed before answering ({} bytes)", line.len()),
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}
