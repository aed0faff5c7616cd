//! The media workload's metrics (registered in the process registry, so they carry the
//! `caas_` prefix): bytes in and out, uploads by outcome, quota rejections, thumbnails.

use caas_kit::metrics::Metrics;
use prometheus::{IntCounter, IntCounterVec, Opts};

#[derive(Clone, Debug)]
pub struct MediaMetrics {
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    /// `outcome`: stored, checksum_mismatch, too_large, type_refused, quota, incomplete,
    /// aborted, expired, error.
    pub uploads: IntCounterVec,
    pub quota_rejections: IntCounter,
    /// `outcome`: made, skipped, failed.
    pub thumbnails: IntCounterVec,
    pub events_failed: IntCounter,
}

impl MediaMetrics {
    // Invariant: the definitions are literals with valid names and labels.
    #[allow(clippy::expect_used)]
    pub fn new(metrics: &Metrics) -> Self {
        let m = Self {
            bytes_in: IntCounter::new("media_bytes_in_total", "Bytes of files received.")
                .expect("literal metric"),
            bytes_out: IntCounter::new("media_bytes_out_total", "Bytes of files sent.")
                .expect("literal metric"),
            uploads: IntCounterVec::new(
                Opts::new(
                    "media_uploads_total",
                    "Uploads (single or completed) by outcome.",
                ),
                &["outcome"],
            )
            .expect("literal metric"),
            quota_rejections: IntCounter::new(
                "media_quota_rejections_total",
                "Uploads refused because the tenant's storage quota was reached.",
            )
            .expect("literal metric"),
            thumbnails: IntCounterVec::new(
                Opts::new("media_thumbnails_total", "Thumbnails by outcome."),
                &["outcome"],
            )
            .expect("literal metric"),
            events_failed: IntCounter::new(
                "media_events_failed_total",
                "Media events that could not be published.",
            )
            .expect("literal metric"),
        };
        metrics.register(&m.bytes_in);
        metrics.register(&m.bytes_out);
        metrics.register(&m.uploads);
        metrics.register(&m.quota_rejections);
        metrics.register(&m.thumbnails);
        metrics.register(&m.events_failed);
        m
    }
}
