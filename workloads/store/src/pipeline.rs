//! Records the message pipeline keeps in the store besides the chat model: dead letters (log
//! records the pipeline could not process, with why, where and how often, so that an operator
//! can inspect, replay or discard them through the admin API) and tenant webhooks (where the
//! pipeline posts a tenant's notification events, and the secret it signs them with).
//!
//! What does not live here: the pipeline's logic (`caas-pipeline`), the admin routes
//! (`caas-gateway`), and the storage of these records (each adapter).

use caas_domain::TenantId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStatus {
    /// Waiting for an operator.
    Pending,
    /// Published again to its original topic (it went through the pipeline once more).
    Replayed,
    /// Dropped by an operator; kept for the record.
    Discarded,
}

impl DeadLetterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Replayed => "replayed",
            Self::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "replayed" => Some(Self::Replayed),
            "discarded" => Some(Self::Discarded),
            _ => None,
        }
    }
}

/// How [`DeadLetter::payload`] holds the record's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    /// The bytes were valid UTF-8 and are the string itself.
    Utf8,
    /// Standard base64 of the bytes.
    Base64,
}

/// A log record the pipeline gave up on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Deterministic for the failing record (its topic, partition and offset), so that writing
    /// it again after a crash replaces it instead of adding a second one.
    pub id: String,
    /// The tenant the record belongs to; `None` only when the record names no valid tenant
    /// (a malformed payload without a tenant header).
    pub tenant_id: Option<TenantId>,
    /// The stage that refused it (`tenant`, `validate`, `authorize`, `persist`, `webhook`, ...).
    pub stage: String,
    /// Stable machine-readable reason (`malformed_payload`, `unknown_tenant`, `not_member`, ...).
    pub code: String,
    /// What went wrong, for people.
    pub reason: String,
    /// How many times the pipeline tried it.
    pub attempts: u32,
    /// The topic to replay to (logical name): where the record was first published.
    pub topic: String,
    /// Where the failing record was read.
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    /// The event type header, when there was one.
    pub event_type: Option<String>,
    pub payload: String,
    pub payload_encoding: PayloadEncoding,
    /// The record's original headers (retry bookkeeping removed).
    pub headers: Vec<(String, String)>,
    pub status: DeadLetterStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    pub tenant: Option<TenantId>,
    pub status: Option<DeadLetterStatus>,
    /// A dead letter id from a previous page: the page starts after it.
    pub after: Option<String>,
    pub limit: u32,
}

/// Where and how the pipeline delivers a tenant's notification events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantWebhook {
    pub tenant_id: TenantId,
    /// `https://` (or `http://`) URL the events are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key of the `x-caas-signature` header.
    pub secret: String,
    /// Event kinds to deliver (`message`, `mention`); empty means all.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl TenantWebhook {
    /// Whether events of `kind` go to this webhook.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}
