//! The handshake, the client events and their acks, presence and typing.

use crate::Rt;
use crate::cursor::Cursor;
use crate::hub::{self, Subscribe, SubscribeError, conversation_room};
use crate::presence::{Conn, PresenceError};
use caas_bus::topics;
use caas_domain::permission::{Action, Resource};
use caas_domain::{ConversationId, ErrorCode, MessageId, TenantId, UserId};
use caas_gateway::state::Caller;
use caas_gateway::write::{self, NewMessage};
use caas_kit::auth::Principal;
use caas_kit::error::ApiError;
use parking_lot::Mutex;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler as _;
use socketioxide_core::adapter::{DefinedAdapter, Spawnable as _};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Per connection, in the socket's extensions.
pub(crate) struct Session {
    principal: Mutex<Principal>,
    conn: Conn,
    inflight: AtomicUsize,
    /// The conversations joined at subscription (for the offline announcement).
    rooms: Mutex<Vec<String>>,
}

impl Session {
    fn tenant(&self) -> TenantId {
        self.conn.tenant.clone()
    }
    fn user(&self) -> UserId {
        self.conn.user.clone()
    }
}

/// The handshake payload (`auth` of the Socket.IO client).
#[derive(Debug, Deserialize)]
struct Auth {
    token: Option<String>,
    /// The last cursor the client saw: resume from there.
    cursor: Option<String>,
}

/// A refused handshake: its message is the stable code (socketioxide's `connect_error` carries
/// only a message; docs/realtime.md lists the codes).
#[derive(Debug)]
struct Refused(ErrorCode);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>, rt: Arc<Rt<A>>) {
    let mw_rt = rt.clone();
    let middleware = move |s: SocketRef<A>, TryData(auth): TryData<Auth>| {
        let rt = mw_rt.clone();
        async move { authenticate(&rt, &s, auth.ok()).await }
    };
    let on_connect = move |s: SocketRef<A>, TryData(auth): TryData<Auth>| {
        let rt = rt.clone();
        async move { connected(rt, s, auth.ok()).await }
    };
    // With a remote adapter this starts its subscriptions in the background (errors logged).
    io.ns("/", on_connect.with(middleware)).spawn();
}

async fn authenticate<A: Adapter>(
    rt: &Rt<A>,
    s: &SocketRef<A>,
    auth: Option<Auth>,
) -> Result<(), Refused> {
    let refuse = |code: ErrorCode| {
        rt.metrics.refused.with_label_values(&[code.as_str()]).inc();
        Refused(code)
    };
    if rt.draining.load(Ordering::SeqCst) {
        return Err(refuse(ErrorCode::Unavailable));
    }
    let Some(token) = auth.and_then(|a| a.token).filter(|t| !t.is_empty()) else {
        return Err(refuse(ErrorCode::Unauthenticated));
    };
    let principal = rt
        .app
        .auth
        .authenticate(&token)
        .await
        .map_err(|e| refuse(e.code))?;
    let conn = Conn {
        tenant: principal.tenant_id().clone(),
        user: principal.user_id.clone(),
        id: format!("{}:{}", uuid::Uuid::now_v7(), s.id),
    };
    let max = principal.tenant.quotas.max_connections;
    let first = match rt.presence.connect(&conn, max).await {
        Ok(first) => first,
        Err(PresenceError::QuotaExceeded(_)) => return Err(refuse(ErrorCode::QuotaExceeded)),
        Err(PresenceError::Unavailable(e)) => {
            tracing::warn!(error = %e, "Presence unavailable at a handshake.");
            return Err(refuse(ErrorCode::Unavailable));
        }
    };
    s.extensions.insert(FirstConnection(first));
    s.extensions.insert(Arc::new(Session {
        principal: Mutex::new(principal),
        conn,
        inflight: AtomicUsize::new(0),
        rooms: Mutex::new(Vec::new()),
    }));
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct FirstConnection(bool);

fn session<A: Adapter>(s: &SocketRef<A>) -> Option<Arc<Session>> {
    s.extensions.get::<Arc<Session>>()
}

async fn connected<A: Adapter>(rt: Arc<Rt<A>>, s: SocketRef<A>, auth: Option<Auth>) {
    let Some(sess) = session(&s) else {
        let _ = s.disconnect();
        return;
    };
    rt.metrics
        .connections
        .with_label_values(&[sess.conn.tenant.as_str()])
        .inc();
    events(&rt, &s);
    {
        let rt = rt.clone();
        s.on_disconnect(move |s: SocketRef<A>| {
            let rt = rt.clone();
            async move { disconnected(rt, s).await }
        });
    }
    let cursor = auth.and_then(|a| a.cursor).filter(|c| !c.is_empty());
    let resume = match cursor.map(|c| Cursor::decode(&c, rt.hub.partitions)) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            refuse_after_connect(&rt, &s, ErrorCode::InvalidCursor, &e.to_string());
            return;
        }
    };
    match subscribe(&rt, &s, &sess, resume).await {
        Ok(rooms) => {
            *sess.rooms.lock() = rooms.clone();
            let first = s.extensions.get::<FirstConnection>().is_some_and(|f| f.0);
            if first && !rooms.is_empty() {
                announce_presence(&rt, &s, &sess, rooms, true).await;
            }
        }
        Err(e) => refuse_after_connect(&rt, &s, e.code, &e.message),
    }
}

