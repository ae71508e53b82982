//! Answers the proxy makes itself, each with the Envoy response flag operators know, as an
//! HTTP status or, to a gRPC client, a trailers-only response with the matching
//! `grpc-status` (a gRPC client can't read an HTML error page).

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_api::jwt::JwtError;

use super::body::BoxError;

pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Why the proxy answered instead of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No healthy endpoint to send the request to (UH).
    NoHealthyEndpoint,
    /// Connecting to the endpoint failed (UF).
    ConnectFailure,
    /// The route's or the try's timeout passed before the response headers (UT).
    Timeout,
    /// The upstream connection ended or reset the stream before a response (UC).
    UpstreamReset,
    /// A rule names a backend port the backend Service lacks (NR).
    NoRoute,
    /// The destination's policy refused the request, or the connection it would ride on
    /// (RBAC).
    Denied,
    /// The request's JWT did not verify (JWT): 401 with `WWW-Authenticate`.
    Unauthenticated(JwtError),
    /// A fault rule aborted the request with this status (FI).
    FaultAbort(u16),
    /// The request head is over the proxy's limit (DPE, a downstream protocol error).
    HeadTooLarge,
    /// The request is ambiguous in a way that matters to policy (two Host headers): 400 (DPE).
    Ambiguous,
    /// The service's `connectionPool` limit on this node was reached (UO, upstream
    /// overflow): failing fast instead of queueing on a struggling service.
    Overflow,
}

impl ProxyError {
    /// The Envoy response flag.
    pub fn flag(self) -> &'static str {
        match self {
            ProxyError::NoHealthyEndpoint => "UH",
            ProxyError::ConnectFailure => "UF",
            ProxyError::Timeout => "UT",
            ProxyError::UpstreamReset => "UC",
            ProxyError::NoRoute => "NR",
            ProxyError::Denied => "RBAC",
            ProxyError::Unauthenticated(_) => "JWT",
            ProxyError::FaultAbort(_) => "FI",
            ProxyError::HeadTooLarge | ProxyError::Ambiguous => "DPE",
            ProxyError::Overflow => "UO",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoHealthyEndpoint | ProxyError::ConnectFailure | ProxyError::Overflow => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamReset => StatusCode::BAD_GATEWAY,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Denied => StatusCode::FORBIDDEN,
            ProxyError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ProxyError::FaultAbort(code) => {
                StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Ambiguous => StatusCode::BAD_REQUEST,
        }
    }

    /// What the body (or `grpc-message`) says.
    fn message(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            ProxyError::NoHealthyEndpoint => "no healthy upstream",
            ProxyError::ConnectFailure => "upstream connect error",
            ProxyError::Timeout => "upstream request timeout",
            ProxyError::UpstreamReset => "upstream connection reset before response",
            ProxyError::NoRoute => "no route to a backend port",
            ProxyError::Denied => "RBAC: access denied",
            ProxyError::Unauthenticated(e) => {
                return Cow::Owned(format!("Jwt verification fails: {e}"))
            }
            ProxyError::FaultAbort(_) => "fault filter abort",
            ProxyError::HeadTooLarge => "request header fields too large",
            ProxyError::Ambiguous => "bad request: more than one Host header",
            ProxyError::Overflow => "upstream overflow: circuit breaker open",
        })
    }

    /// The gRPC status code for a gRPC client.
    pub fn grpc_status(self) -> u8 {
        match self {
            ProxyError::Timeout => 4,             // DEADLINE_EXCEEDED
            ProxyError::NoRoute => 12,            // UNIMPLEMENTED
            ProxyError::Denied => 7,              // PERMISSION_DENIED
            ProxyError::Unauthenticated(_) => 16, // UNAUTHENTICATED
            ProxyError::FaultAbort(code) => grpc_status_of_http(code),
            // Not UNAVAILABLE: the same request would fail again.
            ProxyError::HeadTooLarge => 8, // RESOURCE_EXHAUSTED
            ProxyError::Ambiguous => 13,   // INTERNAL, as gRPC maps HTTP 400
            _ => 14,                       // UNAVAILABLE
        }
    }

    /// The answer to the client.
    pub fn response(self, grpc: bool) -> Response<ProxyBody> {
        let mut response = if grpc {
            // Trailers-only: HTTP 200, the status in the (only) header block, no body.
            let mut r = Response::new(empty());
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(
                "grpc-status",
                HeaderValue::from(u16::from(self.grpc_status())),
            );
            // The texts are ASCII without control characters: always a valid value.
            if let Ok(message) = HeaderValue::from_str(&self.message()) {
                h.insert("grpc-message", message);
            }
            r
        } else {
            let mut r = Response::new(full(format!("{}\n", self.message())));
            *r.status_mut() = self.status();
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
            r
        };
        let headers = response.headers_mut();
        headers.insert(
            "x-mesh-response-flags",
            HeaderValue::from_static(self.flag()),
        );
        if let ProxyError::Unauthenticated(e) = self {
            if let Ok(challenge) = HeaderValue::from_str(&e.www_authenticate()) {
                headers.insert(http::header::WWW_AUTHENTICATE, challenge);
            }
        }
        response
    }
}

/// The gRPC status an HTTP status maps to (gRPC's "HTTP to gRPC status code mapping").
pub fn grpc_status_of_http(code: u16) -> u8 {
    match code {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

pub fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|e| match e {})
        .boxed_unsync()
}
