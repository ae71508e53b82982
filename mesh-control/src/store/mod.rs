//! The durable store behind the control plane: a key-value map with a global revision and
//! watches, implemented by an embedded database (default, no setup) and by etcd (several
//! control-plane replicas sharing one store).
//!
//! Keys are strings (`/mesh/v1/<Kind>/<ns>/<name>` for resources, other prefixes for control
//! plane state); values are bytes. Every write bumps the store revision; a watch delivers
//! every change after a given revision, in order, so a replica can rebuild exactly the state
//! at any revision it has seen and follow from there.

mod embedded;
mod etcd;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use etcd::EtcdStore;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub type Revision = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that last changed this key.
    pub mod_revision: Revision,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

impl Event {
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The history before this revision is gone: re-list and watch from the new revision.
    #[error("revision {requested} is compacted (oldest available: {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>>;
    /// Every key under `prefix`, sorted by key, and the store revision of this view.
    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)>;
    /// Writes `key`; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> StoreResult<Revision>;
    /// Writes `key` only if it does not exist; `None` if it did (value unchanged).
    async fn create(&self, key: &str, value: Vec<u8>) -> StoreResult<Option<Revision>>;
    /// Deletes `key`; `None` if it did not exist.
    async fn delete(&self, key: &str) -> StoreResult<Option<Revision>>;
    /// Writes every `(key, value)` (`None` = delete) together: all of them or none. Per
    /// write, in order, its revision, `None` for a delete of a missing key. Each write still
    /// gets its own revision on the embedded store; etcd gives them one (one `Txn`).
    async fn apply(
        &self,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> StoreResult<Vec<Option<Revision>>>;
    /// Every change under `prefix` with revision > `after`, in revision order, then live
    /// changes as they happen, with no gaps and no duplicates. Each batch holds the events of
    /// exactly one revision (one write).
    ///
    /// `after == 0` means "the whole history", which only works while the store still has
    /// all of it. When changes after `after` are no longer available (the embedded store's
    /// change log was trimmed, etcd compacted), this fails with [`StoreError::Compacted`]:
    /// either from the call or as the stream's only item (etcd reports it asynchronously; a
    /// watcher that falls too far behind can also get it later). The caller then re-lists and
    /// watches from the listing's revision. `after` beyond the current revision is allowed
    /// (the watch waits for it). A stream that fails ends after its error.
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> StoreResult<BoxStream<'static, StoreResult<Vec<Event>>>>;
    /// For status output: "embedded:/path" or "etcd://a,b,c".
    fn describe(&self) -> String;
}

pub type SharedStore = Arc<dyn Store>;