/// An error found after the handshake: told to the client as an `error` event, then the
/// connection is closed.
fn refuse_after_connect<A: Adapter>(rt: &Rt<A>, s: &SocketRef<A>, code: ErrorCode, msg: &str) {
    rt.metrics.errors.with_label_values(&[code.as_str()]).inc();
    let _ = s.emit("error", &json!({"code": code.as_str(), "message": msg}));
    let _ = s.clone().disconnect();
}

/// Joins the socket to its rooms through the hub, catching up from the log first when the
/// cursor is older than the hub's replay window. Returns the joined conversation rooms.
async fn subscribe<A: Adapter>(
    rt: &Rt<A>,
    s: &SocketRef<A>,
    sess: &Session,
    resume: Option<Cursor>,
) -> Result<Vec<String>, ApiError> {
    let bus = &rt.app.bus;
    let mut resume = resume;
    let mut gap = false;
    let mut caught_up = 0u64;
    if let Some(c) = &mut resume {
        for (p, o) in c.0.iter_mut().enumerate() {
            let p = p as i32;
            let high = bus.high_watermark(topics::CONVERSATION_EVENTS, p).await?;
            if *o > high {
                return Err(ApiError::new(
                    ErrorCode::InvalidCursor,
                    "the cursor is ahead of the log",
                ));
            }
            let low = bus.low_watermark(topics::CONVERSATION_EVENTS, p).await?;
            if *o < low {
                *o = low;
                gap = true;
            }
        }
    }
    for _ in 0..8 {
        let listed_at = rt.hub.position();
        let rooms = memberships(rt, &sess.tenant(), &sess.user()).await?;
        let names: Vec<String> = rooms
            .iter()
            .map(|c| conversation_room(&sess.conn.tenant, c))
            .collect();
        let (reply, _) = tokio::sync::oneshot::channel();
        let sub = Subscribe {
            socket: s.clone(),
            tenant: sess.tenant(),
            user: sess.user(),
            rooms: rooms.clone(),
            listed_at,
            resume: resume.clone(),
            gap,
            caught_up,
            reply,
            deadline: Instant::now() + Duration::from_secs(5),
        };
        match rt.hub.subscribe(sub).await {
            Ok(()) => return Ok(names),
            Err(SubscribeError::Behind { floor }) => {
                if let Some(c) = &mut resume {
                    caught_up += catch_up(rt, s, sess, &rooms, c, &floor).await?;
                }
            }
            Err(SubscribeError::CursorAhead) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidCursor,
                    "the cursor is not a position of this log",
                ));
            }
            Err(SubscribeError::Stopped) => {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "the server is stopping",
                ));
            }
        }
    }
    Err(ApiError::new(
        ErrorCode::Unavailable,
        "could not catch up with the log; reconnect",
    ))
}

/// The user's conversations (every one, in one read: no paging that could skip one whose
/// activity changes meanwhile).
async fn memberships<A: Adapter>(
    rt: &Rt<A>,
    tenant: &TenantId,
    user: &UserId,
) -> Result<HashSet<ConversationId>, ApiError> {
    Ok(rt
        .app
        .store
        .member_conversation_ids(tenant, user)
        .await?
        .into_iter()
        .collect())
}

