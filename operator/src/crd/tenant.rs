//! `Tenant`: one app onboarded onto a `ChatPlatform` in the same namespace — its quotas, feature
//! flags, suspension and what happens to its data on deletion — and its status. The quota
//! defaults mirror `caas_domain::Quotas`, so a Tenant without quotas behaves like a tenant created
//! through the admin API without them.

use super::common::conditions_schema;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation that asks the operator to issue new app credentials. Any new value triggers one
/// rotation (e.g. a timestamp); the previous credential keeps working for
/// [`ROTATION_GRACE_SECONDS`], then is revoked.
pub const ROTATE_CREDENTIALS_ANNOTATION: &str = "caas.dev/rotate-credentials";
/// How long the previous credential keeps working after a rotation.
pub const ROTATION_GRACE_SECONDS: i64 = 3_600;

/// A tenant (an app embedding chat) on a platform.
// kube(printcolumn(..)) repeats `type_ = ..` per column, which clippy reads as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "caas.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    shortname = "ten",
    category = "caas",
    namespaced,
    status = "TenantStatus",
    doc = "A tenant of a caas ChatPlatform: an app that embeds chat, with its quotas and features.",
    printcolumn(
        name = "Platform",
        type_ = "string",
        json_path = ".spec.platformRef.name",
        description = "The ChatPlatform serving this tenant"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the tenant exists on the platform as specified"
    ),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspended"),
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
pub struct TenantSpec {
    /// The ChatPlatform (same namespace). Cannot change after creation.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "platformRef is immutable"}
    ]))]
    pub platform_ref: PlatformRef,
    /// Human-readable name.
    #[schemars(length(min = 1, max = 200))]
    pub display_name: String,
    #[serde(default)]
    pub quotas: TenantQuotas,
    /// Enabled feature flags, e.g. `uploads`, `search`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"), length(max = 64), inner(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$")))]
    pub features: Vec<String>,
    /// A suspended tenant's tokens and connections are refused; its data is kept.
    #[serde(default)]
    pub suspended: bool,
    /// What deleting this Tenant does to the tenant's data on the platform.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Name of the Secret the operator writes the app credentials into; absent:
    /// `<tenant>-credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_name: Option<String>,
}

/// A ChatPlatform in the same namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Per-tenant limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.maxUploadBytes <= self.storageBytes", "message": "maxUploadBytes must not exceed storageBytes"}
]))]
pub struct TenantQuotas {
    /// Concurrent realtime connections across all pods.
    #[schemars(range(min = 0, max = 10000000))]
    pub connections: i64,
    /// Messages per minute for the whole tenant.
    #[schemars(range(min = 0, max = 100000000))]
    pub messages_per_minute: i64,
    /// Searches per minute for the whole tenant.
    #[schemars(range(min = 0, max = 100000000))]
    pub searches_per_minute: i64,
    /// Largest single upload.
    #[schemars(range(min = 0))]
    pub max_upload_bytes: i64,
    /// Total stored media.
    #[schemars(range(min = 0))]
    pub storage_bytes: i64,
}

impl Default for TenantQuotas {
    fn default() -> Self {
        Self {
            connections: 10_000,
            messages_per_minute: 60_000,
            searches_per_minute: 6_000,
            max_upload_bytes: 25 * 1024 * 1024,
            storage_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// What happens to a tenant's data when its Tenant is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum DeletionPolicy {
    /// Disable the tenant (tokens refused) and keep its data.
    #[default]
    Retain,
    /// Delete the tenant and all of its data.
    Delete,
}

/// What the operator last saw of the tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct TenantStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The tenant id on the platform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The app id in the credentials Secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The Secret holding `appId` and `appSecret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// The last value of the rotation annotation acted upon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_for: Option<String>,
    /// After a rotation: the app id that still works until `previousRevokeAfter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_app_id: Option<String>,
    /// When the previous app id is revoked (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_revoke_after: Option<String>,
}
