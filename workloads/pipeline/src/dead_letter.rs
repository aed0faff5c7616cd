//! Dead letters: a record the pipeline gives up on (a permanent error, or a transient one that
//! exhausted its attempts) is published to the dead-letter topic with the reason, stage,
//! attempts and its original headers, and recorded in the store's dead-letter collection for
//! the admin API (list, inspect, replay, discard). Both writes are durable before the
//! record's offset is committed; the collection record's id is derived from where the failing
//! record was read, so writing it again after a crash replaces it.
//!
//! [`replay`] is the admin API's replay: the original record goes back to its original topic
//! (a new offset, the same payload — the same message id, so a message that was stored in the
//! meantime stays stored once).

use crate::ctx::{Ctx, Stopped};
use crate::error::{Stage, StageError, codes};
use base64::Engine as _;
use caas_bus::{
    Bus, Delivery, Envelope, HEADER_EVENT_TYPE, HEADER_TENANT, LogPosition, Record, topics,
};
use caas_domain::event::{ConversationEvent, MessageRejected, SCHEMA_VERSION};
use caas_domain::{ConversationId, TenantId};
use caas_store::{DeadLetter, DeadLetterStatus, PayloadEncoding, Store, StoreError};
use time::OffsetDateTime;

/// Header: the topic a record was first published to (set on retry-topic records).
pub const HEADER_ORIGINAL_TOPIC: &str = "caas-original-topic";
/// Headers of a dead-letter topic record.
pub const HEADER_DLQ_ID: &str = "caas-dlq-id";
pub const HEADER_DLQ_STAGE: &str = "caas-dlq-stage";
pub const HEADER_DLQ_CODE: &str = "caas-dlq-code";
pub const HEADER_DLQ_REASON: &str = "caas-dlq-reason";
pub const HEADER_DLQ_ATTEMPTS: &str = "caas-dlq-attempts";
/// `topic/partition/offset` where the failing record was read.
pub const HEADER_DLQ_SOURCE: &str = "caas-dlq-source";
/// Set on a replayed record: the dead letter it came from.
pub const HEADER_REPLAY_OF: &str = "caas-replay-of";

/// The record's headers without the pipeline's bookkeeping (retry and dead-letter headers).
pub fn original_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| {
            !(k.starts_with("caas-retry-")
                || k.starts_with("caas-dlq-")
                || k == HEADER_ORIGINAL_TOPIC)
        })
        .cloned()
        .collect()
}

/// The topic a delivery was first published to.
pub fn original_topic(d: &Delivery) -> String {
    d.header(HEADER_ORIGINAL_TOPIC)
        .map(str::to_string)
        .unwrap_or_else(|| d.topic.clone())
}

/// The dead letter of `d`.
pub fn build(d: &Delivery, err: &StageError, attempts: u32) -> DeadLetter {
    let id = format!(
        "dl_{}",
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}/{}/{}", d.topic, d.partition, d.offset).as_bytes()
        )
        .simple()
    );
    let (payload, payload_encoding) = match std::str::from_utf8(&d.payload) {
        Ok(s) => (s.to_string(), PayloadEncoding::Utf8),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&d.payload),
            PayloadEncoding::Base64,
        ),
    };
    let tenant_id = d
        .header(HEADER_TENANT)
        .and_then(|t| TenantId::parse(t).ok())
        .or_else(|| {
            // A payload that decodes far enough to name its tenant.
            serde_json::from_slice::<serde_json::Value>(&d.payload)
                .ok()
                .and_then(|v| v.get("tenant_id")?.as_str().map(str::to_string))
                .and_then(|t| TenantId::parse(t).ok())
        });
    let now = OffsetDateTime::now_utc();
    DeadLetter {
        id,
        tenant_id,
        stage: err.stage.as_str().into(),
        code: err.code.into(),
        reason: err.reason.clone(),
        attempts,
        topic: original_topic(d),
        source_topic: d.topic.clone(),
        partition: d.partition,
        offset: d.offset,
        key: d.key.clone(),
        event_type: d.header(HEADER_EVENT_TYPE).map(str::to_string),
        payload,
        payload_encoding,
        headers: original_headers(&d.headers),
        status: DeadLetterStatus::Pending,
        created_at: now,
        updated_at: now,
    }
}

