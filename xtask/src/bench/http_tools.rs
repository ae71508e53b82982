//! The outside tools of the HTTP scenario and what they print: nginx (Debian) as the origin
//! server and as a plain reverse proxy, `wrk` (closed-loop HTTP/1.1 keep-alive load at
//! saturation), `h2load` (HTTP/2 on one connection), the agent's Istio request counters, and
//! the CPU and memory of a pod's own processes (the nginx proxy, to set beside the agent).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mesh_tests::{Pod, PodProcess};
use serde_json::{json, Value};

/// The origin's answer: 64 bytes of text.
pub const BODY: &str = "mesh bench origin: a small static body of sixty-four bytes.....\n";
/// Where the origin answers HTTP/1.1, and HTTP/2 (cleartext, prior knowledge).
pub const ORIGIN_PORT: u16 = 8088;
pub const ORIGIN_H2_PORT: u16 = 8089;
/// Where the nginx reverse proxy listens (HTTP/1.1, and HTTP/2 prior knowledge).
pub const PROXY_PORT: u16 = 8080;
pub const PROXY_H2_PORT: u16 = 8081;

pub const PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
];

/// What both nginx roles share: `workers` worker processes, room for the memory rows' held
/// connections (nginx allocates its connection table up front, so this sets its base RSS), no
/// access log (the agent's is off by default too), keep-alive that outlasts any run, and
/// every path nginx writes under `dir` so instances never meet.
fn common(dir: &Path, workers: usize) -> String {
    let d = dir.display();
    format!(
        "worker_processes {workers};\nuser root;\npid {d}/nginx.pid;\n\
         worker_rlimit_nofile 65536;\nevents {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout 300s;\n  keepalive_requests 10000000;\n  \
         client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
    )
}

/// The origin: [`BODY`] to every GET, over HTTP/1.1 and HTTP/2.
pub fn origin_conf(dir: &Path, workers: usize) -> String {
    format!(
        "{}  server {{\n    listen {ORIGIN_PORT};\n    listen {ORIGIN_H2_PORT} http2;\n    \
         location / {{ default_type text/plain; return 200 \"{}\"; }}\n  }}\n}}\n",
        common(dir, workers),
        BODY.replace('\n', "\\n"),
    )
}

/// The reverse proxy an operator would put between the pods: every request to `upstream`'s
/// HTTP/1.1 port over pooled keep-alive upstream connections (nginx speaks only HTTP/1.x to
/// upstreams, so HTTP/2 clients are proxied to HTTP/1.1 too).
pub fn proxy_conf(dir: &Path, workers: usize, upstream: std::net::IpAddr) -> String {
    let upstream = SocketAddr::new(upstream, ORIGIN_PORT);
    format!(
        "{}  upstream origin {{\n    server {upstream};\n    keepalive 256;\n    \
         keepalive_requests 10000000;\n    keepalive_timeout 300s;\n  }}\n  \
         server {{\n    listen {PROXY_PORT};\n    listen {PROXY_H2_PORT} http2;\n    \
         location / {{\n      proxy_pass http://origin;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        common(dir, workers),
    )
}

