//! The HTTP stack every workload serves through, outermost first: correlation id + request span
//! -> metrics -> panic catcher -> load shedding over a process-wide concurrency limit -> request
//! timeout -> body limit -> the workload's routes, with JSON fallbacks for unknown routes.
//! [`serve`] runs a router until the shutdown token is cancelled, then lets in-flight requests
//! finish.

use crate::correlation;
use crate::error::{self, ApiError};
use crate::metrics::{self, Metrics};
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use caas_config::ServerConfig;
use caas_domain::ErrorCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::BoxError;
use tower::ServiceBuilder;

/// HTTP protections.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub body_limit: usize,
    pub timeout: Duration,
    pub max_concurrency: usize,
}

impl From<&ServerConfig> for HttpSettings {
    fn from(c: &ServerConfig) -> Self {
        Self {
            body_limit: c.body_limit_bytes,
            timeout: Duration::from_millis(c.request_timeout_ms),
            max_concurrency: c.max_concurrent_requests.max(1),
        }
    }
}

async fn handle_overload(err: BoxError) -> ApiError {
    if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::new(ErrorCode::Overloaded, "too many requests in flight; retry")
            .with_retry_after(1)
    } else if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(ErrorCode::Unavailable, "request timed out")
    } else {
        ApiError::internal(err)
    }
}

/// Wraps a workload's routes in the standard stack.
pub fn wrap(router: Router, metrics: &Arc<Metrics>, s: &HttpSettings) -> Router {
    let limit = tower::limit::GlobalConcurrencyLimitLayer::new(s.max_concurrency);
    router
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(s.body_limit))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_overload))
                .load_shed()
                .layer(limit)
                .timeout(s.timeout),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::new(
                ErrorCode::Internal,
                "internal error",
            ))
        }))
        .layer(axum::middleware::from_fn_with_state(
            metrics.clone(),
            metrics::layer,
        ))
        .layer(axum::middleware::from_fn(correlation::layer))
}

/// Binds `addr`.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// How much of a request body that was answered before it was read is still read (and
/// discarded) so that the client sees the answer, and for how long at most.
const DRAIN_MAX_BYTES: u64 = 8 << 20;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// A request body that, dropped before its end (a 413 or 401 answered before the body was
/// read), hands what is left to a task that reads and discards it, up to [`DRAIN_MAX_BYTES`]
/// and [`DRAIN_MAX_TIME`]: the lingering close of other servers. Without it hyper reads what
/// its buffer holds and closes the connection with the rest unread, and the kernel answers
/// the client's next bytes with a reset, which can reach the client before it has read the
/// answer (the client sees a reset connection instead of the 413). With it the connection
/// even stays usable. Past the bounds the body is dropped and hyper closes as before.
struct DrainOnDrop<B: hyper::body::Body + Unpin + Send + 'static> {
    inner: Option<B>,
    ended: bool,
}

impl<B: hyper::body::Body + Unpin + Send + 'static> DrainOnDrop<B> {
    fn new(inner: B) -> Self {
        Self {
            inner: Some(inner),
            ended: false,
        }
    }
}

impl<B: hyper::body::Body + Unpin + Send + 'static> hyper::body::Body for DrainOnDrop<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let r = std::pin::Pin::new(inner).poll_frame(cx);
        if matches!(
            r,
            std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_)))
        ) {
            this.ended = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| hyper::body::SizeHint::with_exact(0))
    }
}

impl<B: hyper::body::Body + Unpin + Send + 'static> Drop for DrainOnDrop<B> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body, DRAIN_MAX_BYTES, DRAIN_MAX_TIME));
        }
    }
}

