//! The notification stage: after a batch is persisted, every new message becomes a `message`
//! event and every mention a `mention` event on the notifications topic (keyed by conversation
//! id), for the webhook deliverer and any other consumer (push notifications, e-mail digests).
//! At least once: a batch replayed after a crash publishes its notifications again, with the
//! same ids ([`Notification::id`]), so consumers de-duplicate by id.

use crate::ctx::{Ctx, Stopped};
use crate::error::{Stage, StageError};
use caas_bus::{Bus, Envelope, Record, topics};
use caas_domain::event::{ConversationEvent, SCHEMA_VERSION};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use caas_store::LogEvent;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Kinds of notification events.
pub const KIND_MESSAGE: &str = "message";
pub const KIND_MENTION: &str = "mention";

/// A notification event (the payload of the notifications topic and of webhook deliveries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// `<message id>` for a `message`, `<message id>:<user id>` for a `mention`: the same on
    /// every redelivery.
    pub id: String,
    /// `message` or `mention`.
    pub kind: String,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub sender_id: UserId,
    /// The mentioned user (mentions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<MessageId>,
    pub text: String,
    /// The message's position in its conversation.
    pub position: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The notifications of persisted events, as records for the notifications topic.
pub fn records(events: &[(&LogEvent, &str)]) -> Vec<(String, Record)> {
    let mut out = Vec::new();
    for (ev, correlation_id) in events {
        let ConversationEvent::MessageCreated(m) = &ev.event else {
            continue;
        };
        let base = Notification {
            id: m.message_id.to_string(),
            kind: KIND_MESSAGE.into(),
            tenant_id: ev.tenant_id.clone(),
            conversation_id: ev.conversation_id.clone(),
            message_id: m.message_id,
            sender_id: m.sender_id.clone(),
            user_id: None,
            parent_id: m.parent_id,
            text: m.text.clone(),
            position: ev.offset,
            created_at: m.created_at,
        };
        let mut notes = vec![base.clone()];
        for u in &m.mentions {
            notes.push(Notification {
                id: format!("{}:{u}", m.message_id),
                kind: KIND_MENTION.into(),
                user_id: Some(u.clone()),
                ..base.clone()
            });
        }
        for n in notes {
            let kind = n.kind.clone();
            let env = Envelope {
                v: SCHEMA_VERSION,
                id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, n.id.as_bytes()),
                tenant_id: n.tenant_id.clone(),
                key: n.conversation_id.to_string(),
                correlation_id: (*correlation_id).to_string(),
                occurred_at: n.created_at,
                event: n,
            };
            if let Ok(r) = env.to_record(&format!("notification.{kind}")) {
                out.push((kind, r));
            }
        }
    }
    out
}

/// Publishes the notifications of `events`, waiting out a log outage; only the records not yet
/// published are sent again.
pub async fn publish(ctx: &Ctx, events: &[(&LogEvent, &str)]) -> Result<(), Stopped> {
    if !ctx.cfg.notifications {
        return Ok(());
    }
    let pending = Mutex::new(records(events));
    if pending.lock().is_empty() {
        return Ok(());
    }
    let bus: &dyn Bus = ctx.bus.as_ref();
    let result = ctx
        .until_ok(Stage::Notify, || async {
            let batch: Vec<(String, Record)> = std::mem::take(&mut *pending.lock());
            let results = futures::future::join_all(
                batch
                    .iter()
                    .map(|(_, r)| bus.publish(topics::NOTIFICATIONS, r.clone())),
            )
            .await;
            let mut failed = Vec::new();
            let mut first_err = None;
            for ((kind, r), res) in batch.into_iter().zip(results) {
                match res {
                    Ok(_) => ctx.metrics.notifications.with_label_values(&[&kind]).inc(),
                    Err(e) => {
                        first_err.get_or_insert(e);
                        failed.push((kind, r));
                    }
                }
            }
            *pending.lock() = failed;
            match first_err {
                None => Ok(()),
                Some(e) => Err(StageError::bus(Stage::Notify, &e)),
            }
        })
        .await;
    match result {
        Ok(()) => Ok(()),
        Err(Ok(Stopped)) => Err(Stopped),
        Err(Err(e)) => {
            // The log refused the records themselves (too large?): they cannot be published
            // now or later. Counted and logged; the messages are stored.
            ctx.count(&e);
            tracing::error!(error = %e, records = pending.lock().len(), "Failed to publish notifications; skipping them.");
            Ok(())
        }
    }
}
