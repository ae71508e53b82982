//! `pod-tool`: the traffic client/server run inside test pods (and by the benchmark).
//!
//! Servers (`*-serve`) are tokio-based so thousands of concurrent connections are cheap and
//! print `listening <addr>` on stdout once bound. Benchmark clients (`rr`, `stream`,
//! `connect-rate`) are plain blocking sockets on OS threads: fewer moving parts between the
//! measurement and the syscall. Every error is a message on stderr and a non-zero exit code;
//! nothing here panics on a network error.
//!
//! What each command is for:
//! - L4: `echo-serve`, `sink-serve`, `peer-serve` + `peername`, `churn`, `hold`: capture,
//!   address preservation and connection lifecycle; `rr`, `stream`, `connect-rate`: the
//!   benchmark.
//! - HTTP: `http-serve` (HTTP/1.1 and h2c on one port, with misbehaving paths: status codes,
//!   delays, a flaky path, header and body echo, trailers, WebSocket, request counters) and the
//!   clients `http-get` (one request, shown in full) and `http-load` (many requests, JSON
//!   summary: which server answered, statuses, latency, connections) for the mesh's L7 proxy:
//!   routing, per-request balancing, timeouts, retries, faults, header rules. For the
//!   benchmark: `http-rate` (open-loop fixed-rate latency) and `http-hold` (idle keep-alive
//!   connections, for memory per connection).
//! - `ws-echo`: WebSocket through the mesh (relayed as bytes after the upgrade).
//! - `banner-serve` / `banner-get`: a server-speaks-first protocol, for the protocol sniffer's
//!   bounded wait.
//! - gRPC (tonic, tests/proto/podtool.proto): `grpc-serve`, `grpc-call` (unary, one channel),
//!   `grpc-chat` (bidirectional streaming).
//! - `raw-send`: bytes no HTTP library would send (malformed requests, oversized headers,
//!   broken HTTP/2 frames), for the proxy's handling of bad input.
//!
//! Clients that summarise many exchanges (`http-load`, `grpc-call`) exit 0 whatever the
//! answers were and let the test read the JSON; only bad arguments make them fail.

