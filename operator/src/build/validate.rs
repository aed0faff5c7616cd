//! Checks of a platform spec that the CRD schema cannot express, run (purely) before anything
//! is built. A platform that fails them is reported `Degraded` with reason `InvalidSpec` and
//! waits for a change of its spec instead of being retried.

use super::Component;
use crate::crd::ChatPlatform;

/// Environment variables the operator sets itself; a pod override must not shadow them (the
/// later entry would win and, e.g., point `CAAS_STORE__URI` somewhere else than the Secret).
pub const RESERVED_ENV: &[&str] = &[
    "CAAS_CONFIG",
    "CAAS_STORE__URI",
    "CAAS_REDIS__URL",
    "POD_NAME",
    "POD_NAMESPACE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_BUCKET",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
];

/// Every problem found, as sentences naming the field.
pub fn validate(platform: &ChatPlatform) -> Vec<String> {
    let mut problems = Vec::new();
    for component in Component::ALL {
        let spec = component.spec(&platform.spec);
        for env in &spec.pod.env {
            if RESERVED_ENV.contains(&env.name.as_str()) {
                problems.push(format!(
                    "components.{}.pod.env sets {}, which the operator sets itself",
                    component.name(),
                    env.name
                ));
            }
        }
        if spec.autoscaling.is_some()
            && let Some(resources) = &spec.resources
            && !resources
                .requests
                .as_ref()
                .is_some_and(|r| r.contains_key("cpu"))
        {
            problems.push(format!(
                "components.{}.autoscaling needs resources.requests.cpu: the autoscaler targets a share of it",
                component.name()
            ));
        }
        for key in spec.pod.labels.keys() {
            if key.starts_with("app.kubernetes.io/") {
                problems.push(format!(
                    "components.{}.pod.labels sets {key}: app.kubernetes.io/ labels are the operator's",
                    component.name()
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::EnvVar;

    fn platform() -> ChatPlatform {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "caas.dev/v1alpha1", "kind": "ChatPlatform",
            "metadata": {"name": "heron", "namespace": "cove"},
            "spec": {
                "version": "1.2.3",
                "mongodb": {"uriSecretRef": {"name": "a", "key": "b"}},
                "kafka": {"bootstrapServers": "k:1"},
                "redis": {"urlSecretRef": {"name": "c", "key": "d"}},
                "objectStorage": {"bucket": "bkt", "credentialsSecretRef": {"name": "e"}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn autoscaling_needs_a_cpu_request() {
        let mut p = platform();
        p.spec.components.media.autoscaling =
            Some(serde_json::from_value(serde_json::json!({"maxReplicas": 4})).unwrap());
        assert_eq!(
            validate(&p),
            Vec::<String>::new(),
            "the default resources request CPU"
        );
        p.spec.components.media.resources =
            Some(serde_json::from_value(serde_json::json!({"limits": {"memory": "1Gi"}})).unwrap());
        let problems = validate(&p);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("components.media.autoscaling needs resources.requests.cpu")
        );
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(validate(&platform()), Vec::<String>::new());
    }

    #[test]
    fn shadowing_the_operators_env_or_labels_is_refused() {
        let mut p = platform();
        p.spec.components.socket.pod.env.push(EnvVar {
            name: "CAAS_STORE__URI".into(),
            value: Some("mongodb://elsewhere".into()),
            ..EnvVar::default()
        });
        // Config overrides through the environment stay allowed.
        p.spec.components.socket.pod.env.push(EnvVar {
            name: "CAAS_LIMITS__DEDUPE_WINDOW_SECS".into(),
            value: Some("60".into()),
            ..EnvVar::default()
        });
        p.spec
            .components
            .search
            .pod
            .labels
            .insert("app.kubernetes.io/instance".into(), "x".into());
        let problems = validate(&p);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("components.socket.pod.env sets CAAS_STORE__URI"));
        assert!(
            problems[1].contains("components.search.pod.labels sets app.kubernetes.io/instance")
        );
    }
}
