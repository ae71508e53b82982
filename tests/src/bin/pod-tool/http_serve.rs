//! `http-serve`: HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on the same port (hyper-util's
//! auto connection), with a few paths that make the server misbehave on purpose so tests can
//! check what the mesh does about it. [`ROUTES_HELP`] lists them.

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue, SERVER, TE, TRAILER};
use hyper::{HeaderMap, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

pub const ROUTES_HELP: &str = "\
Every response carries `x-served-by: <NAME>` and `server: pod-tool`; with `--delay-ms`, \
every answer but `/stats` comes that much later; with `--fail-status`, every answer but \
`/stats` has that status. By path (the query is \
ignored for routing):
  /, anything unlisted  `name=<NAME> peer=<client addr> local=<local addr>`
  /status/<code>        answers <code> (200-599)
  /delay/<ms>           sleeps <ms> (at most 600000), then answers 200 as `/`
  /flaky/<n>            n >= 2. The k-th request to this path (k = 0, 1, 2, ... counted by this \
server) answers 503 when k % n == 0, else 200 as `/`: the 1st, (n+1)-th, (2n+1)-th fail
  /close                answers as `/` with `Connection: close` (the server closes after it)
  /headers              JSON: request header name (lowercase) -> first value, plus \
\":method\", \":path\" (with query), \":version\" and \":authority\" (when the URI has one)
  /echo                 reads the whole body; JSON {\"bytes\": N, \"name\": NAME}
  /trailers             chunked body, then the trailer `x-trailer: yes` (over HTTP/1.1 only \
when the request has `TE: trailers`)
  /ws                   WebSocket (RFC 6455 handshake over HTTP/1.1), echoes every message
  /stats                JSON {\"requests\": total, \"by_path\": {path: count}, \
\"connections\": accepted}: every request but those to /stats, every connection (this one too)";

/// Longest `/delay/<ms>` honoured.
const MAX_DELAY_MS: u64 = 600_000;

pub type Body = BoxBody<Bytes, Infallible>;

/// One server's name and what it has been asked so far.
pub struct Server {
    name: Arc<str>,
    served_by: HeaderValue,
    requests: AtomicU64,
    /// Connections accepted (e.g. to see that a client or the mesh reused them).
    connections: AtomicU64,
    /// Requests per path (no query), which also numbers the requests of `/flaky/<n>`.
    by_path: Mutex<BTreeMap<String, u64>>,
    /// Added before every answer but `/stats`: a slower endpoint for balancing tests.
    delay: Duration,
    /// Answer every request but `/stats` with this status (a broken instance).
    fail_with: Option<StatusCode>,
}

impl Server {
    pub fn new(name: &str) -> anyhow::Result<Server> {
        let served_by = HeaderValue::from_str(name)
            .map_err(|_| anyhow::anyhow!("--name {name:?} is not a valid header value"))?;
        Ok(Server {
            name: name.into(),
            served_by,
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            by_path: Mutex::default(),
            delay: Duration::ZERO,
            fail_with: None,
        })
    }

    /// Answers every request but `/stats` with `status` (after counting it).
    pub fn failing_with(self, status: Option<StatusCode>) -> Server {
        Server {
            fail_with: status,
            ..self
        }
    }

    /// Answers every request but `/stats` `delay` later.
    pub fn with_delay(self, delay: Duration) -> Server {
        Server { delay, ..self }
    }

    /// Counts the request; returns how many came to this path before it.
    fn count(&self, path: &str) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut by_path = self.by_path.lock().unwrap();
        let n = by_path.entry(path.to_string()).or_default();
        *n += 1;
        *n - 1
    }

    fn stats(&self) -> Value {
        json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "by_path": *self.by_path.lock().unwrap(),
            "connections": self.connections.load(Ordering::Relaxed),
        })
    }
}

/// What a path asks for.
#[derive(Debug, PartialEq)]
enum Route {
    Default,
    Status(StatusCode),
    Delay(Duration),
    Flaky(u64),
    Headers,
    /// Answers as `/` with `Connection: close`: the server ends the connection after it.
    Close,
    Echo,
    Trailers,
    WebSocket,
    Stats,
    /// A known path with an argument that makes no sense: 400 with this message.
    Bad(String),
}

