//! De-duplication of retried sends: a client message id is reserved before the message is
//! published, and the result (message id, log position) is kept for the de-duplication window,
//! so a retry — on this pod or another — gets the first send's result instead of a second
//! message. In memory by default; in Redis (`SET NX PX`) across pods.
//!
//! A reservation that is never completed (the accepting process died between reserve and
//! publish) expires after [`PENDING_TTL`], after which a retry may publish. The message id of a
//! send with a client id is derived from it, so even that rare double publish stores one message.

use async_trait::async_trait;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// How long an unfinished reservation blocks retries.
pub const PENDING_TTL: Duration = Duration::from_secs(30);

/// The state of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved for the caller: go ahead, then [`Dedupe::complete`] or [`Dedupe::release`].
    Fresh,
    /// Another send with this key is being published now.
    InFlight,
    /// Done before; the stored result.
    Done(String),
}

#[async_trait]
pub trait Dedupe: Send + Sync + 'static {
    async fn reserve(&self, key: &str) -> Result<Reservation, String>;
    async fn complete(&self, key: &str, result: &str, ttl: Duration) -> Result<(), String>;
    async fn release(&self, key: &str) -> Result<(), String>;
}

/// How many results the in-process cache keeps; beyond it the oldest are forgotten (their
/// sends are still found in the store by their derived message id).
pub const MEMORY_CAPACITY: usize = 100_000;

/// In-process de-duplication, bounded: a FIFO of keys evicts the oldest entries beyond
/// [`MEMORY_CAPACITY`], so memory and the cost of a send stay flat however long it runs.
#[derive(Debug, Default)]
pub struct MemoryDedupe {
    entries: DashMap<String, (Option<String>, Instant)>,
    order: parking_lot::Mutex<std::collections::VecDeque<String>>,
}

impl MemoryDedupe {
    pub fn new() -> Self {
        Self::default()
    }

    fn remember(&self, key: &str) {
        let mut order = self.order.lock();
        order.push_back(key.to_string());
        while order.len() > MEMORY_CAPACITY {
            if let Some(old) = order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}

#[async_trait]
impl Dedupe for MemoryDedupe {
    async fn reserve(&self, key: &str) -> Result<Reservation, String> {
        let now = Instant::now();
        let mut e = self.entries.entry(key.to_string()).or_insert((None, now));
        if e.1 <= now {
            *e = (None, now + PENDING_TTL);
            drop(e);
            self.remember(key);
            return Ok(Reservation::Fresh);
        }
        Ok(match &e.0 {
            Some(v) => Reservation::Done(v.clone()),
            None => Reservation::InFlight,
        })
    }

    async fn complete(&self, key: &str, result: &str, ttl: Duration) -> Result<(), String> {
        self.entries.insert(
            key.to_string(),
            (Some(result.to_string()), Instant::now() + ttl),
        );
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), String> {
        self.entries.remove(key);
        Ok(())
    }
}

/// De-duplication shared by every pod through Redis.
pub struct RedisDedupe {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDedupe")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisDedupe {
    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: format!("{prefix}dd:"),
        }
    }
}

const PENDING: &str = "\u{0}pending";

#[async_trait]
impl Dedupe for RedisDedupe {
    async fn reserve(&self, key: &str) -> Result<Reservation, String> {
        let mut c = self.conn.clone();
        let k = format!("{}{key}", self.prefix);
        let set: Option<String> = redis::cmd("SET")
            .arg(&k)
            .arg(PENDING)
            .arg("NX")
            .arg("PX")
            .arg(PENDING_TTL.as_millis() as u64)
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        if set.is_some() {
            return Ok(Reservation::Fresh);
        }
        let v: Option<String> = redis::cmd("GET")
            .arg(&k)
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(match v {
            None => Reservation::InFlight, // expired between SET and GET: let the caller retry
            Some(v) if v == PENDING => Reservation::InFlight,
            Some(v) => Reservation::Done(v),
        })
    }

    async fn complete(&self, key: &str, result: &str, ttl: Duration) -> Result<(), String> {
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(result)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| e.to_string())
    }

    async fn release(&self, key: &str) -> Result<(), String> {
        let mut c = self.conn.clone();
        redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reserve_complete_release() {
        let d = MemoryDedupe::new();
        assert_eq!(d.reserve("a").await.unwrap(), Reservation::Fresh);
        assert_eq!(d.reserve("a").await.unwrap(), Reservation::InFlight);
        d.complete("a", "r1", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            d.reserve("a").await.unwrap(),
            Reservation::Done("r1".into())
        );
        assert_eq!(d.reserve("b").await.unwrap(), Reservation::Fresh);
        d.release("b").await.unwrap();
        assert_eq!(d.reserve("b").await.unwrap(), Reservation::Fresh);
        d.complete("c", "x", Duration::ZERO).await.unwrap();
        assert_eq!(
            d.reserve("c").await.unwrap(),
            Reservation::Fresh,
            "expired results are forgotten"
        );
    }

    #[tokio::test]
    async fn memory_is_bounded() {
        let d = MemoryDedupe::new();
        for i in 0..MEMORY_CAPACITY + 10 {
            let k = format!("k{i}");
            assert_eq!(d.reserve(&k).await.unwrap(), Reservation::Fresh);
            d.complete(&k, "r", Duration::from_secs(60)).await.unwrap();
        }
        assert_eq!(d.entries.len(), MEMORY_CAPACITY);
        assert_eq!(
            d.reserve("k0").await.unwrap(),
            Reservation::Fresh,
            "the oldest were forgotten"
        );
        let last = format!("k{}", MEMORY_CAPACITY + 9);
        assert_eq!(
            d.reserve(&last).await.unwrap(),
            Reservation::Done("r".into())
        );
    }
}
