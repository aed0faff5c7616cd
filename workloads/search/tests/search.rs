//! Integration tests of the search workload against real components: the SQLite store, the
//! embedded log and (for the crash test on the real broker) a Kafka-protocol broker from
//! `CAAS_TEST_KAFKA_BROKERS` (`scripts/test.sh` starts tansu).
//!
//! The crash tests re-run this test binary as a child process (the ignored `child_indexer`
//! test, selected with `--exact --ignored`) and kill it with SIGKILL while it indexes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use caas_bus::embedded::EmbeddedLog;
use caas_bus::kafka::KafkaBus;
use caas_bus::{DynBus, Envelope, LogPosition, topics};
use caas_config::{Config, KafkaConfig, SearchConfig};
use caas_domain::event::{
    ConversationChanged, ConversationEvent, MemberChanged, MessageCreated, MessageDeleted,
    MessageRejected, MessageUpdated, SCHEMA_VERSION,
};
use caas_domain::model::{
    Conversation, ConversationKind, Member, Quotas, Role, Tenant, TenantStatus, User,
};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use caas_kit::auth::{Authenticator, KeySet, TokenService};
use caas_kit::ratelimit::MemoryLimiter;
use caas_search::engine::Engine;
use caas_search::query::{self, MessageSearch, Page, Scope, Sort};
use caas_search::{SearchMetrics, SearchState};
use caas_store::sqlite::SqliteStore;
use caas_store::{DynStore, LogEvent, PERSIST_CONSUMER};
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Generous bound for conditions (a Kafka group join on tansu takes seconds).
const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Fixtures.

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}
fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}
fn cid(s: &str) -> ConversationId {
    ConversationId::parse(s).unwrap()
}
fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(1_767_225_600_000 + ms) * 1_000_000)
        .unwrap()
}

fn search_cfg(dir: &Path) -> SearchConfig {
    SearchConfig {
        index_dir: dir.join("search").display().to_string(),
        group_id: "test-search".into(),
        commit_interval_ms: 10,
        batch_max_events: 200,
        writer_memory_mb: 32,
        language: "english".into(),
    }
}

