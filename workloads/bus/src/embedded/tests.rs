//! The embedded log's tests: partition order and headers, resume after a commit and a reopen,
//! trimming, files from before record times, fixed partition counts, empty polls, readers.

use super::*;
use crate::{Delivery, last_positions};
use bytes::Bytes;

fn rec(key: &str, n: usize) -> Record {
    Record {
        key: key.into(),
        payload: Bytes::from(format!("m{n}")),
        headers: vec![("h".into(), format!("{n}"))],
    }
}

async fn drain(c: &mut Box<dyn Consumer>, want: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < want && tokio::time::Instant::now() < deadline {
        got.extend(c.next_batch(1000, Duration::from_millis(20)).await.unwrap());
    }
    got
}

#[tokio::test]
async fn publish_consume_in_partition_order_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path().join("log.db"), 4).unwrap();
    let mut tasks = Vec::new();
    for k in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut pos = Vec::new();
            for n in 0..50 {
                pos.push(log.publish("t", rec(&format!("k{k}"), n)).await.unwrap());
            }
            pos
        }));
    }
    for t in tasks {
        let pos = t.await.unwrap();
        assert!(
            pos.windows(2)
                .all(|w| w[0].partition == w[1].partition && w[0].offset < w[1].offset)
        );
    }
    let mut c = log.consumer("g", &["t"]).await.unwrap();
    let got = drain(&mut c, 400).await;
    assert_eq!(got.len(), 400);
    for k in 0..8 {
        let key = format!("k{k}");
        let mine: Vec<_> = got.iter().filter(|d| d.key == key).collect();
        let ns: Vec<String> = mine
            .iter()
            .map(|d| d.header("h").unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..50).map(|n| n.to_string()).collect();
        assert_eq!(ns, want, "order of {key}");
        assert!(mine.iter().all(|d| d.partition == partition_for(&key, 4)));
    }
    let total: i64 = futures::future::join_all((0..4).map(|p| log.high_watermark("t", p)))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    assert_eq!(total, 400);
}

#[tokio::test]
async fn resumes_after_last_commit_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    {
        let log = EmbeddedLog::open(&path, 2).unwrap();
        for n in 0..10 {
            log.publish("t", rec("a", n)).await.unwrap();
        }
        let mut c = log.consumer("g", &["t"]).await.unwrap();
        let got = drain(&mut c, 10).await;
        c.commit(&last_positions(&got[..4])).await.unwrap();
        log.close();
    }
    let log = EmbeddedLog::open(&path, 2).unwrap();
    let mut c = log.consumer("g", &["t"]).await.unwrap();
    let got = drain(&mut c, 6).await;
    let ns: Vec<_> = got
        .iter()
        .map(|d| d.header("h").unwrap().to_string())
        .collect();
    assert_eq!(ns, ["4", "5", "6", "7", "8", "9"]);
    // Offsets continue after a reopen.
    let p = log.publish("t", rec("a", 10)).await.unwrap();
    assert_eq!(p.offset, 10);
    // Another group starts from the beginning.
    let mut other = log.consumer("h", &["t"]).await.unwrap();
    assert_eq!(drain(&mut other, 11).await.len(), 11);
}

#[tokio::test]
async fn trim_keeps_what_some_group_has_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path().join("log.db"), 1).unwrap();
    for n in 0..10 {
        log.publish("t", rec("a", n)).await.unwrap();
    }
    let mut a = log.consumer("a", &["t"]).await.unwrap();
    let mut b = log.consumer("b", &["t"]).await.unwrap();
    let got = drain(&mut a, 10).await;
    a.commit(&last_positions(&got)).await.unwrap();
    let got = drain(&mut b, 10).await;
    b.commit(&last_positions(&got[..3])).await.unwrap();
    assert_eq!(
        log.trim(Duration::from_secs(3600)).await.unwrap(),
        0,
        "too young"
    );
    assert_eq!(log.trim(Duration::ZERO).await.unwrap(), 3);
    let mut b2 = log.consumer("b", &["t"]).await.unwrap();
    assert_eq!(drain(&mut b2, 7).await.len(), 7);
}

#[tokio::test]
async fn opens_a_log_made_before_record_times_were_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE records (
                topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
                key TEXT NOT NULL, payload BLOB NOT NULL, headers TEXT NOT NULL,
                PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
             INSERT INTO records VALUES ('t', 0, 0, 'a', x'6d30', '[]');",
        )
        .unwrap();
    }
    let log = EmbeddedLog::open(&path, 1).unwrap();
    assert_eq!(log.publish("t", rec("a", 1)).await.unwrap().offset, 1);
    let mut c = log.consumer("g", &["t"]).await.unwrap();
    assert_eq!(drain(&mut c, 2).await.len(), 2);
}

#[tokio::test]
async fn the_partition_count_of_a_log_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let log = EmbeddedLog::open(&path, 4).unwrap();
    log.close();
    let e = EmbeddedLog::open(&path, 8).unwrap_err();
    assert!(e.to_string().contains("created with 4 partitions"), "{e}");
    assert!(EmbeddedLog::open(&path, 4).is_ok());
}

#[tokio::test]
async fn empty_poll_returns_after_linger() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path().join("log.db"), 1).unwrap();
    let mut c = log.consumer("g", &["t"]).await.unwrap();
    assert!(
        c.next_batch(10, Duration::from_millis(5))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_reader_starts_where_asked_and_follows_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path().join("log.db"), 1).unwrap();
    for i in 0..5 {
        log.publish("t", rec("k", i)).await.unwrap();
    }
    assert_eq!(log.low_watermark("t", 0).await.unwrap(), 0);
    let mut r = log.reader("t", &[(0, 3)]).await.unwrap();
    let got = r.next_batch(10, Duration::from_millis(5)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![3, 4]);
    // Nothing more: an empty poll after linger; then a new record wakes it.
    assert!(
        r.next_batch(10, Duration::from_millis(5))
            .await
            .unwrap()
            .is_empty()
    );
    let log2 = log.clone();
    let waiter = tokio::spawn(async move {
        let mut r = r;
        r.next_batch(10, Duration::from_secs(30)).await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    log2.publish("t", rec("k", 5)).await.unwrap();
    let got = waiter.await.unwrap();
    assert_eq!(got[0].offset, 5);
    assert_eq!(got[0].payload, Bytes::from("m5"));
    // A reader commits nothing: a group still starts at the beginning.
    let mut c = log.consumer("g", &["t"]).await.unwrap();
    let got = c.next_batch(1, Duration::from_millis(5)).await.unwrap();
    assert_eq!(got[0].offset, 0);
}
