//! The pod template of a workload: the `caas` image with the component's subcommand, the
//! configuration file and Secrets wired in, probes on `/health` and `/ready`, a `preStop` sleep
//! and a grace period that covers the drain, and the restricted Pod Security Standard (non-root,
//! read-only root filesystem, no capabilities, no privilege escalation, seccomp RuntimeDefault).
//! Pod overrides from the spec may add scheduling and metadata, never weaken security.

use super::config::{ADMIN_DIR, ADMIN_TOKEN_FILE, CONFIG_DIR, KEYS_DIR, config_path};
use super::{
    ADMIN_PORT, CONFIG_HASH_ANNOTATION, Component, HTTP_PORT, METRICS_PORT, Names, labels,
    selector_labels,
};
use crate::crd::ChatPlatform;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, LocalObjectReference,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, SleepAction, TopologySpreadConstraint,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The non-root user and group of the workload image (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;
/// Writable scratch space (the root filesystem is read-only).
pub const TMP_DIR: &str = "/tmp";
/// The search index volume, and the working directory of search pods (the index lives at the
/// workloads' default relative data path under it).
pub const DATA_DIR: &str = "/var/lib/caas";
/// Name of the search StatefulSet's volume claim template.
pub const DATA_VOLUME: &str = "data";
/// The container name in every workload pod.
pub const CONTAINER: &str = "caas";

/// The Secret and key holding the admin token.
pub fn admin_token_source(platform: &ChatPlatform, names: &Names) -> (String, String) {
    match &platform.spec.admin.token_secret_ref {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (names.admin_token_secret(), ADMIN_TOKEN_FILE.to_owned()),
    }
}

/// The Secret holding the signing keys.
pub fn signing_keys_source(platform: &ChatPlatform, names: &Names) -> String {
    platform
        .spec
        .auth
        .signing_keys_secret
        .clone()
        .unwrap_or_else(|| names.signing_keys_secret())
}

fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Environment of a component's container: the config file, Secrets as `CAAS_*` overrides,
/// S3 settings for media, then the spec's extra variables.
fn env(platform: &ChatPlatform, names: &Names, component: Component) -> Vec<EnvVar> {
    let spec = &platform.spec;
    let mut env = vec![
        env_value("CAAS_CONFIG", config_path()),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_secret(
            "CAAS_STORE__URI",
            &spec.mongodb.uri_secret_ref.name,
            &spec.mongodb.uri_secret_ref.key,
        ),
        env_secret(
            "CAAS_REDIS__URL",
            &spec.redis.url_secret_ref.name,
            &spec.redis.url_secret_ref.key,
        ),
    ];
    if component == Component::Media {
        // The bucket and endpoint are in the ConfigMap (`media.backend`); keys from Secrets.
        let creds = &spec.object_storage.credentials_secret_ref;
        env.push(env_secret(
            "CAAS_MEDIA__BACKEND__ACCESS_KEY",
            &creds.name,
            &creds.access_key_id_key,
        ));
        env.push(env_secret(
            "CAAS_MEDIA__BACKEND__SECRET_KEY",
            &creds.name,
            &creds.secret_access_key_key,
        ));
        env.push(env_secret(
            "CAAS_MEDIA__SIGNING_KEY",
            &names.media_signing_secret(),
            crate::build::secrets::MEDIA_SIGNING_KEY,
        ));
    }
    env.extend(component.spec(spec).pod.env);
    env
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Requests when the spec gives none: enough to schedule, a memory limit to contain leaks, no
/// CPU limit (throttling hurts latency more than it protects neighbours).
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".into())),
            ("memory".to_owned(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The restricted container security context.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..SecurityContext::default()
    }
}

/// The restricted pod security context.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn volume_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Volumes and mounts: config, scratch, admin token, signing keys (components that check tokens)
/// and, for search, the index volume from the claim template.
fn volumes(
    platform: &ChatPlatform,
    names: &Names,
    component: Component,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let secret_mode = Some(0o440);
    let (admin_secret, admin_key) = admin_token_source(platform, names);
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("256Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "admin-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(admin_secret),
                items: Some(vec![KeyToPath {
                    key: admin_key,
                    path: ADMIN_TOKEN_FILE.into(),
                    ..KeyToPath::default()
                }]),
                default_mode: secret_mode,
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        volume_mount("config", CONFIG_DIR),
        VolumeMount {
            read_only: Some(false),
            ..volume_mount("tmp", TMP_DIR)
        },
        volume_mount("admin-token", ADMIN_DIR),
    ];
    if component.verifies_tokens() {
        volumes.push(Volume {
            name: "signing-keys".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(signing_keys_source(platform, names)),
                default_mode: secret_mode,
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(volume_mount("signing-keys", KEYS_DIR));
    }
    if component.is_stateful() {
        mounts.push(VolumeMount {
            read_only: Some(false),
            ..volume_mount(DATA_VOLUME, DATA_DIR)
        });
    }
    (volumes, mounts)
}

/// Unless the spec says otherwise: spread a component's pods over nodes and zones, preferring
/// (not requiring) it, so a small cluster still schedules them all.
pub fn default_spread(names: &Names, component: Component) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(names, Some(component))),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// The pod template of a component.
pub fn pod_template(
    platform: &ChatPlatform,
    names: &Names,
    component: Component,
    config_hash: &str,
) -> PodTemplateSpec {
    let spec = &platform.spec;
    let component_spec = component.spec(spec);
    let overrides = &component_spec.pod;

    // Overrides first, so the operator's labels (which the selector relies on) win.
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels(names, Some(component), spec));
    let mut annotations = overrides.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());
    annotations.insert(
        "kubectl.kubernetes.io/default-container".into(),
        CONTAINER.into(),
    );

    // Every workload listens on all three (`caas_config::ServerConfig`); the internal port of
    // the non-gateway components serves the detailed dependency report.
    let ports = vec![
        port("http", HTTP_PORT),
        port("admin", ADMIN_PORT),
        port("metrics", METRICS_PORT),
    ];
    let tag = spec
        .image
        .tag
        .clone()
        .unwrap_or_else(|| spec.version.clone());
    let (volumes, volume_mounts) = volumes(platform, names, component);
    let lifecycle = (spec.shutdown.pre_stop_seconds > 0).then(|| Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: i64::from(spec.shutdown.pre_stop_seconds),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    });

    let container = Container {
        name: CONTAINER.into(),
        image: Some(format!("{}:{}", spec.image.repository, tag)),
        image_pull_policy: Some(spec.image.pull_policy.as_str().into()),
        args: Some(vec![component.subcommand().into()]),
        env: Some(env(platform, names, component)),
        ports: Some(ports),
        working_dir: Some(
            if component.is_stateful() {
                DATA_DIR
            } else {
                TMP_DIR
            }
            .into(),
        ),
        resources: Some(
            component_spec
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        startup_probe: Some(http_probe("/health", 2, 60)),
        liveness_probe: Some(http_probe("/health", 10, 3)),
        readiness_probe: Some(http_probe("/ready", 5, 2)),
        lifecycle,
        security_context: Some(container_security_context()),
        volume_mounts: Some(volume_mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };

    let none_if_empty = |m: &BTreeMap<String, String>| (!m.is_empty()).then(|| m.clone());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(names.service_account()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(pod_security_context()),
            termination_grace_period_seconds: Some(spec.shutdown.grace_period_seconds()),
            image_pull_secrets: (!spec.image.pull_secrets.is_empty()).then(|| {
                spec.image
                    .pull_secrets
                    .iter()
                    .map(|name| LocalObjectReference { name: name.clone() })
                    .collect()
            }),
            node_selector: none_if_empty(&overrides.node_selector),
            tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
            affinity: overrides.affinity.clone(),
            topology_spread_constraints: Some(
                if overrides.topology_spread_constraints.is_empty() {
                    default_spread(names, component)
                } else {
                    overrides.topology_spread_constraints.clone()
                },
            ),
            priority_class_name: overrides.priority_class_name.clone(),
            containers: vec![container],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
    }
}
