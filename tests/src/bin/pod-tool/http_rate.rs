//! `http-rate`: HTTP/1.1 requests at a fixed rate on a schedule (open loop), for latency at a
//! moderate load. Request `i` is due at `start + i / rate` whatever happened to the ones
//! before it, and its latency runs from when it was due, not from when it could be sent: a
//! slow answer also counts against the requests it held up. A closed-loop client (wrk, or
//! `http-load`) only sends when an earlier answer came back, so it never measures that wait
//! (coordinated omission) and its percentiles at a fixed connection count describe
//! saturation, not a given load.
//!
//! Keep-alive connections, one request at a time each, on OS threads that each drive their
//! connection with a single-thread tokio runtime. A free thread claims the next due request
//! and sleeps until it is due on the kernel's high-resolution timer (timer slack 1 ns):
//! tokio's timer would round every due time up to its 1 ms tick and send in bursts.

use anyhow::{ensure, Context, Result};
use http_body_util::BodyExt;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::bench::{percentile, print_json, round1};
use crate::http_client::{RequestSpec, Sender};

#[derive(clap::Args)]
pub struct RateArgs {
    #[arg(long)]
    url: String,
    /// Requests per second, sent on a fixed schedule.
    #[arg(long)]
    rate: f64,
    /// How long the measured part lasts.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Keep-alive connections (one thread each): enough that a due request rarely finds
    /// them all busy (it then waits, and the wait is part of its latency).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests sent first on the same schedule and not measured.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Per request, from sending to the end of the response body.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// A request header, `name: value`; repeat for more (e.g. a bearer token, so the
    /// latency includes its validation).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

/// What one run needs to know, shared by the threads.
struct Schedule {
    spec: RequestSpec,
    rate: f64,
    warmup: u64,
    total: u64,
    timeout: Duration,
    next: AtomicU64,
    /// Set by the first thread past the barrier, so every thread uses the same start.
    start: OnceLock<Instant>,
    connected: Barrier,
    tally: Mutex<Tally>,
}

impl Schedule {
    fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// Prints one JSON object: latency from the due time (`p50_us`, `p90_us`, `p99_us`,
/// `max_us`), from the send (`service_p50_us`, `service_p99_us`), how late sends started
/// (`send_lag_p50_us`, `send_lag_p99_us`), the rate asked for and achieved, `ok` (2xx),
/// `errors` and `connections` opened.
pub fn rate(args: RateArgs) -> Result<()> {
    ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number of requests per second"
    );
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be > 0"
    );
    ensure!(args.connections > 0, "--connections must be at least 1");
    let measured = (args.rate * args.seconds).ceil() as u64;
    let schedule = Arc::new(Schedule {
        spec: RequestSpec::new(&args.url, "GET", &args.headers, 0, false)?,
        rate: args.rate,
        warmup: args.warmup,
        total: args.warmup + measured,
        timeout: Duration::from_millis(args.timeout_ms),
        next: AtomicU64::new(0),
        start: OnceLock::new(),
        connected: Barrier::new(args.connections),
        tally: Mutex::new(Tally::default()),
    });
    let threads: Vec<_> = (0..args.connections)
        .map(|_| {
            let schedule = schedule.clone();
            std::thread::spawn(move || worker(&schedule))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a request thread panicked"))??;
    }
    let start = *schedule.start.get().context("no thread started")?;
    let tally = schedule.tally.lock().unwrap();
    let measured_for = start.elapsed().saturating_sub(schedule.due(args.warmup));
    print_json(tally.to_json(args.rate, measured_for))
}

fn worker(schedule: &Schedule) -> Result<()> {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack; no pointers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let connect = || {
        schedule.tally.lock().unwrap().connections += 1;
        rt.block_on(schedule.spec.connect())
    };
    // Every thread connects before the clock starts, so no due time waits for a handshake.
    let first = connect();
    schedule.connected.wait();
    let mut conn = Some(first?);
    let start = *schedule.start.get_or_init(Instant::now);
    loop {
        let i = schedule.next.fetch_add(1, Ordering::Relaxed);
        if i >= schedule.total {
            return Ok(());
        }
        let due = start + schedule.due(i);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let sent = Instant::now();
        let result = match conn.as_mut().filter(|c| !c.is_closed()) {
            Some(c) => rt.block_on(send(c, schedule)),
            None => connect().and_then(|c| rt.block_on(send(conn.insert(c), schedule))),
        };
        let done = Instant::now();
        let mut tally = schedule.tally.lock().unwrap();
        match result {
            Ok(status) if i >= schedule.warmup => tally.response(status, due, sent, done),
            Ok(_) => {}
            Err(e) => {
                tally.error(format!("{e:#}"));
                // The connection's state is unknown after a failure: start afresh.
                conn = None;
            }
        }
    }
}

/// One GET on `conn`, body read to the end; the status.
async fn send(conn: &mut Sender, schedule: &Schedule) -> Result<u16> {
    let exchange = async {
        let resp = conn.send(schedule.spec.request()?).await?;
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading body: {e}"))?;
        Ok(status)
    };
    tokio::time::timeout(schedule.timeout, exchange)
        .await
        .unwrap_or_else(|_| anyhow::bail!("timed out after {:?}", schedule.timeout))
}

#[derive(Default)]
struct Tally {
    /// Microseconds from the due time to the end of the response.
    latency: Vec<f64>,
    /// Microseconds from the send to the end of the response.
    service: Vec<f64>,
    /// Microseconds from the due time to the send.
    lag: Vec<f64>,
    ok: u64,
    other_status: u64,
    errors: u64,
    error_samples: Vec<String>,
    connections: u64,
}

impl Tally {
    fn response(&mut self, status: u16, due: Instant, sent: Instant, done: Instant) {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        self.latency.push(us(done.saturating_duration_since(due)));
        self.service.push(us(done - sent));
        self.lag.push(us(sent.saturating_duration_since(due)));
        if (200..300).contains(&status) {
            self.ok += 1;
        } else {
            self.other_status += 1;
        }
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < 3 && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    fn to_json(&self, rate: f64, measured_for: Duration) -> serde_json::Value {
        let sorted = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v
        };
        let (latency, service, lag) = (
            sorted(&self.latency),
            sorted(&self.service),
            sorted(&self.lag),
        );
        let at = |v: &[f64], p: f64| round1(percentile(v, p));
        let answered = self.latency.len() as f64;
        json!({
            "rate": rate,
            "achieved_per_s": round1(answered / measured_for.as_secs_f64().max(1e-9)),
            "requests": self.latency.len(),
            "ok": self.ok,
            "other_status": self.other_status,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "p50_us": at(&latency, 0.50),
            "p90_us": at(&latency, 0.90),
            "p99_us": at(&latency, 0.99),
            "max_us": round1(latency.last().copied().unwrap_or(0.0)),
            "service_p50_us": at(&service, 0.50),
            "service_p99_us": at(&service, 0.99),
            "send_lag_p50_us": at(&lag, 0.50),
            "send_lag_p99_us": at(&lag, 0.99),
            "connections": self.connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_runs_from_the_due_time() {
        let mut t = Tally::default();
        let due = Instant::now();
        let ms = Duration::from_millis;
        // Sent 3 ms late (every connection was busy), answered 1 ms later: 4 ms, not 1.
        t.response(200, due, due + ms(3), due + ms(4));
        t.response(503, due, due, due + ms(2));
        t.error("refused".into());
        t.connections = 2;
        let j = t.to_json(100.0, Duration::from_secs(1));
        assert_eq!(j["requests"], 2);
        assert_eq!(
            (j["ok"].as_u64(), j["other_status"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(j["max_us"], 4000.0);
        assert_eq!(j["p50_us"], 2000.0);
        assert_eq!(j["service_p99_us"], 2000.0);
        assert_eq!(j["send_lag_p99_us"], 3000.0);
        assert_eq!(j["errors"], 1);
        assert_eq!(j["achieved_per_s"], 2.0);
    }
}
