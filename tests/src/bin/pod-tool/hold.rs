//! `hold`: open N connections to an echo server, prove each one works with a 1-byte round
//! trip, then keep them all open and idle until killed. The benchmark uses it to measure what
//! an idle proxied connection costs the agent.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

pub fn hold(
    addr: SocketAddr,
    count: usize,
    timeout: Duration,
    verify_file: Option<&Path>,
) -> Result<()> {
    raise_fd_limit(count);
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {addr} (connection {i})"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(&[7])
            .with_context(|| format!("write (connection {i})"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .with_context(|| format!("read echo (connection {i})"))?;
        conns.push(s);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({ "held": conns.len() }))?;
    out.flush()?;
    drop(out);
    let Some(verify_file) = verify_file else {
        loop {
            std::thread::park();
        }
    };
    while !verify_file.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead: Vec<String> = conns
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| round_trip(s).err().map(|e| format!("connection {i}: {e}")))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "alive": conns.len() - dead.len(), "dead": dead })
    );
    Ok(())
}

fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(&[9])?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b[0] != 9 {
        return Err(std::io::Error::other(format!("echoed {} for 9", b[0])));
    }
    Ok(())
}

/// One fd per connection plus a few: lift the soft limit to the hard one when needed.
pub(crate) fn raise_fd_limit(count: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if (soft as usize) < count + 64 {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
