//! The distributed deployment shape through real processes and real servers: two `caas gateway`
//! processes, one `caas pipeline` and one `caas media` process sharing MongoDB, Kafka and Redis.
//! A message sent through gateway A is listed through gateway B (read-your-writes across pods),
//! a file uploaded through `caas media` travels with its message through Kafka into MongoDB, a
//! per-user rate limit holds across both gateways together, a retried send through the other
//! gateway is one message, and a suspension made through one gateway reaches the other.
//!
//! Needs `CAAS_TEST_MONGODB_URI`, `CAAS_TEST_KAFKA_BROKERS` and `CAAS_TEST_REDIS_URL`;
//! `scripts/test.sh` starts the servers and sets them. Without them the test fails (it does not
//! skip). Each run uses its own database, topic prefix, consumer group and Redis key prefix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{required_env, start, write_secrets};
use common::{Http, unique};
use serde_json::json;
use std::time::{Duration, Instant};

const PER_USER_PER_MINUTE: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_and_a_pipeline_share_mongodb_kafka_and_redis() {
    let mongo = required_env("CAAS_TEST_MONGODB_URI");
    let brokers = required_env("CAAS_TEST_KAFKA_BROKERS");
    let redis = required_env("CAAS_TEST_REDIS_URL");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = unique("e2e");
    let admin_token = write_secrets(dir.path());
    let env = [
        ("CAAS_STORE__URI", mongo.as_str()),
        ("CAAS_REDIS__URL", redis.as_str()),
    ];

    // The pipeline first (it creates the topics), then both gateways.
    let limits = format!("limits:\n  messagesPerMinutePerUser: {PER_USER_PER_MINUTE}\n");
    let pipeline = start(
        "pipeline",
        "pipeline",
        dir.path(),
        &run,
        &brokers,
        &limits,
        &env,
    )
    .await;
    let (gw_a, gw_b) = tokio::join!(
        start(
            "gateway-a",
            "gateway",
            dir.path(),
            &run,
            &brokers,
            &limits,
            &env
        ),
        start(
            "gateway-b",
            "gateway",
            dir.path(),
            &run,
            &brokers,
            &limits,
            &env
        ),
    );
    // The media API on its own (local directory for the bytes, metadata in MongoDB, which the
    // gateways read to check the files a message carries).
    let media_extra = format!(
        "media:\n  backend:\n    kind: local\n    dir: \"{}\"\n",
        dir.path().join("media").display()
    );
    let media_env = [
        ("CAAS_STORE__URI", mongo.as_str()),
        ("CAAS_REDIS__URL", redis.as_str()),
        (
            "CAAS_MEDIA__SIGNING_KEY",
            "a-distributed-test-signing-key-of-32-bytes",
        ),
    ];
    let media = start(
        "media",
        "media",
        dir.path(),
        &run,
        &brokers,
        &media_extra,
        &media_env,
    )
    .await;
    let a = Http::new(&gw_a.api, &gw_a.internal, &admin_token);
    let b = Http::new(&gw_b.api, &gw_b.internal, &admin_token);
    let files = Http::new(&media.api, &media.internal, &admin_token);

    // A tenant made through A is known to B (one store).
    let tenant = unique("dist-");
    let app = a.create_tenant(&tenant).await;
    let r = b
        .admin("GET", &format!("/admin/v1/tenants/{tenant}"), None)
        .await;
    assert_eq!(
        r.expect(200, "tenant through B")["tenant"]["id"],
        tenant.as_str()
    );
    // Tokens from either gateway work on both (shared keys).
    let alice = a.token(&app, "alice").await;
    let bob = b.token(&app, "bob").await;
    let carol = b.token(&app, "carol").await;
    let dave = a.token(&app, "dave").await;
    let g = "across";
    a.create_group(&alice, g, &["bob", "carol", "dave"]).await;

    // ---- Sent through A, listed through B (and the other way) ---------------------------------
    // The first publish: it needs the conversation-events topic, which `createTopics: true`
    // asks the workloads to create in this fresh Kafka.
    let r = a
        .post(
            &format!("/v1/conversations/{g}/messages"),
            &alice,
            json!({"text": "hello from A"}),
        )
        .await;
    let from_a = r
        .expect(
            201,
            "the first send through gateway A (a fresh Kafka with createTopics: true; the \
             gateway and pipeline logs say whether the topic exists)",
        )
        .clone();
    let listed = b.list_all(&bob, g).await;
    let ids: Vec<&str> = listed.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(
        ids,
        vec![from_a["message"]["id"].as_str().expect("id")],
        "B lists what A accepted: {listed:?}"
    );
    assert_eq!(
        listed[0]["position"], from_a["position"],
        "at its log position"
    );
    let from_b = b.send(&bob, g, "hello from B").await;
    let listed = a.list_all(&alice, g).await;
    let texts: Vec<&str> = listed.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, vec!["hello from A", "hello from B"], "{listed:?}");
    assert_eq!(listed[1]["id"], from_b["message"]["id"]);
    let r = b
        .get(
            &format!(
                "/v1/conversations/{g}/messages/{}",
                from_a["message"]["id"].as_str().expect("id")
            ),
            &carol,
        )
        .await;
    assert_eq!(
        r.expect(200, "get through B")["text"],
        "hello from A",
        "get through B"
    );

    // ---- A file uploaded through caas media, sent through A, listed through B ----------------
    let file = files
        .upload(&alice, g, "chart.png", "image/png", common::png(40, 30))
        .await
        .expect(201, "upload through caas media")
        .clone();
    let file_id = file["id"].as_str().expect("media id");
    let sent = a
        .send_files(&alice, g, "the chart", &[file_id])
        .await
        .expect(201, "send with a file through A")
        .clone();
    let listed = b.list_all(&bob, g).await;
    let got = listed
        .iter()
        .find(|x| x["id"] == sent["message"]["id"])
        .unwrap_or_else(|| panic!("the message with a file is listed through B: {listed:?}"));
    let attachments = got["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1, "{got}");
    assert_eq!(attachments[0], sent["message"]["attachments"][0], "{got}");
    assert_eq!(
        (
            &attachments[0]["id"],
            &attachments[0]["name"],
            &attachments[0]["content_type"],
            &attachments[0]["size"],
            &attachments[0]["width"],
            &attachments[0]["height"],
            &attachments[0]["has_thumbnail"],
        ),
        (
            &file["id"],
            &file["name"],
            &json!("image/png"),
            &file["size"],
            &json!(40),
            &json!(30),
            &json!(true),
        ),
        "{got}"
    );
    // Bob's file cannot ride on Alice's message, through either gateway.
    let bobs = files
        .upload_id(&bob, g, "bob.txt", "text/plain", b"bob's notes\n".to_vec())
        .await;
    for (name, via) in [("A", &a), ("B", &b)] {
        via.send_files(&alice, g, "not mine", &[bobs.as_str()])
            .await
            .expect_error(400, "invalid_attachment", &format!("through {name}"));
    }

    // ---- One per-user limit across both gateways -------------------------------------------
    // 10 per minute lets a burst of 10 through, then one every 6 s: the 10 sends must finish
    // well within 6 s for the 11th to be refused, so time them.
    let started = Instant::now();
    for n in 0..PER_USER_PER_MINUTE {
        let via = if n % 2 == 0 { &a } else { &b };
        let r = via
            .post(
                &format!("/v1/conversations/{g}/messages"),
                &carol,
                json!({"text": format!("carol {n}")}),
            )
            .await;
        r.expect(201, &format!("carol's send {n} of {PER_USER_PER_MINUTE}"));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "ten sends took {took:?}: too slow to test a limit of 10 per minute"
    );
    for (name, via) in [("A", &a), ("B", &b)] {
        let r = via
            .post(
                &format!("/v1/conversations/{g}/messages"),
                &carol,
                json!({"text": "one too many"}),
            )
            .await;
        r.expect_error(
            429,
            "rate_limited",
            &format!("send {} through {name}", PER_USER_PER_MINUTE + 1),
        );
        let retry_after: u64 = r
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers));
        assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    }
    // Other users are not limited by carol's budget.
    b.send(&alice, g, "alice is not limited").await;
    let listed = b.list_all(&alice, g).await;
    let carols = listed.iter().filter(|m| m["sender_id"] == "carol").count();
    assert_eq!(
        carols, PER_USER_PER_MINUTE,
        "every accepted send of carol is listed"
    );

    // ---- A retried send through the other gateway is one message ------------------------------
    let first = a
        .post(
            &format!("/v1/conversations/{g}/messages"),
            &dave,
            json!({"text": "once", "client_msg_id": "dist-1"}),
        )
        .await;
    let first = first.expect(201, "dave through A").clone();
    let again = b
        .post(
            &format!("/v1/conversations/{g}/messages"),
            &dave,
            json!({"text": "once", "client_msg_id": "dist-1"}),
        )
        .await;
    let again = again.expect(201, "dave's retry through B");
    assert_eq!(again["message"]["id"], first["message"]["id"], "{again}");
    assert_eq!(again["position"], first["position"], "{again}");
    let listed = b.list_all(&dave, g).await;
    assert_eq!(
        listed
            .iter()
            .filter(|m| m["client_msg_id"] == "dist-1")
            .count(),
        1,
        "the retried send is listed once"
    );

    // ---- A suspension through A reaches B (revocation cache: 1 s) -----------------------------
    a.admin("POST", &format!("/admin/v1/tenants/{tenant}/suspend"), None)
        .await
        .expect(200, "suspend through A");
    a.get("/v1/conversations", &bob).await.expect_error(
        401,
        "tenant_suspended",
        "through A at once",
    );
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let r = b.get("/v1/conversations", &bob).await;
        if r.status == 401 {
            r.expect_error(401, "tenant_suspended", "through B");
            break;
        }
        r.expect(200, "through B before its cache expires");
        assert!(
            Instant::now() < end,
            "B still accepts a suspended tenant's token after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for p in [&pipeline, &gw_a, &gw_b, &media] {
        p.assert_no_panics();
    }
}
