//! Prometheus metrics: one registry per process, the HTTP metrics every workload has, and the
//! `/metrics` router served on its own port. Workload-specific metrics register into
//! [`Metrics::registry`].
//!
//! HTTP metrics are labelled by the matched route template (never the raw path, which would let
//! clients create unbounded series) and errors by their stable code.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use caas_domain::ErrorCode;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

/// The process's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_errors: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Marks a response with the error code it carries, for [`Metrics`] to count.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCodeTag(pub ErrorCode);

impl Metrics {
    // Invariant: the definitions are literals with valid names and labels, checked by tests.
    #[allow(clippy::expect_used)]
    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("caas".into()), None).unwrap_or_default();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("literal metric definition");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency.").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            &["route", "method"],
        )
        .expect("literal metric definition");
        let http_errors = IntCounterVec::new(
            Opts::new(
                "http_errors_total",
                "HTTP error responses by stable error code.",
            ),
            &["code"],
        )
        .expect("literal metric definition");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(http_errors.clone()),
        ] {
            let _ = registry.register(c);
        }
        Arc::new(Self {
            registry,
            http_requests,
            http_duration,
            http_errors,
        })
    }

    /// Registers a collector, logging (not failing) on a duplicate.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: &C) {
        if let Err(e) = self.registry.register(Box::new(c.clone())) {
            tracing::warn!(error = %e, "Failed to register a metric.");
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "Failed to encode metrics.");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The `/metrics` router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(serve))
            .with_state(self.clone())
    }
}

async fn serve(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
}

/// Middleware: counts and times every request, and counts error codes.
pub async fn layer(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    m.http_duration
        .with_label_values(&[&route, &method])
        .observe(start.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    if let Some(tag) = resp.extensions().get::<ErrorCodeTag>() {
        m.http_errors.with_label_values(&[tag.0.as_str()]).inc();
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_http_metrics() {
        let m = Metrics::new();
        m.http_requests
            .with_label_values(&["/x", "GET", "200"])
            .inc();
        m.http_errors.with_label_values(&["not_found"]).inc();
        let text = m.render();
        assert!(
            text.contains("caas_http_requests_total{method=\"GET\",route=\"/x\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("caas_http_errors_total{code=\"not_found\"} 1"),
            "{text}"
        );
    }
}