/// Reads `body` to its end and discards it, unless it holds more than `max_bytes` or takes
/// longer than `max_time`. Returns whether it reached the end.
async fn drain<B: hyper::body::Body + Unpin>(
    mut body: B,
    max_bytes: u64,
    max_time: Duration,
) -> bool {
    use hyper::body::Buf as _;
    let deadline = tokio::time::Instant::now() + max_time;
    let mut read = 0u64;
    loop {
        let next = futures::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout_at(deadline, next).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.remaining() as u64);
                if read > max_bytes {
                    tracing::debug!(read, "Unread request body too large to drain; closing.");
                    return false;
                }
            }
            Ok(Some(Err(_))) => return false,
            Err(_) => {
                tracing::debug!(read, "Unread request body too slow to drain; closing.");
                return false;
            }
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then drains in-flight requests.
///
/// hyper's connection builder is used directly rather than through `axum::serve`, so that its
/// settings can be tuned. This is what `axum::serve` does: `TCP_NODELAY`, the peer address as
/// `ConnectInfo<SocketAddr>`, upgrades (websockets), HTTP/2 with the CONNECT protocol, a pause
/// after a failed accept (out of file descriptors), graceful shutdown of every connection.
/// Besides, a request body answered before it was read is drained ([`DrainOnDrop`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt as _;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().enable_connect_protocol();
    let builder = Arc::new(builder);
    // Connections hold a receiver each; shutdown waits until every one is dropped.
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(());
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!(error = %e, "Accept failed; pausing 1 s.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "Failed to set TCP_NODELAY.");
        }
        let svc = app
            .clone()
            .map_request(move |req: http::Request<hyper::body::Incoming>| {
                let mut req = req.map(|b| axum::body::Body::new(DrainOnDrop::new(b)));
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            });
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let builder = builder.clone();
        let stop = stop.clone();
        let closed_rx = closed_rx.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::trace!(error = %e, "Connection ended with an error.");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        tracing::trace!(error = %e, "Connection ended with an error.");
                    }
                }
            }
            drop(closed_rx);
        });
    }
    drop(listener);
    drop(closed_rx);
    closed_tx.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct In {
        a: u32,
    }

    fn app() -> Router {
        let r = Router::new()
            .route("/x", post(|error::Json(_): error::Json<In>| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        wrap(
            r,
            &Metrics::new(),
            &HttpSettings {
                body_limit: 64,
                timeout: Duration::from_millis(50),
                max_concurrency: 8,
            },
        )
    }

    async fn call(req: Request<Body>) -> (u16, serde_json::Value, http::HeaderMap) {
        let resp = app().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            headers,
        )
    }

    fn post_json(body: &str, ct: Option<&str>) -> Request<Body> {
        let mut b = Request::post("/x");
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        b.body(Body::from(body.to_string())).unwrap()
    }

    #[tokio::test]
    async fn bad_input_gets_coded_errors() {
        let cases = [
            (
                post_json("{", Some("application/json")),
                400,
                "malformed_json",
            ),
            (
                post_json(r#"{"a":1,"b":2}"#, Some("application/json")),
                400,
                "unknown_field",
            ),
            (
                post_json(r#"{"a":"x"}"#, Some("application/json")),
                400,
                "invalid_argument",
            ),
            (
                post_json(r#"{"a":1}"#, Some("text/plain")),
                415,
                "unsupported_media_type",
            ),
            (post_json(r#"{"a":1}"#, None), 415, "unsupported_media_type"),
            (
                post_json(
                    &format!(r#"{{"a":1,"pad":"{}"}}"#, "x".repeat(100)),
                    Some("application/json"),
                ),
                413,
                "payload_too_large",
            ),
        ];
        for (req, status, code) in cases {
            let (s, body, _) = call(req).await;
            assert_eq!(
                (s, body["error"]["code"].as_str()),
                (status, Some(code)),
                "{body}"
            );
        }
        let (s, body, _) = call(Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (404, Some("not_found"))
        );
        let (s, body, _) = call(Request::delete("/x").body(Body::empty()).unwrap()).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (405, Some("method_not_allowed"))
        );
    }

    #[tokio::test]
    async fn timeout_and_correlation_id() {
        let (s, body, h) = call(
            Request::get("/slow")
                .header("x-correlation-id", "abc-1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (503, Some("unavailable"))
        );
        assert_eq!(h.get("x-correlation-id").unwrap(), "abc-1");
        let (_, _, h) = call(post_json(r#"{"a":1}"#, Some("application/json"))).await;
        assert!(h.get("x-correlation-id").is_some(), "made up when absent");
    }

    #[tokio::test]
    async fn drain_reads_to_the_end_within_its_bounds_only() {
        let body = Body::from(vec![0u8; 1000]);
        assert!(drain(body, 2000, Duration::from_secs(5)).await);
        let body = Body::from(vec![0u8; 3000]);
        assert!(!drain(body, 2000, Duration::from_secs(5)).await);
        let endless = Body::from_stream(futures::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >());
        assert!(!drain(endless, 2000, Duration::from_millis(50)).await);
    }

    /// Over a real connection: a body refused before it is read (413) is drained, so the client
    /// reads the answer and the connection serves the next request.
    #[tokio::test]
    async fn an_oversized_body_gets_its_413_and_the_connection_lives_on() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, app(), stop.clone()));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = tcp.into_split();
        let body = vec![b'x'; 2 << 20];
        let head = format!(
            "POST /x HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let writer = tokio::spawn(async move {
            w.write_all(head.as_bytes()).await?;
            w.write_all(&body).await?;
            w.write_all(b"GET /nope HTTP/1.1\r\nhost: t\r\n\r\n")
                .await?;
            Ok::<_, std::io::Error>(w)
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            while !String::from_utf8_lossy(&got).contains("not_found") {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(matches!(read, Ok(Ok(()))), "{read:?}: {text}");
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("payload_too_large"), "{text}");
        assert!(text.contains("HTTP/1.1 404"), "{text}");
        writer.await.unwrap().unwrap();
        stop.cancel();
        drop(r);
        server.await.unwrap().unwrap();
    }
}
