//! The custom resources of caas: `ChatPlatform` and `Tenant` (`caas.dev/v1alpha1`), their status
//! types and the CRD YAML generated from them. Only types, schema attributes, defaults and small
//! accessors live here; what the operator does with them is in `build` and `controller`.

pub mod common;
pub mod platform;
pub mod tenant;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

pub use common::{ConditionStatus, ConditionType, SecretKeyRef};
pub use platform::{ChatPlatform, ChatPlatformSpec, ChatPlatformStatus};
pub use tenant::{Tenant, TenantSpec, TenantStatus};

/// The API group of every caas resource.
pub const GROUP: &str = "caas.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Errors of rendering the CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("failed to render CRD {name} as YAML: {source}")]
    Yaml {
        name: String,
        source: serde_yaml::Error,
    },
}

/// Fields whose schema is a Kubernetes core type (Affinity, EnvVar, ...): their nested
/// descriptions repeat the Kubernetes API reference and would make the CRD too large for
/// client-side `kubectl apply` (256 KiB annotation limit), so they are dropped below the field.
const EMBEDDED_CORE_TYPES: &[&str] = &[
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "env",
    "resources",
    "metricsFrom",
];

/// Both CRDs, in a stable order (platform first), with embedded core-type descriptions trimmed.
pub fn all_crds() -> [CustomResourceDefinition; 2] {
    let mut crds = [ChatPlatform::crd(), Tenant::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                trim_embedded(schema);
            }
        }
    }
    crds
}

fn trim_embedded(schema: &mut JSONSchemaProps) {
    let JSONSchemaProps {
        properties,
        items,
        additional_properties,
        ..
    } = schema;
    if let Some(props) = properties.as_mut() {
        for (name, prop) in props.iter_mut() {
            if EMBEDDED_CORE_TYPES.contains(&name.as_str()) {
                for child in children(prop) {
                    strip_descriptions(child);
                }
            } else {
                trim_embedded(prop);
            }
        }
    }
    for child in items_and_additional(items, additional_properties) {
        trim_embedded(child);
    }
}

fn strip_descriptions(schema: &mut JSONSchemaProps) {
    schema.description = None;
    for child in children(schema) {
        strip_descriptions(child);
    }
}

/// Direct sub-schemas: properties, array items, map values.
fn children(schema: &mut JSONSchemaProps) -> Vec<&mut JSONSchemaProps> {
    let JSONSchemaProps {
        properties,
        items,
        additional_properties,
        ..
    } = schema;
    let mut out: Vec<&mut JSONSchemaProps> = Vec::new();
    if let Some(props) = properties.as_mut() {
        out.extend(props.values_mut());
    }
    out.extend(items_and_additional(items, additional_properties));
    out
}

fn items_and_additional<'a>(
    items: &'a mut Option<JSONSchemaPropsOrArray>,
    additional: &'a mut Option<JSONSchemaPropsOrBool>,
) -> Vec<&'a mut JSONSchemaProps> {
    let mut out: Vec<&mut JSONSchemaProps> = Vec::new();
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = items.as_mut() {
        out.push(items.as_mut());
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = additional.as_mut() {
        out.push(extra.as_mut());
    }
    out
}

/// Both CRDs as one multi-document YAML stream, in a stable order (platform first). This is
/// what `caas-operator crd` prints and what `crds/` holds.
pub fn crds_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let doc = serde_yaml::to_string(&crd).map_err(|source| CrdError::Yaml { name, source })?;
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(out)
}

/// One CRD as YAML by file stem (`chatplatform` or `tenant`), for writing one file per CRD.
pub fn crd_files() -> Result<Vec<(&'static str, String)>, CrdError> {
    let mut files = Vec::new();
    for (stem, crd) in ["chatplatform", "tenant"].into_iter().zip(all_crds()) {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let doc = serde_yaml::to_string(&crd).map_err(|source| CrdError::Yaml { name, source })?;
        files.push((stem, format!("---\n{doc}")));
    }
    Ok(files)
}

#[cfg(test)]
mod tests;
