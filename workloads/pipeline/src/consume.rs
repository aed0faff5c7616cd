//! The two consumers of the pipeline's own groups:
//!
//! - [`run_events`] over conversation-events (group `pipeline.groupId`): each batch passes the
//!   stages in order — validate, tenant, authorize, transform (per event, [`crate::stages`]),
//!   persist (the whole batch, one [`caas_store::Store::apply`]), dead letters for the events a
//!   stage refused, notify — and only then are its offsets committed (at least once; every
//!   step is idempotent, so a replay after a crash changes nothing). Partitions are consumed in
//!   parallel by the group's members and in order within one.
//! - [`run_webhooks`] over notifications (group `<groupId>-webhooks`): deliveries to tenant
//!   webhooks, concurrently within a batch; failures go to the retry topics
//!   ([`crate::retry`]).

use crate::ctx::{Ctx, Stopped};
use crate::error::{Stage, StageError};
use crate::stages::{self, Lookups, Senders};
use caas_bus::{Delivery, last_positions, topics};
use caas_store::{LogEvent, PERSIST_CONSUMER};
use std::time::{Duration, Instant};

/// Per-record result of the stages before persistence.
type Prepared = Vec<Result<(LogEvent, String), StageError>>;

/// Runs the stages before persistence over the batch. `Err` only for a transient failure (the
/// whole batch waits for the store and runs again). `previous`: messages created by the batch
/// before, which may still be being persisted.
async fn prepare_all(
    ctx: &Ctx,
    batch: &[Delivery],
    previous: &Senders,
) -> Result<(Prepared, Senders), StageError> {
    let started = Instant::now();
    let pure = stages::pure_all(batch).await;
    observe(ctx, Stage::Validate, started);
    let started = Instant::now();
    let mut lookups = Lookups::after(ctx.store.as_ref(), previous.clone());
    let mut out = Vec::with_capacity(batch.len());
    for (d, p) in batch.iter().zip(pure) {
        let r = match p {
            Ok(decoded) => stages::checked(&mut lookups, d, decoded).await,
            Err(e) => Err(e),
        };
        match r {
            Err(e) if e.is_transient() => return Err(e),
            r => out.push(r),
        }
    }
    observe(ctx, Stage::Authorize, started);
    let mut created = lookups.into_created();
    created.retain(|k, _| !previous.contains_key(k));
    Ok((out, created))
}

/// The stages before persistence of a batch, waiting out outages.
pub async fn prepare(
    ctx: &Ctx,
    batch: &[Delivery],
    previous: &Senders,
) -> Result<(Prepared, Senders), Stopped> {
    match ctx
        .until_ok(Stage::Authorize, move || prepare_all(ctx, batch, previous))
        .await
    {
        Ok(p) => Ok(p),
        Err(Ok(Stopped)) => Err(Stopped),
        // prepare_all returns only transient errors as Err.
        Err(Err(e)) => Ok((vec![Err(e); batch.len()], Senders::new())),
    }
}

fn observe(ctx: &Ctx, stage: Stage, since: Instant) {
    ctx.metrics
        .stage_seconds
        .with_label_values(&[stage.as_str()])
        .observe(since.elapsed().as_secs_f64());
}

/// Processes one batch of conversation events up to (not including) the commit.
pub async fn process(ctx: &Ctx, batch: &[Delivery]) -> Result<(), Stopped> {
    let (prepared, _) = prepare(ctx, batch, &Senders::new()).await?;
    finish(ctx, batch, prepared).await
}

