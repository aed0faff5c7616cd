//! The production store: MongoDB through the official `mongodb` 3.x driver (its own `bson`
//! re-export, `mongodb::bson`, which is what the driver's default features speak).
//!
//! What lives here: the document shapes, the indexes, and the [`Store`] implementation. What does
//! not: any rule of the chat model (that is `caas-domain`) or test code (that is [`crate::suite`]).
//!
//! Layout. Every collection is keyed tenant first: `_id` is `"<tenant>/<id>"` (members:
//! `"<tenant>/<conversation>/<user>"`; ids cannot contain `/`), and every secondary index starts
//! with `tenant_id`. The exceptions are global by nature: `tenants` (keyed by tenant id),
//! `credentials` (keyed by app id, which the token exchange looks up before it knows a tenant),
//! `progress` (per consumer and partition) and the cross-tenant audit listing index. Timestamps
//! are Int64 milliseconds since the epoch ([`to_millis`]; BSON dates are read too), compared
//! and sorted as numbers. Numbers are read leniently (Int32, Int64 or Double), because some
//! servers speaking the wire protocol return a small Int64 as Int32. App-defined
//! JSON (`User::data`, `AuditEntry::details`) is kept as a JSON string so that no key (`$x`,
//! `a.b`) can collide with MongoDB's field-name rules. Reactions are an array of
//! `{kind, users}` for the same reason.
//!
//! Idempotency of [`Store::apply`] without multi-document transactions. Events below the
//! consumer's recorded progress are duplicates. For the rest (a replay after a crash between
//! effects and progress), every non-idempotent write is guarded by a per-document "last applied
//! offset": a message's `applied_offset` (edits, reactions, reply counts; `deleted_offset` for
//! deletion), a member's `unread_offset` (unread increments and decrements), a conversation's
//! `last_position` (last-message preview). Messages are inserted in bulk (`ordered: false`,
//! duplicate key 11000 = already stored); a duplicate whose stored position equals the event's
//! offset is the same event replayed, so its guarded follow-ups run again (they are no-ops when
//! already done). Progress is written last. A conversation's `applied_offset` records the
//! highest offset whose effects are complete; [`Store::mark_read`] uses it to recount unread
//! messages exactly while the pipeline is applying concurrently (see `mark_read`).

use crate::{
    ApplyReport, ConversationList, ConversationPage, ConversationPatch, LogEvent, MessagePage,
    Result, Store, StoreError, Thread, decode_conversation_cursor, encode_conversation_cursor,
    from_millis, to_millis,
};
use crate::{DeadLetter, DeadLetterQuery, TenantWebhook};
use async_trait::async_trait;
use caas_domain::event::{
    ConversationEvent, MessageCreated, MessageDeleted, MessageUpdated, ReactionChanged,
};
use caas_domain::model::{
    AppCredential, Attachment, AuditEntry, Conversation, ConversationKind, ForwardedFrom, Member,
    Message, MessagePreview, Position, Quotas, Role, Tenant, TenantStatus, User,
};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;
use time::OffsetDateTime;

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;
/// `deleted_offset` of a message that is not deleted: above every offset, so "not deleted as of
/// offset B" is the single range condition `deleted_offset > B`.
const NOT_DELETED: i64 = i64::MAX;
/// `parent_id` of a top-level message: a value, not null, so that equality on it means the
/// same in every query form (one test server's aggregation does not match `null`).
const TOP_LEVEL: &str = "";
/// Compare-and-set attempts before a contended write gives up as `Unavailable`.
const CAS_ATTEMPTS: usize = 32;
/// Server error codes that mean "try again later" (stepdown, shutdown, network, time limit).
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// The MongoDB adapter. Cheap to clone (the driver's client is a handle to a shared pool).
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    tenants: Collection<Document>,
    credentials: Collection<Document>,
    users: Collection<Document>,
    conversations: Collection<Document>,
    members: Collection<Document>,
    messages: Collection<Document>,
    progress: Collection<Document>,
    audit: Collection<Document>,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.db.name())
            .finish_non_exhaustive()
    }
}

