//! The embedded store: one SQLite file (WAL, `synchronous=FULL`), the default of
//! `caas standalone`. SQLite was chosen over redb/fjall because the store's reads are relational
//! (pages by position, unread counts, "my conversations" joined with memberships) and SQLite
//! answers them with indexes and SQL instead of hand-kept secondary indexes; it is the most
//! tested embedded database there is, and its crash safety is documented (docs/architecture.md).
//!
//! Records are kept as JSON documents of the domain types next to the columns that are queried
//! (tenant first in every key). One writer connection serialises writes; reads use a few
//! connections of their own (WAL lets them run beside the writer). All calls run on the blocking
//! pool. [`Store::apply`] runs a whole batch in one transaction and skips events below the
//! consumer's recorded progress, so a replay is exact.

use crate::{
    ApplyReport, ConversationList, ConversationPage, ConversationPatch, LogEvent, MessagePage,
    Result, Store, StoreError, Thread, decode_conversation_cursor, encode_conversation_cursor,
    from_millis, to_millis,
};
use crate::{DeadLetter, DeadLetterQuery, TenantWebhook};
use apply::{Outcome, Pending, apply_one};
use async_trait::async_trait;
use caas_domain::model::{
    AppCredential, AuditEntry, Conversation, Member, Message, Position, Role, Tenant, User,
};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use time::OffsetDateTime;

mod apply;

const READERS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credentials (
    app_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, doc TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS credentials_tenant ON credentials(tenant_id);
CREATE TABLE IF NOT EXISTS users (
    tenant_id TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    tenant_id TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL,
    activity_ms INTEGER NOT NULL, archived INTEGER NOT NULL, last_position INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    tenant_id TEXT NOT NULL, conversation_id TEXT NOT NULL, user_id TEXT NOT NULL,
    role TEXT NOT NULL, joined_ms INTEGER NOT NULL, last_read INTEGER NOT NULL,
    unread INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id, user_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members(tenant_id, user_id);
CREATE TABLE IF NOT EXISTS messages (
    tenant_id TEXT NOT NULL, id TEXT NOT NULL, conversation_id TEXT NOT NULL,
    position INTEGER NOT NULL, parent_id TEXT, sender_id TEXT NOT NULL,
    deleted INTEGER NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_position
    ON messages(tenant_id, conversation_id, parent_id, position);
CREATE TABLE IF NOT EXISTS progress (
    consumer TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (consumer, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, tenant_id TEXT NOT NULL,
    doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit(tenant_id, seq);
";

/// Tables of the pipeline's records ([`crate::pipeline`]).
const PIPELINE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY, tenant_id TEXT, status TEXT NOT NULL, created_ms INTEGER NOT NULL,
    doc TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters(created_ms, id);
CREATE INDEX IF NOT EXISTS dead_letters_by_tenant ON dead_letters(tenant_id, created_ms, id);
CREATE TABLE IF NOT EXISTS webhooks (tenant_id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
";

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let c = caas_sqlite::open(path)?;
    c.pragma_update(None, "foreign_keys", "OFF")?;
    c.pragma_update(None, "cache_size", -16_000)?;
    Ok(c)
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

fn sql(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked | C::DiskFull | C::SystemIoFailure) => {
            StoreError::Unavailable(e.to_string())
        }
        Some(C::ConstraintViolation) => StoreError::AlreadyExists,
        _ => StoreError::Internal(e.to_string()),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(internal)
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(internal)
}

/// The JSON document in the first column of the one row `q` selects, decoded.
fn query_doc<T: serde::de::DeserializeOwned>(
    c: &Connection,
    q: &str,
    params: impl rusqlite::Params,
) -> Result<Option<T>> {
    c.prepare_cached(q)
        .map_err(sql)?
        .query_row(params, |r| r.get::<_, String>(0))
        .optional()
        .map_err(sql)?
        .map(|d| from_json(&d))
        .transpose()
}

/// The JSON documents in the first column of the rows `q` selects, decoded.
fn query_docs<T: serde::de::DeserializeOwned>(
    c: &Connection,
    q: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>> {
    let mut st = c.prepare_cached(q).map_err(sql)?;
    let rows = st
        .query_map(params, |r| r.get::<_, String>(0))
        .map_err(sql)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql)?;
    rows.iter().map(|d| from_json(d)).collect()
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(internal)?;
        }
        let writer = open_conn(path).map_err(sql)?;
        writer.execute_batch(SCHEMA).map_err(sql)?;
        writer.execute_batch(PIPELINE_SCHEMA).map_err(sql)?;
        let readers = (0..READERS)
            .map(|_| open_conn(path).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql)?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        });
        caas_sqlite::checkpointer(path, Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// One page of a tenant's documents in `table` (keyed by `(tenant_id, id)`), by id, after
    /// the id `after`: what the scans of rebuilds and admin listings walk with.
    async fn keyset_page<T>(
        &self,
        table: &'static str,
        tenant: &TenantId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let t = tenant.to_string();
        let after = after.unwrap_or_default();
        self.read(move |c| {
            query_docs(
                c,
                &format!(
                    "SELECT doc FROM {table} WHERE tenant_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
                ),
                params![t, after, limit],
            )
        })
        .await
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.writer.lock()))
            .await
            .map_err(internal)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            f(&inner.readers[i].lock())
        })
        .await
        .map_err(internal)?
    }
}

