//! Tests of the generated CRDs: names and columns, the CEL rules (evaluated client-side with
//! kube's CEL validator), defaults, and the example manifests checked against the schema.

use super::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn platform_schema() -> Value {
    schema_of(&all_crds()[0])
}

fn tenant_schema() -> Value {
    schema_of(&all_crds()[1])
}

/// A small but complete platform manifest (names differ from the product's own).
fn minimal_platform_json() -> Value {
    json!({
        "apiVersion": "caas.dev/v1alpha1",
        "kind": "ChatPlatform",
        "metadata": {"name": "orchid", "namespace": "bay"},
        "spec": {
            "version": "9.8.7",
            "mongodb": {"uriSecretRef": {"name": "m-secret", "key": "m-key"}},
            "kafka": {"bootstrapServers": "k0:9092"},
            "redis": {"urlSecretRef": {"name": "r-secret", "key": "r-key"}},
            "objectStorage": {"bucket": "b-bucket", "credentialsSecretRef": {"name": "s-secret"}}
        }
    })
}

fn minimal_tenant_json() -> Value {
    json!({
        "apiVersion": "caas.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "wren", "namespace": "bay"},
        "spec": {"platformRef": {"name": "orchid"}, "displayName": "Wren"}
    })
}

fn cel_errors(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(schema, object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.to_string().lines().map(str::to_owned).collect(),
    }
}

#[test]
fn names_short_names_and_scope() {
    let [platform, tenant] = all_crds();
    assert_eq!(
        platform.metadata.name.as_deref(),
        Some("chatplatforms.caas.dev")
    );
    assert_eq!(tenant.metadata.name.as_deref(), Some("tenants.caas.dev"));
    for crd in [&platform, &tenant] {
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, VERSION);
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }
    assert!(
        platform
            .spec
            .names
            .short_names
            .as_ref()
            .unwrap()
            .contains(&"cp".to_owned())
    );
    assert!(
        tenant
            .spec
            .names
            .short_names
            .as_ref()
            .unwrap()
            .contains(&"ten".to_owned())
    );
}

fn column_names(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn printer_columns_answer_is_it_working() {
    let [platform, tenant] = all_crds();
    assert_eq!(
        column_names(&platform),
        ["Ready", "Version", "Tenants", "Age"]
    );
    assert_eq!(
        column_names(&tenant),
        ["Platform", "Ready", "Suspended", "Age"]
    );
}

#[test]
fn yaml_is_two_documents_and_fits_client_side_apply() {
    let yaml = crds_yaml().unwrap();
    assert_eq!(
        yaml.matches("\n---\n").count() + usize::from(yaml.starts_with("---\n")),
        2
    );
    for (_, doc) in crd_files().unwrap() {
        let back: CustomResourceDefinition = serde_yaml::from_str(&doc).unwrap();
        let json = serde_json::to_string(&back).unwrap();
        // kubectl apply (client side) keeps the object in an annotation limited to 256 KiB.
        assert!(
            json.len() < 200 * 1024,
            "{} is {} bytes",
            back.metadata.name.unwrap(),
            json.len()
        );
    }
}

#[test]
fn minimal_platform_passes_cel_rules() {
    assert_eq!(
        cel_errors(&platform_schema(), &minimal_platform_json(), None),
        Vec::<String>::new()
    );
}

#[test]
fn autoscaling_min_above_max_is_refused() {
    let mut p = minimal_platform_json();
    p["spec"]["components"] =
        json!({"socket": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}});
    let errors = cel_errors(&platform_schema(), &p, None);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("minReplicas must not exceed maxReplicas")),
        "{errors:?}"
    );

    p["spec"]["components"] =
        json!({"socket": {"autoscaling": {"minReplicas": 3, "maxReplicas": 3}}});
    assert_eq!(
        cel_errors(&platform_schema(), &p, None),
        Vec::<String>::new()
    );
}

