//! Throughput and memory of the media workload while streaming big files, over real HTTP.
//!
//! Starts the media API in this process (SQLite store and metadata, embedded log, the local
//! directory backend, or S3 with `--backend s3` and the `CAAS_TEST_S3_*` variables), uploads a
//! generated file of `--mib` MiB (single streamed upload, then a chunked upload in
//! `--part-mib` parts), downloads it, and prints MB/s and the peak resident memory of each phase
//! (`VmHWM`, reset between phases through `/proc/self/clear_refs`). Client and server share the
//! process, so the peak covers both; both stream, so it must not grow with the file's size.
//!
//! `cargo run --release -p caas-media --bin media-bench -- --mib 1024`

use anyhow::Context as _;
use bytes::Bytes;
use caas_config::{Config, MediaBackend, S3Config};
use caas_domain::model::{
    Conversation, ConversationKind, Member, Quotas, Role, Tenant, TenantStatus, User,
};
use caas_domain::{ConversationId, TenantId, UserId};
use caas_kit::auth::{Authenticator, KeySet, TokenService};
use caas_kit::metrics::Metrics;
use clap::Parser;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

#[derive(Debug, Parser)]
struct Args {
    /// File size in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Part size of the chunked upload, MiB.
    #[arg(long, default_value_t = 8)]
    part_mib: u64,
    /// `local` or `s3` (needs CAAS_TEST_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY, _BUCKET).
    #[arg(long, default_value = "local")]
    backend: String,
    /// Where the local backend and the databases live (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const CHUNK: usize = 256 * 1024;

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Resets the peak to the current RSS (Linux ≥ 4.0).
fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset VmHWM: {e}");
    }
}

