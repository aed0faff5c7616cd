//! The message pipeline (`caas pipeline`, and inside `caas standalone`): the part that makes
//! every accepted message durable, transformed and announced, and never loses one or stores
//! one twice. See docs/pipeline.md for the whole story.
//!
//! - [`stages`]: validate, tenant context, authorize, transform — per event, each its own
//!   function with its own error codes ([`error`]);
//! - [`consume`]: the conversation-events consumer (stages, persist the batch, dead letters,
//!   notify, then commit) and the webhook deliverer;
//! - [`ctx`]: shared state and the circuit breaker that stops consumption while the store or
//!   the log is down;
//! - [`dead_letter`], [`retry`], [`notify`], [`webhook`]: failure handling and the stages after
//!   persistence;
//! - [`metrics`]: metrics and readiness.
//!
//! [`run`] runs all of it over any [`caas_bus::Bus`] (Kafka or the embedded log) and any
//! [`caas_store::Store`].

pub mod consume;
pub mod ctx;
pub mod dead_letter;
pub mod error;
pub mod metrics;
pub mod notify;
pub mod retry;
pub mod stages;
pub mod webhook;

pub use metrics::{PipelineHealth, PipelineMetrics};
pub use stages::transform;

use caas_bus::{DynBus, topics};
use caas_config::PipelineConfig;
use caas_store::DynStore;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Every topic the pipeline reads or writes with `cfg` (logical names).
pub fn topics_of(cfg: &PipelineConfig) -> Vec<String> {
    let mut t = vec![
        topics::CONVERSATION_EVENTS.to_string(),
        topics::NOTIFICATIONS.to_string(),
        topics::DEAD_LETTERS.to_string(),
    ];
    t.extend((1..=cfg.retry_delays_ms.len()).map(topics::retry));
    t
}

/// Runs the pipeline until `stop` is cancelled: the conversation-events consumer and, with
/// `webhook.enabled`, the webhook deliverer and one consumer per retry topic. Each finishes
/// its current batch and commits before it returns.
pub async fn run(
    store: DynStore,
    bus: DynBus,
    cfg: PipelineConfig,
    metrics: PipelineMetrics,
    health: Arc<PipelineHealth>,
    stop: CancellationToken,
) -> Result<(), caas_bus::BusError> {
    let names = topics_of(&cfg);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Err(e) = bus.ensure_topics(&refs).await {
        // Not ready for good: the process must not look healthy without its pipeline.
        health.trip(format!("the pipeline could not start: {e}"));
        tracing::error!(error = %e, topics = ?names, "The pipeline's topics are missing; the pipeline does not run.");
        return Err(e);
    }
    let webhooks = cfg.webhook.enabled;
    let levels = cfg.retry_delays_ms.len();
    let ctx = Arc::new(ctx::Ctx::new(
        store,
        bus,
        cfg,
        metrics,
        health.clone(),
        stop.clone(),
    ));
    let mut tasks = JoinSet::new();
    {
        let ctx = ctx.clone();
        tasks.spawn(async move { consume::run_events(&ctx).await });
    }
    if webhooks {
        let c = ctx.clone();
        tasks.spawn(async move { consume::run_webhooks(&c).await });
        for level in 1..=levels {
            let c = ctx.clone();
            tasks.spawn(async move { retry::run_level(&c, level).await });
        }
    }
    let mut first_err = None;
    while let Some(r) = tasks.join_next().await {
        let err = match r {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => caas_bus::BusError::Internal(format!("a pipeline task failed: {e}")),
        };
        tracing::error!(error = %err, "A pipeline consumer stopped with an error; stopping the pipeline.");
        // One consumer failing to start stops the others: the process reports it and exits.
        stop.cancel();
        first_err.get_or_insert(err);
    }
    match first_err {
        Some(e) => {
            health.trip(format!("the pipeline stopped: {e}"));
            Err(e)
        }
        None => Ok(()),
    }
}