/// The dead-letter topic record of `dl`.
pub fn record(dl: &DeadLetter, payload: bytes::Bytes) -> Record {
    let mut headers = dl.headers.clone();
    headers.extend([
        (HEADER_DLQ_ID.to_string(), dl.id.clone()),
        (HEADER_DLQ_STAGE.to_string(), dl.stage.clone()),
        (HEADER_DLQ_CODE.to_string(), dl.code.clone()),
        (HEADER_DLQ_REASON.to_string(), dl.reason.clone()),
        (HEADER_DLQ_ATTEMPTS.to_string(), dl.attempts.to_string()),
        (
            HEADER_DLQ_SOURCE.to_string(),
            format!("{}/{}/{}", dl.source_topic, dl.partition, dl.offset),
        ),
        (HEADER_ORIGINAL_TOPIC.to_string(), dl.topic.clone()),
    ]);
    Record {
        key: dl.key.clone(),
        payload,
        headers,
    }
}

/// Writes the dead letter of `d` to the topic and the collection, waiting out outages.
/// When the refused record is a new message, announces `message.rejected` on its conversation:
/// realtime fan-out and search read the log before the pipeline decides, so they may have shown
/// or indexed it, and take it back. Not for a record that does not decode, has no valid
/// conversation key or names an unknown tenant (no member could have been shown it). Best
/// effort, after the dead letter is durable: a failure is logged.
pub async fn announce_rejection(ctx: &Ctx, d: &Delivery, err: &StageError) {
    if err.code == codes::UNKNOWN_TENANT {
        return;
    }
    let Ok(env) = Envelope::<ConversationEvent>::from_delivery(d) else {
        return;
    };
    let ConversationEvent::MessageCreated(m) = &env.event else {
        return;
    };
    if ConversationId::parse(env.key.as_str()).is_err() {
        return;
    }
    let at = OffsetDateTime::now_utc();
    let rejection = Envelope {
        v: SCHEMA_VERSION,
        // The same id on every attempt: consumers may de-duplicate by it.
        id: uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("rejected/{}/{}", env.tenant_id, m.message_id).as_bytes(),
        ),
        tenant_id: env.tenant_id.clone(),
        key: env.key.clone(),
        correlation_id: env.correlation_id.clone(),
        occurred_at: at,
        event: ConversationEvent::MessageRejected(MessageRejected {
            message_id: m.message_id,
            sender_id: m.sender_id.clone(),
            code: err.code.to_string(),
            at,
        }),
    };
    if let Err(e) = rejection
        .publish(
            ctx.bus.as_ref(),
            topics::CONVERSATION_EVENTS,
            "message.rejected",
        )
        .await
    {
        ctx.count(&StageError::bus(Stage::DeadLetter, &e));
        tracing::warn!(error = %e, message_id = %m.message_id, tenant_id = %env.tenant_id,
            "Failed to announce a rejected message; sockets and search may still show it.");
    }
}

pub async fn send(ctx: &Ctx, d: &Delivery, err: &StageError, attempts: u32) -> Result<(), Stopped> {
    let dl = build(d, err, attempts);
    tracing::warn!(
        dead_letter = %dl.id,
        stage = %dl.stage,
        code = %dl.code,
        reason = %dl.reason,
        attempts,
        topic = %d.topic,
        partition = d.partition,
        offset = d.offset,
        tenant_id = dl.tenant_id.as_ref().map(|t| t.as_str()).unwrap_or(""),
        correlation_id = d.header(caas_bus::HEADER_CORRELATION_ID).unwrap_or(""),
        "A record became a dead letter."
    );
    let rec = record(&dl, d.payload.clone());
    let published = ctx
        .until_ok(Stage::DeadLetter, || {
            let rec = rec.clone();
            async move {
                ctx.bus
                    .publish(topics::DEAD_LETTERS, rec)
                    .await
                    .map_err(|e| StageError::bus(Stage::DeadLetter, &e))
            }
        })
        .await;
    let stored = match published {
        Ok(_) => {
            ctx.until_ok(Stage::DeadLetter, || async {
                ctx.store
                    .put_dead_letter(&dl)
                    .await
                    .map_err(|e| StageError::store(Stage::DeadLetter, &e))
            })
            .await
        }
        Err(e) => Err(e),
    };
    match stored {
        Ok(()) => {
            ctx.metrics
                .dead_lettered
                .with_label_values(&[err.stage.as_str(), err.code])
                .inc();
            Ok(())
        }
        Err(Ok(Stopped)) => Err(Stopped),
        Err(Err(e)) => {
            // A dead letter that cannot be written at all (the log refuses the record): the
            // record is dropped from the pipeline here, but never silently.
            ctx.count(&e);
            tracing::error!(
                error = %e,
                dead_letter = %dl.id,
                "Failed to write a dead letter; the record is logged here and skipped."
            );
            Ok(())
        }
    }
}

