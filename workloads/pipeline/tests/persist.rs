//! The persistence consumer over the embedded log and the embedded store: everything published
//! is stored once, in log order, across a stop in the middle and a restart, and edits and
//! deletes land on the right message.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use caas_bus::embedded::EmbeddedLog;
use caas_bus::{Bus, Envelope, topics};
use caas_config::PipelineConfig;
use caas_domain::event::{
    ConversationEvent, MessageCreated, MessageDeleted, MessageUpdated, SCHEMA_VERSION,
};
use caas_domain::model::{
    Conversation, ConversationKind, Member, Quotas, Role, Tenant, TenantStatus,
};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use caas_kit::metrics::Metrics;
use caas_pipeline::{PipelineHealth, PipelineMetrics};
use caas_store::sqlite::SqliteStore;
use caas_store::{DynStore, MessagePage, PERSIST_CONSUMER, Store, Thread};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

fn t() -> TenantId {
    TenantId::parse("acme").unwrap()
}

async fn setup(store: &SqliteStore, conv: &ConversationId, users: &[&str]) {
    let now = OffsetDateTime::now_utc();
    store
        .create_tenant(&Tenant {
            id: t(),
            name: "Acme".into(),
            status: TenantStatus::Active,
            quotas: Quotas::default(),
            features: vec![],
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    let c = Conversation {
        tenant_id: t(),
        id: conv.clone(),
        kind: ConversationKind::Group,
        name: None,
        topic: None,
        created_by: UserId::parse(users[0]).unwrap(),
        created_at: now,
        updated_at: now,
        archived_at: None,
        last_message: None,
        member_count: 0,
    };
    let members: Vec<Member> = users
        .iter()
        .map(|u| Member {
            tenant_id: t(),
            conversation_id: conv.clone(),
            user_id: UserId::parse(*u).unwrap(),
            role: Role::Member,
            joined_at: now,
            last_read_position: -1,
            unread_count: 0,
        })
        .collect();
    store.create_conversation(&c, &members).await.unwrap();
}

async fn publish(log: &EmbeddedLog, conv: &ConversationId, event: ConversationEvent) {
    let env = Envelope {
        v: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        tenant_id: t(),
        key: conv.to_string(),
        correlation_id: "test".into(),
        occurred_at: OffsetDateTime::now_utc(),
        event,
    };
    let name = env.event.type_name();
    env.publish(log, topics::CONVERSATION_EVENTS, name)
        .await
        .unwrap();
}

fn created(id: MessageId, sender: &str, text: &str) -> ConversationEvent {
    ConversationEvent::MessageCreated(MessageCreated {
        message_id: id,
        sender_id: UserId::parse(sender).unwrap(),
        text: text.into(),
        html: text.into(),
        mentions: vec![],
        links: vec![],
        hashtags: vec![],
        parent_id: None,
        client_msg_id: None,
        forwarded_from: None,
        attachments: Vec::new(),
        created_at: OffsetDateTime::now_utc(),
    })
}

fn start(
    store: DynStore,
    log: Arc<EmbeddedLog>,
    batch: usize,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let cfg = PipelineConfig {
        batch_max_events: batch,
        batch_linger_ms: 1,
        ..PipelineConfig::default()
    };
    let metrics = PipelineMetrics::new(&Metrics::new());
    let s = stop.clone();
    let h = tokio::spawn(async move {
        caas_pipeline::run(
            store,
            log,
            cfg,
            metrics,
            Arc::new(PipelineHealth::default()),
            s,
        )
        .await
        .unwrap();
    });
    (stop, h)
}

async fn wait_progress(store: &SqliteStore, log: &EmbeddedLog, conv: &ConversationId) {
    let p = caas_bus::partition_for(conv.as_str(), log.partitions(topics::CONVERSATION_EVENTS));
    let target = log
        .high_watermark(topics::CONVERSATION_EVENTS, p)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = store
            .progress(PERSIST_CONSUMER)
            .await
            .unwrap()
            .get(&p)
            .copied()
            .unwrap_or(0);
        if done >= target {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "persistence stuck at {done} of {target}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn stop_mid_stream_and_restart_stores_everything_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path().join("log.db"), 4).unwrap());
    let conv = ConversationId::parse("room").unwrap();
    setup(&store, &conv, &["ann", "ben"]).await;

    let n = 2_000;
    let ids: Vec<MessageId> = (0..n).map(|_| MessageId::generate()).collect();
    let (stop, h) = start(Arc::new(store.clone()), log.clone(), 64);
    let mut running = Some(h);
    for (i, id) in ids.iter().enumerate() {
        publish(&log, &conv, created(*id, "ann", &format!("m{i}"))).await;
        if i == n / 2 {
            // Stop in the middle of the stream; the rest is published while nobody consumes.
            stop.cancel();
            if let Some(h) = running.take() {
                h.await.unwrap();
            }
        }
    }
    // The same message published twice (a retried send) is one message.
    publish(&log, &conv, created(ids[7], "ann", "m7")).await;
    // Edits and deletes in log order: the last edit wins, the deleted one stays deleted.
    publish(
        &log,
        &conv,
        ConversationEvent::MessageUpdated(MessageUpdated {
            message_id: ids[3],
            editor_id: UserId::parse("ann").unwrap(),
            text: "first edit".into(),
            html: "first edit".into(),
            mentions: vec![],
            links: vec![],
            hashtags: vec![],
            edited_at: OffsetDateTime::now_utc(),
        }),
    )
    .await;
    publish(
        &log,
        &conv,
        ConversationEvent::MessageUpdated(MessageUpdated {
            message_id: ids[3],
            editor_id: UserId::parse("ann").unwrap(),
            text: "second edit".into(),
            html: "second edit".into(),
            mentions: vec![],
            links: vec![],
            hashtags: vec![],
            edited_at: OffsetDateTime::now_utc(),
        }),
    )
    .await;
    publish(
        &log,
        &conv,
        ConversationEvent::MessageDeleted(MessageDeleted {
            message_id: ids[4],
            deleted_by: UserId::parse("ann").unwrap(),
            deleted_at: OffsetDateTime::now_utc(),
        }),
    )
    .await;

    let (stop, h) = start(Arc::new(store.clone()), log.clone(), 64);
    wait_progress(&store, &log, &conv).await;
    stop.cancel();
    h.await.unwrap();

    let mut all = Vec::new();
    let mut page = MessagePage::After {
        position: -1,
        limit: 500,
    };
    loop {
        let got = store
            .list_messages(&t(), &conv, Thread::TopLevel, page)
            .await
            .unwrap();
        let Some(last) = got.last() else { break };
        page = MessagePage::After {
            position: last.position,
            limit: 500,
        };
        all.extend(got);
    }
    assert_eq!(all.len(), n, "every message once");
    let texts: Vec<String> = all.iter().map(|m| m.text.clone()).collect();
    for (i, text) in texts.iter().enumerate() {
        let want = match i {
            3 => "second edit".to_string(),
            _ => format!("m{i}"),
        };
        assert_eq!(text, &want, "message {i} in log order");
    }
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert!(all[4].deleted_at.is_some());
    let ben = store
        .get_member(&t(), &conv, &UserId::parse("ben").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ben.unread_count as usize,
        n - 1,
        "unread counts every message once, minus the deleted one"
    );
}

/// Batches are pipelined (the next is authorized while the previous is persisted): an edit
/// right after its message, in the next batch, must still find the message's sender. With
/// one event per batch every edit is prepared while its message may still be in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_the_batch_after_its_message_is_authorized_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path().join("log.db"), 1).unwrap());
    let conv = ConversationId::parse("room").unwrap();
    setup(&store, &conv, &["ann", "ben"]).await;
    let ids: Vec<MessageId> = (0..150).map(|_| MessageId::generate()).collect();
    for (i, id) in ids.iter().enumerate() {
        publish(&log, &conv, created(*id, "ann", &format!("m{i}"))).await;
        publish(
            &log,
            &conv,
            ConversationEvent::MessageUpdated(MessageUpdated {
                message_id: *id,
                editor_id: UserId::parse("ann").unwrap(),
                text: format!("e{i}"),
                html: String::new(),
                mentions: vec![],
                links: vec![],
                hashtags: vec![],
                edited_at: OffsetDateTime::now_utc(),
            }),
        )
        .await;
    }
    let (stop, h) = start(Arc::new(store.clone()), log.clone(), 1);
    wait_progress(&store, &log, &conv).await;
    stop.cancel();
    h.await.unwrap();
    let dead = store
        .list_dead_letters(&caas_store::DeadLetterQuery {
            limit: 10,
            ..caas_store::DeadLetterQuery::default()
        })
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
    let mut page = MessagePage::After {
        position: -1,
        limit: 500,
    };
    let mut texts = Vec::new();
    loop {
        let got = store
            .list_messages(&t(), &conv, Thread::TopLevel, page)
            .await
            .unwrap();
        let Some(last) = got.last() else { break };
        page = MessagePage::After {
            position: last.position,
            limit: 500,
        };
        texts.extend(got.into_iter().map(|m| m.text));
    }
    let want: Vec<String> = (0..150).map(|i| format!("e{i}")).collect();
    assert_eq!(texts, want);
}