fn load_conversation(c: &Connection, t: &str, id: &str) -> Result<Option<Conversation>> {
    query_doc(
        c,
        "SELECT doc FROM conversations WHERE tenant_id = ?1 AND id = ?2",
        params![t, id],
    )
}

fn save_conversation(c: &Connection, conv: &Conversation) -> Result<()> {
    let activity = activity_ms(conv);
    c.prepare_cached(
        "UPDATE conversations SET doc = ?3, activity_ms = ?4, archived = ?5,
         last_position = ?6 WHERE tenant_id = ?1 AND id = ?2",
    )
    .map_err(sql)?
    .execute(params![
        conv.tenant_id.as_str(),
        conv.id.as_str(),
        to_json(conv)?,
        activity,
        conv.archived_at.is_some(),
        conv.last_message.as_ref().map_or(-1, |m| m.position),
    ])
    .map_err(sql)?;
    Ok(())
}

fn activity_ms(conv: &Conversation) -> i64 {
    let last = conv
        .last_message
        .as_ref()
        .map_or(conv.created_at, |m| m.created_at);
    to_millis(last.max(conv.created_at))
}

fn load_message(c: &Connection, t: &str, id: &str) -> Result<Option<Message>> {
    query_doc(
        c,
        "SELECT doc FROM messages WHERE tenant_id = ?1 AND id = ?2",
        params![t, id],
    )
}

fn save_message(c: &Connection, m: &Message) -> Result<()> {
    c.prepare_cached("UPDATE messages SET doc = ?3, deleted = ?4 WHERE tenant_id = ?1 AND id = ?2")
        .map_err(sql)?
        .execute(params![
            m.tenant_id.as_str(),
            m.id.to_string(),
            to_json(m)?,
            m.deleted_at.is_some()
        ])
        .map_err(sql)?;
    Ok(())
}

fn member_from_row(r: &rusqlite::Row<'_>, off: usize) -> rusqlite::Result<MemberRow> {
    Ok(MemberRow {
        tenant_id: r.get(off)?,
        conversation_id: r.get(off + 1)?,
        user_id: r.get(off + 2)?,
        role: r.get(off + 3)?,
        joined_ms: r.get(off + 4)?,
        last_read: r.get(off + 5)?,
        unread: r.get(off + 6)?,
    })
}

const MEMBER_COLS: &str = "tenant_id, conversation_id, user_id, role, joined_ms, last_read, unread";

