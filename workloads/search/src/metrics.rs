//! The search workload's metrics: indexing (received, indexed, replayed, discarded, batch time),
//! the index (documents, bytes, lag behind the log), queries (latency by kind) and rebuilds.

use crate::indexer::BatchReport;
use caas_kit::metrics::Metrics;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};
use std::time::Duration;

#[derive(Clone)]
pub struct SearchMetrics {
    pub received: IntCounter,
    pub indexed: IntCounter,
    pub replayed: IntCounter,
    pub discarded: IntCounter,
    pub errors: IntCounterVec,
    pub batch_seconds: Histogram,
    pub query_seconds: HistogramVec,
    pub docs: IntGauge,
    pub index_bytes: IntGauge,
    pub lag_records: IntGauge,
    pub rebuild_documents: IntCounter,
}

impl SearchMetrics {
    /// Metrics registered in `m`.
    pub fn new(m: &Metrics) -> Self {
        let s = Self::unregistered();
        m.register(&s.received);
        m.register(&s.indexed);
        m.register(&s.replayed);
        m.register(&s.discarded);
        m.register(&s.errors);
        m.register(&s.batch_seconds);
        m.register(&s.query_seconds);
        m.register(&s.docs);
        m.register(&s.index_bytes);
        m.register(&s.lag_records);
        m.register(&s.rebuild_documents);
        s
    }

    /// Metrics that no registry exports (tests, benchmarks).
    // Invariant: literal, valid metric definitions.
    #[allow(clippy::expect_used)]
    pub fn unregistered() -> Self {
        let c = |name: &str, help: &str| IntCounter::new(name, help).expect("literal metric");
        let g = |name: &str, help: &str| IntGauge::new(name, help).expect("literal metric");
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ];
        Self {
            received: c(
                "search_received_total",
                "Log records received by the indexer.",
            ),
            indexed: c(
                "search_indexed_total",
                "Log events turned into index operations.",
            ),
            replayed: c(
                "search_replayed_total",
                "Log records already in the index (replays after a restart), skipped.",
            ),
            discarded: c(
                "search_discarded_total",
                "Log records that could not be decoded or had nothing to update.",
            ),
            errors: IntCounterVec::new(
                Opts::new("search_errors_total", "Search errors by stage."),
                &["stage"],
            )
            .expect("literal metric"),
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "search_batch_seconds",
                    "Time to index and commit one batch.",
                )
                .buckets(buckets.clone()),
            )
            .expect("literal metric"),
            query_seconds: HistogramVec::new(
                HistogramOpts::new("search_query_seconds", "Query latency by kind.")
                    .buckets(buckets),
                &["kind"],
            )
            .expect("literal metric"),
            docs: g("search_documents", "Documents in the current index."),
            index_bytes: g("search_index_bytes", "Size of the current index on disk."),
            lag_records: g(
                "search_lag_records",
                "Log records published but not yet indexed (all partitions).",
            ),
            rebuild_documents: c(
                "search_rebuild_documents_total",
                "Documents written from the store by rebuilds.",
            ),
        }
    }

    pub fn observe_batch(&self, r: &BatchReport, took: Duration) {
        self.batch_seconds.observe(took.as_secs_f64());
        self.indexed.inc_by(r.indexed as u64);
        self.replayed.inc_by(r.replayed as u64);
        self.discarded.inc_by(r.discarded as u64);
    }
}