/// Why a replay or discard was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no such dead letter")]
    NotFound,
    #[error("the dead letter was already {0}")]
    NotPending(&'static str),
    #[error("the dead letter's payload is not valid base64: {0}")]
    BadPayload(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] caas_bus::BusError),
}

/// Replays a pending dead letter: publishes its record (original payload and headers, plus
/// [`HEADER_REPLAY_OF`]) to its original topic and marks it replayed.
pub async fn replay(
    store: &dyn Store,
    bus: &dyn Bus,
    id: &str,
) -> Result<(DeadLetter, LogPosition), ResolveError> {
    let mut dl = pending(store, id).await?;
    let payload = match dl.payload_encoding {
        PayloadEncoding::Utf8 => bytes::Bytes::from(dl.payload.clone().into_bytes()),
        PayloadEncoding::Base64 => bytes::Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(&dl.payload)
                .map_err(|e| ResolveError::BadPayload(e.to_string()))?,
        ),
    };
    let mut headers = dl.headers.clone();
    headers.push((HEADER_REPLAY_OF.to_string(), dl.id.clone()));
    let pos = bus
        .publish(
            &dl.topic,
            Record {
                key: dl.key.clone(),
                payload,
                headers,
            },
        )
        .await?;
    dl.status = DeadLetterStatus::Replayed;
    dl.updated_at = OffsetDateTime::now_utc();
    store.put_dead_letter(&dl).await?;
    Ok((dl, pos))
}

/// Marks a pending dead letter discarded (it stays listed as such).
pub async fn discard(store: &dyn Store, id: &str) -> Result<DeadLetter, ResolveError> {
    let mut dl = pending(store, id).await?;
    dl.status = DeadLetterStatus::Discarded;
    dl.updated_at = OffsetDateTime::now_utc();
    store.put_dead_letter(&dl).await?;
    Ok(dl)
}

async fn pending(store: &dyn Store, id: &str) -> Result<DeadLetter, ResolveError> {
    let dl = store
        .get_dead_letter(id)
        .await?
        .ok_or(ResolveError::NotFound)?;
    match dl.status {
        DeadLetterStatus::Pending => Ok(dl),
        s => Err(ResolveError::NotPending(s.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::codes;

    #[test]
    fn a_dead_letter_keeps_the_original_and_says_why() {
        let d = Delivery {
            topic: topics::retry(2),
            partition: 1,
            offset: 9,
            key: "room".into(),
            payload: bytes::Bytes::from_static(&[0xff, 0x00, 0x01]),
            headers: vec![
                (HEADER_TENANT.into(), "acme".into()),
                ("x-correlation-id".into(), "c-1".into()),
                (HEADER_ORIGINAL_TOPIC.into(), topics::NOTIFICATIONS.into()),
                ("caas-retry-attempts".into(), "2".into()),
            ],
        };
        let err = StageError::permanent(Stage::Webhook, codes::WEBHOOK_REJECTED, "410 Gone");
        let dl = build(&d, &err, 3);
        assert_eq!(dl.id, build(&d, &err, 3).id, "deterministic");
        assert_eq!(dl.topic, topics::NOTIFICATIONS);
        assert_eq!(dl.source_topic, topics::retry(2));
        assert_eq!(dl.tenant_id.as_ref().map(|t| t.as_str()), Some("acme"));
        assert_eq!(dl.payload_encoding, PayloadEncoding::Base64);
        assert_eq!(
            dl.headers,
            vec![
                (HEADER_TENANT.to_string(), "acme".to_string()),
                ("x-correlation-id".to_string(), "c-1".to_string())
            ]
        );
        let r = record(&dl, d.payload.clone());
        let h = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(h(HEADER_DLQ_CODE), Some("webhook_rejected"));
        assert_eq!(h(HEADER_DLQ_STAGE), Some("webhook"));
        assert_eq!(h(HEADER_DLQ_ATTEMPTS), Some("3"));
        assert_eq!(h(HEADER_DLQ_REASON), Some("410 Gone"));
        assert_eq!(h("x-correlation-id"), Some("c-1"));
    }
}
