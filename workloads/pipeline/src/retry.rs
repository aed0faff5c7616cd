//! Retry topics: a record whose stage failed with a transient error goes to retry topic n
//! (`pipeline-retry-<n>`, n = attempts so far, capped at the number of configured delays) with
//! the time it is due (`now + retryDelaysMs[n-1]`), the stage to run again, the attempts so far
//! and its original topic as headers. One consumer per retry topic waits until the head record
//! is due (every record of a topic has the same delay, so they come due in order), runs the
//! stage again, and commits. After `maxAttempts` the record becomes a dead letter. The
//! partition the record came from never waits for it.
//!
//! Only stages after persistence retry this way (webhook deliveries): an event that is not
//! persisted yet must not be overtaken by the events after it in its conversation, so failures
//! before and during persistence either wait for the store (the circuit breaker) or are
//! permanent (dead letters, replayed in order by an operator).

use crate::ctx::{Ctx, Stopped};
use crate::dead_letter::{self, HEADER_ORIGINAL_TOPIC, original_headers, original_topic};
use crate::error::{Stage, StageError, codes};
use caas_bus::{Delivery, Record, last_positions, topics};
use std::time::Duration;

pub const HEADER_RETRY_STAGE: &str = "caas-retry-stage";
pub const HEADER_RETRY_ATTEMPTS: &str = "caas-retry-attempts";
pub const HEADER_RETRY_DUE_MS: &str = "caas-retry-due-ms";
pub const HEADER_RETRY_CODE: &str = "caas-retry-code";
pub const HEADER_RETRY_REASON: &str = "caas-retry-reason";

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The retry record of `d` after `attempts` failed attempts, and its topic.
pub fn record(
    d: &Delivery,
    err: &StageError,
    attempts: u32,
    delays_ms: &[u64],
) -> (String, Record) {
    let level = (attempts as usize).clamp(1, delays_ms.len().max(1));
    let delay = delays_ms.get(level - 1).copied().unwrap_or(0);
    let mut headers = original_headers(&d.headers);
    headers.extend([
        (HEADER_ORIGINAL_TOPIC.to_string(), original_topic(d)),
        (
            HEADER_RETRY_STAGE.to_string(),
            err.stage.as_str().to_string(),
        ),
        (HEADER_RETRY_ATTEMPTS.to_string(), attempts.to_string()),
        (
            HEADER_RETRY_DUE_MS.to_string(),
            (now_ms() + delay as i64).to_string(),
        ),
        (HEADER_RETRY_CODE.to_string(), err.code.to_string()),
        (HEADER_RETRY_REASON.to_string(), err.reason.clone()),
    ]);
    (
        topics::retry(level),
        Record {
            key: d.key.clone(),
            payload: d.payload.clone(),
            headers,
        },
    )
}

/// After attempt number `attempts` of `d` failed with `err`: a retry topic (transient, attempts
/// left) or the dead letters.
pub async fn schedule(
    ctx: &Ctx,
    d: &Delivery,
    err: &StageError,
    attempts: u32,
    max_attempts: u32,
) -> Result<(), Stopped> {
    if !err.is_transient() || attempts >= max_attempts || ctx.cfg.retry_delays_ms.is_empty() {
        ctx.metrics
            .webhook_deliveries
            .with_label_values(&["dead_letter"])
            .inc();
        return dead_letter::send(ctx, d, err, attempts).await;
    }
    let (topic, rec) = record(d, err, attempts, &ctx.cfg.retry_delays_ms);
    let (topic_ref, rec_ref) = (&topic, &rec);
    let sent = ctx
        .until_ok(Stage::Retry, move || async move {
            ctx.bus
                .publish(topic_ref, rec_ref.clone())
                .await
                .map_err(|e| StageError::bus(Stage::Retry, &e))
        })
        .await;
    match sent {
        Ok(_) => {
            ctx.metrics
                .retried
                .with_label_values(&[
                    err.stage.as_str(),
                    topic.trim_start_matches(topics::RETRY_PREFIX),
                ])
                .inc();
            ctx.metrics
                .webhook_deliveries
                .with_label_values(&["retry"])
                .inc();
            Ok(())
        }
        Err(Ok(Stopped)) => Err(Stopped),
        Err(Err(e)) => {
            ctx.count(&e);
            dead_letter::send(ctx, d, err, attempts).await
        }
    }
}

/// Runs one retried record again (its stage from the headers).
async fn rerun(ctx: &Ctx, client: &reqwest::Client, d: &Delivery) -> Result<(), Stopped> {
    let attempts: u32 = d
        .header(HEADER_RETRY_ATTEMPTS)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    match d.header(HEADER_RETRY_STAGE).and_then(Stage::parse) {
        Some(Stage::Webhook) => crate::webhook::attempt(ctx, client, d, attempts + 1).await,
        other => {
            let err = StageError::permanent(
                Stage::Retry,
                codes::UNKNOWN_RETRY_STAGE,
                format!("no retry for stage {other:?}"),
            );
            ctx.count(&err);
            dead_letter::send(ctx, d, &err, attempts).await
        }
    }
}

/// The consumer of retry topic `level`: waits for each record's due time, runs its stage
/// again, commits. Returns when stopped.
pub async fn run_level(ctx: &Ctx, level: usize) -> Result<(), caas_bus::BusError> {
    let topic = topics::retry(level);
    let group = format!("{}-retry-{level}", ctx.cfg.group_id);
    let mut consumer = ctx.bus.consumer(&group, &[topic.as_str()]).await?;
    let client = crate::webhook::client(ctx);
    let linger = Duration::from_millis(ctx.cfg.batch_linger_ms.max(1));
    let concurrency = ctx.cfg.webhook.concurrency.max(1);
    'outer: loop {
        let batch = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            b = consumer.next_batch(concurrency * 4, linger.max(Duration::from_millis(100))) => b,
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
        let mut rest: &[Delivery] = &batch;
        while let Some(head) = rest.first() {
            let due = head
                .header(HEADER_RETRY_DUE_MS)
                .and_then(|x| x.parse::<i64>().ok())
                .unwrap_or(0);
            let wait = due - now_ms();
            if wait > 0 {
                tokio::select! {
                    _ = ctx.stop.cancelled() => break 'outer,
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                }
            }
            let now = now_ms();
            let n = rest
                .iter()
                .take_while(|d| {
                    d.header(HEADER_RETRY_DUE_MS)
                        .and_then(|x| x.parse::<i64>().ok())
                        .unwrap_or(0)
                        <= now
                })
                .count()
                .max(1);
            let (due_now, later) = rest.split_at(n);
            let results =
                futures::future::join_all(due_now.iter().map(|d| rerun(ctx, &client, d))).await;
            if results.iter().any(Result::is_err) {
                break 'outer; // stopped: nothing of this batch is committed, it is redelivered
            }
            rest = later;
        }
        if let Err(e) = consumer.commit(&last_positions(&batch)).await {
            ctx.count(&StageError::bus(Stage::Commit, &e));
            tracing::warn!(error = %e, "Failed to commit retry offsets; they will be redelivered.");
        }
    }
    if let Err(e) = consumer.close().await {
        tracing::warn!(error = %e, "Failed to leave the retry consumer group cleanly.");
    }
    Ok(())
}