#[test]
fn autoscaling_min_defaults_before_the_rule_runs() {
    // minReplicas defaults to 2, so a max of 1 alone is refused.
    let mut p = minimal_platform_json();
    p["spec"]["components"] = json!({"search": {"autoscaling": {"maxReplicas": 1}}});
    let errors = cel_errors(&platform_schema(), &p, None);
    assert!(
        errors.iter().any(|e| e.contains("minReplicas")),
        "{errors:?}"
    );
}

#[test]
fn kafka_passwords_are_refused_in_properties() {
    let mut p = minimal_platform_json();
    p["spec"]["kafka"]["properties"] = json!({"sasl.password": "hunter2"});
    let errors = cel_errors(&platform_schema(), &p, None);
    assert!(errors.iter().any(|e| e.contains("ConfigMap")), "{errors:?}");
    p["spec"]["kafka"]["properties"] = json!({"security.protocol": "SSL"});
    assert_eq!(
        cel_errors(&platform_schema(), &p, None),
        Vec::<String>::new()
    );
}

#[test]
fn tenant_upload_limit_must_fit_storage() {
    let mut t = minimal_tenant_json();
    t["spec"]["quotas"] = json!({"maxUploadBytes": 2000, "storageBytes": 1000});
    let errors = cel_errors(&tenant_schema(), &t, None);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("maxUploadBytes must not exceed storageBytes")),
        "{errors:?}"
    );
    assert_eq!(
        cel_errors(&tenant_schema(), &minimal_tenant_json(), None),
        Vec::<String>::new()
    );
}

#[test]
fn tenant_platform_ref_is_immutable() {
    let old = minimal_tenant_json();
    let mut new = old.clone();
    new["spec"]["platformRef"]["name"] = json!("other");
    let errors = cel_errors(&tenant_schema(), &new, Some(&old));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("platformRef is immutable")),
        "{errors:?}"
    );
    let mut renamed = old.clone();
    renamed["spec"]["displayName"] = json!("Wren II");
    assert_eq!(
        cel_errors(&tenant_schema(), &renamed, Some(&old)),
        Vec::<String>::new()
    );
}

#[test]
fn serde_defaults_match_schema_defaults() {
    // What the API server fills in and what the operator assumes when a field is absent agree.
    let p: ChatPlatform = serde_json::from_value(minimal_platform_json()).unwrap();
    assert_eq!(p.spec.components.gateway.replicas, 2);
    assert_eq!(p.spec.components.search.replicas, 1);
    assert_eq!(p.spec.kafka.partitions, 12);
    assert_eq!(p.spec.auth.token_ttl_seconds, 3600);
    assert!(p.spec.network_policy.enabled);
    let schema = platform_schema();
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(
        spec["kafka"]["properties"]["partitions"]["default"],
        json!(12)
    );
    assert_eq!(
        spec["components"]["properties"]["search"]["properties"]["replicas"]["default"],
        json!(1)
    );
    assert_eq!(
        spec["components"]["properties"]["gateway"]["properties"]["replicas"]["default"],
        json!(2)
    );
    assert_eq!(
        spec["auth"]["properties"]["tokenTtlSeconds"]["default"],
        json!(3600)
    );

    let t: Tenant = serde_json::from_value(minimal_tenant_json()).unwrap();
    assert_eq!(t.spec.deletion_policy, tenant::DeletionPolicy::Retain);
    assert_eq!(t.spec.quotas.connections, 10_000);
}

