//! The one behavioural test suite of the [`Store`] port. Every adapter's integration test calls
//! [`run_all`] on a fresh or shared database: the suite is the contract, the adapters are its
//! implementations. It lives in the library (not under `tests/`) so that any crate's tests can
//! run it on an adapter of their own.
//!
//! Every scenario works in tenants with ids unique to the run (a UUID in each), so reruns against
//! the same database, and records left by earlier runs, never collide. Timestamps have millisecond
//! precision, the precision adapters store.
//!
//! This is test code: a failed expectation panics with a message that says what broke.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::{
    ApplyReport, ConversationPage, ConversationPatch, LogEvent, MessagePage, Store, StoreError,
    Thread, from_millis, to_millis,
};
use caas_domain::event::{
    ConversationEvent, MemberChanged, MessageCreated, MessageDeleted, MessageUpdated,
    ReactionChanged, ReadUpdated,
};
use caas_domain::model::{
    AppCredential, Attachment, AuditEntry, Conversation, ConversationKind, ForwardedFrom, Member,
    Message, Position, Quotas, Role, Tenant, TenantStatus, User,
};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// Runs every scenario of the suite, in order. Panics on the first broken expectation.
pub async fn run_all(store: &dyn Store) {
    ping(store).await;
    tenants(store).await;
    credentials(store).await;
    users(store).await;
    conversations_and_members(store).await;
    tenant_isolation(store).await;
    message_paging(store).await;
    threads(store).await;
    apply_idempotency(store).await;
    edits_deletes_reactions(store).await;
    unknown_targets_are_skipped(store).await;
    unread_counts(store).await;
    mark_read_ahead_of_persistence(store).await;
    mark_read_racing_apply(store).await;
    conversation_list(store).await;
    search_scans(store).await;
    progress(store).await;
    audit(store).await;
    dead_letters(store).await;
    webhooks(store).await;
    delete_tenant(store).await;
}

// ---------------------------------------------------------------------------------------------
// Fixtures. Names differ from product names so that swapped labels show.

/// A string unique to this call: keeps runs against one database apart.
fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn tid(prefix: &str) -> TenantId {
    TenantId::parse(format!("{prefix}-{}", unique())).unwrap()
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn cid(s: &str) -> ConversationId {
    ConversationId::parse(s).unwrap()
}

fn consumer(name: &str) -> String {
    format!("suite-{name}-{}", unique())
}

/// A fixed instant plus `n` milliseconds (a fixed base keeps expected orders readable).
fn at(n: i64) -> OffsetDateTime {
    from_millis(1_767_225_600_000 + n)
}

fn now_ms() -> OffsetDateTime {
    from_millis(to_millis(OffsetDateTime::now_utc()))
}

fn a_tenant(id: &TenantId) -> Tenant {
    Tenant {
        id: id.clone(),
        name: format!("Tenant {id}"),
        status: TenantStatus::Active,
        quotas: Quotas::default(),
        features: vec!["reactions".into(), "threads".into()],
        created_at: at(0),
        updated_at: at(0),
    }
}

fn a_conversation(t: &TenantId, c: &str, created_by: &str, created_at: i64) -> Conversation {
    Conversation {
        tenant_id: t.clone(),
        id: cid(c),
        kind: ConversationKind::Group,
        name: Some(format!("room {c}")),
        topic: None,
        created_by: uid(created_by),
        created_at: at(created_at),
        updated_at: at(created_at),
        archived_at: None,
        last_message: None,
        member_count: 0,
    }
}

fn a_member(t: &TenantId, c: &str, u: &str, role: Role) -> Member {
    Member {
        tenant_id: t.clone(),
        conversation_id: cid(c),
        user_id: uid(u),
        role,
        joined_at: at(1),
        last_read_position: -1,
        unread_count: 0,
    }
}

/// Creates a tenant and a conversation `c` with `users` (the first is the owner).
async fn room(store: &dyn Store, t: &TenantId, c: &str, users: &[&str]) -> Conversation {
    if store.get_tenant(t).await.unwrap().is_none() {
        store.create_tenant(&a_tenant(t)).await.unwrap();
    }
    let conv = a_conversation(t, c, users[0], 10);
    let members: Vec<Member> = users
        .iter()
        .enumerate()
        .map(|(i, u)| a_member(t, c, u, if i == 0 { Role::Owner } else { Role::Member }))
        .collect();
    store.create_conversation(&conv, &members).await.unwrap();
    store.get_conversation(t, &conv.id).await.unwrap().unwrap()
}

fn log(t: &TenantId, c: &str, offset: i64, event: ConversationEvent) -> LogEvent {
    LogEvent {
        partition: 0,
        offset,
        tenant_id: t.clone(),
        conversation_id: cid(c),
        event,
    }
}

fn creation(id: MessageId, sender: &str, text: &str, offset: i64) -> MessageCreated {
    MessageCreated {
        message_id: id,
        sender_id: uid(sender),
        text: text.to_string(),
        html: format!("<p>{text}</p>"),
        mentions: Vec::new(),
        links: Vec::new(),
        hashtags: Vec::new(),
        parent_id: None,
        client_msg_id: None,
        forwarded_from: None,
        // Every other message carries a file, so both adapters round-trip attachments.
        attachments: if offset % 2 == 0 {
            vec![Attachment {
                id: format!("m{offset:06}"),
                name: "photo.png".into(),
                content_type: "image/png".into(),
                size: 5_000_000_000 + offset as u64,
                width: Some(640),
                height: Some(480),
                has_thumbnail: true,
            }]
        } else {
            Vec::new()
        },
        created_at: at(1_000 + offset),
    }
}

/// A top-level message `text` from `sender` at `offset`.
fn post(t: &TenantId, c: &str, offset: i64, id: MessageId, sender: &str, text: &str) -> LogEvent {
    log(
        t,
        c,
        offset,
        ConversationEvent::MessageCreated(creation(id, sender, text, offset)),
    )
}

/// A thread reply to `parent`.
fn reply(
    t: &TenantId,
    c: &str,
    offset: i64,
    id: MessageId,
    parent: MessageId,
    sender: &str,
) -> LogEvent {
    let mut m = creation(id, sender, &format!("reply {offset}"), offset);
    m.parent_id = Some(parent);
    log(t, c, offset, ConversationEvent::MessageCreated(m))
}

fn edit(t: &TenantId, c: &str, offset: i64, id: MessageId, editor: &str, text: &str) -> LogEvent {
    log(
        t,
        c,
        offset,
        ConversationEvent::MessageUpdated(MessageUpdated {
            message_id: id,
            editor_id: uid(editor),
            text: text.to_string(),
            html: format!("<p>{text}</p>"),
            mentions: vec![uid("mentioned")],
            links: vec![format!("https://example.test/{offset}")],
            hashtags: vec![format!("tag{offset}")],
            edited_at: at(50_000 + offset),
        }),
    )
}

fn delete(t: &TenantId, c: &str, offset: i64, id: MessageId, by: &str) -> LogEvent {
    log(
        t,
        c,
        offset,
        ConversationEvent::MessageDeleted(MessageDeleted {
            message_id: id,
            deleted_by: uid(by),
            deleted_at: at(90_000 + offset),
        }),
    )
}

fn react(
    t: &TenantId,
    c: &str,
    offset: i64,
    id: MessageId,
    user: &str,
    kind: &str,
    add: bool,
) -> LogEvent {
    let r = ReactionChanged {
        message_id: id,
        user_id: uid(user),
        kind: kind.to_string(),
        at: at(70_000 + offset),
    };
    let event = if add {
        ConversationEvent::ReactionAdded(r)
    } else {
        ConversationEvent::ReactionRemoved(r)
    };
    log(t, c, offset, event)
}

fn read_event(t: &TenantId, c: &str, offset: i64, user: &str, position: Position) -> LogEvent {
    log(
        t,
        c,
        offset,
        ConversationEvent::ReadUpdated(ReadUpdated {
            user_id: uid(user),
            position,
            at: at(offset),
        }),
    )
}

fn report(applied: usize, duplicates: usize, skipped: usize) -> ApplyReport {
    ApplyReport {
        applied,
        duplicates,
        skipped,
    }
}

async fn apply(store: &dyn Store, consumer: &str, events: &[LogEvent]) -> ApplyReport {
    store.apply(consumer, events).await.unwrap()
}

async fn member(store: &dyn Store, t: &TenantId, c: &str, u: &str) -> Member {
    store
        .get_member(t, &cid(c), &uid(u))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{u} is a member of {c}"))
}

async fn unread(store: &dyn Store, t: &TenantId, c: &str, u: &str) -> u32 {
    member(store, t, c, u).await.unread_count
}

async fn message(store: &dyn Store, t: &TenantId, c: &str, id: MessageId) -> Message {
    store
        .get_message(t, &cid(c), &id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("message {id} is stored in {c}"))
}

/// Every message of a conversation, top-level then each thread, in position order.
async fn all_messages(store: &dyn Store, t: &TenantId, c: &str) -> Vec<Message> {
    let latest = MessagePage::Latest { limit: 10_000 };
    let mut out = store
        .list_messages(t, &cid(c), Thread::TopLevel, latest)
        .await
        .unwrap();
    let parents: Vec<MessageId> = out.iter().map(|m| m.id).collect();
    for p in parents {
        out.extend(
            store
                .list_messages(t, &cid(c), Thread::Replies(p), latest)
                .await
                .unwrap(),
        );
    }
    out
}

/// What a conversation looks like from the outside: for "nothing changed" comparisons.
async fn snapshot(store: &dyn Store, t: &TenantId, c: &str) -> Snapshot {
    let conv = store.get_conversation(t, &cid(c)).await.unwrap().unwrap();
    let members = store.list_members(t, &cid(c), None, 1_000).await.unwrap();
    (conv, members, all_messages(store, t, c).await)
}

/// The message a `message.created` event describes, as the store must return it.
fn expected_message(ev: &LogEvent) -> Message {
    let ConversationEvent::MessageCreated(m) = &ev.event else {
        panic!("not a message.created event");
    };
    m.to_message(&ev.tenant_id, &ev.conversation_id, ev.offset)
}

type Snapshot = (Conversation, Vec<Member>, Vec<Message>);

/// Compares two snapshots part by part, so that a failure names what differs.
fn assert_same(got: &Snapshot, want: &Snapshot, what: &str) {
    assert_eq!(got.0, want.0, "{what}: the conversation changed");
    assert_eq!(got.1, want.1, "{what}: the members changed");
    assert_eq!(
        got.2.len(),
        want.2.len(),
        "{what}: the number of messages changed"
    );
    for (g, w) in got.2.iter().zip(&want.2) {
        assert_eq!(g, w, "{what}: message {} changed", w.id);
    }
}

fn positions(msgs: &[Message]) -> Vec<Position> {
    msgs.iter().map(|m| m.position).collect()
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::NotFound)),
        "{what}: expected NotFound, got {r:?}"
    );
}

