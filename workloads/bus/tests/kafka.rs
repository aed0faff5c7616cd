//! Integration tests of [`caas_bus::kafka::KafkaBus`] against a real Kafka-protocol broker.
//!
//! The broker comes from `CAAS_TEST_KAFKA_BROKERS` (`scripts/test.sh` starts tansu and sets it);
//! without it every test fails with a message saying so. Each test uses its own topic prefix
//! and consumer groups (uuid), so runs never see each other's records.
//!
//! `redelivery_after_crash` re-runs this test binary as a child process (the ignored
//! `crash_child` test, selected by `--exact --ignored`) and kills it with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use caas_bus::kafka::KafkaBus;
use caas_bus::{
    Bus, BusError, Consumer, Delivery, LogPosition, Record, last_positions, partition_for,
};
use caas_config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

const TOPIC: &str = "events";
/// Generous: joining a group on tansu takes a few seconds, a crashed member's session 6 s.
const WAIT: Duration = Duration::from_secs(60);

const CHILD_PREFIX: &str = "CAAS_TEST_CRASH_PREFIX";
const CHILD_GROUP: &str = "CAAS_TEST_CRASH_GROUP";
const CHILD_COMMIT_UPTO: &str = "CAAS_TEST_CRASH_COMMIT_UPTO";
const CHILD_READY: &str = "CRASH-CHILD-COMMITTED";

fn brokers() -> String {
    match std::env::var("CAAS_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "CAAS_TEST_KAFKA_BROKERS is not set: the Kafka adapter tests need a real \
             Kafka-protocol broker. Run scripts/test.sh (it starts tansu), or point the variable \
             at a broker, e.g. CAAS_TEST_KAFKA_BROKERS=127.0.0.1:9092."
        ),
    }
}

fn config(prefix: &str, partitions: u32) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers(),
        topic_prefix: prefix.to_owned(),
        partitions,
        replication_factor: 1,
        create_topics: true,
        // A crashed member must leave the group soon; consumer-only, producers ignore it.
        properties: BTreeMap::from([("session.timeout.ms".to_owned(), "6000".to_owned())]),
    }
}

