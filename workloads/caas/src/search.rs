//! The search workload in the binary: `caas search` (the indexer and `/v1/search/...` alone,
//! with its own health, metrics and admin API) and [`mount`], which adds search to another
//! process (standalone): `/v1/search/...` on its service port, `/admin/v1/search/...` on its
//! internal port, the indexer as a task.

use crate::wire;
use anyhow::Context as _;
use axum::Router;
use caas_bus::DynBus;
use caas_config::Config;
use caas_kit::health::Health;
use caas_kit::metrics::Metrics;
use caas_kit::server::{self, HttpSettings};
use caas_kit::shutdown::{self, CancellationToken};
use caas_search::{Engine, SearchMetrics, SearchState};
use caas_store::DynStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long standalone waits for a first index build before it listens.
const FIRST_BUILD_WAIT: Duration = Duration::from_secs(10);

async fn state(
    cfg: &Arc<Config>,
    store: DynStore,
    bus: DynBus,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<SearchState> {
    let engine = Engine::new(
        cfg.search.clone(),
        store.clone(),
        bus,
        SearchMetrics::new(metrics),
    )
    .context("search configuration")?;
    let (limiter, _, _) = wire::shared_state(cfg).await?;
    Ok(SearchState {
        engine,
        auth: wire::authenticator(cfg, store)?,
        limiter,
        config: cfg.clone(),
        admin_token: Arc::new(wire::admin_token(cfg)?),
    })
}

fn spawn_indexer(engine: Arc<Engine>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = engine.run(stop).await {
            tracing::error!(error = %e, "The search indexer stopped with an error.");
        }
    })
}

/// Adds search to already wrapped service and internal routers and starts the indexer (until
/// `stop`; an unfinished batch is replayed, and skipped by the index's own positions, at the
/// next start).
pub async fn mount(
    cfg: &Arc<Config>,
    store: DynStore,
    bus: DynBus,
    metrics: &Arc<Metrics>,
    public: Router,
    internal: Router,
    stop: CancellationToken,
) -> anyhow::Result<(Router, Router)> {
    let state = state(cfg, store, bus, metrics).await?;
    let settings = HttpSettings::from(&cfg.server);
    spawn_indexer(state.engine.clone(), stop);
    // The process's /ready does not know about search: give a first start (index built from
    // the store) a moment before listening, so a small platform starts with search ready;
    // a longer build answers 503 `unavailable` on /v1/search until it is done.
    let deadline = tokio::time::Instant::now() + FIRST_BUILD_WAIT;
    while state.engine.current().is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if state.engine.current().is_none() {
        tracing::info!("The search index is still being built; /v1/search answers 503 until then.");
    }
    // Nested (each with the standard stack): wrapped routers have fallbacks and cannot merge.
    Ok((
        public.nest(
            caas_search::PUBLIC_PREFIX,
            server::wrap(caas_search::routes(state.clone()), metrics, &settings),
        ),
        internal.nest(
            caas_search::INTERNAL_PREFIX,
            server::wrap(caas_search::internal_routes(state), metrics, &settings),
        ),
    ))
}

/// `caas search`: runs until SIGTERM/SIGINT, then drains like every workload; the indexer
/// finishes and commits its batch.
pub async fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = Arc::new(caas_kit::config::load(config)?);
    caas_kit::telemetry::init(&cfg.log);
    let stop = CancellationToken::new();
    shutdown::on_signals(stop.clone());

    let metrics = Metrics::new();
    let store = wire::store(&cfg.store).await?;
    let bus = wire::bus(&cfg.bus).await?;
    let state = state(&cfg, store.clone(), bus.clone(), &metrics).await?;
    let health = {
        let engine = state.engine.clone();
        wire::store_and_log_checks(Health::builder(), &store, &bus)
            .check("search-index", move || {
                let engine = engine.clone();
                async move { engine.check() }
            })
            .build(Duration::from_millis(cfg.server.ready_cache_ms))
    };
    let settings = HttpSettings::from(&cfg.server);
    let public = server::wrap(
        health
            .public_router()
            .merge(caas_search::router(state.clone())),
        &metrics,
        &settings,
    );
    let internal = server::wrap(
        health
            .detail_router()
            .merge(caas_search::internal_router(state.clone())),
        &metrics,
        &settings,
    );
    let listeners = crate::run::Listeners::bind(&cfg.server).await?;
    let bound = listeners.bound()?;
    tracing::info!(api = %bound.api, internal = %bound.internal,
        group = %state.engine.group_id, "Search listening.");

    let serving = listeners.serve(public, internal, metrics.router());
    let indexer_stop = CancellationToken::new();
    let indexer = spawn_indexer(state.engine.clone(), indexer_stop.clone());

    stop.cancelled().await;
    let deadline = Duration::from_millis(cfg.server.shutdown_deadline_ms);
    let started = tokio::time::Instant::now();
    health.set_draining();
    tokio::time::sleep(Duration::from_millis(cfg.server.drain_delay_ms)).await;
    serving
        .drain(deadline.saturating_sub(started.elapsed()))
        .await;
    indexer_stop.cancel();
    shutdown::with_deadline(
        deadline.saturating_sub(started.elapsed()),
        "search indexer",
        indexer,
    )
    .await;
    tracing::info!("Stopped.");
    Ok(())
}
