//! A bare Socket.IO server, the baseline of `scripts/bench-realtime.sh`: axum + socketioxide
//! 0.18.9 with default settings, a current-thread tokio runtime, `TCP_NODELAY` on accepted
//! sockets, and nothing but:
//!
//! - on connect, join the room named in the handshake's `auth.room`;
//! - on `message.send` `{room, ...}`, emit `message.created` with the same payload to every
//!   socket of the room (the sender included, as caas does) and ack `{ok: true}`.
//!
//! Usage: `bare-socketio [LISTEN_ADDR]` (default `127.0.0.1:3000`); prints `listening <addr>`.

use axum::serve::ListenerExt as _;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(addr))
}

async fn run(addr: String) -> std::io::Result<()> {
    let (layer, io) = SocketIo::builder().build_layer();
    io.ns("/", async |s: SocketRef, TryData(auth): TryData<Value>| {
        if let Some(room) = auth.ok().as_ref().and_then(|a| a["room"].as_str()) {
            s.join(room.to_string());
        }
        s.on(
            "message.send",
            async |s: SocketRef, Data(v): Data<Value>, ack: AckSender| {
                if let Some(room) = v["room"].as_str() {
                    let _ = s.within(room.to_string()).emit("message.created", &v).await;
                }
                let _ = ack.send(&json!({"ok": true}));
            },
        );
    });
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}
