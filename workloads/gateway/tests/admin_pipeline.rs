//! The admin API's pipeline routes over HTTP (the router in-process, `tower::oneshot`), with
//! the real pipeline running on the embedded log and store: dead letters are listed,
//! inspected, replayed (stored once after the fix; a second replay is a conflict) and
//! discarded; tenant webhooks are set (secret generated and shown once), read without the
//! secret, validated and deleted. Every route needs the admin token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use caas_bus::embedded::EmbeddedLog;
use caas_bus::{Envelope, topics};
use caas_config::{Config, PipelineConfig};
use caas_domain::event::{ConversationEvent, MessageCreated, SCHEMA_VERSION};
use caas_domain::model::{
    Conversation, ConversationKind, Member, Quotas, Role, Tenant, TenantStatus,
};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use caas_kit::auth::{Authenticator, KeySet, TokenService};
use caas_kit::metrics::Metrics;
use caas_store::sqlite::SqliteStore;
use caas_store::{DeadLetterQuery, MessagePage, Store, Thread};
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tower::ServiceExt as _;

const TOKEN: &str = "adm_test_token_0123456789";

fn t() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn member(u: &str) -> Member {
    Member {
        tenant_id: t(),
        conversation_id: ConversationId::parse("room").unwrap(),
        user_id: UserId::parse(u).unwrap(),
        role: Role::Member,
        joined_at: OffsetDateTime::now_utc(),
        last_read_position: -1,
        unread_count: 0,
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(tok) = token {
        req = req.header("authorization", format!("Bearer {tok}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, v)
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_webhooks_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
    let log = Arc::new(EmbeddedLog::open(dir.path().join("log.db"), 2).unwrap());
    let now = OffsetDateTime::now_utc();
    store
        .create_tenant(&Tenant {
            id: t(),
            name: "Acme".into(),
            status: TenantStatus::Active,
            quotas: Quotas::default(),
            features: vec![],
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    let room = ConversationId::parse("room").unwrap();
    store
        .create_conversation(
            &Conversation {
                tenant_id: t(),
                id: room.clone(),
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
            &[member("ann")],
        )
        .await
        .unwrap();

    let keys_dir = dir.path().join("keys");
    let kid = KeySet::generate_into(&keys_dir).unwrap();
    let cfg = Config::default();
    let tokens = Arc::new(TokenService::new(
        KeySet::load_dir(&keys_dir, &kid).unwrap(),
        &cfg.auth,
    ));
    let state = caas_gateway::AppState {
        store: store.clone(),
        bus: log.clone(),
        auth: Arc::new(Authenticator::new(
            tokens,
            store.clone(),
            Duration::from_secs(1),
        )),
        limiter: Arc::new(caas_kit::ratelimit::MemoryLimiter::new()),
        dedupe: Arc::new(caas_kit::dedupe::MemoryDedupe::new()),
        config: Arc::new(cfg),
        media: Arc::new(
            caas_media::repo::sqlite::SqliteRepo::open(dir.path().join("media.db")).unwrap(),
        ),
        admin_token: Arc::new(TOKEN.into()),
    };
    let app = caas_gateway::internal_router(state);

    // The pipeline, and two messages from eve, who is not a member: two dead letters.
    let stop = caas_kit::shutdown::CancellationToken::new();
    let pipeline = tokio::spawn(caas_pipeline::run(
        store.clone(),
        log.clone(),
        PipelineConfig {
            batch_linger_ms: 1,
            ..PipelineConfig::default()
        },
        caas_pipeline::PipelineMetrics::new(&Metrics::new()),
        Arc::new(caas_pipeline::PipelineHealth::default()),
        stop.clone(),
    ));
    let ids = [MessageId::generate(), MessageId::generate()];
    for (i, id) in ids.iter().enumerate() {
        let env = Envelope {
            v: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            tenant_id: t(),
            key: "room".into(),
            correlation_id: format!("corr-{i}"),
            occurred_at: now,
            event: ConversationEvent::MessageCreated(MessageCreated {
                message_id: *id,
                sender_id: UserId::parse("eve").unwrap(),
                text: format!("hello {i}"),
                html: String::new(),
                mentions: vec![],
                links: vec![],
                hashtags: vec![],
                parent_id: None,
                client_msg_id: None,
                forwarded_from: None,
                attachments: Vec::new(),
                created_at: now,
            }),
        };
        env.publish(log.as_ref(), topics::CONVERSATION_EVENTS, "message.created")
            .await
            .unwrap();
    }
    wait_until("two dead letters", || async {
        store
            .list_dead_letters(&DeadLetterQuery {
                limit: 10,
                ..DeadLetterQuery::default()
            })
            .await
            .unwrap()
            .len()
            == 2
    })
    .await;

    // The admin token is required.
    let (s, v) = call(&app, "GET", "/admin/v1/dead-letters", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = call(
        &app,
        "GET",
        "/admin/v1/dead-letters",
        Some("wrong-token-xxxxxxxx"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // List (pending by default, per tenant) and inspect.
    let (s, v) = call(
        &app,
        "GET",
        "/admin/v1/dead-letters?tenant_id=acme",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let list = v["dead_letters"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter()
            .all(|d| d["code"] == "not_member" && d["stage"] == "authorize")
    );
    let (first, second) = (
        list[0]["id"].as_str().unwrap(),
        list[1]["id"].as_str().unwrap(),
    );
    let (s, one) = call(
        &app,
        "GET",
        &format!("/admin/v1/dead-letters/{first}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["topic"], "conversation-events");
    assert_eq!(one["status"], "pending");
    assert_eq!(one["attempts"], 1);
    assert!(
        one["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-correlation-id")
    );
    let (s, v) = call(
        &app,
        "GET",
        "/admin/v1/dead-letters?tenant_id=other",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (s, v["dead_letters"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    let (s, v) = call(
        &app,
        "GET",
        "/admin/v1/dead-letters?status=bogus",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = call(
        &app,
        "GET",
        "/admin/v1/dead-letters/dl_missing",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(
        &app,
        "GET",
        "/admin/v1/dead-letters?limit=1",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (s, v["dead_letters"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    assert_eq!(v["next_after"], first);

    // Fix (eve joins), replay the first: stored once; a second replay is a conflict.
    store.add_member(&member("eve")).await.unwrap();
    let (s, v) = call(
        &app,
        "POST",
        &format!("/admin/v1/dead-letters/{first}/replay"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dead_letter"]["status"], "replayed");
    assert_eq!(v["topic"], "conversation-events");
    let (s, v) = call(
        &app,
        "POST",
        &format!("/admin/v1/dead-letters/{first}/replay"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "conflict", "{v}");
    let first_id = ids[usize::from(one["payload"].as_str().unwrap().contains("hello 1"))];
    wait_until("the replayed message stored", || async {
        store
            .list_messages(
                &t(),
                &room,
                Thread::TopLevel,
                MessagePage::Latest { limit: 10 },
            )
            .await
            .unwrap()
            .iter()
            .any(|m| m.id == first_id)
    })
    .await;
    // Discard the second.
    let (s, v) = call(
        &app,
        "POST",
        &format!("/admin/v1/dead-letters/{second}/discard"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("discarded"))
    );
    let (s, _) = call(
        &app,
        "POST",
        &format!("/admin/v1/dead-letters/{second}/discard"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, v) = call(&app, "GET", "/admin/v1/dead-letters", Some(TOKEN), None).await;
    assert_eq!(
        v["dead_letters"].as_array().unwrap().len(),
        0,
        "none pending: {v}"
    );
    let (_, v) = call(
        &app,
        "GET",
        "/admin/v1/dead-letters?status=all",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(v["dead_letters"].as_array().unwrap().len(), 2);
    let msgs = store
        .list_messages(
            &t(),
            &room,
            Thread::TopLevel,
            MessagePage::Latest { limit: 10 },
        )
        .await
        .unwrap();
    assert_eq!(msgs.len(), 1, "only the replayed message, once");

    // Webhooks.
    let hook = "/admin/v1/tenants/acme/webhook";
    let (s, v) = call(
        &app,
        "PUT",
        hook,
        Some(TOKEN),
        Some(json!({"url": "ftp://x"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(
        &app,
        "PUT",
        hook,
        Some(TOKEN),
        Some(json!({"url": "https://hooks.example.com/caas", "events": ["loud"]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(
        &app,
        "PUT",
        hook,
        Some(TOKEN),
        Some(json!({"url": "https://hooks.example.com/caas", "events": ["mention"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 16,
        "{secret}"
    );
    assert_eq!(
        store.get_webhook(&t()).await.unwrap().unwrap().secret,
        secret
    );
    let (s, v) = call(&app, "GET", hook, Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.get("secret").is_none(), "never shown again: {v}");
    assert_eq!(v["events"], json!(["mention"]));
    let (s, _) = call(
        &app,
        "PUT",
        hook,
        Some(TOKEN),
        Some(json!({"url": "https://hooks.example.com/v2", "secret": "a-secret-of-my-own"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        store.get_webhook(&t()).await.unwrap().unwrap().secret,
        "a-secret-of-my-own"
    );
    let (s, _) = call(
        &app,
        "PUT",
        "/admin/v1/tenants/nobody/webhook",
        Some(TOKEN),
        Some(json!({"url": "https://x.example"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&app, "DELETE", hook, Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&app, "DELETE", hook, Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    stop.cancel();
    pipeline.await.unwrap().unwrap();
}
