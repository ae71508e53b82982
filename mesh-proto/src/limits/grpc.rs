//! Counting a tonic server's calls into each connection's [`RequestWatch`]: a call is in
//! flight from its request until its response body ends (for a streaming call, until the
//! stream ends), so a connection is quiet only while it has no call at all.
//!
//! Use: the server's connection type offers the watch through its
//! [`Connected::ConnectInfo`](tonic::transport::server::Connected), which tonic puts into every
//! request's extensions, and the server adds [`CountCallsLayer`]
//! (`Server::builder().layer(CountCallsLayer::<Info>::new())`).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::{RequestGuard, RequestWatch};

/// The connect info of a connection whose calls are counted.
pub trait HasRequestWatch {
    fn request_watch(&self) -> &RequestWatch;
}

/// Wraps a server's services so each call counts into its connection's watch; `I` is the
/// connect info type.
pub struct CountCallsLayer<I>(PhantomData<fn() -> I>);

impl<I> CountCallsLayer<I> {
    pub fn new() -> Self {
        CountCallsLayer(PhantomData)
    }
}

impl<I> Default for CountCallsLayer<I> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I> Clone for CountCallsLayer<I> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<S, I> Layer<S> for CountCallsLayer<I> {
    type Service = CountCalls<S, I>;
    fn layer(&self, inner: S) -> CountCalls<S, I> {
        CountCalls {
            inner,
            info: PhantomData,
        }
    }
}

pub struct CountCalls<S, I> {
    inner: S,
    info: PhantomData<fn() -> I>,
}

impl<S: Clone, I> Clone for CountCalls<S, I> {
    fn clone(&self) -> Self {
        CountCalls {
            inner: self.inner.clone(),
            info: PhantomData,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, I, ReqBody, ResBody> Service<http::Request<ReqBody>> for CountCalls<S, I>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    I: HasRequestWatch + Send + Sync + 'static,
{
    type Response = http::Response<CallBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<I>()
            .map(|info| info.request_watch().begin());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CallBody { body, _call: guard }))
        })
    }
}

/// A response body that keeps its call counted until it ends (is dropped).
pub struct CallBody<B> {
    body: B,
    _call: Option<RequestGuard>,
}

impl<B: Body + Unpin> Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One gRPC service whose calls must produce their response headers within a bound.
///
/// A unary handler runs only once the whole request body has arrived, so a client that sends
/// a call's headers and never its body would hold the call in flight (and its connection
/// open) for good. Services that answer unauthenticated clients (joining, certificate
/// signing, the config stream before its hello) are wrapped in this; the admin service is
/// not: its token is checked on the headers, and an admin's large apply must never be cut
/// half-way by a timer. Only the time to the response headers is bounded: a streaming
/// response goes on as long as it likes.
#[derive(Clone)]
pub struct ResponseDeadline<S> {
    inner: S,
    limit: std::time::Duration,
}

impl<S> ResponseDeadline<S> {
    pub fn new(inner: S, limit: std::time::Duration) -> Self {
        ResponseDeadline { inner, limit }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for ResponseDeadline<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for ResponseDeadline<S>
where
    S: Service<
        http::Request<B>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, response).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::cancelled(format!(
                    "no response within {} s: the request did not arrive in time",
                    limit.as_secs()
                ))
                .into_http()),
            }
        })
    }
}
