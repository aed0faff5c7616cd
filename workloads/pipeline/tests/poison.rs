//! Poison records on the one-process bus (embedded log + SQLite store): a malformed payload,
//! an unknown tenant, a suspended tenant and a sender who is not a member each become a dead
//! letter — on the dead-letter topic and in the store's collection, with stage, code, attempts
//! and the original headers — while the messages around them in the same partition are stored.
//! A refused new message is announced as `message.rejected` on its conversation (for fan-out
//! and search, which read the log before the pipeline decides). After the cause is fixed, a
//! replay stores them, once; a second replay is refused; a discard sticks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use caas_bus::embedded::EmbeddedLog;
use caas_bus::{Bus, Envelope, HEADER_TENANT, Record, topics};
use caas_config::PipelineConfig;
use caas_domain::MessageId;
use caas_domain::event::ConversationEvent;
use caas_domain::model::TenantStatus;
use caas_pipeline::dead_letter::{self, ResolveError};
use caas_store::sqlite::SqliteStore;
use caas_store::{DeadLetterQuery, DeadLetterStatus, PERSIST_CONSUMER, Store};
use common::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_become_dead_letters_and_replay_once_after_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
    // One partition: every record below shares it, so "the partition keeps flowing" is tested.
    let log = Arc::new(EmbeddedLog::open(dir.path().join("log.db"), 1).unwrap());
    let (acme, ghost, frozen) = (tid("acme"), tid("ghost"), tid("frozen"));
    tenant(store.as_ref(), &acme, TenantStatus::Active).await;
    tenant(store.as_ref(), &frozen, TenantStatus::Suspended).await;
    let room = cid("room");
    conversation(store.as_ref(), &acme, &room, &["ann", "ben"]).await;
    conversation(store.as_ref(), &frozen, &room, &["ann"]).await;

    let cfg = PipelineConfig {
        batch_max_events: 16,
        batch_linger_ms: 1,
        ..PipelineConfig::default()
    };
    let running = start(store.clone(), log.clone(), cfg.clone());

    let good: Vec<MessageId> = (0..6).map(|_| MessageId::generate()).collect();
    let (from_ghost, from_frozen, from_stranger) = (
        MessageId::generate(),
        MessageId::generate(),
        MessageId::generate(),
    );
    publish(
        log.as_ref(),
        &acme,
        &room,
        created(good[0], "ann", "one", &[]),
    )
    .await;
    log.publish(
        topics::CONVERSATION_EVENTS,
        Record {
            key: "room".into(),
            payload: Bytes::from_static(b"{\"this is\": not json"),
            headers: vec![
                (HEADER_TENANT.into(), "acme".into()),
                ("x-correlation-id".into(), "corr-malformed".into()),
            ],
        },
    )
    .await
    .unwrap();
    publish(
        log.as_ref(),
        &acme,
        &room,
        created(good[1], "ben", "two", &[]),
    )
    .await;
    publish(
        log.as_ref(),
        &ghost,
        &room,
        created(from_ghost, "ann", "boo", &[]),
    )
    .await;
    publish(
        log.as_ref(),
        &acme,
        &room,
        created(good[2], "ann", "three", &[]),
    )
    .await;
    publish(
        log.as_ref(),
        &frozen,
        &room,
        created(from_frozen, "ann", "cold", &[]),
    )
    .await;
    publish(
        log.as_ref(),
        &acme,
        &room,
        created(good[3], "ben", "four", &[]),
    )
    .await;
    publish(
        log.as_ref(),
        &acme,
        &room,
        created(from_stranger, "eve", "hi!", &[]),
    )
    .await;
    publish(
        log.as_ref(),
        &acme,
        &room,
        created(good[4], "ann", "five", &[]),
    )
    .await;
    publish(
        log.as_ref(),
        &acme,
        &room,
        created(good[5], "ben", "six", &[]),
    )
    .await;

    let head = log
        .high_watermark(topics::CONVERSATION_EVENTS, 0)
        .await
        .unwrap();
    // The store's progress covers a batch once its good events are stored; the batch's dead
    // letters are written right after, before its offsets are committed.
    wait_for(
        "the partition to be processed",
        Duration::from_secs(30),
        || async {
            let p = store.progress(PERSIST_CONSUMER).await.unwrap();
            let dead = store
                .list_dead_letters(&DeadLetterQuery {
                    limit: 100,
                    ..DeadLetterQuery::default()
                })
                .await
                .unwrap();
            (p.get(&0).copied().unwrap_or(0) >= head && dead.len() == 4).then_some(())
        },
    )
    .await;

    // The partition kept flowing: every good message is stored, in order.
    let texts: Vec<String> = all_messages(store.as_ref(), &acme, &room)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["one", "two", "three", "four", "five", "six"]);

    // The collection says why, per record.
    let listed = store
        .list_dead_letters(&DeadLetterQuery {
            limit: 100,
            ..DeadLetterQuery::default()
        })
        .await
        .unwrap();
    let mut got: Vec<(Option<String>, String, String, u32)> = listed
        .iter()
        .map(|d| {
            (
                d.tenant_id.as_ref().map(|t| t.to_string()),
                d.stage.clone(),
                d.code.clone(),
                d.attempts,
            )
        })
        .collect();
    got.sort();
    let s = |x: &str| x.to_string();
    let mut want = vec![
        (Some(s("acme")), s("validate"), s("malformed_payload"), 1),
        (Some(s("ghost")), s("tenant"), s("unknown_tenant"), 1),
        (Some(s("frozen")), s("tenant"), s("tenant_suspended"), 1),
        (Some(s("acme")), s("authorize"), s("not_member"), 1),
    ];
    want.sort();
    assert_eq!(got, want);
    let malformed = listed
        .iter()
        .find(|d| d.code == "malformed_payload")
        .unwrap();
    assert!(
        malformed
            .headers
            .contains(&("x-correlation-id".into(), "corr-malformed".into())),
        "original headers kept: {:?}",
        malformed.headers
    );
    assert_eq!(malformed.payload, "{\"this is\": not json");
    assert_eq!(malformed.topic, topics::CONVERSATION_EVENTS);

    // The dead-letter topic has the same four, with the reasons as headers.
    let dlq = read_topic(log.as_ref(), topics::DEAD_LETTERS, 4).await;
    assert_eq!(dlq.len(), 4);
    let mut codes: Vec<&str> = dlq
        .iter()
        .map(|d| d.header(dead_letter::HEADER_DLQ_CODE).unwrap())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "malformed_payload",
            "not_member",
            "tenant_suspended",
            "unknown_tenant"
        ]
    );
    assert!(
        dlq.iter()
            .all(|d| d.header(dead_letter::HEADER_DLQ_REASON).is_some()
                && d.header(dead_letter::HEADER_DLQ_STAGE).is_some()
                && d.header(dead_letter::HEADER_DLQ_ATTEMPTS) == Some("1"))
    );
    // Counted once the dead letter is written (just after it is listed).
    wait_for(
        "the dead letter counted",
        Duration::from_secs(30),
        || async { (running.metrics.dead_lettered_with("not_member") == 1).then_some(()) },
    )
    .await;

    // The refused messages that fan-out and search may have shown are taken back on the log:
    // `message.rejected` for the suspended tenant's and the stranger's, none for the unknown
    // tenant's (nobody could see it) or the malformed record (no message to name).
    let events = read_topic(log.as_ref(), topics::CONVERSATION_EVENTS, 12).await;
    let mut rejected: Vec<(String, MessageId, String)> = events
        .iter()
        .filter_map(|d| {
            let env = Envelope::<ConversationEvent>::from_delivery(d).ok()?;
            match env.event {
                ConversationEvent::MessageRejected(r) => {
                    Some((env.tenant_id.to_string(), r.message_id, r.code))
                }
                _ => None,
            }
        })
        .collect();
    rejected.sort();
    let mut want = vec![
        (s("acme"), from_stranger, s("not_member")),
        (s("frozen"), from_frozen, s("tenant_suspended")),
    ];
    want.sort();
    assert_eq!(rejected, want);
    assert_eq!(events.len(), 12, "10 records and 2 rejections");

    // Fix the causes: add eve, resume the frozen tenant, create the ghost tenant and its room.
    store
        .add_member(&member(&acme, &room, "eve"))
        .await
        .unwrap();
    let mut f = store.get_tenant(&frozen).await.unwrap().unwrap();
    f.status = TenantStatus::Active;
    store.put_tenant(&f).await.unwrap();
    tenant(store.as_ref(), &ghost, TenantStatus::Active).await;
    conversation(store.as_ref(), &ghost, &room, &["ann"]).await;

    let id_of = |code: &str| listed.iter().find(|d| d.code == code).unwrap().id.clone();
    for code in ["not_member", "tenant_suspended", "unknown_tenant"] {
        let (dl, _) = dead_letter::replay(store.as_ref(), log.as_ref(), &id_of(code))
            .await
            .unwrap();
        assert_eq!(dl.status, DeadLetterStatus::Replayed);
    }
    // Replayed twice: refused, so nothing is published a second time.
    let again = dead_letter::replay(store.as_ref(), log.as_ref(), &id_of("not_member")).await;
    assert!(
        matches!(again, Err(ResolveError::NotPending("replayed"))),
        "{again:?}"
    );
    // The malformed one cannot be fixed: discarded.
    let d = dead_letter::discard(store.as_ref(), &id_of("malformed_payload"))
        .await
        .unwrap();
    assert_eq!(d.status, DeadLetterStatus::Discarded);
    assert!(matches!(
        dead_letter::replay(store.as_ref(), log.as_ref(), "dl_nope").await,
        Err(ResolveError::NotFound)
    ));

    let head = log
        .high_watermark(topics::CONVERSATION_EVENTS, 0)
        .await
        .unwrap();
    wait_for(
        "the replays to be processed",
        Duration::from_secs(30),
        || async {
            let p = store.progress(PERSIST_CONSUMER).await.unwrap();
            (p.get(&0).copied().unwrap_or(0) >= head).then_some(())
        },
    )
    .await;
    let acme_msgs = all_messages(store.as_ref(), &acme, &room).await;
    assert_eq!(acme_msgs.len(), 7);
    assert_eq!(
        acme_msgs.iter().filter(|m| m.id == from_stranger).count(),
        1,
        "the replayed message is stored once"
    );
    for (t, id) in [(&ghost, from_ghost), (&frozen, from_frozen)] {
        let msgs = all_messages(store.as_ref(), t, &room).await;
        assert_eq!(msgs.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
    }
    let pending = store
        .list_dead_letters(&DeadLetterQuery {
            status: Some(DeadLetterStatus::Pending),
            limit: 100,
            ..DeadLetterQuery::default()
        })
        .await
        .unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    running.stop().await;
}
