//! The embedded log: a durable, partitioned log in one SQLite file, the one-process stand-in
//! for Kafka behind the same [`Bus`] trait.
//!
//! Durability: a publish returns only after its record is committed with `synchronous=FULL`
//! (WAL fsync'd), so `kill -9` right after an ack loses nothing. Throughput comes from group
//! commit: one writer thread takes every publish waiting in its queue and commits them in one
//! transaction, so concurrent publishers share one fsync.
//!
//! Consumers read their partitions in offset order from their own connection and wait on a watch
//! channel for new commits (no polling). Committed consumer offsets live in the same file. Within
//! one process, each group has one consumer that owns every partition (there is nobody to
//! rebalance with). Records are kept until [`EmbeddedLog::trim`] removes those that every group
//! has committed and that are older than the retention (so realtime clients can still resume
//! from recent positions).

use crate::{Bus, BusError, Consumer, LogPosition, Reader, Record, Result, partition_for};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

mod consumer;
use consumer::EmbeddedConsumer;

/// Largest number of publishes committed in one transaction.
const MAX_GROUP: usize = 4_096;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key TEXT NOT NULL, payload BLOB NOT NULL, headers TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commits (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
";

enum Request {
    Publish {
        topic: String,
        partition: i32,
        record: Record,
        reply: oneshot::Sender<Result<i64>>,
    },
    Commit {
        group: String,
        upto: Vec<(String, LogPosition)>,
        reply: oneshot::Sender<Result<()>>,
    },
    Trim {
        older_than_ms: i64,
        reply: oneshot::Sender<Result<usize>>,
    },
}

/// The embedded log. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    partitions: u32,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    /// Next offset per (topic, partition), as committed. Shared with the writer thread.
    heads: Arc<Mutex<HashMap<(String, i32), i64>>>,
    /// Bumped after every commit of records.
    version: watch::Receiver<u64>,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn sqlerr(e: rusqlite::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl EmbeddedLog {
    /// Opens (creating when missing) the log file. `partitions` applies to every topic and must
    /// not change for an existing file: the order of a conversation is its partition's order.
    pub fn open(path: impl AsRef<Path>, partitions: u32) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| BusError::Internal(e.to_string()))?;
        }
        let writer = caas_sqlite::open(&path).map_err(sqlerr)?;
        writer.execute_batch(SCHEMA).map_err(sqlerr)?;
        migrate(&writer).map_err(sqlerr)?;
        check_partitions(&writer, partitions.max(1))?;
        let mut heads = HashMap::new();
        {
            let mut st = writer
                .prepare(
                    "SELECT topic, partition, max(offset) FROM records GROUP BY topic, partition",
                )
                .map_err(sqlerr)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i32>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sqlerr)?;
            for row in rows {
                let (t, p, o) = row.map_err(sqlerr)?;
                heads.insert((t, p), o + 1);
            }
            // Offsets never go back, even when every record of a partition was trimmed.
            let mut st = writer
                .prepare("SELECT topic, partition, max(next_offset) FROM commits GROUP BY topic, partition")
                .map_err(sqlerr)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i32>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sqlerr)?;
            for row in rows {
                let (t, p, o) = row.map_err(sqlerr)?;
                let h = heads.entry((t, p)).or_insert(0);
                *h = (*h).max(o);
            }
        }
        let heads = Arc::new(Mutex::new(heads));
        let (version_tx, version) = watch::channel(0u64);
        let (tx, rx) = mpsc::channel();
        let writer_heads = heads.clone();
        std::thread::Builder::new()
            .name("caas-log-writer".into())
            .spawn(move || writer_loop(writer, rx, writer_heads, version_tx))
            .map_err(|e| BusError::Internal(e.to_string()))?;
        let reader = caas_sqlite::open(&path).map_err(sqlerr)?;
        let inner = Arc::new(Inner {
            path,
            partitions: partitions.max(1),
            tx: Mutex::new(Some(tx)),
            heads,
            version,
            reader: Mutex::new(reader),
        });
        caas_sqlite::checkpointer(&inner.path, Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    fn send(&self, req: Request) -> Result<()> {
        let guard = self.inner.tx.lock();
        let tx = guard
            .as_ref()
            .ok_or_else(|| BusError::Unavailable("log closed".into()))?;
        tx.send(req)
            .map_err(|_| BusError::Unavailable("log writer stopped".into()))
    }

    /// Deletes records that every consumer group has committed and that were appended more
    /// than `retention` ago. Returns how many.
    pub async fn trim(&self, retention: Duration) -> Result<usize> {
        let (reply, rx) = oneshot::channel();
        let older_than_ms = now_ms() - retention.as_millis() as i64;
        self.send(Request::Trim {
            older_than_ms,
            reply,
        })?;
        rx.await
            .map_err(|_| BusError::Unavailable("log writer stopped".into()))?
    }

    /// Stops the writer thread after it has committed everything queued.
    pub fn close(&self) {
        self.inner.tx.lock().take();
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Request>,
    heads: Arc<Mutex<HashMap<(String, i32), i64>>>,
    version: watch::Sender<u64>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut publishes = Vec::new();
        for req in batch {
            match req {
                Request::Publish {
                    topic,
                    partition,
                    record,
                    reply,
                } => publishes.push((topic, partition, record, reply)),
                Request::Commit { group, upto, reply } => {
                    let _ = reply.send(write_commit(&mut conn, &group, &upto));
                }
                Request::Trim {
                    older_than_ms,
                    reply,
                } => {
                    let _ = reply.send(trim(&mut conn, older_than_ms));
                }
            }
        }
        if publishes.is_empty() {
            continue;
        }
        let mut next = heads.lock().clone();
        let result = (|| -> rusqlite::Result<Vec<i64>> {
            let tx = conn.transaction()?;
            let mut offsets = Vec::with_capacity(publishes.len());
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO records (topic, partition, offset, key, payload, headers, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                let at = now_ms();
                for (topic, partition, record, _) in &publishes {
                    let head = next.entry((topic.clone(), *partition)).or_insert(0);
                    let headers =
                        serde_json::to_string(&record.headers).unwrap_or_else(|_| "[]".into());
                    st.execute(params![
                        topic,
                        partition,
                        *head,
                        record.key,
                        record.payload.as_ref(),
                        headers,
                        at
                    ])?;
                    offsets.push(*head);
                    *head += 1;
                }
            }
            tx.commit()?;
            Ok(offsets)
        })();
        match result {
            Ok(offsets) => {
                *heads.lock() = next;
                version.send_modify(|v| *v += 1);
                for ((_, _, _, reply), offset) in publishes.into_iter().zip(offsets) {
                    let _ = reply.send(Ok(offset));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Failed to append to the embedded log.");
                for (_, _, _, reply) in publishes {
                    let _ = reply.send(Err(BusError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

/// Records the partition count on first open and refuses another one later: the partition of a
/// conversation (and so its order and every position a client holds) depends on it.
fn check_partitions(conn: &Connection, partitions: u32) -> Result<()> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'partitions'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sqlerr)?;
    match stored {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('partitions', ?1)",
                [partitions.to_string()],
            )
            .map_err(sqlerr)?;
            Ok(())
        }
        Some(v) if v == partitions.to_string() => Ok(()),
        Some(v) => Err(BusError::Internal(format!(
            "this log was created with {v} partitions; it cannot be opened with {partitions} \
             (set bus.partitions back to {v})"
        ))),
    }
}

/// Brings a log file made by an earlier version up to the current schema.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_at: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('records') WHERE name = 'at_ms'",
        [],
        |r| r.get(0),
    )?;
    if has_at == 0 {
        conn.execute_batch("ALTER TABLE records ADD COLUMN at_ms INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

fn write_commit(conn: &mut Connection, group: &str, upto: &[(String, LogPosition)]) -> Result<()> {
    let tx = conn.transaction().map_err(sqlerr)?;
    {
        let mut st = tx
            .prepare_cached(
                "INSERT INTO commits (grp, topic, partition, next_offset) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(grp, topic, partition)
                 DO UPDATE SET next_offset = max(next_offset, ?4)",
            )
            .map_err(sqlerr)?;
        for (topic, pos) in upto {
            st.execute(params![group, topic, pos.partition, pos.offset + 1])
                .map_err(sqlerr)?;
        }
    }
    tx.commit().map_err(sqlerr)
}

fn trim(conn: &mut Connection, older_than_ms: i64) -> Result<usize> {
    conn.execute(
        "DELETE FROM records WHERE at_ms < ?1 AND offset < (
            SELECT min(c.next_offset) FROM commits c
            WHERE c.topic = records.topic AND c.partition = records.partition)",
        [older_than_ms],
    )
    .map_err(sqlerr)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl Bus for EmbeddedLog {
    async fn publish(&self, topic: &str, record: Record) -> Result<LogPosition> {
        let partition = partition_for(&record.key, self.inner.partitions);
        let (reply, rx) = oneshot::channel();
        self.send(Request::Publish {
            topic: topic.to_string(),
            partition,
            record,
            reply,
        })?;
        let offset = rx
            .await
            .map_err(|_| BusError::Unavailable("log writer stopped".into()))??;
        Ok(LogPosition { partition, offset })
    }

    fn partitions(&self, _topic: &str) -> u32 {
        self.inner.partitions
    }

    async fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64> {
        Ok(self
            .inner
            .heads
            .lock()
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0))
    }

    async fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>> {
        let conn = caas_sqlite::open(&self.inner.path).map_err(sqlerr)?;
        let mut next = HashMap::new();
        for topic in topics {
            for p in 0..self.inner.partitions as i32 {
                let committed: Option<i64> = conn
                    .query_row(
                        "SELECT next_offset FROM commits WHERE grp = ?1 AND topic = ?2 AND partition = ?3",
                        params![group, topic, p],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sqlerr)?;
                next.insert((topic.to_string(), p), committed.unwrap_or(0));
            }
        }
        Ok(Box::new(EmbeddedConsumer {
            log: self.clone(),
            group: group.to_string(),
            conn: Arc::new(Mutex::new(conn)),
            next,
            version: self.inner.version.clone(),
        }))
    }

    async fn low_watermark(&self, topic: &str, partition: i32) -> Result<i64> {
        let head = self.high_watermark(topic, partition).await?;
        let first: Option<i64> = self
            .inner
            .reader
            .lock()
            .query_row(
                "SELECT min(offset) FROM records WHERE topic = ?1 AND partition = ?2",
                params![topic, partition],
                |r| r.get(0),
            )
            .map_err(sqlerr)?;
        Ok(first.unwrap_or(head))
    }

    async fn reader(&self, topic: &str, from: &[(i32, i64)]) -> Result<Box<dyn Reader>> {
        let conn = caas_sqlite::open(&self.inner.path).map_err(sqlerr)?;
        let next = from
            .iter()
            .map(|(p, o)| ((topic.to_string(), *p), (*o).max(0)))
            .collect();
        Ok(Box::new(EmbeddedConsumer {
            log: self.clone(),
            group: String::new(),
            conn: Arc::new(Mutex::new(conn)),
            next,
            version: self.inner.version.clone(),
        }))
    }

    async fn ping(&self) -> Result<()> {
        let conn = &self.inner.reader;
        conn.lock()
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(sqlerr)
    }
}

#[cfg(test)]
mod tests;
