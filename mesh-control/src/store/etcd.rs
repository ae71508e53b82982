//! The store on etcd, for several control-plane replicas sharing one store.
//!
//! All keys live under a namespace prefix ([`EtcdStore::DEFAULT_NAMESPACE`]); callers see
//! exactly the keys they passed. Revisions are etcd's: they grow by one per write of this
//! store only while nothing else writes to the etcd cluster.
//!
//! Watches survive an etcd member dying: on a transport error, a stream end or a cancel that
//! is not a compaction (e.g. the member lost its leader) the watch is re-created, through any
//! reachable member, from the revision after the last one delivered; events at or below that
//! revision are dropped, so the stream has no gaps and no duplicates.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream, Watcher,
};
use futures::stream::BoxStream;

use super::{Event, KeyValue, Revision, Store, StoreError, StoreResult};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A request that takes longer is given up and sent again (see [`request`]).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys per range request when listing (all pages read at one revision).
const LIST_PAGE: i64 = 1000;
/// Responses can be large (a list page, a watch batch).
const MAX_MESSAGE: usize = 256 << 20;
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(50);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The etcd-backed store; cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    namespace: String,
    endpoints: Vec<String>,
}

impl EtcdStore {
    /// Where this store's keys live in etcd (`/mesh-control/mesh/v1/...`).
    pub const DEFAULT_NAMESPACE: &'static str = "/mesh-control";

    /// Connects to the etcd cluster at `endpoints` ("host:port", also "http://host:port") with
    /// keys under [`DEFAULT_NAMESPACE`](Self::DEFAULT_NAMESPACE). Fails if no member answers
    /// (with a leader) within 5 s.
    pub async fn connect(endpoints: Vec<String>) -> anyhow::Result<EtcdStore> {
        Self::connect_with_namespace(endpoints, Self::DEFAULT_NAMESPACE).await
    }

    /// Like [`connect`](Self::connect) with keys under `namespace` (tests, benchmarks, several
    /// meshes on one etcd).
    pub async fn connect_with_namespace(
        endpoints: Vec<String>,
        namespace: &str,
    ) -> anyhow::Result<EtcdStore> {
        anyhow::ensure!(!endpoints.is_empty(), "no etcd endpoints given");
        let list = endpoints.join(",");
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|e| anyhow::anyhow!("etcd endpoints {list}: {e}"))?;
        let store = EtcdStore {
            client,
            namespace: namespace.to_owned(),
            endpoints,
        };
        // The client connects lazily: make sure someone answers (a linearizable read needs a
        // leader). A fresh cluster may still be electing one, so retry until the deadline.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            let mut kv = store.kv();
            let probe = kv.get(
                store.namespace.as_bytes(),
                Some(GetOptions::new().with_count_only()),
            );
            let last = match tokio::time::timeout_at(deadline, probe).await {
                Ok(Ok(_)) => return Ok(store),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                anyhow::bail!(
                    "cannot reach etcd at {list} within {CONNECT_TIMEOUT:?} (last error: {last})"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.namespace).into_bytes()
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> StoreResult<KeyValue> {
        Ok(KeyValue {
            key: strip_namespace(&self.namespace, kv.key())?,
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision() as Revision,
        })
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }
}

fn strip_namespace(namespace: &str, key: &[u8]) -> StoreResult<String> {
    let key = std::str::from_utf8(key)
        .map_err(|_| StoreError::Other(format!("etcd key {key:?} is not UTF-8")))?;
    key.strip_prefix(namespace)
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Other(format!("etcd key {key:?} outside {namespace:?}")))
}

/// The end of the range of keys starting with `prefix` (etcd's convention: `\0` = no end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn map_err(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match &e {
        E::GRpcStatus(status) => match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Unknown => StoreError::Unavailable(format!("etcd: {}", status.message())),
            _ => StoreError::Other(format!("etcd: {}", status.message())),
        },
        E::TransportError(_) | E::IoError(_) => StoreError::Unavailable(format!("etcd: {e}")),
        _ => StoreError::Other(format!("etcd: {e}")),
    }
}

