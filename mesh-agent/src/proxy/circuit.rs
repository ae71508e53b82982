//! Circuit breakers per Service on this node (`connectionPool`): how many connections
//! (TCP connections, and upstream HTTP connections), pending HTTP requests (waiting for
//! their upstream connection to open), HTTP requests in flight and retries in flight this
//! node's pods may have towards the service at once. Past a limit the proxy fails fast
//! instead of piling more onto a struggling service: a TCP connection is reset, an HTTP
//! request answered 503 with flag UO (gRPC UNAVAILABLE), a retry not made.
//!
//! Every overflow counts in `mesh_circuit_breaker_opens_total`, as does every outlier
//! ejection (`limit="outlier_ejection"`): the design's `circuit_breaker_opens`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mesh_api::{ConnectionPool, ObjectKey, Service};
use parking_lot::RwLock;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// One of the `connectionPool` limits.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values as in the resource's field names
pub enum Limit {
    max_connections,
    max_pending_requests,
    max_requests,
    max_retries,
    outlier_ejection,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpenLabels {
    pub service_namespace: String,
    pub service: String,
    pub limit: Limit,
}

/// In-flight counts of one service.
#[derive(Default)]
struct Counts {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl Counts {
    fn of(&self, limit: Limit) -> Option<&AtomicU32> {
        match limit {
            Limit::max_connections => Some(&self.connections),
            Limit::max_pending_requests => Some(&self.pending),
            Limit::max_requests => Some(&self.requests),
            Limit::max_retries => Some(&self.retries),
            Limit::outlier_ejection => None,
        }
    }
}

#[derive(Default)]
pub struct Breakers {
    services: RwLock<HashMap<ObjectKey, Arc<Counts>>>,
    pub opens: Family<OpenLabels, Counter>,
}

/// Held while the thing it counts is in flight; gives its slot back when dropped.
pub struct Permit {
    counts: Arc<Counts>,
    limit: Limit,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(count) = self.counts.of(self.limit) {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A limit was reached: fail fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow(pub Limit);

impl Breakers {
    /// A slot under `limit` of `service`'s `connectionPool`; `Ok(None)` when the service
    /// sets no `connectionPool` (nothing is counted then).
    pub fn acquire(&self, service: &Service, limit: Limit) -> Result<Option<Permit>, Overflow> {
        let Some(pool) = &service.spec.connection_pool else {
            return Ok(None);
        };
        let key = service.metadata.key();
        let counts = self.counts(&key);
        let max = max_of(pool, limit);
        let Some(count) = counts.of(limit) else {
            return Ok(None);
        };
        let taken = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        if taken.is_err() {
            self.opened(&key, limit);
            return Err(Overflow(limit));
        }
        Ok(Some(Permit { counts, limit }))
    }

    /// Counts a breaker opening (an overflow, or an outlier ejection).
    pub fn opened(&self, service: &ObjectKey, limit: Limit) {
        self.opens
            .get_or_create(&OpenLabels {
                service_namespace: service.namespace.clone(),
                service: service.name.clone(),
                limit,
            })
            .inc();
    }

    /// What `service` has in flight on this node now: connections, pending requests,
    /// requests, retries.
    pub fn in_flight(&self, service: &ObjectKey) -> [u32; 4] {
        let Some(counts) = self.services.read().get(service).cloned() else {
            return [0; 4];
        };
        [
            &counts.connections,
            &counts.pending,
            &counts.requests,
            &counts.retries,
        ]
        .map(|c| c.load(Ordering::Acquire))
    }

    fn counts(&self, key: &ObjectKey) -> Arc<Counts> {
        if let Some(counts) = self.services.read().get(key) {
            return counts.clone();
        }
        self.services
            .write()
            .entry(key.clone())
            .or_default()
            .clone()
    }
}

fn max_of(pool: &ConnectionPool, limit: Limit) -> u32 {
    match limit {
        Limit::max_connections => pool.max_connections,
        Limit::max_pending_requests => pool.max_pending_requests,
        Limit::max_requests => pool.max_requests,
        Limit::max_retries => pool.max_retries,
        Limit::outlier_ejection => u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_when_permits_drop_and_overflows_are_counted() {
        let yaml = "apiVersion: mesh/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  vips: [\"10.96.0.9\"]\n  ports: [{port: 80}]\n  selector: {app: web}\n  connectionPool: {maxConnections: 2, maxRetries: 1}\n";
        let resources = mesh_api::load_str("t.yaml", yaml).unwrap();
        let snapshot = mesh_api::Snapshot::from_resources(resources).unwrap();
        let web = snapshot.service("default", "web").unwrap();
        let breakers = Breakers::default();
        let a = breakers.acquire(web, Limit::max_connections).unwrap();
        let b = breakers.acquire(web, Limit::max_connections).unwrap();
        assert!(a.is_some() && b.is_some());
        assert_eq!(
            breakers.acquire(web, Limit::max_connections).err(),
            Some(Overflow(Limit::max_connections))
        );
        assert_eq!(breakers.in_flight(&web.metadata.key()), [2, 0, 0, 0]);
        drop(a);
        assert!(breakers.acquire(web, Limit::max_connections).is_ok());
        let labels = OpenLabels {
            service_namespace: "default".into(),
            service: "web".into(),
            limit: Limit::max_connections,
        };
        assert_eq!(breakers.opens.get_or_create(&labels).get(), 1);
    }
}
