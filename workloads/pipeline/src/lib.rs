//! The persistence consumer, first stage of the pipeline: reads the conversation-events log in
//! batches and writes them to the store with [`caas_store::Store::apply`], then commits the
//! consumer offsets — only after the batch's effects are durable (the at-least-once pattern;
//! `apply` is idempotent, so a replay after a crash changes nothing).
//!
//! A store outage does not skip anything and does not spin: the batch is retried with
//! exponential backoff (to 5 s) until it applies or shutdown is requested; readiness reports
//! the failure meanwhile. Records that cannot be decoded are counted and logged and skipped
//! (dead letters are the next stage of the pipeline).

use caas_bus::{Consumer, Delivery, DynBus, Envelope, last_positions, topics};
use caas_config::PipelineConfig;
use caas_domain::ConversationId;
use caas_domain::event::ConversationEvent;
use caas_kit::metrics::Metrics;
use caas_store::{DynStore, LogEvent, PERSIST_CONSUMER};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The pipeline's metrics.
#[derive(Clone)]
pub struct PipelineMetrics {
    pub received: IntCounter,
    pub processed: IntCounter,
    pub duplicates: IntCounter,
    pub discarded: IntCounter,
    pub errors: IntCounterVec,
    pub batch_seconds: Histogram,
}

impl PipelineMetrics {
    // Invariant: literal, valid metric definitions.
    #[allow(clippy::expect_used)]
    pub fn new(m: &Metrics) -> Self {
        let c = |name: &str, help: &str| IntCounter::new(name, help).expect("literal metric");
        let s = Self {
            received: c("pipeline_received_total", "Log records received."),
            processed: c(
                "pipeline_processed_total",
                "Log events applied to the store.",
            ),
            duplicates: c(
                "pipeline_duplicates_total",
                "Log events already applied (replays, retried sends).",
            ),
            discarded: c(
                "pipeline_discarded_total",
                "Log records that could not be decoded or applied.",
            ),
            errors: IntCounterVec::new(
                Opts::new("pipeline_errors_total", "Pipeline errors by stage."),
                &["stage"],
            )
            .expect("literal metric"),
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new("pipeline_batch_seconds", "Time to persist one batch.").buckets(
                    vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                    ],
                ),
            )
            .expect("literal metric"),
        };
        m.register(&s.received);
        m.register(&s.processed);
        m.register(&s.duplicates);
        m.register(&s.discarded);
        m.register(&s.errors);
        m.register(&s.batch_seconds);
        s
    }
}

/// Readiness of the pipeline: false while the store refuses batches.
#[derive(Debug, Default)]
pub struct PipelineHealth {
    store_failing: AtomicBool,
}

impl PipelineHealth {
    pub fn check(&self) -> Result<(), String> {
        if self.store_failing.load(Ordering::Relaxed) {
            Err("the store refuses writes; consumption is paused".into())
        } else {
            Ok(())
        }
    }
}

/// Decodes a delivery into a store event; `None` (logged) when it cannot be.
pub fn decode(d: &Delivery) -> Option<LogEvent> {
    let env = match Envelope::<ConversationEvent>::from_delivery(d) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(
                error = %e,
                partition = d.partition,
                offset = d.offset,
                correlation_id = d.header(caas_bus::HEADER_CORRELATION_ID).unwrap_or(""),
                tenant_id = d.header(caas_bus::HEADER_TENANT).unwrap_or(""),
                "Undecodable log record; skipping it."
            );
            return None;
        }
    };
    let conversation_id = match ConversationId::parse(env.key.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                error = %e,
                partition = d.partition,
                offset = d.offset,
                correlation_id = %env.correlation_id,
                tenant_id = %env.tenant_id,
                "Log record with an invalid key; skipping it."
            );
            return None;
        }
    };
    Some(LogEvent {
        partition: d.partition,
        offset: d.offset,
        tenant_id: env.tenant_id,
        conversation_id,
        event: transform(env.event),
    })
}

/// Renders message text again here, so what is stored never depends on what a producer
/// claimed: the HTML, links and hashtags are this version's rendering of the raw text, and
/// mentions are kept only where the text really mentions them (the accepter has already
/// limited them to members).
pub fn transform(event: ConversationEvent) -> ConversationEvent {
    use caas_domain::text::render;
    match event {
        ConversationEvent::MessageCreated(mut m) => {
            let r = render(&m.text);
            m.mentions
                .retain(|u| r.mentions.iter().any(|c| c == u.as_str()));
            (m.html, m.links, m.hashtags) = (r.html, r.links, r.hashtags);
            ConversationEvent::MessageCreated(m)
        }
        ConversationEvent::MessageUpdated(mut m) => {
            let r = render(&m.text);
            m.mentions
                .retain(|u| r.mentions.iter().any(|c| c == u.as_str()));
            (m.html, m.links, m.hashtags) = (r.html, r.links, r.hashtags);
            ConversationEvent::MessageUpdated(m)
        }
        other => other,
    }
}

