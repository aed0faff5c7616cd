//! The pipeline's metrics (fixed vocabulary: received, processed, duplicates, discarded,
//! errors by stage and code, dead letters, retries, notifications, webhook deliveries, stage
//! latency, lag) and its readiness ([`PipelineHealth`]: not ready while the circuit breaker is
//! open).

use caas_kit::metrics::Metrics;
use parking_lot::Mutex;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};

/// The pipeline's metrics. Names get the registry's `caas_` prefix.
#[derive(Clone)]
pub struct PipelineMetrics {
    /// Records read from the conversation-events log.
    pub received: IntCounter,
    /// Events applied to the store.
    pub processed: IntCounter,
    /// Events already applied (replays, retried sends).
    pub duplicates: IntCounter,
    /// Events the store skipped, and notifications without a webhook to go to.
    pub discarded: IntCounter,
    /// Failures by stage and code (each failed attempt counts, transient ones too).
    pub errors: IntCounterVec,
    /// Records that became dead letters, by stage and code.
    pub dead_lettered: IntCounterVec,
    /// Records sent to a retry topic, by stage and level.
    pub retried: IntCounterVec,
    /// Notification events published, by kind.
    pub notifications: IntCounterVec,
    /// Webhook delivery attempts, by outcome (`delivered`, `retry`, `dead_letter`).
    pub webhook_deliveries: IntCounterVec,
    /// Time spent in each stage per batch.
    pub stage_seconds: HistogramVec,
    /// Time to persist one batch (store write only).
    pub batch_seconds: Histogram,
    /// 1 while the circuit breaker is open (the store or the log refuses; not consuming).
    pub breaker_open: IntGauge,
    /// Milliseconds between the last persisted event's acceptance and its persistence.
    pub lag_ms: IntGauge,
}

const BUCKETS: [f64; 13] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl PipelineMetrics {
    // Invariant: literal, valid metric definitions.
    #[allow(clippy::expect_used)]
    pub fn new(m: &Metrics) -> Self {
        let c = |name: &str, help: &str| IntCounter::new(name, help).expect("literal metric");
        let v = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("literal metric")
        };
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
                "Log events the store skipped, and notifications no webhook wants.",
            ),
            errors: v(
                "pipeline_errors_total",
                "Pipeline failures by stage and code.",
                &["stage", "code"],
            ),
            dead_lettered: v(
                "pipeline_dead_lettered_total",
                "Records that became dead letters, by stage and code.",
                &["stage", "code"],
            ),
            retried: v(
                "pipeline_retried_total",
                "Records sent to a retry topic, by stage and level.",
                &["stage", "level"],
            ),
            notifications: v(
                "pipeline_notifications_total",
                "Notification events published, by kind.",
                &["kind"],
            ),
            webhook_deliveries: v(
                "pipeline_webhook_deliveries_total",
                "Webhook delivery attempts by outcome.",
                &["outcome"],
            ),
            stage_seconds: HistogramVec::new(
                HistogramOpts::new("pipeline_stage_seconds", "Time per batch in each stage.")
                    .buckets(BUCKETS.to_vec()),
                &["stage"],
            )
            .expect("literal metric"),
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new("pipeline_batch_seconds", "Time to persist one batch.")
                    .buckets(BUCKETS.to_vec()),
            )
            .expect("literal metric"),
            breaker_open: IntGauge::new(
                "pipeline_breaker_open",
                "1 while the pipeline stopped consuming because the store or the log refuses.",
            )
            .expect("literal metric"),
            lag_ms: IntGauge::new(
                "pipeline_lag_ms",
                "Milliseconds from acceptance to persistence of the last persisted event.",
            )
            .expect("literal metric"),
        };
        m.register(&s.received);
        m.register(&s.processed);
        m.register(&s.duplicates);
        m.register(&s.discarded);
        m.register(&s.errors);
        m.register(&s.dead_lettered);
        m.register(&s.retried);
        m.register(&s.notifications);
        m.register(&s.webhook_deliveries);
        m.register(&s.stage_seconds);
        m.register(&s.batch_seconds);
        m.register(&s.breaker_open);
        m.register(&s.lag_ms);
        s
    }

    /// Sum of `errors` over every code of `stage`.
    pub fn errors_of(&self, stage: &str) -> u64 {
        sum_where(&self.errors, "stage", stage)
    }

    /// Sum of `dead_lettered` over every stage with `code`.
    pub fn dead_lettered_with(&self, code: &str) -> u64 {
        sum_where(&self.dead_lettered, "code", code)
    }
}

fn sum_where(v: &IntCounterVec, label: &str, value: &str) -> u64 {
    use prometheus::core::Collector;
    v.collect()
        .iter()
        .flat_map(|mf| mf.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == label && l.value() == value)
        })
        .map(|m| m.get_counter().value() as u64)
        .sum()
}

/// Readiness of the pipeline: not ready while the circuit breaker is open.
#[derive(Debug, Default)]
pub struct PipelineHealth {
    open: Mutex<Option<String>>,
}

impl PipelineHealth {
    pub fn check(&self) -> Result<(), String> {
        match &*self.open.lock() {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn trip(&self, why: String) {
        *self.open.lock() = Some(why);
    }

    pub(crate) fn close(&self) {
        self.open.lock().take();
    }
}
