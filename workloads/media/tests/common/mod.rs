//! The test harness: a real media router over a real SQLite store, an embedded log and either
//! backend — a local directory (metadata in SQLite) or the S3 server named by
//! `CAAS_TEST_S3_*` (metadata in the MongoDB at `CAAS_TEST_MONGODB_URI`). `scripts/test.sh`
//! starts both servers and sets the variables; without them the S3 tests fail, they never pass
//! silently.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use caas_bus::DynBus;
use caas_config::{Config, MediaBackend, S3Config, StoreConfig};
use caas_domain::model::{
    Conversation, ConversationKind, Member, Quotas, Role, Tenant, TenantStatus, User,
};
use caas_domain::{ConversationId, TenantId, UserId};
use caas_kit::auth::{Authenticator, KeySet, TokenService};
use caas_kit::metrics::Metrics;
use caas_media::MediaState;
use caas_store::DynStore;
use http::{HeaderMap, Request};
use http_body_util::BodyExt as _;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tower::ServiceExt as _;

pub const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

pub const BACKENDS: [Backend; 2] = [Backend::Local, Backend::S3];

fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{name} is not set: the media workload is tested against a real S3 server and a real \
             MongoDB. Run scripts/test.sh (it starts s3s-fs and nx-27017 and sets CAAS_TEST_S3_* \
             and CAAS_TEST_MONGODB_URI), or start them yourself, e.g. `s3s-fs --host 127.0.0.1 \
             --port 19000 --access-key AK --secret-key SK /tmp/s3` with `mkdir /tmp/s3/BUCKET`, \
             and set CAAS_TEST_S3_ENDPOINT=http://127.0.0.1:19000 CAAS_TEST_S3_ACCESS_KEY=AK \
             CAAS_TEST_S3_SECRET_KEY=SK CAAS_TEST_S3_BUCKET=BUCKET"
        ),
    }
}

/// The S3 backend configuration of the test server (a fresh prefix per harness).
pub fn s3_config() -> S3Config {
    S3Config {
        bucket: required("CAAS_TEST_S3_BUCKET"),
        endpoint: required("CAAS_TEST_S3_ENDPOINT"),
        region: "us-east-1".into(),
        access_key: required("CAAS_TEST_S3_ACCESS_KEY"),
        secret_key: required("CAAS_TEST_S3_SECRET_KEY"),
        path_style: true,
        allow_http: true,
        prefix: format!("test-{}/", uuid::Uuid::now_v7().simple()),
    }
}

pub fn mongo_uri() -> String {
    required("CAAS_TEST_MONGODB_URI")
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub max_upload_bytes: u64,
    pub storage_bytes: u64,
    pub min_part_bytes: u64,
    pub max_part_bytes: u64,
    pub allowed_types: Option<Vec<String>>,
    /// Another S3 server than the one of `CAAS_TEST_S3_*`.
    pub s3: Option<S3Config>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            max_upload_bytes: 64 * MIB,
            storage_bytes: 1024 * MIB,
            min_part_bytes: 5 * MIB,
            max_part_bytes: 6 * MIB,
            allowed_types: None,
            s3: None,
        }
    }
}

pub struct H {
    pub backend: Backend,
    pub app: Router,
    pub state: MediaState,
    pub bus: DynBus,
    pub store: DynStore,
    pub metrics: Arc<Metrics>,
    pub tenant: TenantId,
    pub other_tenant: TenantId,
    pub conv: ConversationId,
    tokens: HashMap<&'static str, String>,
    _dir: tempfile::TempDir,
}

