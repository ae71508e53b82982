//! The default store: one redb file, durable, no setup.
//!
//! Tables:
//! - `kv`: key -> (mod_revision, value);
//! - `log`: revision -> (key, Some(value) | None for a delete), the change log watches replay
//!   from, trimmed to the last [`EmbeddedOptions::log_retention`] entries;
//! - `meta`: `revision` (current store revision) and `compacted` (highest revision trimmed from
//!   the log; 0 while the log is complete).
//!
//! Writes go to one writer thread, which commits them in durable redb write transactions:
//! whatever is queued when a commit starts goes into that transaction (group commit), each
//! write with its own revision, so concurrent writers share the fsync. The writes of one
//! `apply` are queued as one request and never split across transactions, so they commit
//! together or not at all. A caller gets its
//! revision only after the commit. The writer then broadcasts the events to live watchers, in
//! revision order.
//!
//! A watch subscribes to the broadcast *before* reading the log, so every event is either in
//! what it reads or in what it receives; it drops broadcast events it has already delivered
//! (by revision). A watcher that falls behind the broadcast buffer (`Lagged`) re-reads the
//! missing revisions from the log, so a slow watcher never silently loses events; if the log no
//! longer has them the stream ends with [`StoreError::Compacted`].

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Weak};

use anyhow::Context as _;
use async_trait::async_trait;
use futures::stream::BoxStream;
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::{Event, KeyValue, Revision, Store, StoreError, StoreResult};

/// key -> (mod_revision, value)
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
/// revision -> (key, value; `None` for a delete)
const LOG: TableDefinition<u64, (&str, Option<&[u8]>)> = TableDefinition::new("log");
/// "revision" | "compacted" -> revision
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// Writes committed together at most (group commit).
const MAX_BATCH: usize = 512;

/// Tuning for [`EmbeddedStore::open_with`]; the defaults are what [`EmbeddedStore::open`] uses.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Change-log entries kept for watches (a watch from an older revision gets
    /// [`StoreError::Compacted`]). At least 1.
    pub log_retention: u64,
    /// Events buffered per live watcher before it must catch up from the log. At least 1.
    pub watch_buffer: usize,
    /// Log entries a catching-up watch reads per blocking call. At least 1.
    pub replay_page: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            log_retention: 100_000,
            watch_buffer: 4096,
            replay_page: 1024,
        }
    }
}

