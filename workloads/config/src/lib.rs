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
    pub media: MediaConfig,
    pub search: SearchConfig,
    pub socket: SocketConfig,
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
    /// Consumer group of the pipeline; its webhook deliverer and retry consumers use this
    /// name with `-webhooks` and `-retry-<n>` appended.
    pub group_id: String,
    /// Largest batch written to the store at once.
    pub batch_max_events: usize,
    /// Longest a partial batch waits for more events.
    pub batch_linger_ms: u64,
    /// Delay of each retry topic, in order: a record failing with a transient error for the
    /// n-th time waits `retryDelaysMs[n-1]` (the last one for every later attempt) in the n-th
    /// retry topic (`pipeline-retry-<n>`) before it is tried again.
    pub retry_delays_ms: Vec<u64>,
    /// While the store (or the log) refuses writes the pipeline stops consuming and probes it,
    /// waiting from `breakerMinBackoffMs` doubling to `breakerMaxBackoffMs` between probes.
    pub breaker_min_backoff_ms: u64,
    pub breaker_max_backoff_ms: u64,
    /// Publish `message` and `mention` events to the notifications topic.
    pub notifications: bool,
    pub webhook: WebhookConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            group_id: "caas-pipeline".into(),
            batch_max_events: 1_000,
            batch_linger_ms: 5,
            retry_delays_ms: vec![60_000, 120_000, 240_000],
            breaker_min_backoff_ms: 100,
            breaker_max_backoff_ms: 5_000,
            notifications: true,
            webhook: WebhookConfig::default(),
        }
    }
}

/// Delivery of notification events to tenant webhooks (each tenant's URL and secret are set
/// through the admin API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// Run the webhook deliverer in `caas pipeline`.
    pub enabled: bool,
    /// Attempts of one delivery (the first included) before it becomes a dead letter; the
    /// waits between them are `pipeline.retryDelaysMs`.
    pub max_attempts: u32,
    /// Bound of one HTTP attempt.
    pub timeout_ms: u64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_attempts: 4,
            timeout_ms: 10_000,
            concurrency: 32,
        }
    }
}

/// The media workload: where files live, limits, signed URLs and upkeep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MediaConfig {
    pub backend: MediaBackend,
    /// Metadata of uploads and files when the store is embedded (SQLite file); with MongoDB the
    /// media collections live in the store's database.
    pub metadata_path: String,
    /// HMAC key of signed download URLs: a file holding it (created by `caas standalone`).
    /// `CAAS_MEDIA__SIGNING_KEY` (the key itself, at least 32 characters) wins over the file.
    pub signing_key_file: String,
    pub signing_key: String,
    /// Default and longest lifetime of a signed URL.
    pub signed_url_ttl_secs: u64,
    pub signed_url_max_ttl_secs: u64,
    /// Public base URL that signed URLs start with (e.g. `https://chat.example.com`). Empty:
    /// a path-only URL (`/v1/media/signed/...`).
    pub public_base_url: String,
    /// Smallest part of a chunked upload (except the last): S3 refuses parts under 5 MiB.
    pub min_part_bytes: u64,
    /// Largest part of a chunked upload; a part is held in memory while it is stored.
    pub max_part_bytes: u64,
    /// Most parts of a chunked upload.
    pub max_parts: u32,
    /// An upload not completed within this time is aborted and its parts removed.
    pub upload_expiry_secs: u64,
    /// Soft-deleted files are purged (object removed) after this time.
    pub purge_after_secs: u64,
    /// How often expired uploads and deleted files are cleaned up.
    pub janitor_interval_secs: u64,
    /// Types (as sniffed from the bytes) accepted when a tenant has no override. `type/*`
    /// matches a whole family.
    pub allowed_types: Vec<String>,
    /// Per-tenant overrides of `allowedTypes`, by tenant id. Sizes and storage come from the
    /// tenant's quotas.
    pub tenant_allowed_types: BTreeMap<String, Vec<String>>,
    /// Thumbnails: longest side in pixels.
    pub thumbnail_px: u32,
    /// Images larger than this (bytes) get no thumbnail.
    pub thumbnail_max_source_bytes: u64,
    /// Images whose width or height exceeds this are refused (decompression bombs).
    pub max_image_dimension: u32,
    /// Memory the image decoder may allocate for one thumbnail.
    pub thumbnail_max_alloc_bytes: u64,
    /// Time one thumbnail may take.
    pub thumbnail_timeout_ms: u64,
    /// Whole-request timeout of media routes (uploads stream for long).
    pub request_timeout_ms: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            backend: MediaBackend::default(),
            metadata_path: "./caas-data/media.db".into(),
            signing_key_file: "./caas-data/media-signing-key".into(),
            signing_key: String::new(),
            signed_url_ttl_secs: 3_600,
            signed_url_max_ttl_secs: 7 * 24 * 3_600,
            public_base_url: String::new(),
            min_part_bytes: 5 * 1024 * 1024,
            max_part_bytes: 16 * 1024 * 1024,
            max_parts: 10_000,
            upload_expiry_secs: 24 * 3_600,
            purge_after_secs: 3_600,
            janitor_interval_secs: 60,
            allowed_types: [
                "image/*",
                "video/*",
                "audio/*",
                "application/pdf",
                "text/plain",
                "application/zip",
                "application/octet-stream",
            ]
            .map(String::from)
            .to_vec(),
            tenant_allowed_types: BTreeMap::new(),
            thumbnail_px: 320,
            thumbnail_max_source_bytes: 32 * 1024 * 1024,
            max_image_dimension: 12_000,
            thumbnail_max_alloc_bytes: 256 * 1024 * 1024,
            thumbnail_timeout_ms: 10_000,
            request_timeout_ms: 600_000,
        }
    }
}

