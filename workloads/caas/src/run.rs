//! Running workloads: wires the components, serves the HTTP listeners (service, internal,
//! metrics), runs the pipeline, and shuts down in order on SIGTERM/SIGINT: `/ready` turns 503,
//! the drain delay passes, realtime clients are sent away (spread over time), listeners stop accepting and finish in-flight requests, the pipeline
//! finishes its batch and commits, all within the shutdown deadline.

use crate::wire;
use anyhow::Context as _;
use caas_config::Config;
use caas_kit::health::Health;
use caas_kit::metrics::Metrics;
use caas_kit::server::{self, HttpSettings};
use caas_kit::shutdown::{self, CancellationToken};
use caas_pipeline::{PipelineHealth, PipelineMetrics};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// Which workloads run in this process.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub gateway: bool,
    pub pipeline: bool,
    /// The realtime server (Socket.IO), on the service port.
    pub socket: bool,
}

/// The addresses a started process listens on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bound {
    pub api: SocketAddr,
    pub internal: SocketAddr,
    pub metrics: SocketAddr,
}

/// The OpenAPI document of the whole public API: the gateway's routes merged with the media API's
/// and search's, each described by its own crate (in Kubernetes they are served by different
/// processes behind one host). Served at `/v1/openapi.json` and printed by `caas openapi`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = caas_gateway::openapi();
    doc.merge(caas_media::routes::openapi());
    doc.merge(caas_search::http::openapi());
    doc
}

/// Loads the configuration and runs `parts` until a signal.
pub async fn workload(config: Option<&Path>, parts: Parts) -> anyhow::Result<()> {
    let cfg = caas_kit::config::load(config)?;
    caas_kit::telemetry::init(&cfg.log);
    let stop = CancellationToken::new();
    shutdown::on_signals(stop.clone());
    start(cfg, parts, stop, |_| Ok(())).await
}

/// Runs `parts` with `cfg` until `stop` is cancelled. `on_bound` sees the bound addresses once
/// every listener is up.
pub async fn start(
    cfg: Config,
    parts: Parts,
    stop: CancellationToken,
    on_bound: impl FnOnce(&Bound) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    start_with(cfg, parts, None, stop, on_bound).await
}

/// Routes added to the service port next to the gateway's, made from its state before the
/// listeners bind: standalone's try-out page ([`crate::demo`]).
pub type Extra = Box<dyn FnOnce(caas_gateway::AppState) -> ExtraRoutes + Send>;
pub type ExtraRoutes = futures::future::BoxFuture<'static, anyhow::Result<axum::Router>>;

