//! The workload configuration: a `caas_config::Config` — the very type the workloads parse —
//! rendered from the platform spec into a ConfigMap (`config.yaml`), and the config hash stamped
//! on the pod templates. Secrets never enter the ConfigMap: the MongoDB URI and Redis URL reach
//! the pods as `CAAS_STORE__URI` / `CAAS_REDIS__URL` from Secrets (see `pod`), the signing keys
//! and admin token as mounted files.

use super::{BuildError, Component, HTTP_PORT, Names, object_meta};
use crate::crd::ChatPlatform;
use caas_config::{
    AdminConfig, AuthConfig, BusConfig, Config, KafkaConfig, LogConfig, LogFormat, MediaBackend,
    MediaConfig, RedisConfig, S3Config, SearchConfig, ServerConfig, StoreConfig,
};
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Where the ConfigMap is mounted and the file in it; `CAAS_CONFIG` names the file.
pub const CONFIG_DIR: &str = "/etc/caas/config";
pub const CONFIG_FILE: &str = "config.yaml";
/// Where the signing-keys Secret is mounted (`auth.keysDir`).
pub const KEYS_DIR: &str = "/etc/caas/keys";
/// Where the admin token Secret is mounted; the token is the file `token` (`admin.tokenFile`).
pub const ADMIN_DIR: &str = "/etc/caas/admin";
pub const ADMIN_TOKEN_FILE: &str = "token";

/// The full path of the configuration file in the pods.
pub fn config_path() -> String {
    format!("{CONFIG_DIR}/{CONFIG_FILE}")
}

/// The configuration every workload of the platform runs with.
pub fn render(platform: &ChatPlatform, names: &Names) -> Config {
    let spec = &platform.spec;
    let socket_urls = match &spec.ingress {
        Some(ingress) if ingress.tls_secret_name.is_some() => {
            vec![format!("https://{}", ingress.host)]
        }
        Some(ingress) => vec![format!("http://{}", ingress.host)],
        None => vec![format!(
            "http://{}.{}.svc:{HTTP_PORT}",
            names.component(Component::Socket),
            names.namespace
        )],
    };
    let shutdown = &spec.shutdown;
    let to_ms = |secs: i32| u64::try_from(secs).unwrap_or(0) * 1_000;
    Config {
        server: ServerConfig {
            socket_urls,
            drain_delay_ms: to_ms(shutdown.drain_seconds),
            shutdown_deadline_ms: to_ms(shutdown.deadline_seconds),
            ..ServerConfig::default()
        },
        log: LogConfig {
            level: spec.observability.log_level.clone(),
            format: LogFormat::Json,
        },
        store: StoreConfig::Mongodb {
            // From the environment (`CAAS_STORE__URI`): it holds credentials.
            uri: String::new(),
            database: spec.mongodb.database.clone(),
        },
        bus: BusConfig::Kafka(KafkaConfig {
            brokers: spec.kafka.bootstrap_servers.clone(),
            topic_prefix: spec.kafka.topic_prefix.clone(),
            partitions: u32::try_from(spec.kafka.partitions).unwrap_or(1),
            replication_factor: i16::try_from(spec.kafka.replication_factor).unwrap_or(i16::MAX),
            create_topics: spec.kafka.create_topics,
            properties: spec.kafka.properties.clone(),
        }),
        redis: Some(RedisConfig {
            // From the environment (`CAAS_REDIS__URL`).
            url: String::new(),
            key_prefix: spec.redis.key_prefix.clone(),
        }),
        auth: AuthConfig {
            issuer: spec.auth.issuer.clone(),
            audience: spec.auth.audience.clone(),
            token_ttl_secs: u64::try_from(spec.auth.token_ttl_seconds).unwrap_or(3_600),
            keys_dir: KEYS_DIR.into(),
            active_kid: spec.auth.active_kid.clone().unwrap_or_default(),
            ..AuthConfig::default()
        },
        admin: AdminConfig {
            token_file: format!("{ADMIN_DIR}/{ADMIN_TOKEN_FILE}"),
        },
        media: MediaConfig {
            backend: MediaBackend::S3(S3Config {
                bucket: spec.object_storage.bucket.clone(),
                endpoint: spec.object_storage.endpoint.clone().unwrap_or_default(),
                region: spec.object_storage.region.clone(),
                // From the environment (`CAAS_MEDIA__BACKEND__ACCESS_KEY`/`SECRET_KEY`).
                access_key: String::new(),
                secret_key: String::new(),
                path_style: spec.object_storage.force_path_style,
                allow_http: spec
                    .object_storage
                    .endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
                prefix: String::new(),
            }),
            // From the environment (`CAAS_MEDIA__SIGNING_KEY`, a generated Secret).
            signing_key_file: String::new(),
            signing_key: String::new(),
            public_base_url: public_base_url(spec),
            ..MediaConfig::default()
        },
        search: SearchConfig {
            // The StatefulSet's volume.
            index_dir: format!("{}/search", super::pod::DATA_DIR),
            ..SearchConfig::default()
        },
        ..Config::default()
    }
}

/// Where clients reach the platform from outside: signed media URLs start with it.
fn public_base_url(spec: &crate::crd::platform::ChatPlatformSpec) -> String {
    match &spec.ingress {
        Some(i) if i.tls_secret_name.is_some() => format!("https://{}", i.host),
        Some(i) => format!("http://{}", i.host),
        None => String::new(),
    }
}

/// The ConfigMap holding `config.yaml`.
pub fn config_map(platform: &ChatPlatform, names: &Names) -> Result<ConfigMap, BuildError> {
    let yaml = serde_yaml::to_string(&render(platform, names))?;
    Ok(ConfigMap {
        metadata: object_meta(platform, names, names.config_map(), None)?,
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), yaml)])),
        ..ConfigMap::default()
    })
}

/// Hash of the ConfigMap's data and the digest of the Secrets the pods read.
pub fn config_hash(config_map: &ConfigMap, secrets_digest: &str) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hasher.update(secrets_digest.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// A digest of Secret data, for [`super::BuildInputs::secrets_digest`]. Order-independent over
/// Secrets (sorted by name) and keys (BTreeMap order).
pub fn secrets_digest<'a>(
    secrets: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, Vec<u8>>)>,
) -> String {
    let mut sorted: Vec<_> = secrets.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = Sha256::new();
    for (name, data) in sorted {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        for (key, value) in data {
            hasher.update(key.as_bytes());
            hasher.update([0]);
            hasher.update(value);
            hasher.update([0]);
        }
    }
    hex::encode(&hasher.finalize()[..16])
}