impl MongoStore {
    /// Connects to `uri`, uses `database`, and creates the indexes (idempotent). Fails with
    /// `Unavailable` when the server cannot be reached.
    pub async fn connect(uri: &str, database: &str) -> Result<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(db_err)?;
        if options.app_name.is_none() {
            options.app_name = Some("caas".into());
        }
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(Duration::from_secs(10));
        }
        if options.connect_timeout.is_none() {
            options.connect_timeout = Some(Duration::from_secs(5));
        }
        let client = Client::with_options(options).map_err(db_err)?;
        let db = client.database(database);
        let store = Self {
            tenants: db.collection("tenants"),
            credentials: db.collection("credentials"),
            users: db.collection("users"),
            conversations: db.collection("conversations"),
            members: db.collection("members"),
            messages: db.collection("messages"),
            progress: db.collection("progress"),
            audit: db.collection("audit"),
            db,
        };
        store.create_indexes().await?;
        store.create_pipeline_indexes().await?;
        Ok(store)
    }

    /// Collections of the pipeline's records ([`crate::pipeline`]): documents keep the record as
    /// a JSON string (`doc`) next to the fields they are queried by.
    fn dead_letters(&self) -> Collection<Document> {
        // No underscore: one test server (nx-27017) fails every write to such a collection.
        self.db.collection("deadletters")
    }

    fn webhooks(&self) -> Collection<Document> {
        self.db.collection("webhooks")
    }

    async fn create_pipeline_indexes(&self) -> Result<()> {
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        self.dead_letters()
            .create_indexes([
                index(doc! {"created_ms": 1, "id": 1}, "created_id"),
                index(
                    doc! {"tenant_id": 1, "created_ms": 1, "id": 1},
                    "tenant_created_id",
                ),
            ])
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn create_indexes(&self) -> Result<()> {
        fn index(keys: Document, name: &str, unique: bool) -> IndexModel {
            let options = IndexOptions::builder()
                .name(name.to_string())
                .unique(unique)
                .build();
            IndexModel::builder().keys(keys).options(options).build()
        }
        let plan: [(&Collection<Document>, Vec<IndexModel>); 7] = [
            (
                &self.credentials,
                vec![index(
                    doc! {"tenant_id": 1, "app_id": 1},
                    "tenant_app_id",
                    false,
                )],
            ),
            (
                &self.users,
                vec![index(doc! {"tenant_id": 1, "id": 1}, "tenant_user", true)],
            ),
            (
                &self.conversations,
                vec![
                    index(doc! {"tenant_id": 1, "id": 1}, "tenant_conversation", true),
                    index(
                        doc! {"tenant_id": 1, "activity_at": -1, "id": 1},
                        "tenant_activity",
                        false,
                    ),
                ],
            ),
            (
                &self.members,
                vec![
                    index(
                        doc! {"tenant_id": 1, "conversation_id": 1, "user_id": 1},
                        "tenant_conversation_user",
                        true,
                    ),
                    index(
                        doc! {"tenant_id": 1, "user_id": 1, "conversation_id": 1},
                        "tenant_user_conversation",
                        false,
                    ),
                ],
            ),
            (
                &self.messages,
                vec![
                    index(doc! {"tenant_id": 1, "id": 1}, "tenant_message", true),
                    index(
                        doc! {"tenant_id": 1, "conversation_id": 1, "parent_id": 1, "position": 1},
                        "tenant_conversation_thread_position",
                        false,
                    ),
                ],
            ),
            (
                &self.progress,
                vec![index(
                    doc! {"consumer": 1, "partition": 1},
                    "consumer_partition",
                    true,
                )],
            ),
            (
                &self.audit,
                vec![
                    index(
                        doc! {"tenant_id": 1, "at": -1, "id": -1},
                        "tenant_at_id",
                        false,
                    ),
                    index(doc! {"at": -1, "id": -1}, "at_id", false),
                ],
            ),
        ];
        for (coll, models) in plan {
            coll.create_indexes(models).await.map_err(db_err)?;
        }
        Ok(())
    }

    async fn find_all(
        &self,
        coll: &Collection<Document>,
        filter: Document,
        sort: Option<Document>,
        limit: Option<i64>,
    ) -> Result<Vec<Document>> {
        let mut find = coll.find(filter);
        if let Some(sort) = sort {
            find = find.sort(sort);
        }
        if let Some(limit) = limit {
            find = find.limit(limit);
        }
        find.await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)
    }

    /// One keyset page of a tenant's documents of `coll` by `id`: those after `after`, in id order.
    async fn tenant_page(
        &self,
        coll: &Collection<Document>,
        tenant: &TenantId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<Document>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! {"tenant_id": tenant.as_str()};
        if let Some(a) = after {
            filter.insert("id", doc! {"$gt": a});
        }
        self.find_all(coll, filter, Some(doc! {"id": 1}), Some(limit_of(limit)))
            .await
    }

    async fn load_conversation_doc(
        &self,
        t: &TenantId,
        c: &ConversationId,
    ) -> Result<Option<Document>> {
        self.conversations
            .find_one(doc! {"_id": key2(t, c.as_str()), "tenant_id": t.as_str()})
            .await
            .map_err(db_err)
    }

    /// The conversations of `events` that exist: key -> created_at in milliseconds.
    async fn existing_conversations(&self, events: &[&LogEvent]) -> Result<HashMap<String, i64>> {
        let mut by_tenant: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
        for ev in events {
            by_tenant
                .entry(ev.tenant_id.as_str())
                .or_default()
                .insert(ev.conversation_id.as_str());
        }
        let mut found = HashMap::new();
        for (tenant, ids) in by_tenant {
            let ids: Vec<&str> = ids.into_iter().collect();
            let docs = self
                .conversations
                .find(doc! {"tenant_id": tenant, "id": {"$in": ids}})
                .projection(doc! {"_id": 1, "created_at": 1})
                .await
                .map_err(db_err)?
                .try_collect::<Vec<_>>()
                .await
                .map_err(db_err)?;
            for d in docs {
                let r = R(&d);
                found.insert(r.str("_id")?.to_string(), r.millis("created_at")?);
            }
        }
        Ok(found)
    }

    /// Stores the messages of a batch's `message.created` events (in conversations that exist)
    /// and says, per event index, what the store held before.
    async fn store_messages(
        &self,
        todo: &[&LogEvent],
        convs: &HashMap<String, i64>,
    ) -> Result<HashMap<usize, Stored>> {
        let mut slots = Vec::new();
        let mut keys = Vec::new();
        let mut docs = Vec::new();
        for (i, ev) in todo.iter().enumerate() {
            if let ConversationEvent::MessageCreated(m) = &ev.event
                && convs.contains_key(&key2(&ev.tenant_id, ev.conversation_id.as_str()))
            {
                slots.push(i);
                keys.push(key2(&ev.tenant_id, &m.message_id.to_string()));
                docs.push(message_doc(ev, m));
            }
        }
        let inserted = self.insert_messages(docs).await?;
        // For duplicates: the stored (conversation, position). The same position means this very
        // event was stored before (a replay after a crash): its follow-ups run again, guarded.
        let dups: Vec<&str> = keys
            .iter()
            .zip(&inserted)
            .filter(|(_, new)| !**new)
            .map(|(k, _)| k.as_str())
            .collect();
        let mut before: HashMap<String, (String, i64)> = HashMap::new();
        if !dups.is_empty() {
            let docs = self
                .find_all(&self.messages, doc! {"_id": {"$in": dups}}, None, None)
                .await?;
            for d in docs {
                let r = R(&d);
                before.insert(
                    r.str("_id")?.to_string(),
                    (r.str("conversation_id")?.to_string(), r.i64("position")?),
                );
            }
        }
        let mut out = HashMap::with_capacity(slots.len());
        for ((slot, key), new) in slots.into_iter().zip(&keys).zip(inserted) {
            let ev = todo[slot];
            let same_event = before
                .get(key)
                .is_some_and(|(c, p)| c == ev.conversation_id.as_str() && *p == ev.offset);
            let stored = match (new, same_event) {
                (true, _) => Stored::New,
                (false, true) => Stored::Replayed,
                (false, false) => Stored::Before,
            };
            out.insert(slot, stored);
        }
        Ok(out)
    }

    /// Inserts the messages of a batch in one unordered bulk write. Returns, per document, whether
    /// it was new (`true`) or already stored (`false`, duplicate key).
    async fn insert_messages(&self, docs: Vec<Document>) -> Result<Vec<bool>> {
        let n = docs.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut inserted = vec![true; n];
        match self.messages.insert_many(docs).ordered(false).await {
            Ok(_) => {}
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(failure) => {
                    if let Some(wce) = &failure.write_concern_error {
                        return Err(StoreError::Unavailable(format!(
                            "write concern: {}",
                            wce.message
                        )));
                    }
                    for we in failure.write_errors.iter().flatten() {
                        if we.code != DUPLICATE_KEY {
                            return Err(StoreError::Internal(format!(
                                "insert message: {} ({})",
                                we.message, we.code
                            )));
                        }
                        if let Some(slot) = inserted.get_mut(we.index) {
                            *slot = false;
                        }
                    }
                }
                _ => return Err(db_err(e)),
            },
        }
        Ok(inserted)
    }

    /// Guarded unread bookkeeping for a new top-level message: one more unread message for every
    /// other member who has not read past it, once per member (`unread_offset`).
    async fn count_unread(&self, ev: &LogEvent, sender: &UserId) -> Result<()> {
        self.members
            .update_many(
                doc! {
                    "tenant_id": ev.tenant_id.as_str(),
                    "conversation_id": ev.conversation_id.as_str(),
                    "user_id": {"$ne": sender.as_str()},
                    "last_read_position": {"$lt": ev.offset},
                    "unread_offset": {"$lt": ev.offset},
                },
                doc! {"$inc": {"unread_count": 1}, "$set": {"unread_offset": ev.offset}},
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Guarded unread bookkeeping for a deleted top-level message: one fewer unread message (not
    /// below zero) for every other member who had not read past it, once per member. Then every
    /// member's marker moves to this event, so that a concurrent `mark_read` notices it.
    async fn uncount_unread(&self, ev: &LogEvent, sender: &str, position: Position) -> Result<()> {
        let (t, c) = (ev.tenant_id.as_str(), ev.conversation_id.as_str());
        self.members
            .update_many(
                doc! {
                    "tenant_id": t,
                    "conversation_id": c,
                    "user_id": {"$ne": sender},
                    "last_read_position": {"$lt": position},
                    "unread_offset": {"$lt": ev.offset},
                    "unread_count": {"$gt": 0},
                },
                doc! {"$inc": {"unread_count": -1}, "$set": {"unread_offset": ev.offset}},
            )
            .await
            .map_err(db_err)?;
        self.members
            .update_many(
                doc! {"tenant_id": t, "conversation_id": c, "unread_offset": {"$lt": ev.offset}},
                doc! {"$set": {"unread_offset": ev.offset}},
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Keeps the conversation's preview in step with an edited or deleted message (only when the
    /// preview shows that message). Idempotent: it writes the message's current text.
    async fn refresh_preview(&self, ev: &LogEvent, msg: &MessageState) -> Result<()> {
        let text = if msg.deleted {
            String::new()
        } else {
            preview_text(&msg.text)
        };
        self.conversations
            .update_one(
                doc! {
                    "_id": key2(&ev.tenant_id, ev.conversation_id.as_str()),
                    "tenant_id": ev.tenant_id.as_str(),
                    "last_message.id": msg.id.as_str(),
                },
                doc! {"$set": {"last_message.text": text}},
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// The message an event refers to, if it is in the event's conversation.
    async fn message_state(&self, ev: &LogEvent, id: &MessageId) -> Result<Option<MessageState>> {
        let d = self
            .messages
            .find_one(doc! {
                "_id": key2(&ev.tenant_id, &id.to_string()),
                "tenant_id": ev.tenant_id.as_str(),
                "conversation_id": ev.conversation_id.as_str(),
            })
            .await
            .map_err(db_err)?;
        d.map(|d| MessageState::read(&d)).transpose()
    }

    async fn apply_created(&self, ev: &LogEvent, m: &MessageCreated, fresh: bool) -> Result<()> {
        if !fresh {
            return Ok(());
        }
        if let Some(parent) = m.parent_id {
            self.messages
                .update_one(
                    doc! {
                        "_id": key2(&ev.tenant_id, &parent.to_string()),
                        "tenant_id": ev.tenant_id.as_str(),
                        "conversation_id": ev.conversation_id.as_str(),
                        "applied_offset": {"$lt": ev.offset},
                    },
                    doc! {"$inc": {"reply_count": 1}, "$set": {"applied_offset": ev.offset}},
                )
                .await
                .map_err(db_err)?;
            return Ok(());
        }
        self.count_unread(ev, &m.sender_id).await
    }

    async fn apply_updated(&self, ev: &LogEvent, u: &MessageUpdated) -> Result<Outcome> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(mut msg) = self.message_state(ev, &u.message_id).await? else {
                return Ok(Outcome::Skipped);
            };
            if msg.applied_offset >= ev.offset || msg.deleted {
                self.refresh_preview(ev, &msg).await?;
                return Ok(Outcome::Duplicate);
            }
            let res = self
                .messages
                .update_one(
                    doc! {"_id": &msg.key, "applied_offset": msg.applied_offset},
                    doc! {"$set": {
                        "text": &u.text,
                        "html": &u.html,
                        "mentions": user_ids(&u.mentions),
                        "links": &u.links,
                        "hashtags": &u.hashtags,
                        "edited_at": date(u.edited_at),
                        "applied_offset": ev.offset,
                    }},
                )
                .await
                .map_err(db_err)?;
            if res.matched_count == 1 {
                msg.text = u.text.clone();
                self.refresh_preview(ev, &msg).await?;
                return Ok(Outcome::Applied);
            }
        }
        Err(contended("message update"))
    }

    async fn apply_deleted(&self, ev: &LogEvent, d: &MessageDeleted) -> Result<Outcome> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(mut msg) = self.message_state(ev, &d.message_id).await? else {
                return Ok(Outcome::Skipped);
            };
            let outcome = if msg.deleted_offset != NOT_DELETED {
                Outcome::Duplicate
            } else {
                let res = self
                    .messages
                    .update_one(
                        doc! {"_id": &msg.key, "deleted_offset": NOT_DELETED},
                        doc! {
                            "$set": {
                                "deleted_at": date(d.deleted_at),
                                "deleted_by": d.deleted_by.as_str(),
                                "deleted_offset": ev.offset,
                            },
                            "$max": {"applied_offset": ev.offset},
                        },
                    )
                    .await
                    .map_err(db_err)?;
                if res.matched_count != 1 {
                    continue;
                }
                msg.deleted = true;
                msg.deleted_offset = ev.offset;
                Outcome::Applied
            };
            // The unread follow-up belongs to the event that deleted the message; a replay of
            // that event runs it again (guarded), a second delete event does not.
            if msg.deleted_offset == ev.offset && msg.top_level {
                self.uncount_unread(ev, &msg.sender_id, msg.position)
                    .await?;
            }
            self.refresh_preview(ev, &msg).await?;
            return Ok(outcome);
        }
        Err(contended("message delete"))
    }

    async fn apply_reaction(
        &self,
        ev: &LogEvent,
        r: &ReactionChanged,
        add: bool,
    ) -> Result<Outcome> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(msg) = self.message_state(ev, &r.message_id).await? else {
                return Ok(Outcome::Skipped);
            };
            if msg.applied_offset >= ev.offset {
                return Ok(Outcome::Duplicate);
            }
            let mut reactions = msg.reactions;
            let user = r.user_id.as_str();
            let pos = reactions.iter().position(|(k, _)| k == &r.kind);
            let present = pos.is_some_and(|i| reactions[i].1.iter().any(|u| u == user));
            match (add, present, pos) {
                (true, false, Some(i)) => reactions[i].1.push(user.to_string()),
                (true, false, None) => reactions.push((r.kind.clone(), vec![user.to_string()])),
                (false, true, Some(i)) => reactions[i].1.retain(|u| u != user),
                _ => return Ok(Outcome::Duplicate),
            }
            reactions.retain(|(_, users)| !users.is_empty());
            let arr: Vec<Bson> = reactions
                .iter()
                .map(|(k, users)| Bson::Document(doc! {"kind": k, "users": users}))
                .collect();
            let res = self
                .messages
                .update_one(
                    doc! {"_id": &msg.key, "applied_offset": msg.applied_offset},
                    doc! {"$set": {"reactions": arr, "applied_offset": ev.offset}},
                )
                .await
                .map_err(db_err)?;
            if res.matched_count == 1 {
                return Ok(Outcome::Applied);
            }
        }
        Err(contended("reaction"))
    }

    /// Sets the previews of the conversations that got new top-level messages, from the messages'
    /// current state (an edit or delete later in the same batch is already in it). Guarded by
    /// `last_position`, so an older message never replaces a newer preview.
    async fn set_previews(&self, latest: &HashMap<String, (TenantId, String, i64)>) -> Result<()> {
        for (conv_key, (tenant, msg_key, created_ms)) in latest {
            let Some(d) = self
                .messages
                .find_one(doc! {"_id": msg_key, "tenant_id": tenant.as_str()})
                .await
                .map_err(db_err)?
            else {
                continue;
            };
            let msg = MessageState::read(&d)?;
            let r = R(&d);
            let preview = doc! {
                "id": msg.id.as_str(),
                "sender_id": msg.sender_id.as_str(),
                "text": if msg.deleted { String::new() } else { preview_text(&msg.text) },
                "position": msg.position,
                "created_at": r.millis("created_at")?,
            };
            let activity = (*created_ms).max(r.millis("created_at")?);
            self.conversations
                .update_one(
                    doc! {
                        "_id": conv_key,
                        "tenant_id": tenant.as_str(),
                        "last_position": {"$lt": msg.position},
                    },
                    doc! {"$set": {
                        "last_message": preview,
                        "last_position": msg.position,
                        "activity_at": activity,
                    }},
                )
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }
}

/// What the store held when a `message.created` event's message was inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Nothing: the message is new.
    New,
    /// The message of this very event (same position): a replay.
    Replayed,
    /// Another event's message with the same id (a retried send): a duplicate.
    Before,
}

