//! Store checks shared by the embedded and etcd backends: both must behave the same.
//!
//! Every check expects a store nobody else writes to (revisions grow by exactly one per
//! write) and uses its own key prefix, so checks can run one after another on one store.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use mesh_control::store::{Event, KeyValue, Revision, Store, StoreError, StoreResult};

pub type Watch = BoxStream<'static, StoreResult<Vec<Event>>>;

const WAIT: Duration = Duration::from_secs(15);

/// The next batch of `watch`; panics on an error, the end of the stream or after 15 s.
pub async fn next_batch(watch: &mut Watch) -> Vec<Event> {
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(Some(Ok(batch))) => batch,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

/// The next `n` events, checking that every batch holds the events of exactly one revision.
pub async fn next_events(watch: &mut Watch, n: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < n {
        let batch = next_batch(watch).await;
        assert!(!batch.is_empty(), "empty batch");
        let rev = batch[0].revision();
        assert!(
            batch.iter().all(|e| e.revision() == rev),
            "mixed batch {batch:?}"
        );
        events.extend(batch);
    }
    assert_eq!(events.len(), n, "more events than expected: {events:?}");
    events
}

/// Asserts nothing arrives on `watch` for `quiet`.
pub async fn expect_quiet(watch: &mut Watch, quiet: Duration) {
    if let Ok(item) = tokio::time::timeout(quiet, watch.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

pub fn put_event(key: &str, value: &[u8], revision: Revision) -> Event {
    Event::Put(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        mod_revision: revision,
    })
}

pub fn delete_event(key: &str, revision: Revision) -> Event {
    Event::Delete {
        key: key.to_owned(),
        revision,
    }
}

async fn current_revision(store: &dyn Store) -> Revision {
    store.list("").await.unwrap().1
}

/// Asserts that watching after `after` fails with `Compacted` (from the call or as the first
/// stream item); returns the `oldest` it reports.
pub async fn expect_compacted(store: &dyn Store, prefix: &str, after: Revision) -> Revision {
    let err = match store.watch(prefix, after).await {
        Err(e) => e,
        Ok(mut watch) => match tokio::time::timeout(WAIT, watch.next()).await {
            Ok(Some(Err(e))) => {
                assert!(
                    tokio::time::timeout(WAIT, watch.next())
                        .await
                        .unwrap()
                        .is_none(),
                    "the stream must end after Compacted"
                );
                e
            }
            other => {
                panic!("watch after compacted revision {after}: expected an error, got {other:?}")
            }
        },
    };
    match err {
        StoreError::Compacted { requested, oldest } => {
            assert_eq!(requested, after);
            assert!(oldest > after + 1, "oldest {oldest} after {after}");
            oldest
        }
        e => panic!("expected Compacted, got {e}"),
    }
}

/// get/list/put/create/delete semantics and revisions.
pub async fn check_semantics(store: &dyn Store) {
    let rev0 = current_revision(store).await;
    assert_eq!(store.get("/sem/a").await.unwrap(), None);
    let (empty, rev) = store.list("/sem/").await.unwrap();
    assert!(empty.is_empty());
    assert_eq!(rev, rev0);

    // put: one revision per write, get returns the latest value and its revision.
    let r1 = store.put("/sem/a", b"1".to_vec()).await.unwrap();
    assert_eq!(r1, rev0 + 1);
    let r2 = store.put("/sem/a", b"2".to_vec()).await.unwrap();
    assert_eq!(r2, r1 + 1);
    let a = store.get("/sem/a").await.unwrap().unwrap();
    assert_eq!(
        a,
        KeyValue {
            key: "/sem/a".into(),
            value: b"2".to_vec(),
            mod_revision: r2
        }
    );

    // create: only if missing; a failed create changes nothing, not even the revision.
    assert_eq!(store.create("/sem/a", b"3".to_vec()).await.unwrap(), None);
    assert_eq!(store.get("/sem/a").await.unwrap().unwrap().value, b"2");
    assert_eq!(current_revision(store).await, r2);
    let r3 = store
        .create("/sem/b", b"b".to_vec())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r3, r2 + 1);

    // list: sorted by key, only under the prefix, with the current revision.
    let r4 = store.put("/sem/c/x", Vec::new()).await.unwrap();
    let r5 = store
        .put("/sem", b"not under /sem/".to_vec())
        .await
        .unwrap();
    let r6 = store.put("/semx", b"neither".to_vec()).await.unwrap();
    assert_eq!((r4, r5, r6), (r3 + 1, r3 + 2, r3 + 3));
    let (kvs, rev) = store.list("/sem/").await.unwrap();
    assert_eq!(rev, r6);
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/sem/a", "/sem/b", "/sem/c/x"]);
    assert_eq!(kvs[1].mod_revision, r3);
    assert_eq!(kvs[2].value, b"");
    let (all, _) = store.list("").await.unwrap();
    let all: Vec<&str> = all.iter().map(|kv| kv.key.as_str()).collect();
    for key in ["/sem", "/sem/a", "/sem/b", "/sem/c/x", "/semx"] {
        assert!(all.contains(&key), "{key} missing from list(\"\"): {all:?}");
    }
    assert!(all.windows(2).all(|w| w[0] < w[1]), "unsorted: {all:?}");

    // delete: one revision; deleting a missing key changes nothing.
    let r7 = store.delete("/sem/b").await.unwrap().unwrap();
    assert_eq!(r7, r6 + 1);
    assert_eq!(store.delete("/sem/b").await.unwrap(), None);
    assert_eq!(store.delete("/sem/never").await.unwrap(), None);
    assert_eq!(current_revision(store).await, r7);
    assert_eq!(store.get("/sem/b").await.unwrap(), None);
    // A deleted key can be created again.
    let r8 = store
        .create("/sem/b", b"again".to_vec())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r8, r7 + 1);

    // The whole history under the prefix, replayed from before the first write.
    let mut watch = store.watch("/sem/", rev0).await.unwrap();
    let events = next_events(&mut watch, 6).await;
    assert_eq!(
        events,
        [
            put_event("/sem/a", b"1", r1),
            put_event("/sem/a", b"2", r2),
            put_event("/sem/b", b"b", r3),
            put_event("/sem/c/x", b"", r4),
            delete_event("/sem/b", r7),
            put_event("/sem/b", b"again", r8),
        ]
    );
    expect_quiet(&mut watch, Duration::from_millis(200)).await;
}

