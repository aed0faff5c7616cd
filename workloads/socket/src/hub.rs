//! The fan-out hub of one socket pod: it reads every partition of the conversation-events log
//! from "now" (a [`caas_bus::Reader`], no consumer group, nothing committed), and emits each
//! event to the room of its conversation on this pod only. Every pod does the same for its own
//! sockets, so nothing crosses pods for log events and nothing is delivered twice.
//!
//! The hub is the single sequencer of its pod: subscriptions (a socket joining its rooms, with or
//! without a resume cursor) are applied between two events, so the cursor a socket is handed is
//! exact — every later event of its rooms reaches it, no earlier one is sent twice. Recent events
//! are kept in memory (the replay window) to catch reconnecting clients up without touching the
//! log; older cursors are caught up from the log by the connection before it subscribes.

use crate::cursor::Cursor;
use crate::metrics::SocketMetrics;
use caas_bus::{Delivery, DynBus, Envelope, topics};
use caas_domain::event::ConversationEvent;
use caas_domain::{ConversationId, TenantId, UserId};
use parking_lot::Mutex;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The room of a conversation (tenant first: ids never meet across tenants).
pub fn conversation_room(tenant: &TenantId, conversation: &ConversationId) -> String {
    format!("c:{tenant}:{conversation}")
}

/// The room every socket of a user joins (membership changes move these sockets).
pub fn user_room(tenant: &TenantId, user: &UserId) -> String {
    format!("u:{tenant}:{user}")
}

/// A decoded log event, ready to emit.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub partition: usize,
    pub offset: i64,
    pub tenant: TenantId,
    pub conversation: ConversationId,
    pub room: String,
    pub name: &'static str,
    /// The client payload, with the cursor stamped at this event.
    pub payload: Value,
    /// The hub's position right after this event.
    pub stamp: Vec<i64>,
    /// A membership change: who, and whether they joined.
    pub member: Option<(UserId, bool)>,
}

/// Decodes a delivery into the event clients receive. `None` for records that are not
/// conversation events of this schema (logged and skipped: they must not stop the fan-out).
pub(crate) fn prepare(d: &Delivery, partition_count: usize) -> Option<(Prepared, OffsetDateTime)> {
    let env = match Envelope::<ConversationEvent>::from_delivery(d) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, partition = d.partition, offset = d.offset, "Skipping an undecodable log record.");
            return None;
        }
    };
    let partition = usize::try_from(d.partition)
        .ok()
        .filter(|p| *p < partition_count)?;
    let conversation = ConversationId::parse(&env.key).ok()?;
    let name = env.event.type_name();
    let member = match &env.event {
        ConversationEvent::MemberAdded(m) => Some((m.user_id.clone(), true)),
        ConversationEvent::MemberRemoved(m) => Some((m.user_id.clone(), false)),
        _ => None,
    };
    let mut payload = match serde_json::to_value(&env.event) {
        Ok(Value::Object(m)) => m,
        _ => return None,
    };
    // Never trust HTML from a producer: render it again from the text.
    let text = match &env.event {
        ConversationEvent::MessageCreated(m) => Some(&m.text),
        ConversationEvent::MessageUpdated(m) => Some(&m.text),
        _ => None,
    };
    if let Some(text) = text {
        payload.insert(
            "html".into(),
            Value::String(caas_domain::text::render(text).html),
        );
    }
    payload.insert(
        "conversation_id".into(),
        Value::String(conversation.to_string()),
    );
    // The event's place in the log (a message's `position`); an event that has a `position`
    // of its own (a read marker) keeps it.
    payload.insert("partition".into(), Value::from(d.partition));
    payload
        .entry("position")
        .or_insert_with(|| Value::from(d.offset));
    let room = conversation_room(&env.tenant_id, &conversation);
    Some((
        Prepared {
            partition,
            offset: d.offset,
            tenant: env.tenant_id,
            conversation,
            room,
            name,
            payload: Value::Object(payload),
            stamp: Vec::new(),
            member,
        },
        env.occurred_at,
    ))
}