struct MemberRow {
    tenant_id: String,
    conversation_id: String,
    user_id: String,
    role: String,
    joined_ms: i64,
    last_read: i64,
    unread: i64,
}

impl MemberRow {
    fn into_member(self) -> Result<Member> {
        Ok(Member {
            tenant_id: TenantId::parse(self.tenant_id).map_err(internal)?,
            conversation_id: ConversationId::parse(self.conversation_id).map_err(internal)?,
            user_id: UserId::parse(self.user_id).map_err(internal)?,
            role: Role::parse(&self.role).ok_or_else(|| internal("bad role"))?,
            joined_at: from_millis(self.joined_ms),
            last_read_position: self.last_read,
            unread_count: u32::try_from(self.unread.max(0)).unwrap_or(u32::MAX),
        })
    }
}

fn insert_member(c: &Connection, m: &Member) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO members (tenant_id, conversation_id, user_id, role, joined_ms, last_read, unread)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(sql)?
    .execute(params![
        m.tenant_id.as_str(),
        m.conversation_id.as_str(),
        m.user_id.as_str(),
        m.role.as_str(),
        to_millis(m.joined_at),
        m.last_read_position,
        m.unread_count
    ])
    .map_err(sql)?;
    Ok(())
}

fn bump_member_count(c: &Connection, t: &str, conv: &str, delta: i64) -> Result<()> {
    let Some(mut doc) = load_conversation(c, t, conv)? else {
        return Err(StoreError::NotFound);
    };
    doc.member_count = u32::try_from((i64::from(doc.member_count) + delta).max(0)).unwrap_or(0);
    save_conversation(c, &doc)
}

