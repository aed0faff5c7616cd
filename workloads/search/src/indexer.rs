//! The indexer: reads the conversation-events log in batches and turns each batch into index
//! operations, in log order, committed in one tantivy commit together with the log positions
//! they reach; only then are the consumer-group offsets committed.
//!
//! Exactly-once in effect: on start the consumer resumes at the group's committed offsets, which
//! are never ahead of the index (they are committed after it); deliveries below the positions in
//! the index's own commit payload are skipped without being applied, and every operation is an
//! upsert or delete by a deterministic key, so a replay converges to the same index.
//!
//! Conversation and user documents are enriched from the store (a `member.added` names neither
//! the conversation nor the user): the store is the truth for names, and a replay reads the same
//! truth. A store outage pauses indexing with backoff; nothing is skipped.

use crate::engine::Engine;
use crate::index::{ConversationDoc, Generation, MessageDoc, Op, UserDoc};
use caas_bus::{Consumer, Delivery, DynBus, Envelope, last_positions, topics};
use caas_domain::event::{ConversationEvent, MessageDeleted, MessageRejected};
use caas_domain::model::{Conversation, User};
use caas_domain::{ConversationId, TenantId, UserId};
use caas_store::{DynStore, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events turned into index operations.
    pub indexed: usize,
    /// Deliveries below the index's recorded positions (replays after a crash).
    pub replayed: usize,
    /// Events with nothing to index (reactions, read markers, membership of known users).
    pub ignored: usize,
    /// Records that could not be decoded, or edits of messages the index does not have.
    pub discarded: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] caas_bus::BusError),
    #[error("indexer task failed: {0}")]
    Join(String),
}

impl IndexerError {
    /// A store or log outage: retry the batch later.
    pub fn is_transient(&self) -> bool {
        match self {
            IndexerError::Store(e) => e.is_transient(),
            IndexerError::Bus(caas_bus::BusError::Unavailable(_)) => true,
            _ => false,
        }
    }
}

/// A decoded event with what routing needs.
struct Decoded {
    tenant: TenantId,
    conversation: ConversationId,
    offset: i64,
    event: ConversationEvent,
}

fn decode(d: &Delivery) -> Option<Decoded> {
    let env = match Envelope::<ConversationEvent>::from_delivery(d) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, partition = d.partition, offset = d.offset,
                tenant_id = d.header(caas_bus::HEADER_TENANT).unwrap_or(""),
                "Undecodable log record; not indexed.");
            return None;
        }
    };
    let conversation = match ConversationId::parse(env.key.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, partition = d.partition, offset = d.offset,
                tenant_id = %env.tenant_id, "Log record with an invalid key; not indexed.");
            return None;
        }
    };
    Some(Decoded {
        tenant: env.tenant_id,
        conversation,
        offset: d.offset,
        event: env.event,
    })
}

fn ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn conversation_doc(c: &Conversation) -> ConversationDoc {
    ConversationDoc {
        tenant: c.tenant_id.to_string(),
        id: c.id.to_string(),
        name: c
            .name
            .clone()
            .or_else(|| c.topic.clone())
            .unwrap_or_default(),
        created_ms: ms(c.created_at),
    }
}

pub fn user_doc(u: &User) -> UserDoc {
    UserDoc {
        tenant: u.tenant_id.to_string(),
        id: u.id.to_string(),
        name: u.name.clone(),
    }
}

/// What the store says about the conversations and users a batch touches.
#[derive(Default)]
struct Enrichment {
    conversations: HashMap<(TenantId, ConversationId), Option<Conversation>>,
    users: HashMap<(TenantId, UserId), Option<User>>,
}