/// The payload with a cursor.
pub(crate) fn stamped(payload: &Value, cursor: &str) -> Value {
    let mut v = payload.clone();
    if let Value::Object(m) = &mut v {
        m.insert("cursor".into(), Value::String(cursor.to_string()));
    }
    v
}

/// Why a subscription was not applied.
#[derive(Debug)]
pub(crate) enum SubscribeError {
    /// The replay window does not reach back to the cursor (or to the moment the memberships
    /// were listed): catch up from the log up to `floor`, list again, and retry.
    Behind { floor: Vec<i64> },
    /// The cursor is ahead of everything this pod saw in time: not a cursor of this log.
    CursorAhead,
    /// The hub stopped (shutdown).
    Stopped,
}

/// A socket that joins its rooms.
pub(crate) struct Subscribe<A: Adapter> {
    pub socket: SocketRef<A>,
    pub tenant: TenantId,
    pub user: UserId,
    /// The user's conversations, as listed from the store...
    pub rooms: HashSet<ConversationId>,
    /// ...when the hub's position was this (membership changes after it are re-applied).
    pub listed_at: Vec<i64>,
    /// Replay everything of the user's rooms from here.
    pub resume: Option<Cursor>,
    /// Some of what the client missed is no longer in the log.
    pub gap: bool,
    /// Events already sent to the client from the log before this subscription.
    pub caught_up: u64,
    pub reply: oneshot::Sender<Result<(), SubscribeError>>,
    pub deadline: Instant,
}

/// What connections use to talk to the hub.
pub(crate) struct HubHandle<A: Adapter> {
    tx: mpsc::Sender<Subscribe<A>>,
    shared: Arc<Shared>,
    pub partitions: usize,
}

impl<A: Adapter> Clone for HubHandle<A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            partitions: self.partitions,
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// Next offset per partition the hub will emit.
    position: Mutex<Vec<i64>>,
}

impl<A: Adapter> HubHandle<A> {
    /// The hub's position now.
    pub fn position(&self) -> Vec<i64> {
        self.shared.position.lock().clone()
    }

    pub async fn subscribe(&self, mut sub: Subscribe<A>) -> Result<(), SubscribeError> {
        let (tx, rx) = oneshot::channel();
        sub.reply = tx;
        self.tx
            .send(sub)
            .await
            .map_err(|_| SubscribeError::Stopped)?;
        rx.await.unwrap_or(Err(SubscribeError::Stopped))
    }
}

pub(crate) struct Hub<A: Adapter> {
    io: SocketIo<A>,
    next: Vec<i64>,
    /// Events of the replay window, in the order they were emitted.
    window: VecDeque<Arc<Prepared>>,
    capacity: usize,
    /// Per partition: every event at or above this offset is in the window.
    floor: Vec<i64>,
    pending: Vec<Subscribe<A>>,
    shared: Arc<Shared>,
    metrics: SocketMetrics,
}

/// Starts the hub at the log's current end. Returns its handle and the task to await on
/// shutdown.
pub(crate) async fn start<A: Adapter>(
    io: SocketIo<A>,
    bus: DynBus,
    window: usize,
    metrics: SocketMetrics,
    stop: CancellationToken,
) -> anyhow::Result<(HubHandle<A>, tokio::task::JoinHandle<()>)> {
    let partitions = bus.partitions(topics::CONVERSATION_EVENTS) as usize;
    let mut next = Vec::with_capacity(partitions);
    for p in 0..partitions {
        next.push(
            bus.high_watermark(topics::CONVERSATION_EVENTS, p as i32)
                .await?,
        );
    }
    let shared = Arc::new(Shared {
        position: Mutex::new(next.clone()),
    });
    let (tx, cmds) = mpsc::channel(1024);
    let (btx, batches) = mpsc::channel(4);
    let from: Vec<(i32, i64)> = next
        .iter()
        .enumerate()
        .map(|(p, o)| (p as i32, *o))
        .collect();
    tokio::spawn(read_loop(bus, from, btx, stop.clone(), metrics.clone()));
    let hub = Hub {
        io,
        floor: next.clone(),
        next,
        window: VecDeque::with_capacity(window.min(65_536)),
        capacity: window.max(1),
        pending: Vec::new(),
        shared: shared.clone(),
        metrics,
    };
    let task = tokio::spawn(hub.run(batches, cmds, stop));
    Ok((
        HubHandle {
            tx,
            shared,
            partitions,
        },
        task,
    ))
}

