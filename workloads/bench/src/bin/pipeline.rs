//! `caas-bench-pipeline`: the message pipeline alone (no HTTP), as `caas standalone` runs it —
//! the embedded log and the embedded store in one process — or over Kafka and MongoDB when
//! given. Two measurements per batch size:
//!
//! 1. **Persisted messages per second**: N `message.created` events are already in the log
//!    (published by concurrent producers, group commit), then the pipeline starts and is timed
//!    until the store's progress reaches the log's high watermark of every partition. Every
//!    stage runs (validate, tenant, authorize, transform, persist with the conversation update,
//!    notify) and the webhook deliverer reads the notifications.
//! 2. **End-to-end lag under a burst**: with the pipeline running and idle, a burst of B
//!    events is published as fast as the log takes it; each event's lag is the time from its
//!    publish acknowledgement to the first moment the store's progress covers its offset
//!    (sampled every millisecond). Reports p50/p99/max lag and checks that the lag is back to
//!    zero (progress = high watermark) after the burst.
//!
//! `cargo run --release -p caas-bench --bin caas-bench-pipeline -- --help`

#![forbid(unsafe_code)]

use anyhow::Context as _;
use caas_bus::{DynBus, Envelope, topics};
use caas_config::{KafkaConfig, PipelineConfig};
use caas_domain::event::{ConversationEvent, MessageCreated, SCHEMA_VERSION};
use caas_domain::model::{
    Conversation, ConversationKind, Member, Quotas, Role, Tenant, TenantStatus,
};
use caas_domain::{ConversationId, MessageId, TenantId, UserId};
use caas_kit::metrics::Metrics;
use caas_pipeline::{PipelineHealth, PipelineMetrics};
use caas_store::{DynStore, PERSIST_CONSUMER};
use clap::Parser;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "caas-bench-pipeline",
    about = "Benchmark of the message pipeline"
)]
struct Args {
    /// Events already in the log when the pipeline starts (throughput run).
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Batch sizes (`pipeline.batchMaxEvents`) to sweep.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    batch_sizes: Vec<usize>,
    /// Events of the lag burst.
    #[arg(long, default_value_t = 50_000)]
    burst: usize,
    /// Conversations the events are spread over (round robin).
    #[arg(long, default_value_t = 64)]
    conversations: usize,
    /// Members per conversation (each message updates the others' unread counts).
    #[arg(long, default_value_t = 2)]
    members: usize,
    /// Log partitions.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Concurrent producers while filling the log.
    #[arg(long, default_value_t = 512)]
    producers: usize,
    /// Publish notifications (the notify stage) as in production.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    notifications: bool,
    /// Kafka brokers: use the Kafka adapter instead of the embedded log.
    #[arg(long)]
    kafka: Option<String>,
    /// MongoDB URI: use the MongoDB adapter instead of the embedded store.
    #[arg(long)]
    mongodb: Option<String>,
    /// Also measure the storage engine's ceiling on this machine: the same message rows
    /// (serialised documents of the benchmark's messages) inserted straight into a table
    /// shaped like the embedded store's, with its pragmas, one durable transaction per batch,
    /// nothing else running.
    #[arg(long, default_value_t = false)]
    ceiling: bool,
}