/// A small structural validator: unknown fields (which the API server would silently prune),
/// types, required fields, enums, numeric ranges and lengths. Not CEL (see `cel_errors`).
fn schema_errors(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != json!(true) {
            out.push(format!("{path}: null"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        if !(value.is_string() || value.is_i64()) {
            out.push(format!("{path}: not int-or-string"));
        }
        return;
    }
    if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) && schema.get("type").is_none()
    {
        return;
    }
    let ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !ok {
        out.push(format!("{path}: expected {}", schema["type"]));
        return;
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        out.push(format!("{path}: {value} not in {values:?}"));
    }
    if let Some(n) = value.as_f64()
        && (schema["minimum"].as_f64().is_some_and(|m| n < m)
            || schema["maximum"].as_f64().is_some_and(|m| n > m))
    {
        out.push(format!("{path}: {n} out of range"));
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|m| len < m)
            || schema["maxLength"].as_u64().is_some_and(|m| len > m)
        {
            out.push(format!("{path}: length {len}"));
        }
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            schema_errors(&schema["items"], item, &format!("{path}[{i}]"), out);
        }
    }
    if let Some(fields) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            if !fields.contains_key(required.as_str().unwrap_or_default()) {
                out.push(format!("{path}: missing {required}"));
            }
        }
        for (key, v) in fields {
            let child = format!("{path}.{key}");
            if let Some(prop) = schema["properties"].get(key) {
                schema_errors(prop, v, &child, out);
            } else if schema["additionalProperties"].is_object() {
                schema_errors(&schema["additionalProperties"], v, &child, out);
            } else if schema["x-kubernetes-preserve-unknown-fields"] != json!(true)
                && !(path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str()))
            {
                out.push(format!("{child}: unknown field (would be pruned)"));
            }
        }
    }
}

fn example(name: &str) -> Value {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn examples_match_the_schema_and_the_cel_rules() {
    for (file, schema) in [
        ("chatplatform.yaml", platform_schema()),
        ("chatplatform-full.yaml", platform_schema()),
        ("tenant.yaml", tenant_schema()),
    ] {
        let value = example(file);
        let mut errors = Vec::new();
        schema_errors(&schema, &value, "", &mut errors);
        assert_eq!(errors, Vec::<String>::new(), "{file}");
        assert_eq!(
            cel_errors(&schema, &value, None),
            Vec::<String>::new(),
            "{file}"
        );
    }
    let _: ChatPlatform = serde_json::from_value(example("chatplatform.yaml")).unwrap();
    let full: ChatPlatform = serde_json::from_value(example("chatplatform-full.yaml")).unwrap();
    assert_eq!(
        full.spec
            .components
            .gateway
            .autoscaling
            .unwrap()
            .target_cpu_utilization_percentage,
        65
    );
    let _: Tenant = serde_json::from_value(example("tenant.yaml")).unwrap();
}

#[test]
fn the_structural_validator_catches_what_it_claims() {
    let mut p = minimal_platform_json();
    p["spec"]["kafka"]["partitons"] = json!(3);
    p["spec"]["kafka"]["partitions"] = json!(0);
    p["spec"]["image"] = json!({"pullPolicy": "Sometimes"});
    let mut errors = Vec::new();
    schema_errors(&platform_schema(), &p, "", &mut errors);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("partitons: unknown field")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("partitions: 0 out of range")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("Sometimes")), "{errors:?}");
}

#[test]
fn committed_crds_are_current() {
    // The same check as scripts/checks/operator.sh, so `cargo test` alone catches drift.
    for (stem, yaml) in crd_files().unwrap() {
        let path = format!("{}/../crds/{stem}.yaml", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            committed == yaml,
            "{path} differs from `caas-operator crd --out-dir crds`; regenerate it"
        );
    }
}

#[test]
fn active_kid_needs_a_given_signing_keys_secret() {
    let mut p = minimal_platform_json();
    p["spec"]["auth"] = json!({"activeKid": "k9"});
    let errors = cel_errors(&platform_schema(), &p, None);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("activeKid needs signingKeysSecret")),
        "{errors:?}"
    );
    p["spec"]["auth"] = json!({"activeKid": "k9", "signingKeysSecret": "keys"});
    assert_eq!(
        cel_errors(&platform_schema(), &p, None),
        Vec::<String>::new()
    );
}