/// What one event did.
enum Outcome {
    Applied,
    Duplicate,
    Skipped,
}

/// The parts of a stored message that the log's follow-up writes need.
struct MessageState {
    key: String,
    id: String,
    sender_id: String,
    position: Position,
    top_level: bool,
    text: String,
    deleted: bool,
    applied_offset: i64,
    deleted_offset: i64,
    reactions: Vec<(String, Vec<String>)>,
}

impl MessageState {
    fn read(d: &Document) -> Result<Self> {
        let r = R(d);
        let deleted_offset = r.opt_i64("deleted_offset")?.unwrap_or(NOT_DELETED);
        Ok(Self {
            key: r.str("_id")?.to_string(),
            id: r.str("id")?.to_string(),
            sender_id: r.str("sender_id")?.to_string(),
            position: r.i64("position")?,
            top_level: parent_of(&r)?.is_none(),
            text: r.str("text")?.to_string(),
            deleted: deleted_offset != NOT_DELETED || r.opt_millis("deleted_at")?.is_some(),
            applied_offset: r.opt_i64("applied_offset")?.unwrap_or(-1),
            deleted_offset,
            reactions: read_reactions(&r)?,
        })
    }
}

fn contended(what: &str) -> StoreError {
    StoreError::Unavailable(format!("{what}: too many concurrent writers, try again"))
}

fn preview_text(text: &str) -> String {
    text.chars().take(200).collect()
}

/// `"<tenant>/<id>"`: the `_id` of a tenant-owned document.
fn key2(t: &TenantId, id: &str) -> String {
    format!("{t}/{id}")
}

fn member_key(t: &TenantId, c: &ConversationId, u: &UserId) -> String {
    format!("{t}/{c}/{u}")
}

fn progress_key(consumer: &str, partition: i32) -> String {
    // The partition is the last `#` segment and never contains one: the key is unambiguous.
    format!("{consumer}#{partition}")
}

/// Timestamps are stored as Int64 milliseconds since the Unix epoch ([`to_millis`]): exact,
/// ordered, and compared as numbers by every server (BSON dates are read too).
fn date(t: OffsetDateTime) -> i64 {
    to_millis(t)
}

fn opt_date(t: Option<OffsetDateTime>) -> Bson {
    t.map_or(Bson::Null, |t| Bson::Int64(date(t)))
}

fn opt_str<S: AsRef<str>>(s: Option<S>) -> Bson {
    s.map_or(Bson::Null, |s| Bson::String(s.as_ref().to_string()))
}

fn user_ids(ids: &[UserId]) -> Vec<&str> {
    ids.iter().map(UserId::as_str).collect()
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// Maps a driver error: unreachable, timed out, stepping down -> `Unavailable`; anything else
/// -> `Internal`. Duplicate keys are handled where they are expected, before this.
fn db_err(e: mongodb::error::Error) -> StoreError {
    let transient = match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::InsertMany(f) => f.write_concern_error.is_some(),
        _ => false,
    } || e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError");
    if transient {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(f) => f
            .write_errors
            .iter()
            .flatten()
            .any(|w| w.code == DUPLICATE_KEY),
        _ => false,
    }
}

/// Duplicate key -> `AlreadyExists`, else [`db_err`].
fn insert_err(e: mongodb::error::Error) -> StoreError {
    if is_duplicate_key(&e) {
        StoreError::AlreadyExists
    } else {
        db_err(e)
    }
}

/// Lenient reads of a stored document.
struct R<'a>(&'a Document);