/// [`start`] with `extra` routes (only with the gateway).
pub async fn start_with(
    cfg: Config,
    parts: Parts,
    extra: Option<Extra>,
    stop: CancellationToken,
    on_bound: impl FnOnce(&Bound) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let metrics = Metrics::new();
    let store = wire::store(&cfg.store).await?;
    let bus = wire::bus(&cfg.bus).await?;
    let (limiter, dedupe, redis) = wire::shared_state(&cfg).await?;

    let pipeline_health = Arc::new(PipelineHealth::default());
    let mut health = wire::store_and_log_checks(Health::builder(), &store, &bus);
    {
        if let Some(conn) = redis.clone() {
            health = health.check("redis", move || {
                let mut conn = conn.clone();
                async move {
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            });
        }
        if parts.pipeline {
            let ph = pipeline_health.clone();
            health = health.check("pipeline", move || {
                let ph = ph.clone();
                async move { ph.check() }
            });
        }
    }
    let health = health.build(Duration::from_millis(cfg.server.ready_cache_ms));
    let settings = HttpSettings::from(&cfg.server);

    let mut public = health.public_router();
    let mut internal = health.detail_router();
    // Media metadata: the gateway checks the files a message carries; in one process the media
    // API shares the same repository.
    let media_repo = match parts.gateway || parts.socket {
        true => Some(caas_media::repo(&cfg).await?),
        false => None,
    };
    let state = if let Some(media) = media_repo.clone() {
        Some(caas_gateway::AppState {
            store: store.clone(),
            bus: bus.clone(),
            auth: wire::authenticator(&cfg, store.clone())?,
            limiter,
            dedupe,
            config: cfg.clone(),
            admin_token: Arc::new(wire::admin_token(&cfg)?),
            media,
        })
    } else {
        None
    };
    if parts.gateway
        && let Some(state) = &state
    {
        public = public.merge(caas_gateway::router_with_openapi(state.clone(), openapi()));
        internal = internal.merge(caas_gateway::internal_router(state.clone()));
        if let Some(extra) = extra {
            public = public.merge(extra(state.clone()).await?);
        }
    }
    let mut public = server::wrap(public, &metrics, &settings);
    let internal = server::wrap(internal, &metrics, &settings);
    // Media under /v1/media with its own request timeout (uploads stream for long), when the
    // gateway and the pipeline share the process (standalone); `caas media` runs it alone.
    public = if parts.gateway
        && parts.pipeline
        && let Some(repo) = media_repo
    {
        crate::media::mount(
            &cfg,
            repo,
            store.clone(),
            bus.clone(),
            &metrics,
            public,
            stop.clone(),
        )
        .await?
    } else {
        public
    };
    // Search: /v1/search on the service port, its admin API on the internal port and its
    // indexer, when the gateway and the pipeline share the process (standalone); `caas search`
    // runs it alone.
    let (searched, internal) = if parts.gateway && parts.pipeline {
        crate::search::mount(
            &cfg,
            store.clone(),
            bus.clone(),
            &metrics,
            public,
            internal,
            stop.clone(),
        )
        .await?
    } else {
        (public, internal)
    };
    public = searched;
    // The realtime server sits in front of the HTTP stack: its long-lived connections are not
    // requests (no request timeout, no request concurrency slot); it has its own metrics.
    let mut realtime = None;
    if parts.socket
        && let Some(state) = &state
    {
        let shared_redis = cfg.redis.as_ref().zip(redis.clone());
        let (router, mounted) =
            caas_socket::mount(public, state.clone(), &metrics, shared_redis).await?;
        public = router;
        realtime = Some(mounted);
    }
    let metrics_router = metrics.router();

    let listeners = Listeners::bind(&cfg.server).await?;
    let bound = listeners.bound()?;
    tracing::info!(api = %bound.api, internal = %bound.internal, metrics = %bound.metrics, "Listening.");
    let serving = listeners.serve(public, internal, metrics_router);
    let http_stop = serving.stop_token();

    let pipeline_stop = CancellationToken::new();
    let pipeline = parts.pipeline.then(|| {
        tokio::spawn(caas_pipeline::run(
            store.clone(),
            bus.clone(),
            cfg.pipeline.clone(),
            PipelineMetrics::new(&metrics),
            pipeline_health.clone(),
            pipeline_stop.clone(),
        ))
    });
    if let caas_config::BusConfig::Embedded { retention_secs, .. } = &cfg.bus {
        let (bus, retention, stop) = (
            bus.clone(),
            Duration::from_secs(*retention_secs),
            http_stop.clone(),
        );
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => match bus.housekeeping(retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(records = n, "Trimmed the embedded log."),
                        Err(e) => tracing::warn!(error = %e, "Failed to trim the embedded log."),
                    },
                }
            }
        });
    }
    on_bound(&bound)?;

    stop.cancelled().await;
    let deadline = Duration::from_millis(cfg.server.shutdown_deadline_ms);
    let started = tokio::time::Instant::now();
    health.set_draining();
    if let Some(r) = &realtime {
        r.set_draining();
    }
    tokio::time::sleep(Duration::from_millis(cfg.server.drain_delay_ms)).await;
    if let Some(r) = realtime {
        // Clients reconnect elsewhere, spread over time; in-flight acks are answered first.
        let spread = Duration::from_millis(cfg.socket.drain_spread_ms)
            .min(deadline.saturating_sub(started.elapsed()) / 2);
        shutdown::with_deadline(
            deadline.saturating_sub(started.elapsed()),
            "realtime drain",
            r.drain(spread),
        )
        .await;
    }
    serving
        .drain(deadline.saturating_sub(started.elapsed()))
        .await;
    pipeline_stop.cancel();
    if let Some(p) = pipeline {
        shutdown::with_deadline(deadline.saturating_sub(started.elapsed()), "pipeline", p).await;
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// The three listeners of a workload process: service, internal (admin, `/ready/detail`) and
/// metrics.
pub struct Listeners {
    api: tokio::net::TcpListener,
    internal: tokio::net::TcpListener,
    metrics: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds `server.listen`, `server.internalListen` and `server.metricsListen`.
    pub async fn bind(server: &caas_config::ServerConfig) -> anyhow::Result<Self> {
        let bind = |addr: &str| {
            let addr = addr.to_owned();
            async move {
                server::bind(&addr)
                    .await
                    .with_context(|| format!("binding {addr}"))
            }
        };
        Ok(Self {
            api: bind(&server.listen).await?,
            internal: bind(&server.internal_listen).await?,
            metrics: bind(&server.metrics_listen).await?,
        })
    }

    /// The addresses bound (ports chosen by the system when configured as 0).
    pub fn bound(&self) -> std::io::Result<Bound> {
        Ok(Bound {
            api: self.api.local_addr()?,
            internal: self.internal.local_addr()?,
            metrics: self.metrics.local_addr()?,
        })
    }

    /// Serves the three routers until [`Serving::drain`].
    pub fn serve(
        self,
        public: axum::Router,
        internal: axum::Router,
        metrics: axum::Router,
    ) -> Serving {
        let stop = CancellationToken::new();
        let mut servers = JoinSet::new();
        servers.spawn(server::serve(self.api, public, stop.clone()));
        servers.spawn(server::serve(self.internal, internal, stop.clone()));
        servers.spawn(server::serve(self.metrics, metrics, stop.clone()));
        Serving { stop, servers }
    }
}

/// Listeners being served.
pub struct Serving {
    stop: CancellationToken,
    servers: JoinSet<std::io::Result<()>>,
}

impl Serving {
    /// Cancelled when the listeners stop accepting (for tasks that live as long as they do).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops accepting and waits (at most `within`) for in-flight requests to finish.
    pub async fn drain(mut self, within: Duration) {
        self.stop.cancel();
        shutdown::with_deadline(within, "HTTP drain", async {
            while let Some(r) = self.servers.join_next().await {
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "A listener failed while draining.");
                }
            }
        })
        .await;
    }
}
