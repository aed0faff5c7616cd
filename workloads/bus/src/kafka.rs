//! Kafka adapter of the log: [`KafkaBus`] implements [`Bus`] on rdkafka (librdkafka).
//!
//! What lives here:
//! - the producer: idempotent, `acks=all`, lz4; `publish` picks the partition itself with
//!   [`partition_for`] and returns only once the broker acknowledged the record (all in-sync
//!   replicas), so a returned [`LogPosition`] is durable;
//! - topic management: physical topic names are `topic_prefix + logical name`; callers and
//!   [`Delivery::topic`] only ever see logical names. [`KafkaBus::ensure_topics`] creates topics
//!   through the AdminClient (never by auto-creation) and caches their partition counts;
//! - the consumer ([`KafkaConsumer`]): classic group protocol, at-least-once. librdkafka
//!   auto-commits, but only offsets that [`Consumer::commit`] stored (`enable.auto.offset.store =
//!   false`), and `commit` additionally commits them synchronously, so when it returns the
//!   position survives a crash of this process.
//!
//! What does not live here: retries and backoff (callers decide; every retriable failure is
//! [`BusError::Unavailable`]), envelopes (see [`crate::envelope`]), the in-process log
//! ([`crate::embedded`]).
//!
//! Property precedence: adapter defaults < `KafkaConfig::properties` < the properties the
//! guarantees rest on (idempotence, acks, offset store, auto-offset-reset, no auto-creation),
//! which configuration cannot override.

