//! The realtime workload of caas: a Socket.IO v4 server (socketioxide) that official Socket.IO
//! clients use unchanged. See docs/realtime.md for the protocol (events, payloads, acks, codes).
//!
//! - Handshake: `auth.token` is the platform JWT; refusals carry a stable code as the
//!   `connect_error` message. A per-tenant connection quota holds across pods ([`presence`]).
//! - Client events with acks go through the transport-free write path of the gateway
//!   ([`caas_gateway::write`]): a send is acked once it is durable in the log.
//! - Server events come from the log: each pod's [`hub`] reads every partition and emits to the
//!   rooms of its own sockets, stamped with a resume [`cursor`]; a client that reconnects with
//!   its last cursor gets what it missed, then live events, with no gap and no duplicate.
//! - Typing and presence are ephemeral: never on the log; they cross pods through the Socket.IO
//!   Redis adapter when Redis is configured.
//! - On SIGTERM ([`Realtime::drain`]) clients are told to reconnect elsewhere, spread over time,
//!   and disconnected once their in-flight acks are answered.

pub mod cursor;
mod handlers;
pub mod hub;
pub mod metrics;
pub mod presence;

use caas_gateway::AppState;
use caas_kit::metrics::Metrics;
use hub::HubHandle;
use metrics::SocketMetrics;
use presence::Presence;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use socketioxide::layer::SocketIoLayer;

/// Everything the handlers share.
pub(crate) struct Rt<A: Adapter> {
    pub app: AppState,
    pub presence: Arc<dyn Presence>,
    pub hub: HubHandle<A>,
    pub metrics: SocketMetrics,
    pub draining: AtomicBool,
}

/// A running realtime server: the handle for shutdown.
pub struct Realtime<A: Adapter> {
    rt: Arc<Rt<A>>,
    io: SocketIo<A>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl<A: Adapter> std::fmt::Debug for Realtime<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realtime").finish_non_exhaustive()
    }
}