impl Route {
    fn of(path: &str) -> Route {
        let number = |arg: &str| arg.parse::<u64>().ok();
        if let Some(arg) = path.strip_prefix("/status/") {
            return match number(arg).filter(|c| (200..=599).contains(c)) {
                Some(c) => Route::Status(StatusCode::from_u16(c as u16).expect("200..=599")),
                None => Route::Bad(format!("/status/<code>: want 200-599, got {arg:?}")),
            };
        }
        if let Some(arg) = path.strip_prefix("/delay/") {
            return match number(arg).filter(|ms| *ms <= MAX_DELAY_MS) {
                Some(ms) => Route::Delay(Duration::from_millis(ms)),
                None => Route::Bad(format!("/delay/<ms>: want 0-{MAX_DELAY_MS}, got {arg:?}")),
            };
        }
        if let Some(arg) = path.strip_prefix("/flaky/") {
            return match number(arg).filter(|n| *n >= 2) {
                Some(n) => Route::Flaky(n),
                None => Route::Bad(format!("/flaky/<n>: want n >= 2, got {arg:?}")),
            };
        }
        match path {
            "/headers" => Route::Headers,
            "/close" => Route::Close,
            "/echo" => Route::Echo,
            "/trailers" => Route::Trailers,
            "/ws" => Route::WebSocket,
            "/stats" => Route::Stats,
            _ => Route::Default,
        }
    }
}

/// Serves one accepted connection (either HTTP version, upgrades allowed) until it closes.
pub async fn serve_connection(sock: TcpStream, peer: SocketAddr, server: Arc<Server>) {
    server.connections.fetch_add(1, Ordering::Relaxed);
    let local = match sock.local_addr() {
        Ok(a) => a.to_string(),
        Err(e) => format!("?({e})"),
    };
    let default_body = Bytes::from(format!("name={} peer={peer} local={local}\n", server.name));
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (server, default_body) = (server.clone(), default_body.clone());
        async move {
            let mut resp = respond(&server, default_body, req).await;
            let headers = resp.headers_mut();
            headers.insert("x-served-by", server.served_by.clone());
            headers.insert(SERVER, HeaderValue::from_static("pod-tool"));
            Ok::<_, Infallible>(resp)
        }
    });
    // Keep-alive is hyper's default; errors are per connection (the client went away) and
    // only worth a line on stderr.
    if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(sock), svc)
        .await
    {
        eprintln!("pod-tool: http connection from {peer}: {e}");
    }
}

async fn respond(server: &Server, default_body: Bytes, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let route = Route::of(&path);
    let seen_before = match route {
        Route::Stats => 0,
        _ => server.count(&path),
    };
    if route != Route::Stats && !server.delay.is_zero() {
        tokio::time::sleep(server.delay).await;
    }
    if let Some(status) = server.fail_with.filter(|_| route != Route::Stats) {
        return full(status, format!("failing with {}\n", status.as_u16()));
    }
    match route {
        Route::Default => full(StatusCode::OK, default_body),
        Route::Status(code) => full(code, format!("status={}\n", code.as_u16())),
        Route::Delay(d) => {
            tokio::time::sleep(d).await;
            full(StatusCode::OK, default_body)
        }
        Route::Flaky(n) if seen_before % n == 0 => full(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("flaky: request {seen_before} to {path} fails (every {n}th, from the 1st)\n"),
        ),
        Route::Flaky(_) => full(StatusCode::OK, default_body),
        Route::Headers => json_response(&request_headers(&req)),
        Route::Close => {
            let mut response = full(StatusCode::OK, default_body);
            response
                .headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Route::Echo => echo(server, req).await,
        Route::Trailers => trailers(&req),
        Route::WebSocket => crate::ws::accept(req),
        Route::Stats => json_response(&server.stats()),
        Route::Bad(why) => full(StatusCode::BAD_REQUEST, why + "\n"),
    }
}

pub fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp
}

