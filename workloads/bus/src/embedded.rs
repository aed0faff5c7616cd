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

use crate::{
    Bus, BusError, Consumer, Delivery, LogPosition, Reader, Record, Result, partition_for,
};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

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

struct EmbeddedConsumer {
    log: EmbeddedLog,
    group: String,
    conn: Arc<Mutex<Connection>>,
    /// Next offset to deliver per (topic, partition).
    next: HashMap<(String, i32), i64>,
    version: watch::Receiver<u64>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::last_positions;

    fn rec(key: &str, n: usize) -> Record {
        Record {
            key: key.into(),
            payload: Bytes::from(format!("m{n}")),
            headers: vec![("h".into(), format!("{n}"))],
        }
    }

    async fn drain(c: &mut Box<dyn Consumer>, want: usize) -> Vec<Delivery> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.len() < want && tokio::time::Instant::now() < deadline {
            got.extend(c.next_batch(1000, Duration::from_millis(20)).await.unwrap());
        }
        got
    }

    #[tokio::test]
    async fn publish_consume_in_partition_order_with_headers() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log.db"), 4).unwrap();
        let mut tasks = Vec::new();
        for k in 0..8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut pos = Vec::new();
                for n in 0..50 {
                    pos.push(log.publish("t", rec(&format!("k{k}"), n)).await.unwrap());
                }
                pos
            }));
        }
        for t in tasks {
            let pos = t.await.unwrap();
            assert!(
                pos.windows(2)
                    .all(|w| w[0].partition == w[1].partition && w[0].offset < w[1].offset)
            );
        }
        let mut c = log.consumer("g", &["t"]).await.unwrap();
        let got = drain(&mut c, 400).await;
        assert_eq!(got.len(), 400);
        for k in 0..8 {
            let key = format!("k{k}");
            let mine: Vec<_> = got.iter().filter(|d| d.key == key).collect();
            let ns: Vec<String> = mine
                .iter()
                .map(|d| d.header("h").unwrap().to_string())
                .collect();
            let want: Vec<String> = (0..50).map(|n| n.to_string()).collect();
            assert_eq!(ns, want, "order of {key}");
            assert!(mine.iter().all(|d| d.partition == partition_for(&key, 4)));
        }
        let total: i64 = futures::future::join_all((0..4).map(|p| log.high_watermark("t", p)))
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .sum();
        assert_eq!(total, 400);
    }

    #[tokio::test]
    async fn resumes_after_last_commit_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        {
            let log = EmbeddedLog::open(&path, 2).unwrap();
            for n in 0..10 {
                log.publish("t", rec("a", n)).await.unwrap();
            }
            let mut c = log.consumer("g", &["t"]).await.unwrap();
            let got = drain(&mut c, 10).await;
            c.commit(&last_positions(&got[..4])).await.unwrap();
            log.close();
        }
        let log = EmbeddedLog::open(&path, 2).unwrap();
        let mut c = log.consumer("g", &["t"]).await.unwrap();
        let got = drain(&mut c, 6).await;
        let ns: Vec<_> = got
            .iter()
            .map(|d| d.header("h").unwrap().to_string())
            .collect();
        assert_eq!(ns, ["4", "5", "6", "7", "8", "9"]);
        // Offsets continue after a reopen.
        let p = log.publish("t", rec("a", 10)).await.unwrap();
        assert_eq!(p.offset, 10);
        // Another group starts from the beginning.
        let mut other = log.consumer("h", &["t"]).await.unwrap();
        assert_eq!(drain(&mut other, 11).await.len(), 11);
    }

    #[tokio::test]
    async fn trim_keeps_what_some_group_has_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log.db"), 1).unwrap();
        for n in 0..10 {
            log.publish("t", rec("a", n)).await.unwrap();
        }
        let mut a = log.consumer("a", &["t"]).await.unwrap();
        let mut b = log.consumer("b", &["t"]).await.unwrap();
        let got = drain(&mut a, 10).await;
        a.commit(&last_positions(&got)).await.unwrap();
        let got = drain(&mut b, 10).await;
        b.commit(&last_positions(&got[..3])).await.unwrap();
        assert_eq!(
            log.trim(Duration::from_secs(3600)).await.unwrap(),
            0,
            "too young"
        );
        assert_eq!(log.trim(Duration::ZERO).await.unwrap(), 3);
        let mut b2 = log.consumer("b", &["t"]).await.unwrap();
        assert_eq!(drain(&mut b2, 7).await.len(), 7);
    }

    #[tokio::test]
    async fn opens_a_log_made_before_record_times_were_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE records (
                    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
                    key TEXT NOT NULL, payload BLOB NOT NULL, headers TEXT NOT NULL,
                    PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
                 INSERT INTO records VALUES ('t', 0, 0, 'a', x'6d30', '[]');",
            )
            .unwrap();
        }
        let log = EmbeddedLog::open(&path, 1).unwrap();
        assert_eq!(log.publish("t", rec("a", 1)).await.unwrap().offset, 1);
        let mut c = log.consumer("g", &["t"]).await.unwrap();
        assert_eq!(drain(&mut c, 2).await.len(), 2);
    }

    #[tokio::test]
    async fn the_partition_count_of_a_log_is_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let log = EmbeddedLog::open(&path, 4).unwrap();
        log.close();
        let e = EmbeddedLog::open(&path, 8).unwrap_err();
        assert!(e.to_string().contains("created with 4 partitions"), "{e}");
        assert!(EmbeddedLog::open(&path, 4).is_ok());
    }

    #[tokio::test]
    async fn empty_poll_returns_after_linger() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log.db"), 1).unwrap();
        let mut c = log.consumer("g", &["t"]).await.unwrap();
        assert!(
            c.next_batch(10, Duration::from_millis(5))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_reader_starts_where_asked_and_follows_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log.db"), 1).unwrap();
        for i in 0..5 {
            log.publish("t", rec("k", i)).await.unwrap();
        }
        assert_eq!(log.low_watermark("t", 0).await.unwrap(), 0);
        let mut r = log.reader("t", &[(0, 3)]).await.unwrap();
        let got = r.next_batch(10, Duration::from_millis(5)).await.unwrap();
        assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![3, 4]);
        // Nothing more: an empty poll after linger; then a new record wakes it.
        assert!(
            r.next_batch(10, Duration::from_millis(5))
                .await
                .unwrap()
                .is_empty()
        );
        let log2 = log.clone();
        let waiter = tokio::spawn(async move {
            let mut r = r;
            r.next_batch(10, Duration::from_secs(30)).await.unwrap()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        log2.publish("t", rec("k", 5)).await.unwrap();
        let got = waiter.await.unwrap();
        assert_eq!(got[0].offset, 5);
        assert_eq!(got[0].payload, Bytes::from("m5"));
        // A reader commits nothing: a group still starts at the beginning.
        let mut c = log.consumer("g", &["t"]).await.unwrap();
        let got = c.next_batch(1, Duration::from_millis(5)).await.unwrap();
        assert_eq!(got[0].offset, 0);
    }
}