/// Where media bytes live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum MediaBackend {
    /// A local directory (one process, or a shared volume).
    #[serde(rename_all = "camelCase")]
    Local { dir: String },
    /// S3 or an S3-compatible server. Keys normally come from the environment
    /// (`CAAS_MEDIA__BACKEND__ACCESS_KEY`, `CAAS_MEDIA__BACKEND__SECRET_KEY`); empty keys use the
    /// standard AWS environment and instance credentials.
    #[serde(rename_all = "camelCase")]
    S3(S3Config),
}

impl Default for MediaBackend {
    fn default() -> Self {
        MediaBackend::Local {
            dir: "./caas-data/media".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct S3Config {
    pub bucket: String,
    /// Empty: AWS. Otherwise e.g. `http://minio:9000`.
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub path_style: bool,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
    /// Prefix of every object key, e.g. `prod/`.
    pub prefix: String,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: "caas-media".into(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            access_key: String::new(),
            secret_key: String::new(),
            path_style: true,
            allow_http: false,
            prefix: String::new(),
        }
    }
}

/// The search workload (`caas search`, and inside `caas standalone`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SearchConfig {
    /// Directory of the index (one sub-directory per index generation). In Kubernetes: the
    /// StatefulSet volume.
    pub index_dir: String,
    /// Consumer group of the indexer. `{hostname}` is replaced by the `HOSTNAME` environment
    /// variable (dropped with its `-` when unset): every replica of the StatefulSet indexes
    /// everything with a group of its own (`caas-search-caas-search-0`, ...).
    pub group_id: String,
    /// Longest an indexed event waits for its batch to be committed (searchable).
    pub commit_interval_ms: u64,
    /// Largest batch committed to the index at once.
    pub batch_max_events: usize,
    /// Memory of the index writer (tantivy's indexing arena), in megabytes.
    pub writer_memory_mb: usize,
    /// Stemming language of the message analyzer (`english`, `french`, `german`, ...). Changing
    /// it changes the index version: the next start rebuilds the index from the store.
    pub language: String,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            index_dir: "./caas-data/search".into(),
            group_id: "caas-search-{hostname}".into(),
            commit_interval_ms: 200,
            batch_max_events: 5_000,
            writer_memory_mb: 64,
            language: "english".into(),
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

/// The realtime workload (Socket.IO). See docs/realtime.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SocketConfig {
    /// Engine.IO ping interval: how often the server checks that a client is alive.
    pub ping_interval_ms: u64,
    /// How long the server waits for a pong before it drops the connection.
    pub ping_timeout_ms: u64,
    /// Recent log events kept in memory per partition: a client that reconnects with a cursor
    /// inside this window is caught up from memory, older cursors from the log.
    pub replay_window: usize,
    /// Presence: how often a connection's liveness is refreshed, and when an unrefreshed one
    /// expires (a pod that died without saying goodbye).
    pub presence_heartbeat_ms: u64,
    pub presence_ttl_ms: u64,
    /// On SIGTERM, clients are told to reconnect elsewhere spread over this time (never all at
    /// once), then disconnected. Keep it below the pod's grace period.
    pub drain_spread_ms: u64,
    /// Largest event payload a client may send.
    pub max_payload_bytes: u64,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            replay_window: 4096,
            presence_heartbeat_ms: 10_000,
            presence_ttl_ms: 30_000,
            drain_spread_ms: 10_000,
            max_payload_bytes: 64 * 1024,
        }
    }
}