/// A watch from an old revision replays exactly the missed events, then follows live ones.
pub async fn check_watch_resume(store: &dyn Store) {
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(store.put(&format!("/res/{i}"), vec![i]).await.unwrap());
    }
    store.put("/other/x", b"x".to_vec()).await.unwrap();
    // Missed: the last two writes under /res/.
    let mut watch = store.watch("/res/", revs[2]).await.unwrap();
    assert_eq!(
        next_events(&mut watch, 2).await,
        [
            put_event("/res/3", &[3], revs[3]),
            put_event("/res/4", &[4], revs[4])
        ]
    );
    // Live: writes outside the prefix are not delivered, the rest in order.
    store.put("/other/y", b"y".to_vec()).await.unwrap();
    let live1 = store.put("/res/live", b"1".to_vec()).await.unwrap();
    let gone = store.delete("/res/0").await.unwrap().unwrap();
    assert_eq!(
        next_events(&mut watch, 2).await,
        [
            put_event("/res/live", b"1", live1),
            delete_event("/res/0", gone)
        ]
    );
    expect_quiet(&mut watch, Duration::from_millis(200)).await;

    // From the current revision: only what comes next.
    let now = current_revision(store).await;
    let mut fresh = store.watch("/res/", now).await.unwrap();
    let r = store.put("/res/next", b"n".to_vec()).await.unwrap();
    assert_eq!(
        next_events(&mut fresh, 1).await,
        [put_event("/res/next", b"n", r)]
    );
    // The first watch sees it too.
    assert_eq!(
        next_events(&mut watch, 1).await,
        [put_event("/res/next", b"n", r)]
    );
}

