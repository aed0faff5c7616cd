//! `ChatPlatform`: one running caas installation — its image, the five workload components, the
//! backing services it points at (MongoDB, Kafka, Redis, S3), auth, ingress and observability —
//! and its status. Validation lives in the schema (ranges, enums, patterns, CEL rules where a rule
//! spans fields) so the API server refuses a bad manifest before the operator sees it.
//! Defaults are in the schema too, so `kubectl get -o yaml` shows what is in effect.

use super::common::{SecretKeyRef, conditions_schema};
use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Annotation that stops the operator from changing anything of this platform (status is
/// still written). Value `"true"`.
pub const PAUSED_ANNOTATION: &str = "caas.dev/paused";

/// A caas installation: the workloads and how they reach their backing services.
// kube(printcolumn(..)) repeats `type_ = ..` per column, which clippy reads as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "caas.dev",
    version = "v1alpha1",
    kind = "ChatPlatform",
    plural = "chatplatforms",
    shortname = "cp",
    shortname = "chatplatform",
    category = "caas",
    namespaced,
    status = "ChatPlatformStatus",
    doc = "A caas chat platform: the gateway, socket, pipeline, media and search workloads and the backing services they use.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every component is serving"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.version",
        description = "Version running on every component"
    ),
    printcolumn(
        name = "Tenants",
        type_ = "integer",
        json_path = ".status.tenants",
        description = "Tenants on this platform"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ChatPlatformSpec {
    /// caas version to run, e.g. `0.1.0`. The image tag unless `image.tag` is set.
    #[schemars(regex(pattern = r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$"))]
    pub version: String,
    /// The `caas` workload image (one image for every component; the operator sets the
    /// subcommand).
    #[serde(default)]
    pub image: ImageSpec,
    /// Per-component settings.
    #[serde(default)]
    pub components: ComponentsSpec,
    /// The document store.
    pub mongodb: MongoDbSpec,
    /// The event log.
    pub kafka: KafkaSpec,
    /// Shared state across pods: rate limits, presence, de-duplication, the Socket.IO adapter.
    pub redis: RedisSpec,
    /// S3-compatible storage for media.
    pub object_storage: ObjectStorageSpec,
    /// Platform user tokens.
    #[serde(default)]
    pub auth: AuthSpec,
    /// The internal admin API of the gateway (tenant management by the operator).
    #[serde(default)]
    pub admin: AdminSpec,
    /// Public HTTP(S) entry. Absent: no Ingress; reach the Services some other way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// Logs, metrics and scraping.
    #[serde(default)]
    pub observability: ObservabilitySpec,
    /// NetworkPolicies around the workloads.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Draining on shutdown (rolling updates, scale-down, node drains).
    #[serde(default)]
    pub shutdown: ShutdownSpec,
}

/// Container image of the workloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct ImageSpec {
    /// Repository without tag.
    #[schemars(length(min = 1))]
    pub repository: String,
    /// Tag; empty means `spec.version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub pull_policy: PullPolicy,
    /// Names of image pull Secrets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self {
            repository: "ghcr.io/caas-dev/caas".into(),
            tag: None,
            pull_policy: PullPolicy::IfNotPresent,
            pull_secrets: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Always => "Always",
            PullPolicy::Never => "Never",
        }
    }
}

/// The five workloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ComponentsSpec {
    /// REST API, token exchange and the internal tenant admin API.
    pub gateway: ComponentSpec,
    /// Socket.IO realtime connections.
    pub socket: ComponentSpec,
    /// Consumes the event log and persists it.
    pub pipeline: ComponentSpec,
    /// Uploads and downloads.
    pub media: ComponentSpec,
    /// Full-text search; a StatefulSet, each pod with its own index volume.
    pub search: SearchComponentSpec,
}

/// Settings of one stateless component (a Deployment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Pods when autoscaling is off.
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Container resources. Absent: requests of 100m CPU and 128Mi memory, a 512Mi memory limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// A HorizontalPodAutoscaler on CPU; when set, `replicas` is ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Scheduling and metadata overrides of the pods.
    #[serde(skip_serializing_if = "PodOverrides::is_empty")]
    pub pod: PodOverrides,
}

impl Default for ComponentSpec {
    fn default() -> Self {
        Self {
            replicas: 2,
            resources: None,
            autoscaling: None,
            pod: PodOverrides::default(),
        }
    }
}