fn parse_message_rows(rows: Vec<String>) -> Result<Vec<Message>> {
    rows.iter().map(|d| from_json(d)).collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |_| Ok(())).map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        let (id, doc) = (tenant.id.to_string(), to_json(tenant)?);
        self.write(move |c| {
            c.execute(
                "INSERT INTO tenants (id, doc) VALUES (?1, ?2)",
                params![id, doc],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        let id = id.to_string();
        self.read(move |c| query_doc(c, "SELECT doc FROM tenants WHERE id = ?1", [id]))
            .await
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<()> {
        let (id, doc) = (tenant.id.to_string(), to_json(tenant)?);
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE tenants SET doc = ?2 WHERE id = ?1",
                    params![id, doc],
                )
                .map_err(sql)?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>> {
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        self.read(move |c| {
            query_docs(
                c,
                "SELECT doc FROM tenants WHERE id > ?1 ORDER BY id LIMIT ?2",
                params![after, limit],
            )
        })
        .await
    }

    async fn delete_tenant(&self, id: &TenantId) -> Result<()> {
        let id = id.to_string();
        self.write(move |c| {
            let tx = c.transaction().map_err(sql)?;
            let n = tx
                .execute("DELETE FROM tenants WHERE id = ?1", [&id])
                .map_err(sql)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            for table in [
                "credentials",
                "users",
                "conversations",
                "members",
                "messages",
                "webhooks",
                "dead_letters",
            ] {
                tx.execute(&format!("DELETE FROM {table} WHERE tenant_id = ?1"), [&id])
                    .map_err(sql)?;
            }
            tx.commit().map_err(sql)
        })
        .await
    }

    async fn put_credential(&self, credential: &AppCredential) -> Result<()> {
        let (app, t, doc) = (
            credential.app_id.clone(),
            credential.tenant_id.to_string(),
            to_json(credential)?,
        );
        self.write(move |c| {
            // An app id owned by another tenant is never taken over.
            let n = c
                .execute(
                    "INSERT INTO credentials (app_id, tenant_id, doc) VALUES (?1, ?2, ?3)
                     ON CONFLICT(app_id) DO UPDATE SET doc = ?3
                     WHERE credentials.tenant_id = ?2",
                    params![app, t, doc],
                )
                .map_err(sql)?;
            if n == 0 {
                return Err(StoreError::AlreadyExists);
            }
            Ok(())
        })
        .await
    }

    async fn get_credential(&self, app_id: &str) -> Result<Option<AppCredential>> {
        let app = app_id.to_string();
        self.read(move |c| query_doc(c, "SELECT doc FROM credentials WHERE app_id = ?1", [app]))
            .await
    }

    async fn list_credentials(&self, tenant: &TenantId) -> Result<Vec<AppCredential>> {
        let t = tenant.to_string();
        self.read(move |c| {
            query_docs(
                c,
                "SELECT doc FROM credentials WHERE tenant_id = ?1 ORDER BY app_id",
                [t],
            )
        })
        .await
    }

    async fn upsert_user(&self, user: &User) -> Result<User> {
        let user = user.clone();
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let existing: Option<User> = tx
                .prepare_cached("SELECT doc FROM users WHERE tenant_id = ?1 AND id = ?2")
                .map_err(sql)?
                .query_row(params![user.tenant_id.as_str(), user.id.as_str()], |r| {
                    r.get::<_, String>(0)
                })
                .optional()
                .map_err(sql)?
                .map(|d| from_json(&d))
                .transpose()?;
            let stored = match existing {
                Some(old) => User {
                    created_at: old.created_at,
                    tokens_valid_after: old.tokens_valid_after,
                    ..user
                },
                None => user,
            };
            tx.execute(
                "INSERT INTO users (tenant_id, id, doc) VALUES (?1, ?2, ?3)
                 ON CONFLICT(tenant_id, id) DO UPDATE SET doc = ?3",
                params![
                    stored.tenant_id.as_str(),
                    stored.id.as_str(),
                    to_json(&stored)?
                ],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(stored)
        })
        .await
    }

    async fn get_user(&self, tenant: &TenantId, id: &UserId) -> Result<Option<User>> {
        let (t, id) = (tenant.to_string(), id.to_string());
        self.read(move |c| {
            query_doc(
                c,
                "SELECT doc FROM users WHERE tenant_id = ?1 AND id = ?2",
                params![t, id],
            )
        })
        .await
    }

    async fn revoke_user_tokens(
        &self,
        tenant: &TenantId,
        id: &UserId,
        at: OffsetDateTime,
    ) -> Result<()> {
        let (t, id) = (tenant.to_string(), id.to_string());
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let doc: Option<String> = tx
                .query_row(
                    "SELECT doc FROM users WHERE tenant_id = ?1 AND id = ?2",
                    params![t, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            let mut user: User = from_json(&doc.ok_or(StoreError::NotFound)?)?;
            user.tokens_valid_after = Some(at);
            tx.execute(
                "UPDATE users SET doc = ?3 WHERE tenant_id = ?1 AND id = ?2",
                params![t, id, to_json(&user)?],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)
        })
        .await
    }

    async fn create_conversation(
        &self,
        conversation: &Conversation,
        members: &[Member],
    ) -> Result<()> {
        let mut conv = conversation.clone();
        conv.member_count = u32::try_from(members.len()).unwrap_or(u32::MAX);
        let members = members.to_vec();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            tx.execute(
                "INSERT INTO conversations (tenant_id, id, doc, activity_ms, archived, last_position)
                 VALUES (?1, ?2, ?3, ?4, ?5, -1)",
                params![
                    conv.tenant_id.as_str(),
                    conv.id.as_str(),
                    to_json(&conv)?,
                    activity_ms(&conv),
                    conv.archived_at.is_some()
                ],
            )
            .map_err(sql)?;
            for m in &members {
                insert_member(&tx, m)?;
            }
            tx.commit().map_err(sql)
        })
        .await
    }

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<Conversation>> {
        let (t, id) = (tenant.to_string(), id.to_string());
        self.read(move |c| load_conversation(c, &t, &id)).await
    }

    async fn update_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        patch: &ConversationPatch,
    ) -> Result<Conversation> {
        let (t, id, patch) = (tenant.to_string(), id.to_string(), patch.clone());
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let mut conv = load_conversation(&tx, &t, &id)?.ok_or(StoreError::NotFound)?;
            if let Some(name) = patch.name {
                conv.name = Some(name);
            }
            if let Some(topic) = patch.topic {
                conv.topic = Some(topic);
            }
            if let Some(archived) = patch.archived_at {
                conv.archived_at = archived;
            }
            if let Some(at) = patch.updated_at {
                conv.updated_at = at;
            }
            save_conversation(&tx, &conv)?;
            tx.commit().map_err(sql)?;
            Ok(conv)
        })
        .await
    }

    async fn list_user_conversations(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: &ConversationPage,
    ) -> Result<ConversationList> {
        let (t, u, page) = (tenant.to_string(), user.to_string(), page.clone());
        let (cursor_ms, cursor_id) = match &page.cursor {
            Some(c) => {
                let (ms, id) = decode_conversation_cursor(c)
                    .ok_or_else(|| StoreError::Internal("malformed cursor".into()))?;
                (ms, id.to_string())
            }
            None => (i64::MAX, String::new()),
        };
        self.read(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT c.doc, c.activity_ms, {cols} FROM members m
                     JOIN conversations c ON c.tenant_id = m.tenant_id AND c.id = m.conversation_id
                     WHERE m.tenant_id = ?1 AND m.user_id = ?2 AND (?3 OR c.archived = 0)
                       AND (c.activity_ms < ?4 OR (c.activity_ms = ?4 AND c.id > ?5))
                     ORDER BY c.activity_ms DESC, c.id ASC LIMIT ?6",
                    cols = MEMBER_COLS
                        .split(", ")
                        .map(|col| format!("m.{col}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .map_err(sql)?;
            let rows = st
                .query_map(
                    params![
                        t,
                        u,
                        page.include_archived,
                        cursor_ms,
                        cursor_id,
                        page.limit
                    ],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            member_from_row(r, 2)?,
                        ))
                    },
                )
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            let mut items = Vec::with_capacity(rows.len());
            let mut last = None;
            for (doc, ms, m) in rows {
                let conv: Conversation = from_json(&doc)?;
                last = Some((ms, conv.id.clone()));
                items.push((conv, m.into_member()?));
            }
            let next = match last {
                Some((ms, id)) if items.len() as u32 == page.limit => {
                    Some(encode_conversation_cursor(ms, &id))
                }
                _ => None,
            };
            Ok(ConversationList { items, next })
        })
        .await
    }

    async fn get_member(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<Option<Member>> {
        let (t, conv, u) = (
            tenant.to_string(),
            conversation.to_string(),
            user.to_string(),
        );
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {MEMBER_COLS} FROM members
                 WHERE tenant_id = ?1 AND conversation_id = ?2 AND user_id = ?3"
            ))
            .map_err(sql)?
            .query_row(params![t, conv, u], |r| member_from_row(r, 0))
            .optional()
            .map_err(sql)?
            .map(MemberRow::into_member)
            .transpose()
        })
        .await
    }

    async fn list_members(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<Member>> {
        let (t, conv) = (tenant.to_string(), conversation.to_string());
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        self.read(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {MEMBER_COLS} FROM members
                     WHERE tenant_id = ?1 AND conversation_id = ?2 AND user_id > ?3
                     ORDER BY user_id LIMIT ?4"
                ))
                .map_err(sql)?;
            let rows = st
                .query_map(params![t, conv, after, limit], |r| member_from_row(r, 0))
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            rows.into_iter().map(MemberRow::into_member).collect()
        })
        .await
    }

    async fn add_member(&self, member: &Member) -> Result<()> {
        let m = member.clone();
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            if load_conversation(&tx, m.tenant_id.as_str(), m.conversation_id.as_str())?.is_none() {
                return Err(StoreError::NotFound);
            }
            insert_member(&tx, &m)?;
            bump_member_count(&tx, m.tenant_id.as_str(), m.conversation_id.as_str(), 1)?;
            tx.commit().map_err(sql)
        })
        .await
    }

    async fn remove_member(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<()> {
        let (t, conv, u) = (
            tenant.to_string(),
            conversation.to_string(),
            user.to_string(),
        );
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
            let n = tx
                .execute(
                    "DELETE FROM members WHERE tenant_id = ?1 AND conversation_id = ?2 AND user_id = ?3",
                    params![t, conv, u],
                )
                .map_err(sql)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            bump_member_count(&tx, &t, &conv, -1)?;
            tx.commit().map_err(sql)
        })
        .await
    }

    async fn set_member_role(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
        role: Role,
    ) -> Result<()> {
        let (t, conv, u) = (
            tenant.to_string(),
            conversation.to_string(),
            user.to_string(),
        );
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE members SET role = ?4
                     WHERE tenant_id = ?1 AND conversation_id = ?2 AND user_id = ?3",
                    params![t, conv, u, role.as_str()],
                )
                .map_err(sql)?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn mark_read(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
        position: Position,
    ) -> Result<Member> {
        let (t, conv, u) = (
            tenant.to_string(),
            conversation.to_string(),
            user.to_string(),
        );
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let n = tx
                .execute(
                    "UPDATE members SET last_read = max(last_read, ?4)
                     WHERE tenant_id = ?1 AND conversation_id = ?2 AND user_id = ?3",
                    params![t, conv, u, position],
                )
                .map_err(sql)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            tx.execute(
                "UPDATE members SET unread = (
                    SELECT count(*) FROM messages g
                    WHERE g.tenant_id = ?1 AND g.conversation_id = ?2 AND g.parent_id IS NULL
                      AND g.deleted = 0 AND g.sender_id <> ?3 AND g.position > members.last_read)
                 WHERE tenant_id = ?1 AND conversation_id = ?2 AND user_id = ?3",
                params![t, conv, u],
            )
            .map_err(sql)?;
            let m = tx
                .query_row(
                    &format!(
                        "SELECT {MEMBER_COLS} FROM members
                         WHERE tenant_id = ?1 AND conversation_id = ?2 AND user_id = ?3"
                    ),
                    params![t, conv, u],
                    |r| member_from_row(r, 0),
                )
                .map_err(sql)?;
            tx.commit().map_err(sql)?;
            m.into_member()
        })
        .await
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> Result<Option<Message>> {
        let (t, conv, id) = (tenant.to_string(), conversation.clone(), id.to_string());
        self.read(move |c| Ok(load_message(c, &t, &id)?.filter(|m| m.conversation_id == conv)))
            .await
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        thread: Thread,
        page: MessagePage,
    ) -> Result<Vec<Message>> {
        let (t, conv) = (tenant.to_string(), conversation.to_string());
        let parent = match thread {
            Thread::TopLevel => None,
            Thread::Replies(p) => Some(p.to_string()),
        };
        self.read(move |c| {
            // `parent_id IS ?3` matches NULL for top-level messages and the id for replies.
            let (cond, order, pos, limit) = match page {
                MessagePage::Latest { limit } => ("AND position < ?4", "DESC", i64::MAX, limit),
                MessagePage::Before { position, limit } => {
                    ("AND position < ?4", "DESC", position, limit)
                }
                MessagePage::After { position, limit } => {
                    ("AND position > ?4", "ASC", position, limit)
                }
            };
            let q = format!(
                "SELECT doc FROM messages
                 WHERE tenant_id = ?1 AND conversation_id = ?2 AND parent_id IS ?3 {cond}
                 ORDER BY position {order} LIMIT ?5"
            );
            let mut st = c.prepare_cached(&q).map_err(sql)?;
            let rows = st
                .query_map(params![t, conv, parent, pos, limit], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            let mut msgs = parse_message_rows(rows)?;
            if order == "DESC" {
                msgs.reverse();
            }
            Ok(msgs)
        })
        .await
    }

    async fn list_users(
        &self,
        tenant: &TenantId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<User>> {
        self.keyset_page("users", tenant, after.map(|a| a.to_string()), limit)
            .await
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> Result<Vec<Conversation>> {
        self.keyset_page("conversations", tenant, after.map(|a| a.to_string()), limit)
            .await
    }

    async fn scan_messages(
        &self,
        tenant: &TenantId,
        after: Option<&MessageId>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        self.keyset_page("messages", tenant, after.map(|a| a.to_string()), limit)
            .await
    }

    async fn member_conversation_ids(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<ConversationId>> {
        let (t, u) = (tenant.to_string(), user.to_string());
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT conversation_id FROM members WHERE tenant_id = ?1 AND user_id = ?2",
                )
                .map_err(sql)?;
            let rows = st
                .query_map(params![t, u], |r| r.get::<_, String>(0))
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            rows.into_iter()
                .map(|id| ConversationId::parse(id).map_err(internal))
                .collect()
        })
        .await
    }

    async fn apply(&self, consumer: &str, events: &[LogEvent]) -> Result<ApplyReport> {
        let consumer = consumer.to_string();
        let events = events.to_vec();
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let mut progress: HashMap<i32, i64> = HashMap::new();
            {
                let mut st = tx
                    .prepare_cached(
                        "SELECT partition, next_offset FROM progress WHERE consumer = ?1",
                    )
                    .map_err(sql)?;
                let rows = st
                    .query_map([&consumer], |r| {
                        Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?))
                    })
                    .map_err(sql)?;
                for row in rows {
                    let (p, o) = row.map_err(sql)?;
                    progress.insert(p, o);
                }
            }
            let mut report = ApplyReport::default();
            let mut touched: HashMap<i32, i64> = HashMap::new();
            let mut pending = Pending::default();
            for ev in &events {
                let next = progress.get(&ev.partition).copied().unwrap_or(0);
                if ev.offset < next {
                    report.duplicates += 1;
                    continue;
                }
                match apply_one(&tx, &mut pending, ev)? {
                    Outcome::Applied => report.applied += 1,
                    Outcome::Duplicate => report.duplicates += 1,
                    Outcome::Skipped => report.skipped += 1,
                }
                progress.insert(ev.partition, ev.offset + 1);
                touched.insert(ev.partition, ev.offset + 1);
            }
            pending.flush(&tx)?;
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO progress (consumer, partition, next_offset) VALUES (?1, ?2, ?3)
                         ON CONFLICT(consumer, partition) DO UPDATE SET next_offset = ?3",
                    )
                    .map_err(sql)?;
                for (p, o) in touched {
                    st.execute(params![consumer, p, o]).map_err(sql)?;
                }
            }
            tx.commit().map_err(sql)?;
            Ok(report)
        })
        .await
    }

    async fn progress(&self, consumer: &str) -> Result<BTreeMap<i32, i64>> {
        let consumer = consumer.to_string();
        self.read(move |c| {
            let mut st = c
                .prepare_cached("SELECT partition, next_offset FROM progress WHERE consumer = ?1")
                .map_err(sql)?;
            let rows = st
                .query_map([consumer], |r| {
                    Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(sql)?
                .collect::<rusqlite::Result<BTreeMap<_, _>>>()
                .map_err(sql)?;
            Ok(rows)
        })
        .await
    }

    async fn advance_progress(&self, consumer: &str, next: &[(i32, i64)]) -> Result<()> {
        let (consumer, next) = (consumer.to_string(), next.to_vec());
        self.write(move |c| {
            let tx = c.transaction().map_err(sql)?;
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO progress (consumer, partition, next_offset) VALUES (?1, ?2, ?3)
                         ON CONFLICT(consumer, partition) DO UPDATE SET next_offset = max(next_offset, ?3)",
                    )
                    .map_err(sql)?;
                for (p, o) in next {
                    st.execute(params![consumer, p, o]).map_err(sql)?;
                }
            }
            tx.commit().map_err(sql)
        })
        .await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let (id, t, doc) = (
            entry.id.clone(),
            entry.tenant_id.to_string(),
            to_json(entry)?,
        );
        self.write(move |c| {
            c.execute(
                "INSERT INTO audit (id, tenant_id, doc) VALUES (?1, ?2, ?3)",
                params![id, t, doc],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        tenant: Option<&TenantId>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let t = tenant.map(|t| t.to_string());
        let before = before.map(str::to_string);
        self.read(move |c| {
            let before_seq: i64 = match before {
                Some(id) => c
                    .query_row("SELECT seq FROM audit WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
                    .map_err(sql)?
                    .unwrap_or(i64::MAX),
                None => i64::MAX,
            };
            let mut st = c
                .prepare_cached(
                    "SELECT doc FROM audit WHERE (?1 IS NULL OR tenant_id = ?1) AND seq < ?2
                     ORDER BY seq DESC LIMIT ?3",
                )
                .map_err(sql)?;
            let rows = st
                .query_map(params![t, before_seq, limit], |r| r.get::<_, String>(0))
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            rows.iter().map(|d| from_json(d)).collect()
        })
        .await
    }
    async fn put_dead_letter(&self, dead_letter: &DeadLetter) -> Result<()> {
        let (id, t, status, created, doc) = (
            dead_letter.id.clone(),
            dead_letter.tenant_id.as_ref().map(|t| t.to_string()),
            dead_letter.status.as_str(),
            to_millis(dead_letter.created_at),
            to_json(dead_letter)?,
        );
        self.write(move |c| {
            c.execute(
                "INSERT INTO dead_letters (id, tenant_id, status, created_ms, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET tenant_id = ?2, status = ?3, created_ms = ?4, doc = ?5",
                params![id, t, status, created, doc],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>> {
        let id = id.to_string();
        self.read(move |c| query_doc(c, "SELECT doc FROM dead_letters WHERE id = ?1", [id]))
            .await
    }

    async fn list_dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>> {
        let t = query.tenant.as_ref().map(|t| t.to_string());
        let status = query.status.map(|s| s.as_str());
        let (after, limit) = (query.after.clone(), query.limit);
        self.read(move |c| {
            let (after_ms, after_id) = match after {
                Some(id) => {
                    let ms: Option<i64> = c
                        .query_row(
                            "SELECT created_ms FROM dead_letters WHERE id = ?1",
                            [&id],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(sql)?;
                    match ms {
                        Some(ms) => (ms, id),
                        // An unknown cursor: nothing is after it (never restart from the top).
                        None => return Ok(Vec::new()),
                    }
                }
                None => (i64::MIN, String::new()),
            };
            query_docs(
                c,
                "SELECT doc FROM dead_letters
                 WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR status = ?2)
                   AND (created_ms, id) > (?3, ?4)
                 ORDER BY created_ms, id LIMIT ?5",
                params![t, status, after_ms, after_id, limit],
            )
        })
        .await
    }

    async fn put_webhook(&self, webhook: &TenantWebhook) -> Result<()> {
        let (t, doc) = (webhook.tenant_id.to_string(), to_json(webhook)?);
        self.write(move |c| {
            c.execute(
                "INSERT INTO webhooks (tenant_id, doc) VALUES (?1, ?2)
                 ON CONFLICT(tenant_id) DO UPDATE SET doc = ?2",
                params![t, doc],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn get_webhook(&self, tenant: &TenantId) -> Result<Option<TenantWebhook>> {
        let t = tenant.to_string();
        self.read(move |c| query_doc(c, "SELECT doc FROM webhooks WHERE tenant_id = ?1", [t]))
            .await
    }

    async fn delete_webhook(&self, tenant: &TenantId) -> Result<()> {
        let t = tenant.to_string();
        self.write(move |c| {
            match c
                .execute("DELETE FROM webhooks WHERE tenant_id = ?1", [t])
                .map_err(sql)?
            {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }
}