/// Reads the log into the hub. Runs apart from the hub so that a read is never cancelled
/// half-way (the hub waits on channels, which is cancel-safe).
async fn read_loop(
    bus: DynBus,
    from: Vec<(i32, i64)>,
    tx: mpsc::Sender<Vec<Delivery>>,
    stop: CancellationToken,
    metrics: SocketMetrics,
) {
    let mut position = from;
    let mut pause = Duration::from_millis(100);
    'outer: loop {
        let mut reader = match bus.reader(topics::CONVERSATION_EVENTS, &position).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the log for fan-out; retrying.");
                metrics.errors.with_label_values(&["log_unavailable"]).inc();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let batch = tokio::select! {
                _ = stop.cancelled() => break 'outer,
                b = reader.next_batch(512, Duration::from_millis(250)) => b,
            };
            match batch {
                Ok(b) if b.is_empty() => {}
                Ok(b) => {
                    pause = Duration::from_millis(100);
                    for d in &b {
                        if let Some(p) = position.iter_mut().find(|(p, _)| *p == d.partition) {
                            p.1 = p.1.max(d.offset + 1);
                        }
                    }
                    if tx.send(b).await.is_err() {
                        break 'outer;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Fan-out read failed; reopening the reader.");
                    metrics.errors.with_label_values(&["log_unavailable"]).inc();
                    tokio::select! {
                        _ = stop.cancelled() => break 'outer,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue 'outer;
                }
            }
        }
    }
}