async fn enrich(store: &DynStore, events: &[Decoded]) -> Result<Enrichment, StoreError> {
    let mut e = Enrichment::default();
    for d in events {
        let (conv, user) = match &d.event {
            ConversationEvent::MemberAdded(m) => (true, Some(&m.user_id)),
            ConversationEvent::ConversationUpdated(_) => (true, None),
            ConversationEvent::UserUpdated(u) => (false, Some(&u.user_id)),
            _ => (false, None),
        };
        if conv {
            let k = (d.tenant.clone(), d.conversation.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = e.conversations.entry(k) {
                let (t, c) = slot.key();
                let got = store.get_conversation(t, c).await?;
                slot.insert(got);
            }
        }
        if let Some(u) = user {
            let k = (d.tenant.clone(), u.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = e.users.entry(k) {
                let (t, u) = slot.key();
                let got = store.get_user(t, u).await?;
                slot.insert(got);
            }
        }
    }
    Ok(e)
}

/// Turns events into operations (blocking: it reads the index for edits).
fn operations(
    generation: &Generation,
    events: Vec<Decoded>,
    enrichment: &Enrichment,
    report: &mut BatchReport,
) -> Result<Vec<Op>, crate::index::IndexError> {
    // Messages written earlier in this batch are not visible to the searcher yet.
    let mut pending: HashMap<(String, String), Option<MessageDoc>> = HashMap::new();
    let mut ops = Vec::with_capacity(events.len());
    for d in events {
        let tenant = d.tenant.to_string();
        match d.event {
            ConversationEvent::MessageCreated(m) => {
                let doc = MessageDoc {
                    tenant: tenant.clone(),
                    conversation_id: d.conversation.to_string(),
                    id: m.message_id.to_string(),
                    sender: m.sender_id.to_string(),
                    text: m.text,
                    created_ms: ms(m.created_at),
                    edited_ms: None,
                    parent_id: m.parent_id.map(|p| p.to_string()),
                    has_attachment: !m.attachments.is_empty(),
                    position: d.offset,
                };
                pending.insert((tenant, doc.id.clone()), Some(doc.clone()));
                ops.push(Op::Message(doc));
                report.indexed += 1;
            }
            ConversationEvent::MessageUpdated(m) => {
                let id = m.message_id.to_string();
                let key = (tenant.clone(), id.clone());
                let prev = match pending.get(&key) {
                    Some(p) => p.clone(),
                    None => generation.lookup_message(&tenant, &id)?,
                };
                match prev {
                    Some(mut doc) if doc.conversation_id == d.conversation.as_str() => {
                        doc.text = m.text;
                        // An edit changes the text; the files stay.
                        doc.edited_ms = Some(ms(m.edited_at));
                        pending.insert(key, Some(doc.clone()));
                        ops.push(Op::Message(doc));
                        report.indexed += 1;
                    }
                    _ => {
                        // Deleted before, or never seen: nothing to update.
                        report.discarded += 1;
                    }
                }
            }
            // A rejected message was never stored: it goes, as a deleted one does.
            ConversationEvent::MessageRejected(MessageRejected { message_id, .. })
            | ConversationEvent::MessageDeleted(MessageDeleted { message_id, .. }) => {
                let id = message_id.to_string();
                pending.insert((tenant.clone(), id.clone()), None);
                ops.push(Op::DeleteMessage { tenant, id });
                report.indexed += 1;
            }
            ConversationEvent::MemberAdded(m) => {
                let ck = (d.tenant.clone(), d.conversation.clone());
                if let Some(Some(c)) = enrichment.conversations.get(&ck) {
                    ops.push(Op::Conversation(conversation_doc(c)));
                }
                if let Some(Some(u)) = enrichment.users.get(&(d.tenant.clone(), m.user_id)) {
                    ops.push(Op::User(user_doc(u)));
                }
                report.indexed += 1;
            }
            ConversationEvent::ConversationUpdated(_) => {
                let ck = (d.tenant.clone(), d.conversation.clone());
                match enrichment.conversations.get(&ck) {
                    Some(Some(c)) => ops.push(Op::Conversation(conversation_doc(c))),
                    _ => ops.push(Op::DeleteConversation {
                        tenant,
                        id: d.conversation.to_string(),
                    }),
                }
                report.indexed += 1;
            }
            // The profile as the store has it now (a later rename wins whatever the order in
            // which the user's conversations' partitions are read).
            ConversationEvent::UserUpdated(u) => {
                if let Some(Some(user)) = enrichment.users.get(&(d.tenant.clone(), u.user_id)) {
                    ops.push(Op::User(user_doc(user)));
                }
                report.indexed += 1;
            }
            // Access is decided at query time from the store's memberships: a removal or a
            // role change needs no index change.
            ConversationEvent::MemberRemoved(_)
            | ConversationEvent::MemberUpdated(_)
            | ConversationEvent::ReactionAdded(_)
            | ConversationEvent::ReactionRemoved(_)
            | ConversationEvent::ReadUpdated(_) => report.ignored += 1,
        }
    }
    Ok(ops)
}

/// Indexes one batch into `generation` and commits it with the positions it reaches. Nothing is
/// committed when it fails (the writer is rolled back).
pub async fn index_batch(
    generation: &Arc<Generation>,
    store: &DynStore,
    batch: &[Delivery],
) -> Result<BatchReport, IndexerError> {
    let mut report = BatchReport::default();
    let done = generation.positions();
    let mut events = Vec::with_capacity(batch.len());
    for d in batch {
        if d.offset < done.get(&d.partition).copied().unwrap_or(0) {
            report.replayed += 1;
            continue;
        }
        match decode(d) {
            Some(e) => events.push(e),
            None => report.discarded += 1,
        }
    }
    let enrichment = enrich(store, &events).await?;
    let next: BTreeMap<i32, i64> = last_positions(batch)
        .into_iter()
        .map(|(_, p)| (p.partition, p.offset + 1))
        .collect();
    let g = generation.clone();
    tokio::task::spawn_blocking(move || {
        let ops = operations(&g, events, &enrichment, &mut report)?;
        let result = g.apply(&ops).and_then(|()| g.commit(next));
        if result.is_err() {
            let _ = g.rollback();
        }
        result.map(|()| report)
    })
    .await
    .map_err(|e| IndexerError::Join(e.to_string()))?
    .map_err(Into::into)
}

/// Retries `index_batch` while the store or the index fails; `None` when stopped first.
pub async fn index_with_retry(
    engine: &Engine,
    generation: &Arc<Generation>,
    store: &DynStore,
    batch: &[Delivery],
    stop: &CancellationToken,
) -> Option<BatchReport> {
    let mut pause = Duration::from_millis(50);
    loop {
        let start = Instant::now();
        match index_batch(generation, store, batch).await {
            Ok(r) => {
                engine.metrics.observe_batch(&r, start.elapsed());
                engine.set_failing(None);
                return Some(r);
            }
            Err(e) => {
                engine.metrics.errors.with_label_values(&["index"]).inc();
                engine.set_failing(Some(e.to_string()));
                tracing::warn!(error = %e, events = batch.len(), retry_in_ms = pause.as_millis() as u64,
                    "Failed to index a batch; retrying.");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Reads batches from `consumer` into `generation` until every partition's position reaches
/// `target` (next offsets). The consumer's offsets are not committed (a catch-up consumer is
/// temporary). `false` when stopped first.
pub async fn catch_up(
    engine: &Engine,
    generation: &Arc<Generation>,
    store: &DynStore,
    consumer: &mut dyn Consumer,
    target: &BTreeMap<i32, i64>,
    settings: &BatchSettings,
    stop: &CancellationToken,
) -> Result<bool, IndexerError> {
    loop {
        let pos = generation.positions();
        let behind = target
            .iter()
            .any(|(p, t)| pos.get(p).copied().unwrap_or(0) < *t);
        if !behind {
            return Ok(true);
        }
        let batch = tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            b = consumer.next_batch(settings.max, settings.linger) => b?,
        };
        if batch.is_empty() {
            continue;
        }
        if index_with_retry(engine, generation, store, &batch, stop)
            .await
            .is_none()
        {
            return Ok(false);
        }
    }
}

/// Batch sizes of the consumers.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub max: usize,
    pub linger: Duration,
}

/// The high watermark of every partition: the catch-up target of a rebuilt generation.
pub async fn heads(bus: &DynBus) -> Result<BTreeMap<i32, i64>, caas_bus::BusError> {
    let n = bus.partitions(topics::CONVERSATION_EVENTS) as i32;
    let mut out = BTreeMap::new();
    for p in 0..n {
        out.insert(p, bus.high_watermark(topics::CONVERSATION_EVENTS, p).await?);
    }
    Ok(out)
}