/// Starts nginx in `pod` with `conf` (written to `dir`/nginx.conf) and waits until it
/// answers on `port`. Its workers are in the pod's cgroup, so the pod's teardown ends them
/// even though killing the returned master alone would not.
pub fn start_nginx(pod: &Pod, dir: &Path, conf: &str, port: u16) -> Result<PodProcess> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).with_context(|| format!("writing {}", file.display()))?;
    let error_log = dir.join("error.log");
    let mut nginx = pod.spawn(
        "nginx",
        [
            "-p".as_ref(),
            dir.as_os_str(),
            "-e".as_ref(),
            error_log.as_os_str(),
            "-c".as_ref(),
            file.as_os_str(),
            "-g".as_ref(),
            "daemon off;".as_ref(),
        ],
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let up = mesh_tests::wait_until(Duration::from_secs(10), || {
        !nginx.is_running()
            || pod
                .in_netns(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
                .is_ok_and(|c| c.is_ok())
    });
    if !up || !nginx.is_running() {
        bail!(
            "nginx in pod {} did not start: {} {}",
            pod.name(),
            nginx.stderr().trim(),
            std::fs::read_to_string(&error_log)
                .unwrap_or_default()
                .trim()
        );
    }
    Ok(nginx)
}

/// `wrk` keep-alive load at saturation: `threads` threads, `connections` connections,
/// `secs` seconds, latency distribution on, these request headers (`name: value`).
pub fn wrk_args(
    url: &str,
    secs: f64,
    threads: usize,
    connections: usize,
    headers: &[String],
) -> Vec<String> {
    let mut args = vec![
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{}s", secs.ceil().max(1.0)),
        "--latency".into(),
    ];
    for h in headers {
        args.extend(["-H".into(), h.clone()]);
    }
    args.push(url.into());
    args
}

/// wrk's report as JSON: `requests` (completed), `seconds`, `per_s` (all answers),
/// `ok_per_s` (2xx/3xx only), `non_2xx`, `socket_errors`, `p50_us`, `p99_us`.
pub fn parse_wrk(text: &str) -> Result<Value> {
    let mut v = json!({ "tool": "wrk", "non_2xx": 0, "socket_errors": 0 });
    for line in text.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            v["requests"] = json!(n.trim().parse::<u64>()?);
            let secs = rest.split(',').next().unwrap_or_default();
            v["seconds"] = json!(duration_us(secs)? / 1e6);
        } else if let Some(x) = line.strip_prefix("Requests/sec:") {
            v["per_s"] = json!(x.trim().parse::<f64>()?);
        } else if let Some(x) = line.strip_prefix("Non-2xx or 3xx responses:") {
            v["non_2xx"] = json!(x.trim().parse::<u64>()?);
        } else if let Some(x) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            let total: u64 = x
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            v["socket_errors"] = json!(total);
        } else if let Some(x) = line.strip_prefix("50%") {
            v["p50_us"] = json!(duration_us(x.trim())?);
        } else if let Some(x) = line.strip_prefix("99%") {
            v["p99_us"] = json!(duration_us(x.trim())?);
        }
    }
    for key in ["requests", "seconds", "per_s"] {
        if v[key].is_null() {
            bail!("no {key} in wrk's output: {text:?}");
        }
    }
    let answered = v["requests"].as_f64().unwrap_or(0.0);
    let ok = answered - v["non_2xx"].as_f64().unwrap_or(0.0);
    v["ok_per_s"] = json!(ok / v["seconds"].as_f64().unwrap_or(f64::NAN));
    Ok(v)
}

/// `12.5us`, `1.20ms`, `2.00s`, `1.00m` in microseconds.
fn duration_us(s: &str) -> Result<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {s:?}"))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().with_context(|| format!("bad number in {s:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in {s:?}"),
    };
    Ok(n * scale)
}

/// `h2load`: HTTP/2 requests on `clients` connections with `streams` in flight on each, for
/// `secs` seconds.
pub fn h2load_args(url: &str, secs: f64, clients: usize, streams: usize) -> Vec<String> {
    vec![
        format!("-c{clients}"),
        format!("-m{streams}"),
        "-D".into(),
        format!("{}", secs.ceil().max(1.0)),
        url.into(),
    ]
}

/// h2load's report as JSON: `per_s`, `requests` (done), `succeeded`, `failed`, `errored`,
/// `ok` (2xx), `seconds`.
pub fn parse_h2load(text: &str) -> Result<Value> {
    let mut v = json!({ "tool": "h2load" });
    // "<n> <label>" pairs of a comma-separated line.
    let counts = |rest: &str| -> BTreeMap<String, u64> {
        rest.split(',')
            .filter_map(|kv| {
                let mut it = kv.split_whitespace();
                let n = it.next()?.parse().ok()?;
                Some((it.next()?.to_string(), n))
            })
            .collect()
    };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            let mut parts = rest.split(',').map(str::trim);
            v["seconds"] = json!(duration_us(parts.next().unwrap_or_default())? / 1e6);
            let rate = parts.next().unwrap_or_default();
            v["per_s"] = json!(rate.trim_end_matches("req/s").trim().parse::<f64>()?);
        } else if let Some(rest) = line.strip_prefix("requests:") {
            let c = counts(rest);
            for key in ["done", "succeeded", "failed", "errored"] {
                v[key] = json!(c.get(key).copied().unwrap_or(0));
            }
            v["requests"] = v["done"].clone();
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            v["ok"] = json!(counts(rest).get("2xx").copied().unwrap_or(0));
        }
    }
    if v["per_s"].is_null() || v["requests"].is_null() {
        bail!("no result in h2load's output: {text:?}");
    }
    Ok(v)
}

