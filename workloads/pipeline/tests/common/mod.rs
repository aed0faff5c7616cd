//! Helpers shared by the pipeline's integration tests: fixtures (tenant, conversation,
//! members), publishing envelopes, running the pipeline, and waiting on conditions with a
//! deadline (never sleeping as synchronisation).
#![allow(dead_code)]

use caas_bus::{Bus, DynBus, Envelope, topics};
use caas_config::PipelineConfig;
use caas_domain::event::{ConversationEvent, MessageCreated, SCHEMA_VERSION};
use caas_domain::model::{
    Conversation, ConversationKind, Member, Quotas, Role, Tenant, TenantStatus,
};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use caas_kit::metrics::Metrics;
use caas_pipeline::{PipelineHealth, PipelineMetrics};
use caas_store::{DynStore, MessagePage, Store, Thread};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

pub fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

pub fn cid(s: &str) -> ConversationId {
    ConversationId::parse(s).unwrap()
}

pub async fn tenant(store: &dyn Store, t: &TenantId, status: TenantStatus) {
    let now = OffsetDateTime::now_utc();
    store
        .create_tenant(&Tenant {
            id: t.clone(),
            name: format!("Tenant {t}"),
            status,
            quotas: Quotas::default(),
            features: vec![],
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
}

pub fn member(t: &TenantId, conv: &ConversationId, u: &str) -> Member {
    Member {
        tenant_id: t.clone(),
        conversation_id: conv.clone(),
        user_id: uid(u),
        role: Role::Member,
        joined_at: OffsetDateTime::now_utc(),
        last_read_position: -1,
        unread_count: 0,
    }
}

pub async fn conversation(store: &dyn Store, t: &TenantId, conv: &ConversationId, users: &[&str]) {
    let now = OffsetDateTime::now_utc();
    let c = Conversation {
        tenant_id: t.clone(),
        id: conv.clone(),
        kind: ConversationKind::Group,
        name: None,
        topic: None,
        created_by: uid(users[0]),
        created_at: now,
        updated_at: now,
        archived_at: None,
        last_message: None,
        member_count: 0,
    };
    let members: Vec<Member> = users.iter().map(|u| member(t, conv, u)).collect();
    store.create_conversation(&c, &members).await.unwrap();
}

pub fn created(id: MessageId, sender: &str, text: &str, mentions: &[&str]) -> ConversationEvent {
    ConversationEvent::MessageCreated(MessageCreated {
        message_id: id,
        sender_id: uid(sender),
        text: text.into(),
        html: text.into(),
        mentions: mentions.iter().map(|m| uid(m)).collect(),
        links: vec![],
        hashtags: vec![],
        parent_id: None,
        client_msg_id: None,
        forwarded_from: None,
        attachments: Vec::new(),
        created_at: OffsetDateTime::now_utc(),
    })
}

pub async fn publish(bus: &dyn Bus, t: &TenantId, conv: &ConversationId, event: ConversationEvent) {
    let env = Envelope {
        v: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        tenant_id: t.clone(),
        key: conv.to_string(),
        correlation_id: "test".into(),
        occurred_at: OffsetDateTime::now_utc(),
        event,
    };
    let name = env.event.type_name();
    env.publish(bus, topics::CONVERSATION_EVENTS, name)
        .await
        .unwrap();
}

/// A running pipeline.
pub struct Running {
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
    pub metrics: PipelineMetrics,
    pub health: Arc<PipelineHealth>,
}

impl Running {
    /// Stops it and waits until it has finished its batch and committed.
    pub async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap();
    }
}

pub fn start(store: DynStore, bus: DynBus, cfg: PipelineConfig) -> Running {
    let stop = CancellationToken::new();
    let metrics = PipelineMetrics::new(&Metrics::new());
    let health = Arc::new(PipelineHealth::default());
    let (s, m, h) = (stop.clone(), metrics.clone(), health.clone());
    let handle = tokio::spawn(async move {
        caas_pipeline::run(store, bus, cfg, m, h, s).await.unwrap();
    });
    Running {
        stop,
        handle,
        metrics,
        health,
    }
}

/// Polls `f` until it returns `Some`; panics with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Every top-level message of a conversation, in position order.
pub async fn all_messages(
    store: &dyn Store,
    t: &TenantId,
    conv: &ConversationId,
) -> Vec<caas_domain::model::Message> {
    let mut all = Vec::new();
    let mut page = MessagePage::After {
        position: -1,
        limit: 500,
    };
    loop {
        let got = store
            .list_messages(t, conv, Thread::TopLevel, page)
            .await
            .unwrap();
        let Some(last) = got.last() else { break };
        page = MessagePage::After {
            position: last.position,
            limit: 500,
        };
        all.extend(got);
    }
    all
}

/// Reads every record of `topic` so far (a fresh group each call).
pub async fn read_topic(bus: &dyn Bus, topic: &str, want: usize) -> Vec<caas_bus::Delivery> {
    let group = format!("reader-{}", uuid::Uuid::new_v4().simple());
    let mut c = bus.consumer(&group, &[topic]).await.unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while out.len() < want && Instant::now() < end {
        out.extend(c.next_batch(1000, Duration::from_millis(50)).await.unwrap());
    }
    out
}
