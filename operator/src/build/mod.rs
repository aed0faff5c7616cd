//! Pure builders: a `ChatPlatform` (plus a few facts the reconciler looked up, in
//! [`BuildInputs`]) in, the Kubernetes objects it needs out. No API calls, no clock, no
//! randomness — the generated Secrets get their random material from the caller — so every
//! builder is tested with plain unit tests from small fixtures.
//!
//! Submodules: `config` (the workload ConfigMap, rendered with the shared `caas_config::Config`),
//! `pod` (the PSS-restricted pod template), `workloads` (Deployments, the search StatefulSet,
//! Services, PDBs, HPAs), `network` (NetworkPolicies), `ingress` (the optional Ingress),
//! `monitoring` (the optional ServiceMonitor), `secrets` (generated Secrets), `validate` (checks
//! the schema cannot express).

pub mod config;
pub mod ingress;
pub mod monitoring;
pub mod network;
pub mod pod;
pub mod secrets;
pub mod validate;
pub mod workloads;

#[cfg(test)]
mod tests;

use crate::crd::ChatPlatform;
use crate::crd::platform::{ChatPlatformSpec, ComponentSpec};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use std::collections::BTreeMap;

/// Annotation on each pod template: hash of the rendered configuration and of the Secrets the
/// pods read, so a change to either rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "caas.dev/config-hash";
/// Label value of `app.kubernetes.io/managed-by` on everything the operator creates.
pub const MANAGER: &str = "caas-operator";
/// The label the operator's own pods carry (set by its Helm chart); NetworkPolicies admit it to
/// the internal admin port.
pub const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "caas-operator");

/// The workload ports, fixed by `caas_config::ServerConfig`'s defaults.
pub const HTTP_PORT: i32 = 8080;
pub const ADMIN_PORT: i32 = 8081;
pub const METRICS_PORT: i32 = 9090;

/// Errors of building the desired objects. Each names what is wrong with the input.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the ChatPlatform has no {0} (it must come from the API server)")]
    MissingMetadata(&'static str),
    #[error("failed to render the workload configuration: {0}")]
    RenderConfig(#[from] serde_yaml::Error),
}

/// The five workloads of a platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Gateway,
    Socket,
    Pipeline,
    Media,
    Search,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Gateway,
        Component::Socket,
        Component::Pipeline,
        Component::Media,
        Component::Search,
    ];

    /// The name in object names, labels and the status (`gateway`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Socket => "socket",
            Component::Pipeline => "pipeline",
            Component::Media => "media",
            Component::Search => "search",
        }
    }

    /// The `caas` subcommand that runs this component.
    pub fn subcommand(self) -> &'static str {
        self.name()
    }

    /// Whether clients reach this component's service port (8080). The pipeline only
    /// consumes the log; its port serves probes and is not exposed.
    pub fn serves_clients(self) -> bool {
        !matches!(self, Component::Pipeline)
    }

    /// Whether the component checks user tokens (and so mounts the signing keys).
    pub fn verifies_tokens(self) -> bool {
        !matches!(self, Component::Pipeline)
    }

    /// Whether the component's Service exposes the internal admin port (the tenant admin API).
    pub fn exposes_admin(self) -> bool {
        matches!(self, Component::Gateway)
    }

    /// A StatefulSet (with an index volume per pod) rather than a Deployment.
    pub fn is_stateful(self) -> bool {
        matches!(self, Component::Search)
    }

    /// The component's settings from the spec.
    pub fn spec(self, spec: &ChatPlatformSpec) -> ComponentSpec {
        let c = &spec.components;
        match self {
            Component::Gateway => c.gateway.clone(),
            Component::Socket => c.socket.clone(),
            Component::Pipeline => c.pipeline.clone(),
            Component::Media => c.media.clone(),
            Component::Search => c.search.as_component(),
        }
    }
}

/// Facts the reconciler looked up in the cluster that shape the desired objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInputs {
    /// Namespace the operator runs in (NetworkPolicies admit it to the admin port).
    pub operator_namespace: String,
    /// A digest of the data of every Secret the pods read (MongoDB URI, Redis URL, S3 keys,
    /// signing keys, admin token); part of the config hash, so rotating a Secret rolls pods.
    pub secrets_digest: String,
}

/// Object names of one platform. All derive from the platform name so two platforms in one
/// namespace never collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub platform: String,
    pub namespace: String,
}

