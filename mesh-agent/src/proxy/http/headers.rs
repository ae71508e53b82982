//! Header handling on the way through: what never crosses a proxy (hop-by-hop headers), the
//! request line as the upstream's HTTP version needs it, a Route's header rules, and the
//! request id and trace context every hop's log line shares.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::Version;
use mesh_api::HeaderOps;

/// Headers about one connection, not the message (RFC 9110 §7.6.1), plus those HTTP/2
/// forbids. `te: trailers` is the exception gRPC needs, handled in [`strip_hop_by_hop`].
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and any header the `Connection` header names. Keeps
/// `te: trailers` (gRPC requires it end to end) and drops any other `te`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim() == "trailers"))
    });
    headers.remove(header::TE);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether the request asks to switch protocols (WebSocket and the like; HTTP/1.1 only).
/// An upgrade to HTTP/2 (`h2c`) is not one: it is stripped like any hop-by-hop header, as
/// Envoy does, since after the switch the app would take HTTP/2 requests nobody judged or
/// routed (the mesh already speaks HTTP/2 where the port says so).
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    let to_http2 = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p.starts_with("h2c") || p.starts_with("http/2")
        });
    version == Version::HTTP_11
        && !to_http2
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Rewrites the request target for the upstream's HTTP version: HTTP/2 needs the authority
/// (from the Host header of an HTTP/1 request); HTTP/1 takes the origin form, with the
/// authority as the Host header.
pub fn fit_request_target(
    uri: &mut Uri,
    headers: &mut HeaderMap,
    upstream: Version,
    fallback_authority: &str,
) {
    let authority = uri
        .authority()
        .cloned()
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<Authority>().ok())
        })
        .or_else(|| fallback_authority.parse::<Authority>().ok());
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if upstream == Version::HTTP_2 {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(uri.scheme().cloned().unwrap_or(Scheme::HTTP));
        parts.authority = authority;
        parts.path_and_query = Some(path);
        if let Ok(absolute) = Uri::from_parts(parts) {
            *uri = absolute;
        }
        // :authority carries it; a Host header too would be redundant (and may disagree).
        headers.remove(header::HOST);
    } else {
        if !headers.contains_key(header::HOST) {
            if let Some(value) = authority
                .as_ref()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(header::HOST, value);
            }
        }
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(path);
        if let Ok(origin) = Uri::from_parts(parts) {
            *uri = origin;
        }
    }
}

/// Applies a Route's `set`, `add` and `remove` (names and values were validated at apply
/// time; one that still doesn't parse is skipped rather than failing the request).
pub fn apply_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
    for (name, value) in &ops.set {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &ops.add {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
}

/// The request's `x-request-id` (set to a new random one when absent) and trace id: from
/// `traceparent` or B3 if present, else a new W3C trace when tracing is on and this request
/// is sampled. Incoming trace headers are forwarded unchanged.
pub fn ensure_ids(headers: &mut HeaderMap, tracing: Option<f64>) -> (String, Option<String>) {
    let request_id = match headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) => id.to_owned(),
        None => {
            let id = random_hex::<16>();
            if let Ok(v) = HeaderValue::from_str(&id) {
                headers.insert("x-request-id", v);
            }
            id
        }
    };
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .or_else(|| headers.get("x-b3-traceid").and_then(|v| v.to_str().ok()))
        .map(str::to_owned);
    if trace.is_some() {
        return (request_id, trace);
    }
    let Some(sampling) = tracing else {
        return (request_id, None);
    };
    let trace_id = random_hex::<16>();
    let sampled = rand::random::<f64>() < sampling;
    let traceparent = format!(
        "00-{trace_id}-{}-{}",
        random_hex::<8>(),
        if sampled { "01" } else { "00" }
    );
    if let Ok(v) = HeaderValue::from_str(&traceparent) {
        headers.insert("traceparent", v);
    }
    (request_id, Some(trace_id))
}

/// N random bytes as lowercase hex.
fn random_hex<const N: usize>() -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bytes: [u8; N] = rand::random();
    let mut hex = String::with_capacity(2 * N);
    for b in bytes {
        hex.push(char::from(DIGITS[usize::from(b >> 4)]));
        hex.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "trailers, deflate".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "te"]);
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn websocket_is_an_upgrade_and_h2c_is_not() {
        let with = |upgrade: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                "Upgrade, HTTP2-Settings".parse().unwrap(),
            );
            h.insert(header::UPGRADE, upgrade.parse().unwrap());
            h
        };
        assert!(is_upgrade(Version::HTTP_11, &with("websocket")));
        assert!(!is_upgrade(Version::HTTP_2, &with("websocket")));
        assert!(!is_upgrade(Version::HTTP_11, &with("h2c")));
        assert!(!is_upgrade(Version::HTTP_11, &with("websocket, H2C")));
        // Not an upgrade: stripped, so the app never sees the offer.
        let mut offer = with("h2c");
        offer.insert(
            "http2-settings",
            "AAMAAABkAAQCAAAAAAIAAAAA".parse().unwrap(),
        );
        strip_hop_by_hop(&mut offer);
        assert!(offer.is_empty(), "{offer:?}");
    }

    #[test]
    fn request_targets_fit_the_upstream_version() {
        let mut uri: Uri = "/a?b=1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "web.default:80".parse().unwrap());
        fit_request_target(&mut uri, &mut h, Version::HTTP_2, "10.96.0.1:80");
        assert_eq!(uri.to_string(), "http://web.default:80/a?b=1");
        assert!(!h.contains_key(header::HOST));

        fit_request_target(&mut uri, &mut h, Version::HTTP_11, "10.96.0.1:80");
        assert_eq!(uri.to_string(), "/a?b=1");
        assert_eq!(h[header::HOST], "web.default:80");

        let mut uri: Uri = "/".parse().unwrap();
        let mut h = HeaderMap::new();
        fit_request_target(&mut uri, &mut h, Version::HTTP_2, "10.96.0.1:80");
        assert_eq!(uri.to_string(), "http://10.96.0.1:80/");
    }

    #[test]
    fn ids_are_kept_or_made() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        h.insert("x-request-id", "abc".parse().unwrap());
        let (id, trace) = ensure_ids(&mut h, Some(1.0));
        assert_eq!(id, "abc");
        assert_eq!(trace.as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));

        let mut h = HeaderMap::new();
        let (id, trace) = ensure_ids(&mut h, None);
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id.as_str());
        assert!(trace.is_none() && !h.contains_key("traceparent"));

        let (_, trace) = ensure_ids(&mut HeaderMap::new(), Some(0.0));
        assert_eq!(trace.map(|t| t.len()), Some(32));
    }
}