fn json_response(v: &Value) -> Response<Body> {
    let mut resp = full(StatusCode::OK, format!("{v}\n"));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn request_headers(req: &Request<Incoming>) -> Value {
    let mut map = Map::new();
    // HeaderMap iterates every value of a name in order: keep the first.
    for (name, value) in req.headers() {
        if !map.contains_key(name.as_str()) {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            map.insert(name.as_str().to_string(), value.into());
        }
    }
    let uri = req.uri();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    map.insert(":method".into(), req.method().as_str().into());
    map.insert(":path".into(), path.into());
    map.insert(":version".into(), format!("{:?}", req.version()).into());
    if let Some(authority) = uri.authority() {
        map.insert(":authority".into(), authority.as_str().into());
    }
    Value::Object(map)
}

async fn echo(server: &Server, req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut bytes = 0usize;
    // Counted frame by frame: a large body is never held in memory.
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes += frame.data_ref().map_or(0, |d| d.len()),
            Err(e) => return full(StatusCode::BAD_REQUEST, format!("reading body: {e}\n")),
        }
    }
    json_response(&json!({"bytes": bytes, "name": &*server.name}))
}

/// A body of unknown length (so HTTP/1.1 sends it chunked) followed by `x-trailer: yes`.
fn trailers(req: &Request<Incoming>) -> Response<Body> {
    // HTTP/1.1 may only carry trailers to a client that said it takes them (RFC 9110 6.5.1).
    let wants_trailers =
        req.version() == Version::HTTP_2 || has_token(req.headers(), &TE, "trailers");
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"trailers: first chunk\n"))),
        Ok(Frame::data(Bytes::from_static(b"trailers: second chunk\n"))),
    ];
    if wants_trailers {
        let mut trailer = HeaderMap::new();
        trailer.insert("x-trailer", HeaderValue::from_static("yes"));
        frames.push(Ok(Frame::trailers(trailer)));
    }
    let mut resp = Response::new(StreamBody::new(stream::iter(frames)).boxed());
    if wants_trailers {
        // hyper's HTTP/1.1 encoder sends only the trailer fields announced here.
        resp.headers_mut()
            .insert(TRAILER, HeaderValue::from_static("x-trailer"));
    }
    resp
}

/// Whether a comma-separated header (any of its lines) lists `token`, ignoring case.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/"), Route::Default);
        assert_eq!(Route::of("/healthz/ready"), Route::Default);
        assert_eq!(
            Route::of("/status/503"),
            Route::Status(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            Route::of("/delay/250"),
            Route::Delay(Duration::from_millis(250))
        );
        assert_eq!(Route::of("/flaky/2"), Route::Flaky(2));
        assert_eq!(Route::of("/headers"), Route::Headers);
        assert_eq!(Route::of("/echo"), Route::Echo);
        assert_eq!(Route::of("/trailers"), Route::Trailers);
        assert_eq!(Route::of("/ws"), Route::WebSocket);
        assert_eq!(Route::of("/stats"), Route::Stats);
        // Only exact names are special.
        assert_eq!(Route::of("/echo/more"), Route::Default);
        for bad in [
            "/status/99",
            "/status/600",
            "/status/abc",
            "/status/",
            "/delay/-1",
            "/delay/600001",
            "/flaky/1",
            "/flaky/0",
            "/flaky/x",
        ] {
            assert!(matches!(Route::of(bad), Route::Bad(_)), "{bad}");
        }
    }

    #[test]
    fn counts_per_path_number_the_flaky_requests() {
        let s = Server::new("a").unwrap();
        assert_eq!(s.count("/flaky/2"), 0);
        assert_eq!(s.count("/flaky/2"), 1);
        assert_eq!(s.count("/"), 0);
        assert_eq!(s.count("/flaky/2"), 2);
        assert_eq!(
            s.stats(),
            json!({"requests": 4, "by_path": {"/": 1, "/flaky/2": 3}, "connections": 0})
        );
        assert!(Server::new("bad\nname").is_err());
    }

    #[test]
    fn header_tokens() {
        use hyper::header::{CONNECTION, UPGRADE};
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.append(UPGRADE, HeaderValue::from_static("h2c"));
        h.append(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(has_token(&h, &CONNECTION, "upgrade"));
        assert!(has_token(&h, &UPGRADE, "websocket"));
        assert!(!has_token(&h, &CONNECTION, "close"));
        assert!(!has_token(&h, &TE, "trailers"));
    }
}