use crate::{
    Bus, BusError, Consumer, Delivery, LogPosition, Reader, Record, Result, partition_for,
};
use async_trait::async_trait;
use bytes::Bytes;
use caas_config::KafkaConfig;
use parking_lot::RwLock;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound of every metadata, watermark, admin and commit round trip.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of a readiness round trip.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `publish` waits for room in a full local producer queue.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The Kafka log. Cheap to share behind an `Arc`; one producer per instance.
pub struct KafkaBus {
    cfg: KafkaConfig,
    producer: FutureProducer,
    /// Partition counts by logical topic name, from metadata.
    partitions: RwLock<HashMap<String, u32>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.cfg.brokers)
            .field("topic_prefix", &self.cfg.topic_prefix)
            .field("partitions", &*self.partitions.read())
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Creates the producer and reads the partition counts of the existing topics under the
    /// prefix. Fails with [`BusError::Unavailable`] when no broker answers within 10 s.
    pub async fn connect(cfg: &KafkaConfig) -> Result<Self> {
        if cfg.brokers.trim().is_empty() {
            return Err(BusError::Internal("kafka: brokers is empty".into()));
        }
        if cfg.partitions == 0 || cfg.replication_factor < 1 {
            return Err(BusError::Internal(format!(
                "kafka: partitions ({}) and replicationFactor ({}) must be at least 1",
                cfg.partitions, cfg.replication_factor
            )));
        }
        let producer: FutureProducer = producer_config(cfg)
            .create()
            .map_err(|e| BusError::Internal(format!("kafka: cannot create producer: {e}")))?;
        let bus = KafkaBus {
            cfg: cfg.clone(),
            producer,
            partitions: RwLock::new(HashMap::new()),
        };
        let metadata = bus.fetch_metadata(None, OP_TIMEOUT).await?;
        bus.cache_partitions(&metadata);
        Ok(bus)
    }

    /// Makes sure `topics` (logical names) exist. With `create_topics`, missing ones are created
    /// with the configured partitions and replication factor ("already exists" is success);
    /// without, a missing topic is an error. Returns once metadata shows every topic with its
    /// partitions, and caches the counts.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<()> {
        if self.cfg.create_topics {
            self.create_topics(topics).await?;
        }
        let deadline = Instant::now() + OP_TIMEOUT;
        let mut pause = Duration::from_millis(20);
        loop {
            let mut missing = Vec::new();
            for topic in topics {
                let physical = self.physical(topic);
                let metadata = self
                    .fetch_metadata(Some(physical.clone()), OP_TIMEOUT)
                    .await?;
                if self.cache_partitions(&metadata) == 0 {
                    missing.push(physical);
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if !self.cfg.create_topics {
                return Err(BusError::Internal(format!(
                    "kafka: topics {missing:?} do not exist and createTopics is off"
                )));
            }
            if Instant::now() >= deadline {
                return Err(BusError::Unavailable(format!(
                    "kafka: topics {missing:?} were created but have no partitions in metadata \
                     after {OP_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn create_topics(&self, topics: &[&str]) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = base_config(&self.cfg)
            .create()
            .map_err(|e| BusError::Internal(format!("kafka: cannot create admin client: {e}")))?;
        let names: Vec<String> = topics.iter().map(|t| self.physical(t)).collect();
        let partitions = i32::try_from(self.cfg.partitions)
            .map_err(|_| BusError::Internal("kafka: partitions out of range".into()))?;
        let new_topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                NewTopic::new(
                    n,
                    partitions,
                    TopicReplication::Fixed(i32::from(self.cfg.replication_factor)),
                )
            })
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(OP_TIMEOUT))
            .request_timeout(Some(OP_TIMEOUT));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|e| BusError::Unavailable(format!("kafka: create topics: {e}")))?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, partitions, "Created topic."),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    let msg = format!("kafka: cannot create topic {name}: {code}");
                    return Err(match code {
                        RDKafkaErrorCode::InvalidPartitions
                        | RDKafkaErrorCode::InvalidReplicationFactor
                        | RDKafkaErrorCode::InvalidReplicaAssignment
                        | RDKafkaErrorCode::InvalidConfig
                        | RDKafkaErrorCode::InvalidTopic
                        | RDKafkaErrorCode::PolicyViolation
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed => BusError::Internal(msg),
                        _ => BusError::Unavailable(msg),
                    });
                }
            }
        }
        Ok(())
    }

    /// The broker-side name of a logical topic.
    fn physical(&self, topic: &str) -> String {
        format!("{}{topic}", self.cfg.topic_prefix)
    }

    /// Metadata of one topic (or all) fetched on the blocking pool.
    async fn fetch_metadata(&self, topic: Option<String>, timeout: Duration) -> Result<Metadata> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(topic.as_deref(), timeout)
        })
        .await
        .map_err(|e| BusError::Internal(format!("kafka: metadata task failed: {e}")))?
        .map_err(|e| BusError::Unavailable(format!("kafka: metadata: {e}")))
    }

    /// Caches the partition count of every healthy topic under the prefix in `metadata`;
    /// returns the largest count seen (0 when none).
    fn cache_partitions(&self, metadata: &Metadata) -> u32 {
        let mut seen = 0;
        let mut cache = self.partitions.write();
        for t in metadata.topics() {
            let Some(logical) = t.name().strip_prefix(self.cfg.topic_prefix.as_str()) else {
                continue;
            };
            let n = u32::try_from(t.partitions().len()).unwrap_or(u32::MAX);
            if t.error().is_some() || n == 0 {
                continue;
            }
            if n != self.cfg.partitions && cache.get(logical) != Some(&n) {
                tracing::warn!(
                    topic = t.name(),
                    partitions = n,
                    configured = self.cfg.partitions,
                    "Topic has a different partition count than configured; using the topic's."
                );
            }
            cache.insert(logical.to_owned(), n);
            seen = seen.max(n);
        }
        seen
    }

    /// The partition count of `topic`, from the cache or else from a metadata round trip.
    async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        let producer = self.producer.clone();
        let physical = self.physical(topic);
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&physical, partition, OP_TIMEOUT)
        })
        .await
        .map_err(|e| BusError::Internal(format!("kafka: watermark task failed: {e}")))?
        .map_err(|e| {
            BusError::Unavailable(format!("kafka: watermarks of {topic}/{partition}: {e}"))
        })
    }

    async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self.partitions.read().get(topic) {
            return Ok(*n);
        }
        let physical = self.physical(topic);
        let metadata = self
            .fetch_metadata(Some(physical.clone()), OP_TIMEOUT)
            .await?;
        self.cache_partitions(&metadata);
        self.partitions
            .read()
            .get(topic)
            .copied()
            .ok_or_else(|| BusError::Unavailable(format!("kafka: topic {physical} does not exist")))
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, topic: &str, record: Record) -> Result<LogPosition> {
        let partitions = self.partition_count(topic).await?;
        let partition = partition_for(&record.key, partitions);
        let physical = self.physical(topic);
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let future_record = FutureRecord::to(&physical)
            .partition(partition)
            .key(record.key.as_str())
            .payload(&record.payload[..])
            .headers(headers);
        match self.producer.send(future_record, ENQUEUE_TIMEOUT).await {
            Ok(delivered) => Ok(LogPosition {
                partition: delivered.partition,
                offset: delivered.offset,
            }),
            Err((err, _)) => Err(produce_error(&physical, err)),
        }
    }

    /// The cached count; for a topic never seen in metadata, the configured count (what
    /// [`KafkaBus::ensure_topics`] would create it with).
    fn partitions(&self, topic: &str) -> u32 {
        self.partitions
            .read()
            .get(topic)
            .copied()
            .unwrap_or(self.cfg.partitions)
    }

    async fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64> {
        Ok(self.watermarks(topic, partition).await?.1)
    }

    async fn low_watermark(&self, topic: &str, partition: i32) -> Result<i64> {
        Ok(self.watermarks(topic, partition).await?.0)
    }

    async fn reader(&self, topic: &str, from: &[(i32, i64)]) -> Result<Box<dyn Reader>> {
        // A group id is only a name here: partitions are assigned, never subscribed, and
        // nothing is committed, so no group is joined.
        let group = format!("caas-reader-{}", uuid::Uuid::new_v4());
        let mut c = consumer_config(&self.cfg, &group);
        c.set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = c
            .create()
            .map_err(|e| BusError::Internal(format!("kafka: cannot create reader: {e}")))?;
        let physical = self.physical(topic);
        let mut tpl = TopicPartitionList::with_capacity(from.len());
        for (p, o) in from {
            tpl.add_partition_offset(&physical, *p, Offset::Offset((*o).max(0)))
                .map_err(|e| BusError::Internal(format!("kafka: bad reader position: {e}")))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| BusError::Internal(format!("kafka: cannot assign {topic}: {e}")))?;
        Ok(Box::new(KafkaConsumer {
            inner: Some(Arc::new(consumer)),
            prefix: self.cfg.topic_prefix.clone(),
            group,
            reader: true,
        }))
    }

    async fn consumer(&self, group: &str, topics: &[&str]) -> Result<Box<dyn Consumer>> {
        let consumer: StreamConsumer = consumer_config(&self.cfg, group)
            .create()
            .map_err(|e| BusError::Internal(format!("kafka: cannot create consumer: {e}")))?;
        let physical: Vec<String> = topics.iter().map(|t| self.physical(t)).collect();
        let names: Vec<&str> = physical.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| {
            BusError::Internal(format!("kafka: cannot subscribe to {names:?}: {e}"))
        })?;
        Ok(Box::new(KafkaConsumer {
            inner: Some(Arc::new(consumer)),
            prefix: self.cfg.topic_prefix.clone(),
            group: group.to_owned(),
            reader: false,
        }))
    }

    async fn ensure_topics(&self, topics: &[&str]) -> Result<()> {
        KafkaBus::ensure_topics(self, topics).await
    }

    async fn ping(&self) -> Result<()> {
        // One known topic keeps the answer small on a large cluster; any answer proves a broker.
        let topic = self
            .partitions
            .read()
            .keys()
            .next()
            .map(|t| self.physical(t));
        self.fetch_metadata(topic, PING_TIMEOUT).await.map(|_| ())
    }
}