struct World {
    store: DynStore,
    bus: DynBus,
    engine: Arc<Engine>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start_engine(cfg: SearchConfig, store: DynStore, bus: DynBus) -> World {
    let engine = Engine::new(
        cfg,
        store.clone(),
        bus.clone(),
        SearchMetrics::unregistered(),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let (e, s) = (engine.clone(), stop.clone());
    let task = tokio::spawn(async move {
        e.run(s).await.expect("indexer");
    });
    World {
        store,
        bus,
        engine,
        stop,
        task,
    }
}

impl World {
    async fn embedded(dir: &Path) -> Self {
        let store: DynStore = Arc::new(SqliteStore::open(dir.join("store.db")).unwrap());
        let bus: DynBus = Arc::new(EmbeddedLog::open(dir.join("log.db"), 4).unwrap());
        start_engine(search_cfg(dir), store, bus).await
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    /// Waits until every record published so far is indexed.
    async fn caught_up(&self) {
        caught_up(&self.engine, &self.bus).await;
    }

    async fn search(&self, t: &str, u: &str, s: MessageSearch) -> Page {
        let scope = scope(&self.store, t, u).await;
        let g = self.engine.current().expect("an index");
        tokio::task::spawn_blocking(move || query::search_messages(&g, &scope, &s))
            .await
            .unwrap()
            .unwrap()
    }

    /// Texts of the hits of `q` for `u` (relevance order).
    async fn texts(&self, t: &str, u: &str, q: &str) -> Vec<String> {
        self.search(t, u, q_of(q))
            .await
            .hits
            .into_iter()
            .map(|h| h.message.text)
            .collect()
    }
}

async fn caught_up(engine: &Engine, bus: &DynBus) {
    let deadline = Instant::now() + WAIT;
    let n = bus.partitions(topics::CONVERSATION_EVENTS) as i32;
    loop {
        let mut heads = BTreeMap::new();
        for p in 0..n {
            heads.insert(
                p,
                bus.high_watermark(topics::CONVERSATION_EVENTS, p)
                    .await
                    .unwrap(),
            );
        }
        if let Some(g) = engine.current() {
            let pos = g.positions();
            if heads
                .iter()
                .all(|(p, h)| pos.get(p).copied().unwrap_or(0) >= *h)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the index did not catch up with the log within {WAIT:?}: heads {heads:?}, status {:?}",
            engine.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The caller's scope, as the HTTP layer builds it.
async fn scope(store: &DynStore, t: &str, u: &str) -> Scope {
    Scope {
        tenant: t.to_string(),
        conversations: store
            .member_conversation_ids(&tid(t), &uid(u))
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.to_string())
            .collect(),
    }
}

fn q_of(q: &str) -> MessageSearch {
    MessageSearch {
        q: q.to_string(),
        limit: 50,
        ..MessageSearch::default()
    }
}

async fn tenant(store: &DynStore, t: &str) {
    store
        .create_tenant(&Tenant {
            id: tid(t),
            name: format!("Tenant {t}"),
            status: TenantStatus::Active,
            quotas: Quotas::default(),
            features: vec![],
            created_at: at(0),
            updated_at: at(0),
        })
        .await
        .unwrap();
}

async fn user(store: &DynStore, t: &str, u: &str, name: &str) {
    store
        .upsert_user(&User {
            tenant_id: tid(t),
            id: uid(u),
            name: name.into(),
            image_url: None,
            data: serde_json::Value::Null,
            created_at: at(0),
            updated_at: at(0),
            tokens_valid_after: None,
        })
        .await
        .unwrap();
}

async fn publish(bus: &DynBus, t: &str, c: &str, event: ConversationEvent) -> LogPosition {
    Envelope {
        v: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        tenant_id: tid(t),
        key: c.to_string(),
        correlation_id: "test".into(),
        occurred_at: OffsetDateTime::now_utc(),
        event: event.clone(),
    }
    .publish(bus.as_ref(), topics::CONVERSATION_EVENTS, event.type_name())
    .await
    .unwrap()
}

/// Creates a conversation with members in the store and announces them, as the gateway does.
async fn conversation(w: &World, t: &str, c: &str, name: &str, members: &[&str]) {
    w.store
        .create_conversation(
            &Conversation {
                tenant_id: tid(t),
                id: cid(c),
                kind: ConversationKind::Group,
                name: Some(name.into()),
                topic: None,
                created_by: uid(members[0]),
                created_at: at(0),
                updated_at: at(0),
                archived_at: None,
                last_message: None,
                member_count: 0,
            },
            &members
                .iter()
                .map(|u| Member {
                    tenant_id: tid(t),
                    conversation_id: cid(c),
                    user_id: uid(u),
                    role: Role::Member,
                    joined_at: at(0),
                    last_read_position: -1,
                    unread_count: 0,
                })
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    for u in members {
        publish(&w.bus, t, c, member_event(u)).await;
    }
}

fn member_event(u: &str) -> ConversationEvent {
    ConversationEvent::MemberAdded(MemberChanged {
        user_id: uid(u),
        role: Some(Role::Member),
        by: uid(u),
        at: at(0),
    })
}

fn created(id: MessageId, sender: &str, text: &str, ms: i64) -> ConversationEvent {
    ConversationEvent::MessageCreated(MessageCreated {
        message_id: id,
        sender_id: uid(sender),
        text: text.into(),
        html: String::new(),
        mentions: vec![],
        links: vec![],
        hashtags: vec![],
        parent_id: None,
        client_msg_id: None,
        forwarded_from: None,
        attachments: Vec::new(),
        created_at: at(ms),
    })
}

fn edited(id: MessageId, editor: &str, text: &str) -> ConversationEvent {
    ConversationEvent::MessageUpdated(MessageUpdated {
        message_id: id,
        editor_id: uid(editor),
        text: text.into(),
        html: String::new(),
        mentions: vec![],
        links: vec![],
        hashtags: vec![],
        edited_at: at(99_999),
    })
}

fn deleted(id: MessageId, by: &str) -> ConversationEvent {
    ConversationEvent::MessageDeleted(MessageDeleted {
        message_id: id,
        deleted_by: uid(by),
        deleted_at: at(99_999),
    })
}

async fn send(w: &World, t: &str, c: &str, sender: &str, text: &str, ms: i64) -> MessageId {
    let id = MessageId::generate();
    publish(&w.bus, t, c, created(id, sender, text, ms)).await;
    id
}

/// A message carrying a file.
async fn send_with_attachment(w: &World, t: &str, c: &str, sender: &str, text: &str) -> MessageId {
    let id = MessageId::generate();
    let mut event = created(id, sender, text, 5_000);
    if let ConversationEvent::MessageCreated(m) = &mut event {
        m.attachments.push(caas_domain::model::Attachment {
            id: "att-1".into(),
            name: "menu.png".into(),
            content_type: "image/png".into(),
            size: 1234,
            width: Some(10),
            height: Some(10),
            has_thumbnail: true,
        });
    }
    publish(&w.bus, t, c, event).await;
    id
}

// ---------------------------------------------------------------------------------------------
// Relevance, filters, highlights, pagination, suggestions, names.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relevance_filters_and_pagination_on_a_fixed_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::embedded(dir.path()).await;
    tenant(&w.store, "acme").await;
    for (u, n) in [
        ("ann", "Ann Archer"),
        ("bob", "Bob Baker"),
        ("cyd", "Cyd Cole"),
    ] {
        user(&w.store, "acme", u, n).await;
    }
    conversation(&w, "acme", "lunch", "Lunch plans", &["ann", "bob"]).await;
    conversation(&w, "acme", "ops", "Operations", &["ann", "cyd"]).await;

    send(&w, "acme", "lunch", "ann", "Pizza pizza pizza!", 1_000).await;
    send(
        &w,
        "acme",
        "lunch",
        "bob",
        "Pizza at noon with extra olives and a long tail of words that dilutes the score",
        2_000,
    )
    .await;
    send(&w, "acme", "lunch", "ann", "noon pizza at the café", 3_000).await;
    send(&w, "acme", "lunch", "bob", "I ordered two pizzas", 4_000).await;
    send_with_attachment(&w, "acme", "lunch", "bob", "menu photo of the pizzeria").await;
    send(
        &w,
        "acme",
        "lunch",
        "ann",
        "<script>alert(1)</script> pizza",
        6_000,
    )
    .await;
    send(
        &w,
        "acme",
        "ops",
        "cyd",
        "deploy the pizza service at noon",
        7_000,
    )
    .await;
    send(
        &w,
        "acme",
        "ops",
        "ann",
        "Running the deployment checks",
        8_000,
    )
    .await;
    w.caught_up().await;

    // Stemming (pizzas), relevance: the densest short message first.
    let hits = w.texts("acme", "ann", "pizza").await;
    assert_eq!(hits.len(), 6, "{hits:?}");
    assert_eq!(hits[0], "Pizza pizza pizza!");
    assert!(hits.contains(&"I ordered two pizzas".to_string()));
    // Stemming both ways and accents folded.
    assert_eq!(w.texts("acme", "ann", "deploying").await.len(), 2);
    assert_eq!(
        w.texts("acme", "ann", "cafe").await,
        vec!["noon pizza at the café"]
    );
    // Phrase: exact order only.
    assert_eq!(
        w.texts("acme", "ann", "\"pizza at noon\"").await,
        vec!["Pizza at noon with extra olives and a long tail of words that dilutes the score"]
    );
    // Prefix and phrase prefix.
    assert_eq!(
        w.texts("acme", "ann", "pizze*").await,
        vec!["menu photo of the pizzeria"]
    );
    assert_eq!(
        w.texts("acme", "ann", "\"deploy the piz\"*").await,
        vec!["deploy the pizza service at noon"]
    );
    // Exclusion and AND.
    assert_eq!(w.texts("acme", "ann", "pizza noon -olives").await.len(), 2);
    assert!(w.texts("acme", "ann", "pizza kangaroo").await.is_empty());

    // Filters: conversation, sender, dates, attachment.
    let in_ops = w
        .search(
            "acme",
            "ann",
            MessageSearch {
                conversation: Some("ops".into()),
                ..q_of("pizza")
            },
        )
        .await;
    assert_eq!(in_ops.total, 1);
    let by_bob = w
        .search(
            "acme",
            "ann",
            MessageSearch {
                sender: Some("bob".into()),
                ..q_of("pizza")
            },
        )
        .await;
    assert_eq!(by_bob.total, 2);
    assert!(by_bob.hits.iter().all(|h| h.message.sender == "bob"));
    let window = w
        .search(
            "acme",
            "ann",
            MessageSearch {
                from_ms: Some(1_767_225_600_000 + 2_000),
                to_ms: Some(1_767_225_600_000 + 4_000),
                ..q_of("pizza")
            },
        )
        .await;
    assert_eq!(window.total, 2, "from is inclusive, to exclusive");
    let with_file = w
        .search(
            "acme",
            "ann",
            MessageSearch {
                has_attachment: Some(true),
                ..q_of("")
            },
        )
        .await;
    assert_eq!(with_file.total, 1);
    assert_eq!(with_file.hits[0].message.text, "menu photo of the pizzeria");
    assert!(with_file.hits[0].message.has_attachment);

    // Highlights: matches marked, the rest escaped, short texts whole.
    let dense = w.search("acme", "ann", q_of("pizza")).await;
    assert_eq!(
        dense.hits[0].highlight,
        "<mark>Pizza</mark> <mark>pizza</mark> <mark>pizza</mark>!"
    );
    let evil = w.search("acme", "ann", q_of("alert")).await;
    assert_eq!(
        evil.hits[0].highlight,
        "&lt;script&gt;<mark>alert</mark>(1)&lt;/script&gt; pizza"
    );

    // Sort by time, newest first, paged by cursor: every hit once.
    for sort in [Sort::Time, Sort::Relevance] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = w
                .search(
                    "acme",
                    "ann",
                    MessageSearch {
                        sort,
                        limit: 2,
                        cursor: cursor.clone(),
                        ..q_of("pizza")
                    },
                )
                .await;
            assert!(page.hits.len() <= 2);
            seen.extend(
                page.hits
                    .iter()
                    .map(|h| (h.message.created_ms, h.message.id.clone())),
            );
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 6, "{sort:?}: every hit once");
        let mut ids: Vec<_> = seen.iter().map(|(_, id)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6, "{sort:?}: no hit twice");
        if sort == Sort::Time {
            assert!(
                seen.windows(2).all(|p| p[0].0 >= p[1].0),
                "newest first: {seen:?}"
            );
        }
    }

    // Suggestions from the caller's own messages; names.
    let g = w.engine.current().unwrap();
    let ann = scope(&w.store, "acme", "ann").await;
    let bob = scope(&w.store, "acme", "bob").await;
    let (g2, ann2, bob2) = (g.clone(), ann.clone(), bob.clone());
    let (sa, sb, convs, users) = tokio::task::spawn_blocking(move || {
        (
            query::suggest(&g2, &ann2, "dep", 5).unwrap(),
            query::suggest(&g2, &bob2, "dep", 5).unwrap(),
            query::search_conversations(&g2, &ann2, "oper", 5).unwrap(),
            query::search_users(&g2, &bob2, "ba", 5).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(sa.terms, vec!["deploy", "deployment"]);
    assert!(sb.terms.is_empty(), "bob is not in ops: {:?}", sb.terms);
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].name, "Operations");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].id, "bob");
    let bob_convs = tokio::task::spawn_blocking(move || {
        query::search_conversations(&g, &bob, "oper", 5).unwrap()
    })
    .await
    .unwrap();
    assert!(
        bob_convs.is_empty(),
        "a conversation name is seen by members only"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_and_renames_are_visible() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::embedded(dir.path()).await;
    tenant(&w.store, "acme").await;
    user(&w.store, "acme", "ann", "Ann").await;
    conversation(&w, "acme", "room", "Old name", &["ann"]).await;
    let m = send(&w, "acme", "room", "ann", "the quick brown fox", 1).await;
    // Created, edited and deleted in one batch and across batches.
    let n = send(&w, "acme", "room", "ann", "ephemeral words", 2).await;
    publish(&w.bus, "acme", "room", edited(n, "ann", "ephemeral edited")).await;
    publish(&w.bus, "acme", "room", deleted(n, "ann")).await;
    // A message the pipeline refused (`message.rejected`) is taken back too.
    let r = send(&w, "acme", "room", "ann", "refused armadillo", 3).await;
    publish(
        &w.bus,
        "acme",
        "room",
        ConversationEvent::MessageRejected(MessageRejected {
            message_id: r,
            sender_id: uid("ann"),
            code: "not_member".into(),
            at: at(4),
        }),
    )
    .await;
    w.caught_up().await;
    assert_eq!(w.texts("acme", "ann", "fox").await.len(), 1);
    assert!(w.texts("acme", "ann", "ephemeral").await.is_empty());
    assert!(
        w.texts("acme", "ann", "armadillo").await.is_empty(),
        "rejected"
    );

    publish(&w.bus, "acme", "room", edited(m, "ann", "the lazy dog")).await;
    w.caught_up().await;
    assert!(
        w.texts("acme", "ann", "fox").await.is_empty(),
        "the old text is gone"
    );
    let hits = w.search("acme", "ann", q_of("dog")).await;
    assert_eq!(hits.total, 1);
    assert!(hits.hits[0].message.edited_ms.is_some());
    assert_eq!(hits.hits[0].message.id, m.to_string());

    publish(&w.bus, "acme", "room", deleted(m, "ann")).await;
    w.store
        .update_conversation(
            &tid("acme"),
            &cid("room"),
            &caas_store::ConversationPatch {
                name: Some("Brand new".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    publish(
        &w.bus,
        "acme",
        "room",
        ConversationEvent::ConversationUpdated(ConversationChanged {
            name: Some("Brand new".into()),
            topic: None,
            archived: false,
            by: uid("ann"),
            at: at(5),
        }),
    )
    .await;
    w.caught_up().await;
    assert!(w.texts("acme", "ann", "dog").await.is_empty(), "deleted");
    let g = w.engine.current().unwrap();
    let s = scope(&w.store, "acme", "ann").await;
    let (old, new) = tokio::task::spawn_blocking(move || {
        (
            query::search_conversations(&g, &s, "old", 5).unwrap(),
            query::search_conversations(&g, &s, "brand", 5).unwrap(),
        )
    })
    .await
    .unwrap();
    assert!(old.is_empty());
    assert_eq!(new.len(), 1);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Isolation: a generated matrix of callers × conversations.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_current_members_of_the_callers_tenant_ever_see_a_hit() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::embedded(dir.path()).await;
    let tenants = ["t-one", "t-two"];
    let users = ["u0", "u1", "u2", "u3"];
    let convs = ["c0", "c1", "c2"];
    for t in tenants {
        tenant(&w.store, t).await;
        for u in users {
            user(&w.store, t, u, &format!("User {u}")).await;
        }
    }
    // Membership of (tenant ti, user uj, conversation ck): a deterministic pattern that covers
    // members, non-members and, after the removals below, former members. Both tenants use the
    // same conversation and user ids, so only the tenant tells them apart.
    let member = |ti: usize, uj: usize, ck: usize| !(ti + uj + ck).is_multiple_of(3);
    for (ti, t) in tenants.iter().enumerate() {
        for (ck, c) in convs.iter().enumerate() {
            let ms: Vec<&str> = users
                .iter()
                .enumerate()
                .filter(|(uj, _)| member(ti, *uj, ck))
                .map(|(_, u)| *u)
                .collect();
            conversation(&w, t, c, &format!("{t} {c}"), &ms).await;
            // One unique word per (tenant, conversation), plus a word every message shares.
            send(&w, t, c, ms[0], &format!("common secret{ti}x{ck}"), 1).await;
        }
    }
    // Former members: the first member of each conversation leaves.
    let mut former = Vec::new();
    for (ti, t) in tenants.iter().enumerate() {
        for (ck, c) in convs.iter().enumerate() {
            let uj = (0..users.len()).find(|uj| member(ti, *uj, ck)).unwrap();
            w.store
                .remove_member(&tid(t), &cid(c), &uid(users[uj]))
                .await
                .unwrap();
            publish(
                &w.bus,
                t,
                c,
                ConversationEvent::MemberRemoved(MemberChanged {
                    user_id: uid(users[uj]),
                    role: None,
                    by: uid(users[uj]),
                    at: at(2),
                }),
            )
            .await;
            former.push((ti, uj, ck));
        }
    }
    w.caught_up().await;
    let is_member_now =
        |ti: usize, uj: usize, ck: usize| member(ti, uj, ck) && !former.contains(&(ti, uj, ck));
    let mut checked = 0;
    for (ti, t) in tenants.iter().enumerate() {
        for (uj, u) in users.iter().enumerate() {
            // The shared word: exactly the conversations the caller is in now, in their tenant.
            let page = w.search(t, u, q_of("common")).await;
            let mut got: Vec<String> = page
                .hits
                .iter()
                .map(|h| h.message.conversation_id.clone())
                .collect();
            got.sort();
            let want: Vec<String> = (0..convs.len())
                .filter(|ck| is_member_now(ti, uj, *ck))
                .map(|ck| convs[ck].to_string())
                .collect();
            assert_eq!(got, want, "{t}/{u} sees exactly their conversations");
            // Each unique word, of both tenants: a hit only for a current member of that
            // tenant's conversation.
            for (tk, _) in tenants.iter().enumerate() {
                for ck in 0..convs.len() {
                    let hits = w.search(t, u, q_of(&format!("secret{tk}x{ck}"))).await;
                    let allowed = tk == ti && is_member_now(ti, uj, ck);
                    assert_eq!(
                        hits.total,
                        usize::from(allowed),
                        "{t}/{u} searching secret{tk}x{ck}: member now = {allowed}"
                    );
                    for h in &hits.hits {
                        assert_eq!(h.message.tenant, *t);
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 4 * 2 * 3);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// HTTP: auth, rate limit, bad input, admin rebuild.

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: &str,
) -> (StatusCode, serde_json::Value) {
    let resp = router
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_scopes_limits_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::embedded(dir.path()).await;
    tenant(&w.store, "acme").await;
    user(&w.store, "acme", "ann", "Ann").await;
    user(&w.store, "acme", "eve", "Eve").await;
    conversation(&w, "acme", "room", "Room", &["ann"]).await;
    send(&w, "acme", "room", "ann", "hello searchable world", 1).await;
    w.caught_up().await;

    let mut cfg = Config::default();
    cfg.limits.searches_per_minute_per_user = 5;
    KeySet::generate_into(&dir.path().join("keys")).unwrap();
    let keys = KeySet::load_dir(&dir.path().join("keys"), "").unwrap();
    let tokens = Arc::new(TokenService::new(keys, &cfg.auth));
    let auth = Arc::new(Authenticator::new(
        tokens.clone(),
        w.store.clone(),
        Duration::from_secs(1),
    ));
    let state = SearchState {
        engine: w.engine.clone(),
        auth,
        limiter: Arc::new(MemoryLimiter::new()),
        config: Arc::new(cfg),
        admin_token: Arc::new("admin-token-0123456789".into()),
    };
    let public = caas_search::router(state.clone());
    let internal = caas_search::internal_router(state);
    let ann = tokens
        .issue(&tid("acme"), &uid("ann"), OffsetDateTime::now_utc())
        .unwrap()
        .token;
    let eve = tokens
        .issue(&tid("acme"), &uid("eve"), OffsetDateTime::now_utc())
        .unwrap()
        .token;

    let (s, body) = call(&public, "GET", "/v1/search/messages?q=searchable", &ann).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 1);
    assert_eq!(
        body["hits"][0]["highlight"],
        "hello <mark>searchable</mark> world"
    );
    let (s, body) = call(&public, "GET", "/v1/search/messages?q=searchable", &eve).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["total"], 0, "a non-member sees nothing");

    let (s, body) = call(&public, "GET", "/v1/search/messages?q=x", "not-a-token").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    for (uri, code) in [
        ("/v1/search/messages?q=%22open", "invalid_argument"),
        ("/v1/search/messages?q=a&limit=500", "invalid_argument"),
        ("/v1/search/messages?q=a&sort=best", "invalid_argument"),
        ("/v1/search/messages?q=a&bogus=1", "invalid_argument"),
        ("/v1/search/messages?q=a&cursor=zzz", "invalid_cursor"),
    ] {
        let (s, body) = call(&public, "GET", uri, &eve).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], code, "{uri}");
    }
    // Eve has used her 5 searches (an extractor rejection uses none): the next is refused;
    // Ann's budget is her own.
    let (s, body) = call(&public, "GET", "/v1/search/users?q=an", &eve).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let (s, body) = call(&public, "GET", "/v1/search/users?q=an", &ann).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["id"], "ann");

    // Admin: refused without the token; a rebuild runs and finishes; status shows it.
    let (s, _) = call(&internal, "POST", "/admin/v1/search/rebuild", "wrong").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let before = w.engine.current().unwrap().id.clone();
    let (s, body) = call(
        &internal,
        "POST",
        "/admin/v1/search/rebuild",
        "admin-token-0123456789",
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, st) = call(
            &internal,
            "GET",
            "/admin/v1/search/rebuild",
            "admin-token-0123456789",
        )
        .await;
        if st["state"] == "done" {
            assert_eq!(st["tenants_done"], st["tenants_total"]);
            break;
        }
        assert_ne!(st["state"], "failed", "{st}");
        assert!(Instant::now() < deadline, "rebuild did not finish: {st}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(w.engine.current().unwrap().id, before, "a new generation");
    let (s, st) = call(
        &internal,
        "GET",
        "/admin/v1/search/status",
        "admin-token-0123456789",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(st["documents"].as_u64().unwrap() >= 3, "{st}");
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Rebuild: online, converging with events that arrive meanwhile; an analyzer change rebuilds.

/// Publishes an event and applies it to the store, as the pipeline would.
async fn publish_and_persist(w: &World, t: &str, c: &str, event: ConversationEvent) {
    let pos = publish(&w.bus, t, c, event.clone()).await;
    let report = w
        .store
        .apply(
            PERSIST_CONSUMER,
            &[LogEvent {
                partition: pos.partition,
                offset: pos.offset,
                tenant_id: tid(t),
                conversation_id: cid(c),
                event,
            }],
        )
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_is_online_and_converges_and_an_analyzer_change_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::embedded(dir.path()).await;
    tenant(&w.store, "acme").await;
    user(&w.store, "acme", "ann", "Ann").await;
    conversation(&w, "acme", "room", "Room", &["ann"]).await;
    let mut live = Vec::new();
    for i in 0..300 {
        let id = MessageId::generate();
        publish_and_persist(
            &w,
            "acme",
            "room",
            created(id, "ann", &format!("alpha number{i}"), i),
        )
        .await;
        live.push(id);
    }
    w.caught_up().await;
    let first = w.engine.current().unwrap().id.clone();
    w.engine.request_rebuild().unwrap();
    assert!(
        matches!(
            w.engine.request_rebuild(),
            Err(caas_search::engine::EngineError::AlreadyRunning)
        ),
        "one rebuild at a time"
    );
    // Writes while it runs: new messages, an edit and a delete of old ones.
    for i in 300..400 {
        let id = MessageId::generate();
        publish_and_persist(
            &w,
            "acme",
            "room",
            created(id, "ann", &format!("alpha number{i}"), i),
        )
        .await;
        live.push(id);
        // Queries are answered throughout.
        assert!(w.engine.current().is_some());
    }
    publish_and_persist(
        &w,
        "acme",
        "room",
        edited(live[0], "ann", "omega rewritten"),
    )
    .await;
    publish_and_persist(&w, "acme", "room", deleted(live[1], "ann")).await;
    let deadline = Instant::now() + WAIT;
    while w.engine.status().state != "done" {
        assert_ne!(w.engine.status().state, "failed", "{:?}", w.engine.status());
        assert!(Instant::now() < deadline, "{:?}", w.engine.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.caught_up().await;
    assert_ne!(w.engine.current().unwrap().id, first);
    let all = w
        .search(
            "acme",
            "ann",
            MessageSearch {
                limit: 50,
                ..q_of("alpha")
            },
        )
        .await;
    assert_eq!(
        all.total, 398,
        "400 sent, one edited away, one deleted; none twice"
    );
    assert_eq!(
        w.texts("acme", "ann", "omega").await,
        vec!["omega rewritten"]
    );
    assert!(w.texts("acme", "ann", "number1").await.is_empty());
    assert_eq!(w.texts("acme", "ann", "number399").await.len(), 1);
    let (store, bus) = (w.store.clone(), w.bus.clone());
    w.stop().await;

    // The same directory with another language: the index is rebuilt from the store.
    let mut cfg = search_cfg(dir.path());
    cfg.language = "french".into();
    let w = start_engine(cfg, store, bus).await;
    w.caught_up().await;
    assert_eq!(w.engine.status().reason.as_deref(), Some("version_changed"));
    let all = w
        .search(
            "acme",
            "ann",
            MessageSearch {
                limit: 50,
                ..q_of("alpha")
            },
        )
        .await;
    assert_eq!(all.total, 398);
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// kill -9 while indexing, on the embedded log and on the real broker.

const CHILD_MODE: &str = "CAAS_TEST_SEARCH_CHILD_MODE";
const CHILD_DIR: &str = "CAAS_TEST_SEARCH_CHILD_DIR";
const CHILD_PREFIX: &str = "CAAS_TEST_SEARCH_CHILD_PREFIX";
const PROGRESS: &str = "SEARCH-CHILD-PROGRESS";

fn kafka_cfg(prefix: &str) -> KafkaConfig {
    let brokers = match std::env::var("CAAS_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "CAAS_TEST_KAFKA_BROKERS is not set: the crash test on the real broker needs a \
             Kafka-protocol broker. Run scripts/test.sh (it starts tansu)."
        ),
    };
    KafkaConfig {
        brokers,
        topic_prefix: prefix.to_string(),
        partitions: 3,
        replication_factor: 1,
        create_topics: true,
        properties: BTreeMap::from([("session.timeout.ms".to_owned(), "6000".to_owned())]),
    }
}

async fn open_bus(mode: &str, dir: &Path, prefix: &str) -> DynBus {
    match mode {
        "embedded" => Arc::new(EmbeddedLog::open(dir.join("log.db"), 4).unwrap()),
        _ => {
            let bus = KafkaBus::connect(&kafka_cfg(prefix)).await.unwrap();
            bus.ensure_topics(&[topics::CONVERSATION_EVENTS])
                .await
                .unwrap();
            Arc::new(bus)
        }
    }
}

/// Consumer groups unique to the run (the broker outlives test runs).
fn crash_cfg(dir: &Path, prefix: &str) -> SearchConfig {
    SearchConfig {
        group_id: format!("search-{prefix}"),
        batch_max_events: 40,
        ..search_cfg(dir)
    }
}

/// Total of the index's positions: how far it got.
fn progress(engine: &Engine) -> i64 {
    engine
        .current()
        .map(|g| g.positions().values().sum())
        .unwrap_or(0)
}

async fn kill_during_indexing_converges(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("s{}.", uuid::Uuid::new_v4().simple());
    let store: DynStore = Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
    // An (empty) index exists before the events, so the child indexes them with its consumer
    // group, not with a first build's catch-up. Made directly: no consumer has joined the group
    // before the child.
    {
        let root = dir.path().join("search");
        let g = caas_search::index::Generation::create(
            &root,
            tantivy::tokenizer::Language::English,
            32,
        )
        .unwrap();
        caas_search::index::set_current(&root, &g.id).unwrap();
    }
    // 1,500 events in 6 conversations: creations, edits and deletes; the expected final text.
    let bus = open_bus(mode, dir.path(), &prefix).await;
    let mut want: HashMap<String, Option<String>> = HashMap::new();
    let mut ids: Vec<(MessageId, &str)> = Vec::new();
    let mut seed: u64 = 7;
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) as usize
    };
    for i in 0..1_500 {
        let c = ["k0", "k1", "k2", "k3", "k4", "k5"][i % 6];
        let r = next() % 10;
        if r < 7 || ids.len() < 10 {
            let id = MessageId::generate();
            let text = format!("crash{i} body");
            publish(&bus, "acme", c, created(id, "ann", &text, i as i64)).await;
            want.insert(id.to_string(), Some(text));
            ids.push((id, c));
        } else {
            let (id, c) = ids[next() % ids.len()];
            if r < 9 {
                if want[&id.to_string()].is_some() {
                    let text = format!("crash{i} edited");
                    publish(&bus, "acme", c, edited(id, "ann", &text)).await;
                    want.insert(id.to_string(), Some(text));
                }
            } else {
                publish(&bus, "acme", c, deleted(id, "ann")).await;
                want.insert(id.to_string(), None);
            }
        }
    }
    drop(bus);

    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "child_indexer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode)
        .env(CHILD_DIR, dir.path())
        .env(CHILD_PREFIX, &prefix)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let reached = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, n)) = line.split_once(PROGRESS) {
                let n: i64 = n.trim().parse().unwrap();
                if n >= 300 {
                    return Some(n);
                }
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("the child did not index 300 records within {WAIT:?}"))
    .expect("the child exited before indexing 300 records");
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed, not finished: {status}");
    assert!(reached < 1_500, "killed while indexing ({reached} of 1500)");

    // Restart: the index converges to the expected state, nothing missing, nothing twice.
    let bus = open_bus(mode, dir.path(), &prefix).await;
    let w = start_engine(crash_cfg(dir.path(), &prefix), store, bus).await;
    w.caught_up().await;
    let g = w.engine.current().unwrap();
    let want2 = want.clone();
    tokio::task::spawn_blocking(move || {
        use tantivy::collector::Count;
        use tantivy::query::TermQuery;
        use tantivy::schema::IndexRecordOption;
        let searcher = g.reader.searcher();
        for (id, text) in &want2 {
            let key = caas_search::schema::message_key("acme", id);
            let q = TermQuery::new(
                tantivy::Term::from_field_text(g.fields.key, &key),
                IndexRecordOption::Basic,
            );
            let n = searcher.search(&q, &Count).unwrap();
            assert_eq!(n, usize::from(text.is_some()), "documents of message {id}");
            if let Some(t) = text {
                assert_eq!(g.lookup_message("acme", id).unwrap().unwrap().text, *t);
            }
        }
    })
    .await
    .unwrap();
    let survivors = want.values().filter(|t| t.is_some()).count();
    let docs = w.engine.current().unwrap().num_docs();
    assert_eq!(docs as usize, survivors, "no other document");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_indexing_on_the_embedded_log_converges() {
    kill_during_indexing_converges("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_indexing_on_kafka_converges() {
    kill_during_indexing_converges("kafka").await;
}

/// The child process of the crash tests: indexes until SIGKILL, printing its progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the kill_9 tests"]
async fn child_indexer() {
    let (Ok(mode), Ok(dir), Ok(prefix)) = (
        std::env::var(CHILD_MODE),
        std::env::var(CHILD_DIR),
        std::env::var(CHILD_PREFIX),
    ) else {
        panic!("child_indexer runs only as the child of the kill_9 tests (env not set)");
    };
    let dir = Path::new(&dir);
    let store: DynStore = Arc::new(SqliteStore::open(dir.join("store.db")).unwrap());
    let bus = open_bus(&mode, dir, &prefix).await;
    let w = start_engine(crash_cfg(dir, &prefix), store, bus).await;
    let mut last = -1;
    let started = Instant::now();
    let mut said = 0;
    loop {
        let p = progress(&w.engine);
        if p != last {
            println!("{PROGRESS} {p}");
            last = p;
        }
        if started.elapsed().as_secs() > said {
            said = started.elapsed().as_secs();
            eprintln!(
                "child: {p} {:?} {:?}",
                w.engine.status().state,
                w.engine.check()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
