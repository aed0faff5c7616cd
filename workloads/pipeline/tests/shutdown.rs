//! Graceful shutdown on the one-process bus: stopped in the middle of a stream, the pipeline
//! finishes the batch it holds, commits it and leaves; the group's committed offsets are then
//! exactly the store's progress (nothing to replay, nothing skipped), and a restart finishes
//! the rest without one duplicate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use caas_bus::embedded::EmbeddedLog;
use caas_bus::{Bus, topics};
use caas_config::PipelineConfig;
use caas_domain::MessageId;
use caas_domain::model::TenantStatus;
use caas_store::sqlite::SqliteStore;
use caas_store::{PERSIST_CONSUMER, Store};
use common::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_finishes_the_batch_commits_and_leaves_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
    let log = Arc::new(EmbeddedLog::open(dir.path().join("log.db"), 2).unwrap());
    let acme = tid("acme");
    tenant(store.as_ref(), &acme, TenantStatus::Active).await;
    let rooms = [cid("r0"), cid("r1"), cid("r2")];
    for r in &rooms {
        conversation(store.as_ref(), &acme, r, &["ann", "ben"]).await;
    }
    let cfg = PipelineConfig {
        group_id: "shutdown".into(),
        batch_max_events: 20,
        batch_linger_ms: 1,
        ..PipelineConfig::default()
    };
    for i in 0..3_000 {
        let r = &rooms[i % rooms.len()];
        publish(
            log.as_ref(),
            &acme,
            r,
            created(MessageId::generate(), "ann", &format!("m{i}"), &[]),
        )
        .await;
    }
    let running = start(store.clone(), log.clone(), cfg.clone());
    wait_for("some progress", Duration::from_secs(30), || async {
        let p = store.progress(PERSIST_CONSUMER).await.unwrap();
        (p.values().sum::<i64>() >= 300).then_some(())
    })
    .await;
    running.stop().await;

    let progress = store.progress(PERSIST_CONSUMER).await.unwrap();
    let done: i64 = progress.values().sum();
    assert!(done < 3_000, "stopped in the middle (done {done})");
    // Where the group resumes: a member of the same group reads from the committed offsets.
    let mut c = log
        .consumer(&cfg.group_id, &[topics::CONVERSATION_EVENTS])
        .await
        .unwrap();
    let first = c
        .next_batch(10_000, Duration::from_millis(50))
        .await
        .unwrap();
    for p in 0..2 {
        let resumes_at = first
            .iter()
            .filter(|d| d.partition == p)
            .map(|d| d.offset)
            .min()
            .unwrap_or(
                log.high_watermark(topics::CONVERSATION_EVENTS, p)
                    .await
                    .unwrap(),
            );
        assert_eq!(
            resumes_at,
            progress.get(&p).copied().unwrap_or(0),
            "partition {p}: committed offset = store progress"
        );
    }
    drop(c);

    let running = start(store.clone(), log.clone(), cfg);
    wait_for("the rest", Duration::from_secs(30), || async {
        let p = store.progress(PERSIST_CONSUMER).await.unwrap();
        (p.values().sum::<i64>() >= 3_000).then_some(())
    })
    .await;
    let dups = running.metrics.duplicates.get();
    running.stop().await;
    assert_eq!(dups, 0, "nothing was replayed");
    let mut n = 0;
    for r in &rooms {
        n += all_messages(store.as_ref(), &acme, r).await.len();
    }
    assert_eq!(n, 3_000);
}