/// The stages from persistence on, for a prepared batch, up to (not including) the commit.
pub async fn finish(ctx: &Ctx, batch: &[Delivery], prepared: Prepared) -> Result<(), Stopped> {
    let mut events: Vec<(usize, LogEvent, String)> = Vec::with_capacity(batch.len());
    let mut dead: Vec<(usize, StageError)> = Vec::new();
    for (i, r) in prepared.into_iter().enumerate() {
        match r {
            Ok((ev, corr)) => events.push((i, ev, corr)),
            Err(e) => {
                ctx.count(&e);
                dead.push((i, e));
            }
        }
    }

    // Persistence (and the conversation update in the same write).
    let started = Instant::now();
    let all: Vec<LogEvent> = events.iter().map(|(_, e, _)| e.clone()).collect();
    let all_ref = &all;
    let applied = ctx
        .until_ok(Stage::Persist, move || async move {
            ctx.store
                .apply(PERSIST_CONSUMER, all_ref)
                .await
                .map_err(|e| StageError::store(Stage::Persist, &e))
        })
        .await;
    match applied {
        Ok(report) => {
            ctx.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            ctx.metrics.processed.inc_by(report.applied as u64);
            ctx.metrics.duplicates.inc_by(report.duplicates as u64);
            ctx.metrics.discarded.inc_by(report.skipped as u64);
        }
        Err(Ok(Stopped)) => return Err(Stopped),
        Err(Err(e)) => {
            // The store refuses the batch for good: find the events it refuses, one by one.
            ctx.count(&e);
            tracing::warn!(error = %e, events = all.len(), "The store refused a batch; applying its events one by one.");
            let mut kept = Vec::with_capacity(events.len());
            for (i, ev, corr) in events {
                let one = std::slice::from_ref(&ev);
                let r = ctx
                    .until_ok(Stage::Persist, move || async move {
                        ctx.store
                            .apply(PERSIST_CONSUMER, one)
                            .await
                            .map_err(|e| StageError::store(Stage::Persist, &e))
                    })
                    .await;
                match r {
                    Ok(report) => {
                        ctx.metrics.processed.inc_by(report.applied as u64);
                        ctx.metrics.duplicates.inc_by(report.duplicates as u64);
                        ctx.metrics.discarded.inc_by(report.skipped as u64);
                        kept.push((i, ev, corr));
                    }
                    Err(Ok(Stopped)) => return Err(Stopped),
                    Err(Err(e)) => {
                        ctx.count(&e);
                        dead.push((i, e));
                    }
                }
            }
            events = kept;
            dead.sort_by_key(|(i, _)| *i);
        }
    }
    observe(ctx, Stage::Persist, started);

    // Dead letters, in log order; then move the store's progress past what they left out, so
    // readers waiting for the partition are not held up.
    if !dead.is_empty() {
        let started = Instant::now();
        for (i, e) in &dead {
            crate::dead_letter::send(ctx, &batch[*i], e, 1).await?;
            crate::dead_letter::announce_rejection(ctx, &batch[*i], e).await;
        }
        let next: Vec<(i32, i64)> = last_positions(batch)
            .iter()
            .map(|(_, p)| (p.partition, p.offset + 1))
            .collect();
        let next_ref = &next;
        match ctx
            .until_ok(Stage::Persist, move || async move {
                ctx.store
                    .advance_progress(PERSIST_CONSUMER, next_ref)
                    .await
                    .map_err(|e| StageError::store(Stage::Persist, &e))
            })
            .await
        {
            Ok(()) => {}
            Err(Ok(Stopped)) => return Err(Stopped),
            Err(Err(e)) => {
                ctx.count(&e);
                tracing::warn!(error = %e, "Failed to move progress past dead letters.");
            }
        }
        observe(ctx, Stage::DeadLetter, started);
    }

    // Notifications.
    let started = Instant::now();
    let refs: Vec<(&LogEvent, &str)> = events.iter().map(|(_, e, c)| (e, c.as_str())).collect();
    crate::notify::publish(ctx, &refs).await?;
    observe(ctx, Stage::Notify, started);

    // Lag: from the newest persisted event's acceptance to now.
    if let Some(newest) = events
        .iter()
        .filter_map(|(_, e, _)| accepted_at(&e.event))
        .max()
    {
        let lag = time::OffsetDateTime::now_utc() - newest;
        ctx.metrics
            .lag_ms
            .set(lag.whole_milliseconds().clamp(0, i64::MAX as i128) as i64);
    }
    Ok(())
}

fn accepted_at(e: &caas_domain::event::ConversationEvent) -> Option<time::OffsetDateTime> {
    use caas_domain::event::ConversationEvent as E;
    match e {
        E::MessageCreated(m) => Some(m.created_at),
        E::MessageUpdated(m) => Some(m.edited_at),
        E::MessageDeleted(m) => Some(m.deleted_at),
        _ => None,
    }
}

/// A batch read and prepared, waiting for persistence.
struct Held {
    batch: Vec<Delivery>,
    prepared: Prepared,
    created: Senders,
}