/// Rows per second SQLite itself takes for `n` message rows in transactions of `batch`, with
/// the embedded store's schema for messages and its durability (WAL, synchronous=FULL).
fn sqlite_ceiling(n: usize, batch: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut c = rusqlite::Connection::open(dir.path().join("ceiling.db"))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "cache_size", -16_000)?;
    // As the store: checkpoints on a thread of their own, not in the commits measured here.
    c.pragma_update(None, "wal_autocheckpoint", 0)?;
    c.execute_batch(
        "CREATE TABLE messages (
            tenant_id TEXT NOT NULL, id TEXT NOT NULL, conversation_id TEXT NOT NULL,
            position INTEGER NOT NULL, parent_id TEXT, sender_id TEXT NOT NULL,
            deleted INTEGER NOT NULL, doc TEXT NOT NULL,
            PRIMARY KEY (tenant_id, id)) WITHOUT ROWID;
         CREATE INDEX messages_by_position ON messages(tenant_id, conversation_id, parent_id, position);",
    )?;
    let t = tenant_id();
    let rows: Vec<(String, String, String, String)> = (0..n)
        .map(|i| {
            let text = format!("message {i}: lunch at noon? see https://example.com/menu #food");
            let r = caas_domain::text::render(&text);
            let ev = MessageCreated {
                message_id: MessageId::generate(),
                sender_id: user(i % 2),
                text,
                html: r.html,
                mentions: vec![],
                links: r.links,
                hashtags: r.hashtags,
                parent_id: None,
                client_msg_id: None,
                forwarded_from: None,
                attachments: Vec::new(),
                created_at: OffsetDateTime::now_utc(),
            };
            let m = ev.to_message(&t, &conv(i % 64), i as i64);
            let doc = serde_json::to_string(&m).unwrap_or_default();
            (
                m.id.to_string(),
                m.conversation_id.to_string(),
                m.sender_id.to_string(),
                doc,
            )
        })
        .collect();
    let started = Instant::now();
    for (b, chunk) in rows.chunks(batch.max(1)).enumerate() {
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO messages (tenant_id, id, conversation_id, position, parent_id, sender_id, deleted, doc)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, 0, ?6)",
            )?;
            for (i, (id, conv, sender, doc)) in chunk.iter().enumerate() {
                let position = (b * batch + i) as i64;
                st.execute(rusqlite::params![
                    t.as_str(),
                    id,
                    conv,
                    position,
                    sender,
                    doc
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn tenant_id() -> TenantId {
    TenantId::parse("bench").unwrap_or_else(|_| unreachable!("literal id"))
}

fn user(i: usize) -> UserId {
    UserId::parse(format!("u{i}")).unwrap_or_else(|_| unreachable!("literal id"))
}

fn conv(i: usize) -> ConversationId {
    ConversationId::parse(format!("c{i}")).unwrap_or_else(|_| unreachable!("literal id"))
}

struct Setup {
    _dir: tempfile::TempDir,
    store: DynStore,
    bus: DynBus,
}

async fn setup(args: &Args, run: &str) -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let store: DynStore = match &args.mongodb {
        Some(uri) => Arc::new(
            caas_store::mongo::MongoStore::connect(uri, &format!("bench_{run}"))
                .await
                .context("MongoDB")?,
        ),
        None => Arc::new(caas_store::sqlite::SqliteStore::open(
            dir.path().join("store.db"),
        )?),
    };
    let bus: DynBus = match &args.kafka {
        Some(brokers) => {
            let k = KafkaConfig {
                brokers: brokers.clone(),
                topic_prefix: format!("bench-{run}."),
                partitions: args.partitions,
                replication_factor: 1,
                create_topics: true,
                ..KafkaConfig::default()
            };
            Arc::new(
                caas_bus::kafka::KafkaBus::connect(&k)
                    .await
                    .context("Kafka")?,
            )
        }
        None => Arc::new(caas_bus::embedded::EmbeddedLog::open(
            dir.path().join("log.db"),
            args.partitions,
        )?),
    };
    let now = OffsetDateTime::now_utc();
    store
        .create_tenant(&Tenant {
            id: tenant_id(),
            name: "Bench".into(),
            status: TenantStatus::Active,
            quotas: Quotas::default(),
            features: vec![],
            created_at: now,
            updated_at: now,
        })
        .await?;
    for c in 0..args.conversations {
        let members: Vec<Member> = (0..args.members)
            .map(|u| Member {
                tenant_id: tenant_id(),
                conversation_id: conv(c),
                user_id: user(u),
                role: Role::Member,
                joined_at: now,
                last_read_position: -1,
                unread_count: 0,
            })
            .collect();
        store
            .create_conversation(
                &Conversation {
                    tenant_id: tenant_id(),
                    id: conv(c),
                    kind: ConversationKind::Group,
                    name: None,
                    topic: None,
                    created_by: user(0),
                    created_at: now,
                    updated_at: now,
                    archived_at: None,
                    last_message: None,
                    member_count: 0,
                },
                &members,
            )
            .await?;
    }
    Ok(Setup {
        _dir: dir,
        store,
        bus,
    })
}

/// Publishes `n` events (numbered from `from`) with `producers` concurrent producers; returns
/// each event's (partition, offset, ack time).
async fn fill(
    bus: &DynBus,
    args: &Args,
    from: usize,
    n: usize,
) -> anyhow::Result<Vec<(i32, i64, Instant)>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let end = from + n;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.producers {
        let (bus, next) = (bus.clone(), next.clone());
        let (convs, members) = (args.conversations, args.members);
        tasks.spawn(async move {
            let mut acks = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= end {
                    return anyhow::Ok(acks);
                }
                let c = conv(i % convs);
                let text =
                    format!("message {i}: lunch at noon? see https://example.com/menu #food");
                let env = Envelope {
                    v: SCHEMA_VERSION,
                    id: uuid::Uuid::now_v7(),
                    tenant_id: tenant_id(),
                    key: c.to_string(),
                    correlation_id: format!("bench-{i}"),
                    occurred_at: OffsetDateTime::now_utc(),
                    event: ConversationEvent::MessageCreated(MessageCreated {
                        message_id: MessageId::generate(),
                        sender_id: user(i % members),
                        text: text.clone(),
                        html: text,
                        mentions: vec![],
                        links: vec![],
                        hashtags: vec![],
                        parent_id: None,
                        client_msg_id: None,
                        forwarded_from: None,
                        attachments: Vec::new(),
                        created_at: OffsetDateTime::now_utc(),
                    }),
                };
                let pos = env
                    .publish(bus.as_ref(), topics::CONVERSATION_EVENTS, "message.created")
                    .await?;
                acks.push((pos.partition, pos.offset, Instant::now()));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

async fn heads(bus: &DynBus, partitions: u32) -> anyhow::Result<Vec<i64>> {
    let mut out = Vec::new();
    for p in 0..partitions as i32 {
        out.push(bus.high_watermark(topics::CONVERSATION_EVENTS, p).await?);
    }
    Ok(out)
}

async fn progress(store: &DynStore, partitions: u32) -> anyhow::Result<Vec<i64>> {
    let p = store.progress(PERSIST_CONSUMER).await?;
    Ok((0..partitions as i32)
        .map(|i| p.get(&i).copied().unwrap_or(0))
        .collect())
}

fn start(
    s: &Setup,
    cfg: PipelineConfig,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<()>,
    PipelineMetrics,
) {
    let stop = CancellationToken::new();
    let metrics = PipelineMetrics::new(&Metrics::new());
    let m = metrics.clone();
    let (store, bus, st) = (s.store.clone(), s.bus.clone(), stop.clone());
    let h = tokio::spawn(async move {
        if let Err(e) = caas_pipeline::run(
            store,
            bus,
            cfg,
            metrics,
            Arc::new(PipelineHealth::default()),
            st,
        )
        .await
        {
            eprintln!("pipeline failed: {e}");
        }
    });
    (stop, h, m)
}

/// Seconds spent per stage (sum over batches), for the stage breakdown.
fn stage_seconds(m: &PipelineMetrics) -> String {
    ["validate", "persist", "dead_letter", "notify", "webhook"]
        .iter()
        .map(|s| {
            let h = m.stage_seconds.with_label_values(&[s]);
            format!("{s} {:.2}s", h.get_sample_sum())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store_name = if args.mongodb.is_some() {
        "MongoDB"
    } else {
        "SQLite (embedded)"
    };
    let bus_name = if args.kafka.is_some() {
        "Kafka"
    } else {
        "embedded log"
    };
    println!(
        "pipeline benchmark: store {store_name}, log {bus_name}, {} partitions, {} conversations x {} members, notifications {}",
        args.partitions, args.conversations, args.members, args.notifications
    );
    println!();
    println!(
        "| batch size | events | fill (msgs/s) | persisted (msgs/s) | burst | lag p50 | lag p99 | lag max | lag after burst |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    if args.ceiling {
        for &batch in &args.batch_sizes {
            eprintln!(
                "SQLite ceiling, batch {batch}: {:.0} message rows/s inserted (nothing else running)",
                sqlite_ceiling(args.messages, batch)?
            );
        }
    }
    for &batch in &args.batch_sizes {
        let run = format!("{}{}", batch, uuid::Uuid::new_v4().simple());
        let s = setup(&args, &run[..12.min(run.len())]).await?;
        let cfg = PipelineConfig {
            batch_max_events: batch,
            batch_linger_ms: 5,
            notifications: args.notifications,
            ..PipelineConfig::default()
        };
        if args.kafka.is_some() {
            let names = caas_pipeline::topics_of(&cfg);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            s.bus.ensure_topics(&refs).await?;
        }
        // 1. Throughput from a full log.
        let t = Instant::now();
        fill(&s.bus, &args, 0, args.messages).await?;
        let fill_rate = args.messages as f64 / t.elapsed().as_secs_f64();
        let target = heads(&s.bus, args.partitions).await?;
        let t = Instant::now();
        let (stop, h, metrics) = start(&s, cfg.clone());
        loop {
            let p = progress(&s.store, args.partitions).await?;
            if p.iter().zip(&target).all(|(a, b)| a >= b) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let persisted = args.messages as f64 / t.elapsed().as_secs_f64();
        eprintln!(
            "batch {batch}: {:.2}s to persist; {}",
            t.elapsed().as_secs_f64(),
            stage_seconds(&metrics)
        );

        // 2. Lag under a burst, the pipeline running and caught up.
        let sampler_stop = CancellationToken::new();
        let samples = {
            let (store, parts, st) = (s.store.clone(), args.partitions, sampler_stop.clone());
            tokio::spawn(async move {
                let mut out: Vec<(Instant, Vec<i64>)> = Vec::new();
                while !st.is_cancelled() {
                    if let Ok(p) = progress(&store, parts).await {
                        out.push((Instant::now(), p));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                out
            })
        };
        let acks = fill(&s.bus, &args, args.messages, args.burst).await?;
        let target = heads(&s.bus, args.partitions).await?;
        loop {
            let p = progress(&s.store, args.partitions).await?;
            if p.iter().zip(&target).all(|(a, b)| a >= b) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let after = progress(&s.store, args.partitions).await?;
        let lag_after: i64 = heads(&s.bus, args.partitions)
            .await?
            .iter()
            .zip(&after)
            .map(|(h, p)| h - p)
            .sum();
        sampler_stop.cancel();
        let samples = samples.await?;
        let mut lags: Vec<Duration> = acks
            .iter()
            .map(|(part, off, acked)| {
                let seen = samples
                    .iter()
                    .find(|(_, p)| p[*part as usize] > *off)
                    .map(|(at, _)| *at)
                    .unwrap_or_else(Instant::now);
                seen.saturating_duration_since(*acked)
            })
            .collect();
        lags.sort();
        stop.cancel();
        h.await?;
        println!(
            "| {batch} | {} | {:.0} | {:.0} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {lag_after} events |",
            args.messages,
            fill_rate,
            persisted,
            args.burst,
            pct(&lags, 0.5).as_secs_f64() * 1e3,
            pct(&lags, 0.99).as_secs_f64() * 1e3,
            lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
