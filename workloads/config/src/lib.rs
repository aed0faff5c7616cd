//! The workload configuration shared by the operator (which renders it into a ConfigMap) and the
//! workloads (which parse it). Only types and defaults live here: no I/O, no loading logic (that is
//! `caas_kit::config`), and no secrets — secrets are referenced by file path or come from the
//! environment (`CAAS_STORE__URI`, ...), so the rendered file is safe to keep in a ConfigMap.
//!
//! Every field has a default, so an empty file is a valid configuration for `caas standalone`.
//! Unknown fields are refused so that a typo in a ConfigMap is an error, not a silent default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole configuration of one workload process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub bus: BusConfig,
    /// Shared state across pods (rate limits, de-duplication, presence). Absent: in memory.
    pub redis: Option<RedisConfig>,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub limits: LimitsConfig,
    pub pipeline: PipelineConfig,
}

/// Listeners, HTTP protections and shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Public service port: the REST API, `/health`, `/ready`.
    pub listen: String,
    /// Internal port: tenant admin API and the detailed dependency report. Reachable by the
    /// operator only (NetworkPolicy).
    pub internal_listen: String,
    /// Prometheus `/metrics`.
    pub metrics_listen: String,
    /// URLs handed to clients in the token response for the realtime connection.
    pub socket_urls: Vec<String>,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Whole-request timeout.
    pub request_timeout_ms: u64,
    /// Requests processed at once; beyond it requests are shed with 503 `overloaded`.
    pub max_concurrent_requests: usize,
    /// After SIGTERM: time `/ready` reports 503 before the listener closes, so load balancers
    /// stop sending new requests.
    pub drain_delay_ms: u64,
    /// After SIGTERM: the deadline for in-flight work to finish before the process exits.
    pub shutdown_deadline_ms: u64,
    /// How long `/ready` caches a dependency check.
    pub ready_cache_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            internal_listen: "0.0.0.0:8081".into(),
            metrics_listen: "0.0.0.0:9090".into(),
            socket_urls: Vec::new(),
            body_limit_bytes: 256 * 1024,
            request_timeout_ms: 15_000,
            max_concurrent_requests: 2_048,
            drain_delay_ms: 0,
            shutdown_deadline_ms: 25_000,
            ready_cache_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    /// An `EnvFilter` directive, e.g. `info,caas_gateway=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
        }
    }
}

/// Where records live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum StoreConfig {
    /// SQLite file on local disk (one process).
    #[serde(rename_all = "camelCase")]
    Embedded { path: String },
    /// MongoDB 6+. `uri` normally comes from the environment (`CAAS_STORE__URI`) because it
    /// holds credentials.
    #[serde(rename_all = "camelCase")]
    Mongodb {
        #[serde(default)]
        uri: String,
        #[serde(default = "default_database")]
        database: String,
    },
}

fn default_database() -> String {
    "caas".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded {
            path: "./caas-data/store.db".into(),
        }
    }
}

/// The event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum BusConfig {
    /// A durable log in a local SQLite file (one process).
    #[serde(rename_all = "camelCase")]
    Embedded {
        path: String,
        #[serde(default = "default_partitions")]
        partitions: u32,
        /// Records every consumer group has committed are dropped once they are this old.
        #[serde(default = "default_retention_secs")]
        retention_secs: u64,
    },
    #[serde(rename_all = "camelCase")]
    Kafka(KafkaConfig),
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig::Embedded {
            path: "./caas-data/log.db".into(),
            partitions: default_partitions(),
            retention_secs: default_retention_secs(),
        }
    }
}

fn default_partitions() -> u32 {
    8
}

fn default_retention_secs() -> u64 {
    24 * 3_600
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaConfig {
    /// Comma separated `host:port` list.
    pub brokers: String,
    /// Prefix of every topic name, e.g. `prod.` gives `prod.conversation-events`.
    pub topic_prefix: String,
    /// Partitions of topics the workloads create. Fixed for the life of a topic: the order of a
    /// conversation is the order of its partition.
    pub partitions: u32,
    pub replication_factor: i16,
    /// Create missing topics at start (needs the right ACLs).
    pub create_topics: bool,
    /// Extra librdkafka properties (security.protocol, sasl.*, ...).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            topic_prefix: String::new(),
            partitions: 12,
            replication_factor: 3,
            create_topics: true,
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisConfig {
    /// `redis://host:port/db`; normally from the environment (`CAAS_REDIS__URL`).
    pub url: String,
    /// Prefix of every key this process writes.
    pub key_prefix: String,
}

/// Platform user tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// `iss` of issued tokens and the only accepted issuer.
    pub issuer: String,
    /// `aud` of issued tokens and the only accepted audience.
    pub audience: String,
    pub token_ttl_secs: u64,
    /// Allowed clock skew when checking `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Directory of Ed25519 keys: `<kid>.pem` (PKCS#8 private key, signs and verifies) or
    /// `<kid>.pub.pem` (SPKI public key, verifies only). Several keys are active for rotation.
    pub keys_dir: String,
    /// The kid that signs new tokens. Empty: the lexically greatest private key.
    pub active_kid: String,
    /// How long tenant and user revocation state is cached per process. Changes made through
    /// this process take effect at once; changes made through another pod within this time.
    pub revocation_cache_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "caas".into(),
            audience: "caas-api".into(),
            token_ttl_secs: 3_600,
            leeway_secs: 30,
            keys_dir: "./caas-data/keys".into(),
            active_kid: String::new(),
            revocation_cache_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    /// File holding the admin bearer token of the internal API.
    pub token_file: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token_file: "./caas-data/admin-token".into(),
        }
    }
}

/// Default per-user limits; per-tenant limits come from each tenant's quotas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    pub messages_per_minute_per_user: u32,
    pub searches_per_minute_per_user: u32,
    /// Token exchanges per minute per app id.
    pub token_exchanges_per_minute_per_app: u32,
    /// How long a client message id is remembered for de-duplication of retried sends.
    pub dedupe_window_secs: u64,
    /// How long a list waits for the log to be persisted (read-your-writes) before it answers
    /// with what is stored and `x-caas-consistency: stale`.
    pub read_your_writes_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            messages_per_minute_per_user: 60,
            searches_per_minute_per_user: 60,
            token_exchanges_per_minute_per_app: 6_000,
            dedupe_window_secs: 24 * 3_600,
            read_your_writes_timeout_ms: 3_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelineConfig {
    /// Consumer group of the persistence consumer.
    pub group_id: String,
    /// Largest batch written to the store at once.
    pub batch_max_events: usize,
    /// Longest a partial batch waits for more events.
    pub batch_linger_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            group_id: "caas-pipeline".into(),
            batch_max_events: 1_000,
            batch_linger_ms: 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_the_default() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn round_trips() {
        let c = Config {
            store: StoreConfig::Mongodb {
                uri: String::new(),
                database: "x".into(),
            },
            bus: BusConfig::Kafka(KafkaConfig::default()),
            redis: Some(RedisConfig {
                url: "redis://r:6379".into(),
                key_prefix: "p:".into(),
            }),
            ..Config::default()
        };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&s).unwrap(), c);
        assert!(s.contains("\"kind\":\"mongodb\""), "{s}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<Config>(r#"{"server":{"lisen":"x"}}"#).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }
}
