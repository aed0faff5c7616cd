//! What every loop of the pipeline shares: the store, the log, the configuration, metrics,
//! readiness and the stop signal — and the circuit breaker ([`Ctx::until_ok`]): an operation
//! that fails because the store or the log is unavailable is retried with backoff (from
//! `breakerMinBackoffMs` doubling to `breakerMaxBackoffMs`) while readiness reports why; the
//! loop that called it does not read anything new meanwhile, so a store outage stops
//! consumption instead of spinning or skipping.

use crate::error::{Stage, StageError};
use crate::metrics::{PipelineHealth, PipelineMetrics};
use caas_bus::DynBus;
use caas_config::PipelineConfig;
use caas_domain::TenantId;
use caas_store::{DynStore, TenantWebhook};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Returned when the stop signal came first: the caller leaves without committing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

pub struct Ctx {
    pub store: DynStore,
    pub bus: DynBus,
    pub cfg: PipelineConfig,
    pub metrics: PipelineMetrics,
    pub health: Arc<PipelineHealth>,
    pub stop: CancellationToken,
    /// Loops currently waiting on the breaker (readiness closes when the last one recovers).
    waiting: AtomicUsize,
    /// Tenant webhooks by tenant, read at most once per [`WEBHOOK_CACHE_TTL`].
    webhooks: Mutex<HashMap<TenantId, (Instant, Option<TenantWebhook>)>>,
}

/// How long a tenant's webhook configuration is cached: a change through the admin API
/// reaches deliveries within this time.
pub const WEBHOOK_CACHE_TTL: Duration = Duration::from_secs(1);

impl Ctx {
    pub fn new(
        store: DynStore,
        bus: DynBus,
        cfg: PipelineConfig,
        metrics: PipelineMetrics,
        health: Arc<PipelineHealth>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            store,
            bus,
            cfg,
            metrics,
            health,
            stop,
            waiting: AtomicUsize::new(0),
            webhooks: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant's webhook, cached for [`WEBHOOK_CACHE_TTL`].
    pub async fn webhook(&self, tenant: &TenantId) -> Result<Option<TenantWebhook>, StageError> {
        if let Some((at, w)) = self.webhooks.lock().get(tenant)
            && at.elapsed() < WEBHOOK_CACHE_TTL
        {
            return Ok(w.clone());
        }
        let w = self
            .store
            .get_webhook(tenant)
            .await
            .map_err(|e| StageError::store(Stage::Webhook, &e))?;
        self.webhooks
            .lock()
            .insert(tenant.clone(), (Instant::now(), w.clone()));
        Ok(w)
    }

    /// Runs `op` (a step of `stage`) until it succeeds or fails permanently. Transient failures (store or log
    /// unavailable) open the breaker: readiness fails, the attempt is repeated after a backoff.
    /// `Err(Ok(Stopped))` when stopped while waiting; `Err(Err(e))` for a permanent failure.
    pub async fn until_ok<T, F, Fut>(
        &self,
        stage: Stage,
        mut op: F,
    ) -> Result<T, Result<Stopped, StageError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StageError>>,
    {
        let min = Duration::from_millis(self.cfg.breaker_min_backoff_ms.max(1));
        let max = Duration::from_millis(self.cfg.breaker_max_backoff_ms).max(min);
        let mut pause = min;
        let mut open_since: Option<Instant> = None;
        loop {
            let result = op().await;
            match result {
                Ok(v) => {
                    if let Some(since) = open_since {
                        self.release();
                        tracing::info!(
                            stage = %stage,
                            outage_ms = since.elapsed().as_millis() as u64,
                            "The pipeline resumed: its dependencies answer again."
                        );
                    }
                    return Ok(v);
                }
                Err(e) if e.is_transient() => {
                    self.metrics
                        .errors
                        .with_label_values(&[e.stage.as_str(), e.code])
                        .inc();
                    if open_since.is_none() {
                        open_since = Some(Instant::now());
                        self.waiting.fetch_add(1, Ordering::SeqCst);
                        self.metrics.breaker_open.set(1);
                    }
                    self.health
                        .trip(format!("paused: {} ({})", e.reason, e.code));
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = pause.as_millis() as u64,
                        "A dependency of the pipeline is unavailable; consumption is paused."
                    );
                    tokio::select! {
                        _ = self.stop.cancelled() => {
                            self.release();
                            return Err(Ok(Stopped));
                        }
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(max);
                }
                Err(e) => {
                    if open_since.is_some() {
                        self.release();
                    }
                    return Err(Err(e));
                }
            }
        }
    }

    fn release(&self) {
        if self.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.health.close();
            self.metrics.breaker_open.set(0);
        }
    }

    /// Counts a failure of `e.stage`.
    pub fn count(&self, e: &StageError) {
        self.metrics
            .errors
            .with_label_values(&[e.stage.as_str(), e.code])
            .inc();
    }
}
