//! Benchmark clients. Each prints one JSON object on stdout; the numbers are only compared as
//! ratios against "direct" runs on the same machine (see DESIGN.md, Performance targets).

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::churn::CloseFirst;
use crate::tcp::PEER_CLOSE_FIRST;

/// Upper bound for connect and for any single blocking read/write, so a broken data path
/// fails the run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// `count` round trips of `size` bytes on one connection (after `warmup` unmeasured ones).
pub fn rr(
    addr: SocketAddr,
    size: usize,
    count: usize,
    warmup: usize,
    timeout: Duration,
) -> Result<()> {
    anyhow::ensure!(size > 0 && count > 0, "--size and --count must be > 0");
    let mut s = connect(addr, timeout)?;
    // Without it Nagle + delayed ACK would add ~40 ms to some round trips.
    s.set_nodelay(true)?;
    let mut req = vec![0u8; size];
    let mut resp = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        // Different bytes every round, so a reordered, lost or repeated piece shows.
        for (j, byte) in req.iter_mut().enumerate() {
            *byte = (j.wrapping_mul(7).wrapping_add(i)) as u8;
        }
        let t = Instant::now();
        s.write_all(&req)
            .with_context(|| format!("write (round trip {i})"))?;
        s.read_exact(&mut resp)
            .with_context(|| format!("read echo (round trip {i})"))?;
        if i >= warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        anyhow::ensure!(
            resp == req,
            "round trip {i}: the echo differs from what was sent"
        );
    }
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    samples.sort_by(f64::total_cmp);
    print_json(json!({
        "p50_us": round1(percentile(&samples, 0.50)),
        "p99_us": round1(percentile(&samples, 0.99)),
        "mean_us": round1(mean),
        "count": count,
    }))
}

/// `streams` connections each writing 128 KiB buffers for `duration`. The clock stops only
/// when every connection has been drained (we half-close, the sink closes after reading
/// everything), so data still sitting in socket or proxy buffers is not counted as sent.
pub fn stream(addr: SocketAddr, duration: Duration, streams: usize) -> Result<()> {
    anyhow::ensure!(streams > 0, "--streams must be > 0");
    let conns = (0..streams)
        .map(|_| connect(addr, IO_TIMEOUT))
        .collect::<Result<Vec<_>>>()?;
    let start_line = Arc::new(Barrier::new(streams + 1));
    let workers: Vec<_> = conns
        .into_iter()
        .map(|s| {
            let start_line = start_line.clone();
            std::thread::spawn(move || -> Result<(u64, Instant)> {
                start_line.wait();
                send_until(s, Instant::now() + duration)
            })
        })
        .collect();
    start_line.wait();
    let start = Instant::now();
    let mut bytes = 0;
    let mut end = start;
    for w in workers {
        let (b, done) = w
            .join()
            .map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
        bytes += b;
        end = end.max(done);
    }
    let seconds = (end - start).as_secs_f64();
    print_json(json!({
        "bytes": bytes,
        "seconds": round3(seconds),
        "gbit_per_s": round3(bytes as f64 * 8.0 / seconds / 1e9),
    }))
}

fn send_until(mut s: TcpStream, deadline: Instant) -> Result<(u64, Instant)> {
    let buf = vec![0x5Au8; 128 * 1024];
    let mut bytes = 0u64;
    while Instant::now() < deadline {
        s.write_all(&buf).context("write")?;
        bytes += buf.len() as u64;
    }
    s.shutdown(Shutdown::Write).context("shutdown")?;
    // Wait for the sink's close (EOF); it reads everything we sent before closing.
    let mut scratch = [0u8; 4096];
    loop {
        match s.read(&mut scratch) {
            Ok(0) => break,
            Ok(_) => continue,
            // Typically a proxy on the path that doesn't forward the half-close (FIN).
            Err(e) => bail!("waiting for the sink to close after our FIN: {e}"),
        }
    }
    Ok((bytes, Instant::now()))
}

/// How each connect-rate connection ends.
#[derive(Clone, Copy)]
pub struct Closing {
    /// With RST (SO_LINGER 0), so no TIME_WAIT sockets pile up.
    pub linger0: bool,
    pub close_first: CloseFirst,
}

/// Open / 1-byte exchange / close, repeatedly, from `concurrency` threads for `duration`.
pub fn connect_rate(
    addr: SocketAddr,
    duration: Duration,
    concurrency: usize,
    closing: Closing,
) -> Result<()> {
    anyhow::ensure!(concurrency > 0, "--concurrency must be > 0");
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| std::thread::spawn(move || connect_loop(addr, deadline, closing)))
        .collect();
    let (mut times, mut errors, mut first_error) = (Vec::new(), 0u64, None);
    for w in workers {
        let r = w
            .join()
            .map_err(|_| anyhow::anyhow!("connect thread panicked"))?;
        times.extend(r.connect_us);
        errors += r.errors;
        first_error = first_error.or(r.first_error);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if times.is_empty() {
        bail!(
            "no connection succeeded: {}",
            first_error.unwrap_or_default()
        );
    }
    if let Some(e) = first_error {
        eprintln!("pod-tool: {errors} connection(s) failed, first: {e}");
    }
    times.sort_by(f64::total_cmp);
    print_json(json!({
        "connections": times.len(),
        "per_s": round1(times.len() as f64 / elapsed),
        "connect_p50_us": round1(percentile(&times, 0.50)),
        "connect_p99_us": round1(percentile(&times, 0.99)),
        "errors": errors,
    }))
}

struct ConnectStats {
    connect_us: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

fn connect_loop(addr: SocketAddr, deadline: Instant, closing: Closing) -> ConnectStats {
    let mut st = ConnectStats {
        connect_us: Vec::new(),
        errors: 0,
        first_error: None,
    };
    while Instant::now() < deadline {
        match one_connection(addr, closing) {
            Ok(us) => st.connect_us.push(us),
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert_with(|| format!("{e:#}"));
                // A refused/unreachable target fails fast; don't spin at 100% CPU on it.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    st
}

/// One connection; returns how long connect() took, in microseconds.
fn one_connection(addr: SocketAddr, closing: Closing) -> Result<f64> {
    let t = Instant::now();
    let s =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connect {addr}"))?;
    let us = t.elapsed().as_secs_f64() * 1e6;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut s = s;
    match closing.close_first {
        CloseFirst::Client => {
            s.write_all(&[1]).context("write")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).context("read echo")?;
        }
        // A peer-serve server answers and closes; we close after reading its FIN.
        CloseFirst::Server => {
            s.write_all(&[PEER_CLOSE_FIRST]).context("write")?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)
                .context("read until the server closes")?;
            anyhow::ensure!(!reply.is_empty(), "the server closed without answering");
        }
    }
    if closing.linger0 {
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    }
    Ok(us)
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn print_json(v: serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}