/// The embedded store (see the module docs). Cheap to clone; all clones share the database.
///
/// Only one process (and one `EmbeddedStore` within a process) may have the file open. Open
/// watch streams do not keep it open: when the last clone is dropped the file is closed (after
/// in-flight writes commit) and their streams end.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    replay_page: usize,
    events: broadcast::Sender<Arc<Event>>,
    /// To the writer thread; `None` only while dropping.
    writes: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has committed what was queued; wait for
        // it so the file is closed (and can be reopened) when the store is gone.
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("embedded store: {e}"))
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path` with the default options. Creates the parent
    /// directories; the file gets mode 0600 (it holds the CA key).
    pub fn open(path: &Path) -> anyhow::Result<EmbeddedStore> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    pub fn open_with(path: &Path, options: EmbeddedOptions) -> anyhow::Result<EmbeddedStore> {
        anyhow::ensure!(
            options.log_retention >= 1,
            "log_retention must be at least 1"
        );
        anyhow::ensure!(options.watch_buffer >= 1, "watch_buffer must be at least 1");
        anyhow::ensure!(options.replay_page >= 1, "replay_page must be at least 1");
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating directory {}", parent.display()))?;
        }
        // Create the file ourselves so it is never readable by others, not even briefly; an
        // empty file is initialised by redb. Tighten an existing file too.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        drop(file);

        let db = match Database::create(path) {
            Ok(db) => Arc::new(db),
            Err(DatabaseError::DatabaseAlreadyOpen) => anyhow::bail!(
                "another mesh-control is using {} (the embedded store allows one process; \
                 use --store etcd://... for several replicas)",
                path.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("opening store {}", path.display()));
            }
        };
        // Make sure every table exists so read transactions can open them.
        let txn = db.begin_write()?;
        {
            txn.open_table(KV)?;
            txn.open_table(LOG)?;
            txn.open_table(META)?;
        }
        txn.commit()?;

        let (events, _) = broadcast::channel(options.watch_buffer);
        let (writes, queue) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            retention: options.log_retention,
            events: events.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(queue))
            .context("starting the store writer thread")?;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                replay_page: options.replay_page,
                events,
                writes: Some(writes),
                writer: Some(writer),
            }),
        })
    }

    /// The current store revision (0 for a new store).
    pub async fn revision(&self) -> StoreResult<Revision> {
        self.read(|inner| {
            let txn = inner.db.begin_read().map_err(other)?;
            let meta = txn.open_table(META).map_err(other)?;
            meta_get(&meta, META_REVISION)
        })
        .await
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(other)?
    }

    async fn write(&self, key: &str, op: Op) -> StoreResult<Option<Revision>> {
        let revisions = self.write_all(vec![(key.to_owned(), op)]).await?;
        Ok(revisions.into_iter().next().flatten())
    }

    /// Writes `ops` in one transaction (all or none); per op its revision, `None` when it
    /// changed nothing.
    async fn write_all(&self, ops: Vec<(String, Op)>) -> StoreResult<Vec<Option<Revision>>> {
        let (reply, result) = oneshot::channel();
        let request = WriteRequest { ops, reply };
        let stopped = || StoreError::Unavailable("embedded store writer stopped".into());
        self.inner
            .writes
            .as_ref()
            .ok_or_else(stopped)?
            .send(request)
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

enum Op {
    Put(Vec<u8>),
    Create(Vec<u8>),
    Delete,
}

/// Writes that commit together or not at all (one `put`, or a whole `apply`).
struct WriteRequest {
    ops: Vec<(String, Op)>,
    reply: oneshot::Sender<StoreResult<Vec<Option<Revision>>>>,
}

fn meta_get(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> StoreResult<u64> {
    Ok(meta
        .get(name)
        .map_err(other)?
        .map(|g| g.value())
        .unwrap_or(0))
}

/// The writer thread: takes every queued write (up to [`MAX_BATCH`]), applies them in order
/// in one redb write transaction (each write its own revision), commits durably, then
/// broadcasts the events in revision order and answers the callers.
struct Writer {
    db: Arc<Database>,
    retention: u64,
    events: broadcast::Sender<Arc<Event>>,
}

impl Writer {
    fn run(self, queue: mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = queue.recv() {
            // Requests are never split: each one's writes land in one transaction.
            let mut ops_queued = first.ops.len();
            let mut batch = vec![first];
            while ops_queued < MAX_BATCH {
                match queue.try_recv() {
                    Ok(request) => {
                        ops_queued += request.ops.len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            let mut sizes = Vec::with_capacity(batch.len());
            let mut ops = Vec::with_capacity(ops_queued);
            let mut replies = Vec::with_capacity(batch.len());
            for request in batch {
                sizes.push(request.ops.len());
                ops.extend(request.ops);
                replies.push(request.reply);
            }
            match self.commit(ops) {
                Ok(events) => {
                    let mut events = events.into_iter();
                    for (size, reply) in sizes.into_iter().zip(replies) {
                        let revisions = events
                            .by_ref()
                            .take(size)
                            .map(|event| {
                                let revision = event.as_ref().map(Event::revision);
                                if let Some(event) = event {
                                    // No receivers is fine.
                                    let _ = self.events.send(Arc::new(event));
                                }
                                revision
                            })
                            .collect();
                        let _ = reply.send(Ok(revisions));
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Other(e.clone())));
                    }
                }
            }
        }
    }

    /// One durable write transaction for `ops`; per op its event, `None` when it changed
    /// nothing (create of an existing key, delete of a missing one).
    fn commit(&self, ops: Vec<(String, Op)>) -> StoreResult<Vec<Option<Event>>> {
        let txn = self.db.begin_write().map_err(other)?;
        let mut events = Vec::with_capacity(ops.len());
        {
            let mut kv = txn.open_table(KV).map_err(other)?;
            let mut log = txn.open_table(LOG).map_err(other)?;
            let mut meta = txn.open_table(META).map_err(other)?;
            let mut revision = meta_get(&meta, META_REVISION)?;
            for (key, op) in ops {
                let exists = kv.get(key.as_str()).map_err(other)?.is_some();
                let value = match op {
                    Op::Create(_) if exists => None,
                    Op::Delete if !exists => None,
                    Op::Put(v) | Op::Create(v) => Some(Some(v)),
                    Op::Delete => Some(None),
                };
                let Some(value) = value else {
                    events.push(None);
                    continue;
                };
                revision += 1;
                match &value {
                    Some(v) => kv
                        .insert(key.as_str(), (revision, v.as_slice()))
                        .map_err(other)?,
                    None => kv.remove(key.as_str()).map_err(other)?,
                };
                log.insert(revision, (key.as_str(), value.as_deref()))
                    .map_err(other)?;
                events.push(Some(match value {
                    Some(value) => Event::Put(KeyValue {
                        key,
                        value,
                        mod_revision: revision,
                    }),
                    None => Event::Delete { key, revision },
                }));
            }
            meta.insert(META_REVISION, revision).map_err(other)?;
            // Trim the log to the last `retention` entries.
            let compacted = meta_get(&meta, META_COMPACTED)?;
            let keep_from = revision.saturating_sub(self.retention) + 1;
            if compacted + 1 < keep_from {
                for r in compacted + 1..keep_from {
                    log.remove(r).map_err(other)?;
                }
                meta.insert(META_COMPACTED, keep_from - 1).map_err(other)?;
            }
        }
        txn.commit().map_err(other)?;
        Ok(events)
    }
}

impl Inner {
    /// Up to `replay_page` log entries after `after` under `prefix`, the revision the read
    /// covers up to (everything in `(after, covered]` under `prefix` is in the result), and
    /// whether that is the current revision.
    fn read_log(&self, prefix: &str, after: Revision) -> StoreResult<LogPage> {
        let txn = self.db.begin_read().map_err(other)?;
        let meta = txn.open_table(META).map_err(other)?;
        let current = meta_get(&meta, META_REVISION)?;
        let compacted = meta_get(&meta, META_COMPACTED)?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: compacted + 1,
            });
        }
        let log = txn.open_table(LOG).map_err(other)?;
        let mut page = LogPage {
            events: Vec::new(),
            covered: current.max(after),
            complete: true,
        };
        for (n, entry) in log.range(after + 1..).map_err(other)?.enumerate() {
            let (rev, entry) = entry.map_err(other)?;
            let revision = rev.value();
            if n == self.replay_page {
                page.covered = revision - 1;
                page.complete = false;
                break;
            }
            let (key, value) = entry.value();
            if !key.starts_with(prefix) {
                continue;
            }
            page.events.push(match value {
                Some(value) => Event::Put(KeyValue {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    mod_revision: revision,
                }),
                None => Event::Delete {
                    key: key.to_owned(),
                    revision,
                },
            });
        }
        Ok(page)
    }
}

struct LogPage {
    events: Vec<Event>,
    covered: Revision,
    complete: bool,
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let key = key.to_owned();
        self.read(move |inner| {
            let txn = inner.db.begin_read().map_err(other)?;
            let kv = txn.open_table(KV).map_err(other)?;
            let found = kv.get(key.as_str()).map_err(other)?;
            Ok(found.map(|g| {
                let (mod_revision, value) = g.value();
                KeyValue {
                    key,
                    value: value.to_vec(),
                    mod_revision,
                }
            }))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        let prefix = prefix.to_owned();
        self.read(move |inner| {
            let txn = inner.db.begin_read().map_err(other)?;
            let meta = txn.open_table(META).map_err(other)?;
            let revision = meta_get(&meta, META_REVISION)?;
            let kv = txn.open_table(KV).map_err(other)?;
            let mut out = Vec::new();
            for entry in kv.range(prefix.as_str()..).map_err(other)? {
                let (key, value) = entry.map_err(other)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                let (mod_revision, value) = value.value();
                out.push(KeyValue {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    mod_revision,
                });
            }
            Ok((out, revision))
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> StoreResult<Revision> {
        self.write(key, Op::Put(value))
            .await?
            .ok_or_else(|| other("put changed nothing"))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> StoreResult<Option<Revision>> {
        self.write(key, Op::Create(value)).await
    }

    async fn delete(&self, key: &str) -> StoreResult<Option<Revision>> {
        self.write(key, Op::Delete).await
    }

    async fn apply(
        &self,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> StoreResult<Vec<Option<Revision>>> {
        let ops = writes
            .into_iter()
            .map(|(key, value)| (key, value.map_or(Op::Delete, Op::Put)))
            .collect();
        self.write_all(ops).await
    }

    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> StoreResult<BoxStream<'static, StoreResult<Vec<Event>>>> {
        // Subscribe first: anything committed after the log read below is then in `rx`.
        let rx = self.inner.events.subscribe();
        let mut watch = Watch {
            inner: Arc::downgrade(&self.inner),
            prefix: prefix.to_owned(),
            rx,
            last: after,
            catching_up: true,
            pending: VecDeque::new(),
            done: false,
        };
        // Fail the call itself (not the stream) when `after` is already compacted.
        watch.catch_up().await?;
        Ok(Box::pin(futures::stream::unfold(
            watch,
            |mut w| async move {
                let item = w.next().await?;
                Some((item, w))
            },
        )))
    }

    fn describe(&self) -> String {
        format!("embedded:{}", self.inner.path.display())
    }
}

struct Watch {
    inner: Weak<Inner>,
    prefix: String,
    rx: broadcast::Receiver<Arc<Event>>,
    /// Every event with revision <= `last` has been delivered or queued in `pending`.
    last: Revision,
    /// Read the log (again) before taking events from `rx`.
    catching_up: bool,
    pending: VecDeque<Event>,
    done: bool,
}

impl Watch {
    /// Reads one page of the log after `last`.
    async fn catch_up(&mut self) -> StoreResult<()> {
        let Some(inner) = self.inner.upgrade() else {
            return Err(StoreError::Unavailable("embedded store closed".into()));
        };
        let (prefix, after) = (self.prefix.clone(), self.last);
        let page = tokio::task::spawn_blocking(move || inner.read_log(&prefix, after))
            .await
            .map_err(other)??;
        self.pending.extend(page.events);
        self.last = page.covered;
        self.catching_up = !page.complete;
        Ok(())
    }

    async fn next(&mut self) -> Option<StoreResult<Vec<Event>>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(vec![event]));
            }
            if self.catching_up {
                if let Err(e) = self.catch_up().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(event) => {
                    let revision = event.revision();
                    if revision <= self.last {
                        continue; // already read from the log
                    }
                    if revision > self.last + 1 {
                        // Cannot happen (the broadcast is in order), but never skip events.
                        self.catching_up = true;
                        continue;
                    }
                    self.last = revision;
                    if event.key().starts_with(&self.prefix) {
                        return Some(Ok(vec![Event::clone(&event)]));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(
                        missed = n,
                        after = self.last,
                        "embedded store watcher lagged; catching up from the log"
                    );
                    self.catching_up = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
