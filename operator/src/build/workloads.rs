//! Per-component objects: the ServiceAccount the pods run as, a Deployment per stateless
//! component, the search StatefulSet with its volume claim template, Services, a
//! PodDisruptionBudget and (when autoscaling is on) a HorizontalPodAutoscaler.

use super::pod::{DATA_VOLUME, pod_template};
use super::{
    ADMIN_PORT, BuildError, Component, HTTP_PORT, METRICS_PORT, Names, object_meta, selector_labels,
};
use crate::crd::ChatPlatform;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Service, ServiceAccount, ServicePort,
    ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The ServiceAccount of the workload pods. It holds no RBAC: the workloads do not call the
/// Kubernetes API, and the pods do not even mount its token.
pub fn service_account(
    platform: &ChatPlatform,
    names: &Names,
) -> Result<ServiceAccount, BuildError> {
    Ok(ServiceAccount {
        metadata: object_meta(platform, names, names.service_account(), None)?,
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    })
}

fn selector(names: &Names, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(names, Some(component))),
        ..LabelSelector::default()
    }
}

/// Replicas to set on the workload: none when an autoscaler owns the count, so applying the
/// spec never fights the HPA.
fn replicas(platform: &ChatPlatform, component: Component) -> Option<i32> {
    let spec = component.spec(&platform.spec);
    spec.autoscaling.is_none().then_some(spec.replicas)
}

/// The Deployment of a stateless component.
pub fn deployment(
    platform: &ChatPlatform,
    names: &Names,
    component: Component,
    config_hash: &str,
) -> Result<Deployment, BuildError> {
    Ok(Deployment {
        metadata: object_meta(platform, names, names.component(component), Some(component))?,
        spec: DeploymentSpec {
            replicas: replicas(platform, component),
            selector: selector(names, component),
            template: pod_template(platform, names, component, config_hash),
            revision_history_limit: Some(5),
            // Surge first, never below the desired count: draining pods finish their work while
            // new ones take traffic.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    })
}

/// The StatefulSet of the search component: one index volume per pod.
pub fn stateful_set(
    platform: &ChatPlatform,
    names: &Names,
    component: Component,
    config_hash: &str,
) -> Result<StatefulSet, BuildError> {
    let storage = &platform.spec.components.search.storage;
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(names, Some(component))),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    Ok(StatefulSet {
        metadata: object_meta(platform, names, names.component(component), Some(component))?,
        spec: StatefulSetSpec {
            replicas: replicas(platform, component),
            selector: selector(names, component),
            service_name: Some(names.headless_service(component)),
            template: pod_template(platform, names, component, config_hash),
            // The pods are independent (each indexes the whole log): start and stop together.
            pod_management_policy: Some("Parallel".into()),
            revision_history_limit: Some(5),
            volume_claim_templates: Some(vec![claim]),
            // The index is rebuilt from the store, so deleting the platform deletes the volumes;
            // a scale-down keeps them for a scale-up.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    })
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: Some("http".into()),
        ..ServicePort::default()
    }
}

/// The Services of a component: the main one (service port for components clients reach, the
/// admin port on the gateway, metrics on all) and, for search, the StatefulSet's headless one.
pub fn services(
    platform: &ChatPlatform,
    names: &Names,
    component: Component,
) -> Result<Vec<Service>, BuildError> {
    let mut ports = Vec::new();
    if component.serves_clients() {
        ports.push(service_port("http", HTTP_PORT));
    }
    if component.exposes_admin() {
        ports.push(service_port("admin", ADMIN_PORT));
    }
    ports.push(service_port("metrics", METRICS_PORT));
    let mut out = vec![Service {
        metadata: object_meta(platform, names, names.component(component), Some(component))?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(names, Some(component))),
            ports: Some(ports),
            // Socket.IO's HTTP long-polling transport needs every request of a session on the
            // same pod (websocket-only clients do not care).
            session_affinity: (component == Component::Socket).then(|| "ClientIP".to_owned()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }];
    if component.is_stateful() {
        out.push(Service {
            metadata: object_meta(
                platform,
                names,
                names.headless_service(component),
                Some(component),
            )?,
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                selector: Some(selector_labels(names, Some(component))),
                ports: Some(vec![service_port("http", HTTP_PORT)]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        });
    }
    Ok(out)
}

/// At most one pod of a component down at a time through voluntary disruptions (drains).
pub fn pod_disruption_budget(
    platform: &ChatPlatform,
    names: &Names,
    component: Component,
) -> Result<PodDisruptionBudget, BuildError> {
    Ok(PodDisruptionBudget {
        metadata: object_meta(platform, names, names.component(component), Some(component))?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(names, component)),
            // Pods that never became ready may be evicted anyway, so a broken rollout cannot
            // block a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The CPU autoscaler of a component, when the spec asks for one.
pub fn autoscaler(
    platform: &ChatPlatform,
    names: &Names,
    component: Component,
) -> Result<Option<HorizontalPodAutoscaler>, BuildError> {
    let Some(autoscaling) = component.spec(&platform.spec).autoscaling else {
        return Ok(None);
    };
    let kind = if component.is_stateful() {
        "StatefulSet"
    } else {
        "Deployment"
    };
    Ok(Some(HorizontalPodAutoscaler {
        metadata: object_meta(platform, names, names.component(component), Some(component))?,
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: kind.into(),
                name: names.component(component),
            },
            min_replicas: Some(autoscaling.min_replicas),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(autoscaling.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        ..HorizontalPodAutoscaler::default()
    }))
}
