//! The pipeline on a real Kafka-protocol broker (`CAAS_TEST_KAFKA_BROKERS`; `scripts/test.sh`
//! starts tansu): N message events are produced over several conversations and partitions, the
//! pipeline runs as a child process (this test binary again, the ignored `pipeline_child`) and
//! is killed with SIGKILL while it is persisting; edits, deletes and retried sends are produced
//! while nothing consumes; a new pipeline process resumes from the committed offsets. The store
//! (an SQLite file both processes open) then holds exactly the N messages — none twice, none
//! missing — in log order, with the edits and deletes applied in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use caas_bus::kafka::KafkaBus;
use caas_bus::{Bus, topics};
use caas_config::{KafkaConfig, PipelineConfig, WebhookConfig};
use caas_domain::event::{ConversationEvent, MessageDeleted, MessageUpdated};
use caas_domain::model::TenantStatus;
use caas_domain::{ConversationId, MessageId};
use caas_store::sqlite::SqliteStore;
use caas_store::{PERSIST_CONSUMER, Store};
use common::*;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

const CHILD_PREFIX: &str = "CAAS_TEST_PIPELINE_PREFIX";
const CHILD_STORE: &str = "CAAS_TEST_PIPELINE_STORE";
const PARTITIONS: u32 = 4;
const CONVERSATIONS: usize = 8;
const PER_CONVERSATION: usize = 1_000;

fn brokers() -> String {
    match std::env::var("CAAS_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "CAAS_TEST_KAFKA_BROKERS is not set: this test needs a real Kafka-protocol broker. \
             Run scripts/test.sh (it starts tansu), or point the variable at a broker."
        ),
    }
}

fn kafka(prefix: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers(),
        topic_prefix: prefix.to_owned(),
        partitions: PARTITIONS,
        replication_factor: 1,
        create_topics: true,
        // A killed member must leave the group soon.
        properties: BTreeMap::from([("session.timeout.ms".to_owned(), "6000".to_owned())]),
    }
}

fn pipeline_config() -> PipelineConfig {
    PipelineConfig {
        group_id: "crash-pipeline".into(),
        batch_max_events: 50,
        batch_linger_ms: 20,
        webhook: WebhookConfig {
            enabled: false,
            ..WebhookConfig::default()
        },
        ..PipelineConfig::default()
    }
}

fn conversations() -> Vec<ConversationId> {
    (0..CONVERSATIONS)
        .map(|i| cid(&format!("room-{i}")))
        .collect()
}

fn spawn_child(prefix: &str, store: &Path) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pipeline_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_PREFIX, prefix)
        .env(CHILD_STORE, store)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the pipeline child")
}

