//! The behavioural suite ([`caas_store::suite`]) on the MongoDB adapter, against the server at
//! `CAAS_TEST_MONGODB_URI` (database `CAAS_TEST_MONGODB_DB`, default `caas_store_suite`).
//!
//! The variable is required: without it these tests fail rather than pass silently.
//! `scripts/test.sh` starts a server and sets it; by hand, for example:
//! `nx-27017 --db /tmp/nx-test.db --host 127.0.0.1 -p 27018` and
//! `CAAS_TEST_MONGODB_URI=mongodb://127.0.0.1:27018`. Every run uses tenants of its own, so a
//! database may be reused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use caas_store::mongo::MongoStore;
use caas_store::{Store, StoreError};

fn uri() -> String {
    match std::env::var("CAAS_TEST_MONGODB_URI") {
        Ok(uri) if !uri.trim().is_empty() => uri,
        _ => panic!(
            "CAAS_TEST_MONGODB_URI is not set: the MongoDB adapter is tested against a real \
             server. Run scripts/test.sh (it starts one and sets the variable), or start one \
             yourself (e.g. `nx-27017 --db /tmp/nx-test.db --host 127.0.0.1 -p 27018`) and \
             set CAAS_TEST_MONGODB_URI=mongodb://127.0.0.1:27018"
        ),
    }
}