/// Users: alice (owner of the conversation), bob (member), carol (same tenant, not a member),
/// eve (another tenant, member of a conversation with the same id there).
pub async fn harness(backend: Backend, opts: Opts) -> H {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore =
        Arc::new(caas_store::sqlite::SqliteStore::open(dir.path().join("store.db")).unwrap());
    let bus: DynBus =
        Arc::new(caas_bus::embedded::EmbeddedLog::open(dir.path().join("log.db"), 2).unwrap());
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let tenant = TenantId::parse(format!("acme-{suffix}")).unwrap();
    let other_tenant = TenantId::parse(format!("other-{suffix}")).unwrap();
    let conv = ConversationId::parse("general").unwrap();
    let now = OffsetDateTime::now_utc();
    for t in [&tenant, &other_tenant] {
        store
            .create_tenant(&Tenant {
                id: t.clone(),
                name: "T".into(),
                status: TenantStatus::Active,
                quotas: Quotas {
                    max_upload_bytes: opts.max_upload_bytes,
                    storage_bytes: opts.storage_bytes,
                    ..Quotas::default()
                },
                features: vec![],
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
    }
    let users: [(&TenantId, &str); 4] = [
        (&tenant, "alice"),
        (&tenant, "bob"),
        (&tenant, "carol"),
        (&other_tenant, "eve"),
    ];
    for (t, u) in users {
        store
            .upsert_user(&User {
                tenant_id: t.clone(),
                id: UserId::parse(u).unwrap(),
                name: u.into(),
                image_url: None,
                data: serde_json::json!({}),
                created_at: now,
                updated_at: now,
                tokens_valid_after: None,
            })
            .await
            .unwrap();
    }
    let member = |t: &TenantId, u: &str, role| Member {
        tenant_id: t.clone(),
        conversation_id: conv.clone(),
        user_id: UserId::parse(u).unwrap(),
        role,
        joined_at: now,
        last_read_position: -1,
        unread_count: 0,
    };
    let conversation = |t: &TenantId, by: &str| Conversation {
        tenant_id: t.clone(),
        id: conv.clone(),
        kind: ConversationKind::Group,
        name: Some("General".into()),
        topic: None,
        created_by: UserId::parse(by).unwrap(),
        created_at: now,
        updated_at: now,
        archived_at: None,
        last_message: None,
        member_count: 0,
    };
    store
        .create_conversation(
            &conversation(&tenant, "alice"),
            &[
                member(&tenant, "alice", Role::Owner),
                member(&tenant, "bob", Role::Member),
            ],
        )
        .await
        .unwrap();
    store
        .create_conversation(
            &conversation(&other_tenant, "eve"),
            &[member(&other_tenant, "eve", Role::Owner)],
        )
        .await
        .unwrap();

    let keys = dir.path().join("keys");
    KeySet::generate_into(&keys).unwrap();
    let mut cfg = Config::default();
    let tokens = Arc::new(TokenService::new(
        KeySet::load_dir(&keys, "").unwrap(),
        &cfg.auth,
    ));
    let auth = Arc::new(Authenticator::new(
        tokens.clone(),
        store.clone(),
        Duration::from_millis(100),
    ));
    let mut issued = HashMap::new();
    for (t, u) in users {
        issued.insert(
            u,
            tokens
                .issue(t, &UserId::parse(u).unwrap(), now)
                .unwrap()
                .token,
        );
    }

    cfg.media.min_part_bytes = opts.min_part_bytes;
    cfg.media.max_part_bytes = opts.max_part_bytes;
    cfg.media.signing_key = "k".repeat(40);
    cfg.media.metadata_path = dir.path().join("media.db").to_string_lossy().into_owned();
    if let Some(types) = opts.allowed_types.clone() {
        cfg.media
            .tenant_allowed_types
            .insert(tenant.to_string(), types);
    }
    match backend {
        Backend::Local => {
            cfg.media.backend = MediaBackend::Local {
                dir: dir.path().join("media").to_string_lossy().into_owned(),
            };
        }
        Backend::S3 => {
            cfg.media.backend = MediaBackend::S3(opts.s3.clone().unwrap_or_else(s3_config));
            cfg.store = StoreConfig::Mongodb {
                uri: mongo_uri(),
                database: format!("caas_media_{}", uuid::Uuid::now_v7().simple()),
            };
        }
    }
    let metrics = Metrics::new();
    let state = caas_media::build(&cfg, store.clone(), bus.clone(), auth, &metrics)
        .await
        .unwrap();
    let app = caas_media::service(state.clone(), &metrics, &cfg.server);
    H {
        backend,
        app,
        state,
        bus,
        store,
        metrics,
        tenant,
        other_tenant,
        conv,
        tokens: issued,
        _dir: dir,
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

pub fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Deterministic pseudo-random bytes (xorshift) that sniff as `application/octet-stream`.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    if let Some(b) = v.first_mut() {
        *b = 0; // never a known signature, never text
    }
    v
}

/// A PNG made with the image crate.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A valid PNG header claiming `w`x`h` pixels with no data: a decompression bomb's shape.
pub fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc32 = |data: &[u8]| {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    };
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [
        ihdr,
        [&b"IDAT"[..], &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]].concat(),
        b"IEND".to_vec(),
    ] {
        v.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
        v.extend_from_slice(&chunk);
        v.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    v
}

/// A request body that sends `prefix` and then fails, like a client whose connection dropped.
pub fn truncated(prefix: Vec<u8>) -> Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(prefix)),
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection reset",
        )),
    ];
    Body::from_stream(futures::stream::iter(chunks))
}

