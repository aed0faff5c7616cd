//! The correlation id: taken from the `x-correlation-id` request header when it is sane (1-128
//! printable ASCII characters), made up otherwise; put in the request extensions and the request's
//! log span, returned in the response header, and carried into log record headers by publishers.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use tracing::Instrument as _;

pub const HEADER: &str = "x-correlation-id";

/// The request's correlation id, in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

fn sane(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Middleware: establishes the correlation id and the request span.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map(|v| CorrelationId(v.to_string()))
        .unwrap_or_default();
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(
        "request",
        correlation_id = %id.0,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_ids_are_taken() {
        assert!(sane("abc-123"));
        assert!(!sane(""));
        assert!(!sane("a b"));
        assert!(!sane(&"x".repeat(129)));
    }
}
