//! Builds the components a workload needs from its configuration: the store, the log, the
//! shared-state backends (Redis or memory), the token service and the health checks.

use anyhow::Context as _;
use caas_bus::DynBus;
use caas_config::{BusConfig, Config, StoreConfig};
use caas_kit::auth::{Authenticator, KeySet, TokenService};
use caas_kit::dedupe::{Dedupe, MemoryDedupe, RedisDedupe};
use caas_kit::ratelimit::{MemoryLimiter, RateLimiter, RedisLimiter};
use caas_store::DynStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub async fn store(cfg: &StoreConfig) -> anyhow::Result<DynStore> {
    Ok(match cfg {
        StoreConfig::Embedded { path } => Arc::new(
            caas_store::sqlite::SqliteStore::open(path)
                .with_context(|| format!("opening the store at {path}"))?,
        ),
        StoreConfig::Mongodb { uri, database } => {
            anyhow::ensure!(!uri.is_empty(), "store.uri is empty (set CAAS_STORE__URI)");
            Arc::new(
                caas_store::mongo::MongoStore::connect(uri, database)
                    .await
                    .context("connecting to MongoDB")?,
            )
        }
    })
}

pub async fn bus(cfg: &BusConfig) -> anyhow::Result<DynBus> {
    Ok(match cfg {
        BusConfig::Embedded {
            path, partitions, ..
        } => Arc::new(
            caas_bus::embedded::EmbeddedLog::open(path, *partitions)
                .with_context(|| format!("opening the log at {path}"))?,
        ),
        BusConfig::Kafka(k) => {
            let bus = caas_bus::kafka::KafkaBus::connect(k)
                .await
                .context("connecting to Kafka")?;
            // Creates the topics when `createTopics` (else checks that they exist): a workload
            // must not report ready while every publish would fail.
            bus.ensure_topics(&[caas_bus::topics::CONVERSATION_EVENTS])
                .await
                .context("making sure the Kafka topics exist")?;
            Arc::new(bus)
        }
    })
}

/// Rate limiter and de-duplication: Redis when configured, memory otherwise.
pub async fn shared_state(
    cfg: &Config,
) -> anyhow::Result<(
    Arc<dyn RateLimiter>,
    Arc<dyn Dedupe>,
    Option<redis::aio::ConnectionManager>,
)> {
    match &cfg.redis {
        Some(r) => {
            anyhow::ensure!(
                !r.url.is_empty(),
                "redis.url is empty (set CAAS_REDIS__URL)"
            );
            let client = redis::Client::open(r.url.as_str()).context("parsing the Redis URL")?;
            let conn = redis::aio::ConnectionManager::new(client)
                .await
                .context("connecting to Redis")?;
            Ok((
                Arc::new(RedisLimiter::new(conn.clone(), &r.key_prefix)),
                Arc::new(RedisDedupe::new(conn.clone(), &r.key_prefix)),
                Some(conn),
            ))
        }
        None => Ok((
            Arc::new(MemoryLimiter::new()),
            Arc::new(MemoryDedupe::new()),
            None,
        )),
    }
}

pub fn authenticator(cfg: &Config, store: DynStore) -> anyhow::Result<Arc<Authenticator>> {
    let keys = KeySet::load_dir(Path::new(&cfg.auth.keys_dir), &cfg.auth.active_kid)
        .with_context(|| format!("loading signing keys from {}", cfg.auth.keys_dir))?;
    anyhow::ensure!(
        keys.signing_kid().is_some(),
        "no signing key (<kid>.pem) in {}",
        cfg.auth.keys_dir
    );
    let tokens = Arc::new(TokenService::new(keys, &cfg.auth));
    Ok(Arc::new(Authenticator::new(
        tokens,
        store,
        Duration::from_millis(cfg.auth.revocation_cache_ms),
    )))
}

pub fn admin_token(cfg: &Config) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(&cfg.admin.token_file)
        .with_context(|| format!("reading the admin token from {}", cfg.admin.token_file))?;
    let t = t.trim().to_string();
    anyhow::ensure!(
        t.len() >= 16,
        "the admin token in {} is shorter than 16 characters",
        cfg.admin.token_file
    );
    Ok(t)
}

/// Health checks every workload has: the store and the log answer a ping.
pub fn store_and_log_checks(
    health: caas_kit::health::HealthBuilder,
    store: &DynStore,
    bus: &DynBus,
) -> caas_kit::health::HealthBuilder {
    let (store, bus) = (store.clone(), bus.clone());
    health
        .check("store", move || {
            let store = store.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        })
        .check("log", move || {
            let bus = bus.clone();
            async move { bus.ping().await.map_err(|e| e.to_string()) }
        })
}