impl Names {
    pub fn of(platform: &ChatPlatform) -> Result<Self, BuildError> {
        Ok(Self {
            platform: platform
                .metadata
                .name
                .clone()
                .ok_or(BuildError::MissingMetadata("metadata.name"))?,
            namespace: platform
                .metadata
                .namespace
                .clone()
                .ok_or(BuildError::MissingMetadata("metadata.namespace"))?,
        })
    }

    pub fn service_account(&self) -> String {
        self.platform.clone()
    }

    pub fn config_map(&self) -> String {
        format!("{}-config", self.platform)
    }

    pub fn component(&self, c: Component) -> String {
        format!("{}-{}", self.platform, c.name())
    }

    pub fn headless_service(&self, c: Component) -> String {
        format!("{}-{}-headless", self.platform, c.name())
    }

    pub fn signing_keys_secret(&self) -> String {
        format!("{}-signing-keys", self.platform)
    }

    pub fn admin_token_secret(&self) -> String {
        format!("{}-admin-token", self.platform)
    }

    /// The generated HMAC key of signed media URLs (key [`secrets::MEDIA_SIGNING_KEY`]).
    pub fn media_signing_secret(&self) -> String {
        format!("{}-media-signing", self.platform)
    }

    pub fn default_deny_policy(&self) -> String {
        format!("{}-default-deny", self.platform)
    }
}

/// Labels that select one component's pods. Stable for the life of the platform (selectors are
/// immutable), so the version is not among them.
pub fn selector_labels(names: &Names, component: Option<Component>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "caas".to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            names.platform.clone(),
        ),
    ]);
    if let Some(c) = component {
        labels.insert("app.kubernetes.io/component".into(), c.name().into());
    }
    labels
}

/// Labels on every object and pod of a platform.
pub fn labels(
    names: &Names,
    component: Option<Component>,
    spec: &ChatPlatformSpec,
) -> BTreeMap<String, String> {
    let mut labels = selector_labels(names, component);
    labels.insert("app.kubernetes.io/part-of".into(), "caas".into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels.insert("app.kubernetes.io/version".into(), spec.version.clone());
    labels
}

/// The controller owner reference to the platform: deleting the platform deletes the object.
pub fn owner_reference(platform: &ChatPlatform) -> Result<OwnerReference, BuildError> {
    platform
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("metadata.uid"))
}

/// Metadata of a namespaced object owned by the platform.
pub fn object_meta(
    platform: &ChatPlatform,
    names: &Names,
    name: String,
    component: Option<Component>,
) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names, component, &platform.spec)),
        owner_references: Some(vec![owner_reference(platform)?]),
        ..ObjectMeta::default()
    })
}

/// Every object a platform needs, as the operator will apply it.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub service_account: Option<ServiceAccount>,
    pub config_map: Option<ConfigMap>,
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
    pub autoscalers: Vec<HorizontalPodAutoscaler>,
    pub network_policies: Vec<NetworkPolicy>,
    pub ingress: Option<Ingress>,
    pub service_monitor: Option<kube::core::DynamicObject>,
    /// The hash stamped on every pod template.
    pub config_hash: String,
}

/// Builds every object of a platform.
pub fn desired(platform: &ChatPlatform, inputs: &BuildInputs) -> Result<Desired, BuildError> {
    let names = Names::of(platform)?;
    let config_map = config::config_map(platform, &names)?;
    let config_hash = config::config_hash(&config_map, &inputs.secrets_digest);
    let mut out = Desired {
        service_account: Some(workloads::service_account(platform, &names)?),
        config_map: Some(config_map),
        config_hash: config_hash.clone(),
        ..Desired::default()
    };
    for c in Component::ALL {
        if c.is_stateful() {
            out.stateful_sets
                .push(workloads::stateful_set(platform, &names, c, &config_hash)?);
        } else {
            out.deployments
                .push(workloads::deployment(platform, &names, c, &config_hash)?);
        }
        out.services
            .extend(workloads::services(platform, &names, c)?);
        out.pod_disruption_budgets
            .push(workloads::pod_disruption_budget(platform, &names, c)?);
        if let Some(hpa) = workloads::autoscaler(platform, &names, c)? {
            out.autoscalers.push(hpa);
        }
    }
    if platform.spec.network_policy.enabled {
        out.network_policies = network::network_policies(platform, &names, inputs)?;
    }
    out.ingress = ingress::ingress(platform, &names)?;
    out.service_monitor = monitoring::service_monitor(platform, &names)?;
    Ok(out)
}