fn assert_already_exists<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::AlreadyExists)),
        "{what}: expected AlreadyExists, got {r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// The readiness round trip works.
pub async fn ping(store: &dyn Store) {
    store.ping().await.unwrap();
}

/// Tenant records: create, AlreadyExists, replace, NotFound, listing by id with a cursor.
pub async fn tenants(store: &dyn Store) {
    let id = tid("tn");
    assert_eq!(store.get_tenant(&id).await.unwrap(), None);
    let mut tenant = a_tenant(&id);
    tenant.quotas = Quotas {
        max_connections: 7,
        messages_per_minute: 8,
        searches_per_minute: 9,
        max_upload_bytes: 5_000_000_000,
        storage_bytes: 123_456_789_012,
    };
    store.create_tenant(&tenant).await.unwrap();
    assert_eq!(store.get_tenant(&id).await.unwrap(), Some(tenant.clone()));
    assert_already_exists(store.create_tenant(&tenant).await, "second create_tenant");

    let mut changed = tenant.clone();
    changed.name = "Renamed".into();
    changed.status = TenantStatus::Suspended;
    changed.features = vec!["search".into()];
    changed.updated_at = at(5);
    store.put_tenant(&changed).await.unwrap();
    assert_eq!(store.get_tenant(&id).await.unwrap(), Some(changed));
    assert_not_found(
        store.put_tenant(&a_tenant(&tid("tn-missing"))).await,
        "put_tenant of an unknown tenant",
    );

    // Listing: ids sharing a unique prefix sort together, whatever else the database holds.
    let prefix = format!("tl-{}", unique());
    let ids: Vec<TenantId> = ["a", "b", "c"]
        .iter()
        .map(|s| TenantId::parse(format!("{prefix}-{s}")).unwrap())
        .collect();
    for id in ids.iter().rev() {
        store.create_tenant(&a_tenant(id)).await.unwrap();
    }
    let start = TenantId::parse(format!("{prefix}-")).unwrap();
    let page1 = store.list_tenants(Some(&start), 2).await.unwrap();
    assert_eq!(
        page1.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        ids[..2].to_vec()
    );
    let page2 = store.list_tenants(Some(&ids[1]), 2).await.unwrap();
    assert_eq!(page2.first().map(|t| t.id.clone()), Some(ids[2].clone()));
    assert!(page2.len() <= 2);
    let first = store.list_tenants(None, 3).await.unwrap();
    assert!(!first.is_empty() && first.len() <= 3);
    assert!(
        first.windows(2).all(|w| w[0].id < w[1].id),
        "tenants listed by id"
    );
}

/// App credentials: upsert by app id, listing per tenant, never across tenants.
pub async fn credentials(store: &dyn Store) {
    let (ta, tb) = (tid("cra"), tid("crb"));
    store.create_tenant(&a_tenant(&ta)).await.unwrap();
    store.create_tenant(&a_tenant(&tb)).await.unwrap();
    let app = |n: &str| format!("app-{n}-{}", unique());
    let cred = |app_id: &str, t: &TenantId, hash: &str| AppCredential {
        app_id: app_id.to_string(),
        tenant_id: t.clone(),
        secret_hash: hash.to_string(),
        created_at: at(100),
        expires_at: None,
    };
    let (a1, a2, b1) = (app("1"), app("2"), app("3"));
    let c1 = cred(&a1, &ta, "h1");
    store.put_credential(&c1).await.unwrap();
    store.put_credential(&cred(&a2, &ta, "h2")).await.unwrap();
    store.put_credential(&cred(&b1, &tb, "h3")).await.unwrap();
    assert_eq!(store.get_credential(&a1).await.unwrap(), Some(c1.clone()));
    assert_eq!(
        store.get_credential(&format!("{a1}-x")).await.unwrap(),
        None
    );

    // Rotation replaces by app id.
    let rotated = AppCredential {
        expires_at: Some(at(200)),
        ..c1.clone()
    };
    store.put_credential(&rotated).await.unwrap();
    assert_eq!(
        store.get_credential(&a1).await.unwrap(),
        Some(rotated.clone())
    );

    let mut listed: Vec<String> = store
        .list_credentials(&ta)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.app_id)
        .collect();
    listed.sort();
    let mut want = vec![a1.clone(), a2.clone()];
    want.sort();
    assert_eq!(listed, want);
    let b_list = store.list_credentials(&tb).await.unwrap();
    assert_eq!(b_list.len(), 1);
    assert_eq!(b_list[0].tenant_id, tb);

    // Another tenant can never take over an app id.
    assert_already_exists(
        store.put_credential(&cred(&a1, &tb, "stolen")).await,
        "put_credential of another tenant's app id",
    );
    assert_eq!(store.get_credential(&a1).await.unwrap(), Some(rotated));
    assert_eq!(store.list_credentials(&tb).await.unwrap().len(), 1);
}

