//! `http-load`: N requests with C in flight, summarised as one JSON object for tests to read
//! (status counts, which server answered, errors, latency, connections used).
//!
//! HTTP/2 sends every request on ONE connection (multiplexed): the mesh must spread them over
//! endpoints per request. HTTP/1.1 keeps one keep-alive connection per concurrency slot. A
//! connection that closes (an error, `Connection: close`) is replaced for the next request,
//! and `connections` counts every one opened.

use anyhow::{bail, Result};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http_client::{RequestSpec, Sender};

#[derive(clap::Args)]
pub struct LoadArgs {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 100)]
    requests: usize,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// HTTP/2 over cleartext with prior knowledge, all requests on one connection.
    #[arg(long)]
    http2: bool,
    #[arg(long, default_value = "GET")]
    method: String,
    /// A request header, `name: value`; repeat for more.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Send a body of this many bytes with every request.
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
    /// Per request, from sending to the end of the response body (connecting included).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// Prints the JSON summary; exits non-zero only on bad arguments.
pub fn load(args: LoadArgs) -> Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let spec = RequestSpec::new(
        &args.url,
        &args.method,
        &args.headers,
        args.body_bytes,
        args.http2,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let summary = rt.block_on(run(
        spec,
        args.requests,
        args.concurrency,
        Duration::from_millis(args.timeout_ms),
    ));
    println!("{}", summary.to_json());
    Ok(())
}

async fn run(spec: RequestSpec, requests: usize, concurrency: usize, timeout: Duration) -> Tally {
    let shared = Arc::new(Shared {
        spec,
        next: AtomicUsize::new(0),
        requests,
        timeout,
        h2: tokio::sync::Mutex::new(None),
        tally: Mutex::new(Tally::default()),
    });
    let slots: Vec<_> = (0..concurrency.min(requests.max(1)))
        .map(|_| tokio::spawn(slot(shared.clone())))
        .collect();
    for s in slots {
        // A slot only ends by running out of requests; a panic would be a bug worth seeing.
        s.await.expect("load slot");
    }
    let mut tally = shared.tally.lock().unwrap();
    std::mem::take(&mut *tally)
}

struct Shared {
    spec: RequestSpec,
    next: AtomicUsize,
    requests: usize,
    timeout: Duration,
    /// HTTP/2: the one connection every slot sends on (HTTP/1.1 slots own theirs).
    h2: tokio::sync::Mutex<Option<Sender>>,
    tally: Mutex<Tally>,
}

impl Shared {
    async fn connect(&self) -> Result<Sender> {
        self.tally.lock().unwrap().connections += 1;
        self.spec.connect().await
    }

    /// A handle on the one HTTP/2 connection, opened (again) if needed.
    async fn shared_h2(&self) -> Result<Sender> {
        let mut conn = self.h2.lock().await;
        if conn.as_ref().is_none_or(Sender::is_closed) {
            *conn = None;
            *conn = Some(self.connect().await?);
        }
        Ok(conn
            .as_ref()
            .and_then(Sender::share)
            .expect("an open HTTP/2 connection"))
    }
}

async fn slot(shared: Arc<Shared>) {
    let mut own: Option<Sender> = None;
    while shared.next.fetch_add(1, Ordering::Relaxed) < shared.requests {
        let start = Instant::now();
        let result = tokio::time::timeout(shared.timeout, one(&shared, &mut own)).await;
        let elapsed = start.elapsed();
        let failure = match result {
            Ok(Ok((status, served_by))) => {
                let mut tally = shared.tally.lock().unwrap();
                tally.response(status, served_by, elapsed);
                continue;
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("timed out after {:?}", shared.timeout),
        };
        shared.tally.lock().unwrap().error(failure);
        // The connection's state is unknown after a failure: start afresh.
        own = None;
    }
}

async fn one(shared: &Shared, own: &mut Option<Sender>) -> Result<(u16, Option<String>)> {
    let req = shared.spec.request()?;
    let resp = if shared.spec.http2 {
        shared.shared_h2().await?.send(req).await?
    } else {
        if own.as_ref().is_none_or(Sender::is_closed) {
            *own = None;
            *own = Some(shared.connect().await?);
        }
        own.as_mut().expect("connected").send(req).await?
    };
    let status = resp.status().as_u16();
    let served_by = resp
        .headers()
        .get("x-served-by")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    resp.into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading body: {e}"))?;
    Ok((status, served_by))
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    served_by: BTreeMap<String, u64>,
    errors: u64,
    error_samples: Vec<String>,
    latencies: Vec<Duration>,
    connections: u64,
}

impl Tally {
    fn response(&mut self, status: u16, served_by: Option<String>, latency: Duration) {
        *self.statuses.entry(status).or_default() += 1;
        if let Some(name) = served_by {
            *self.served_by.entry(name).or_default() += 1;
        }
        self.latencies.push(latency);
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < 3 && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    fn to_json(&self) -> Value {
        let mut ms: Vec<f64> = self
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let ok: u64 = self
            .statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        let statuses: BTreeMap<String, u64> = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect();
        json!({
            "ok": ok,
            "statuses": statuses,
            "served_by": self.served_by,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "latency_ms": {
                "p50": round3(percentile(&ms, 50.0)),
                "p99": round3(percentile(&ms, 99.0)),
                "max": round3(ms.last().copied().unwrap_or(0.0)),
            },
            "connections": self.connections,
        })
    }
}

/// Nearest-rank percentile of sorted values; 0 when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn summary_counts_statuses_servers_and_errors() {
        let mut t = Tally::default();
        let ms = Duration::from_millis;
        t.response(200, Some("a".into()), ms(1));
        t.response(200, Some("b".into()), ms(3));
        t.response(503, None, ms(2));
        for e in ["refused", "refused", "reset", "eof", "fourth"] {
            t.error(e.into());
        }
        t.connections = 2;
        let j = t.to_json();
        assert_eq!(j["ok"], 2);
        assert_eq!(j["statuses"], json!({"200": 2, "503": 1}));
        assert_eq!(j["served_by"], json!({"a": 1, "b": 1}));
        assert_eq!(j["errors"], 5);
        assert_eq!(j["error_samples"], json!(["refused", "reset", "eof"]));
        assert_eq!(j["latency_ms"]["p50"], 2.0);
        assert_eq!(j["latency_ms"]["max"], 3.0);
        assert_eq!(j["connections"], 2);
    }
}
