//! The embedded (redb) store: the shared semantics plus durability, compaction, lag and
//! locking.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mesh_control::store::{EmbeddedOptions, EmbeddedStore, Store};

fn temp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("store-embedded-")
        .tempdir()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn semantics() {
    let dir = temp();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    assert_eq!(
        store.list("").await.unwrap().1,
        0,
        "a new store is at revision 0"
    );
    check_semantics(&store).await;
    check_watch_resume(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_lose_nothing() {
    let dir = temp();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    check_concurrent_writers(Arc::new(store), 8, 25).await;
}

/// More writes than one group commit takes (512) still commit as one transaction.
#[tokio::test(flavor = "multi_thread")]
async fn apply_is_one_transaction() {
    let dir = temp();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    check_apply(Arc::new(store), 1500).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_parent_dirs_with_private_file_and_describes_itself() {
    let dir = temp();
    let path = dir.path().join("a/b/store.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    assert_eq!(store.describe(), format!("embedded:{}", path.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn survives_reopen() {
    let dir = temp();
    let path = dir.path().join("store.redb");
    let (r1, r2, r3);
    {
        let store = EmbeddedStore::open(&path).unwrap();
        r1 = store.put("/d/a", b"1".to_vec()).await.unwrap();
        r2 = store.put("/d/b", b"2".to_vec()).await.unwrap();
        r3 = store.delete("/d/a").await.unwrap().unwrap();
        // An open watch does not keep the file open; its stream ends with the store.
        let mut watch = store.watch("/d/", r3).await.unwrap();
        drop(store);
        let end =
            tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut watch));
        assert!(
            end.await.unwrap().is_none(),
            "watch must end when the store closes"
        );
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let (kvs, rev) = store.list("/d/").await.unwrap();
    assert_eq!(rev, r3);
    assert_eq!(kvs.len(), 1);
    assert_eq!((kvs[0].key.as_str(), kvs[0].mod_revision), ("/d/b", r2));
    assert_eq!(store.put("/d/c", vec![]).await.unwrap(), r3 + 1);
    // The change log survives too.
    let mut watch = store.watch("/d/", 0).await.unwrap();
    assert_eq!(
        next_events(&mut watch, 4).await,
        [
            put_event("/d/a", b"1", r1),
            put_event("/d/b", b"2", r2),
            delete_event("/d/a", r3),
            put_event("/d/c", b"", r3 + 1),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_open_is_refused() {
    let dir = temp();
    let path = dir.path().join("store.redb");
    let _store = EmbeddedStore::open(&path).unwrap();
    let Err(err) = EmbeddedStore::open(&path) else {
        panic!("second open succeeded");
    };
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("another mesh-control is using {}", path.display())),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_from_compacted_revision_fails() {
    let dir = temp();
    let options = EmbeddedOptions {
        log_retention: 10,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&dir.path().join("store.redb"), options).unwrap();
    // Complete log: from 0 works.
    for i in 0..10u8 {
        store.put(&format!("/c/{i}"), vec![i]).await.unwrap();
    }
    let mut watch = store.watch("/c/", 0).await.unwrap();
    assert_eq!(next_events(&mut watch, 10).await.len(), 10);
    for i in 10..30u8 {
        store.put(&format!("/c/{i}"), vec![i]).await.unwrap();
    }
    // The log holds revisions 21..=30: `after` must be >= 20.
    assert_eq!(expect_compacted(&store, "/c/", 0).await, 21);
    assert_eq!(expect_compacted(&store, "/c/", 19).await, 21);
    let mut watch = store.watch("/c/", 20).await.unwrap();
    let events = next_events(&mut watch, 10).await;
    assert_eq!(events.first().unwrap().revision(), 21);
    assert_eq!(events.last().unwrap().revision(), 30);
    expect_quiet(&mut watch, Duration::from_millis(100)).await;
    // The early watch kept up, so it still follows.
    let mut early = store.watch("/c/", 30).await.unwrap();
    let r = store.put("/c/live", vec![]).await.unwrap();
    assert_eq!(next_events(&mut early, 1).await[0].revision(), r);
}

#[tokio::test(flavor = "multi_thread")]
async fn lagging_watcher_catches_up_from_the_log() {
    let dir = temp();
    let options = EmbeddedOptions {
        watch_buffer: 4,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&dir.path().join("store.redb"), options).unwrap();
    let mut watch = store.watch("/lag/", 0).await.unwrap();
    let mut revs = Vec::new();
    for i in 0..200u32 {
        revs.push(
            store
                .put(&format!("/lag/{i}"), i.to_be_bytes().to_vec())
                .await
                .unwrap(),
        );
        if i % 50 == 0 {
            store.put("/elsewhere", vec![]).await.unwrap();
        }
    }
    // Far more than the 4 buffered events were missed: all 200 must still arrive, in order.
    let events = next_events(&mut watch, 200).await;
    let got: Vec<_> = events.iter().map(|e| e.revision()).collect();
    assert_eq!(got, revs);
    let r = store.put("/lag/live", vec![]).await.unwrap();
    assert_eq!(next_events(&mut watch, 1).await[0].revision(), r);
    expect_quiet(&mut watch, Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_replay_is_paged_without_gaps() {
    // More history than several replay pages, replayed while a writer keeps going.
    let dir = temp();
    let options = EmbeddedOptions {
        replay_page: 16,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open_with(&dir.path().join("store.redb"), options).unwrap();
    let store = Arc::new(store);
    let mut expected = Vec::new();
    for i in 0..150u32 {
        let key = format!("/p/{}", i % 7);
        expected.push(store.put(&key, i.to_be_bytes().to_vec()).await.unwrap());
        if i % 10 == 0 {
            store.put("/q", vec![]).await.unwrap(); // not watched: pages skip it
        }
    }
    let mut watch = store.watch("/p/", 0).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 150..200u32 {
                let key = format!("/p/{}", i % 7);
                revs.push(store.put(&key, i.to_be_bytes().to_vec()).await.unwrap());
            }
            revs
        })
    };
    let events = next_events(&mut watch, 200).await;
    let late = writer.await.unwrap();
    let revs: Vec<_> = events.iter().map(|e| e.revision()).collect();
    expected.extend(late);
    assert_eq!(revs, expected);
    expect_quiet(&mut watch, Duration::from_millis(100)).await;
}