/// A consumer-group member over Kafka. Dropping it leaves the group on the blocking pool
/// (committing nothing that [`Consumer::commit`] did not store).
pub struct KafkaConsumer {
    /// `None` once closed.
    inner: Option<Arc<StreamConsumer>>,
    prefix: String,
    group: String,
    /// A [`Reader`]: assigned partitions, no group, nothing committed.
    reader: bool,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.group)
            .field("closed", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    fn inner(&self) -> Result<Arc<StreamConsumer>> {
        self.inner.clone().ok_or_else(|| {
            BusError::Internal(format!("kafka: consumer of {} is closed", self.group))
        })
    }

    fn delivery(&self, m: &BorrowedMessage<'_>) -> Delivery {
        let topic = m.topic();
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Delivery {
            topic: topic
                .strip_prefix(self.prefix.as_str())
                .unwrap_or(topic)
                .to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            payload: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
            headers,
        }
    }
}

#[async_trait]
impl Reader for KafkaConsumer {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let consumer = self.inner()?;
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => return Ok(batch),
            Ok(Err(err)) => return Err(consume_error(&self.group, err)),
            Ok(Ok(m)) => batch.push(self.delivery(&m)),
        }
        // What is already fetched, without waiting for more.
        while batch.len() < max {
            match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(self.delivery(&m)),
                _ => break,
            }
        }
        Ok(batch)
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next_batch(&mut self, max: usize, linger: Duration) -> Result<Vec<Delivery>> {
        let consumer = self.inner()?;
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        match tokio::time::timeout(linger, consumer.recv()).await {
            Err(_) => return Ok(batch),
            Ok(Err(err)) => return Err(consume_error(&self.group, err)),
            Ok(Ok(m)) => batch.push(self.delivery(&m)),
        }
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => batch.push(self.delivery(&m)),
                Ok(Err(err)) => {
                    // Hand over what we have; the error shows again on the next call if it lasts.
                    tracing::warn!(error = %err, group = %self.group, "Kafka consumer error.");
                    break;
                }
            }
        }
        Ok(batch)
    }

    async fn commit(&mut self, upto: &[(String, LogPosition)]) -> Result<()> {
        if upto.is_empty() {
            return Ok(());
        }
        let consumer = self.inner()?;
        let mut tpl = TopicPartitionList::with_capacity(upto.len());
        for (topic, pos) in upto {
            // The committed offset is the next one to read.
            tpl.add_partition_offset(
                &format!("{}{topic}", self.prefix),
                pos.partition,
                Offset::Offset(pos.offset + 1),
            )
            .map_err(|e| BusError::Internal(format!("kafka: bad commit position: {e}")))?;
        }
        let group = self.group.clone();
        tokio::task::spawn_blocking(move || {
            match consumer.store_offsets(&tpl) {
                Ok(()) => {}
                // No listed partition is assigned to us any more: the new owner replays them.
                Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                    tracing::warn!(%group, "Partitions revoked before commit; they will be redelivered.");
                    return Ok(());
                }
                Err(e) => return Err(BusError::Unavailable(format!("kafka: store offsets: {e}"))),
            }
            for elem in tpl.elements() {
                if let Err(e) = elem.error() {
                    tracing::warn!(
                        %group, topic = elem.topic(), partition = elem.partition(), error = %e,
                        "Offset not stored (partition revoked?); it will be redelivered."
                    );
                }
            }
            commit_stored(&consumer)
        })
        .await
        .map_err(|e| BusError::Internal(format!("kafka: commit task failed: {e}")))?
    }

    async fn close(&mut self) -> Result<()> {
        let Some(consumer) = self.inner.take() else {
            return Ok(());
        };
        let reader = self.reader;
        tokio::task::spawn_blocking(move || {
            if reader {
                drop(consumer);
                return Ok(());
            }
            let committed = commit_stored(&consumer);
            consumer.unsubscribe();
            // Dropping the last handle leaves the group (blocks until the broker answered).
            drop(consumer);
            committed
        })
        .await
        .map_err(|e| BusError::Internal(format!("kafka: close task failed: {e}")))?
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // librdkafka's close blocks until the group is left: keep that off the async workers.
        let Some(consumer) = self.inner.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn_blocking(move || drop(consumer));
        }
    }
}