/// Users: upsert keeps `created_at` and `tokens_valid_after`; revocation; NotFound.
pub async fn users(store: &dyn Store) {
    let t = tid("us");
    store.create_tenant(&a_tenant(&t)).await.unwrap();
    let first = User {
        tenant_id: t.clone(),
        id: uid("ulla"),
        name: "Ulla".into(),
        image_url: None,
        // Keys MongoDB would not take as field names must survive too.
        data: serde_json::json!({"$weird": 1, "a.b": [true, null, 2.5], "n": {"deep": "x"}}),
        created_at: at(10),
        updated_at: at(10),
        tokens_valid_after: None,
    };
    assert_eq!(store.upsert_user(&first).await.unwrap(), first);
    assert_eq!(
        store.get_user(&t, &first.id).await.unwrap(),
        Some(first.clone())
    );

    let second = User {
        name: "Ulla B.".into(),
        image_url: Some("https://img.test/u.png".into()),
        data: serde_json::json!({"k": "v"}),
        created_at: at(99),
        updated_at: at(20),
        ..first.clone()
    };
    let stored = store.upsert_user(&second).await.unwrap();
    assert_eq!(stored.created_at, at(10), "upsert keeps created_at");
    assert_eq!(stored.name, "Ulla B.");
    assert_eq!(stored.image_url.as_deref(), Some("https://img.test/u.png"));
    assert_eq!(stored.data, serde_json::json!({"k": "v"}));
    assert_eq!(stored.updated_at, at(20));
    assert_eq!(store.get_user(&t, &first.id).await.unwrap(), Some(stored));

    store
        .revoke_user_tokens(&t, &first.id, at(30))
        .await
        .unwrap();
    let got = store.get_user(&t, &first.id).await.unwrap().unwrap();
    assert_eq!(got.tokens_valid_after, Some(at(30)));
    let again = store
        .upsert_user(&User {
            tokens_valid_after: None,
            updated_at: at(40),
            ..second.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        again.tokens_valid_after,
        Some(at(30)),
        "upsert keeps revocation"
    );
    assert_eq!(again.created_at, at(10));

    assert_eq!(store.get_user(&t, &uid("nobody")).await.unwrap(), None);
    assert_not_found(
        store.revoke_user_tokens(&t, &uid("nobody"), at(1)).await,
        "revoke of an unknown user",
    );
}

/// Conversations and members: AlreadyExists/NotFound, member counts, roles, patches.
pub async fn conversations_and_members(store: &dyn Store) {
    let t = tid("cm");
    store.create_tenant(&a_tenant(&t)).await.unwrap();
    let conv = a_conversation(&t, "hall", "olga", 10);
    let members = vec![
        a_member(&t, "hall", "olga", Role::Owner),
        a_member(&t, "hall", "mia", Role::Member),
        a_member(&t, "hall", "ben", Role::Moderator),
    ];
    store.create_conversation(&conv, &members).await.unwrap();
    let got = store.get_conversation(&t, &conv.id).await.unwrap().unwrap();
    assert_eq!(
        got,
        Conversation {
            member_count: 3,
            ..conv.clone()
        }
    );
    assert_already_exists(
        store.create_conversation(&conv, &members).await,
        "second create_conversation",
    );
    assert_eq!(
        store.get_conversation(&t, &cid("nope")).await.unwrap(),
        None
    );

    assert_eq!(member(store, &t, "hall", "mia").await, members[1]);
    assert_eq!(
        store.get_member(&t, &conv.id, &uid("zed")).await.unwrap(),
        None
    );
    let listed = store.list_members(&t, &conv.id, None, 10).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(names, ["ben", "mia", "olga"], "members ordered by user id");
    let page = store
        .list_members(&t, &conv.id, Some(&uid("ben")), 1)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].user_id, uid("mia"));

    // Adding and removing keeps member_count right.
    let zed = a_member(&t, "hall", "zed", Role::Member);
    store.add_member(&zed).await.unwrap();
    assert_eq!(member(store, &t, "hall", "zed").await, zed);
    assert_already_exists(store.add_member(&zed).await, "add of an existing member");
    let count = |c: Option<Conversation>| c.unwrap().member_count;
    assert_eq!(
        count(store.get_conversation(&t, &conv.id).await.unwrap()),
        4
    );
    assert_not_found(
        store
            .add_member(&a_member(&t, "no-such-room", "zed", Role::Member))
            .await,
        "add to an unknown conversation",
    );
    store
        .remove_member(&t, &conv.id, &uid("mia"))
        .await
        .unwrap();
    assert_eq!(
        count(store.get_conversation(&t, &conv.id).await.unwrap()),
        3
    );
    assert_not_found(
        store.remove_member(&t, &conv.id, &uid("mia")).await,
        "second remove",
    );
    assert_eq!(
        store.get_member(&t, &conv.id, &uid("mia")).await.unwrap(),
        None
    );

    store
        .set_member_role(&t, &conv.id, &uid("zed"), Role::Admin)
        .await
        .unwrap();
    assert_eq!(member(store, &t, "hall", "zed").await.role, Role::Admin);
    assert_not_found(
        store
            .set_member_role(&t, &conv.id, &uid("mia"), Role::Admin)
            .await,
        "set_member_role of a non-member",
    );
    assert_not_found(
        store.mark_read(&t, &conv.id, &uid("mia"), 5).await,
        "mark_read of a non-member",
    );

    // Patches.
    let patched = store
        .update_conversation(
            &t,
            &conv.id,
            &ConversationPatch {
                name: Some("Great hall".into()),
                topic: Some("news".into()),
                archived_at: Some(Some(at(500))),
                updated_at: Some(at(500)),
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.name.as_deref(), Some("Great hall"));
    assert_eq!(patched.topic.as_deref(), Some("news"));
    assert_eq!(patched.archived_at, Some(at(500)));
    assert_eq!(patched.updated_at, at(500));
    assert_eq!(patched.created_at, conv.created_at);
    assert_eq!(patched.member_count, 3);
    assert_eq!(
        store.get_conversation(&t, &conv.id).await.unwrap(),
        Some(patched.clone())
    );
    let unarchived = store
        .update_conversation(
            &t,
            &conv.id,
            &ConversationPatch {
                archived_at: Some(None),
                ..ConversationPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(unarchived.archived_at, None);
    assert_eq!(unarchived.name.as_deref(), Some("Great hall"), "untouched");
    let same = store
        .update_conversation(&t, &conv.id, &ConversationPatch::default())
        .await
        .unwrap();
    assert_eq!(same, unarchived, "an empty patch changes nothing");
    assert_not_found(
        store
            .update_conversation(&t, &cid("nope"), &ConversationPatch::default())
            .await,
        "update of an unknown conversation",
    );
}

/// The same ids in two tenants never mix: users, conversations, members, messages (even the same
/// message id), reads, edits, deletes.
pub async fn tenant_isolation(store: &dyn Store) {
    let (ta, tb) = (tid("isa"), tid("isb"));
    room(store, &ta, "lobby", &["ann", "bob"]).await;
    room(store, &tb, "lobby", &["ann", "bob"]).await;
    for (t, name) in [(&ta, "Ann of A"), (&tb, "Ann of B")] {
        store
            .upsert_user(&User {
                tenant_id: t.clone(),
                id: uid("ann"),
                name: name.into(),
                image_url: None,
                data: serde_json::Value::Null,
                created_at: at(1),
                updated_at: at(1),
                tokens_valid_after: None,
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .get_user(&tb, &uid("ann"))
            .await
            .unwrap()
            .unwrap()
            .name,
        "Ann of B"
    );
    store
        .revoke_user_tokens(&ta, &uid("ann"), at(9))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_user(&tb, &uid("ann"))
            .await
            .unwrap()
            .unwrap()
            .tokens_valid_after,
        None,
        "revocation stays in its tenant"
    );

    let shared = MessageId::generate();
    let only_a = MessageId::generate();
    let c = consumer("isolation");
    let r = apply(
        store,
        &c,
        &[
            post(&ta, "lobby", 1, shared, "ann", "in A"),
            post(&tb, "lobby", 2, shared, "ann", "in B"),
            post(&ta, "lobby", 3, only_a, "ann", "only A"),
        ],
    )
    .await;
    assert_eq!(
        r,
        report(3, 0, 0),
        "the same message id in two tenants is two messages"
    );
    assert_eq!(message(store, &ta, "lobby", shared).await.text, "in A");
    assert_eq!(message(store, &tb, "lobby", shared).await.text, "in B");
    assert_eq!(
        store
            .get_message(&tb, &cid("lobby"), &only_a)
            .await
            .unwrap(),
        None
    );
    assert_eq!(unread(store, &ta, "lobby", "bob").await, 2);
    assert_eq!(unread(store, &tb, "lobby", "bob").await, 1);
    let latest = MessagePage::Latest { limit: 10 };
    let in_b = store
        .list_messages(&tb, &cid("lobby"), Thread::TopLevel, latest)
        .await
        .unwrap();
    assert_eq!(positions(&in_b), [2]);
    assert!(in_b.iter().all(|m| m.tenant_id == tb));

    // Events of tenant A never touch tenant B's records of the same ids.
    apply(
        store,
        &c,
        &[
            edit(&ta, "lobby", 4, shared, "ann", "edited in A"),
            react(&ta, "lobby", 5, shared, "bob", "wave", true),
            delete(&ta, "lobby", 6, shared, "ann"),
        ],
    )
    .await;
    let b_msg = message(store, &tb, "lobby", shared).await;
    assert_eq!(b_msg.text, "in B");
    assert!(b_msg.reactions.is_empty() && b_msg.deleted_at.is_none() && b_msg.edited_at.is_none());
    assert_eq!(unread(store, &tb, "lobby", "bob").await, 1);
    assert_eq!(unread(store, &ta, "lobby", "bob").await, 1);
    store
        .mark_read(&ta, &cid("lobby"), &uid("bob"), 10)
        .await
        .unwrap();
    assert_eq!(
        member(store, &tb, "lobby", "bob").await.last_read_position,
        -1
    );
    assert_eq!(unread(store, &tb, "lobby", "bob").await, 1);
    let b_conv = store
        .get_conversation(&tb, &cid("lobby"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_conv.last_message.unwrap().text, "in B");

    // A message is only found in its own conversation.
    room(store, &ta, "side", &["ann"]).await;
    assert_eq!(
        store.get_message(&ta, &cid("side"), &only_a).await.unwrap(),
        None
    );
    store
        .set_member_role(&ta, &cid("lobby"), &uid("bob"), Role::Admin)
        .await
        .unwrap();
    assert_eq!(member(store, &tb, "lobby", "bob").await.role, Role::Member);
    store
        .remove_member(&ta, &cid("lobby"), &uid("bob"))
        .await
        .unwrap();
    assert_eq!(member(store, &tb, "lobby", "bob").await.user_id, uid("bob"));
}

/// ~300 messages paged Latest/Before/After: no gaps, no duplicates, ascending pages.
pub async fn message_paging(store: &dyn Store) {
    let t = tid("pg");
    room(store, &t, "feed", &["pia", "rob"]).await;
    let c = consumer("paging");
    // Positions with gaps, as when several conversations share a partition.
    let events: Vec<LogEvent> = (0..300)
        .map(|i| {
            let sender = if i % 3 == 0 { "rob" } else { "pia" };
            post(
                &t,
                "feed",
                1_000 + 3 * i,
                MessageId::generate(),
                sender,
                &format!("m{i}"),
            )
        })
        .collect();
    for chunk in events.chunks(64) {
        let r = apply(store, &c, chunk).await;
        assert_eq!(r, report(chunk.len(), 0, 0));
    }
    let all: Vec<Position> = events.iter().map(|e| e.offset).collect();
    let conv = cid("feed");

    let latest = store
        .list_messages(
            &t,
            &conv,
            Thread::TopLevel,
            MessagePage::Latest { limit: 50 },
        )
        .await
        .unwrap();
    assert_eq!(positions(&latest), all[250..].to_vec());
    assert_eq!(latest[0], expected_message(&events[250]));

    // Backwards from the newest page.
    let mut seen: Vec<Position> = positions(&latest);
    let mut oldest = latest[0].position;
    loop {
        let page = store
            .list_messages(
                &t,
                &conv,
                Thread::TopLevel,
                MessagePage::Before {
                    position: oldest,
                    limit: 37,
                },
            )
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 37);
        assert!(page.windows(2).all(|w| w[0].position < w[1].position));
        assert!(page.last().unwrap().position < oldest);
        oldest = page[0].position;
        let mut p = positions(&page);
        p.extend(seen);
        seen = p;
    }
    assert_eq!(seen, all, "Before pages cover everything once");

    // Forwards from before the first.
    let mut seen = Vec::new();
    let mut newest: Position = -1;
    loop {
        let page = store
            .list_messages(
                &t,
                &conv,
                Thread::TopLevel,
                MessagePage::After {
                    position: newest,
                    limit: 41,
                },
            )
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 41);
        assert!(page[0].position > newest);
        newest = page.last().unwrap().position;
        seen.extend(positions(&page));
    }
    assert_eq!(seen, all, "After pages cover everything once");

    // Cursors between stored positions, at the ends, and the nearest ones.
    let before = store
        .list_messages(
            &t,
            &conv,
            Thread::TopLevel,
            MessagePage::Before {
                position: 1_010,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(positions(&before), [1_000, 1_003, 1_006, 1_009]);
    let after = store
        .list_messages(
            &t,
            &conv,
            Thread::TopLevel,
            MessagePage::After {
                position: 1_890,
                limit: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(positions(&after), [1_891, 1_894, 1_897]);
    let near = store
        .list_messages(
            &t,
            &conv,
            Thread::TopLevel,
            MessagePage::Before {
                position: 1_500,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        positions(&near),
        [1_495, 1_498],
        "Before returns the nearest ones"
    );
    let none = store
        .list_messages(
            &t,
            &conv,
            Thread::TopLevel,
            MessagePage::After {
                position: 1_897,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(unread(store, &t, "feed", "rob").await, 200);
    assert_eq!(unread(store, &t, "feed", "pia").await, 100);
    let last = store.get_conversation(&t, &conv).await.unwrap().unwrap();
    assert_eq!(last.last_message.unwrap().position, 1_897);
}

/// Threads: replies are listed per parent, counted on the parent, and neither become the last
/// message nor count as unread.
pub async fn threads(store: &dyn Store) {
    let t = tid("th");
    room(store, &t, "forum", &["quinn", "rita"]).await;
    let c = consumer("threads");
    let parent = MessageId::generate();
    let other = MessageId::generate();
    let replies: Vec<MessageId> = (0..5).map(|_| MessageId::generate()).collect();
    let mut events = vec![
        post(&t, "forum", 10, parent, "quinn", "question"),
        post(&t, "forum", 11, other, "quinn", "another"),
    ];
    for (i, r) in replies.iter().enumerate() {
        let sender = if i % 2 == 0 { "rita" } else { "quinn" };
        events.push(reply(&t, "forum", 20 + i as i64, *r, parent, sender));
    }
    assert_eq!(apply(store, &c, &events).await, report(7, 0, 0));

    let p = message(store, &t, "forum", parent).await;
    assert_eq!(p.reply_count, 5);
    assert_eq!(message(store, &t, "forum", other).await.reply_count, 0);
    let first_reply = message(store, &t, "forum", replies[0]).await;
    assert_eq!(first_reply, expected_message(&events[2]));
    assert_eq!(first_reply.parent_id, Some(parent));

    let conv = cid("forum");
    let top = store
        .list_messages(
            &t,
            &conv,
            Thread::TopLevel,
            MessagePage::Latest { limit: 50 },
        )
        .await
        .unwrap();
    assert_eq!(positions(&top), [10, 11], "replies are not top-level");
    let thread = store
        .list_messages(
            &t,
            &conv,
            Thread::Replies(parent),
            MessagePage::Latest { limit: 50 },
        )
        .await
        .unwrap();
    assert_eq!(positions(&thread), [20, 21, 22, 23, 24]);
    let page = store
        .list_messages(
            &t,
            &conv,
            Thread::Replies(parent),
            MessagePage::After {
                position: 21,
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(positions(&page), [22, 23]);
    let page = store
        .list_messages(
            &t,
            &conv,
            Thread::Replies(parent),
            MessagePage::Before {
                position: 22,
                limit: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(positions(&page), [20, 21]);
    assert!(
        store
            .list_messages(
                &t,
                &conv,
                Thread::Replies(other),
                MessagePage::Latest { limit: 5 }
            )
            .await
            .unwrap()
            .is_empty()
    );

    let got = store.get_conversation(&t, &conv).await.unwrap().unwrap();
    assert_eq!(
        got.last_message.unwrap().id,
        other,
        "replies are not the last message"
    );
    assert_eq!(
        unread(store, &t, "forum", "rita").await,
        2,
        "replies are not unread"
    );
    let marked = store.mark_read(&t, &conv, &uid("rita"), 10).await.unwrap();
    assert_eq!(marked.unread_count, 1);

    // Replayed replies are counted once.
    let again = apply(store, &consumer("threads-replay"), &events).await;
    assert_eq!(
        again.applied + again.duplicates + again.skipped,
        events.len()
    );
    assert_eq!(message(store, &t, "forum", parent).await.reply_count, 5);
    assert_eq!(apply(store, &c, &events).await, report(0, 7, 0));
    assert_eq!(message(store, &t, "forum", parent).await.reply_count, 5);
}

/// The same batch twice, an overlapping batch, a replay without recorded progress (a crash
/// between effects and progress) and a retried send: nothing doubles.
pub async fn apply_idempotency(store: &dyn Store) {
    let t = tid("id");
    room(store, &t, "desk", &["sam", "tia", "uwe"]).await;
    let c = consumer("idem");
    let m: Vec<MessageId> = (0..8).map(|_| MessageId::generate()).collect();
    let batch1 = vec![
        post(&t, "desk", 100, m[0], "sam", "one"),
        post(&t, "desk", 101, m[1], "tia", "two"),
        post(&t, "desk", 102, m[2], "sam", "three"),
        reply(&t, "desk", 103, m[3], m[0], "uwe"),
        edit(&t, "desk", 104, m[1], "tia", "two, edited"),
        react(&t, "desk", 105, m[0], "tia", "up", true),
        react(&t, "desk", 106, m[0], "uwe", "up", true),
        delete(&t, "desk", 107, m[2], "sam"),
    ];
    assert_eq!(apply(store, &c, &batch1).await, report(8, 0, 0));
    let after1 = snapshot(store, &t, "desk").await;
    let unread_of = |s: &Snapshot, u: &str| {
        s.1.iter()
            .find(|m| m.user_id.as_str() == u)
            .unwrap()
            .unread_count
    };
    assert_eq!(unread_of(&after1, "sam"), 1, "m1 from tia; m2 deleted");
    assert_eq!(unread_of(&after1, "tia"), 1, "m0 (m2 deleted)");
    assert_eq!(unread_of(&after1, "uwe"), 2);

    // The same batch again.
    assert_eq!(apply(store, &c, &batch1).await, report(0, 8, 0));
    assert_same(
        &snapshot(store, &t, "desk").await,
        &after1,
        "same batch again",
    );

    // An overlapping batch: the last four again plus four new events.
    let mut batch2 = batch1[4..].to_vec();
    batch2.extend([
        post(&t, "desk", 108, m[4], "uwe", "four"),
        react(&t, "desk", 109, m[0], "tia", "up", false),
        reply(&t, "desk", 110, m[5], m[0], "sam"),
        edit(&t, "desk", 111, m[4], "uwe", "four, edited"),
    ]);
    assert_eq!(apply(store, &c, &batch2).await, report(4, 4, 0));
    let after2 = snapshot(store, &t, "desk").await;
    assert_eq!(unread_of(&after2, "sam"), 2);
    assert_eq!(unread_of(&after2, "tia"), 2);
    assert_eq!(unread_of(&after2, "uwe"), 2);
    let m0 = message(store, &t, "desk", m[0]).await;
    assert_eq!(m0.reply_count, 2);
    assert_eq!(
        m0.reactions,
        BTreeMap::from([("up".to_string(), vec![uid("uwe")])])
    );
    assert_eq!(message(store, &t, "desk", m[4]).await.text, "four, edited");
    let conv = store
        .get_conversation(&t, &cid("desk"))
        .await
        .unwrap()
        .unwrap();
    let last = conv.last_message.unwrap();
    assert_eq!((last.id, last.text.as_str()), (m[4], "four, edited"));

    // A crash after the effects but before the progress: replay the whole history under a
    // consumer with no progress, in other chunk sizes. The state must not change.
    let history: Vec<LogEvent> = batch1.iter().chain(&batch2[4..]).cloned().collect();
    let replay = consumer("idem-replay");
    for chunk in history.chunks(3) {
        let r = apply(store, &replay, chunk).await;
        assert_eq!(r.applied + r.duplicates + r.skipped, chunk.len());
    }
    assert_same(&snapshot(store, &t, "desk").await, &after2, "replay");

    // A retried send: the same message id at a later offset is one message.
    let retried = post(&t, "desk", 112, m[4], "uwe", "four");
    assert_eq!(apply(store, &c, &[retried]).await, report(0, 1, 0));
    assert_same(&snapshot(store, &t, "desk").await, &after2, "retried send");
    assert_eq!(message(store, &t, "desk", m[4]).await.position, 108);
    assert_eq!(store.progress(&c).await.unwrap().get(&0), Some(&113));
}

/// Edits, deletes and reactions apply in log order with the documented outcomes.
pub async fn edits_deletes_reactions(store: &dyn Store) {
    let t = tid("ed");
    room(store, &t, "den", &["vic", "wes", "xia"]).await;
    let c = consumer("edits");
    let (a, b) = (MessageId::generate(), MessageId::generate());
    let mut rich = creation(a, "vic", "hello @wes see https://x.test #news", 1);
    rich.mentions = vec![uid("wes")];
    rich.links = vec!["https://x.test".into()];
    rich.hashtags = vec!["news".into()];
    rich.client_msg_id = Some("client-1".into());
    rich.forwarded_from = Some(ForwardedFrom {
        conversation_id: cid("elsewhere"),
        message_id: MessageId::generate(),
        sender_id: uid("yan"),
    });
    let created = log(&t, "den", 1, ConversationEvent::MessageCreated(rich));
    assert_eq!(
        apply(
            store,
            &c,
            &[created.clone(), post(&t, "den", 2, b, "wes", "second")]
        )
        .await,
        report(2, 0, 0)
    );
    assert_eq!(
        message(store, &t, "den", a).await,
        expected_message(&created)
    );

    // Two edits in one batch: the later wins; the preview follows the last message only.
    let r = apply(
        store,
        &c,
        &[
            edit(&t, "den", 3, a, "vic", "first edit"),
            edit(&t, "den", 4, a, "vic", "second edit"),
            edit(&t, "den", 5, b, "wes", "second, edited"),
        ],
    )
    .await;
    assert_eq!(r, report(3, 0, 0));
    let got = message(store, &t, "den", a).await;
    assert_eq!(got.text, "second edit");
    assert_eq!(got.html, "<p>second edit</p>");
    assert_eq!(got.mentions, [uid("mentioned")]);
    assert_eq!(got.links, ["https://example.test/4"]);
    assert_eq!(got.hashtags, ["tag4"]);
    assert_eq!(got.edited_at, Some(at(50_004)));
    assert_eq!(got.position, 1);
    assert_eq!(got.client_msg_id.as_deref(), Some("client-1"));
    let conv = store
        .get_conversation(&t, &cid("den"))
        .await
        .unwrap()
        .unwrap();
    let preview = conv.last_message.unwrap();
    assert_eq!((preview.id, preview.text.as_str()), (b, "second, edited"));

    // Reactions keep the order users reacted in, never twice, and drop empty kinds.
    let r = apply(
        store,
        &c,
        &[
            react(&t, "den", 6, a, "xia", "👍", true),
            react(&t, "den", 7, a, "wes", "👍", true),
            react(&t, "den", 8, a, "xia", "👍", true),
            react(&t, "den", 9, a, "wes", "heart", true),
            react(&t, "den", 10, a, "vic", "👍", true),
            react(&t, "den", 11, a, "wes", "👍", false),
            react(&t, "den", 12, a, "wes", "ghost", false),
        ],
    )
    .await;
    assert_eq!(
        r,
        report(5, 2, 0),
        "re-adding and removing an absent reaction change nothing"
    );
    assert_eq!(
        message(store, &t, "den", a).await.reactions,
        BTreeMap::from([
            ("heart".to_string(), vec![uid("wes")]),
            ("👍".to_string(), vec![uid("xia"), uid("vic")]),
        ])
    );
    apply(store, &c, &[react(&t, "den", 13, a, "wes", "heart", false)]).await;
    assert_eq!(
        message(store, &t, "den", a).await.reactions,
        BTreeMap::from([("👍".to_string(), vec![uid("xia"), uid("vic")])]),
        "the empty kind is dropped"
    );

    // Delete: once; edits after it change nothing; the preview of a deleted last message is
    // blank.
    assert_eq!(
        apply(store, &c, &[delete(&t, "den", 14, b, "wes")]).await,
        report(1, 0, 0)
    );
    let r = apply(
        store,
        &c,
        &[
            delete(&t, "den", 15, b, "vic"),
            edit(&t, "den", 16, b, "wes", "zombie edit"),
        ],
    )
    .await;
    assert_eq!(r, report(0, 2, 0));
    let gone = message(store, &t, "den", b).await;
    assert_eq!(gone.deleted_at, Some(at(90_014)));
    assert_eq!(gone.deleted_by, Some(uid("wes")));
    assert_eq!(
        gone.text, "second, edited",
        "the store keeps the text; readers redact"
    );
    let listed = store
        .list_messages(
            &t,
            &cid("den"),
            Thread::TopLevel,
            MessagePage::Latest { limit: 10 },
        )
        .await
        .unwrap();
    assert_eq!(
        positions(&listed),
        [1, 2],
        "deleted messages stay in the history"
    );
    let conv = store
        .get_conversation(&t, &cid("den"))
        .await
        .unwrap()
        .unwrap();
    let preview = conv.last_message.unwrap();
    assert_eq!((preview.id, preview.text.as_str()), (b, ""));
}

/// Events for a conversation or message that does not exist are skipped, and nothing is stored.
pub async fn unknown_targets_are_skipped(store: &dyn Store) {
    let t = tid("sk");
    room(store, &t, "real", &["yan", "zoe"]).await;
    room(store, &t, "other", &["yan"]).await;
    let c = consumer("skip");
    let (ghost, real_msg, elsewhere) = (
        MessageId::generate(),
        MessageId::generate(),
        MessageId::generate(),
    );
    apply(
        store,
        &c,
        &[
            post(&t, "real", 1, real_msg, "yan", "hi"),
            post(&t, "other", 2, elsewhere, "yan", "elsewhere"),
        ],
    )
    .await;
    let r = apply(
        store,
        &c,
        &[
            post(&t, "nowhere", 3, ghost, "yan", "lost"),
            react(&t, "nowhere", 4, real_msg, "zoe", "up", true),
            read_event(&t, "nowhere", 5, "zoe", 1),
            edit(&t, "real", 6, ghost, "yan", "no such message"),
            delete(&t, "real", 7, ghost, "yan"),
            react(&t, "real", 8, ghost, "zoe", "up", true),
            edit(&t, "real", 9, elsewhere, "yan", "wrong conversation"),
            delete(&t, "real", 10, elsewhere, "yan"),
        ],
    )
    .await;
    assert_eq!(r, report(0, 0, 8));
    assert_eq!(
        store
            .get_message(&t, &cid("nowhere"), &ghost)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .get_conversation(&t, &cid("nowhere"))
            .await
            .unwrap()
            .is_none()
    );
    let other = message(store, &t, "other", elsewhere).await;
    assert!(other.edited_at.is_none() && other.deleted_at.is_none());
    assert!(
        message(store, &t, "real", real_msg)
            .await
            .reactions
            .is_empty()
    );

    // Events written to the store by the gateway are counted as applied.
    let member_event = log(
        &t,
        "real",
        11,
        ConversationEvent::MemberAdded(MemberChanged {
            user_id: uid("zoe"),
            role: Some(Role::Member),
            by: uid("yan"),
            at: at(11),
        }),
    );
    let r = apply(
        store,
        &c,
        &[member_event, read_event(&t, "real", 12, "zoe", 1)],
    )
    .await;
    assert_eq!(r, report(2, 0, 0));
    assert_eq!(
        member(store, &t, "real", "zoe").await.last_read_position,
        -1,
        "read.updated is not applied by apply()"
    );
    assert_eq!(store.progress(&c).await.unwrap().get(&0), Some(&13));
}

/// Unread counts: per member, others' top-level undeleted messages after the marker.
pub async fn unread_counts(store: &dyn Store) {
    let t = tid("un");
    room(store, &t, "club", &["amy", "bea", "cal"]).await;
    let c = consumer("unread");
    let conv = cid("club");
    let m: Vec<MessageId> = (0..8).map(|_| MessageId::generate()).collect();
    apply(
        store,
        &c,
        &[
            post(&t, "club", 0, m[0], "amy", "a0"),
            post(&t, "club", 1, m[1], "amy", "a1"),
            post(&t, "club", 2, m[2], "amy", "a2"),
            post(&t, "club", 3, m[3], "bea", "b3"),
            post(&t, "club", 4, m[4], "bea", "b4"),
        ],
    )
    .await;
    assert_eq!(unread(store, &t, "club", "amy").await, 2);
    assert_eq!(unread(store, &t, "club", "bea").await, 3);
    assert_eq!(unread(store, &t, "club", "cal").await, 5);

    let bea = store.mark_read(&t, &conv, &uid("bea"), 1).await.unwrap();
    assert_eq!((bea.last_read_position, bea.unread_count), (1, 1));
    assert_eq!(bea.role, Role::Member);
    assert_eq!(member(store, &t, "club", "bea").await, bea);
    // The marker never moves back.
    let bea = store.mark_read(&t, &conv, &uid("bea"), 0).await.unwrap();
    assert_eq!((bea.last_read_position, bea.unread_count), (1, 1));
    let cal = store.mark_read(&t, &conv, &uid("cal"), 3).await.unwrap();
    assert_eq!((cal.last_read_position, cal.unread_count), (3, 1));

    // Deleting an unread message lowers the count only of those who had not read it.
    apply(store, &c, &[delete(&t, "club", 5, m[2], "amy")]).await;
    assert_eq!(unread(store, &t, "club", "bea").await, 0);
    assert_eq!(
        unread(store, &t, "club", "cal").await,
        1,
        "cal had read past it"
    );
    assert_eq!(unread(store, &t, "club", "amy").await, 2, "own message");
    apply(store, &c, &[delete(&t, "club", 6, m[4], "bea")]).await;
    assert_eq!(unread(store, &t, "club", "cal").await, 0);
    assert_eq!(unread(store, &t, "club", "amy").await, 1);

    // A recount skips deleted, own and thread messages.
    apply(
        store,
        &c,
        &[
            reply(&t, "club", 7, m[5], m[0], "bea"),
            post(&t, "club", 8, m[6], "cal", "c8"),
        ],
    )
    .await;
    assert_eq!(unread(store, &t, "club", "amy").await, 2);
    let amy = store.mark_read(&t, &conv, &uid("amy"), -1).await.unwrap();
    assert_eq!(
        amy.unread_count, 2,
        "b3 and c8; b4 is deleted, the reply is in a thread"
    );
    let cal = store.mark_read(&t, &conv, &uid("cal"), -1).await.unwrap();
    assert_eq!((cal.last_read_position, cal.unread_count), (3, 0));

    // A member added later starts from the count they were given; deleting an older message
    // never takes a count below zero; a recount then counts the history.
    let dan = a_member(&t, "club", "dan", Role::Member);
    store.add_member(&dan).await.unwrap();
    apply(store, &c, &[delete(&t, "club", 9, m[3], "bea")]).await;
    assert_eq!(unread(store, &t, "club", "dan").await, 0, "floor at zero");
    let dan = store.mark_read(&t, &conv, &uid("dan"), -1).await.unwrap();
    assert_eq!(dan.unread_count, 3, "a0, a1, c8");
    apply(store, &c, &[post(&t, "club", 10, m[7], "amy", "a10")]).await;
    assert_eq!(unread(store, &t, "club", "dan").await, 4);
    assert_eq!(unread(store, &t, "club", "amy").await, 1);
    // A second delete of a deleted message changes no count.
    let before = store.list_members(&t, &conv, None, 10).await.unwrap();
    let again = delete(&t, "club", 11, m[3], "cal");
    assert_eq!(
        apply(store, &c, std::slice::from_ref(&again)).await,
        report(0, 1, 0)
    );
    assert_eq!(
        store.list_members(&t, &conv, None, 10).await.unwrap(),
        before
    );
    // A replay of the whole history (no progress recorded) changes no count.
    let history = vec![
        post(&t, "club", 0, m[0], "amy", "a0"),
        post(&t, "club", 1, m[1], "amy", "a1"),
        post(&t, "club", 2, m[2], "amy", "a2"),
        post(&t, "club", 3, m[3], "bea", "b3"),
        post(&t, "club", 4, m[4], "bea", "b4"),
        delete(&t, "club", 5, m[2], "amy"),
        delete(&t, "club", 6, m[4], "bea"),
        reply(&t, "club", 7, m[5], m[0], "bea"),
        post(&t, "club", 8, m[6], "cal", "c8"),
        delete(&t, "club", 9, m[3], "bea"),
        post(&t, "club", 10, m[7], "amy", "a10"),
        again,
    ];
    apply(store, &consumer("unread-replay"), &history).await;
    assert_eq!(
        store.list_members(&t, &conv, None, 10).await.unwrap(),
        before
    );
}

/// A reader's marker can run ahead of the pipeline (the client saw the message on the socket
/// before it was stored): later applies count only what is after the marker.
pub async fn mark_read_ahead_of_persistence(store: &dyn Store) {
    let t = tid("ah");
    room(store, &t, "fast", &["eve", "fay"]).await;
    let c = consumer("ahead");
    let conv = cid("fast");
    let ids: Vec<MessageId> = (0..20).map(|_| MessageId::generate()).collect();
    let events: Vec<LogEvent> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| post(&t, "fast", i as i64, *id, "eve", &format!("e{i}")))
        .collect();
    apply(store, &c, &events[..10]).await;
    assert_eq!(unread(store, &t, "fast", "fay").await, 10);
    let fay = store.mark_read(&t, &conv, &uid("fay"), 15).await.unwrap();
    assert_eq!((fay.last_read_position, fay.unread_count), (15, 0));
    apply(store, &c, &events[10..]).await;
    assert_eq!(unread(store, &t, "fast", "fay").await, 4, "16..19");
    // Replays, with and without recorded progress, change nothing.
    apply(store, &c, &events).await;
    apply(store, &consumer("ahead-replay"), &events).await;
    assert_eq!(unread(store, &t, "fast", "fay").await, 4);
    // Deleting a message the reader already passed changes nothing; one after the marker does.
    apply(
        store,
        &c,
        &[
            delete(&t, "fast", 20, ids[12], "eve"),
            delete(&t, "fast", 21, ids[17], "eve"),
        ],
    )
    .await;
    assert_eq!(unread(store, &t, "fast", "fay").await, 3);
    let fay = store.mark_read(&t, &conv, &uid("fay"), 18).await.unwrap();
    assert_eq!((fay.last_read_position, fay.unread_count), (18, 1));
    let fay = store.mark_read(&t, &conv, &uid("fay"), 40).await.unwrap();
    assert_eq!((fay.last_read_position, fay.unread_count), (40, 0));
    apply(
        store,
        &c,
        &[post(
            &t,
            "fast",
            22,
            MessageId::generate(),
            "eve",
            "before the marker",
        )],
    )
    .await;
    assert_eq!(unread(store, &t, "fast", "fay").await, 0);
}

/// `mark_read` while the pipeline applies in parallel (new messages and deletes): once both are
/// done the count is exact. The reader recounts until the writer has finished, so its last
/// recount overlaps the last batch.
pub async fn mark_read_racing_apply(store: &dyn Store) {
    let t = tid("rc");
    room(store, &t, "race", &["gus", "hal"]).await;
    let c = consumer("race");
    let conv = cid("race");
    let mut events = Vec::new();
    let mut posted: Vec<(MessageId, &str)> = Vec::new();
    let mut deleted = BTreeSet::new();
    for i in 0..160_i64 {
        if i % 10 == 9 {
            let (victim, _) = posted[posted.len() - 4];
            deleted.insert(victim);
            events.push(delete(&t, "race", i, victim, "gus"));
        } else {
            let sender = if i % 4 == 0 { "hal" } else { "gus" };
            let id = MessageId::generate();
            posted.push((id, sender));
            events.push(post(&t, "race", i, id, sender, &format!("r{i}")));
        }
    }
    let events_ref = &events;
    // The writer announces each finished batch but the last and goes straight on to the next;
    // the reader recounts once per announcement (a queue, not a watch: none is coalesced away
    // when the writer is faster), so recounts overlap the batches that follow, and the reader
    // stops once the writer is gone and every announcement is handled.
    let (batches, mut finished) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let writer = async move {
        let chunks: Vec<&[LogEvent]> = events_ref.chunks(9).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            apply(store, &c, chunk).await;
            if i + 1 < chunks.len() {
                let _ = batches.send(i + 1);
            }
        }
    };
    let reader = async {
        let mut marker = 0;
        while finished.recv().await.is_some() {
            store
                .mark_read(&t, &conv, &uid("hal"), marker)
                .await
                .unwrap();
            marker = (marker + 3).min(30);
        }
    };
    tokio::join!(writer, reader);
    let hal = member(store, &t, "race", "hal").await;
    assert_eq!(hal.last_read_position, 30);
    let expected = events
        .iter()
        .filter(|e| e.offset > hal.last_read_position)
        .filter(|e| match &e.event {
            ConversationEvent::MessageCreated(m) => {
                m.sender_id.as_str() != "hal" && !deleted.contains(&m.message_id)
            }
            _ => false,
        })
        .count() as u32;
    assert_eq!(
        hal.unread_count, expected,
        "count after racing mark_read at {}",
        hal.last_read_position
    );
    let recount = store
        .mark_read(&t, &conv, &uid("hal"), hal.last_read_position)
        .await
        .unwrap();
    assert_eq!(recount.unread_count, expected);
}

/// "My conversations": most recently active first (then id), archived on request, cursor pages
/// without gaps or repeats, only the user's own conversations of the tenant.
pub async fn conversation_list(store: &dyn Store) {
    let t = tid("cl");
    let other_tenant = tid("cl2");
    store.create_tenant(&a_tenant(&t)).await.unwrap();
    let mk = |c: &str, created: i64| a_conversation(&t, c, "kim", created);
    // (id, created_at offset): activity then comes from created_at or the last message.
    for (c, created) in [
        ("c-a", 100),
        ("c-b", 200),
        ("c-c", 300),
        ("c-d", 300),
        ("c-e", 50),
    ] {
        store
            .create_conversation(
                &mk(c, created),
                &[
                    a_member(&t, c, "kim", Role::Owner),
                    a_member(&t, c, "lee", Role::Member),
                ],
            )
            .await
            .unwrap();
    }
    store
        .create_conversation(&mk("c-x", 999), &[a_member(&t, "c-x", "lee", Role::Owner)])
        .await
        .unwrap();
    room(store, &other_tenant, "c-a", &["kim"]).await;
    let cons = consumer("list");
    // c-a gets a message at 1000+5 (newest); c-e one at 1000+1; c-b one older than its creation
    // (clock skew): its activity stays its created_at.
    let mut skewed = creation(MessageId::generate(), "lee", "skewed", 3);
    skewed.created_at = at(150);
    apply(
        store,
        &cons,
        &[
            post(&t, "c-e", 1, MessageId::generate(), "lee", "e"),
            log(&t, "c-b", 3, ConversationEvent::MessageCreated(skewed)),
            post(&t, "c-a", 5, MessageId::generate(), "lee", "a"),
        ],
    )
    .await;
    store
        .update_conversation(
            &t,
            &cid("c-c"),
            &ConversationPatch {
                archived_at: Some(Some(at(400))),
                ..ConversationPatch::default()
            },
        )
        .await
        .unwrap();

    let tenant = &t;
    let walk = |include_archived: bool, limit: u32| async move {
        let mut out: Vec<(String, Member)> = Vec::new();
        let mut cursor = None;
        for _ in 0..20 {
            let page = store
                .list_user_conversations(
                    tenant,
                    &uid("kim"),
                    &ConversationPage {
                        cursor: cursor.clone(),
                        limit,
                        include_archived,
                    },
                )
                .await
                .unwrap();
            assert!(page.items.len() <= limit as usize);
            out.extend(page.items.into_iter().map(|(c, m)| (c.id.to_string(), m)));
            match page.next {
                Some(n) => cursor = Some(n),
                None => return out,
            }
        }
        panic!("conversation pages never ended");
    };
    let ids = |v: &[(String, Member)]| v.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>();
    // Activity: c-a 1005, c-e 1001, c-c 300, c-d 300 (tie -> id), c-b 200 (skewed message).
    let all = walk(true, 2).await;
    assert_eq!(ids(&all), ["c-a", "c-e", "c-c", "c-d", "c-b"]);
    assert!(
        all.iter()
            .all(|(c, m)| m.user_id == uid("kim") && m.conversation_id.as_str() == c)
    );
    assert_eq!(all[0].1.role, Role::Owner);
    assert_eq!(ids(&walk(false, 2).await), ["c-a", "c-e", "c-d", "c-b"]);
    assert_eq!(ids(&walk(false, 1).await), ["c-a", "c-e", "c-d", "c-b"]);
    assert_eq!(
        ids(&walk(true, 10).await),
        ["c-a", "c-e", "c-c", "c-d", "c-b"]
    );
    let first = store
        .list_user_conversations(
            &t,
            &uid("kim"),
            &ConversationPage {
                cursor: None,
                limit: 10,
                include_archived: true,
            },
        )
        .await
        .unwrap();
    let (conv_a, member_a) = &first.items[0];
    assert_eq!(conv_a.last_message.as_ref().unwrap().text, "a");
    assert_eq!(conv_a.member_count, 2);
    assert_eq!(member_a.unread_count, 1);
    let lee: BTreeSet<String> = walk_user(store, &t, "lee").await;
    assert!(lee.contains("c-x") && lee.len() == 6);
    let nobody = walk_user(store, &t, "nobody").await;
    assert!(nobody.is_empty());
    let kim_b = walk_user(store, &other_tenant, "kim").await;
    assert_eq!(kim_b, BTreeSet::from(["c-a".to_string()]));

    // A new message moves a conversation to the top.
    apply(
        store,
        &cons,
        &[post(&t, "c-b", 9, MessageId::generate(), "kim", "up")],
    )
    .await;
    assert_eq!(ids(&walk(true, 3).await)[0], "c-b");
}

/// The scans of the search rebuild (users, conversations, messages of a tenant in id order,
/// paged) and the membership lookup of search queries; never across tenants.
pub async fn search_scans(store: &dyn Store) {
    let t = tid("sc");
    let other = tid("sc-other");
    room(store, &t, "sc-b", &["ada", "bo"]).await;
    room(store, &t, "sc-a", &["bo"]).await;
    room(store, &t, "sc-c", &["cy"]).await;
    room(store, &other, "sc-a", &["bo"]).await;
    for (tenant, u) in [(&t, "ada"), (&t, "bo"), (&t, "cy"), (&other, "bo")] {
        store
            .upsert_user(&User {
                tenant_id: tenant.clone(),
                id: uid(u),
                name: format!("name {u}"),
                image_url: None,
                data: serde_json::Value::Null,
                created_at: at(1),
                updated_at: at(1),
                tokens_valid_after: None,
            })
            .await
            .unwrap();
    }
    let users = store.list_users(&t, None, 2).await.unwrap();
    let names: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(names, ["ada", "bo"], "first page of users");
    let rest = store.list_users(&t, Some(&uid("bo")), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id.as_str(), "cy");
    assert_eq!(rest[0].name, "name cy");

    let convs = store.list_conversations(&t, None, 10).await.unwrap();
    let ids: Vec<&str> = convs.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["sc-a", "sc-b", "sc-c"], "conversations in id order");
    assert!(convs.iter().all(|c| c.tenant_id == t), "only the tenant's");
    let page = store
        .list_conversations(&t, Some(&cid("sc-a")), 1)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id.as_str(), "sc-b");

    let consumer = consumer("scan");
    let (m1, m2, m3, m4) = (
        MessageId::generate(),
        MessageId::generate(),
        MessageId::generate(),
        MessageId::generate(),
    );
    apply(
        store,
        &consumer,
        &[
            post(&t, "sc-a", 1, m1, "bo", "one"),
            post(&t, "sc-b", 2, m2, "ada", "two"),
            reply(&t, "sc-b", 3, m3, m2, "bo"),
            delete(&t, "sc-b", 4, m2, "ada"),
        ],
    )
    .await;
    apply(
        store,
        &consumer,
        &[post(&other, "sc-a", 5, m4, "bo", "elsewhere")],
    )
    .await;
    let mut want = vec![m1, m2, m3];
    want.sort_by_key(|m| m.to_string());
    let mut got = Vec::new();
    let mut after: Option<MessageId> = None;
    loop {
        let page = store.scan_messages(&t, after.as_ref(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2, "the limit is kept");
        after = page.last().map(|m| m.id);
        got.extend(page);
    }
    let got_ids: Vec<MessageId> = got.iter().map(|m| m.id).collect();
    assert_eq!(
        got_ids, want,
        "every message of the tenant once, in id order"
    );
    let deleted = got.iter().find(|m| m.id == m2).unwrap();
    assert!(
        deleted.deleted_at.is_some(),
        "soft-deleted ones are scanned too"
    );
    let replied = got.iter().find(|m| m.id == m3).unwrap();
    assert_eq!(replied.parent_id, Some(m2), "replies are scanned too");

    let mut mine = store.member_conversation_ids(&t, &uid("bo")).await.unwrap();
    mine.sort();
    let mine: Vec<&str> = mine.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        mine,
        ["sc-a", "sc-b"],
        "bo's conversations in this tenant only"
    );
    store
        .remove_member(&t, &cid("sc-b"), &uid("bo"))
        .await
        .unwrap();
    let after_leave = store.member_conversation_ids(&t, &uid("bo")).await.unwrap();
    assert_eq!(
        after_leave,
        vec![cid("sc-a")],
        "a member who left is not one"
    );
    assert!(
        store
            .member_conversation_ids(&t, &uid("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn walk_user(store: &dyn Store, t: &TenantId, user: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_user_conversations(
                t,
                &uid(user),
                &ConversationPage {
                    cursor: cursor.clone(),
                    limit: 4,
                    include_archived: true,
                },
            )
            .await
            .unwrap();
        for (c, _) in page.items {
            assert_eq!(&c.tenant_id, t);
            assert!(out.insert(c.id.to_string()), "no repeats");
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => return out,
        }
    }
}

/// Progress per consumer and partition: the next offset to apply, written by `apply`.
pub async fn progress(store: &dyn Store) {
    let t = tid("pr");
    room(store, &t, "p0", &["ivy"]).await;
    room(store, &t, "p1", &["ivy"]).await;
    let (c1, c2) = (consumer("progress"), consumer("progress-other"));
    assert!(store.progress(&c1).await.unwrap().is_empty());
    let on = |c: &str, partition: i32, offset: i64| LogEvent {
        partition,
        ..post(&t, c, offset, MessageId::generate(), "ivy", "x")
    };
    let events = vec![
        on("p0", 0, 5),
        on("p1", 1, 40),
        on("p0", 0, 6),
        on("p1", 1, 41),
    ];
    assert_eq!(apply(store, &c1, &events).await, report(4, 0, 0));
    assert_eq!(
        store.progress(&c1).await.unwrap(),
        BTreeMap::from([(0, 7), (1, 42)])
    );
    assert!(
        store.progress(&c2).await.unwrap().is_empty(),
        "per consumer"
    );
    // Below the progress: duplicates; progress moves on with the rest.
    let r = apply(store, &c1, &[events[2].clone(), on("p0", 0, 9)]).await;
    assert_eq!(r, report(1, 1, 0));
    assert_eq!(
        store.progress(&c1).await.unwrap(),
        BTreeMap::from([(0, 10), (1, 42)])
    );
    // Skipped events advance the progress too (they are done).
    let lost = LogEvent {
        partition: 1,
        ..post(&t, "gone", 50, MessageId::generate(), "ivy", "x")
    };
    assert_eq!(apply(store, &c1, &[lost]).await, report(0, 0, 1));
    assert_eq!(store.progress(&c1).await.unwrap().get(&1), Some(&51));
    assert_eq!(apply(store, &c1, &[]).await, report(0, 0, 0));
    // Records nobody could decode: progress moves past them, never back, and a new partition
    // starts at what is given.
    store
        .advance_progress(&c1, &[(1, 60), (0, 3), (7, 2)])
        .await
        .unwrap();
    assert_eq!(
        store.progress(&c1).await.unwrap(),
        BTreeMap::from([(0, 10), (1, 60), (7, 2)])
    );
    assert!(
        store.progress(&c2).await.unwrap().is_empty(),
        "per consumer"
    );
}

/// The audit trail: newest first, per tenant or all, paged with `before`, kept after the tenant.
pub async fn audit(store: &dyn Store) {
    let (ta, tb) = (tid("aua"), tid("aub"));
    let run = unique();
    let base = to_millis(now_ms());
    let entry = |t: &TenantId, i: i64| AuditEntry {
        tenant_id: t.clone(),
        id: format!("{run}-{i:03}"),
        at: from_millis(base + i),
        actor: "admin".into(),
        action: "tenant.update".into(),
        target: format!("tenant:{t}"),
        details: serde_json::json!({"i": i, "$odd.key": true}),
    };
    let mut written = Vec::new();
    for i in 0..8 {
        let t = if i % 3 == 2 { &tb } else { &ta };
        let e = entry(t, i);
        store.append_audit(&e).await.unwrap();
        written.push(e);
    }
    assert_already_exists(store.append_audit(&written[0]).await, "duplicate audit id");

    let of_a: Vec<&AuditEntry> = written.iter().rev().filter(|e| e.tenant_id == ta).collect();
    let page1 = store.list_audit(Some(&ta), None, 3).await.unwrap();
    assert_eq!(page1.iter().collect::<Vec<_>>(), of_a[..3].to_vec());
    let page2 = store
        .list_audit(Some(&ta), Some(&page1[2].id), 3)
        .await
        .unwrap();
    assert_eq!(page2.iter().collect::<Vec<_>>(), of_a[3..].to_vec());
    let page3 = store
        .list_audit(Some(&ta), Some(&page2[2].id), 3)
        .await
        .unwrap();
    assert!(page3.is_empty());
    let of_b = store.list_audit(Some(&tb), None, 10).await.unwrap();
    assert_eq!(of_b, vec![written[5].clone(), written[2].clone()]);

    // Across tenants (other runs' older entries may follow ours).
    let everything = store.list_audit(None, None, 8).await.unwrap();
    let newest: Vec<AuditEntry> = written.iter().rev().cloned().collect();
    assert_eq!(everything, newest);
    let tail = store
        .list_audit(None, Some(&written[3].id), 2)
        .await
        .unwrap();
    assert_eq!(tail, vec![written[2].clone(), written[1].clone()]);
}

/// Deleting a tenant removes everything it owns, keeps its audit trail, and touches no other
/// tenant that uses the same ids.
pub async fn delete_tenant(store: &dyn Store) {
    let (gone, kept) = (tid("dga"), tid("dgb"));
    let msg = MessageId::generate();
    let c = consumer("delete");
    for (offset, t) in [(1, &gone), (2, &kept)] {
        room(store, t, "home", &["nia", "oli"]).await;
        store
            .upsert_user(&User {
                tenant_id: t.clone(),
                id: uid("nia"),
                name: "Nia".into(),
                image_url: None,
                data: serde_json::json!({}),
                created_at: at(1),
                updated_at: at(1),
                tokens_valid_after: None,
            })
            .await
            .unwrap();
        store
            .put_credential(&AppCredential {
                app_id: format!("app-{t}"),
                tenant_id: t.clone(),
                secret_hash: "h".into(),
                created_at: at(1),
                expires_at: None,
            })
            .await
            .unwrap();
        let r = apply(store, &c, &[post(t, "home", offset, msg, "nia", "hello")]).await;
        assert_eq!(r, report(1, 0, 0));
    }
    let audit_entry = AuditEntry {
        tenant_id: gone.clone(),
        id: format!("del-{}", unique()),
        at: now_ms(),
        actor: "admin".into(),
        action: "tenant.delete".into(),
        target: format!("tenant:{gone}"),
        details: serde_json::Value::Null,
    };
    store.append_audit(&audit_entry).await.unwrap();

    store.delete_tenant(&gone).await.unwrap();
    let home = cid("home");
    assert_eq!(store.get_tenant(&gone).await.unwrap(), None);
    assert_eq!(store.get_user(&gone, &uid("nia")).await.unwrap(), None);
    assert_eq!(store.get_conversation(&gone, &home).await.unwrap(), None);
    assert_eq!(
        store.get_member(&gone, &home, &uid("nia")).await.unwrap(),
        None
    );
    assert_eq!(store.get_message(&gone, &home, &msg).await.unwrap(), None);
    assert!(
        store
            .list_messages(
                &gone,
                &home,
                Thread::TopLevel,
                MessagePage::Latest { limit: 10 }
            )
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_members(&gone, &home, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.list_credentials(&gone).await.unwrap().is_empty());
    assert_eq!(
        store.get_credential(&format!("app-{gone}")).await.unwrap(),
        None
    );
    assert!(walk_user(store, &gone, "nia").await.is_empty());
    assert_eq!(
        store.list_audit(Some(&gone), None, 10).await.unwrap(),
        vec![audit_entry],
        "the audit trail is kept"
    );
    assert_not_found(store.delete_tenant(&gone).await, "second delete_tenant");

    // The other tenant with the same ids is whole.
    assert!(store.get_tenant(&kept).await.unwrap().is_some());
    assert!(store.get_user(&kept, &uid("nia")).await.unwrap().is_some());
    assert_eq!(message(store, &kept, "home", msg).await.text, "hello");
    assert_eq!(unread(store, &kept, "home", "oli").await, 1);
    assert_eq!(store.list_credentials(&kept).await.unwrap().len(), 1);
    assert_eq!(walk_user(store, &kept, "nia").await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// The pipeline's records.

fn a_dead_letter(t: Option<&TenantId>, id: &str, created: i64) -> crate::DeadLetter {
    crate::DeadLetter {
        id: id.into(),
        tenant_id: t.cloned(),
        stage: "authorize".into(),
        code: "not_member".into(),
        reason: "the sender is not a member".into(),
        attempts: 1,
        topic: "conversation-events".into(),
        source_topic: "conversation-events".into(),
        partition: 3,
        offset: created,
        key: "dl-room".into(),
        event_type: Some("message.created".into()),
        payload: "{\"not\": \"an event\"}".into(),
        payload_encoding: crate::PayloadEncoding::Utf8,
        headers: vec![("x-correlation-id".into(), "corr-1".into())],
        status: crate::DeadLetterStatus::Pending,
        created_at: at(created),
        updated_at: at(created),
    }
}

/// Dead letters: written again by id (a replay after a crash) they stay one; listed oldest
/// first per tenant and status, paged by id; status changes stick; tenants never mix.
pub async fn dead_letters(store: &dyn Store) {
    use crate::{DeadLetterQuery, DeadLetterStatus};
    let t = tid("dl");
    let other = tid("dl-other");
    let ids: Vec<String> = (0..5).map(|i| format!("dl-{}-{i}", unique())).collect();
    // Written out of order; created_at decides the order, the id breaks ties.
    for (i, id) in ids.iter().enumerate().rev() {
        store
            .put_dead_letter(&a_dead_letter(Some(&t), id, (i as i64) / 2))
            .await
            .unwrap();
    }
    let foreign = format!("dl-{}-x", unique());
    store
        .put_dead_letter(&a_dead_letter(Some(&other), &foreign, 0))
        .await
        .unwrap();
    let orphan = format!("dl-{}-orphan", unique());
    store
        .put_dead_letter(&a_dead_letter(None, &orphan, 0))
        .await
        .unwrap();
    // Written twice: still one.
    store
        .put_dead_letter(&a_dead_letter(Some(&t), &ids[0], 0))
        .await
        .unwrap();

    let q = |after: Option<String>, limit: u32, status: Option<DeadLetterStatus>| DeadLetterQuery {
        tenant: Some(t.clone()),
        status,
        after,
        limit,
    };
    let mut expected = ids.clone();
    expected.sort_by_key(|id| {
        let i = ids.iter().position(|x| x == id).unwrap();
        ((i as i64) / 2, id.clone())
    });
    let all = store.list_dead_letters(&q(None, 100, None)).await.unwrap();
    let got: Vec<String> = all.iter().map(|d| d.id.clone()).collect();
    assert_eq!(got, expected, "oldest first, id breaks ties, one per id");
    assert_eq!(all[0], {
        let mut d = a_dead_letter(Some(&t), &all[0].id, all[0].offset);
        d.created_at = all[0].created_at;
        d.updated_at = all[0].updated_at;
        d
    });
    // Paging by id.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_dead_letters(&q(after.clone(), 2, None))
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        paged.extend(page.into_iter().map(|d| d.id));
    }
    assert_eq!(paged, expected, "pages walk the same order");
    assert!(
        store
            .list_dead_letters(&q(Some("dl-no-such".into()), 10, None))
            .await
            .unwrap()
            .is_empty(),
        "an unknown cursor starts nowhere"
    );
    // Status changes.
    let mut d = store.get_dead_letter(&ids[2]).await.unwrap().unwrap();
    d.status = DeadLetterStatus::Replayed;
    d.attempts = 4;
    d.updated_at = at(99);
    store.put_dead_letter(&d).await.unwrap();
    assert_eq!(store.get_dead_letter(&ids[2]).await.unwrap().unwrap(), d);
    let pending = store
        .list_dead_letters(&q(None, 100, Some(DeadLetterStatus::Pending)))
        .await
        .unwrap();
    assert_eq!(pending.len(), 4);
    assert!(pending.iter().all(|x| x.id != ids[2]));
    let replayed = store
        .list_dead_letters(&q(None, 100, Some(DeadLetterStatus::Replayed)))
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    // Isolation, and records without a tenant.
    let theirs = store
        .list_dead_letters(&DeadLetterQuery {
            tenant: Some(other.clone()),
            limit: 100,
            ..DeadLetterQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].id, foreign);
    let o = store.get_dead_letter(&orphan).await.unwrap().unwrap();
    assert_eq!(o.tenant_id, None);
    assert!(store.get_dead_letter("dl-missing").await.unwrap().is_none());
    assert!(
        store
            .list_dead_letters(&DeadLetterQuery {
                limit: 0,
                ..DeadLetterQuery::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    // Deleting a tenant deletes its dead letters.
    store.create_tenant(&a_tenant(&other)).await.unwrap();
    store.delete_tenant(&other).await.unwrap();
    assert!(store.get_dead_letter(&foreign).await.unwrap().is_none());
}

/// Tenant webhooks: one per tenant, replaced by a put, deleted once, gone with the tenant.
pub async fn webhooks(store: &dyn Store) {
    let t = tid("wh");
    let other = tid("wh-other");
    let hook = |t: &TenantId, url: &str| crate::TenantWebhook {
        tenant_id: t.clone(),
        url: url.into(),
        secret: "whsec_0123456789abcdef".into(),
        events: vec!["mention".into()],
        created_at: at(1),
        updated_at: at(2),
    };
    assert!(store.get_webhook(&t).await.unwrap().is_none());
    store
        .put_webhook(&hook(&t, "http://a.example/hook"))
        .await
        .unwrap();
    store
        .put_webhook(&hook(&t, "http://b.example/hook"))
        .await
        .unwrap();
    store
        .put_webhook(&hook(&other, "http://o.example/hook"))
        .await
        .unwrap();
    let got = store.get_webhook(&t).await.unwrap().unwrap();
    assert_eq!(got, hook(&t, "http://b.example/hook"));
    assert!(got.wants("mention") && !got.wants("message"));
    store.delete_webhook(&t).await.unwrap();
    assert!(store.get_webhook(&t).await.unwrap().is_none());
    assert!(matches!(
        store.delete_webhook(&t).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.get_webhook(&other).await.unwrap().is_some());
    store.create_tenant(&a_tenant(&other)).await.unwrap();
    store.delete_tenant(&other).await.unwrap();
    assert!(store.get_webhook(&other).await.unwrap().is_none());
}
