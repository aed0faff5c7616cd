//! `caas-search-bench`: indexing throughput, query latency and index size at a given number of
//! messages, on this machine, through the real code paths: log records (the JSON envelopes the
//! gateway publishes) go through `indexer::index_batch` (decode, operations, one tantivy commit
//! with the log positions per batch), and queries through `query::search_messages` with a
//! caller's scope (tenant + the caller's conversations), highlights included.
//!
//! `cargo run --release -p caas-search --bin caas-search-bench -- [MESSAGES] [QUERIES]`
//! (defaults 1,000,000 and 2,000). The corpus is synthetic and deterministic: 10 tenants, 200
//! conversations each, a 20,000-word vocabulary drawn with a Zipf-like skew, 4 to 30 words a
//! message.

use bytes_free::payload;
use caas_bus::Delivery;
use caas_search::index::Generation;
use caas_search::indexer;
use caas_search::query::{self, MessageSearch, Scope, Sort};
use caas_store::DynStore;
use std::sync::Arc;
use std::time::Instant;

const TENANTS: usize = 10;
const CONVERSATIONS: usize = 200;
const VOCABULARY: usize = 20_000;
const BATCH: usize = 5_000;
const PARTITIONS: i32 = 8;

/// A small deterministic generator (no dependency needed for a benchmark corpus).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Zipf-like: small indexes are much more frequent.
    fn skewed(&mut self, n: usize) -> usize {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
    }
}

fn vocabulary() -> Vec<String> {
    const SYL: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "qui", "dra", "mon", "tel",
        "bar", "fen", "gor", "hul", "jin", "kor", "lum", "nix", "pra", "sol",
    ];
    (0..VOCABULARY)
        .map(|i| {
            let mut w = String::new();
            let mut x = i + 1;
            while x > 0 {
                w.push_str(SYL[x % SYL.len()]);
                x /= SYL.len();
            }
            w
        })
        .collect()
}

mod bytes_free {
    use caas_domain::event::{ConversationEvent, MessageCreated, SCHEMA_VERSION};
    use caas_domain::{MessageId, TenantId, UserId};

