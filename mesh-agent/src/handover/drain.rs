//! Draining: the signal connections watch to finish up, and the count of connections still
//! being served, which a stopping agent waits on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

#[derive(Default)]
pub struct Drain {
    started: watch::Sender<bool>,
    live: Arc<Live>,
}

#[derive(Default)]
struct Live {
    count: AtomicUsize,
    ended: Notify,
}

/// Held by each connection the proxy serves.
pub struct Served(Arc<Live>);

impl Drop for Served {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

impl Drain {
    /// Counts a connection until the returned guard drops.
    pub fn serve(&self) -> Served {
        self.live.count.fetch_add(1, Ordering::AcqRel);
        Served(self.live.clone())
    }

    pub fn live(&self) -> usize {
        self.live.count.load(Ordering::Acquire)
    }

    pub fn start(&self) {
        self.started.send_replace(true);
    }

    pub fn is_started(&self) -> bool {
        *self.started.borrow()
    }

    /// Resolves once draining has started (at once if it has).
    pub async fn started(&self) {
        let mut started = self.started.subscribe();
        let _ = started.wait_for(|s| *s).await;
    }

    /// Waits until no connection is left or `deadline` passes; returns those left.
    pub async fn finished_within(&self, deadline: Duration) -> usize {
        let wait = async {
            loop {
                let ended = self.live.ended.notified();
                if self.live() == 0 {
                    return;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.live()
    }
}

/// Serves the hyper connection `$connection` to its end; once `$drain` starts, asks it to
/// finish (`graceful_shutdown`: GOAWAY for HTTP/2, close after the current response for
/// HTTP/1) and serves it until it has. A macro: as a generic function over hyper's connection
/// types, the caller's future stops being provably `Send`.
macro_rules! serve_draining {
    ($drain:expr, $connection:expr) => {
        async {
            let connection = $connection;
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => served,
                _ = $drain.started() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
}
pub(crate) use serve_draining;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finishing_waits_for_the_last_connection_or_the_deadline() {
        let drain = Arc::new(Drain::default());
        let first = drain.serve();
        let second = drain.serve();
        assert_eq!(drain.finished_within(Duration::from_millis(20)).await, 2);
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.finished_within(Duration::from_secs(10)).await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(second);
        assert_eq!(waiting.await.unwrap(), 0);
        assert!(!drain.is_started());
        drain.start();
        drain.started().await;
    }
}
