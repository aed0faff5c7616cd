//! The media workload in the binary: `caas media` (the media API alone, with its own health,
//! metrics and janitor) and [`mount`], which adds the media API to another process's service
//! port (standalone). Media routes sit under `/v1/media` with their own middleware stack: the
//! same layers, but `media.requestTimeoutMs` instead of the short API timeout, since uploads
//! stream for long.

use crate::wire;
use anyhow::Context as _;
use axum::Router;
use caas_bus::DynBus;
use caas_config::{BusConfig, Config};
use caas_kit::health::Health;
use caas_kit::metrics::Metrics;
use caas_kit::server::{self, HttpSettings};
use caas_kit::shutdown::{self, CancellationToken};
use caas_store::DynStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Adds `/v1/media/...` to an already wrapped service router and starts the janitor (until
/// `stop`). In one process on embedded defaults a missing URL signing key is generated.
pub async fn mount(
    cfg: &Config,
    repo: caas_media::repo::DynRepo,
    store: DynStore,
    bus: DynBus,
    metrics: &Arc<Metrics>,
    public: Router,
    stop: CancellationToken,
) -> anyhow::Result<Router> {
    if cfg.media.signing_key.is_empty() {
        caas_media::ensure_signing_key(Path::new(&cfg.media.signing_key_file))?;
    }
    let state = caas_media::build_with_repo(
        cfg,
        repo,
        store.clone(),
        bus,
        wire::authenticator(cfg, store)?,
        metrics,
    )?;
    tokio::spawn(caas_media::janitor(state.clone(), stop));
    Ok(caas_media::mount(public, state, metrics, &cfg.server))
}

/// The log, with the media-events topic made sure of on Kafka.
async fn bus(cfg: &BusConfig) -> anyhow::Result<DynBus> {
    if let BusConfig::Kafka(k) = cfg {
        let bus = caas_bus::kafka::KafkaBus::connect(k)
            .await
            .context("connecting to Kafka")?;
        bus.ensure_topics(&[caas_media::MEDIA_EVENTS])
            .await
            .context("making sure the media-events topic exists")?;
        return Ok(Arc::new(bus));
    }
    wire::bus(cfg).await
}

/// `caas media`: runs until SIGTERM/SIGINT, then drains like every workload.
pub async fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = caas_kit::config::load(config)?;
    caas_kit::telemetry::init(&cfg.log);
    let stop = CancellationToken::new();
    shutdown::on_signals(stop.clone());

    let metrics = Metrics::new();
    let store = wire::store(&cfg.store).await?;
    let bus = bus(&cfg.bus).await?;
    let state = caas_media::build(
        &cfg,
        store.clone(),
        bus.clone(),
        wire::authenticator(&cfg, store.clone())?,
        &metrics,
    )
    .await?;
    let health = {
        let (repo, blobs) = (state.repo.clone(), state.blobs.clone());
        wire::store_and_log_checks(Health::builder(), &store, &bus)
            .check("media-metadata", move || {
                let repo = repo.clone();
                async move { repo.ping().await.map_err(|e| e.to_string()) }
            })
            .check("media-objects", move || {
                let blobs = blobs.clone();
                async move { blobs.ping().await.map_err(|e| e.to_string()) }
            })
            .build(Duration::from_millis(cfg.server.ready_cache_ms))
    };
    let settings = HttpSettings::from(&cfg.server);
    let public = caas_media::mount(
        server::wrap(health.public_router(), &metrics, &settings),
        state.clone(),
        &metrics,
        &cfg.server,
    );
    let internal = server::wrap(health.detail_router(), &metrics, &settings);

    let listeners = crate::run::Listeners::bind(&cfg.server).await?;
    let bound = listeners.bound()?;
    tracing::info!(api = %bound.api, backend = state.blobs.kind(), "Media listening.");

    let serving = listeners.serve(public, internal, metrics.router());
    let janitor_stop = CancellationToken::new();
    let janitor = tokio::spawn(caas_media::janitor(state, janitor_stop.clone()));

    stop.cancelled().await;
    let deadline = Duration::from_millis(cfg.server.shutdown_deadline_ms);
    let started = tokio::time::Instant::now();
    health.set_draining();
    tokio::time::sleep(Duration::from_millis(cfg.server.drain_delay_ms)).await;
    janitor_stop.cancel();
    serving
        .drain(deadline.saturating_sub(started.elapsed()))
        .await;
    shutdown::with_deadline(
        deadline.saturating_sub(started.elapsed()),
        "media janitor",
        janitor,
    )
    .await;
    tracing::info!("Stopped.");
    Ok(())
}
