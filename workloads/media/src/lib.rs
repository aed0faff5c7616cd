//! The media workload of caas (`caas media`, and part of `caas standalone`): files attached to
//! conversations, stored with `object_store` — S3 (or an S3-compatible server) in production, a
//! local directory by default.
//!
//! - [`routes`]: the HTTP API under `/v1/media` (see the table there);
//! - [`attach`]: the check a message's attachments pass (the sender's live files of the
//!   conversation);
//! - [`upload`]: single and chunked, resumable uploads, verification, quota;
//! - [`download`]: full, range and conditional downloads; soft delete and purge;
//! - [`state`]: shared state, the caller, access checks (members of the conversation only);
//! - [`repo`]: metadata persistence (SQLite, MongoDB) behind [`repo::MediaRepo`];
//! - [`blobs`]: the object store; [`sniff`]: content types from bytes; [`thumb`]: images;
//!   [`sign`]: signed URLs; [`range`]: HTTP ranges; [`metrics`]; [`model`]: records, events.
//!
//! The janitor ([`janitor`]) aborts uploads that were not completed in time and purges
//! soft-deleted files.

pub mod attach;
pub mod blobs;
pub mod download;
pub mod error;
pub mod metrics;
pub mod model;
pub mod range;
pub mod repo;
pub mod routes;
pub mod sign;
pub mod sniff;
pub mod state;
pub mod thumb;
pub mod upload;

pub use model::MEDIA_EVENTS;
pub use routes::router;
pub use state::MediaState;

use anyhow::Context as _;
use caas_bus::DynBus;
use caas_config::{Config, ServerConfig, StoreConfig};
use caas_kit::auth::Authenticator;
use caas_kit::metrics::Metrics;
use caas_kit::server::{self, HttpSettings};
use caas_store::DynStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The metadata repository for the configured store: MongoDB collections next to the chat
/// records, or a SQLite file of its own beside the embedded store.
pub async fn repo(cfg: &Config) -> anyhow::Result<repo::DynRepo> {
    Ok(match &cfg.store {
        StoreConfig::Embedded { .. } => {
            let path = &cfg.media.metadata_path;
            Arc::new(
                repo::sqlite::SqliteRepo::open(path)
                    .with_context(|| format!("opening the media metadata at {path}"))?,
            )
        }
        StoreConfig::Mongodb { uri, database } => {
            anyhow::ensure!(!uri.is_empty(), "store.uri is empty (set CAAS_STORE__URI)");
            Arc::new(
                repo::mongo::MongoRepo::connect(uri, database)
                    .await
                    .context("connecting to MongoDB for media metadata")?,
            )
        }
    })
}

/// The URL signing key: `media.signingKey` (normally `CAAS_MEDIA__SIGNING_KEY`), else the
/// contents of `media.signingKeyFile`.
pub fn signing_key(cfg: &caas_config::MediaConfig) -> anyhow::Result<Vec<u8>> {
    if !cfg.signing_key.is_empty() {
        return Ok(cfg.signing_key.as_bytes().to_vec());
    }
    let key = std::fs::read_to_string(&cfg.signing_key_file).with_context(|| {
        format!(
            "reading the media signing key from {} (or set CAAS_MEDIA__SIGNING_KEY)",
            cfg.signing_key_file
        )
    })?;
    Ok(key.trim().as_bytes().to_vec())
}

/// Writes a new random signing key to `path` (owner-only) unless it exists.
pub fn ensure_signing_key(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let key = hex::encode(caas_kit::random::bytes::<32>());
    caas_kit::auth::write_private(path, key.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Builds the media state from the configuration and the process's shared components.
pub async fn build(
    cfg: &Config,
    store: DynStore,
    bus: DynBus,
    auth: Arc<Authenticator>,
    metrics: &Metrics,
) -> anyhow::Result<MediaState> {
    build_with_repo(cfg, repo(cfg).await?, store, bus, auth, metrics)
}

/// [`build`] on a metadata repository the process already opened (standalone shares one with
/// the gateway, which checks the files messages carry).
pub fn build_with_repo(
    cfg: &Config,
    repo: repo::DynRepo,
    store: DynStore,
    bus: DynBus,
    auth: Arc<Authenticator>,
    metrics: &Metrics,
) -> anyhow::Result<MediaState> {
    let signer = sign::Signer::new(&signing_key(&cfg.media)?)?;
    Ok(MediaState {
        repo,
        blobs: blobs::Blobs::from_config(&cfg.media.backend)
            .context("opening the media backend")?,
        store,
        bus,
        auth,
        config: Arc::new(cfg.media.clone()),
        signer,
        metrics: metrics::MediaMetrics::new(metrics),
    })
}

/// The media routes under `/v1/media`, in the standard middleware stack with the media request
/// timeout (uploads stream for long).
pub fn service(
    state: MediaState,
    metrics: &Arc<Metrics>,
    server_cfg: &ServerConfig,
) -> axum::Router {
    mount(axum::Router::new(), state, metrics, server_cfg)
}

/// Adds the media routes to an already wrapped service router, nested at `/v1/media` in their
/// own stack ([`caas_kit::server::wrap`] with `media.requestTimeoutMs`): the outer router's
/// layers (its shorter timeout) do not apply to them.
pub fn mount(
    public: axum::Router,
    state: MediaState,
    metrics: &Arc<Metrics>,
    server_cfg: &ServerConfig,
) -> axum::Router {
    let mut settings = HttpSettings::from(server_cfg);
    settings.timeout = Duration::from_millis(state.config.request_timeout_ms);
    public.nest("/v1/media", server::wrap(router(state), metrics, &settings))
}

/// What one janitor pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub expired_uploads: usize,
    pub purged_files: usize,
}

/// One pass of upkeep at `now`: aborts expired uploads (parts removed, quota given back) and
/// purges files deleted more than `purgeAfterSecs` ago.
pub async fn sweep(s: &MediaState, now: OffsetDateTime) -> Result<Sweep, error::MediaError> {
    let mut out = Sweep::default();
    for u in s.repo.expired_uploads(now, 500).await? {
        // Completed, but the process stopped before the upload's record was removed: the quota
        // belongs to the file now.
        if s.repo.get_media(&u.tenant_id, &u.media_id).await?.is_some() {
            s.repo.delete_upload(&u.tenant_id, &u.id).await?;
            continue;
        }
        let parts = s.repo.list_parts(&u.tenant_id, &u.id).await?;
        upload::discard(s, &u, &parts).await;
        // An assembly cut short (the request dropped mid-`complete`) may have left the object.
        s.blobs
            .delete(&model::object_key(&u.tenant_id, &u.media_id))
            .await?;
        s.metrics.uploads.with_label_values(&["expired"]).inc();
        out.expired_uploads += 1;
    }
    let before = now - time::Duration::seconds(s.config.purge_after_secs as i64);
    out.purged_files = download::purge(s, before).await?;
    Ok(out)
}

/// Runs [`sweep`] every `janitorIntervalSecs` until `stop`.
pub async fn janitor(s: MediaState, stop: CancellationToken) {
    let mut every =
        tokio::time::interval(Duration::from_secs(s.config.janitor_interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => match sweep(&s, OffsetDateTime::now_utc()).await {
                Ok(Sweep { expired_uploads: 0, purged_files: 0 }) => {}
                Ok(done) => tracing::info!(expired_uploads = done.expired_uploads, purged_files = done.purged_files, "Media upkeep done."),
                Err(e) => tracing::warn!(error = %e, "Media upkeep failed."),
            },
        }
    }
}