/// The agent's `istio_requests_total` for Service `service`, by `connection_security_policy`
/// (`local` same node, `mutual_tls` HBONE, `none` plaintext).
pub fn requests_by_policy(metrics: &str, service: &str) -> BTreeMap<String, u64> {
    let name = format!("destination_service_name=\"{service}\"");
    let mut by = BTreeMap::new();
    for policy in ["local", "mutual_tls", "none", "unknown"] {
        let label = format!("connection_security_policy=\"{policy}\"");
        let n = mesh_tests::two_nodes::sum_samples(metrics, "istio_requests_total", |l| {
            l.contains(&name) && l.contains(&label)
        });
        if n > 0 {
            by.insert(policy.to_string(), n);
        }
    }
    by
}

/// CPU seconds the processes of `pod` have used since its cgroup was made (cgroup v2
/// `cpu.stat` `usage_usec`): the nginx proxy's workers and master together.
pub fn pod_cpu_s(pod: &Pod) -> f64 {
    let stat = std::fs::read_to_string(pod.cgroup_path().join("cpu.stat")).unwrap_or_default();
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |us| us / 1e6)
}

/// Summed VmRSS of the processes in `pod`, in KiB.
pub fn pod_rss_kib(pod: &Pod) -> u64 {
    pod.pids()
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://127.0.0.1:18124/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   330.74us  664.57us   9.43ms   95.44%
    Req/Sec   115.24k    15.30k  135.06k    80.95%
  Latency Distribution
     50%  195.00us
     75%  218.00us
     90%  306.00us
     99%    3.73ms
  240389 requests in 2.10s, 48.60MB read
  Non-2xx or 3xx responses: 389
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec: 114458.09
Transfer/sec:     23.14MB
";

    #[test]
    fn reads_wrk() {
        let v = parse_wrk(WRK).unwrap();
        assert_eq!(v["requests"], 240389);
        assert_eq!(v["seconds"], 2.1);
        assert_eq!(v["per_s"], 114458.09);
        assert_eq!(v["non_2xx"], 389);
        assert_eq!(v["socket_errors"], 3);
        assert_eq!(v["p50_us"], 195.0);
        assert_eq!(v["p99_us"], 3730.0);
        assert_eq!(v["ok_per_s"], 240000.0 / 2.1);
        assert!(parse_wrk("unable to connect to 10.0.0.1:80 Connection refused").is_err());
    }

    #[test]
    fn reads_h2load() {
        let text = "finished in 2.00s, 68277.50 req/s, 8.53MB/s
requests: 136555 total, 136565 started, 136555 done, 136550 succeeded, 5 failed, 5 errored, 0 timeout
status codes: 136550 2xx, 0 3xx, 0 4xx, 0 5xx
";
        let v = parse_h2load(text).unwrap();
        assert_eq!(v["per_s"], 68277.5);
        assert_eq!(v["requests"], 136555);
        assert_eq!(
            (v["succeeded"].as_u64(), v["failed"].as_u64()),
            (Some(136550), Some(5))
        );
        assert_eq!(v["ok"], 136550);
        assert_eq!(v["seconds"], 2.0);
        assert!(parse_h2load("connect error").is_err());
    }

    #[test]
    fn units() {
        assert_eq!(duration_us("12.5us").unwrap(), 12.5);
        assert_eq!(duration_us("1.00m").unwrap(), 60e6);
        assert!(duration_us("12").is_err());
        assert!(duration_us("3.0y").is_err());
    }

    #[test]
    fn request_counters_by_security() {
        let m = "# TYPE istio_requests counter
istio_requests_total{request_protocol=\"http\",response_code=\"200\",reporter=\"source\",destination_service_name=\"hweb\",connection_security_policy=\"local\"} 7
istio_requests_total{request_protocol=\"http\",response_code=\"503\",reporter=\"source\",destination_service_name=\"hweb\",connection_security_policy=\"unknown\"} 2
istio_requests_total{request_protocol=\"http\",response_code=\"200\",reporter=\"source\",destination_service_name=\"other\",connection_security_policy=\"local\"} 5
";
        let by = requests_by_policy(m, "hweb");
        assert_eq!(by.get("local"), Some(&7));
        assert_eq!(by.get("unknown"), Some(&2));
        assert_eq!(by.len(), 2);
    }

    #[test]
    fn nginx_configs_name_their_ports() {
        let dir = Path::new("/tmp/x");
        let o = origin_conf(dir, 1);
        assert!(o.contains("listen 8088;") && o.contains("listen 8089 http2;"));
        assert!(o.contains("pid /tmp/x/nginx.pid;"));
        assert_eq!(BODY.len(), 64);
        let p = proxy_conf(dir, 1, "10.0.0.5".parse().unwrap());
        assert!(p.contains("server 10.0.0.5:8088;") && p.contains("keepalive 256;"));
        assert!(p.contains("proxy_http_version 1.1;"));
    }
}