/// Commits the stored offsets of the assigned partitions and waits for the broker's answer.
fn commit_stored(consumer: &StreamConsumer) -> Result<()> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => Err(BusError::Unavailable(format!("kafka: commit: {e}"))),
    }
}

/// Connection and security settings shared by every client.
fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", "caas");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c.set("allow.auto.create.topics", "false");
    c
}

fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", "caas")
        // snappy does not work with every Kafka-protocol broker (tansu); lz4 does.
        .set("compression.type", "lz4")
        // Chat is latency-bound: a short linger still batches under load.
        .set("linger.ms", "2")
        // Bound how long a publish can hang while brokers are unreachable.
        .set("message.timeout.ms", "30000");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("allow.auto.create.topics", "false");
    c
}

fn consumer_config(cfg: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", "caas")
        .set("group.id", group)
        .set("enable.partition.eof", "false")
        .set("auto.commit.interval.ms", "5000");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c.set("group.protocol", "classic")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false");
    c
}

fn produce_error(topic: &str, err: KafkaError) -> BusError {
    let msg = format!("kafka: publish to {topic}: {err}");
    match err.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTimestamp
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::MessageBatchTooLarge,
        ) => BusError::BadRecord(msg),
        _ => BusError::Unavailable(msg),
    }
}

fn consume_error(group: &str, err: KafkaError) -> BusError {
    let msg = format!("kafka: consumer of {group}: {err}");
    match err {
        KafkaError::MessageConsumptionFatal(_) => BusError::Internal(msg),
        _ => BusError::Unavailable(msg),
    }
}