/// Reads the next batch and prepares it. `Ok(None)`: nothing to read within the linger.
async fn read_and_prepare(
    ctx: &Ctx,
    consumer: &mut dyn caas_bus::Consumer,
    previous: &Senders,
) -> Result<Option<Held>, Stopped> {
    let linger = Duration::from_millis(ctx.cfg.batch_linger_ms);
    let max = ctx.cfg.batch_max_events.max(1);
    let batch = tokio::select! {
        _ = ctx.stop.cancelled() => return Err(Stopped),
        b = consumer.next_batch(max, linger) => b,
    };
    let batch = match batch {
        Ok(b) => b,
        Err(e) => {
            ctx.count(&StageError::bus(Stage::Consume, &e));
            tracing::warn!(error = %e, "Failed to read from the log; retrying.");
            tokio::select! {
                _ = ctx.stop.cancelled() => return Err(Stopped),
                _ = tokio::time::sleep(Duration::from_millis(500)) => return Ok(None),
            }
        }
    };
    if batch.is_empty() {
        return Ok(None);
    }
    ctx.metrics.received.inc_by(batch.len() as u64);
    let (prepared, created) = prepare(ctx, &batch, previous).await?;
    Ok(Some(Held {
        batch,
        prepared,
        created,
    }))
}

/// The conversation-events consumer. Two batches are in flight: while one is persisted,
/// notified and committed, the next is read and prepared (validate, transform, tenant,
/// authorize) — the stages before persistence only read the store, and the messages the
/// first batch creates are handed to the second's authorization. Commits stay in batch order.
/// Returns when stopped, after finishing and committing the batch being persisted.
pub async fn run_events(ctx: &Ctx) -> Result<(), caas_bus::BusError> {
    let mut consumer = ctx
        .bus
        .consumer(&ctx.cfg.group_id, &[topics::CONVERSATION_EVENTS])
        .await?;
    tracing::info!(group = %ctx.cfg.group_id, "Pipeline consumer started.");
    let mut held: Option<Held> = None;
    loop {
        let Some(h) = held.take() else {
            match read_and_prepare(ctx, consumer.as_mut(), &Senders::new()).await {
                Ok(next) => held = next,
                Err(Stopped) => break,
            }
            continue;
        };
        let (finished, next) = tokio::join!(
            finish(ctx, &h.batch, h.prepared),
            read_and_prepare(ctx, consumer.as_mut(), &h.created)
        );
        if finished.is_err() {
            break; // stopped while a dependency was down: nothing committed, replayed next start
        }
        if let Err(e) = consumer.commit(&last_positions(&h.batch)).await {
            // The effects are durable; the batch will replay and apply as duplicates.
            ctx.count(&StageError::bus(Stage::Commit, &e));
            tracing::warn!(error = %e, "Failed to commit consumer offsets.");
        }
        match next {
            Ok(n) => held = n,
            // The next batch is dropped uncommitted: the group redelivers it.
            Err(Stopped) => break,
        }
    }
    if let Err(e) = consumer.close().await {
        tracing::warn!(error = %e, "Failed to leave the consumer group cleanly.");
    }
    tracing::info!("Pipeline consumer stopped.");
    Ok(())
}

/// The webhook deliverer. Returns when stopped (the current batch finished and committed).
pub async fn run_webhooks(ctx: &Ctx) -> Result<(), caas_bus::BusError> {
    let group = format!("{}-webhooks", ctx.cfg.group_id);
    let mut consumer = ctx.bus.consumer(&group, &[topics::NOTIFICATIONS]).await?;
    let client = crate::webhook::client(ctx);
    let linger = Duration::from_millis(ctx.cfg.batch_linger_ms.max(1));
    let concurrency = ctx.cfg.webhook.concurrency.max(1);
    loop {
        let batch = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            b = consumer.next_batch(concurrency * 8, linger) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                ctx.count(&StageError::bus(Stage::Consume, &e));
                tokio::select! {
                    _ = ctx.stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let mut results: Vec<Result<(), Stopped>> = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(concurrency) {
            let attempts = chunk
                .iter()
                .map(|d| crate::webhook::attempt(ctx, &client, d, 1));
            results.extend(futures::future::join_all(attempts).await);
        }
        observe(ctx, Stage::Webhook, started);
        if results.iter().any(Result::is_err) {
            break;
        }
        if let Err(e) = consumer.commit(&last_positions(&batch)).await {
            ctx.count(&StageError::bus(Stage::Commit, &e));
            tracing::warn!(error = %e, "Failed to commit webhook offsets; they will be redelivered.");
        }
    }
    if let Err(e) = consumer.close().await {
        tracing::warn!(error = %e, "Failed to leave the webhook consumer group cleanly.");
    }
    Ok(())
}
