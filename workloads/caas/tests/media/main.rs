//! The media workload through the real binary: `caas media` on a real S3 server (s3s-fs, from
//! `CAAS_TEST_S3_*`, which scripts/test.sh sets; required) configured through the environment
//! alone, `/v1/media` inside `caas standalone` on the local directory, and files attached to
//! messages over REST (what a message carries, which files are refused, edit, delete, forward).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attachments;
#[path = "../common/mod.rs"]
mod common;

use caas_domain::model::{
    Conversation, ConversationKind, Member, Quotas, Role, Tenant, TenantStatus, User,
};
use caas_domain::{ConversationId, TenantId, UserId};
use caas_kit::auth::{KeySet, TokenService};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const CAAS: &str = env!("CARGO_BIN_EXE_caas");

fn required(name: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!("{name} is not set: run scripts/test.sh, which starts s3s-fs and sets CAAS_TEST_S3_*")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("caas exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{base} not ready in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caas_media_serves_s3_configured_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let tenant = TenantId::parse("acme").unwrap();
    let conv = ConversationId::parse("general").unwrap();
    {
        let store = caas_store::sqlite::SqliteStore::open(dir.path().join("store.db")).unwrap();
        use caas_store::Store as _;
        store
            .create_tenant(&Tenant {
                id: tenant.clone(),
                name: "Acme".into(),
                status: TenantStatus::Active,
                quotas: Quotas::default(),
                features: vec![],
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
        for u in ["alice", "carol"] {
            store
                .upsert_user(&User {
                    tenant_id: tenant.clone(),
                    id: UserId::parse(u).unwrap(),
                    name: u.into(),
                    image_url: None,
                    data: json!({}),
                    created_at: now,
                    updated_at: now,
                    tokens_valid_after: None,
                })
                .await
                .unwrap();
        }
        let conversation = Conversation {
            tenant_id: tenant.clone(),
            id: conv.clone(),
            kind: ConversationKind::Group,
            name: None,
            topic: None,
            created_by: UserId::parse("alice").unwrap(),
            created_at: now,
            updated_at: now,
            archived_at: None,
            last_message: None,
            member_count: 0,
        };
        let member = Member {
            tenant_id: tenant.clone(),
            conversation_id: conv.clone(),
            user_id: UserId::parse("alice").unwrap(),
            role: Role::Owner,
            joined_at: now,
            last_read_position: -1,
            unread_count: 0,
        };
        store
            .create_conversation(&conversation, &[member])
            .await
            .unwrap();
    }
    let keys = dir.path().join("keys");
    KeySet::generate_into(&keys).unwrap();
    let tokens = TokenService::new(KeySet::load_dir(&keys, "").unwrap(), &Default::default());
    let token = |u: &str| {
        tokens
            .issue(&tenant, &UserId::parse(u).unwrap(), now)
            .unwrap()
            .token
    };
    let (api, internal, metrics) = (free_port(), free_port(), free_port());
    let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let mut child = Command::new(CAAS)
        .arg("media")
        .env("CAAS_STORE__KIND", "embedded")
        .env("CAAS_STORE__PATH", path("store.db"))
        .env("CAAS_BUS__KIND", "embedded")
        .env("CAAS_BUS__PATH", path("log.db"))
        .env("CAAS_AUTH__KEYS_DIR", path("keys"))
        .env("CAAS_MEDIA__METADATA_PATH", path("media.db"))
        .env(
            "CAAS_MEDIA__SIGNING_KEY",
            "a-test-signing-key-of-at-least-32-bytes",
        )
        .env("CAAS_MEDIA__BACKEND__KIND", "s3")
        .env(
            "CAAS_MEDIA__BACKEND__BUCKET",
            required("CAAS_TEST_S3_BUCKET"),
        )
        .env(
            "CAAS_MEDIA__BACKEND__ENDPOINT",
            required("CAAS_TEST_S3_ENDPOINT"),
        )
        .env(
            "CAAS_MEDIA__BACKEND__ACCESS_KEY",
            required("CAAS_TEST_S3_ACCESS_KEY"),
        )
        .env(
            "CAAS_MEDIA__BACKEND__SECRET_KEY",
            required("CAAS_TEST_S3_SECRET_KEY"),
        )
        .env("CAAS_MEDIA__BACKEND__ALLOW_HTTP", "true")
        .env(
            "CAAS_MEDIA__BACKEND__PREFIX",
            format!("bin-{}/", uuid::Uuid::now_v7().simple()),
        )
        .env("CAAS_SERVER__LISTEN", format!("127.0.0.1:{api}"))
        .env(
            "CAAS_SERVER__INTERNAL_LISTEN",
            format!("127.0.0.1:{internal}"),
        )
        .env(
            "CAAS_SERVER__METRICS_LISTEN",
            format!("127.0.0.1:{metrics}"),
        )
        .env("CAAS_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{api}");
    wait_ready(&http, &base, &mut child).await;
    let child = Proc(child);

    let detail: Value = http
        .get(format!("http://127.0.0.1:{internal}/ready/detail"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let checks: Vec<&str> = detail["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        checks.contains(&"media-objects") && checks.contains(&"media-metadata"),
        "{detail}"
    );

    let body = "hello from caas media\n".repeat(1000);
    let r = http
        .post(format!(
            "{base}/v1/media/conversations/general/files?name=hello.txt"
        ))
        .bearer_auth(token("alice"))
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let m: Value = r.json().await.unwrap();
    let id = m["id"].as_str().unwrap();
    let r = http
        .get(format!("{base}/v1/media/files/{id}/content"))
        .bearer_auth(token("alice"))
        .header("range", "bytes=6-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.text().await.unwrap(), "from");
    // Carol is not a member.
    let r = http
        .get(format!("{base}/v1/media/files/{id}/content"))
        .bearer_auth(token("carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A signed URL works without a token.
    let url: Value = http
        .post(format!("{base}/v1/media/files/{id}/url"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .get(format!("{base}{}", url["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), body);
    let text = http
        .get(format!("http://127.0.0.1:{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!("caas_media_bytes_in_total {}", body.len())),
        "{text}"
    );

    // SIGTERM: drains and exits cleanly.
    sigterm(&child.0);
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "caas media did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_media_next_to_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (api, internal, metrics) = (free_port(), free_port(), free_port());
    let mut child = Command::new(CAAS)
        .arg("standalone")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--internal-listen", &format!("127.0.0.1:{internal}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .env("CAAS_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{api}");
    wait_ready(&http, &base, &mut child).await;
    let _child = Proc(child);
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap();
    let mut tokens = std::collections::HashMap::new();
    for u in ["alice", "bob", "carol"] {
        let r: Value = http
            .post(format!("{base}/v1/token"))
            .json(
                &json!({"app_id": info["app_id"], "app_secret": info["app_secret"], "user_id": u}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.insert(u, r["token"].as_str().unwrap().to_string());
    }
    let r = http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(&tokens["alice"])
        .json(&json!({"kind": "group", "id": "files", "members": ["bob"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // 1 MiB: far above the API's body limit (256 KiB); the media stack streams it.
    let file: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = http
        .post(format!(
            "{base}/v1/media/conversations/files/files?name=data.bin"
        ))
        .bearer_auth(&tokens["alice"])
        .header("content-type", "application/octet-stream")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 201, "{text}");
    let m: Value = serde_json::from_str(&text).unwrap();
    let id = m["id"].as_str().unwrap();
    let r = http
        .get(format!("{base}/v1/media/files/{id}/content"))
        .bearer_auth(&tokens["bob"])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), file.as_slice());
    let r = http
        .get(format!("{base}/v1/media/files/{id}"))
        .bearer_auth(&tokens["carol"])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(dir.path().join("media-signing-key").is_file());
    assert!(dir.path().join("media.db").is_file());
    // The API's OpenAPI document describes the media and search routes too.
    let doc: Value = http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/media/conversations/{conversation_id}/files",
        "/v1/media/files/{media_id}/url",
        "/v1/media/signed/{tenant_id}/{media_id}",
        "/v1/search/messages",
        "/v1/conversations/{conversation_id}/messages",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} is not in the document"
        );
    }
}