    /// The envelope JSON of a `message.created`, as the log carries it.
    pub fn payload(
        tenant: &TenantId,
        conversation: &str,
        sender: &UserId,
        text: String,
        ms: i64,
    ) -> Vec<u8> {
        let created_at =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let env = caas_bus::Envelope {
            v: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            tenant_id: tenant.clone(),
            key: conversation.to_string(),
            correlation_id: "bench".into(),
            occurred_at: created_at,
            event: ConversationEvent::MessageCreated(MessageCreated {
                message_id: MessageId::generate(),
                sender_id: sender.clone(),
                html: String::new(),
                text,
                mentions: vec![],
                links: vec![],
                hashtags: vec![],
                parent_id: None,
                client_msg_id: None,
                forwarded_from: None,
                attachments: Vec::new(),
                created_at,
            }),
        };
        serde_json::to_vec(&env).unwrap_or_default()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let messages: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let queries: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2_000);
    let dir = std::env::temp_dir().join(format!(
        "caas-search-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let store: DynStore = Arc::new(caas_store::sqlite::SqliteStore::open(dir.join("store.db"))?);
    let g = Arc::new(Generation::create(
        &dir.join("search"),
        tantivy::tokenizer::Language::English,
        256,
    )?);
    let words = vocabulary();
    let tenants: Vec<caas_domain::TenantId> = (0..TENANTS)
        .map(|t| caas_domain::TenantId::parse(format!("bench-{t}")))
        .collect::<Result<_, _>>()?;
    let senders: Vec<caas_domain::UserId> = (0..50)
        .map(|u| caas_domain::UserId::parse(format!("user-{u}")))
        .collect::<Result<_, _>>()?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut offsets = [0i64; PARTITIONS as usize];
    let base_ms = 1_767_225_600_000i64;

    println!("caas-search-bench: {messages} messages, {queries} queries");
    let started = Instant::now();
    let mut gen_time = 0.0;
    let mut done = 0;
    while done < messages {
        let n = BATCH.min(messages - done);
        let t0 = Instant::now();
        let mut batch = Vec::with_capacity(n);
        for i in 0..n {
            let t = rng.below(TENANTS);
            let c = format!("conv-{}", rng.below(CONVERSATIONS));
            let len = 4 + rng.below(27);
            let text = (0..len)
                .map(|_| words[rng.skewed(VOCABULARY)].as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let partition = caas_bus::partition_for(&c, PARTITIONS as u32);
            let offset = offsets[partition as usize];
            offsets[partition as usize] += 1;
            let sender = &senders[rng.below(senders.len())];
            batch.push(Delivery {
                topic: caas_bus::topics::CONVERSATION_EVENTS.into(),
                partition,
                offset,
                key: c.clone(),
                payload: payload(
                    &tenants[t],
                    &c,
                    sender,
                    text,
                    base_ms + (done + i) as i64 * 10,
                )
                .into(),
                headers: vec![],
            });
        }
        gen_time += t0.elapsed().as_secs_f64();
        indexer::index_batch(&g, &store, &batch).await?;
        done += n;
        if done % 100_000 == 0 {
            println!(
                "  indexed {done} in {:.1}s",
                started.elapsed().as_secs_f64() - gen_time
            );
        }
    }
    let index_secs = started.elapsed().as_secs_f64() - gen_time;
    let docs = g.num_docs();
    let bytes = g.size_bytes();
    println!(
        "indexing: {docs} docs in {index_secs:.1}s = {:.0} docs/s (batches of {BATCH}, one commit each; corpus generation excluded: {gen_time:.1}s)",
        docs as f64 / index_secs
    );
    println!(
        "index size: {:.1} MiB ({:.0} bytes/message)",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / docs.max(1) as f64
    );

    // Queries: a caller in one tenant, member of 20 of its 200 conversations.
    let mut kinds: Vec<(&str, Vec<f64>)> = vec![
        ("word", vec![]),
        ("two words", vec![]),
        ("phrase", vec![]),
        ("prefix", vec![]),
        ("word, time sort", vec![]),
    ];
    let mut all = Vec::with_capacity(queries);
    let mut hits_total = 0usize;
    for i in 0..queries {
        let t = rng.below(TENANTS);
        let first = rng.below(CONVERSATIONS - 20);
        let scope = Scope {
            tenant: tenants[t].to_string(),
            conversations: (first..first + 20).map(|c| format!("conv-{c}")).collect(),
        };
        let w1 = words[rng.skewed(2_000)].clone();
        let w2 = words[rng.skewed(2_000)].clone();
        let k = i % kinds.len();
        let (q, sort) = match k {
            0 => (w1, Sort::Relevance),
            1 => (format!("{w1} {w2}"), Sort::Relevance),
            2 => (format!("\"{w1} {w2}\""), Sort::Relevance),
            3 => (format!("{}*", &w1[..w1.len().min(3)]), Sort::Relevance),
            _ => (w1, Sort::Time),
        };
        let s = MessageSearch {
            q,
            sort,
            limit: 20,
            ..MessageSearch::default()
        };
        let t0 = Instant::now();
        let page = query::search_messages(&g, &scope, &s)?;
        let ms = t0.elapsed().as_secs_f64() * 1_000.0;
        hits_total += page.hits.len();
        kinds[k].1.push(ms);
        all.push(ms);
    }
    all.sort_by(f64::total_cmp);
    println!(
        "queries (20 hits, highlights, scope of 20 conversations): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, mean hits {:.1}",
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(0.0),
        hits_total as f64 / queries.max(1) as f64
    );
    for (name, mut v) in kinds {
        v.sort_by(f64::total_cmp);
        println!(
            "  {name:<16} p50 {:.2} ms  p99 {:.2} ms",
            percentile(&v, 0.50),
            percentile(&v, 0.99)
        );
    }
    drop(g);
    freshness(&dir).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Send → searchable: the real indexer (default settings) on the embedded log; one message
/// every 20 ms, each polled (every 1 ms) until a search finds it.
async fn freshness(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use caas_bus::{DynBus, Envelope};
    let dir = dir.join("freshness");
    let store: DynStore = Arc::new(caas_store::sqlite::SqliteStore::open(dir.join("store.db"))?);
    let bus: DynBus = Arc::new(caas_bus::embedded::EmbeddedLog::open(
        dir.join("log.db"),
        8,
    )?);
    let cfg = caas_config::SearchConfig {
        index_dir: dir.join("search").display().to_string(),
        ..caas_config::SearchConfig::default()
    };
    let engine = caas_search::Engine::new(
        cfg,
        store,
        bus.clone(),
        caas_search::SearchMetrics::unregistered(),
    )?;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(engine.clone().run(stop.clone()));
    while engine.current().is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let tenant = caas_domain::TenantId::parse("fresh")?;
    let sender = caas_domain::UserId::parse("u")?;
    let scope = Scope {
        tenant: "fresh".into(),
        conversations: vec!["room".into()],
    };
    let mut lat = Vec::new();
    for i in 0..100 {
        let word = format!("fresh{i}");
        let bytes = payload(
            &tenant,
            "room",
            &sender,
            format!("hello {word}"),
            1_767_225_600_000,
        );
        let env: Envelope<caas_domain::event::ConversationEvent> = serde_json::from_slice(&bytes)?;
        let t0 = Instant::now();
        bus.publish(
            caas_bus::topics::CONVERSATION_EVENTS,
            env.to_record("message.created")?,
        )
        .await?;
        loop {
            let g = engine.current().ok_or("no index")?;
            let s = MessageSearch {
                q: word.clone(),
                limit: 1,
                ..MessageSearch::default()
            };
            if query::search_messages(&g, &scope, &s)?.total == 1 {
                break;
            }
            if t0.elapsed().as_secs() > 10 {
                return Err("a message was not searchable within 10 s".into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        lat.push(t0.elapsed().as_secs_f64() * 1_000.0);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await??;
    lat.sort_by(f64::total_cmp);
    println!(
        "send -> searchable (durable publish included, commitIntervalMs 200): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    Ok(())
}