/// Sends the client what it missed from the log itself: every partition whose cursor is below
/// the hub's replay window, up to the window's floor. Advances `cursor` accordingly.
async fn catch_up<A: Adapter>(
    rt: &Rt<A>,
    s: &SocketRef<A>,
    sess: &Session,
    rooms: &HashSet<ConversationId>,
    cursor: &mut Cursor,
    floor: &[i64],
) -> Result<u64, ApiError> {
    let from: Vec<(i32, i64)> = cursor
        .0
        .iter()
        .zip(floor)
        .enumerate()
        .filter(|(_, (c, f))| c < f)
        .map(|(p, (c, _))| (p as i32, *c))
        .collect();
    if from.is_empty() {
        return Ok(0);
    }
    let mut reader = rt
        .app
        .bus
        .reader(topics::CONVERSATION_EVENTS, &from)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u64;
    while cursor.0.iter().zip(floor).any(|(c, f)| c < f) {
        if Instant::now() > deadline || !s.connected() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "catch-up took too long",
            ));
        }
        let batch = reader.next_batch(1000, Duration::from_millis(500)).await?;
        for d in batch {
            let Ok(p) = usize::try_from(d.partition) else {
                continue;
            };
            if p >= floor.len() || d.offset < cursor.0[p] || d.offset >= floor[p] {
                continue;
            }
            cursor.0[p] = d.offset + 1;
            let Some((e, _)) = hub::prepare(&d, floor.len()) else {
                continue;
            };
            let own = e.member.as_ref().is_some_and(|(u, _)| *u == sess.conn.user);
            if e.tenant != sess.conn.tenant || !(own || rooms.contains(&e.conversation)) {
                continue;
            }
            let payload = hub::stamped(&e.payload, &cursor.encode());
            if s.emit(e.name, &payload).is_ok() {
                sent += 1;
            }
        }
    }
    rt.metrics.replayed.inc_by(sent);
    Ok(sent)
}

async fn announce_presence<A: Adapter>(
    rt: &Rt<A>,
    s: &SocketRef<A>,
    sess: &Session,
    rooms: Vec<String>,
    online: bool,
) {
    let payload = json!({"user_id": sess.conn.user, "online": online, "at": now_rfc3339()});
    rt.metrics.events_out.with_label_values(&["presence"]).inc();
    if let Err(e) = s.broadcast().to(rooms).emit("presence", &payload).await {
        tracing::debug!(error = %e, "Presence broadcast failed for some sockets.");
    }
}

async fn disconnected<A: Adapter>(rt: Arc<Rt<A>>, s: SocketRef<A>) {
    let Some(sess) = session(&s) else {
        return;
    };
    rt.metrics
        .connections
        .with_label_values(&[sess.conn.tenant.as_str()])
        .dec();
    match rt.presence.disconnect(&sess.conn).await {
        Ok(true) => {
            let rooms = sess.rooms.lock().clone();
            if !rooms.is_empty() {
                announce_presence(&rt, &s, &sess, rooms, false).await;
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "Failed to record a disconnect in presence."),
    }
}

/// Refreshes this pod's connections in presence until `stop`.
pub(crate) async fn heartbeat<A: Adapter>(
    io: SocketIo<A>,
    rt: Arc<Rt<A>>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut conns = Vec::new();
        for s in io.sockets() {
            let Some(sess) = session(&s) else { continue };
            // A connection outlives neither its token nor its tenant's suspension nor a
            // revocation: checked here too, not only when the client acts.
            let current = sess.principal.lock().clone();
            match rt.app.auth.recheck(&current).await {
                Ok(p) => {
                    *sess.principal.lock() = p;
                    conns.push(sess.conn.clone());
                }
                Err(e) if e.code == ErrorCode::Unavailable => conns.push(sess.conn.clone()),
                Err(e) => refuse_after_connect(&rt, &s, e.code, &e.message),
            }
        }
        if let Err(e) = rt.presence.heartbeat(&conns).await {
            tracing::warn!(error = %e, "Presence heartbeat failed.");
        }
    }
}

/// How long a client told to leave may keep talking (its events crossing the notice are still
/// answered) before the server hangs up, unless it leaves first.
const SEND_AWAY_LINGER: Duration = Duration::from_millis(1000);
/// Longest wait for in-flight acks after the linger.
const SEND_AWAY_DEADLINE: Duration = Duration::from_secs(3);