fn database() -> String {
    std::env::var("CAAS_TEST_MONGODB_DB").unwrap_or_else(|_| "caas_store_suite".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_store_passes_the_suite() {
    let store = MongoStore::connect(&uri(), &database()).await.unwrap();
    caas_store::suite::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_twice_keeps_the_indexes_and_data() {
    let uri = uri();
    let first = MongoStore::connect(&uri, &database()).await.unwrap();
    caas_store::suite::tenants(&first).await;
    let second = MongoStore::connect(&uri, &database()).await.unwrap();
    caas_store::suite::credentials(&second).await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Nothing listens on port 9 (discard) here; the short timeout keeps the test fast.
    let err = MongoStore::connect(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300&connectTimeoutMS=300",
        "caas_unreachable",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn ping_reaches_the_server() {
    let store = MongoStore::connect(&uri(), &database()).await.unwrap();
    store.ping().await.unwrap();
}

/// A crash inside `apply` (white box: the effects of a batch are rolled back by hand to where a
/// crash would have left them, then the batch is applied again). A message already inserted by
/// the crashed run, or already marked deleted, must still get its unread and preview
/// follow-ups on the replay — exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finishes_a_batch_that_crashed_half_way() {
    use caas_domain::event::{ConversationEvent, MessageCreated, MessageDeleted};
    use caas_domain::model::TenantStatus;
    use caas_domain::model::{Conversation, ConversationKind, Member, Quotas, Role, Tenant};
    use caas_domain::{ConversationId, MessageId, TenantId, UserId};
    use caas_store::LogEvent;
    use mongodb::bson::{Document, doc};

    let (uri, db_name) = (uri(), database());
    let store = MongoStore::connect(&uri, &db_name).await.unwrap();
    let raw = mongodb::Client::with_uri_str(&uri)
        .await
        .unwrap()
        .database(&db_name);
    let t = TenantId::parse(format!("crash-{}", uuid::Uuid::new_v4().simple())).unwrap();
    let now = time::OffsetDateTime::UNIX_EPOCH;
    store
        .create_tenant(&Tenant {
            id: t.clone(),
            name: "crash".into(),
            status: TenantStatus::Active,
            quotas: Quotas::default(),
            features: Vec::new(),
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    let conv = ConversationId::parse("room").unwrap();
    let member = |u: &str| Member {
        tenant_id: t.clone(),
        conversation_id: conv.clone(),
        user_id: UserId::parse(u).unwrap(),
        role: Role::Member,
        joined_at: now,
        last_read_position: -1,
        unread_count: 0,
    };
    store
        .create_conversation(
            &Conversation {
                tenant_id: t.clone(),
                id: conv.clone(),
                kind: ConversationKind::Group,
                name: None,
                topic: None,
                created_by: UserId::parse("ann").unwrap(),
                created_at: now,
                updated_at: now,
                archived_at: None,
                last_message: None,
                member_count: 0,
            },
            &[member("ann"), member("bob")],
        )
        .await
        .unwrap();
    let ev = |offset: i64, event: ConversationEvent| LogEvent {
        partition: 0,
        offset,
        tenant_id: t.clone(),
        conversation_id: conv.clone(),
        event,
    };
    let post = |offset: i64, id: MessageId| {
        ev(
            offset,
            ConversationEvent::MessageCreated(MessageCreated {
                message_id: id,
                sender_id: UserId::parse("ann").unwrap(),
                text: format!("m{offset}"),
                html: String::new(),
                mentions: Vec::new(),
                links: Vec::new(),
                hashtags: Vec::new(),
                parent_id: None,
                client_msg_id: None,
                forwarded_from: None,
                attachments: Vec::new(),
                created_at: now,
            }),
        )
    };
    let consumer = format!("crash-{}", uuid::Uuid::new_v4().simple());
    let (m1, m2, m3) = (
        MessageId::generate(),
        MessageId::generate(),
        MessageId::generate(),
    );
    store
        .apply(&consumer, &[post(1, m1), post(2, m2)])
        .await
        .unwrap();
    let bob = UserId::parse("bob").unwrap();
    let unread = || async {
        store
            .get_member(&t, &conv, &bob)
            .await
            .unwrap()
            .unwrap()
            .unread_count
    };
    assert_eq!(unread().await, 2);

    // The conversation, the members and the progress as they were before a batch: restoring
    // them after the batch leaves only its message writes behind, as a crash would.
    let conv_key = format!("{t}/room");
    let snapshot = || async {
        let c = raw
            .collection::<Document>("conversations")
            .find_one(doc! {"_id": &conv_key})
            .await
            .unwrap()
            .unwrap();
        let m: Vec<Document> = futures::TryStreamExt::try_collect(
            raw.collection::<Document>("members")
                .find(doc! {"tenant_id": t.as_str(), "conversation_id": "room"})
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        (c, m)
    };
    let crash = |(c, m): (Document, Vec<Document>)| async {
        raw.collection::<Document>("conversations")
            .replace_one(doc! {"_id": &conv_key}, c)
            .await
            .unwrap();
        for d in m {
            let id = d.get_str("_id").unwrap().to_string();
            raw.collection::<Document>("members")
                .replace_one(doc! {"_id": id}, d)
                .await
                .unwrap();
        }
        raw.collection::<Document>("progress")
            .delete_many(doc! {"consumer": &consumer})
            .await
            .unwrap();
    };

    // Crash after the bulk insert of m3: the replay must count it and make it the preview.
    let before = snapshot().await;
    store.apply(&consumer, &[post(3, m3)]).await.unwrap();
    assert_eq!(unread().await, 3);
    crash(before).await;
    assert_eq!(unread().await, 2, "the crash undid the follow-ups");
    let replay = store.apply(&consumer, &[post(3, m3)]).await.unwrap();
    assert_eq!(replay.duplicates, 1, "the message was stored before");
    assert_eq!(unread().await, 3, "the replay ran the follow-ups");
    let c = store.get_conversation(&t, &conv).await.unwrap().unwrap();
    assert_eq!(c.last_message.unwrap().id, m3);
    store.apply(&consumer, &[post(3, m3)]).await.unwrap();
    assert_eq!(unread().await, 3);

    // Crash after m1 was marked deleted, before the unread follow-up.
    let delete = ev(
        4,
        ConversationEvent::MessageDeleted(MessageDeleted {
            message_id: m1,
            deleted_by: UserId::parse("ann").unwrap(),
            deleted_at: now,
        }),
    );
    let before = snapshot().await;
    store
        .apply(&consumer, std::slice::from_ref(&delete))
        .await
        .unwrap();
    assert_eq!(unread().await, 2);
    crash(before).await;
    assert_eq!(unread().await, 3);
    store
        .apply(&consumer, std::slice::from_ref(&delete))
        .await
        .unwrap();
    assert_eq!(
        unread().await,
        2,
        "the replay ran the unread follow-up of the delete"
    );
    store
        .apply(&format!("{consumer}-again"), &[delete])
        .await
        .unwrap();
    assert_eq!(unread().await, 2, "once");
}
