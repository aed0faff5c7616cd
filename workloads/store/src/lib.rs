//! Persistence ports of caas: the [`Store`] trait that every workload talks to, and its
//! adapters — [`sqlite::SqliteStore`] (embedded, crash-safe, the one-process default) and
//! [`mongo::MongoStore`] (production). [`suite`] is the one behavioural test suite both pass.
//!
//! Rules every adapter keeps:
//! - every query is scoped by tenant first; there is no method that reads across tenants except
//!   the admin listing of tenants and the audit trail;
//! - [`Store::apply`] is idempotent: applying the same log events again (a replay after a crash)
//!   changes nothing; message ids are unique, so a duplicate insert means "already stored";
//! - message order is the log position, never a timestamp.

pub mod mongo;
pub mod pipeline;
pub mod sqlite;
pub mod suite;

pub use pipeline::{DeadLetter, DeadLetterQuery, DeadLetterStatus, PayloadEncoding, TenantWebhook};

use async_trait::async_trait;
use caas_domain::event::ConversationEvent;
use caas_domain::model::{
    AppCredential, AuditEntry, Conversation, Member, Message, Position, Role, Tenant, User,
};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use std::collections::BTreeMap;
use std::sync::Arc;
use time::OffsetDateTime;

/// The name under which the persistence consumer records its progress ([`Store::progress`]);
/// readers wait on it for read-your-writes.
pub const PERSIST_CONSUMER: &str = "persist";

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    /// The store cannot be reached or refused for a reason that may pass (timeout, failover).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: corrupt data, a bug. Not retried.
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Worth retrying later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A log event with its position, as the persistence consumer hands it to [`Store::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    pub partition: i32,
    /// Offset within the partition: becomes the message's `position`.
    pub offset: i64,
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub event: ConversationEvent,
}

/// What one [`Store::apply`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Events whose effects were written.
    pub applied: usize,
    /// Events already applied before (a replay) or whose message already existed.
    pub duplicates: usize,
    /// Events that could not apply (unknown conversation, edit of a missing message).
    pub skipped: usize,
}

/// A page of a conversation's messages. Results are always in ascending position order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagePage {
    /// The newest `limit` messages.
    Latest { limit: u32 },
    /// Up to `limit` messages strictly before `position`, the nearest ones.
    Before { position: Position, limit: u32 },
    /// Up to `limit` messages strictly after `position`, the nearest ones.
    After { position: Position, limit: u32 },
}

/// Which messages: top-level ones, or the replies of one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    TopLevel,
    Replies(MessageId),
}

/// A page of "my conversations", most recently active first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationPage {
    /// Opaque cursor from a previous page's [`ConversationList::next`].
    pub cursor: Option<String>,
    pub limit: u32,
    pub include_archived: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConversationList {
    pub items: Vec<(Conversation, Member)>,
    pub next: Option<String>,
}

/// Changes to a conversation's own fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationPatch {
    pub name: Option<String>,
    pub topic: Option<String>,
    /// `Some(Some(t))`: archive at t; `Some(None)`: unarchive.
    pub archived_at: Option<Option<OffsetDateTime>>,
    pub updated_at: Option<OffsetDateTime>,
}

/// The persistence port. Implementations are cheap to clone behind an `Arc`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A round trip to the backend, for readiness.
    async fn ping(&self) -> Result<()>;

    // Tenants and credentials (admin API).
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>>;
    /// Replaces an existing tenant record; `NotFound` if there is none.
    async fn put_tenant(&self, tenant: &Tenant) -> Result<()>;
    /// Tenants ordered by id, after `after`.
    async fn list_tenants(&self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>>;
    /// Deletes the tenant and everything it owns (users, conversations, members, messages,
    /// credentials). The audit trail is kept. `NotFound` if there is no such tenant.
    async fn delete_tenant(&self, id: &TenantId) -> Result<()>;
    /// Inserts or replaces by `app_id`.
    async fn put_credential(&self, credential: &AppCredential) -> Result<()>;
    async fn get_credential(&self, app_id: &str) -> Result<Option<AppCredential>>;
    async fn list_credentials(&self, tenant: &TenantId) -> Result<Vec<AppCredential>>;

    // Users.
    /// Inserts or updates name, image and data; keeps `created_at` and `tokens_valid_after` of
    /// an existing user. Returns the stored user.
    async fn upsert_user(&self, user: &User) -> Result<User>;
    async fn get_user(&self, tenant: &TenantId, id: &UserId) -> Result<Option<User>>;
    /// Refuses tokens issued before `at`. `NotFound` if there is no such user.
    async fn revoke_user_tokens(
        &self,
        tenant: &TenantId,
        id: &UserId,
        at: OffsetDateTime,
    ) -> Result<()>;

    // Conversations and members.
    /// Creates the conversation with its first members; `AlreadyExists` if the id is taken.
    /// `member_count` is set from `members`.
    async fn create_conversation(
        &self,
        conversation: &Conversation,
        members: &[Member],
    ) -> Result<()>;
    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<Conversation>>;
    /// Applies the patch and returns the result; `NotFound` if there is none.
    async fn update_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        patch: &ConversationPatch,
    ) -> Result<Conversation>;
    /// The user's conversations with their membership, most recently active first.
    async fn list_user_conversations(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: &ConversationPage,
    ) -> Result<ConversationList>;
    async fn get_member(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<Option<Member>>;
    /// Members ordered by user id, after `after`.
    async fn list_members(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<Member>>;
    /// `AlreadyExists` if a member; `NotFound` if no conversation. Bumps `member_count`.
    async fn add_member(&self, member: &Member) -> Result<()>;
    /// `NotFound` if not a member. Lowers `member_count`.
    async fn remove_member(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<()>;
    async fn set_member_role(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
        role: Role,
    ) -> Result<()>;
    /// Moves the read marker forward to `position` (never back) and recounts unread messages.
    /// `NotFound` if not a member.
    async fn mark_read(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
        position: Position,
    ) -> Result<Member>;

    // Messages.
    async fn get_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> Result<Option<Message>>;
    async fn list_messages(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        thread: Thread,
        page: MessagePage,
    ) -> Result<Vec<Message>>;

    // Scans and membership lookups of the search workload (its rebuild from the store and its
    // per-query access filter).
    /// The tenant's users ordered by id, after `after`.
    async fn list_users(
        &self,
        tenant: &TenantId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<User>>;
    /// The tenant's conversations (archived ones too) ordered by id, after `after`.
    async fn list_conversations(
        &self,
        tenant: &TenantId,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> Result<Vec<Conversation>>;
    /// The tenant's messages of every conversation and thread (soft-deleted ones too) ordered
    /// by message id, after `after`.
    async fn scan_messages(
        &self,
        tenant: &TenantId,
        after: Option<&MessageId>,
        limit: u32,
    ) -> Result<Vec<Message>>;
    /// The ids of every conversation `user` is a member of now (archived ones too), unordered.
    async fn member_conversation_ids(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<ConversationId>>;

    // The log.
    /// Applies log events in the order given (which is log order within each partition),
    /// idempotently, and records per partition the next offset to apply for `consumer`.
    async fn apply(&self, consumer: &str, events: &[LogEvent]) -> Result<ApplyReport>;
    /// For `consumer`: partition -> next offset to apply (everything before it is stored).
    async fn progress(&self, consumer: &str) -> Result<BTreeMap<i32, i64>>;
    /// Moves `consumer`'s progress forward to at least these `(partition, next offset)`s (never
    /// back): for records the consumer could not decode and skipped, so that readers waiting for
    /// the partition are not held up by them.
    async fn advance_progress(&self, consumer: &str, next: &[(i32, i64)]) -> Result<()>;

    // Audit trail.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
    /// Newest first; `tenant` filters; `before` is an entry id from a previous page.
    async fn list_audit(
        &self,
        tenant: Option<&TenantId>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>>;

    // The pipeline's records (see [`pipeline`]).
    /// Inserts a dead letter, or replaces the one with its id.
    async fn put_dead_letter(&self, dead_letter: &DeadLetter) -> Result<()>;
    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>>;
    /// Oldest first (by `created_at`, then id), filtered by tenant and status.
    async fn list_dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>>;
    /// Inserts or replaces the tenant's webhook.
    async fn put_webhook(&self, webhook: &TenantWebhook) -> Result<()>;
    async fn get_webhook(&self, tenant: &TenantId) -> Result<Option<TenantWebhook>>;
    /// `NotFound` if the tenant has none.
    async fn delete_webhook(&self, tenant: &TenantId) -> Result<()>;
}

pub type DynStore = Arc<dyn Store>;

/// Milliseconds since the Unix epoch, the form timestamps take inside adapters.
pub fn to_millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The inverse of [`to_millis`].
pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Encodes the "my conversations" cursor: activity time and id of the last item.
pub fn encode_conversation_cursor(activity_ms: i64, id: &ConversationId) -> String {
    format!("{activity_ms}.{id}")
}

/// Decodes [`encode_conversation_cursor`]; `None` for a malformed cursor.
pub fn decode_conversation_cursor(cursor: &str) -> Option<(i64, ConversationId)> {
    let (ms, id) = cursor.split_once('.')?;
    Some((ms.parse().ok()?, ConversationId::parse(id).ok()?))
}
