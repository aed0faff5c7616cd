//! NetworkPolicies of a platform: one that denies all ingress to every pod of the platform, and
//! one per component that opens exactly what must be reachable — the service port of the
//! components clients use, the internal admin port to the operator's pods only, and the metrics
//! port to the configured scrapers. Egress is left open: the backing services (MongoDB, Kafka,
//! Redis, S3) live at addresses the spec gives as host names, which NetworkPolicies cannot name.

use super::{
    ADMIN_PORT, BuildError, BuildInputs, Component, HTTP_PORT, METRICS_PORT, Names,
    OPERATOR_POD_LABEL, object_meta, selector_labels,
};
use crate::crd::ChatPlatform;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

fn tcp(port: i32) -> Option<Vec<NetworkPolicyPort>> {
    Some(vec![NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }])
}

fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

/// The operator's pods, in the operator's namespace.
pub fn operator_peer(inputs: &BuildInputs) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(match_labels(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            inputs.operator_namespace.clone(),
        )]))),
        pod_selector: Some(match_labels(BTreeMap::from([(
            OPERATOR_POD_LABEL.0.to_owned(),
            OPERATOR_POD_LABEL.1.to_owned(),
        )]))),
        ip_block: None,
    }
}

/// The ingress rules of one component.
pub fn ingress_rules(
    platform: &ChatPlatform,
    component: Component,
    inputs: &BuildInputs,
) -> Vec<NetworkPolicyIngressRule> {
    let mut rules = Vec::new();
    if component.serves_clients() {
        // From anywhere: clients come through the ingress controller or other namespaces.
        rules.push(NetworkPolicyIngressRule {
            from: None,
            ports: tcp(HTTP_PORT),
        });
    }
    rules.push(NetworkPolicyIngressRule {
        from: Some(vec![operator_peer(inputs)]),
        ports: tcp(ADMIN_PORT),
    });
    let metrics_from = &platform.spec.network_policy.metrics_from;
    rules.push(NetworkPolicyIngressRule {
        from: (!metrics_from.is_empty()).then(|| metrics_from.clone()),
        ports: tcp(METRICS_PORT),
    });
    rules
}

/// All NetworkPolicies of a platform.
pub fn network_policies(
    platform: &ChatPlatform,
    names: &Names,
    inputs: &BuildInputs,
) -> Result<Vec<NetworkPolicy>, BuildError> {
    let mut out = vec![NetworkPolicy {
        metadata: object_meta(platform, names, names.default_deny_policy(), None)?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(selector_labels(names, None))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: None,
            egress: None,
        }),
    }];
    for component in Component::ALL {
        out.push(NetworkPolicy {
            metadata: object_meta(platform, names, names.component(component), Some(component))?,
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(match_labels(selector_labels(names, Some(component)))),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(ingress_rules(platform, component, inputs)),
                egress: None,
            }),
        });
    }
    Ok(out)
}