/// Tells one client to reconnect elsewhere, lets it finish what it is doing (bounded), then
/// disconnects it.
pub(crate) async fn send_away<A: Adapter>(s: SocketRef<A>) {
    let jitter = rand::random_range(0..1000u64);
    let _ = s.emit("server.draining", &json!({"reconnect_in_ms": jitter}));
    let started = Instant::now();
    let sess = session(&s);
    loop {
        if !s.connected() {
            return; // it left by itself
        }
        let busy = sess
            .as_ref()
            .is_some_and(|x| x.inflight.load(Ordering::SeqCst) > 0);
        let waited = started.elapsed();
        if (waited >= SEND_AWAY_LINGER && !busy) || waited >= SEND_AWAY_DEADLINE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = s.disconnect();
}

// ---------------------------------------------------------------------------------------------
// Client events.

/// Counts a handler as in flight while alive.
struct InFlight(Arc<Session>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn parse<T: DeserializeOwned>(data: Option<Value>) -> Result<T, ApiError> {
    let v = data.unwrap_or(Value::Null);
    serde_json::from_value(v).map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.to_string()))
}

/// The client events (docs/realtime.md), all acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientEvent {
    MessageSend,
    MessageEdit,
    MessageDelete,
    ReactionAdd,
    ReactionRemove,
    ReadMark,
    ChannelJoin,
    ChannelLeave,
    TypingStart,
    TypingStop,
    PresenceGet,
}

impl ClientEvent {
    const ALL: [ClientEvent; 11] = [
        ClientEvent::MessageSend,
        ClientEvent::MessageEdit,
        ClientEvent::MessageDelete,
        ClientEvent::ReactionAdd,
        ClientEvent::ReactionRemove,
        ClientEvent::ReadMark,
        ClientEvent::ChannelJoin,
        ClientEvent::ChannelLeave,
        ClientEvent::TypingStart,
        ClientEvent::TypingStop,
        ClientEvent::PresenceGet,
    ];

