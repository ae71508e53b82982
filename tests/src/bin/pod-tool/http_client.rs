//! What `http-get` and `http-load` share: the URL and `-H` parsing, one connection of either
//! HTTP version (hyper's client connections, driven by a task of their own), and the request
//! they send.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;

/// Where requests go: an `http://` URL taken apart.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as written (IPv6 literals keep their brackets), for `Host` / `:authority`.
    pub authority: String,
    /// The host without IPv6 brackets, for the resolver.
    pub host: String,
    pub port: u16,
    /// Path and query, `/` when the URL has none.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported, got {url:?}");
        }
        let authority = uri.authority().context("URL has no host")?;
        Ok(Target {
            authority: authority.as_str().to_string(),
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: authority.port_u16().unwrap_or(80),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        })
    }

    pub async fn resolve(&self) -> Result<SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("resolving {}", self.host))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.host))
    }
}

/// One `-H 'name: value'` argument.
pub fn parse_header(arg: &str) -> Result<(HeaderName, HeaderValue)> {
    let (name, value) = arg
        .split_once(':')
        .with_context(|| format!("header {arg:?} is not `name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("bad header name in {arg:?}"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("bad header value in {arg:?}"))?;
    Ok((name, value))
}

/// The request every call of a run sends (the body is shared, not copied).
#[derive(Clone)]
pub struct RequestSpec {
    pub target: Target,
    pub method: Method,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub http2: bool,
}

impl RequestSpec {
    pub fn new(
        url: &str,
        method: &str,
        headers: &[String],
        body_bytes: usize,
        http2: bool,
    ) -> Result<RequestSpec> {
        Ok(RequestSpec {
            target: Target::parse(url)?,
            method: Method::from_bytes(method.as_bytes())
                .with_context(|| format!("bad method {method:?}"))?,
            headers: headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<_>>()?,
            body: Bytes::from(vec![b'x'; body_bytes]),
            http2,
        })
    }

    pub fn request(&self) -> Result<Request<Full<Bytes>>> {
        let t = &self.target;
        // HTTP/1.1 sends origin-form plus Host; HTTP/2 needs the full URI for :authority.
        let mut req = if self.http2 {
            Request::builder().uri(format!("http://{}{}", t.authority, t.path))
        } else {
            Request::builder()
                .uri(t.path.as_str())
                .header(HOST, t.authority.as_str())
        }
        .method(self.method.clone());
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        Ok(req.body(Full::new(self.body.clone()))?)
    }

    /// A new connection of the spec's HTTP version (HTTP/2: cleartext, prior knowledge).
    pub async fn connect(&self) -> Result<Sender> {
        let addr = self.target.resolve().await?;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        // The connection tasks drive the sockets; their errors also surface through
        // send_request, so they are only logged.
        if self.http2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .context("HTTP/2 handshake")?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    eprintln!("pod-tool: HTTP/2 connection: {e}");
                }
            });
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io).await.context("HTTP handshake")?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    eprintln!("pod-tool: connection: {e}");
                }
            });
            Ok(Sender::H1(sender))
        }
    }
}

/// A client connection.
pub enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
        let resp = match self {
            Sender::H1(s) => {
                s.ready().await.context("connection")?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.context("connection")?;
                s.send_request(req).await
            }
        };
        resp.context("sending request")
    }

    /// Another handle on the same connection: HTTP/2 multiplexes, HTTP/1.1 cannot.
    pub fn share(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }

    /// The connection is gone (closed by the peer, `Connection: close`, an error).
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://[fd00::3]:8080/a/b?c=1").unwrap();
        assert_eq!(
            (
                t.authority.as_str(),
                t.host.as_str(),
                t.port,
                t.path.as_str()
            ),
            ("[fd00::3]:8080", "fd00::3", 8080, "/a/b?c=1")
        );
        let t = Target::parse("http://10.0.0.1").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let err = Target::parse("https://x/").unwrap_err().to_string();
        assert!(err.contains("only http://"), "{err}");
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn header_arguments() {
        let (n, v) = parse_header("X-Canary:  yes ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-canary", "yes"));
        // Values may contain colons; only the first one separates.
        let (n, v) = parse_header("traceparent: 00-ab:cd").unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("traceparent", "00-ab:cd")
        );
        let (_, v) = parse_header("x-empty:").unwrap();
        assert_eq!(v, "");
        for bad in ["no-colon", ": value", "bad name: v", "x: bad\nvalue"] {
            assert!(parse_header(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn requests_per_version() {
        let spec =
            RequestSpec::new("http://h:81/p?q", "POST", &["x-a: 1".into()], 3, false).unwrap();
        let req = spec.request().unwrap();
        assert_eq!(req.uri(), "/p?q");
        assert_eq!(req.headers()[HOST], "h:81");
        assert_eq!(req.headers()["x-a"], "1");
        assert_eq!(req.method(), Method::POST);
        let spec = RequestSpec {
            http2: true,
            ..spec
        };
        let req = spec.request().unwrap();
        assert_eq!(req.uri(), "http://h:81/p?q");
        assert!(req.headers().get(HOST).is_none());
        assert!(RequestSpec::new("http://h/", "BAD METHOD", &[], 0, false).is_err());
    }
}