/// Settings of the search component (a StatefulSet with one index volume per pod).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct SearchComponentSpec {
    /// Pods when autoscaling is off. Each pod indexes the whole log into its own volume.
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    #[serde(skip_serializing_if = "PodOverrides::is_empty")]
    pub pod: PodOverrides,
    /// The index volume of each pod.
    pub storage: SearchStorageSpec,
}

impl Default for SearchComponentSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            resources: None,
            autoscaling: None,
            pod: PodOverrides::default(),
            storage: SearchStorageSpec::default(),
        }
    }
}

impl SearchComponentSpec {
    /// The settings a Deployment and a StatefulSet have in common.
    pub fn as_component(&self) -> ComponentSpec {
        ComponentSpec {
            replicas: self.replicas,
            resources: self.resources.clone(),
            autoscaling: self.autoscaling.clone(),
            pod: self.pod.clone(),
        }
    }
}

/// A PersistentVolumeClaim template. Kubernetes does not let a StatefulSet's claim templates
/// change: to resize, expand the existing claims (if the storage class allows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct SearchStorageSpec {
    /// Size of each pod's index volume.
    pub size: Quantity,
    /// Storage class; absent: the cluster default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for SearchStorageSpec {
    fn default() -> Self {
        Self {
            size: Quantity("10Gi".into()),
            storage_class_name: None,
        }
    }
}

/// CPU-based horizontal autoscaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}
]))]
pub struct AutoscalingSpec {
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of requests) the autoscaler aims for.
    #[serde(rename = "targetCPUUtilizationPercentage")]
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_min_replicas() -> i32 {
    2
}

fn default_cpu_target() -> i32 {
    70
}

/// What may be changed on a component's pods. Security settings are not among them: every pod
/// runs under the restricted Pod Security Standard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels. The operator's own labels win over these.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra environment variables (after the operator's own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

impl PodOverrides {
    pub fn is_empty(&self) -> bool {
        self == &PodOverrides::default()
    }
}

/// MongoDB 6+.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoDbSpec {
    /// The connection string (`mongodb://...` with credentials). Given to the pods as
    /// `CAAS_STORE__URI`, never written into the ConfigMap.
    pub uri_secret_ref: SecretKeyRef,
    /// Database name.
    #[serde(default = "default_database")]
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
}

fn default_database() -> String {
    "caas".into()
}

/// Kafka (or a Kafka-protocol broker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Prefix of every topic, e.g. `prod.` gives `prod.conversation-events`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]*$"), length(max = 100))]
    pub topic_prefix: String,
    /// Partitions of the topics the workloads create. Fixed for the life of a topic: the order
    /// of a conversation is the order of its partition.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,
    /// Create missing topics at start (needs the ACLs for it).
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Extra librdkafka properties (`security.protocol`, ...). Rendered into the ConfigMap, so
    /// passwords are refused here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 100,
        "x-kubernetes-validations" = [
            {"rule": "self.all(k, !k.endsWith('password'))", "message": "passwords must not be put in kafka.properties: they would land in a ConfigMap"}
        ]
    ))]
    pub properties: BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    12
}

fn default_replication() -> i32 {
    3
}

fn default_true() -> bool {
    true
}

/// Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// `redis://[user:password@]host:port/db`. Given to the pods as `CAAS_REDIS__URL`.
    pub url_secret_ref: SecretKeyRef,
    /// Prefix of every key the platform writes, so several platforms can share one Redis.
    #[serde(default = "default_key_prefix")]
    #[schemars(length(max = 64))]
    pub key_prefix: String,
}

fn default_key_prefix() -> String {
    "caas:".into()
}

/// S3-compatible object storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStorageSpec {
    /// Endpoint URL; absent: AWS S3 of `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint` (MinIO and most
    /// self-hosted servers need this).
    #[serde(default = "default_true")]
    pub force_path_style: bool,
    /// The access key pair.
    pub credentials_secret_ref: S3CredentialsRef,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// A Secret holding an S3 access key pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_access_key_key")]
    pub access_key_id_key: String,
    #[serde(default = "default_secret_key_key")]
    pub secret_access_key_key: String,
}

fn default_access_key_key() -> String {
    "accessKeyId".into()
}