mod banner;
mod bench;
mod churn;
mod grpc;
mod hold;
mod http;
mod http_client;
mod http_hold;
mod http_load;
mod http_rate;
mod http_serve;
mod https_serve;
mod raw_send;
mod tcp;
mod ws;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "pod-tool",
    about = "Traffic client/server for mesh end-to-end tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) server on the same port; `GET /`
    /// answers `name=<NAME> peer=<client addr> local=<local addr>`.
    #[command(after_help = http_serve::ROUTES_HELP)]
    HttpServe {
        /// Address to listen on; repeat for several (IPv6 listeners are v6-only, so
        /// `0.0.0.0:P` and `[::]:P` can be used together).
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Name reported in every response.
        #[arg(long)]
        name: String,
        /// Answer every request (but `/stats`) this many milliseconds later.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Answer every request (but `/stats`) with this status: a broken instance.
        #[arg(long)]
        fail_status: Option<u16>,
    },
    /// HTTPS (HTTP/1.1) server answering every request with the current content of --file
    /// (`/redirect`: 302 to `/`): an issuer's JSON Web Key Set for `jwksUri`.
    HttpsServe(https_serve::ServeArgs),
    /// One HTTP request (GET unless --method); prints the body. Exit 1 on network errors, 22
    /// on a non-2xx status. With --repeat N: N requests on one keep-alive connection, each
    /// answer a JSON line (any status).
    HttpGet(http::GetArgs),
    /// N requests, C at a time; prints a JSON summary: {"ok", "statuses", "served_by" (by
    /// x-served-by; responses without it are not counted there), "errors", "error_samples",
    /// "latency_ms": {"p50", "p99", "max"} (of responses), "connections"}.
    HttpLoad(http_load::LoadArgs),
    /// HTTP/1.1 GETs at a fixed rate on a schedule (open loop) over keep-alive connections;
    /// prints JSON with latency percentiles measured from each request's due time (so a
    /// stall counts against every request it delayed), from its send, and the send lag.
    HttpRate(http_rate::RateArgs),
    /// Opens N HTTP/1.1 keep-alive connections, one GET each, prints `{"held": N}` and keeps
    /// them open and idle until killed.
    HttpHold(http_hold::HoldArgs),
    /// WebSocket client: upgrades, sends N messages, expects each echoed; prints
    /// {"echoed": N, "served_by": ...}.
    WsEcho(ws::EchoArgs),
    /// Server-speaks-first TCP server: writes `<BANNER>\n` on accept, then echoes.
    BannerServe {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        #[arg(long)]
        banner: String,
    },
    /// Connects and prints the first line the server sends, without sending anything.
    BannerGet {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// gRPC server of `podtool.Echo` (unary Call, bidirectional Chat).
    GrpcServe {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Reported as `served_by` in every reply.
        #[arg(long)]
        name: String,
    },
    /// Unary podtool.Echo/Call N times on one channel (one HTTP/2 connection); prints JSON.
    GrpcCall(grpc::CallArgs),
    /// One podtool.Echo/Chat stream, N messages in lockstep; prints JSON.
    GrpcChat(grpc::ChatArgs),
    /// Writes raw bytes on one connection and reads until the server closes; prints JSON
    /// {"sent", "write_error", "received_bytes", "received", "received_hex", "ended"}
    /// (`ended`: eof, reset, timeout or the read error).
    RawSend(raw_send::RawArgs),
    /// Connects and prints `peer=<getpeername() result>`.
    Peername {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// TCP echo server.
    EchoServe {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// TCP server that reads and discards (closes when the client finishes sending).
    SinkServe {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// TCP server answering `peer=<accept() peer> getpeername=<getpeername()>` to the
    /// client's first byte, then closing first if that byte is `S`, else after the client.
    PeerServe {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Opens and closes connections to a peer-serve server one after another; prints JSON
    /// with the failures and whether the server saw this client's own address.
    Churn {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 100.0)]
        per_second: f64,
        #[arg(long, value_enum)]
        close_first: churn::CloseFirst,
        /// Count a connection as wrong unless the server saw exactly this client's address.
        #[arg(long)]
        expect_own_address: bool,
    },
    /// Request/response latency over one connection to an echo server; prints JSON.
    Rr {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Bulk throughput to a sink server over K connections; prints JSON.
    Stream {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// New connections per second against an echo server; prints JSON.
    ConnectRate {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Close with RST (SO_LINGER 0) so no TIME_WAIT sockets pile up.
        #[arg(long)]
        linger0: bool,
        /// `client` (default): 1-byte echo, then the client closes (an echo server).
        /// `server`: the server answers and closes first (a peer-serve server).
        #[arg(long, value_enum, default_value = "client")]
        close_first: churn::CloseFirst,
    },
    /// Opens N connections to an echo server (one 1-byte round trip each), prints
    /// `{"held": N}` and keeps them open and idle until killed.
    Hold {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Once this file exists, check every held connection with another 1-byte round
        /// trip, print `{"alive": N, "dead": [errors]}` and exit.
        #[arg(long)]
        verify_file: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        // Like `curl -f`: the request worked, the answer was not a success.
        Err(e) if e.downcast_ref::<http::BadStatus>().is_some() => {
            eprintln!("pod-tool: {e:#}");
            ExitCode::from(22)
        }
        Err(e) => {
            eprintln!("pod-tool: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::HttpServe {
            listen,
            name,
            delay_ms,
            fail_status,
        } => {
            let fail_with = fail_status
                .map(hyper::StatusCode::from_u16)
                .transpose()
                .map_err(|_| anyhow::anyhow!("--fail-status must be 100-999"))?;
            let server = http_serve::Server::new(&name)?
                .with_delay(Duration::from_millis(delay_ms))
                .failing_with(fail_with);
            tcp::serve(&listen, tcp::Handler::Http(server.into()))
        }
        Cmd::BannerServe { listen, banner } => {
            tcp::serve(&listen, tcp::Handler::Banner(banner.into()))
        }
        Cmd::GrpcServe { listen, name } => grpc::serve(&listen, name),
        Cmd::EchoServe { listen } => tcp::serve(&listen, tcp::Handler::Echo),
        Cmd::SinkServe { listen } => tcp::serve(&listen, tcp::Handler::Sink),
        Cmd::PeerServe { listen } => tcp::serve(&listen, tcp::Handler::Peer),
        Cmd::Churn {
            connect,
            count,
            per_second,
            close_first,
            expect_own_address,
        } => churn::churn(&churn::Plan {
            addr: resolve(&connect)?,
            count,
            per_second,
            close_first,
            expect_own_address,
        }),
        Cmd::HttpsServe(args) => https_serve::serve(args),
        Cmd::HttpGet(args) => http::get(args),
        Cmd::HttpLoad(args) => http_load::load(args),
        Cmd::HttpRate(args) => http_rate::rate(args),
        Cmd::HttpHold(args) => http_hold::hold(args),
        Cmd::WsEcho(args) => ws::echo(args),
        Cmd::BannerGet {
            connect,
            timeout_ms,
        } => banner::get(resolve(&connect)?, Duration::from_millis(timeout_ms)),
        Cmd::GrpcCall(args) => grpc::call(args),
        Cmd::GrpcChat(args) => grpc::chat(args),
        Cmd::RawSend(args) => raw_send::send(args),
        Cmd::Peername {
            connect,
            timeout_ms,
        } => {
            let addr = resolve(&connect)?;
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(timeout_ms))
                .with_context(|| format!("connect {addr}"))?;
            println!("peer={}", s.peer_addr().context("getpeername")?);
            Ok(())
        }
        Cmd::Rr {
            connect,
            size,
            count,
            warmup,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            bench::rr(resolve(&connect)?, size, count, warmup, timeout)
        }
        Cmd::Stream {
            connect,
            seconds,
            streams,
        } => bench::stream(resolve(&connect)?, secs(seconds)?, streams),
        Cmd::ConnectRate {
            connect,
            seconds,
            concurrency,
            linger0,
            close_first,
        } => bench::connect_rate(
            resolve(&connect)?,
            secs(seconds)?,
            concurrency,
            bench::Closing {
                linger0,
                close_first,
            },
        ),
        Cmd::Hold {
            connect,
            count,
            timeout_ms,
            verify_file,
        } => hold::hold(
            resolve(&connect)?,
            count,
            Duration::from_millis(timeout_ms),
            verify_file.as_deref(),
        ),
    }
}

/// `ip:port`, `[v6]:port` or `host:port`.
fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("bad address {addr:?} (want ip:port or [ipv6]:port)"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--seconds must be > 0")
}