/// Runs the persistence consumer until `stop` is cancelled. The current batch is finished and
/// committed before it returns.
pub async fn run(
    store: DynStore,
    bus: DynBus,
    cfg: PipelineConfig,
    metrics: PipelineMetrics,
    health: Arc<PipelineHealth>,
    stop: CancellationToken,
) -> Result<(), caas_bus::BusError> {
    let mut consumer = bus
        .consumer(&cfg.group_id, &[topics::CONVERSATION_EVENTS])
        .await?;
    tracing::info!(group = %cfg.group_id, "Persistence consumer started.");
    let linger = Duration::from_millis(cfg.batch_linger_ms);
    let max = cfg.batch_max_events.max(1);
    loop {
        let batch = tokio::select! {
            _ = stop.cancelled() => break,
            b = consumer.next_batch(max, linger) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                metrics.errors.with_label_values(&["consume"]).inc();
                tracing::warn!(error = %e, "Failed to read from the log; retrying.");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        if batch.is_empty() {
            continue;
        }
        metrics.received.inc_by(batch.len() as u64);
        if !persist(&store, &batch, &metrics, &health, &stop).await {
            break; // stopped while the store was down: nothing committed, replayed next start
        }
        if let Err(e) = commit(consumer.as_mut(), &batch).await {
            // The effects are durable; the batch will replay and apply as duplicates.
            metrics.errors.with_label_values(&["commit"]).inc();
            tracing::warn!(error = %e, "Failed to commit consumer offsets.");
        }
    }
    if let Err(e) = consumer.close().await {
        tracing::warn!(error = %e, "Failed to leave the consumer group cleanly.");
    }
    tracing::info!("Persistence consumer stopped.");
    Ok(())
}

async fn commit(consumer: &mut dyn Consumer, batch: &[Delivery]) -> Result<(), caas_bus::BusError> {
    consumer.commit(&last_positions(batch)).await
}

/// Applies a batch, retrying while the store is unavailable. `false` if stopped first.
async fn persist(
    store: &DynStore,
    batch: &[Delivery],
    metrics: &PipelineMetrics,
    health: &PipelineHealth,
    stop: &CancellationToken,
) -> bool {
    let events: Vec<LogEvent> = batch.iter().filter_map(decode).collect();
    let undecodable = batch.len() - events.len();
    if undecodable > 0 {
        metrics.discarded.inc_by(undecodable as u64);
        metrics
            .errors
            .with_label_values(&["decode"])
            .inc_by(undecodable as u64);
    }
    let mut pause = Duration::from_millis(50);
    loop {
        let start = Instant::now();
        match store.apply(PERSIST_CONSUMER, &events).await {
            Ok(report) => {
                metrics.batch_seconds.observe(start.elapsed().as_secs_f64());
                metrics.processed.inc_by(report.applied as u64);
                metrics.duplicates.inc_by(report.duplicates as u64);
                metrics.discarded.inc_by(report.skipped as u64);
                if undecodable > 0 {
                    // Skipped records must not hold readers waiting for their partition.
                    let next: Vec<(i32, i64)> = last_positions(batch)
                        .iter()
                        .map(|(_, p)| (p.partition, p.offset + 1))
                        .collect();
                    if let Err(e) = store.advance_progress(PERSIST_CONSUMER, &next).await {
                        metrics.errors.with_label_values(&["persist"]).inc();
                        tracing::warn!(error = %e, "Failed to move progress past skipped records.");
                    }
                }
                health.store_failing.store(false, Ordering::Relaxed);
                return true;
            }
            Err(e) => {
                metrics.errors.with_label_values(&["persist"]).inc();
                health.store_failing.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e, events = events.len(), retry_in_ms = pause.as_millis() as u64, "Failed to persist a batch; retrying.");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caas_domain::event::MessageCreated;
    use caas_domain::{MessageId, UserId};

    #[test]
    fn a_producer_cannot_smuggle_html_or_mentions() {
        let ev = ConversationEvent::MessageCreated(MessageCreated {
            message_id: MessageId::generate(),
            sender_id: UserId::parse("eve").unwrap(),
            text: "hi @bob".into(),
            html: "<img src=x onerror=alert(1)>".into(),
            mentions: vec![
                UserId::parse("bob").unwrap(),
                UserId::parse("carl").unwrap(),
            ],
            links: vec!["javascript:alert(1)".into()],
            hashtags: vec![],
            parent_id: None,
            client_msg_id: None,
            forwarded_from: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        });
        let ConversationEvent::MessageCreated(m) = transform(ev) else {
            panic!("kind changed")
        };
        assert!(!m.html.contains("<img"), "{}", m.html);
        assert!(m.links.is_empty());
        assert_eq!(m.mentions, vec![UserId::parse("bob").unwrap()]);
    }
}