impl<A: Adapter> Hub<A> {
    async fn run(
        mut self,
        mut batches: mpsc::Receiver<Vec<Delivery>>,
        mut cmds: mpsc::Receiver<Subscribe<A>>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(sub) = cmds.recv() => self.subscribe(sub).await,
                b = batches.recv() => match b {
                    Some(b) => {
                        for d in b {
                            self.event(&d).await;
                        }
                        self.shared.position.lock().clone_from(&self.next);
                        self.retry_pending().await;
                    }
                    None => break,
                },
                _ = tick.tick() => self.retry_pending().await,
            }
        }
        for sub in self.pending.drain(..) {
            let _ = sub.reply.send(Err(SubscribeError::Stopped));
        }
    }

    async fn event(&mut self, d: &Delivery) {
        let Some((mut e, occurred_at)) = prepare(d, self.next.len()) else {
            if let Ok(p) = usize::try_from(d.partition)
                && p < self.next.len()
            {
                self.next[p] = self.next[p].max(d.offset + 1);
            }
            return;
        };
        if e.offset < self.next[e.partition] {
            return; // already emitted (a reader reopened below its position)
        }
        self.next[e.partition] = e.offset + 1;
        e.stamp = self.next.clone();
        let cursor = Cursor(e.stamp.clone()).encode();
        e.payload = stamped(&e.payload, &cursor);
        let io = &self.io;
        let user_room = e.member.as_ref().map(|(u, _)| user_room(&e.tenant, u));
        // A member who joins gets the event that says so; one who leaves gets it before leaving.
        if let (Some((_, true)), Some(ur)) = (&e.member, &user_room)
            && let Err(err) = io.local().to(ur.clone()).join(e.room.clone()).await
        {
            tracing::warn!(error = %err, "Failed to move sockets into a room.");
        }
        if let Err(err) = io.local().to(e.room.clone()).emit(e.name, &e.payload).await {
            tracing::debug!(error = %err, "Fan-out emit failed for some sockets.");
        }
        if let (Some((_, false)), Some(ur)) = (&e.member, &user_room)
            && let Err(err) = io.local().to(ur.clone()).leave(e.room.clone()).await
        {
            tracing::warn!(error = %err, "Failed to move sockets out of a room.");
        }
        self.metrics.events_out.with_label_values(&[e.name]).inc();
        let lag = (OffsetDateTime::now_utc() - occurred_at).as_seconds_f64();
        self.metrics.fanout_lag.observe(lag.max(0.0));
        self.window.push_back(Arc::new(e));
        while self.window.len() > self.capacity {
            if let Some(old) = self.window.pop_front() {
                self.floor[old.partition] = self.floor[old.partition].max(old.offset + 1);
            }
        }
    }

    async fn retry_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        for sub in std::mem::take(&mut self.pending) {
            self.subscribe(sub).await;
        }
    }

    /// Applies a subscription between two events (see the module docs).
    async fn subscribe(&mut self, sub: Subscribe<A>) {
        if let Some(c) = &sub.resume
            && !Cursor(self.next.clone()).covers(&c.0)
        {
            // The client saw more than this pod has read so far: wait for the hub to catch up.
            if Instant::now() >= sub.deadline {
                let _ = sub.reply.send(Err(SubscribeError::CursorAhead));
            } else {
                self.pending.push(sub);
            }
            return;
        }
        let mut need = sub.listed_at.clone();
        if let Some(c) = &sub.resume {
            for (n, o) in need.iter_mut().zip(&c.0) {
                *n = (*n).min(*o);
            }
        }
        if !Cursor(need).covers(&self.floor) {
            let _ = sub.reply.send(Err(SubscribeError::Behind {
                floor: self.floor.clone(),
            }));
            return;
        }
        if !sub.socket.connected() {
            let _ = sub.reply.send(Ok(()));
            return;
        }
        // Membership changes of this user since the listing.
        let mut rooms = sub.rooms;
        for e in &self.window {
            if e.tenant == sub.tenant
                && e.offset >= sub.listed_at[e.partition]
                && let Some((u, joined)) = &e.member
                && *u == sub.user
            {
                if *joined {
                    rooms.insert(e.conversation.clone());
                } else {
                    rooms.remove(&e.conversation);
                }
            }
        }
        let mut replayed = 0u64;
        if let Some(c) = &sub.resume {
            for e in &self.window {
                if e.offset < c.0[e.partition] || e.tenant != sub.tenant {
                    continue;
                }
                let own = e.member.as_ref().is_some_and(|(u, _)| *u == sub.user);
                if !own && !rooms.contains(&e.conversation) {
                    continue;
                }
                let cursor = c.max(&e.stamp).encode();
                if sub
                    .socket
                    .emit(e.name, &stamped(&e.payload, &cursor))
                    .is_ok()
                {
                    replayed += 1;
                }
            }
        }
        self.metrics.replayed.inc_by(replayed);
        let mut names: Vec<String> = rooms
            .iter()
            .map(|c| conversation_room(&sub.tenant, c))
            .collect();
        names.push(user_room(&sub.tenant, &sub.user));
        sub.socket.join(names);
        let cursor = match &sub.resume {
            Some(c) => c.max(&self.next),
            None => Cursor(self.next.clone()),
        };
        let session = serde_json::json!({
            "cursor": cursor.encode(),
            "gap": sub.gap,
            "replayed": replayed + sub.caught_up,
            "conversations": rooms.len(),
            "server_time": OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
        let _ = sub.socket.emit("session", &session);
        let _ = sub.reply.send(Ok(()));
    }
}
