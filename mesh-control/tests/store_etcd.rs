//! The etcd store against real etcd processes (Debian's etcd-server): the same semantics as
//! the embedded store, compaction, and a 3-member cluster losing members under an open watch.
//! Skipped (with a message) when /usr/bin/etcd is missing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mesh_control::store::{EtcdStore, Store};
use mesh_tests::etcd::{require_etcd, EtcdCluster};

fn start(members: usize) -> EtcdCluster {
    tokio::task::block_in_place(|| EtcdCluster::start(members)).expect("starting etcd")
}

#[tokio::test(flavor = "multi_thread")]
async fn semantics_single_member() {
    require_etcd();
    let cluster = start(1);
    let store = EtcdStore::connect(cluster.endpoints()).await.unwrap();
    assert_eq!(store.describe(), format!("etcd://{}", cluster.endpoint(0)));
    check_semantics(&store).await;
    check_watch_resume(&store).await;
    let store = Arc::new(store);
    check_apply(store.clone(), 100).await;
    check_concurrent_writers(store, 8, 25).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_live_under_the_namespace() {
    require_etcd();
    let cluster = start(1);
    let a = EtcdStore::connect(cluster.endpoints()).await.unwrap();
    let b = EtcdStore::connect_with_namespace(cluster.endpoints(), "/other")
        .await
        .unwrap();
    a.put("/mesh/x", b"a".to_vec()).await.unwrap();
    b.put("/mesh/x", b"b".to_vec()).await.unwrap();
    assert_eq!(a.get("/mesh/x").await.unwrap().unwrap().value, b"a");
    assert_eq!(b.list("").await.unwrap().0.len(), 1);
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    let resp = raw.get("/mesh-control/mesh/x", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value(), b"a");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_from_compacted_revision_fails() {
    require_etcd();
    let cluster = start(1);
    let store = EtcdStore::connect(cluster.endpoints()).await.unwrap();
    let mut last = 0;
    for i in 0..10u8 {
        last = store.put(&format!("/c/{i}"), vec![i]).await.unwrap();
    }
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap();
    raw.compact(last as i64 - 3, None).await.unwrap();
    // Compacted at C = last-3: history from C on is kept, so `after` must be >= C-1.
    assert_eq!(expect_compacted(&store, "/c/", 0).await, last - 3);
    assert_eq!(expect_compacted(&store, "/c/", last - 5).await, last - 3);
    let mut watch = store.watch("/c/", last - 4).await.unwrap();
    let events = next_events(&mut watch, 4).await;
    assert_eq!(events[0].revision(), last - 3);
    assert_eq!(events[3].revision(), last);
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_fails_clearly_without_etcd() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let Err(err) = EtcdStore::connect(vec![endpoint.clone()]).await else {
        panic!("connected to nothing");
    };
    let msg = format!("{err:#}");
    assert!(msg.contains(&endpoint), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_members_survive_losing_one() {
    require_etcd();
    let mut cluster = start(3);
    let store = EtcdStore::connect(cluster.endpoints()).await.unwrap();
    let from = store.list("").await.unwrap().1;
    let mut watch = store.watch("/ha/", from).await.unwrap();
    // Kill every member in turn (restarting the previous one first), so whichever member
    // serves the watch dies once.
    for victim in 0..cluster.len() {
        let t = Instant::now();
        tokio::task::block_in_place(|| cluster.kill_member(victim));
        let mut revs = Vec::new();
        for i in 0..10 {
            let key = format!("/ha/{victim}/{i}");
            revs.push(
                store
                    .put(&key, vec![i])
                    .await
                    .expect("write with a member down"),
            );
        }
        let got: Vec<_> = next_events(&mut watch, 10)
            .await
            .iter()
            .map(|e| e.revision())
            .collect();
        assert_eq!(got, revs, "watch after killing member {victim}");
        eprintln!(
            "member {victim} down: 10 writes + watch in {:?}",
            t.elapsed()
        );
        tokio::task::block_in_place(|| cluster.restart_member(victim)).unwrap();
    }
    expect_quiet(&mut watch, Duration::from_millis(200)).await;
}
