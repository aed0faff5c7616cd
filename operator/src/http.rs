//! The operator's own HTTP endpoints: `/metrics` (Prometheus text format) and `/health`
//! (liveness: the process serves requests; no dependency checks). Served on one port.

use crate::controller::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};

/// The router of the metrics/health port.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(|| async { "ok" }))
        .with_state(metrics)
}

async fn render_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    match encoder.encode(&metrics.registry.gather(), &mut out) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            out,
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(error = %error, "Failed to encode metrics.");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_text(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_show_reconciles_and_errors_by_label() {
        let metrics = Metrics::new().unwrap();
        drop(metrics.start("chatplatform"));
        metrics
            .errors
            .with_label_values(&["chatplatform", "kube_api"])
            .inc();
        let (status, body) = get_text(router(metrics), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("caas_operator_reconciles_total{controller=\"chatplatform\"} 1"),
            "{body}"
        );
        assert!(body.contains("caas_operator_reconcile_errors_total{controller=\"chatplatform\",error=\"kube_api\"} 1"), "{body}");
        assert!(
            body.contains(
                "caas_operator_reconcile_duration_seconds_count{controller=\"chatplatform\"} 1"
            ),
            "{body}"
        );
    }

    #[tokio::test]
    async fn health_answers() {
        let (status, body) = get_text(router(Metrics::new().unwrap()), "/health").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
}
