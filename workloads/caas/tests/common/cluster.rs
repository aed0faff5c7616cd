//! The distributed deployment shape for tests: `caas` workload processes (gateway, pipeline,
//! socket) sharing MongoDB, Kafka and Redis from `CAAS_TEST_*` (set by `scripts/test.sh`), each
//! run with its own database, topic prefix, consumer group and Redis key prefix.

use super::{Proc, free_port, start_workload, unique};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use std::path::Path;

pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{name} is not set. This test needs real MongoDB, Kafka and Redis servers: run it \
             through scripts/test.sh, which starts them and sets CAAS_TEST_MONGODB_URI, \
             CAAS_TEST_KAFKA_BROKERS and CAAS_TEST_REDIS_URL."
        ),
    }
}

/// Writes a fresh Ed25519 signing key `<dir>/keys/<kid>.pem` and an admin token file.
pub fn write_secrets(dir: &Path) -> String {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("PKCS#8 PEM");
    std::fs::write(keys.join(format!("{}.pem", unique("k-"))), pem.as_bytes()).expect("key");
    let token = format!("adm_{}", uuid::Uuid::new_v4().simple());
    std::fs::write(dir.join("admin-token"), &token).expect("admin token");
    token
}

pub struct Ports {
    pub api: u16,
    pub internal: u16,
    pub metrics: u16,
}

pub fn ports() -> Ports {
    Ports {
        api: free_port(),
        internal: free_port(),
        metrics: free_port(),
    }
}

/// The YAML configuration of one process; `extra` is appended (more sections).
pub fn config(dir: &Path, run: &str, brokers: &str, p: &Ports, extra: &str) -> String {
    format!(
        r#"server:
  listen: "127.0.0.1:{api}"
  internalListen: "127.0.0.1:{internal}"
  metricsListen: "127.0.0.1:{metrics}"
log:
  level: info
store:
  kind: mongodb
  database: "caas_{run}"
bus:
  kind: kafka
  brokers: "{brokers}"
  topicPrefix: "{run}."
  partitions: 3
  replicationFactor: 1
  createTopics: true
redis:
  keyPrefix: "{run}:"
auth:
  keysDir: "{keys}"
admin:
  tokenFile: "{token}"
pipeline:
  groupId: "caas-pipeline-{run}"
{extra}"#,
        api = p.api,
        internal = p.internal,
        metrics = p.metrics,
        keys = dir.join("keys").display(),
        token = dir.join("admin-token").display(),
    )
}

/// Starts `caas <subcommand>` named `name` with a fresh config and waits for `/ready`.
pub async fn start(
    name: &str,
    subcommand: &str,
    dir: &Path,
    run: &str,
    brokers: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> Proc {
    let p = ports();
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, config(dir, run, brokers, &p, extra)).expect("config file");
    start_workload(name, dir, subcommand, &file, p.api, p.internal, env).await
}