/// The Socket.IO builder with the settings of `cfg` (ping, payload limit, websocket buffers).
pub fn builder(cfg: &caas_config::SocketConfig) -> socketioxide::SocketIoBuilder {
    SocketIo::builder()
        .ping_interval(Duration::from_millis(cfg.ping_interval_ms))
        .ping_timeout(Duration::from_millis(cfg.ping_timeout_ms))
        .max_payload(cfg.max_payload_bytes)
        .ack_timeout(Duration::from_secs(10))
        // tungstenite zero-fills its whole read buffer per connection and keeps it for the
        // connection's life: client frames are small (a larger frame still reads, in steps).
        .ws_read_buffer_size(512)
}
/// A Socket.IO request as socketioxide gets it: an owned copy of the URI and of the only header
/// it reads (`Sec-WebSocket-Key`), the rest of the headers dropped; method, version, extensions
/// (the upgrade handle, the peer address) and body kept, axum's `OriginalUri` replaced by the
/// owned copy. socketioxide keeps the handshake request's parts for the life of the
/// connection, and hyper's parsed URI and header values are slices of the connection's read
/// buffer (up to 16 KiB): kept, they pin that buffer. axum's router puts a clone of the parsed
/// URI in the extensions (`OriginalUri`) before any layer runs, so that one must be replaced
/// too, or the buffer stays pinned. Other requests pass untouched.
pub fn own_socketio_request<B>(req: axum::http::Request<B>) -> axum::http::Request<B> {
    if !req.uri().path().starts_with("/socket.io") {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    if let Ok(uri) = axum::http::Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    if parts
        .extensions
        .remove::<axum::extract::OriginalUri>()
        .is_some()
    {
        let owned = axum::extract::OriginalUri(parts.uri.clone());
        parts.extensions.insert(owned);
    }
    let mut headers = axum::http::HeaderMap::with_capacity(1);
    if let Some(key) = parts.headers.get(axum::http::header::SEC_WEBSOCKET_KEY)
        && let Ok(v) = axum::http::HeaderValue::from_bytes(key.as_bytes())
    {
        headers.insert(axum::http::header::SEC_WEBSOCKET_KEY, v);
    }
    parts.headers = headers;
    axum::http::Request::from_parts(parts, body)
}

async fn own_handshake(req: axum::extract::Request) -> axum::extract::Request {
    own_socketio_request(req)
}

/// Starts the realtime server on an already built `io` (with its adapter): the fan-out hub,
/// the presence heartbeat and the namespace handlers.
pub async fn start<A: Adapter + socketioxide_core::adapter::DefinedAdapter>(
    io: SocketIo<A>,
    app: AppState,
    presence: Arc<dyn Presence>,
    metrics: &Metrics,
) -> anyhow::Result<Realtime<A>> {
    let cfg = app.config.socket.clone();
    let metrics = SocketMetrics::new(metrics);
    let stop = CancellationToken::new();
    let (hub, hub_task) = hub::start(
        io.clone(),
        app.bus.clone(),
        cfg.replay_window,
        metrics.clone(),
        stop.clone(),
    )
    .await?;
    let rt = Arc::new(Rt {
        app,
        presence,
        hub,
        metrics,
        draining: AtomicBool::new(false),
    });
    handlers::register(&io, rt.clone());
    let heartbeat = tokio::spawn(handlers::heartbeat(
        io.clone(),
        rt.clone(),
        Duration::from_millis(cfg.presence_heartbeat_ms),
        stop.clone(),
    ));
    Ok(Realtime {
        rt,
        io,
        stop,
        tasks: vec![hub_task, heartbeat],
    })
}

impl<A: Adapter> Realtime<A> {
    /// Refuses new connections from now on.
    pub fn set_draining(&self) {
        self.rt.draining.store(true, Ordering::SeqCst);
    }

    /// Live connections on this pod.
    pub fn connections(&self) -> usize {
        self.io.sockets().len()
    }

    /// Graceful shutdown: refuse new connections, tell every client to reconnect elsewhere —
    /// spread evenly over `spread`, never all at once — and disconnect each once its in-flight
    /// acks are answered; then stop the hub.
    pub async fn drain(self, spread: Duration) {
        self.set_draining();
        let sockets = self.io.sockets();
        let n = sockets.len().max(1) as u32;
        let start = tokio::time::Instant::now();
        tracing::info!(
            connections = sockets.len(),
            spread_ms = spread.as_millis() as u64,
            "Draining realtime connections."
        );
        let mut waits = tokio::task::JoinSet::new();
        for (i, s) in sockets.into_iter().enumerate() {
            let at = start + spread * (i as u32) / n;
            tokio::time::sleep_until(at).await;
            waits.spawn(handlers::send_away(s));
        }
        while waits.join_next().await.is_some() {}
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The realtime server mounted in front of an HTTP router, whatever its adapter.
pub struct Mounted {
    draining: Box<dyn Fn() + Send + Sync>,
    drain: Box<dyn FnOnce(Duration) -> futures::future::BoxFuture<'static, ()> + Send>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted").finish_non_exhaustive()
    }
}

impl Mounted {
    /// Refuses new connections from now on.
    pub fn set_draining(&self) {
        (self.draining)()
    }

    /// See [`Realtime::drain`].
    pub async fn drain(self, spread: Duration) {
        (self.drain)(spread).await
    }
}

/// `router` behind the Socket.IO layer, which gets owned copies of its requests
/// ([`own_socketio_request`]).
fn mount_layer<A: Adapter>(router: axum::Router, layer: SocketIoLayer<A>) -> axum::Router {
    router
        .layer(layer)
        .layer(axum::middleware::map_request(own_handshake))
}

fn mounted<A: Adapter>(r: Realtime<A>) -> Mounted {
    let rt = r.rt.clone();
    Mounted {
        draining: Box::new(move || rt.draining.store(true, Ordering::SeqCst)),
        drain: Box::new(move |spread| Box::pin(r.drain(spread))),
    }
}

/// Starts the realtime server and puts it in front of `router` (it answers `/socket.io/`, the
/// rest goes to `router`). With `redis` (the shared Redis of the platform) Socket.IO rooms span
/// every pod through the Redis adapter and presence lives in Redis; without it, in memory.
pub async fn mount(
    router: axum::Router,
    app: AppState,
    metrics: &Metrics,
    redis: Option<(&caas_config::RedisConfig, redis::aio::ConnectionManager)>,
) -> anyhow::Result<(axum::Router, Mounted)> {
    let cfg = app.config.socket.clone();
    let ttl = Duration::from_millis(cfg.presence_ttl_ms);
    match redis {
        None => {
            let (layer, io) = builder(&cfg).build_layer();
            let presence = Arc::new(presence::MemoryPresence::new(ttl));
            let r = start(io, app, presence, metrics).await?;
            Ok((mount_layer(router, layer), mounted(r)))
        }
        Some((rc, conn)) => {
            use socketioxide_redis::drivers::redis::redis_client as r1;
            let mut url = rc.url.clone();
            // The adapter's driver needs RESP3 (pub/sub pushes on a multiplexed connection).
            if !url.contains("protocol=") {
                url.push_str(if url.contains('?') { "&" } else { "?" });
                url.push_str("protocol=resp3");
            }
            let client = r1::Client::open(url.as_str())?;
            let adapter_cfg = socketioxide_redis::RedisAdapterConfig::new()
                .with_prefix(format!("{}socket.io", rc.key_prefix));
            let adapter =
                socketioxide_redis::RedisAdapterCtr::new_with_redis_config(&client, adapter_cfg)
                    .await?;
            let (layer, io) = builder(&cfg)
                .with_adapter::<socketioxide_redis::RedisAdapter<_>>(adapter)
                .build_layer();
            let presence = Arc::new(presence::RedisPresence::new(conn, &rc.key_prefix, ttl));
            let r = start(io, app, presence, metrics).await?;
            Ok((mount_layer(router, layer), mounted(r)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use axum::extract::OriginalUri;
    use axum::http::header::{SEC_WEBSOCKET_KEY, USER_AGENT};
    use axum::http::{HeaderValue, Request, Uri};

    const PATH: &str = "/socket.io/?EIO=4&transport=websocket";
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// A request as hyper and axum's router hand it over: URI and header values are slices of
    /// one read buffer, and `OriginalUri` is a clone of the URI.
    fn parsed(buf: &Bytes, path_len: usize) -> Request<()> {
        let uri = Uri::from_maybe_shared(buf.slice(..path_len)).expect("uri");
        let key = HeaderValue::from_maybe_shared(buf.slice(path_len..)).expect("key");
        let ua = HeaderValue::from_maybe_shared(buf.slice(path_len..path_len + 4)).expect("ua");
        let mut req = Request::get(uri.clone())
            .header(SEC_WEBSOCKET_KEY, key)
            .header(USER_AGENT, ua)
            .body(())
            .expect("request");
        req.extensions_mut().insert(OriginalUri(uri));
        req
    }

    #[test]
    fn a_socketio_request_keeps_nothing_of_the_read_buffer() {
        let buf = Bytes::from(format!("{PATH}{KEY}").into_bytes());
        let req = own_socketio_request(parsed(&buf, PATH.len()));
        assert!(buf.is_unique(), "the read buffer is still referenced");
        assert_eq!(req.uri(), PATH);
        assert_eq!(req.headers().len(), 1);
        assert_eq!(req.headers()[SEC_WEBSOCKET_KEY], KEY);
        let original = req
            .extensions()
            .get::<OriginalUri>()
            .expect("OriginalUri kept");
        assert_eq!(original.0, PATH);
    }

    #[test]
    fn other_requests_pass_untouched() {
        let path = "/v1/conversations";
        let buf = Bytes::from(format!("{path}{KEY}").into_bytes());
        let req = own_socketio_request(parsed(&buf, path.len()));
        assert!(!buf.is_unique());
        assert_eq!(req.headers().len(), 2);
    }
}