impl R<'_> {
    fn get(&self, k: &str) -> Option<&Bson> {
        match self.0.get(k) {
            None | Some(Bson::Null) => None,
            Some(v) => Some(v),
        }
    }
    fn bad(k: &str, what: &str) -> StoreError {
        StoreError::Internal(format!("stored document: field `{k}` {what}"))
    }
    fn str(&self, k: &str) -> Result<&str> {
        self.opt_str(k)?.ok_or_else(|| Self::bad(k, "is missing"))
    }
    fn opt_str(&self, k: &str) -> Result<Option<&str>> {
        match self.get(k) {
            None => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s)),
            Some(_) => Err(Self::bad(k, "is not a string")),
        }
    }
    fn opt_i64(&self, k: &str) -> Result<Option<i64>> {
        match self.get(k) {
            None => Ok(None),
            Some(Bson::Int64(v)) => Ok(Some(*v)),
            Some(Bson::Int32(v)) => Ok(Some(i64::from(*v))),
            Some(Bson::Double(v)) if v.fract() == 0.0 => Ok(Some(*v as i64)),
            Some(_) => Err(Self::bad(k, "is not an integer")),
        }
    }
    fn i64(&self, k: &str) -> Result<i64> {
        self.opt_i64(k)?.ok_or_else(|| Self::bad(k, "is missing"))
    }
    fn u32(&self, k: &str) -> Result<u32> {
        Ok(u32::try_from(self.i64(k)?.max(0)).unwrap_or(u32::MAX))
    }
    fn u64(&self, k: &str) -> Result<u64> {
        Ok(u64::try_from(self.i64(k)?.max(0)).unwrap_or(0))
    }
    fn opt_millis(&self, k: &str) -> Result<Option<i64>> {
        match self.get(k) {
            Some(Bson::DateTime(d)) => Ok(Some(d.timestamp_millis())),
            _ => self.opt_i64(k),
        }
    }
    fn millis(&self, k: &str) -> Result<i64> {
        self.opt_millis(k)?
            .ok_or_else(|| Self::bad(k, "is missing"))
    }
    fn time(&self, k: &str) -> Result<OffsetDateTime> {
        Ok(from_millis(self.millis(k)?))
    }
    fn opt_time(&self, k: &str) -> Result<Option<OffsetDateTime>> {
        Ok(self.opt_millis(k)?.map(from_millis))
    }
    fn opt_bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(Bson::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(Self::bad(k, "is not a boolean")),
        }
    }
    fn opt_doc(&self, k: &str) -> Result<Option<&Document>> {
        match self.get(k) {
            None => Ok(None),
            Some(Bson::Document(d)) => Ok(Some(d)),
            Some(_) => Err(Self::bad(k, "is not a document")),
        }
    }
    fn strings(&self, k: &str) -> Result<Vec<String>> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Bson::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Bson::String(s) => Ok(s.clone()),
                    _ => Err(Self::bad(k, "holds a non-string")),
                })
                .collect(),
            Some(_) => Err(Self::bad(k, "is not an array")),
        }
    }
    fn json(&self, k: &str) -> Result<serde_json::Value> {
        match self.opt_str(k)? {
            None => Ok(serde_json::Value::Null),
            Some(s) => serde_json::from_str(s).map_err(internal),
        }
    }
}

fn parse_tenant_id(s: &str) -> Result<TenantId> {
    TenantId::parse(s).map_err(internal)
}
fn parse_user_id(s: &str) -> Result<UserId> {
    UserId::parse(s).map_err(internal)
}
fn parse_conversation_id(s: &str) -> Result<ConversationId> {
    ConversationId::parse(s).map_err(internal)
}
fn parse_message_id(s: &str) -> Result<MessageId> {
    MessageId::parse(s).map_err(internal)
}

/// The parent of a stored message; `None` for a top-level one (empty or absent).
fn parent_of(r: &R<'_>) -> Result<Option<String>> {
    Ok(r.opt_str("parent_id")?
        .filter(|p| *p != TOP_LEVEL)
        .map(str::to_string))
}

fn read_reactions(r: &R<'_>) -> Result<Vec<(String, Vec<String>)>> {
    match r.get("reactions") {
        None => Ok(Vec::new()),
        Some(Bson::Array(a)) => a
            .iter()
            .map(|v| match v {
                Bson::Document(d) => {
                    let r = R(d);
                    Ok((r.str("kind")?.to_string(), r.strings("users")?))
                }
                _ => Err(R::bad("reactions", "holds a non-document")),
            })
            .collect(),
        Some(_) => Err(R::bad("reactions", "is not an array")),
    }
}

fn status_str(s: TenantStatus) -> &'static str {
    match s {
        TenantStatus::Active => "active",
        TenantStatus::Suspended => "suspended",
    }
}

fn tenant_doc(t: &Tenant) -> Document {
    let q = &t.quotas;
    doc! {
        "_id": t.id.as_str(),
        "name": &t.name,
        "status": status_str(t.status),
        "quotas": {
            "max_connections": i64::from(q.max_connections),
            "messages_per_minute": i64::from(q.messages_per_minute),
            "searches_per_minute": i64::from(q.searches_per_minute),
            "max_upload_bytes": i64::try_from(q.max_upload_bytes).unwrap_or(i64::MAX),
            "storage_bytes": i64::try_from(q.storage_bytes).unwrap_or(i64::MAX),
        },
        "features": &t.features,
        "created_at": date(t.created_at),
        "updated_at": date(t.updated_at),
    }
}