    /// The event's name on the wire.
    fn name(self) -> &'static str {
        match self {
            ClientEvent::MessageSend => "message.send",
            ClientEvent::MessageEdit => "message.edit",
            ClientEvent::MessageDelete => "message.delete",
            ClientEvent::ReactionAdd => "reaction.add",
            ClientEvent::ReactionRemove => "reaction.remove",
            ClientEvent::ReadMark => "read.mark",
            ClientEvent::ChannelJoin => "channel.join",
            ClientEvent::ChannelLeave => "channel.leave",
            ClientEvent::TypingStart => "typing.start",
            ClientEvent::TypingStop => "typing.stop",
            ClientEvent::PresenceGet => "presence.get",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// Registers the socket's one message handler: socketioxide keeps message handlers per socket
/// (a map of boxed closures), so one fallback that dispatches on the event name costs a
/// connection one small box instead of a map of eleven. Unknown events are ignored, as they
/// would be without a handler (no ack). Each known event gets an up-to-date caller and the
/// payload, and is acked with `{"ok": true, ...result}` or `{"ok": false, "error": {"code",
/// "message"}}`.
fn events<A: Adapter>(rt: &Arc<Rt<A>>, s: &SocketRef<A>) {
    let rt = rt.clone();
    s.on_fallback(
        move |s: SocketRef<A>,
              Event(name): Event,
              TryData(data): TryData<Value>,
              ack: AckSender<A>| {
            let rt = rt.clone();
            async move {
                if let Some(event) = ClientEvent::from_name(&name) {
                    handle(rt, s, event, data.ok(), ack).await;
                }
            }
        },
    );
}

async fn handle<A: Adapter>(
    rt: Arc<Rt<A>>,
    s: SocketRef<A>,
    event: ClientEvent,
    data: Option<Value>,
    ack: AckSender<A>,
) {
    let name = event.name();
    let started = Instant::now();
    rt.metrics.events_in.with_label_values(&[name]).inc();
    let result = match session(&s) {
        None => Err(ApiError::new(ErrorCode::Unauthenticated, "no session")),
        Some(sess) => {
            sess.inflight.fetch_add(1, Ordering::SeqCst);
            let _guard = InFlight(sess.clone());
            let current = sess.principal.lock().clone();
            match rt.app.auth.recheck(&current).await {
                Ok(p) => {
                    let caller = Caller {
                        principal: p,
                        correlation_id: uuid::Uuid::now_v7().to_string(),
                    };
                    dispatch(&rt, &s, event, caller, data).await
                }
                Err(e) => Err(e),
            }
        }
    };
    let reply = match result {
        Ok(mut v) => {
            if let Value::Object(m) = &mut v {
                m.insert("ok".into(), Value::Bool(true));
            }
            v
        }
        Err(e) => {
            rt.metrics
                .errors
                .with_label_values(&[e.code.as_str()])
                .inc();
            let mut err = json!({"code": e.code.as_str(), "message": e.message});
            if let Some(r) = e.retry_after {
                err["retry_after"] = json!(r);
            }
            json!({"ok": false, "error": err})
        }
    };
    let fatal = reply["error"]["code"].as_str().is_some_and(|c| {
        [
            ErrorCode::TokenExpired,
            ErrorCode::TokenRevoked,
            ErrorCode::TenantSuspended,
        ]
        .iter()
        .any(|k| k.as_str() == c)
    });
    let _ = ack.send(&reply);
    rt.metrics
        .ack_seconds
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    if fatal {
        // The client must come back with a new token.
        let _ = s.disconnect();
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendReq {
    conversation_id: ConversationId,
    #[serde(default)]
    text: String,
    #[serde(default)]
    client_msg_id: Option<String>,
    #[serde(default)]
    parent_id: Option<MessageId>,
    #[serde(default)]
    attachments: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditReq {
    conversation_id: ConversationId,
    message_id: MessageId,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageRef {
    conversation_id: ConversationId,
    message_id: MessageId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactionReq {
    conversation_id: ConversationId,
    message_id: MessageId,
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversationRef {
    conversation_id: ConversationId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadReq {
    conversation_id: ConversationId,
    #[serde(default)]
    position: Option<i64>,
}

fn position(p: caas_bus::LogPosition) -> Value {
    json!({"partition": p.partition, "position": p.offset, "server_time": now_rfc3339()})
}

/// What each client event does; its result is the ack's body.
async fn dispatch<A: Adapter>(
    rt: &Rt<A>,
    s: &SocketRef<A>,
    event: ClientEvent,
    caller: Caller,
    data: Option<Value>,
) -> Result<Value, ApiError> {
    match event {
        ClientEvent::MessageSend => {
            let req: SendReq = parse(data)?;
            let done = write::send(
                &rt.app,
                &caller,
                &req.conversation_id,
                NewMessage {
                    text: req.text,
                    client_msg_id: req.client_msg_id,
                    parent_id: req.parent_id,
                    attachments: req.attachments,
                },
            )
            .await?;
            Ok(json!({
                "message_id": done.message.id,
                "partition": done.partition,
                "position": done.position,
                "server_time": now_rfc3339(),
                "message": done.message,
            }))
        }
        ClientEvent::MessageEdit => {
            let req: EditReq = parse(data)?;
            let done = write::edit(
                &rt.app,
                &caller,
                &req.conversation_id,
                req.message_id,
                req.text,
            )
            .await?;
            Ok(json!({
                "message_id": done.message.id,
                "partition": done.partition,
                "position": done.position,
                "server_time": now_rfc3339(),
            }))
        }
        ClientEvent::MessageDelete => {
            let req: MessageRef = parse(data)?;
            let pos = write::delete(&rt.app, &caller, &req.conversation_id, req.message_id).await?;
            let mut v = pos
                .map(position)
                .unwrap_or_else(|| json!({"server_time": now_rfc3339()}));
            v["message_id"] = json!(req.message_id);
            Ok(v)
        }
        ClientEvent::ReactionAdd => {
            let req: ReactionReq = parse(data)?;
            let pos = write::add_reaction(
                &rt.app,
                &caller,
                &req.conversation_id,
                req.message_id,
                req.kind,
            )
            .await?;
            Ok(position(pos))
        }
        ClientEvent::ReactionRemove => {
            let req: ReactionReq = parse(data)?;
            let pos = write::remove_reaction(
                &rt.app,
                &caller,
                &req.conversation_id,
                req.message_id,
                req.kind,
                None,
            )
            .await?;
            Ok(position(pos))
        }
        ClientEvent::ReadMark => {
            let req: ReadReq = parse(data)?;
            let m = write::mark_read(&rt.app, &caller, &req.conversation_id, req.position).await?;
            Ok(json!({
                "last_read_position": m.last_read_position,
                "unread_count": m.unread_count,
                "server_time": now_rfc3339(),
            }))
        }
        ClientEvent::ChannelJoin => {
            let req: ConversationRef = parse(data)?;
            let user = caller.user().clone();
            let m = write::add_member(&rt.app, &caller, &req.conversation_id, user, None).await?;
            Ok(json!({"member": m, "server_time": now_rfc3339()}))
        }
        ClientEvent::ChannelLeave => {
            let req: ConversationRef = parse(data)?;
            let user = caller.user().clone();
            write::remove_member(&rt.app, &caller, &req.conversation_id, user).await?;
            Ok(json!({"server_time": now_rfc3339()}))
        }
        ClientEvent::TypingStart => typing(rt, s, &caller, data, true).await,
        ClientEvent::TypingStop => typing(rt, s, &caller, data, false).await,
        ClientEvent::PresenceGet => {
            let req: ConversationRef = parse(data)?;
            member_of(rt, s, &caller, &req.conversation_id).await?;
            let members = rt
                .app
                .store
                .list_members(caller.tenant(), &req.conversation_id, None, 500)
                .await?;
            let users: Vec<UserId> = members.into_iter().map(|m| m.user_id).collect();
            let online = rt
                .presence
                .online(caller.tenant(), &users)
                .await
                .map_err(ApiError::unavailable)?;
            let online: Vec<&UserId> = users
                .iter()
                .zip(online)
                .filter(|(_, o)| *o)
                .map(|(u, _)| u)
                .collect();
            Ok(json!({"conversation_id": req.conversation_id, "online": online}))
        }
    }
}

/// Ephemeral events need membership: the socket's rooms say so at no cost; otherwise the store
/// decides (and gives the right error for a non-member or an unknown conversation).
async fn member_of<A: Adapter>(
    rt: &Rt<A>,
    s: &SocketRef<A>,
    caller: &Caller,
    conversation: &ConversationId,
) -> Result<String, ApiError> {
    let room = conversation_room(caller.tenant(), conversation);
    if s.rooms().iter().any(|r| *r == room) {
        return Ok(room);
    }
    let access = rt.app.access(caller, conversation).await?;
    access.decide(caller, Resource::Message, Action::Read, None)?;
    if access.member.is_none() {
        return Err(ApiError::new(
            ErrorCode::NotMember,
            "only members take part in a conversation's typing and presence",
        ));
    }
    Ok(room)
}

async fn typing<A: Adapter>(
    rt: &Rt<A>,
    s: &SocketRef<A>,
    caller: &Caller,
    data: Option<Value>,
    on: bool,
) -> Result<Value, ApiError> {
    let req: ConversationRef = parse(data)?;
    let room = member_of(rt, s, caller, &req.conversation_id).await?;
    let payload = json!({
        "conversation_id": req.conversation_id,
        "user_id": caller.user(),
        "typing": on,
        // A client shows "typing" for this long unless refreshed by another typing.start.
        "expires_in_ms": 6000,
    });
    rt.metrics.events_out.with_label_values(&["typing"]).inc();
    s.to(room)
        .emit("typing", &payload)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::ClientEvent;

    #[test]
    fn every_client_event_is_found_by_its_name_and_no_other() {
        let names: Vec<&str> = ClientEvent::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "message.send",
                "message.edit",
                "message.delete",
                "reaction.add",
                "reaction.remove",
                "read.mark",
                "channel.join",
                "channel.leave",
                "typing.start",
                "typing.stop",
                "presence.get",
            ]
        );
        for e in ClientEvent::ALL {
            assert_eq!(ClientEvent::from_name(e.name()), Some(e));
        }
        for unknown in [
            "",
            "message",
            "message.send ",
            "MESSAGE.SEND",
            "session",
            "error",
        ] {
            assert_eq!(ClientEvent::from_name(unknown), None, "{unknown:?}");
        }
    }
}