impl H {
    pub fn token(&self, user: &str) -> &str {
        &self.tokens[user]
    }

    pub async fn call(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn req(&self, method: &str, uri: &str, user: Option<&str>) -> http::request::Builder {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(u) = user {
            b = b.header("authorization", format!("Bearer {}", self.token(u)));
        }
        b
    }

    /// Single upload of `bytes` by `user`.
    pub async fn upload(
        &self,
        user: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
        sha: Option<&str>,
    ) -> Resp {
        let mut b = self
            .req(
                "POST",
                &format!("/v1/media/conversations/{}/files?name={name}", self.conv),
                Some(user),
            )
            .header("content-type", content_type)
            .header("content-length", bytes.len().to_string());
        if let Some(s) = sha {
            b = b.header("x-checksum-sha256", s);
        }
        self.call(b.body(Body::from(bytes)).unwrap()).await
    }

    pub async fn initiate(&self, user: &str, body: serde_json::Value) -> Resp {
        self.call(
            self.req(
                "POST",
                &format!("/v1/media/conversations/{}/uploads", self.conv),
                Some(user),
            )
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        )
        .await
    }

    pub async fn part(
        &self,
        user: &str,
        upload: &str,
        n: u32,
        bytes: Vec<u8>,
        sha: Option<&str>,
    ) -> Resp {
        let mut b = self
            .req(
                "PUT",
                &format!("/v1/media/uploads/{upload}/parts/{n}"),
                Some(user),
            )
            .header("content-length", bytes.len().to_string());
        if let Some(s) = sha {
            b = b.header("x-checksum-sha256", s);
        }
        self.call(b.body(Body::from(bytes)).unwrap()).await
    }

    pub async fn complete(&self, user: &str, upload: &str, body: serde_json::Value) -> Resp {
        self.call(
            self.req(
                "POST",
                &format!("/v1/media/uploads/{upload}/complete"),
                Some(user),
            )
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        )
        .await
    }

    pub async fn get(&self, uri: &str, user: Option<&str>, headers: &[(&str, &str)]) -> Resp {
        let mut b = self.req("GET", uri, user);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.call(b.body(Body::empty()).unwrap()).await
    }

    pub async fn usage(&self) -> u64 {
        self.state.repo.usage(&self.tenant).await.unwrap()
    }

    /// Objects stored for the tenant (files, thumbnails, parts).
    pub async fn objects(&self) -> usize {
        self.state
            .blobs
            .count(&format!("t/{}/", self.tenant))
            .await
            .unwrap()
    }
}