/// Stored events so far and everything published: (sum of progress, sum of high watermarks).
async fn done_of(store: &SqliteStore, bus: &KafkaBus) -> (i64, i64) {
    let progress = store.progress(PERSIST_CONSUMER).await.unwrap();
    let mut head = 0;
    for p in 0..bus.partitions(topics::CONVERSATION_EVENTS) as i32 {
        head += bus
            .high_watermark(topics::CONVERSATION_EVENTS, p)
            .await
            .unwrap();
    }
    (progress.values().sum(), head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_batch_then_restart_stores_every_message_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    let store = Arc::new(SqliteStore::open(&store_path).unwrap());
    let prefix = format!("crash-{}.", uuid::Uuid::new_v4().simple());
    let bus = Arc::new(KafkaBus::connect(&kafka(&prefix)).await.unwrap());
    let names = caas_pipeline::topics_of(&pipeline_config());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    bus.ensure_topics(&refs).await.unwrap();
    let acme = tid("acme");
    tenant(store.as_ref(), &acme, TenantStatus::Active).await;
    let convs = conversations();
    for c in &convs {
        conversation(store.as_ref(), &acme, c, &["ann", "ben"]).await;
    }

    // N creates; within a conversation in order (one publisher per conversation).
    let ids: Vec<Vec<MessageId>> = convs
        .iter()
        .map(|_| {
            (0..PER_CONVERSATION)
                .map(|_| MessageId::generate())
                .collect()
        })
        .collect();
    futures::future::join_all(convs.iter().zip(&ids).map(|(c, ids)| {
        let (bus, acme) = (bus.clone(), acme.clone());
        async move {
            for (i, id) in ids.iter().enumerate() {
                publish(
                    bus.as_ref(),
                    &acme,
                    c,
                    created(*id, "ann", &format!("m{i}"), &[]),
                )
                .await;
            }
        }
    }))
    .await;
    let total_creates = (CONVERSATIONS * PER_CONVERSATION) as i64;

    // The pipeline runs in a child process; kill -9 once it is a quarter through.
    let mut child = spawn_child(&prefix, &store_path);
    let at_kill = wait_for(
        "the child to persist a quarter",
        Duration::from_secs(120),
        || async {
            let (done, head) = done_of(&store, &bus).await;
            (done >= head / 4).then_some((done, head))
        },
    )
    .await;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the child was killed: {status}");
    let (done_at_kill, head_at_kill) = done_of(&store, &bus).await;
    assert!(
        done_at_kill < head_at_kill,
        "the pipeline must be killed in the middle of the stream (done {done_at_kill} of \
         {head_at_kill}; first seen {at_kill:?}): raise PER_CONVERSATION"
    );
    assert_eq!(head_at_kill, total_creates);

    // While nothing consumes: in each conversation message 3 is edited twice, message 4 is
    // deleted, and message 7's create is published again (a retried send).
    let now = OffsetDateTime::now_utc();
    for (c, ids) in convs.iter().zip(&ids) {
        for text in ["edit-1", "edit-2"] {
            let ev = ConversationEvent::MessageUpdated(MessageUpdated {
                message_id: ids[3],
                editor_id: uid("ann"),
                text: text.into(),
                html: text.into(),
                mentions: vec![],
                links: vec![],
                hashtags: vec![],
                edited_at: now,
            });
            publish(bus.as_ref(), &acme, c, ev).await;
        }
        let ev = ConversationEvent::MessageDeleted(MessageDeleted {
            message_id: ids[4],
            deleted_by: uid("ann"),
            deleted_at: now,
        });
        publish(bus.as_ref(), &acme, c, ev).await;
        publish(bus.as_ref(), &acme, c, created(ids[7], "ann", "m7", &[])).await;
    }

    // A new pipeline process resumes and finishes.
    let mut child = spawn_child(&prefix, &store_path);
    wait_for(
        "the restarted child to finish",
        Duration::from_secs(180),
        || async {
            let (done, head) = done_of(&store, &bus).await;
            (done >= head).then_some(())
        },
    )
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;

    let mut seen = HashSet::new();
    for (c, ids) in convs.iter().zip(&ids) {
        let all = all_messages(store.as_ref(), &acme, c).await;
        assert_eq!(
            all.len(),
            PER_CONVERSATION,
            "{c}: every message exactly once"
        );
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.id, ids[i], "{c}: message {i} in log order");
            assert!(seen.insert(m.id), "{} stored twice", m.id);
            let want = match i {
                3 => "edit-2".to_string(),
                _ => format!("m{i}"),
            };
            assert_eq!(m.text, want, "{c}: message {i}");
            assert_eq!(m.deleted_at.is_some(), i == 4, "{c}: message {i} deleted?");
        }
        assert!(all.windows(2).all(|w| w[0].position < w[1].position));
        let ben = store
            .get_member(&acme, c, &uid("ben"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ben.unread_count as usize,
            PER_CONVERSATION - 1,
            "{c}: unread counts each message once, minus the deleted one"
        );
    }
}

/// The pipeline process of the crash test: runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of kill_9_mid_batch_then_restart_stores_every_message_once_in_order"]
async fn pipeline_child() {
    let (Ok(prefix), Ok(path)) = (std::env::var(CHILD_PREFIX), std::env::var(CHILD_STORE)) else {
        panic!("pipeline_child runs only as the child of the crash test (env not set)");
    };
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let bus = Arc::new(KafkaBus::connect(&kafka(&prefix)).await.unwrap());
    let running = start(store, bus, pipeline_config());
    running.handle.await.unwrap();
}

/// Without its topics (and `createTopics` off) the pipeline does not start, says why, and the
/// process reports not ready instead of looking healthy without a pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_stop_the_pipeline_and_fail_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
    let mut k = kafka(&format!("absent-{}.", uuid::Uuid::new_v4().simple()));
    k.create_topics = false;
    let bus = Arc::new(KafkaBus::connect(&k).await.unwrap());
    let health = Arc::new(caas_pipeline::PipelineHealth::default());
    let r = caas_pipeline::run(
        store,
        bus,
        pipeline_config(),
        caas_pipeline::PipelineMetrics::new(&caas_kit::metrics::Metrics::new()),
        health.clone(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let err = r.unwrap_err();
    assert!(err.to_string().contains("do not exist"), "{err}");
    let why = health.check().unwrap_err();
    assert!(why.contains("could not start"), "{why}");
}