fn unique(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// A bus with a fresh prefix and `TOPIC` created with `partitions`.
async fn bus(partitions: u32) -> (KafkaBus, String) {
    let prefix = format!("{}.", unique("t"));
    let bus = KafkaBus::connect(&config(&prefix, partitions))
        .await
        .expect("connect");
    bus.ensure_topics(&[TOPIC]).await.expect("ensure topics");
    (bus, prefix)
}

fn record(key: &str, payload: &str, headers: &[(&str, &str)]) -> Record {
    Record {
        key: key.to_owned(),
        payload: Bytes::from(payload.to_owned()),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// Reads until `n` deliveries arrived; fails with what came so far after `WAIT`.
async fn collect(consumer: &mut dyn Consumer, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "expected {n} deliveries within {WAIT:?}, got {}: {:?}",
            got.len(),
            got.iter()
                .map(|d: &Delivery| (d.partition, d.offset))
                .collect::<Vec<_>>()
        );
        match consumer
            .next_batch(n - got.len(), Duration::from_millis(200))
            .await
        {
            Ok(batch) => got.extend(batch),
            // Transient while the group forms (e.g. coordinator not known yet).
            Err(BusError::Unavailable(e)) => eprintln!("next_batch: {e}"),
            Err(e) => panic!("next_batch: {e}"),
        }
    }
    got
}

fn payloads(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_consume_with_headers_and_keys() {
    let (bus, prefix) = bus(4).await;
    let sent = [
        record(
            "conv-a",
            "hello",
            &[("caas-tenant", "acme"), ("x-correlation-id", "c-1")],
        ),
        record(
            "conv-b",
            "{\"json\":true}",
            &[("caas-event-type", "message.created")],
        ),
        record("conv-a", "", &[]),
    ];
    let mut positions = Vec::new();
    for r in &sent {
        positions.push(bus.publish(TOPIC, r.clone()).await.expect("publish"));
    }

    let mut consumer = bus
        .consumer(&unique("g"), &[TOPIC])
        .await
        .expect("consumer");
    let mut got = collect(consumer.as_mut(), sent.len()).await;
    got.sort_by_key(|d| (d.partition, d.offset));
    for (r, pos) in sent.iter().zip(&positions) {
        let d = got
            .iter()
            .find(|d| d.partition == pos.partition && d.offset == pos.offset)
            .unwrap_or_else(|| panic!("no delivery at {pos:?}: {got:?}"));
        assert_eq!(d.topic, TOPIC, "deliveries carry the logical topic name");
        assert_eq!(d.key, r.key);
        assert_eq!(d.payload, r.payload);
        assert_eq!(d.headers, r.headers);
    }
    consumer.close().await.expect("close");

    // On the broker the topic carries the prefix; the bare logical name was never created.
    let raw: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("raw client");
    let metadata = tokio::task::spawn_blocking(move || raw.fetch_metadata(None, WAIT))
        .await
        .expect("join")
        .expect("metadata");
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert!(
        names.contains(&format!("{prefix}{TOPIC}").as_str()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_within_a_partition_follows_publish_order() {
    let (bus, _) = bus(3).await;
    let keys = ["k1", "k2", "k3", "k4", "k5"];
    // Sequential publishes, interleaving keys.
    for i in 0..10 {
        for k in keys {
            bus.publish(TOPIC, record(k, &format!("{k}:{i}"), &[]))
                .await
                .expect("publish");
        }
    }
    // Pipelined publishes of one key: enqueue order is log order (idempotent producer).
    let pipelined = futures::future::join_all(
        (10..40).map(|i| bus.publish(TOPIC, record("k1", &format!("k1:{i}"), &[]))),
    )
    .await;
    let offsets: Vec<i64> = pipelined
        .into_iter()
        .map(|r| r.expect("publish").offset)
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "pipelined offsets out of order: {offsets:?}"
    );

    let mut consumer = bus
        .consumer(&unique("g"), &[TOPIC])
        .await
        .expect("consumer");
    let got = collect(consumer.as_mut(), 80).await;
    let mut per_key: HashMap<String, Vec<(i32, i64, u32)>> = HashMap::new();
    for d in &got {
        let payload = String::from_utf8_lossy(&d.payload).into_owned();
        let (k, i) = payload.split_once(':').expect("payload k:i");
        assert_eq!(k, d.key);
        per_key.entry(d.key.clone()).or_default().push((
            d.partition,
            d.offset,
            i.parse().expect("sequence number"),
        ));
    }
    for (key, seen) in per_key {
        let expected = if key == "k1" { 40 } else { 10 };
        assert_eq!(seen.len(), expected, "{key}: {seen:?}");
        assert!(
            seen.iter().all(|(p, _, _)| *p == partition_for(&key, 3)),
            "{key}: {seen:?}"
        );
        let seqs: Vec<u32> = seen.iter().map(|(_, _, i)| *i).collect();
        assert_eq!(
            seqs,
            (0..expected as u32).collect::<Vec<_>>(),
            "{key} delivered out of order"
        );
        assert!(
            seen.windows(2).all(|w| w[0].1 < w[1].1),
            "{key}: offsets not increasing"
        );
    }
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_in_the_partition_of_partition_for() {
    let (bus, _) = bus(5).await;
    assert_eq!(bus.partitions(TOPIC), 5);
    let mut used = std::collections::BTreeSet::new();
    let mut published = HashMap::new();
    for i in 0..40 {
        let key = format!("conversation-{i}");
        let pos = bus
            .publish(TOPIC, record(&key, "x", &[]))
            .await
            .expect("publish");
        assert_eq!(pos.partition, partition_for(&key, 5), "{key}");
        used.insert(pos.partition);
        published.insert(key, pos);
    }
    assert!(used.len() > 1, "40 keys all in one partition: {used:?}");

    let mut consumer = bus
        .consumer(&unique("g"), &[TOPIC])
        .await
        .expect("consumer");
    for d in collect(consumer.as_mut(), 40).await {
        let pos = published[&d.key];
        assert_eq!(
            (d.partition, d.offset),
            (pos.partition, pos.offset),
            "{}",
            d.key
        );
    }
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_watermark_advances_with_each_publish() {
    let (bus, _) = bus(2).await;
    let key = "conv-hw";
    let p = partition_for(key, 2);
    let other = 1 - p;
    assert_eq!(bus.high_watermark(TOPIC, p).await.expect("hw"), 0);
    for n in 1..=3 {
        let pos = bus
            .publish(TOPIC, record(key, "x", &[]))
            .await
            .expect("publish");
        assert_eq!(pos.partition, p);
        let hw = bus.high_watermark(TOPIC, p).await.expect("hw");
        assert_eq!(hw, pos.offset + 1, "after publish {n}");
        assert_eq!(hw, n);
    }
    assert_eq!(bus.high_watermark(TOPIC, other).await.expect("hw"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_resumes_after_the_last_commit() {
    let (bus, _) = bus(2).await;
    let group = unique("g");
    let key = "conv-resume";
    for i in 0..10 {
        bus.publish(TOPIC, record(key, &format!("m{i}"), &[]))
            .await
            .expect("publish");
    }

    // A reads everything, commits up to m3, and leaves without committing the rest (a clean
    // leave, so B's join does not wait out A's session on a loaded broker; a crash is
    // `redelivery_after_crash_is_exactly_the_uncommitted_records`).
    let mut a = bus.consumer(&group, &[TOPIC]).await.expect("consumer a");
    let got = collect(a.as_mut(), 10).await;
    assert_eq!(
        payloads(&got),
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    a.commit(&last_positions(&got[..4])).await.expect("commit");
    a.close().await.expect("close a");

    // B starts right after m3 and gets each uncommitted record once, in order.
    let mut b = bus.consumer(&group, &[TOPIC]).await.expect("consumer b");
    let got = collect(b.as_mut(), 6).await;
    assert_eq!(
        payloads(&got),
        (4..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    b.commit(&last_positions(&got)).await.expect("commit");
    b.close().await.expect("close");
    assert!(
        b.next_batch(1, Duration::from_millis(10)).await.is_err(),
        "a closed consumer refuses to deliver"
    );

    // C sees nothing that B committed: the first delivery is the record published now.
    bus.publish(TOPIC, record(key, "m10", &[]))
        .await
        .expect("publish");
    let mut c = bus.consumer(&group, &[TOPIC]).await.expect("consumer c");
    let got = collect(c.as_mut(), 1).await;
    assert_eq!(payloads(&got), vec!["m10".to_owned()]);
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_after_crash_is_exactly_the_uncommitted_records() {
    let (bus, prefix) = bus(1).await;
    let group = unique("g");
    for i in 0..10 {
        bus.publish(TOPIC, record("conv-crash", &format!("m{i}"), &[]))
            .await
            .expect("publish");
    }

    let exe = std::env::current_exe().expect("current exe");
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_PREFIX, &prefix)
        .env(CHILD_GROUP, &group)
        .env(CHILD_COMMIT_UPTO, "5")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let committed = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read child stdout") {
            // libtest prints `test crash_child ... ` without a newline before our line.
            if let Some((_, rest)) = line.split_once(CHILD_READY) {
                return Some(rest.trim().to_owned());
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("child did not report its commit within {WAIT:?}"))
    .unwrap_or_else(|| panic!("child exited without committing"));
    assert_eq!(committed, "m5");

    child.start_kill().expect("SIGKILL child");
    let status = child.wait().await.expect("wait child");
    assert!(
        !status.success(),
        "the child was killed, not finished: {status}"
    );

    // A new member of the group starts right after the last commit: m6..m9, then the sentinel,
    // nothing replayed twice and nothing skipped.
    bus.publish(TOPIC, record("conv-crash", "sentinel", &[]))
        .await
        .expect("publish");
    let mut consumer = bus.consumer(&group, &[TOPIC]).await.expect("consumer");
    let got = collect(consumer.as_mut(), 5).await;
    assert_eq!(payloads(&got), vec!["m6", "m7", "m8", "m9", "sentinel"]);
    consumer.close().await.expect("close");
}

/// The child process of `redelivery_after_crash_is_exactly_the_uncommitted_records`: reads the
/// ten records, commits up to index `CAAS_TEST_CRASH_COMMIT_UPTO`, says so, and waits to be
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of redelivery_after_crash_is_exactly_the_uncommitted_records"]
async fn crash_child() {
    let (Ok(prefix), Ok(group), Ok(upto)) = (
        std::env::var(CHILD_PREFIX),
        std::env::var(CHILD_GROUP),
        std::env::var(CHILD_COMMIT_UPTO),
    ) else {
        panic!("crash_child runs only as the child of redelivery_after_crash (env not set)");
    };
    let upto: usize = upto.parse().expect("index");
    let bus = KafkaBus::connect(&config(&prefix, 1))
        .await
        .expect("connect");
    let mut consumer = bus.consumer(&group, &[TOPIC]).await.expect("consumer");
    let got = collect(consumer.as_mut(), 10).await;
    let last = &got[upto];
    consumer
        .commit(&[(
            last.topic.clone(),
            LogPosition {
                partition: last.partition,
                offset: last.offset,
            },
        )])
        .await
        .expect("commit");
    println!("{CHILD_READY} {}", String::from_utf8_lossy(&last.payload));
    // Keep the group membership (and uncommitted records) alive until SIGKILL.
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_once_and_never_auto_created() {
    let (bus, prefix) = bus(2).await;
    // Creating again is fine ("already exists" is success).
    bus.ensure_topics(&[TOPIC]).await.expect("ensure twice");
    bus.ping().await.expect("ping");

    // A topic nobody created is an error, not an auto-created topic.
    let err = bus
        .publish("never-created", record("k", "x", &[]))
        .await
        .expect_err("publish");
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
    let mut cfg = config(&prefix, 2);
    cfg.create_topics = false;
    let strict = KafkaBus::connect(&cfg).await.expect("connect");
    let err = strict
        .ensure_topics(&["never-created"])
        .await
        .expect_err("ensure");
    assert!(matches!(err, BusError::Internal(_)), "{err:?}");
    strict
        .ensure_topics(&[TOPIC])
        .await
        .expect("existing topic passes without creation");
    assert_eq!(strict.partitions(TOPIC), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_reads_from_a_position_without_a_group() {
    let (bus, _prefix) = bus(2).await;
    let key = "conv-reader";
    let p = partition_for(key, 2);
    for i in 0..6 {
        bus.publish(TOPIC, record(key, &format!("m{i}"), &[]))
            .await
            .unwrap();
    }
    let low = bus.low_watermark(TOPIC, p).await.unwrap();
    let high = bus.high_watermark(TOPIC, p).await.unwrap();
    assert_eq!((low, high), (0, 6));
    let mut reader = bus.reader(TOPIC, &[(p, 4)]).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < 2 && Instant::now() < deadline {
        got.extend(
            reader
                .next_batch(10, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    let offsets: Vec<i64> = got.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, vec![4, 5]);
    assert_eq!(got[0].payload, Bytes::from("m4"));
    // It follows what is published next.
    bus.publish(TOPIC, record(key, "m6", &[])).await.unwrap();
    let mut more = Vec::new();
    let deadline = Instant::now() + WAIT;
    while more.is_empty() && Instant::now() < deadline {
        more.extend(
            reader
                .next_batch(10, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    assert_eq!(more[0].offset, 6);
}