fn tenant_from(d: &Document) -> Result<Tenant> {
    let r = R(d);
    let status = match r.str("status")? {
        "active" => TenantStatus::Active,
        "suspended" => TenantStatus::Suspended,
        other => return Err(internal(format!("unknown tenant status {other:?}"))),
    };
    let quotas = match r.opt_doc("quotas")? {
        Some(q) => {
            let q = R(q);
            Quotas {
                max_connections: q.u32("max_connections")?,
                messages_per_minute: q.u32("messages_per_minute")?,
                searches_per_minute: q.u32("searches_per_minute")?,
                max_upload_bytes: q.u64("max_upload_bytes")?,
                storage_bytes: q.u64("storage_bytes")?,
            }
        }
        None => Quotas::default(),
    };
    Ok(Tenant {
        id: parse_tenant_id(r.str("_id")?)?,
        name: r.str("name")?.to_string(),
        status,
        quotas,
        features: r.strings("features")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn credential_doc(c: &AppCredential) -> Document {
    doc! {
        "_id": &c.app_id,
        "app_id": &c.app_id,
        "tenant_id": c.tenant_id.as_str(),
        "secret_hash": &c.secret_hash,
        "created_at": date(c.created_at),
        "expires_at": opt_date(c.expires_at),
    }
}

fn credential_from(d: &Document) -> Result<AppCredential> {
    let r = R(d);
    Ok(AppCredential {
        app_id: r.str("_id")?.to_string(),
        tenant_id: parse_tenant_id(r.str("tenant_id")?)?,
        secret_hash: r.str("secret_hash")?.to_string(),
        created_at: r.time("created_at")?,
        expires_at: r.opt_time("expires_at")?,
    })
}

fn user_from(d: &Document) -> Result<User> {
    let r = R(d);
    Ok(User {
        tenant_id: parse_tenant_id(r.str("tenant_id")?)?,
        id: parse_user_id(r.str("id")?)?,
        name: r.str("name")?.to_string(),
        image_url: r.opt_str("image_url")?.map(str::to_string),
        data: r.json("data_json")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        tokens_valid_after: r.opt_time("tokens_valid_after")?,
    })
}

fn conversation_doc(c: &Conversation, member_count: u32) -> Document {
    let activity = c
        .last_message
        .as_ref()
        .map_or(c.created_at, |m| m.created_at.max(c.created_at));
    let last_message = c.last_message.as_ref().map_or(Bson::Null, |m| {
        Bson::Document(doc! {
            "id": m.id.to_string(),
            "sender_id": m.sender_id.as_str(),
            "text": &m.text,
            "position": m.position,
            "created_at": date(m.created_at),
        })
    });
    doc! {
        "_id": key2(&c.tenant_id, c.id.as_str()),
        "tenant_id": c.tenant_id.as_str(),
        "id": c.id.as_str(),
        "kind": c.kind.as_str(),
        "name": opt_str(c.name.as_ref()),
        "topic": opt_str(c.topic.as_ref()),
        "created_by": c.created_by.as_str(),
        "created_at": date(c.created_at),
        "updated_at": date(c.updated_at),
        "archived_at": opt_date(c.archived_at),
        "archived": c.archived_at.is_some(),
        "last_message": last_message,
        "last_position": c.last_message.as_ref().map_or(-1, |m| m.position),
        "activity_at": date(activity),
        "applied_offset": -1_i64,
        "member_count": i64::from(member_count),
    }
}

fn conversation_from(d: &Document) -> Result<Conversation> {
    let r = R(d);
    let last_message = match r.opt_doc("last_message")? {
        None => None,
        Some(m) => {
            let m = R(m);
            Some(MessagePreview {
                id: parse_message_id(m.str("id")?)?,
                sender_id: parse_user_id(m.str("sender_id")?)?,
                text: m.opt_str("text")?.unwrap_or_default().to_string(),
                position: m.i64("position")?,
                created_at: m.time("created_at")?,
            })
        }
    };
    Ok(Conversation {
        tenant_id: parse_tenant_id(r.str("tenant_id")?)?,
        id: parse_conversation_id(r.str("id")?)?,
        kind: ConversationKind::parse(r.str("kind")?)
            .ok_or_else(|| internal("unknown conversation kind"))?,
        name: r.opt_str("name")?.map(str::to_string),
        topic: r.opt_str("topic")?.map(str::to_string),
        created_by: parse_user_id(r.str("created_by")?)?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        archived_at: r.opt_time("archived_at")?,
        last_message,
        member_count: r.u32("member_count")?,
    })
}

fn member_doc(m: &Member) -> Document {
    doc! {
        "_id": member_key(&m.tenant_id, &m.conversation_id, &m.user_id),
        "tenant_id": m.tenant_id.as_str(),
        "conversation_id": m.conversation_id.as_str(),
        "user_id": m.user_id.as_str(),
        "role": m.role.as_str(),
        "joined_at": date(m.joined_at),
        "last_read_position": m.last_read_position,
        "unread_count": i64::from(m.unread_count),
        "unread_offset": -1_i64,
    }
}

fn member_from(d: &Document) -> Result<Member> {
    let r = R(d);
    Ok(Member {
        tenant_id: parse_tenant_id(r.str("tenant_id")?)?,
        conversation_id: parse_conversation_id(r.str("conversation_id")?)?,
        user_id: parse_user_id(r.str("user_id")?)?,
        role: Role::parse(r.str("role")?).ok_or_else(|| internal("unknown role"))?,
        joined_at: r.time("joined_at")?,
        last_read_position: r.i64("last_read_position")?,
        unread_count: r.u32("unread_count")?,
    })
}

fn message_doc(ev: &LogEvent, m: &MessageCreated) -> Document {
    let forwarded = m.forwarded_from.as_ref().map_or(Bson::Null, |f| {
        Bson::Document(doc! {
            "conversation_id": f.conversation_id.as_str(),
            "message_id": f.message_id.to_string(),
            "sender_id": f.sender_id.as_str(),
        })
    });
    doc! {
        "_id": key2(&ev.tenant_id, &m.message_id.to_string()),
        "tenant_id": ev.tenant_id.as_str(),
        "conversation_id": ev.conversation_id.as_str(),
        "id": m.message_id.to_string(),
        "position": ev.offset,
        "sender_id": m.sender_id.as_str(),
        "text": &m.text,
        "html": &m.html,
        "mentions": user_ids(&m.mentions),
        "links": &m.links,
        "hashtags": &m.hashtags,
        "parent_id": m.parent_id.map_or(TOP_LEVEL.to_string(), |p| p.to_string()),
        "reply_count": 0_i64,
        "reactions": [],
        "client_msg_id": opt_str(m.client_msg_id.as_ref()),
        "forwarded_from": forwarded,
        "attachments": attachments_bson(&m.attachments),
        "created_at": date(m.created_at),
        "edited_at": Bson::Null,
        "deleted_at": Bson::Null,
        "deleted_by": Bson::Null,
        "applied_offset": ev.offset,
        "deleted_offset": NOT_DELETED,
    }
}

fn attachments_bson(attachments: &[Attachment]) -> Bson {
    Bson::Array(
        attachments
            .iter()
            .map(|a| {
                Bson::Document(doc! {
                    "id": &a.id,
                    "name": &a.name,
                    "content_type": &a.content_type,
                    // Sizes fit i64 (files are far below 8 EiB).
                    "size": i64::try_from(a.size).unwrap_or(i64::MAX),
                    "width": a.width.map_or(Bson::Null, |w| Bson::Int64(w.into())),
                    "height": a.height.map_or(Bson::Null, |h| Bson::Int64(h.into())),
                    "has_thumbnail": a.has_thumbnail,
                })
            })
            .collect(),
    )
}

fn read_attachments(r: &R<'_>) -> Result<Vec<Attachment>> {
    let Some(value) = r.get("attachments") else {
        return Ok(Vec::new());
    };
    let Bson::Array(items) = value else {
        return Err(R::bad("attachments", "is not an array"));
    };
    let dimension = |a: &R<'_>, k: &str| -> Result<Option<u32>> {
        a.opt_i64(k)?
            .map(|n| u32::try_from(n).map_err(|_| R::bad(k, "is out of range")))
            .transpose()
    };
    items
        .iter()
        .map(|item| {
            let Bson::Document(d) = item else {
                return Err(R::bad("attachments", "holds a non-document"));
            };
            let a = R(d);
            Ok(Attachment {
                id: a.str("id")?.to_string(),
                name: a.str("name")?.to_string(),
                content_type: a.str("content_type")?.to_string(),
                size: u64::try_from(a.i64("size")?).map_err(|_| R::bad("size", "is negative"))?,
                width: dimension(&a, "width")?,
                height: dimension(&a, "height")?,
                has_thumbnail: a.opt_bool("has_thumbnail")?.unwrap_or(false),
            })
        })
        .collect()
}

fn message_from(d: &Document) -> Result<Message> {
    let r = R(d);
    let forwarded_from = match r.opt_doc("forwarded_from")? {
        None => None,
        Some(f) => {
            let f = R(f);
            Some(ForwardedFrom {
                conversation_id: parse_conversation_id(f.str("conversation_id")?)?,
                message_id: parse_message_id(f.str("message_id")?)?,
                sender_id: parse_user_id(f.str("sender_id")?)?,
            })
        }
    };
    let mut reactions = BTreeMap::new();
    for (kind, users) in read_reactions(&r)? {
        let users = users
            .iter()
            .map(|u| parse_user_id(u))
            .collect::<Result<Vec<_>>>()?;
        reactions.insert(kind, users);
    }
    Ok(Message {
        tenant_id: parse_tenant_id(r.str("tenant_id")?)?,
        conversation_id: parse_conversation_id(r.str("conversation_id")?)?,
        id: parse_message_id(r.str("id")?)?,
        position: r.i64("position")?,
        sender_id: parse_user_id(r.str("sender_id")?)?,
        text: r.opt_str("text")?.unwrap_or_default().to_string(),
        html: r.opt_str("html")?.unwrap_or_default().to_string(),
        mentions: r
            .strings("mentions")?
            .iter()
            .map(|u| parse_user_id(u))
            .collect::<Result<_>>()?,
        links: r.strings("links")?,
        hashtags: r.strings("hashtags")?,
        parent_id: parent_of(&r)?.map(|p| parse_message_id(&p)).transpose()?,
        reply_count: r
            .opt_i64("reply_count")?
            .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
        reactions,
        client_msg_id: r.opt_str("client_msg_id")?.map(str::to_string),
        forwarded_from,
        attachments: read_attachments(&r)?,
        created_at: r.time("created_at")?,
        edited_at: r.opt_time("edited_at")?,
        deleted_at: r.opt_time("deleted_at")?,
        deleted_by: r.opt_str("deleted_by")?.map(parse_user_id).transpose()?,
    })
}

fn audit_doc(e: &AuditEntry) -> Result<Document> {
    Ok(doc! {
        "_id": &e.id,
        "id": &e.id,
        "tenant_id": e.tenant_id.as_str(),
        "at": date(e.at),
        "actor": &e.actor,
        "action": &e.action,
        "target": &e.target,
        "details_json": serde_json::to_string(&e.details).map_err(internal)?,
    })
}

fn audit_from(d: &Document) -> Result<AuditEntry> {
    let r = R(d);
    Ok(AuditEntry {
        tenant_id: parse_tenant_id(r.str("tenant_id")?)?,
        id: r.str("_id")?.to_string(),
        at: r.time("at")?,
        actor: r.str("actor")?.to_string(),
        action: r.str("action")?.to_string(),
        target: r.str("target")?.to_string(),
        details: r.json("details_json")?,
    })
}

fn limit_of(limit: u32) -> i64 {
    i64::from(limit.max(1))
}

#[async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> Result<()> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        self.tenants
            .insert_one(tenant_doc(tenant))
            .await
            .map_err(insert_err)?;
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        self.tenants
            .find_one(doc! {"_id": id.as_str()})
            .await
            .map_err(db_err)?
            .map(|d| tenant_from(&d))
            .transpose()
    }

    async fn put_tenant(&self, tenant: &Tenant) -> Result<()> {
        let res = self
            .tenants
            .replace_one(doc! {"_id": tenant.id.as_str()}, tenant_doc(tenant))
            .await
            .map_err(db_err)?;
        if res.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after {
            Some(a) => doc! {"_id": {"$gt": a.as_str()}},
            None => doc! {},
        };
        self.find_all(
            &self.tenants,
            filter,
            Some(doc! {"_id": 1}),
            Some(limit_of(limit)),
        )
        .await?
        .iter()
        .map(tenant_from)
        .collect()
    }

    async fn delete_tenant(&self, id: &TenantId) -> Result<()> {
        if self.get_tenant(id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        // Everything the tenant owns first, the tenant record last: a retry after a partial
        // failure still finds the tenant and finishes the job. The audit trail stays.
        let filter = doc! {"tenant_id": id.as_str()};
        for coll in [
            &self.messages,
            &self.members,
            &self.conversations,
            &self.users,
            &self.credentials,
            &self.webhooks(),
            &self.dead_letters(),
        ] {
            coll.delete_many(filter.clone()).await.map_err(db_err)?;
        }
        self.tenants
            .delete_one(doc! {"_id": id.as_str()})
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn put_credential(&self, credential: &AppCredential) -> Result<()> {
        // The filter names the tenant: an app id owned by another tenant is never taken over
        // (the upsert then collides on `_id` and reports AlreadyExists).
        self.credentials
            .replace_one(
                doc! {"_id": &credential.app_id, "tenant_id": credential.tenant_id.as_str()},
                credential_doc(credential),
            )
            .upsert(true)
            .await
            .map_err(insert_err)?;
        Ok(())
    }

    async fn get_credential(&self, app_id: &str) -> Result<Option<AppCredential>> {
        self.credentials
            .find_one(doc! {"_id": app_id})
            .await
            .map_err(db_err)?
            .map(|d| credential_from(&d))
            .transpose()
    }

    async fn list_credentials(&self, tenant: &TenantId) -> Result<Vec<AppCredential>> {
        self.find_all(
            &self.credentials,
            doc! {"tenant_id": tenant.as_str()},
            Some(doc! {"app_id": 1}),
            None,
        )
        .await?
        .iter()
        .map(credential_from)
        .collect()
    }

    async fn upsert_user(&self, user: &User) -> Result<User> {
        let data = serde_json::to_string(&user.data).map_err(internal)?;
        let filter = doc! {
            "_id": key2(&user.tenant_id, user.id.as_str()),
            "tenant_id": user.tenant_id.as_str(),
        };
        let update = doc! {
            "$set": {
                "name": &user.name,
                "image_url": opt_str(user.image_url.as_ref()),
                "data_json": data,
                "updated_at": date(user.updated_at),
            },
            "$setOnInsert": {
                "id": user.id.as_str(),
                "created_at": date(user.created_at),
                "tokens_valid_after": opt_date(user.tokens_valid_after),
            },
        };
        // An update with upsert, then a read: `$setOnInsert` through findAndModify is not honoured
        // by every server that speaks the protocol. Two first upserts of one user can race to
        // insert; the loser retries as an update.
        let mut attempts = 0;
        loop {
            match self
                .users
                .update_one(filter.clone(), update.clone())
                .upsert(true)
                .await
            {
                Ok(_) => break,
                Err(e) if is_duplicate_key(&e) && attempts < 2 => attempts += 1,
                Err(e) => return Err(db_err(e)),
            }
        }
        self.users
            .find_one(filter)
            .await
            .map_err(db_err)?
            .ok_or_else(|| StoreError::Unavailable("user removed while being upserted".into()))
            .and_then(|d| user_from(&d))
    }

    async fn get_user(&self, tenant: &TenantId, id: &UserId) -> Result<Option<User>> {
        self.users
            .find_one(doc! {"_id": key2(tenant, id.as_str()), "tenant_id": tenant.as_str()})
            .await
            .map_err(db_err)?
            .map(|d| user_from(&d))
            .transpose()
    }

    async fn revoke_user_tokens(
        &self,
        tenant: &TenantId,
        id: &UserId,
        at: OffsetDateTime,
    ) -> Result<()> {
        let res = self
            .users
            .update_one(
                doc! {"_id": key2(tenant, id.as_str()), "tenant_id": tenant.as_str()},
                doc! {"$set": {"tokens_valid_after": date(at)}},
            )
            .await
            .map_err(db_err)?;
        if res.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn create_conversation(
        &self,
        conversation: &Conversation,
        members: &[Member],
    ) -> Result<()> {
        let count = u32::try_from(members.len()).unwrap_or(u32::MAX);
        // Members first (unordered, duplicates ignored: a retry of a half-done create finishes
        // it), then the conversation, whose duplicate key is the AlreadyExists answer.
        let existing = self
            .conversations
            .find_one(doc! {
                "_id": key2(&conversation.tenant_id, conversation.id.as_str()),
                "tenant_id": conversation.tenant_id.as_str(),
            })
            .projection(doc! {"_id": 1})
            .await
            .map_err(db_err)?;
        if existing.is_some() {
            return Err(StoreError::AlreadyExists);
        }
        if members
            .iter()
            .any(|m| m.tenant_id != conversation.tenant_id || m.conversation_id != conversation.id)
        {
            return Err(internal("a member of another conversation was passed"));
        }
        let docs: Vec<Document> = members.iter().map(member_doc).collect();
        if !docs.is_empty() {
            match self.members.insert_many(docs).ordered(false).await {
                Ok(_) => {}
                Err(e) => match e.kind.as_ref() {
                    ErrorKind::InsertMany(f)
                        if f.write_concern_error.is_none()
                            && f.write_errors
                                .iter()
                                .flatten()
                                .all(|w| w.code == DUPLICATE_KEY) => {}
                    _ => return Err(db_err(e)),
                },
            }
        }
        self.conversations
            .insert_one(conversation_doc(conversation, count))
            .await
            .map_err(insert_err)?;
        Ok(())
    }

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<Conversation>> {
        self.load_conversation_doc(tenant, id)
            .await?
            .map(|d| conversation_from(&d))
            .transpose()
    }

    async fn update_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        patch: &ConversationPatch,
    ) -> Result<Conversation> {
        let mut set = Document::new();
        if let Some(name) = &patch.name {
            set.insert("name", name);
        }
        if let Some(topic) = &patch.topic {
            set.insert("topic", topic);
        }
        if let Some(archived) = patch.archived_at {
            set.insert("archived_at", opt_date(archived));
            set.insert("archived", archived.is_some());
        }
        if let Some(at) = patch.updated_at {
            set.insert("updated_at", date(at));
        }
        let filter = doc! {"_id": key2(tenant, id.as_str()), "tenant_id": tenant.as_str()};
        let d = if set.is_empty() {
            self.conversations.find_one(filter).await.map_err(db_err)?
        } else {
            self.conversations
                .find_one_and_update(filter, doc! {"$set": set})
                .return_document(ReturnDocument::After)
                .await
                .map_err(db_err)?
        };
        conversation_from(&d.ok_or(StoreError::NotFound)?)
    }

    async fn list_user_conversations(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: &ConversationPage,
    ) -> Result<ConversationList> {
        let after = match &page.cursor {
            Some(c) => Some(
                decode_conversation_cursor(c)
                    .ok_or_else(|| StoreError::Internal("malformed cursor".into()))?,
            ),
            None => None,
        };
        if page.limit == 0 {
            return Ok(ConversationList {
                items: Vec::new(),
                next: None,
            });
        }
        let memberships = self
            .find_all(
                &self.members,
                doc! {"tenant_id": tenant.as_str(), "user_id": user.as_str()},
                None,
                None,
            )
            .await?;
        let mut by_conv = HashMap::with_capacity(memberships.len());
        for d in &memberships {
            let m = member_from(d)?;
            by_conv.insert(m.conversation_id.as_str().to_string(), m);
        }
        if by_conv.is_empty() {
            return Ok(ConversationList {
                items: Vec::new(),
                next: None,
            });
        }
        let ids: Vec<&str> = by_conv.keys().map(String::as_str).collect();
        let mut filter = doc! {"tenant_id": tenant.as_str(), "id": {"$in": ids}};
        if !page.include_archived {
            // A boolean, not `archived_at: null`: null equality next to `$or` is not matched
            // alike by every server that speaks the protocol.
            filter.insert("archived", false);
        }
        if let Some((ms, id)) = &after {
            let at = *ms;
            filter.insert(
                "$or",
                vec![
                    doc! {"activity_at": {"$lt": at}},
                    doc! {"activity_at": at, "id": {"$gt": id.as_str()}},
                ],
            );
        }
        let docs = self
            .find_all(
                &self.conversations,
                filter,
                Some(doc! {"activity_at": -1, "id": 1}),
                Some(limit_of(page.limit)),
            )
            .await?;
        let mut items = Vec::with_capacity(docs.len());
        let mut last = None;
        for d in &docs {
            let conv = conversation_from(d)?;
            let activity = R(d).millis("activity_at")?;
            let Some(member) = by_conv.remove(conv.id.as_str()) else {
                continue;
            };
            last = Some((activity, conv.id.clone()));
            items.push((conv, member));
        }
        let next = match last {
            Some((ms, id)) if items.len() == page.limit as usize => {
                Some(encode_conversation_cursor(ms, &id))
            }
            _ => None,
        };
        Ok(ConversationList { items, next })
    }

    async fn get_member(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<Option<Member>> {
        self.members
            .find_one(doc! {
                "_id": member_key(tenant, conversation, user),
                "tenant_id": tenant.as_str(),
            })
            .await
            .map_err(db_err)?
            .map(|d| member_from(&d))
            .transpose()
    }

    async fn list_members(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<Member>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! {
            "tenant_id": tenant.as_str(),
            "conversation_id": conversation.as_str(),
        };
        if let Some(a) = after {
            filter.insert("user_id", doc! {"$gt": a.as_str()});
        }
        self.find_all(
            &self.members,
            filter,
            Some(doc! {"user_id": 1}),
            Some(limit_of(limit)),
        )
        .await?
        .iter()
        .map(member_from)
        .collect()
    }

    /// The new member's count is the caller's as of now, so every log event already stored counts
    /// as accounted for it (`unread_offset`): a replay of older events never adds to it.
    async fn add_member(&self, member: &Member) -> Result<()> {
        let Some(conv) = self
            .load_conversation_doc(&member.tenant_id, &member.conversation_id)
            .await?
        else {
            return Err(StoreError::NotFound);
        };
        let newest = self
            .messages
            .find_one(doc! {
                "tenant_id": member.tenant_id.as_str(),
                "conversation_id": member.conversation_id.as_str(),
                "parent_id": TOP_LEVEL,
            })
            .sort(doc! {"position": -1})
            .projection(doc! {"position": 1})
            .await
            .map_err(db_err)?;
        let newest = match newest {
            Some(d) => R(&d).i64("position")?,
            None => -1,
        };
        let accounted = R(&conv)
            .opt_i64("applied_offset")?
            .unwrap_or(-1)
            .max(newest);
        let mut doc = member_doc(member);
        doc.insert("unread_offset", accounted);
        self.members.insert_one(doc).await.map_err(insert_err)?;
        self.conversations
            .update_one(
                doc! {
                    "_id": key2(&member.tenant_id, member.conversation_id.as_str()),
                    "tenant_id": member.tenant_id.as_str(),
                },
                doc! {"$inc": {"member_count": 1}},
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn remove_member(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<()> {
        let res = self
            .members
            .delete_one(doc! {
                "_id": member_key(tenant, conversation, user),
                "tenant_id": tenant.as_str(),
            })
            .await
            .map_err(db_err)?;
        if res.deleted_count == 0 {
            return Err(StoreError::NotFound);
        }
        self.conversations
            .update_one(
                doc! {
                    "_id": key2(tenant, conversation.as_str()),
                    "tenant_id": tenant.as_str(),
                    "member_count": {"$gt": 0},
                },
                doc! {"$inc": {"member_count": -1}},
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn set_member_role(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
        role: Role,
    ) -> Result<()> {
        let res = self
            .members
            .update_one(
                doc! {
                    "_id": member_key(tenant, conversation, user),
                    "tenant_id": tenant.as_str(),
                },
                doc! {"$set": {"role": role.as_str()}},
            )
            .await
            .map_err(db_err)?;
        if res.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Moves the marker, then recounts without a transaction and without racing the pipeline.
    ///
    /// The count covers only messages whose log effects are complete: positions up to
    /// `B = max(conversation applied_offset, member unread_offset)`, and deletions whose event is
    /// at or below `B`. The conversation's offset is read before the member, so every event at
    /// or below `A` is already reflected in the member, and every event that touches the member
    /// afterwards is above `B` and passes its `unread_offset < offset` guard: later events add
    /// to (or take from) the count exactly once.
    ///
    /// The write is first a compare-and-set on (`unread_offset`, `last_read_position`) that
    /// replaces the count; if the pipeline keeps touching the member (a busy conversation), it
    /// becomes a delta (`$inc` by recount minus the count read), which concurrent increments
    /// cannot invalidate. Only a concurrent `mark_read` (the marker moved) makes it start over.
    async fn mark_read(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        user: &UserId,
        position: Position,
    ) -> Result<Member> {
        const EXACT_ATTEMPTS: usize = 3;
        let key = member_key(tenant, conversation, user);
        let conv_key = key2(tenant, conversation.as_str());
        for attempt in 0..CAS_ATTEMPTS {
            let applied = match self
                .conversations
                .find_one(doc! {"_id": &conv_key, "tenant_id": tenant.as_str()})
                .projection(doc! {"applied_offset": 1})
                .await
                .map_err(db_err)?
            {
                Some(c) => R(&c).opt_i64("applied_offset")?.unwrap_or(-1),
                None => -1,
            };
            let d = self
                .members
                .find_one_and_update(
                    doc! {"_id": &key, "tenant_id": tenant.as_str()},
                    doc! {"$max": {"last_read_position": position}},
                )
                .return_document(ReturnDocument::After)
                .await
                .map_err(db_err)?
                .ok_or(StoreError::NotFound)?;
            let r = R(&d);
            let marker = r.i64("last_read_position")?;
            let seen = r.opt_i64("unread_offset")?.unwrap_or(-1);
            let stored = r.i64("unread_count")?;
            let bound = applied.max(seen);
            let unread = if bound > marker {
                self.messages
                    .count_documents(doc! {
                        "tenant_id": tenant.as_str(),
                        "conversation_id": conversation.as_str(),
                        "parent_id": TOP_LEVEL,
                        "sender_id": {"$ne": user.as_str()},
                        "position": {"$gt": marker, "$lte": bound},
                        "deleted_offset": {"$gt": bound},
                    })
                    .await
                    .map_err(db_err)?
            } else {
                0
            };
            let unread = i64::try_from(unread).unwrap_or(i64::MAX);
            if attempt < EXACT_ATTEMPTS {
                let res = self
                    .members
                    .update_one(
                        doc! {
                            "_id": &key,
                            "tenant_id": tenant.as_str(),
                            "unread_offset": seen,
                            "last_read_position": marker,
                        },
                        doc! {"$set": {"unread_count": unread, "unread_offset": bound}},
                    )
                    .await
                    .map_err(db_err)?;
                if res.matched_count == 1 {
                    let mut member = member_from(&d)?;
                    member.unread_count = u32::try_from(unread).unwrap_or(u32::MAX);
                    return Ok(member);
                }
            } else {
                let updated = self
                    .members
                    .find_one_and_update(
                        doc! {
                            "_id": &key,
                            "tenant_id": tenant.as_str(),
                            "last_read_position": marker,
                        },
                        doc! {
                            "$inc": {"unread_count": unread - stored},
                            "$max": {"unread_offset": bound},
                        },
                    )
                    .return_document(ReturnDocument::After)
                    .await
                    .map_err(db_err)?;
                if let Some(u) = updated {
                    return member_from(&u);
                }
            }
        }
        Err(contended("mark read"))
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        id: &MessageId,
    ) -> Result<Option<Message>> {
        self.messages
            .find_one(doc! {
                "_id": key2(tenant, &id.to_string()),
                "tenant_id": tenant.as_str(),
                "conversation_id": conversation.as_str(),
            })
            .await
            .map_err(db_err)?
            .map(|d| message_from(&d))
            .transpose()
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        thread: Thread,
        page: MessagePage,
    ) -> Result<Vec<Message>> {
        let parent = match thread {
            Thread::TopLevel => Bson::String(TOP_LEVEL.to_string()),
            Thread::Replies(p) => Bson::String(p.to_string()),
        };
        let mut filter = doc! {
            "tenant_id": tenant.as_str(),
            "conversation_id": conversation.as_str(),
            "parent_id": parent,
        };
        let (limit, descending) = match page {
            MessagePage::Latest { limit } => (limit, true),
            MessagePage::Before { position, limit } => {
                filter.insert("position", doc! {"$lt": position});
                (limit, true)
            }
            MessagePage::After { position, limit } => {
                filter.insert("position", doc! {"$gt": position});
                (limit, false)
            }
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let direction = if descending { -1 } else { 1 };
        let sort = doc! {"position": direction};
        let docs = self
            .find_all(&self.messages, filter, Some(sort), Some(limit_of(limit)))
            .await?;
        let mut out = docs.iter().map(message_from).collect::<Result<Vec<_>>>()?;
        if descending {
            out.reverse();
        }
        Ok(out)
    }

    async fn list_users(
        &self,
        tenant: &TenantId,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<User>> {
        self.tenant_page(
            &self.users,
            tenant,
            after.map(|a| a.as_str().to_owned()),
            limit,
        )
        .await?
        .iter()
        .map(user_from)
        .collect()
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> Result<Vec<Conversation>> {
        self.tenant_page(
            &self.conversations,
            tenant,
            after.map(|a| a.as_str().to_owned()),
            limit,
        )
        .await?
        .iter()
        .map(conversation_from)
        .collect()
    }

    async fn scan_messages(
        &self,
        tenant: &TenantId,
        after: Option<&MessageId>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        self.tenant_page(&self.messages, tenant, after.map(|a| a.to_string()), limit)
            .await?
            .iter()
            .map(message_from)
            .collect()
    }

    async fn member_conversation_ids(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<ConversationId>> {
        let docs = self
            .members
            .find(doc! {"tenant_id": tenant.as_str(), "user_id": user.as_str()})
            .projection(doc! {"conversation_id": 1})
            .await
            .map_err(db_err)?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(db_err)?;
        docs.iter()
            .map(|d| {
                let r = R(d);
                let id = r.str("conversation_id")?;
                ConversationId::parse(id).map_err(|e| StoreError::Internal(e.to_string()))
            })
            .collect()
    }

    async fn apply(&self, consumer: &str, events: &[LogEvent]) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        // Below the recorded progress: done before. Within the batch the log is in order per
        // partition, so the progress moves with each event (as in the embedded store).
        let mut next = self.progress(consumer).await?;
        let mut todo: Vec<&LogEvent> = Vec::with_capacity(events.len());
        for ev in events {
            let n = next.entry(ev.partition).or_insert(0);
            if ev.offset < *n {
                report.duplicates += 1;
                continue;
            }
            *n = ev.offset + 1;
            todo.push(ev);
        }
        let convs = self.existing_conversations(&todo).await?;
        let conv_key = |ev: &LogEvent| key2(&ev.tenant_id, ev.conversation_id.as_str());

        // 1. New messages in one unordered bulk insert.
        let stored = self.store_messages(&todo, &convs).await?;

        // 2. Follow-ups, in log order.
        let mut latest: HashMap<String, (TenantId, String)> = HashMap::new();
        let mut applied_to: HashMap<String, (TenantId, i64)> = HashMap::new();
        for (i, ev) in todo.iter().enumerate() {
            let ck = conv_key(ev);
            if !convs.contains_key(&ck) {
                report.skipped += 1;
                continue;
            }
            let outcome = match &ev.event {
                ConversationEvent::MessageCreated(m) => {
                    let stored = stored.get(&i).copied().unwrap_or(Stored::Before);
                    let follow = matches!(stored, Stored::New | Stored::Replayed);
                    self.apply_created(ev, m, follow).await?;
                    // Events of one conversation come in log order: the last one is the newest.
                    if follow && m.parent_id.is_none() {
                        let msg_key = key2(&ev.tenant_id, &m.message_id.to_string());
                        latest.insert(ck.clone(), (ev.tenant_id.clone(), msg_key));
                    }
                    if stored == Stored::New {
                        Outcome::Applied
                    } else {
                        Outcome::Duplicate
                    }
                }
                ConversationEvent::MessageUpdated(u) => self.apply_updated(ev, u).await?,
                ConversationEvent::MessageDeleted(d) => self.apply_deleted(ev, d).await?,
                ConversationEvent::ReactionAdded(r) => self.apply_reaction(ev, r, true).await?,
                ConversationEvent::ReactionRemoved(r) => self.apply_reaction(ev, r, false).await?,
                // Written to the store by the gateway directly; on the log for fan-out/search.
                ConversationEvent::ReadUpdated(_)
                | ConversationEvent::MemberAdded(_)
                | ConversationEvent::MemberRemoved(_)
                | ConversationEvent::MemberUpdated(_)
                | ConversationEvent::ConversationUpdated(_)
                | ConversationEvent::UserUpdated(_)
                | ConversationEvent::MessageRejected(_) => Outcome::Applied,
            };
            match outcome {
                Outcome::Applied => report.applied += 1,
                Outcome::Duplicate => report.duplicates += 1,
                Outcome::Skipped => report.skipped += 1,
            }
            let entry = applied_to
                .entry(ck)
                .or_insert_with(|| (ev.tenant_id.clone(), ev.offset));
            entry.1 = entry.1.max(ev.offset);
        }

        // 3. Previews (newest top-level message per conversation), then the conversations'
        //    completed offsets, then progress: each only after the effects it vouches for.
        let mut previews = HashMap::with_capacity(latest.len());
        for (ck, (tenant, msg_key)) in latest {
            let created_ms = convs.get(&ck).copied().unwrap_or(0);
            previews.insert(ck, (tenant, msg_key, created_ms));
        }
        self.set_previews(&previews).await?;
        for (ck, (tenant, offset)) in applied_to {
            self.conversations
                .update_one(
                    doc! {"_id": ck, "tenant_id": tenant.as_str()},
                    doc! {"$max": {"applied_offset": offset}},
                )
                .await
                .map_err(db_err)?;
        }
        let touched: BTreeSet<i32> = todo.iter().map(|ev| ev.partition).collect();
        for (partition, offset) in next.into_iter().filter(|(p, _)| touched.contains(p)) {
            self.progress
                .update_one(
                    doc! {"_id": progress_key(consumer, partition)},
                    doc! {
                        "$max": {"next_offset": offset},
                        "$setOnInsert": {"consumer": consumer, "partition": partition},
                    },
                )
                .upsert(true)
                .await
                .map_err(db_err)?;
        }
        Ok(report)
    }

    async fn advance_progress(&self, consumer: &str, next: &[(i32, i64)]) -> Result<()> {
        for &(partition, offset) in next {
            self.progress
                .update_one(
                    doc! {"_id": progress_key(consumer, partition)},
                    doc! {
                        "$max": {"next_offset": offset},
                        "$setOnInsert": {"consumer": consumer, "partition": partition},
                    },
                )
                .upsert(true)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    async fn progress(&self, consumer: &str) -> Result<BTreeMap<i32, i64>> {
        let docs = self
            .find_all(&self.progress, doc! {"consumer": consumer}, None, None)
            .await?;
        let mut out = BTreeMap::new();
        for d in &docs {
            let r = R(d);
            let partition = i32::try_from(r.i64("partition")?).map_err(internal)?;
            out.insert(partition, r.i64("next_offset")?);
        }
        Ok(out)
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.audit
            .insert_one(audit_doc(entry)?)
            .await
            .map_err(insert_err)?;
        Ok(())
    }

    async fn list_audit(
        &self,
        tenant: Option<&TenantId>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = match tenant {
            Some(t) => doc! {"tenant_id": t.as_str()},
            None => doc! {},
        };
        if let Some(id) = before {
            let Some(cursor) = self
                .audit
                .find_one(doc! {"_id": id})
                .projection(doc! {"at": 1})
                .await
                .map_err(db_err)?
            else {
                // An unknown cursor: nothing is "before" it (never restart from the top).
                return Ok(Vec::new());
            };
            let at = R(&cursor).millis("at")?;
            filter.insert(
                "$or",
                vec![doc! {"at": {"$lt": at}}, doc! {"at": at, "id": {"$lt": id}}],
            );
        }
        self.find_all(
            &self.audit,
            filter,
            Some(doc! {"at": -1, "id": -1}),
            Some(limit_of(limit)),
        )
        .await?
        .iter()
        .map(audit_from)
        .collect()
    }
    async fn put_dead_letter(&self, dead_letter: &DeadLetter) -> Result<()> {
        let json = serde_json::to_string(dead_letter).map_err(internal)?;
        let tenant = match &dead_letter.tenant_id {
            Some(t) => Bson::String(t.to_string()),
            None => Bson::Null,
        };
        self.dead_letters()
            .update_one(
                doc! {"_id": dead_letter.id.as_str()},
                doc! {"$set": {
                    "id": dead_letter.id.as_str(),
                    "tenant_id": tenant,
                    "status": dead_letter.status.as_str(),
                    "created_ms": to_millis(dead_letter.created_at),
                    "doc": json,
                }},
            )
            .upsert(true)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>> {
        self.dead_letters()
            .find_one(doc! {"_id": id})
            .await
            .map_err(db_err)?
            .map(|d| serde_json::from_str(R(&d).str("doc")?).map_err(internal))
            .transpose()
    }

    async fn list_dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! {};
        if let Some(t) = &query.tenant {
            filter.insert("tenant_id", t.as_str());
        }
        if let Some(s) = query.status {
            filter.insert("status", s.as_str());
        }
        if let Some(id) = &query.after {
            let Some(cursor) = self
                .dead_letters()
                .find_one(doc! {"_id": id.as_str()})
                .projection(doc! {"created_ms": 1})
                .await
                .map_err(db_err)?
            else {
                // An unknown cursor: nothing is after it (never restart from the top).
                return Ok(Vec::new());
            };
            let ms = R(&cursor).i64("created_ms")?;
            filter.insert(
                "$or",
                vec![
                    doc! {"created_ms": {"$gt": ms}},
                    doc! {"created_ms": ms, "id": {"$gt": id.as_str()}},
                ],
            );
        }
        self.find_all(
            &self.dead_letters(),
            filter,
            Some(doc! {"created_ms": 1, "id": 1}),
            Some(limit_of(query.limit)),
        )
        .await?
        .iter()
        .map(|d| serde_json::from_str(R(d).str("doc")?).map_err(internal))
        .collect()
    }

    async fn put_webhook(&self, webhook: &TenantWebhook) -> Result<()> {
        let json = serde_json::to_string(webhook).map_err(internal)?;
        let t = webhook.tenant_id.as_str();
        self.webhooks()
            .update_one(
                doc! {"_id": t},
                doc! {"$set": {"tenant_id": t, "doc": json}},
            )
            .upsert(true)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_webhook(&self, tenant: &TenantId) -> Result<Option<TenantWebhook>> {
        self.webhooks()
            .find_one(doc! {"_id": tenant.as_str()})
            .await
            .map_err(db_err)?
            .map(|d| serde_json::from_str(R(&d).str("doc")?).map_err(internal))
            .transpose()
    }

    async fn delete_webhook(&self, tenant: &TenantId) -> Result<()> {
        let r = self
            .webhooks()
            .delete_one(doc! {"_id": tenant.as_str()})
            .await
            .map_err(db_err)?;
        if r.deleted_count == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }
}