/// Concurrent writers: every write gets its own revision and every one reaches a watcher,
/// in revision order, with no gaps.
pub async fn check_concurrent_writers(store: Arc<dyn Store>, writers: usize, each: usize) {
    let start = current_revision(&*store).await;
    let mut watch = store.watch("/conc/", start).await.unwrap();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..each {
                    let key = format!("/conc/{w}/{i}");
                    revs.push(store.put(&key, key.clone().into_bytes()).await.unwrap());
                }
                revs
            })
        })
        .collect();
    let mut written = BTreeSet::new();
    for task in tasks {
        for rev in task.await.unwrap() {
            assert!(written.insert(rev), "revision {rev} returned twice");
        }
    }
    let total = writers * each;
    let expected: BTreeSet<Revision> = (start + 1..=start + total as Revision).collect();
    assert_eq!(written, expected, "revisions are not one per write");
    let events = next_events(&mut watch, total).await;
    let revs: Vec<Revision> = events.iter().map(Event::revision).collect();
    assert_eq!(revs, expected.iter().copied().collect::<Vec<_>>());
    let keys: BTreeSet<&str> = events.iter().map(Event::key).collect();
    assert_eq!(keys.len(), total);
    for event in &events {
        let Event::Put(kv) = event else {
            panic!("{event:?}")
        };
        assert_eq!(kv.value, kv.key.as_bytes());
    }
    let (listed, _) = store.list("/conc/").await.unwrap();
    assert_eq!(listed.len(), total);
}

/// `apply`: every write lands (a delete of a missing key reports `None`), under one prefix
/// watchers see them all, and a large apply is not interleaved with a concurrent write (one
/// transaction on the embedded store, one Txn on etcd; an etcd apply over its Txn limit is
/// written one by one, so keep `large` under 128 there).
pub async fn check_apply(store: Arc<dyn Store>, large: usize) {
    let before = store.put("/apply/old", b"old".to_vec()).await.unwrap();
    let mut watch = store.watch("/apply/", before).await.unwrap();
    let revisions = store
        .apply(vec![
            ("/apply/a".into(), Some(b"a".to_vec())),
            ("/apply/old".into(), None),
            ("/apply/missing".into(), None),
        ])
        .await
        .unwrap();
    assert!(
        revisions[0].is_some() && revisions[1].is_some(),
        "{revisions:?}"
    );
    assert_eq!(revisions[2], None, "deleting a missing key changes nothing");
    assert_eq!(store.get("/apply/a").await.unwrap().unwrap().value, b"a");
    assert_eq!(store.get("/apply/old").await.unwrap(), None);
    let events = next_events(&mut watch, 2).await;
    assert_eq!(events[0].key(), "/apply/a");
    assert_eq!(events[1].key(), "/apply/old");

    let writes = (0..large)
        .map(|i| (format!("/apply/many/{i:04}"), Some(vec![b'x'])))
        .collect();
    let (many, single) = tokio::join!(
        {
            let store = store.clone();
            async move { store.apply(writes).await.unwrap() }
        },
        async {
            tokio::task::yield_now().await;
            store.put("/apply/concurrent", b"c".to_vec()).await.unwrap()
        }
    );
    let many: Vec<Revision> = many.into_iter().map(Option::unwrap).collect();
    let (first, last) = (many[0], many[many.len() - 1]);
    assert!(
        single < first || single > last,
        "a concurrent put at revision {single} landed inside the apply ({first}..={last})"
    );
    assert!(
        many.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
        "one apply's revisions are one or consecutive: {many:?}"
    );
}
