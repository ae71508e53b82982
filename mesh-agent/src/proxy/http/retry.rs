//! When a failed try is tried again: the `retryOn` conditions, and the backoff between tries.

use std::time::Duration;

use http::Response;
use hyper::body::Incoming;
use mesh_api::{Retries, RetryOn};

use super::errors::ProxyError;

/// `retryOn` when a route asks for retries without saying on what.
const DEFAULT_RETRY_ON: [RetryOn; 3] = [
    RetryOn::ConnectFailure,
    RetryOn::Reset,
    RetryOn::GatewayError,
];

/// Backoff base: the n-th retry waits a random time up to `BASE * 2^n`, capped.
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// How one try ended, as far as retrying is concerned.
pub enum TryOutcome<'a> {
    Response(&'a Response<Incoming>),
    Failed(ProxyError),
    /// The try's own timeout (not the whole request's) passed.
    TryTimeout,
}

/// Whether `outcome` is one the route retries.
pub fn should_retry(retries: Option<&Retries>, outcome: &TryOutcome<'_>) -> bool {
    let on: &[RetryOn] = match retries {
        Some(r) if !r.retry_on.is_empty() => &r.retry_on,
        _ => &DEFAULT_RETRY_ON,
    };
    let codes: &[u16] = retries.map_or(&[], |r| &r.retriable_status_codes);
    on.iter()
        .any(|condition| matches(*condition, codes, outcome))
}

fn matches(condition: RetryOn, codes: &[u16], outcome: &TryOutcome<'_>) -> bool {
    use RetryOn::*;
    match outcome {
        TryOutcome::Failed(ProxyError::ConnectFailure) => {
            matches!(condition, ConnectFailure | GatewayError | FiveXx)
        }
        TryOutcome::Failed(ProxyError::UpstreamReset) => {
            matches!(condition, Reset | GatewayError | FiveXx)
        }
        TryOutcome::TryTimeout => matches!(condition, GatewayError | FiveXx),
        TryOutcome::Failed(_) => false,
        TryOutcome::Response(response) => {
            let status = response.status().as_u16();
            match condition {
                FiveXx => status >= 500,
                GatewayError => matches!(status, 502..=504),
                RetriableStatusCodes => codes.contains(&status),
                Cancelled => grpc_status(response) == Some(1),
                ResourceExhausted => grpc_status(response) == Some(8),
                Unavailable => grpc_status(response) == Some(14),
                ConnectFailure | Reset => false,
            }
        }
    }
}

/// `grpc-status` of a trailers-only response (in the headers); a status in trailers comes
/// after the response started and can't be retried.
pub fn grpc_status(response: &Response<Incoming>) -> Option<u32> {
    response
        .headers()
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The wait before retry number `n` (1-based): full jitter over an exponential ceiling.
pub fn backoff(n: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << n.saturating_sub(1).min(8))
        .min(BACKOFF_MAX);
    ceiling.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            assert!(backoff(1) <= Duration::from_millis(25));
            assert!(backoff(2) <= Duration::from_millis(50));
            assert!(backoff(30) <= BACKOFF_MAX);
        }
    }

    #[test]
    fn local_failures_follow_the_conditions() {
        let connect = TryOutcome::Failed(ProxyError::ConnectFailure);
        let reset = TryOutcome::Failed(ProxyError::UpstreamReset);
        let only = |on: Vec<RetryOn>| Retries {
            attempts: 1,
            per_try_timeout_ms: None,
            retry_on: on,
            retriable_status_codes: vec![],
        };
        assert!(should_retry(None, &connect));
        assert!(should_retry(None, &reset));
        assert!(!should_retry(
            None,
            &TryOutcome::Failed(ProxyError::NoHealthyEndpoint)
        ));
        let connect_only = only(vec![RetryOn::ConnectFailure]);
        assert!(should_retry(Some(&connect_only), &connect));
        assert!(!should_retry(Some(&connect_only), &reset));
        assert!(!should_retry(Some(&connect_only), &TryOutcome::TryTimeout));
        assert!(should_retry(
            Some(&only(vec![RetryOn::FiveXx])),
            &TryOutcome::TryTimeout
        ));
    }
}
