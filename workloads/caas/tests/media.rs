//! The media workload through the real binary: `caas media` on a real S3 server (s3s-fs, from
//! `CAAS_TEST_S3_*`, which scripts/test.sh sets; required) configured through the environment
//! alone, `/v1/media` inside `caas standalone` on the local directory, and files attached to
//! messages over REST (what a message carries, which files are refused, edit, delete, forward).

#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// The attachment `id` as a message carries it, checked against the file's metadata.
#[track_caller]
fn assert_attachment(got: &Value, file: &Value) {
    assert_eq!(got["id"], file["id"], "{got}");
    assert_eq!(got["name"], file["name"], "{got}");
    assert_eq!(got["content_type"], file["content_type"], "{got}");
    assert_eq!(got["size"], file["size"], "{got}");
    assert_eq!(got["width"], file["width"], "{got}");
    assert_eq!(got["height"], file["height"], "{got}");
    assert_eq!(
        got["has_thumbnail"].as_bool(),
        Some(file["thumbnail"].is_object()),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_files_uploaded_to_their_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let sa = common::Standalone::start(dir.path(), &[]).await;
    let http = sa.http.clone();
    let acme = http.create_tenant("files-acme").await;
    let other = http.create_tenant("files-other").await;
    let ann = http.token(&acme, "ann").await;
    let bob = http.token(&acme, "bob").await;
    let carol = http.token(&acme, "carol").await;
    let ann_elsewhere = http.token(&other, "ann").await;
    http.create_group(&ann, "room", &["bob"]).await;
    http.create_group(&ann, "side", &["bob"]).await;
    http.create_group(&ann_elsewhere, "room", &[]).await;

    // Ann uploads a picture and a text file to the room.
    let picture = http
        .upload(&ann, "room", "cat.png", "image/png", common::png(64, 48))
        .await
        .expect(201, "upload cat.png")
        .clone();
    assert!(picture["thumbnail"].is_object(), "{picture}");
    let notes = http
        .upload(
            &ann,
            "room",
            "notes.txt",
            "text/plain",
            b"shopping list\n".to_vec(),
        )
        .await
        .expect(201, "upload notes.txt")
        .clone();
    let (pic_id, notes_id) = (
        picture["id"].as_str().unwrap(),
        notes["id"].as_str().unwrap(),
    );

    // Sent with text and both files: the answer, the list and the single message carry them.
    let sent = http
        .send_files(&ann, "room", "look at this", &[pic_id, notes_id])
        .await
        .expect(201, "send with files")
        .clone();
    let a = sent["message"]["attachments"].as_array().unwrap();
    assert_eq!(a.len(), 2, "{sent}");
    assert_attachment(&a[0], &picture);
    assert_attachment(&a[1], &notes);
    assert_eq!(a[0]["width"], 64);
    assert_eq!(a[0]["height"], 48);
    assert_eq!(a[0]["has_thumbnail"], true);
    assert_eq!(a[1]["content_type"], "text/plain");
    assert!(
        a[1].get("width").is_none(),
        "no dimensions for text: {}",
        a[1]
    );
    let id = sent["message"]["id"].as_str().unwrap().to_string();
    let listed = http.list_all(&bob, "room").await;
    let m = listed.iter().find(|m| m["id"] == id.as_str()).unwrap();
    assert_eq!(m["attachments"], sent["message"]["attachments"], "{m}");
    let one = http
        .get(&format!("/v1/conversations/room/messages/{id}"), &bob)
        .await;
    assert_eq!(
        one.expect(200, "get")["attachments"],
        sent["message"]["attachments"]
    );
    // Bob, a member, reads the file the message names.
    let r = http.get(&format!("/v1/media/files/{pic_id}"), &bob).await;
    r.expect(200, "bob reads the attached file's metadata");

    // Files only, no text: fine. No text and no files: text_empty.
    let only = http
        .upload(&ann, "room", "only.png", "image/png", common::png(8, 8))
        .await
        .expect(201, "upload only.png")
        .clone();
    let only_id = only["id"].as_str().unwrap();
    let files_only = http
        .send_files(&ann, "room", "", &[only_id])
        .await
        .expect(201, "files-only message")
        .clone();
    assert_eq!(files_only["message"]["text"], "");
    assert_attachment(&files_only["message"]["attachments"][0], &only);
    http.send_files(&ann, "room", "", &[]).await.expect_error(
        400,
        "text_empty",
        "no text, no files",
    );
    http.send_files(&ann, "room", "   ", &[])
        .await
        .expect_error(400, "text_empty", "blank text, no files");

    // Refusals: one code for every reason.
    let bobs = http
        .upload_id(&bob, "room", "bob.txt", "text/plain", b"bob's\n".to_vec())
        .await;
    let side = http
        .upload_id(&ann, "side", "side.txt", "text/plain", b"side\n".to_vec())
        .await;
    let elsewhere = http
        .upload_id(
            &ann_elsewhere,
            "room",
            "other.txt",
            "text/plain",
            b"other tenant\n".to_vec(),
        )
        .await;
    let deleted = http
        .upload_id(&ann, "room", "gone.txt", "text/plain", b"gone\n".to_vec())
        .await;
    http.delete(&format!("/v1/media/files/{deleted}"), &ann)
        .await
        .expect(204, "delete a file");
    let mut eleven = Vec::new();
    for n in 0..11 {
        eleven.push(
            http.upload_id(
                &ann,
                "room",
                &format!("f{n}.txt"),
                "text/plain",
                format!("file {n}\n").into_bytes(),
            )
            .await,
        );
    }
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    let refusals: [(&str, Vec<&str>); 8] = [
        ("another user's file", vec![bobs.as_str()]),
        ("a file of another conversation", vec![side.as_str()]),
        ("another tenant's file", vec![elsewhere.as_str()]),
        ("a deleted file", vec![deleted.as_str()]),
        ("the same file twice", vec![pic_id, pic_id]),
        ("eleven files", eleven.clone()),
        ("a garbage id", vec!["not-a-media-id"]),
        ("a path as id", vec!["../../etc/passwd"]),
    ];
    for (what, ids) in &refusals {
        for text in ["with text", ""] {
            http.send_files(&ann, "room", text, ids).await.expect_error(
                400,
                "invalid_attachment",
                what,
            );
        }
    }
    // The same file of another conversation, from a member of both, in the right one: fine.
    http.send_files(&ann, "side", "", &[side.as_str()])
        .await
        .expect(201, "the file in its own conversation");
    // Ten is the most.
    http.send_files(&ann, "room", "ten files", &eleven[..10])
        .await
        .expect(201, "ten files");
    // Carol is in no conversation here: not_found, as for any send.
    http.send_files(&carol, "room", "x", &[pic_id])
        .await
        .expect_error(404, "not_found", "a non-member");
    // Attachments is an array of ids.
    http.post(
        "/v1/conversations/room/messages",
        &ann,
        json!({"text": "x", "attachments": "notes"}),
    )
    .await
    .expect_error(400, "invalid_argument", "attachments as a string");

    // Forward: text with files forwards the text only; files only cannot be forwarded.
    let fwd = http
        .post(
            &format!("/v1/conversations/room/messages/{id}/forward"),
            &ann,
            json!({"conversation_id": "side"}),
        )
        .await
        .expect(201, "forward text with files")
        .clone();
    assert_eq!(fwd["message"]["text"], "look at this");
    assert!(
        fwd["message"].get("attachments").is_none(),
        "files are not copied: {fwd}"
    );
    let only_msg = files_only["message"]["id"].as_str().unwrap();
    http.post(
        &format!("/v1/conversations/room/messages/{only_msg}/forward"),
        &ann,
        json!({"conversation_id": "side"}),
    )
    .await
    .expect_error(400, "invalid_attachment", "forward a files-only message");

    // An edit changes the text and keeps the files.
    http.patch(
        &format!("/v1/conversations/room/messages/{id}"),
        &ann,
        json!({"text": "look at this cat"}),
    )
    .await
    .expect(200, "edit");
    let edited = http
        .get(&format!("/v1/conversations/room/messages/{id}"), &bob)
        .await
        .expect(200, "get edited")
        .clone();
    assert_eq!(edited["text"], "look at this cat");
    assert!(edited["edited_at"].is_string(), "{edited}");
    assert_eq!(edited["attachments"], sent["message"]["attachments"]);

    // A delete redacts them: the shell names no files. The files themselves stay.
    http.delete(&format!("/v1/conversations/room/messages/{id}"), &ann)
        .await
        .expect(204, "delete");
    let listed = http.list_all(&bob, "room").await;
    let shell = listed.iter().find(|m| m["id"] == id.as_str()).unwrap();
    assert!(shell["deleted_at"].is_string(), "{shell}");
    assert!(shell.get("attachments").is_none(), "{shell}");
    let shell = http
        .get(&format!("/v1/conversations/room/messages/{id}"), &bob)
        .await
        .expect(200, "get deleted")
        .clone();
    assert!(shell.get("attachments").is_none(), "{shell}");
    let r = http
        .client
        .get(format!("{}/v1/media/files/{pic_id}/content", http.api))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the file outlives the message");
    sa.proc.assert_no_panics();
}
