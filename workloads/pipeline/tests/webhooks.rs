//! Webhook delivery to a local receiver (a real HTTP server in the test): signatures verify
//! with the tenant's secret, 5xx answers are retried through the retry topics, and after the
//! configured attempts the delivery becomes a dead letter; a replay after the receiver is fixed
//! delivers it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use caas_bus::embedded::EmbeddedLog;
use caas_config::{PipelineConfig, WebhookConfig};
use caas_domain::MessageId;
use caas_domain::model::TenantStatus;
use caas_pipeline::webhook;
use caas_store::sqlite::SqliteStore;
use caas_store::{DeadLetterQuery, Store, TenantWebhook};
use common::*;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const SECRET: &str = "whsec_test_0123456789";

#[derive(Clone, Default)]
struct Receiver {
    /// Answer 500 to this many requests first, then `ok_status`.
    fail_first: Arc<AtomicU32>,
    ok_status: Arc<AtomicU32>,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes, u16)>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = if r
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        500
    } else {
        r.ok_status.load(Ordering::SeqCst) as u16
    };
    r.got.lock().push((headers, body, status));
    StatusCode::from_u16(status).unwrap()
}

async fn serve(r: Receiver) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new().route("/hook", post(receive)).with_state(r);
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/hook")
}

fn cfg(max_attempts: u32) -> PipelineConfig {
    PipelineConfig {
        batch_max_events: 64,
        batch_linger_ms: 1,
        retry_delays_ms: vec![20, 40],
        webhook: WebhookConfig {
            max_attempts,
            timeout_ms: 5_000,
            ..WebhookConfig::default()
        },
        ..PipelineConfig::default()
    }
}

async fn setup(
    events: &[&str],
    url: &str,
) -> (tempfile::TempDir, Arc<SqliteStore>, Arc<EmbeddedLog>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
    let log = Arc::new(EmbeddedLog::open(dir.path().join("log.db"), 2).unwrap());
    tenant(store.as_ref(), &tid("acme"), TenantStatus::Active).await;
    conversation(store.as_ref(), &tid("acme"), &cid("room"), &["ann", "ben"]).await;
    let now = time::OffsetDateTime::now_utc();
    store
        .put_webhook(&TenantWebhook {
            tenant_id: tid("acme"),
            url: url.into(),
            secret: SECRET.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    (dir, store, log)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_5xx_is_retried_until_delivered() {
    let r = Receiver::default();
    r.fail_first.store(2, Ordering::SeqCst);
    r.ok_status.store(200, Ordering::SeqCst);
    let url = serve(r.clone()).await;
    let (_dir, store, log) = setup(&[], &url).await;
    let running = start(store.clone(), log.clone(), cfg(4));

    let id = MessageId::generate();
    publish(
        log.as_ref(),
        &tid("acme"),
        &cid("room"),
        created(id, "ann", "hi @ben", &["ben"]),
    )
    .await;

    // Two notifications (the message, the mention), each delivered once with a 2xx.
    let delivered = wait_for("both deliveries", Duration::from_secs(30), || async {
        let got = r.got.lock();
        let ok: Vec<String> = got
            .iter()
            .filter(|(_, _, s)| *s == 200)
            .map(|(h, _, _)| header(h, webhook::HEADER_DELIVERY).to_string())
            .collect();
        (ok.len() >= 2).then_some(ok)
    })
    .await;
    let mut delivered = delivered;
    delivered.sort();
    assert_eq!(delivered, vec![id.to_string(), format!("{id}:ben")]);

    let got = r.got.lock().clone();
    assert_eq!(got.len(), 4, "two failed attempts, two deliveries");
    for (h, body, _) in &got {
        let sig = header(h, webhook::HEADER_SIGNATURE);
        assert!(
            webhook::verify(SECRET, sig, body),
            "signature {sig} verifies"
        );
        assert!(!webhook::verify("another-secret-xx", sig, body));
        let n: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(n["tenant_id"], "acme");
        assert_eq!(n["message_id"], id.to_string());
        assert_eq!(
            header(h, webhook::HEADER_EVENT),
            n["kind"].as_str().unwrap()
        );
    }
    let attempts: Vec<&str> = got
        .iter()
        .map(|(h, _, _)| header(h, webhook::HEADER_ATTEMPT))
        .collect();
    assert!(
        attempts.contains(&"2"),
        "a retry was attempt 2: {attempts:?}"
    );
    assert!(
        running
            .metrics
            .retried
            .with_label_values(&["webhook", "1"])
            .get()
            >= 1
    );
    // The pipeline counts a delivery once the receiver's answer is back.
    wait_for(
        "both deliveries counted",
        Duration::from_secs(30),
        || async {
            (running
                .metrics
                .webhook_deliveries
                .with_label_values(&["delivered"])
                .get()
                == 2)
                .then_some(())
        },
    )
    .await;
    assert!(
        store
            .list_dead_letters(&DeadLetterQuery {
                limit: 10,
                ..DeadLetterQuery::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_ends_in_the_dead_letters_after_the_configured_attempts() {
    let r = Receiver::default();
    r.fail_first.store(u32::MAX, Ordering::SeqCst);
    r.ok_status.store(200, Ordering::SeqCst);
    let url = serve(r.clone()).await;
    // Only mentions are wanted: the message event is not delivered at all.
    let (_dir, store, log) = setup(&["mention"], &url).await;
    let running = start(store.clone(), log.clone(), cfg(3));

    let id = MessageId::generate();
    publish(
        log.as_ref(),
        &tid("acme"),
        &cid("room"),
        created(id, "ann", "@ben look", &["ben"]),
    )
    .await;

    let dl = wait_for("the dead letter", Duration::from_secs(30), || async {
        store
            .list_dead_letters(&DeadLetterQuery {
                limit: 10,
                ..DeadLetterQuery::default()
            })
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        (dl.stage.as_str(), dl.code.as_str(), dl.attempts),
        ("webhook", "webhook_server_error", 3)
    );
    assert_eq!(dl.topic, caas_bus::topics::NOTIFICATIONS);
    assert!(dl.reason.contains("500"), "{}", dl.reason);
    assert!(
        dl.headers
            .iter()
            .all(|(k, _)| !k.starts_with("caas-retry-")),
        "retry bookkeeping is not part of the original headers: {:?}",
        dl.headers
    );
    {
        let got = r.got.lock();
        assert_eq!(got.len(), 3, "exactly the configured attempts");
        let attempts: Vec<&str> = got
            .iter()
            .map(|(h, _, _)| header(h, webhook::HEADER_ATTEMPT))
            .collect();
        assert_eq!(attempts, ["1", "2", "3"]);
        assert!(
            got.iter()
                .all(|(h, _, _)| header(h, webhook::HEADER_DELIVERY) == format!("{id}:ben"))
        );
    }

    // The receiver is fixed; the operator replays the dead letter: delivered once more.
    r.fail_first.store(0, Ordering::SeqCst);
    caas_pipeline::dead_letter::replay(store.as_ref(), log.as_ref(), &dl.id)
        .await
        .unwrap();
    wait_for("the replayed delivery", Duration::from_secs(30), || async {
        r.got.lock().iter().any(|(_, _, s)| *s == 200).then_some(())
    })
    .await;
    running.stop().await;
    let got = r.got.lock();
    assert_eq!(got.iter().filter(|(_, _, s)| *s == 200).count(), 1);
    assert_eq!(got.len(), 4);
}
