//! Metrics of the realtime workload (`caas_socket_*`).

use caas_kit::metrics::Metrics;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
};

#[derive(Clone)]
pub struct SocketMetrics {
    /// Live connections by tenant.
    pub connections: IntGaugeVec,
    /// Client events received, by event name.
    pub events_in: IntCounterVec,
    /// Events emitted to rooms or sockets, by event name (one per emit, not per recipient).
    pub events_out: IntCounterVec,
    /// Time from a client event to its ack, by event name.
    pub ack_seconds: HistogramVec,
    /// Time from the event's acceptance to its fan-out on this pod.
    pub fanout_lag: Histogram,
    /// Errors answered or met, by stable code.
    pub errors: IntCounterVec,
    /// Events sent to reconnecting clients from the replay window or the log.
    pub replayed: IntCounter,
    /// Connections refused at the handshake, by code.
    pub refused: IntCounterVec,
}

impl std::fmt::Debug for SocketMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketMetrics").finish_non_exhaustive()
    }
}

const LATENCY: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl SocketMetrics {
    // Invariant: the definitions are literals with valid names and labels.
    #[allow(clippy::expect_used)]
    pub fn new(m: &Metrics) -> Self {
        let s = Self {
            connections: IntGaugeVec::new(
                Opts::new("socket_connections", "Live realtime connections by tenant."),
                &["tenant"],
            )
            .expect("literal metric"),
            events_in: IntCounterVec::new(
                Opts::new("socket_events_in_total", "Client events received by name."),
                &["event"],
            )
            .expect("literal metric"),
            events_out: IntCounterVec::new(
                Opts::new(
                    "socket_events_out_total",
                    "Events emitted by name (per emit).",
                ),
                &["event"],
            )
            .expect("literal metric"),
            ack_seconds: HistogramVec::new(
                HistogramOpts::new("socket_ack_seconds", "Client event to ack.")
                    .buckets(LATENCY.to_vec()),
                &["event"],
            )
            .expect("literal metric"),
            fanout_lag: Histogram::with_opts(
                HistogramOpts::new(
                    "socket_fanout_lag_seconds",
                    "Acceptance of an event to its fan-out on this pod.",
                )
                .buckets(LATENCY.to_vec()),
            )
            .expect("literal metric"),
            errors: IntCounterVec::new(
                Opts::new("socket_errors_total", "Errors by stable code."),
                &["code"],
            )
            .expect("literal metric"),
            replayed: IntCounter::new(
                "socket_replayed_events_total",
                "Events replayed to reconnecting clients.",
            )
            .expect("literal metric"),
            refused: IntCounterVec::new(
                Opts::new(
                    "socket_refused_connections_total",
                    "Handshakes refused, by code.",
                ),
                &["code"],
            )
            .expect("literal metric"),
        };
        m.register(&s.connections);
        m.register(&s.events_in);
        m.register(&s.events_out);
        m.register(&s.ack_seconds);
        m.register(&s.fanout_lag);
        m.register(&s.errors);
        m.register(&s.replayed);
        m.register(&s.refused);
        s
    }
}
