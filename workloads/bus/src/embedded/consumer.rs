//! Consumers and readers of the embedded log: each reads its partitions in offset order from a
//! connection of its own and waits on the log's watch channel for new commits.

use super::{EmbeddedLog, Request, sqlerr};
use crate::{BusError, Consumer, Delivery, LogPosition, Reader, Result};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

pub(super) struct EmbeddedConsumer {
    pub(super) log: EmbeddedLog,
    pub(super) group: String,
    pub(super) conn: Arc<Mutex<Connection>>,
    /// Next offset to deliver per (topic, partition).
    pub(super) next: HashMap<(String, i32), i64>,
    pub(super) version: watch::Receiver<u64>,
}

impl EmbeddedConsumer {
    /// Partitions with records beyond what was delivered.
    fn pending(&self) -> Vec<((String, i32), i64)> {
        let heads = self.log.inner.heads.lock();
        let mut out: Vec<_> = self
            .next
            .iter()
            .filter(|(k, n)| heads.get(*k).is_some_and(|h| h > *n))
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        out.sort();
        out
    }

    async fn read(&mut self, max: usize) -> Result<Vec<Delivery>> {
        let pending = self.pending();
        if pending.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let per_partition = max.div_ceil(pending.len()).max(1);
        let conn = self.conn.clone();
        let out = tokio::task::spawn_blocking(move || -> Result<Vec<Delivery>> {
            let conn = conn.lock();
            let mut st = conn
                .prepare_cached(
                    "SELECT offset, key, payload, headers FROM records
                     WHERE topic = ?1 AND partition = ?2 AND offset >= ?3 ORDER BY offset LIMIT ?4",
                )
                .map_err(sqlerr)?;
            let mut out = Vec::new();
            for ((topic, partition), from) in pending {
                let rows = st
                    .query_map(params![topic, partition, from, per_partition as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    })
                    .map_err(sqlerr)?;
                for row in rows {
                    let (offset, key, payload, headers) = row.map_err(sqlerr)?;
                    let headers: Vec<(String, String)> = serde_json::from_str(&headers)
                        .map_err(|e| BusError::BadRecord(e.to_string()))?;
                    out.push(Delivery {
                        topic: topic.clone(),
                        partition,
                        offset,
                        key,
                        payload: Bytes::from(payload),
                        headers,
                    });
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| BusError::Internal(e.to_string()))??;
        for d in &out {
            let n = self.next.entry((d.topic.clone(), d.partition)).or_insert(0);
            *n = (*n).max(d.offset + 1);
        }
        Ok(out)
    }
}

#[async_trait]
impl Reader for EmbeddedConsumer {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.version.borrow_and_update();
        let out = self.read(max).await?;
        if !out.is_empty() {
            return Ok(out);
        }
        if tokio::time::timeout(wait.max(Duration::from_millis(1)), self.version.changed())
            .await
            .is_ok_and(|r| r.is_err())
        {
            return Err(BusError::Unavailable("log closed".into()));
        }
        self.version.borrow_and_update();
        self.read(max).await
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Vec<Delivery>> {
        self.version.borrow_and_update();
        let mut out = self.read(max).await?;
        if out.is_empty() {
            // Wait for a commit, or give up after `linger`.
            if tokio::time::timeout(linger.max(Duration::from_millis(1)), self.version.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                return Err(BusError::Unavailable("log closed".into()));
            }
            self.version.borrow_and_update();
            out = self.read(max).await?;
        }
        if !out.is_empty() && out.len() < max && !linger.is_zero() {
            let deadline = tokio::time::Instant::now() + linger;
            while out.len() < max {
                match tokio::time::timeout_at(deadline, self.version.changed()).await {
                    Ok(Ok(())) => {
                        self.version.borrow_and_update();
                        let more = self.read(max - out.len()).await?;
                        out.extend(more);
                    }
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, upto: &[(String, LogPosition)]) -> Result<()> {
        if upto.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.log.send(Request::Commit {
            group: self.group.clone(),
            upto: upto.to_vec(),
            reply,
        })?;
        rx.await
            .map_err(|_| BusError::Unavailable("log writer stopped".into()))?
    }

    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
