//! The pipeline's stages and the one error type they fail with: which stage, whether retrying
//! can help ([`Kind`]), and a stable machine-readable code that dead letters, metrics and logs
//! carry. What to do with a failure (wait, retry topic, dead letter) is decided by the loops,
//! not here.

use caas_store::StoreError;

/// The stages of the pipeline, in the order a conversation event passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Reading from the log.
    Consume,
    /// Decoding the envelope and checking the event's fields.
    Validate,
    /// The tenant exists and is active.
    Tenant,
    /// The actor is still a member and their role allows the action.
    Authorize,
    /// Rendering: sanitised HTML, mentions, links, hashtags.
    Transform,
    /// Writing the batch to the store (with the conversation update: last message, unread
    /// counts — same transaction on SQLite, offset-guarded on MongoDB).
    Persist,
    /// Publishing `message`/`mention` events to the notifications topic.
    Notify,
    /// Posting a notification to the tenant's webhook.
    Webhook,
    /// Writing a dead letter (topic and collection).
    DeadLetter,
    /// Publishing to a retry topic.
    Retry,
    /// Committing consumer offsets.
    Commit,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consume => "consume",
            Self::Validate => "validate",
            Self::Tenant => "tenant",
            Self::Authorize => "authorize",
            Self::Transform => "transform",
            Self::Persist => "persist",
            Self::Notify => "notify",
            Self::Webhook => "webhook",
            Self::DeadLetter => "dead_letter",
            Self::Retry => "retry",
            Self::Commit => "commit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Consume,
            Self::Validate,
            Self::Tenant,
            Self::Authorize,
            Self::Transform,
            Self::Persist,
            Self::Notify,
            Self::Webhook,
            Self::DeadLetter,
            Self::Retry,
            Self::Commit,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A dependency is down or slow (store, log, a webhook receiver): try again later.
    Transient,
    /// The record itself is wrong for this pipeline (malformed, unknown tenant, not allowed):
    /// trying again changes nothing until someone fixes something. Becomes a dead letter.
    Permanent,
}

/// Stable codes of [`StageError::code`] (also the `code` of dead letters and the `code` label
/// of `caas_pipeline_errors_total`). Never rename one.
pub mod codes {
    pub const MALFORMED_PAYLOAD: &str = "malformed_payload";
    pub const UNSUPPORTED_SCHEMA: &str = "unsupported_schema";
    pub const INVALID_KEY: &str = "invalid_key";
    pub const TENANT_MISMATCH: &str = "tenant_mismatch";
    pub const UNKNOWN_TENANT: &str = "unknown_tenant";
    pub const TENANT_SUSPENDED: &str = "tenant_suspended";
    pub const UNKNOWN_CONVERSATION: &str = "unknown_conversation";
    pub const UNKNOWN_MESSAGE: &str = "unknown_message";
    pub const NOT_MEMBER: &str = "not_member";
    pub const STORE_UNAVAILABLE: &str = "store_unavailable";
    pub const STORE_ERROR: &str = "store_error";
    pub const LOG_UNAVAILABLE: &str = "log_unavailable";
    pub const LOG_ERROR: &str = "log_error";
    pub const WEBHOOK_UNREACHABLE: &str = "webhook_unreachable";
    pub const WEBHOOK_SERVER_ERROR: &str = "webhook_server_error";
    pub const WEBHOOK_REJECTED: &str = "webhook_rejected";
    pub const UNKNOWN_RETRY_STAGE: &str = "unknown_retry_stage";
}

/// Why a stage refused a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage} failed ({code}): {reason}")]
pub struct StageError {
    pub stage: Stage,
    pub kind: Kind,
    /// Stable code, from [`codes`] or a domain [`caas_domain::ErrorCode`] string.
    pub code: &'static str,
    pub reason: String,
}

impl StageError {
    pub fn permanent(stage: Stage, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            stage,
            kind: Kind::Permanent,
            code,
            reason: reason.into(),
        }
    }

    pub fn transient(stage: Stage, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            stage,
            kind: Kind::Transient,
            code,
            reason: reason.into(),
        }
    }

    /// A store failure in `stage`: transient when the store is unavailable.
    pub fn store(stage: Stage, e: &StoreError) -> Self {
        if e.is_transient() {
            Self::transient(stage, codes::STORE_UNAVAILABLE, e.to_string())
        } else {
            Self::permanent(stage, codes::STORE_ERROR, e.to_string())
        }
    }

    /// A log failure in `stage`: transient unless the record itself is bad.
    pub fn bus(stage: Stage, e: &caas_bus::BusError) -> Self {
        match e {
            caas_bus::BusError::Unavailable(_) => {
                Self::transient(stage, codes::LOG_UNAVAILABLE, e.to_string())
            }
            _ => Self::permanent(stage, codes::LOG_ERROR, e.to_string()),
        }
    }

    /// A domain refusal (validation, permission) in `stage`.
    pub fn domain(stage: Stage, e: &caas_domain::DomainError) -> Self {
        Self::permanent(stage, e.code.as_str(), e.message.clone())
    }

    pub fn is_transient(&self) -> bool {
        self.kind == Kind::Transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip_and_store_errors_classify() {
        for s in ["validate", "tenant", "authorize", "persist", "webhook"] {
            assert_eq!(Stage::parse(s).map(Stage::as_str), Some(s));
        }
        assert_eq!(Stage::parse("nope"), None);
        let t = StageError::store(Stage::Persist, &StoreError::Unavailable("down".into()));
        assert!(t.is_transient());
        assert_eq!(t.code, codes::STORE_UNAVAILABLE);
        let p = StageError::store(Stage::Persist, &StoreError::Internal("corrupt".into()));
        assert!(!p.is_transient());
        assert_eq!(p.code, codes::STORE_ERROR);
        let d = StageError::domain(
            Stage::Validate,
            &caas_domain::DomainError::new(caas_domain::ErrorCode::TextEmpty, "empty"),
        );
        assert_eq!((d.code, d.kind), ("text_empty", Kind::Permanent));
    }
}