/// One etcd request: `f(attempt)` sends it (again). Transient failures (no connection to
/// the member the client picked, e.g. a dead one; no leader; a leader change; an attempt
/// taking longer than [`ATTEMPT_TIMEOUT`], e.g. a proposal lost with a dead leader) are
/// retried until [`REQUEST_TIMEOUT`] passes, so a write survives an etcd member dying.
///
/// A retried write may have been applied by an earlier attempt whose answer was lost: a put is
/// then applied twice (same value, the later revision is returned), a delete reports `None`;
/// `create` checks for its own value (see there).
/// The most writes one apply sends as one Txn: etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

async fn request<T, F, Fut>(what: &str, mut f: F) -> StoreResult<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut pause = Duration::from_millis(10);
    for attempt in 0.. {
        let attempt_deadline = deadline.min(tokio::time::Instant::now() + ATTEMPT_TIMEOUT);
        let error = match tokio::time::timeout_at(attempt_deadline, f(attempt)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => match map_err(e) {
                StoreError::Unavailable(e) => e,
                e => return Err(e),
            },
            Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(StoreError::Unavailable(format!(
                "etcd {what} failed for {REQUEST_TIMEOUT:?}; last error: {error}"
            )));
        }
        tracing::debug!(%error, attempt, "etcd {what} failed; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    unreachable!()
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> StoreResult<Revision> {
    header
        .map(|h| h.revision() as Revision)
        .ok_or_else(|| StoreError::Other("etcd response without header".into()))
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let (kv, key) = (self.kv(), self.full_key(key));
        let resp = request("get", |_| {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move { kv.get(key, None).await }
        })
        .await?;
        resp.kvs().first().map(|kv| self.to_kv(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        let kv = self.kv();
        let start = self.full_key(prefix);
        let end = prefix_end(&start);
        let mut from = start;
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                // Later pages at the first page's revision: one consistent view.
                options = options.with_revision(revision as i64);
            }
            let resp = request("list", |_| {
                let (mut kv, from, options) = (kv.clone(), from.clone(), options.clone());
                async move { kv.get(from, Some(options)).await }
            })
            .await?;
            if revision == 0 {
                revision = header_revision(resp.header())?;
            }
            for kv in resp.kvs() {
                out.push(self.to_kv(kv)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> StoreResult<Revision> {
        let (kv, key) = (self.kv(), self.full_key(key));
        let resp = request("put", |_| {
            let (mut kv, key, value) = (kv.clone(), key.clone(), value.clone());
            async move { kv.put(key, value, None).await }
        })
        .await?;
        header_revision(resp.header())
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> StoreResult<Option<Revision>> {
        let kv = self.kv();
        let key = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let (resp, retried) = request("create", |attempt| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { Ok((kv.txn(txn).await?, attempt > 0)) }
        })
        .await?;
        if resp.succeeded() {
            return header_revision(resp.header()).map(Some);
        }
        // An earlier attempt whose answer was lost may have created it: the key holding exactly
        // our value then counts as our create.
        if retried {
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    if let Some(existing) = get.kvs().first() {
                        if existing.value() == value.as_slice() {
                            return Ok(Some(existing.mod_revision() as Revision));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    async fn delete(&self, key: &str) -> StoreResult<Option<Revision>> {
        let (kv, key) = (self.kv(), self.full_key(key));
        let resp = request("delete", |_| {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move { kv.delete(key, None).await }
        })
        .await?;
        if resp.deleted() > 0 {
            header_revision(resp.header()).map(Some)
        } else {
            Ok(None)
        }
    }

    async fn apply(
        &self,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> StoreResult<Vec<Option<Revision>>> {
        if writes.len() > MAX_TXN_OPS {
            // More than etcd takes in one Txn (its --max-txn-ops, 128 by default): written
            // one by one, pipelined, as an apply of a large file has always been on etcd.
            return futures::future::try_join_all(writes.into_iter().map(
                |(key, value)| async move {
                    match value {
                        Some(value) => self.put(&key, value).await.map(Some),
                        None => self.delete(&key).await,
                    }
                },
            ))
            .await;
        }
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|(key, value)| {
                let key = self.full_key(key);
                match value {
                    Some(value) => TxnOp::put(key, value.clone(), None),
                    None => TxnOp::delete(key, None),
                }
            })
            .collect();
        let kv = self.kv();
        let txn = Txn::new().and_then(ops);
        let resp = request("txn", |_| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await?;
        let revision = header_revision(resp.header())?;
        Ok(resp
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Delete(d) if d.deleted() == 0 => None,
                _ => Some(revision),
            })
            .collect())
    }

    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> StoreResult<BoxStream<'static, StoreResult<Vec<Event>>>> {
        let mut watch = EtcdWatch {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            key: self.full_key(prefix),
            last: after,
            stream: None,
            pending: VecDeque::new(),
            backoff: WATCH_BACKOFF_MIN,
            done: false,
        };
        // Create the first watch now, so an unreachable etcd fails the call.
        watch.open().await?;
        Ok(Box::pin(futures::stream::unfold(
            watch,
            |mut w| async move {
                let item = w.next().await?;
                Some((item, w))
            },
        )))
    }

    fn describe(&self) -> String {
        let endpoints: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| {
                e.strip_prefix("http://")
                    .or_else(|| e.strip_prefix("https://"))
                    .unwrap_or(e)
            })
            .collect();
        format!("etcd://{}", endpoints.join(","))
    }
}

struct EtcdWatch {
    client: Client,
    namespace: String,
    /// Full etcd key prefix watched.
    key: Vec<u8>,
    /// Last revision delivered (or queued); the watch resumes after it.
    last: Revision,
    /// The live watch (the `Watcher` keeps its request channel, hence the stream, open).
    stream: Option<(Watcher, WatchStream)>,
    pending: VecDeque<Vec<Event>>,
    backoff: Duration,
    done: bool,
}

impl EtcdWatch {
    async fn open(&mut self) -> StoreResult<()> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.last as i64 + 1);
        let client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let created = request("watch", |_| {
            let (mut client, key, options) = (client.clone(), self.key.clone(), options.clone());
            async move { client.watch(key, Some(options)).await }
        })
        .await?;
        self.stream = Some(created);
        Ok(())
    }

    async fn retry_later(&mut self, why: &StoreError) {
        tracing::warn!(error = %why, after = self.last, "etcd watch broke; re-creating it");
        self.stream = None;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(WATCH_BACKOFF_MAX);
    }

    async fn next(&mut self) -> Option<StoreResult<Vec<Event>>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            let Some((_, stream)) = self.stream.as_mut() else {
                if let Err(e) = self.open().await {
                    self.retry_later(&e).await;
                }
                continue;
            };
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    let e = StoreError::Unavailable("etcd closed the watch stream".into());
                    self.retry_later(&e).await;
                    continue;
                }
                Err(e) => {
                    let e = map_err(e);
                    self.retry_later(&e).await;
                    continue;
                }
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    self.done = true;
                    return Some(Err(StoreError::Compacted {
                        requested: self.last,
                        oldest: resp.compact_revision() as Revision,
                    }));
                }
                let e = StoreError::Unavailable(format!(
                    "etcd canceled the watch: {}",
                    resp.cancel_reason()
                ));
                self.retry_later(&e).await;
                continue;
            }
            // etcd may put several revisions in one response: one batch per revision.
            let mut newest = self.last;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision() as Revision;
                if revision <= self.last {
                    continue; // delivered before the watch was re-created
                }
                newest = newest.max(revision);
                let key = match strip_namespace(&self.namespace, kv.key()) {
                    Ok(key) => key,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                };
                let event = match event.event_type() {
                    EventType::Put => Event::Put(KeyValue {
                        key,
                        value: kv.value().to_vec(),
                        mod_revision: revision,
                    }),
                    EventType::Delete => Event::Delete { key, revision },
                };
                match self.pending.back_mut() {
                    Some(batch) if batch[0].revision() == revision => batch.push(event),
                    _ => self.pending.push_back(vec![event]),
                }
            }
            self.last = newest;
            if !resp.events().is_empty() {
                self.backoff = WATCH_BACKOFF_MIN;
            }
        }
    }
}