/// `n` bytes of a fixed pseudo-random block, as a stream of chunks (nothing is kept).
fn body(n: u64, block: Bytes) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let mut left = n;
    futures::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let take = left.min(block.len() as u64) as usize;
        left -= take as u64;
        Some(Ok(block.slice(..take)))
    }))
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let size = args.mib * 1024 * 1024;

    // The platform around the media API.
    let store: caas_store::DynStore =
        Arc::new(caas_store::sqlite::SqliteStore::open(dir.join("store.db"))?);
    let bus: caas_bus::DynBus = Arc::new(caas_bus::embedded::EmbeddedLog::open(
        dir.join("log.db"),
        1,
    )?);
    let tenant = TenantId::parse("bench")?;
    let user = UserId::parse("alice")?;
    let conv = ConversationId::parse("bench")?;
    let now = OffsetDateTime::now_utc();
    if store.get_tenant(&tenant).await?.is_none() {
        store
            .create_tenant(&Tenant {
                id: tenant.clone(),
                name: "Bench".into(),
                status: TenantStatus::Active,
                quotas: Quotas {
                    max_upload_bytes: 64 << 30,
                    storage_bytes: 1 << 50,
                    ..Quotas::default()
                },
                features: vec![],
                created_at: now,
                updated_at: now,
            })
            .await?;
        store
            .upsert_user(&User {
                tenant_id: tenant.clone(),
                id: user.clone(),
                name: "Alice".into(),
                image_url: None,
                data: serde_json::json!({}),
                created_at: now,
                updated_at: now,
                tokens_valid_after: None,
            })
            .await?;
        let conversation = Conversation {
            tenant_id: tenant.clone(),
            id: conv.clone(),
            kind: ConversationKind::Group,
            name: None,
            topic: None,
            created_by: user.clone(),
            created_at: now,
            updated_at: now,
            archived_at: None,
            last_message: None,
            member_count: 0,
        };
        let member = Member {
            tenant_id: tenant.clone(),
            conversation_id: conv.clone(),
            user_id: user.clone(),
            role: Role::Owner,
            joined_at: now,
            last_read_position: -1,
            unread_count: 0,
        };
        store.create_conversation(&conversation, &[member]).await?;
    }
    let mut cfg = Config::default();
    let keys = dir.join("keys");
    if !keys.exists() {
        KeySet::generate_into(&keys)?;
    }
    let tokens = Arc::new(TokenService::new(KeySet::load_dir(&keys, "")?, &cfg.auth));
    let token = tokens.issue(&tenant, &user, now)?.token;
    let auth = Arc::new(Authenticator::new(
        tokens,
        store.clone(),
        Duration::from_secs(1),
    ));
    cfg.media.signing_key = "b".repeat(32);
    cfg.media.metadata_path = dir.join("media.db").to_string_lossy().into_owned();
    cfg.media.max_part_bytes = (args.part_mib * 1024 * 1024).max(cfg.media.min_part_bytes);
    cfg.media.thumbnail_max_source_bytes = 0;
    cfg.media.backend = match args.backend.as_str() {
        "local" => MediaBackend::Local {
            dir: dir.join("media").to_string_lossy().into_owned(),
        },
        "s3" => {
            let env = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
            MediaBackend::S3(S3Config {
                bucket: env("CAAS_TEST_S3_BUCKET")?,
                endpoint: env("CAAS_TEST_S3_ENDPOINT")?,
                access_key: env("CAAS_TEST_S3_ACCESS_KEY")?,
                secret_key: env("CAAS_TEST_S3_SECRET_KEY")?,
                allow_http: true,
                prefix: format!("bench-{}/", uuid::Uuid::now_v7().simple()),
                ..S3Config::default()
            })
        }
        other => anyhow::bail!("unknown backend {other}"),
    };
    let metrics = Metrics::new();
    let state = caas_media::build(&cfg, store.clone(), bus, auth, &metrics).await?;
    let app = caas_media::service(state, &metrics, &cfg.server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1/media", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(caas_kit::server::serve(listener, app, stop.clone()));

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let block: Vec<u8> = (0..CHUNK / 8)
        .flat_map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()
        })
        .collect();
    let mut block = block;
    block[0] = 0;
    let block = Bytes::from(block);
    // The file is the block repeated; its SHA-256 without holding it.
    let sha = {
        let mut h = Sha256::new();
        let mut left = size;
        while left > 0 {
            let take = left.min(CHUNK as u64) as usize;
            h.update(&block[..take]);
            left -= take as u64;
        }
        hex::encode(h.finalize())
    };
    let client = reqwest::Client::new();
    let auth_header = format!("Bearer {token}");
    println!(
        "media-bench: {} MiB, backend {}, parts {} MiB; RSS at start {} MiB",
        args.mib,
        args.backend,
        args.part_mib,
        rss_kib() / 1024
    );

    // 1. Single streamed upload.
    reset_peak();
    let t = Instant::now();
    let r = client
        .post(format!("{base}/conversations/{conv}/files?name=big.bin"))
        .header("authorization", &auth_header)
        .header("content-type", "application/octet-stream")
        .header("content-length", size)
        .header("x-checksum-sha256", &sha)
        .body(reqwest::Body::wrap_stream(body(size, block.clone())))
        .send()
        .await?;
    let up = t.elapsed();
    anyhow::ensure!(
        r.status() == 201,
        "upload: {} {}",
        r.status(),
        r.text().await?
    );
    let media: serde_json::Value = r.json().await?;
    let id = media["id"].as_str().context("id")?.to_string();
    println!(
        "single upload    {:>8.1} MB/s  {:>6.2} s  peak RSS {:>5} MiB",
        mbps(size, up),
        up.as_secs_f64(),
        peak_kib() / 1024
    );

    // 2. Download, streamed and hashed.
    reset_peak();
    let t = Instant::now();
    let r = client
        .get(format!("{base}/files/{id}/content"))
        .header("authorization", &auth_header)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "download: {}", r.status());
    let mut stream = r.bytes_stream();
    let mut got = 0u64;
    let mut h = Sha256::new();
    while let Some(c) = stream.next().await {
        let c = c?;
        got += c.len() as u64;
        h.update(&c);
    }
    let down = t.elapsed();
    anyhow::ensure!(
        got == size && hex::encode(h.finalize()) == sha,
        "download differs"
    );
    println!(
        "download         {:>8.1} MB/s  {:>6.2} s  peak RSS {:>5} MiB",
        mbps(size, down),
        down.as_secs_f64(),
        peak_kib() / 1024
    );

    // 3. Chunked upload, parts in order, one at a time.
    reset_peak();
    let part = args.part_mib * 1024 * 1024;
    let t = Instant::now();
    let r = client
        .post(format!("{base}/conversations/{conv}/uploads"))
        .header("authorization", &auth_header)
        .json(&serde_json::json!({"name": "big2.bin", "size": size, "sha256": sha}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 201,
        "initiate: {} {}",
        r.status(),
        r.text().await?
    );
    let up_id = r.json::<serde_json::Value>().await?["id"]
        .as_str()
        .context("id")?
        .to_string();
    let parts = size.div_ceil(part);
    for n in 0..parts {
        // Each part starts at a multiple of the block size, so it is the block repeated too.
        let len = part.min(size - n * part);
        let r = client
            .put(format!("{base}/uploads/{up_id}/parts/{}", n + 1))
            .header("authorization", &auth_header)
            .header("content-length", len)
            .body(reqwest::Body::wrap_stream(body(len, block.clone())))
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 200,
            "part {}: {} {}",
            n + 1,
            r.status(),
            r.text().await?
        );
    }
    let r = client
        .post(format!("{base}/uploads/{up_id}/complete"))
        .header("authorization", &auth_header)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    let chunked = t.elapsed();
    anyhow::ensure!(
        r.status() == 201,
        "complete: {} {}",
        r.status(),
        r.text().await?
    );
    println!(
        "chunked upload   {:>8.1} MB/s  {:>6.2} s  peak RSS {:>5} MiB  ({parts} parts, incl. assembly and verification)",
        mbps(size, chunked),
        chunked.as_secs_f64(),
        peak_kib() / 1024
    );
    stop.cancel();
    Ok(())
}
