//! `hold`: open N connections to an echo server, prove each one works with a 1-byte round
//! trip, then keep them all open and idle until killed. The benchmark uses it to measure what
//! an idle proxied connection costs the agent.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub fn hold(addr: SocketAddr, count: usize, timeout: Duration) -> Result<()> {
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
    loop {
        std::thread::park();
    }
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