fn default_secret_key_key() -> String {
    "secretAccessKey".into()
}

/// Platform user tokens (EdDSA JWTs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.activeKid) || has(self.signingKeysSecret)", "message": "activeKid needs signingKeysSecret: the generated key's kid is not known in advance"}
]))]
pub struct AuthSpec {
    /// A Secret whose keys are `<kid>.pem` (PKCS#8 Ed25519 private keys) and optionally
    /// `<kid>.pub.pem`. Absent: the operator generates `<platform>-signing-keys` once and keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_keys_secret: Option<String>,
    /// The kid that signs new tokens; absent: the lexically greatest private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// Lifetime of issued user tokens.
    #[schemars(range(min = 60, max = 604800))]
    pub token_ttl_seconds: i64,
    /// `iss` of issued tokens.
    #[schemars(length(min = 1))]
    pub issuer: String,
    /// `aud` of issued tokens.
    #[schemars(length(min = 1))]
    pub audience: String,
}

impl Default for AuthSpec {
    fn default() -> Self {
        Self {
            signing_keys_secret: None,
            active_kid: None,
            token_ttl_seconds: 3_600,
            issuer: "caas".into(),
            audience: "caas-api".into(),
        }
    }
}

/// The internal admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct AdminSpec {
    /// The admin bearer token. Absent: the operator generates `<platform>-admin-token` (key
    /// `token`) once and keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// An Ingress in front of the gateway, socket and media Services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Public host name.
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub host: String,
    /// IngressClass; absent: the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// A `kubernetes.io/tls` Secret for `host`; absent: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Extra Ingress annotations (controller settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Logs, metrics and scraping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct ObservabilitySpec {
    /// An `EnvFilter` directive for every workload, e.g. `info,caas_gateway=debug`.
    #[schemars(length(min = 1))]
    pub log_level: String,
    /// A Prometheus Operator ServiceMonitor (created only when its CRD exists).
    pub service_monitor: ServiceMonitorSpec,
}

impl Default for ObservabilitySpec {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            service_monitor: ServiceMonitorSpec::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub enabled: bool,
    /// Scrape interval.
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
    /// Labels the Prometheus instance selects ServiceMonitors by.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Default for ServiceMonitorSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: "30s".into(),
            labels: BTreeMap::new(),
        }
    }
}

/// NetworkPolicies: every workload pod denies ingress except the ports it serves; the internal
/// admin port admits the operator only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    pub enabled: bool,
    /// Who may scrape the metrics port (9090). Empty: any pod in any namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics_from: Vec::new(),
        }
    }
}

/// The shutdown sequence of a pod: `preStop` sleep (endpoints are removed meanwhile), then
/// SIGTERM: `/ready` answers 503 for `drainSeconds`, in-flight work gets `deadlineSeconds`.
/// `terminationGracePeriodSeconds` is the sum plus 5 seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct ShutdownSpec {
    #[schemars(range(min = 0, max = 120))]
    pub pre_stop_seconds: i32,
    #[schemars(range(min = 0, max = 120))]
    pub drain_seconds: i32,
    #[schemars(range(min = 1, max = 3600))]
    pub deadline_seconds: i32,
}

impl Default for ShutdownSpec {
    fn default() -> Self {
        Self {
            pre_stop_seconds: 5,
            drain_seconds: 2,
            deadline_seconds: 25,
        }
    }
}

impl ShutdownSpec {
    /// The pod's `terminationGracePeriodSeconds`.
    pub fn grace_period_seconds(&self) -> i64 {
        i64::from(self.pre_stop_seconds)
            + i64::from(self.drain_seconds)
            + i64::from(self.deadline_seconds)
            + 5
    }
}

/// What the operator last saw of the platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ChatPlatformStatus {
    /// The `metadata.generation` this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The version every component runs; absent while a rollout is in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Per component (`gateway`, `socket`, ...).
    pub components: BTreeMap<String, ComponentStatus>,
    /// Tenants whose `platformRef` names this platform.
    pub tenants: i32,
    /// Hash of the rendered configuration and the Secrets it uses, as stamped on the pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// Replica counts of one component, from its Deployment or StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ComponentStatus {
    pub desired_replicas: i32,
    pub ready_replicas: i32,
    pub updated_replicas: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}
