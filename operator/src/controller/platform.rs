//! The ChatPlatform reconcile pipeline: (paused? stop) -> read the Secrets the pods will use
//! (a missing one ends the pass with Degraded and its name) and create the generated ones once
//! -> build every object (pure, `crate::build`) -> server-side apply each, in a fixed order ->
//! delete what the spec no longer asks for -> count tenants -> write the status computed from
//! what the API server returned.

use super::status::{self, Observed, reason};
use super::{Context, Error, apply, changed_since, prune};
use crate::build::MANAGER;
use crate::build::monitoring::{SERVICE_MONITOR_CRD, service_monitor_resource};
use crate::build::secrets::{
    admin_token_secret, generate_signing_key, generate_token, media_signing_secret,
    signing_keys_secret,
};
use crate::build::{self, BuildInputs, Component, Names, config::secrets_digest};
use crate::crd::platform::{ChatPlatformStatus, PAUSED_ANNOTATION};
use crate::crd::{ChatPlatform, Tenant};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Requeue after a pass that left everything ready (drift is also corrected on watch events).
pub const REQUEUE_READY: Duration = Duration::from_secs(300);
/// Requeue while pods are coming up, or a Secret is missing.
pub const REQUEUE_WAITING: Duration = Duration::from_secs(15);

/// A Secret the pods read, and the keys it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRequirement {
    pub name: String,
    pub keys: Vec<String>,
    /// At least one `<kid>.pem` key (a signing-keys Secret named in the spec).
    pub needs_pem: bool,
}

/// The Secrets the spec names, merged by name, in a stable order.
pub fn referenced_secrets(platform: &ChatPlatform) -> Vec<SecretRequirement> {
    let spec = &platform.spec;
    let mut out: Vec<SecretRequirement> = Vec::new();
    let mut need = |name: &str, key: Option<&str>, needs_pem: bool| {
        let entry = match out.iter_mut().position(|r| r.name == name) {
            Some(i) => &mut out[i],
            None => {
                out.push(SecretRequirement {
                    name: name.to_owned(),
                    keys: Vec::new(),
                    needs_pem: false,
                });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        if let Some(key) = key
            && !entry.keys.iter().any(|k| k == key)
        {
            entry.keys.push(key.to_owned());
        }
        entry.needs_pem |= needs_pem;
    };
    need(
        &spec.mongodb.uri_secret_ref.name,
        Some(&spec.mongodb.uri_secret_ref.key),
        false,
    );
    need(
        &spec.redis.url_secret_ref.name,
        Some(&spec.redis.url_secret_ref.key),
        false,
    );
    let s3 = &spec.object_storage.credentials_secret_ref;
    need(&s3.name, Some(&s3.access_key_id_key), false);
    need(&s3.name, Some(&s3.secret_access_key_key), false);
    if let Some(name) = &spec.auth.signing_keys_secret {
        need(name, None, true);
    }
    if let Some(r) = &spec.admin.token_secret_ref {
        need(&r.name, Some(&r.key), false);
    }
    out
}

/// The Secret's data if it satisfies the requirement, else the condition reason and a message
/// naming the Secret (and key).
pub fn check_secret(
    req: &SecretRequirement,
    secret: Option<&Secret>,
) -> Result<BTreeMap<String, Vec<u8>>, (&'static str, String)> {
    let Some(secret) = secret else {
        return Err((
            reason::SECRET_NOT_FOUND,
            format!("Secret {} not found", req.name),
        ));
    };
    let data = secret_data(secret);
    for key in &req.keys {
        if !data.contains_key(key) {
            return Err((
                reason::SECRET_KEY_MISSING,
                format!("Secret {} has no key {key}", req.name),
            ));
        }
    }
    if req.needs_pem
        && !data
            .keys()
            .any(|k| k.ends_with(".pem") && !k.ends_with(".pub.pem"))
    {
        return Err((
            reason::SECRET_KEY_MISSING,
            format!("Secret {} has no <kid>.pem private signing key", req.name),
        ));
    }
    Ok(data)
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

fn is_paused(platform: &ChatPlatform) -> bool {
    platform
        .annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v == "true")
}

async fn write_status(
    api: &Api<ChatPlatform>,
    name: &str,
    status: &ChatPlatformStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube("update status of", "ChatPlatform", name))?;
    Ok(())
}

/// Publishes an event; a failure is logged, never fails the reconcile.
async fn publish(
    ctx: &Context,
    platform: &ChatPlatform,
    type_: EventType,
    reason_: &str,
    action: &str,
    note: String,
    secondary: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason_.into(),
        note: Some(note),
        action: action.into(),
        secondary,
    };
    if let Err(error) = ctx
        .recorder
        .publish(&event, &platform.object_ref(&()))
        .await
    {
        tracing::warn!(error = %error, platform = %platform.name_any(), "Failed to publish an event.");
    }
}

/// A reference to an object in the platform's namespace, for an event's `related` field.
fn related(api_version: &str, kind: &str, name: &str, platform: &ChatPlatform) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        name: Some(name.into()),
        namespace: platform.namespace(),
        ..ObjectReference::default()
    }
}

/// Gets a generated Secret, creating it first when it does not exist. Never rewrites one.
async fn ensure_generated(
    ctx: &Context,
    platform: &ChatPlatform,
    secrets: &Api<Secret>,
    make: impl FnOnce() -> Result<Secret, Error>,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    if let Some(existing) = secrets
        .get_opt(name)
        .await
        .map_err(Error::kube("get", "Secret", name))?
    {
        return Ok(secret_data(&existing));
    }
    let created = match secrets.create(&PostParams::default(), &make()?).await {
        Ok(created) => created,
        // Created meanwhile by another pass: use that one.
        Err(kube::Error::Api(status)) if status.code == 409 => secrets
            .get(name)
            .await
            .map_err(Error::kube("get", "Secret", name))?,
        Err(e) => return Err(Error::kube("create", "Secret", name)(e)),
    };
    publish(
        ctx,
        platform,
        EventType::Normal,
        "SecretGenerated",
        "Create",
        format!("Generated Secret {name}"),
        Some(related("v1", "Secret", name, platform)),
    )
    .await;
    Ok(secret_data(&created))
}

/// Reconciles one ChatPlatform.
pub async fn reconcile(platform: Arc<ChatPlatform>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start("chatplatform");
    let ns = platform
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = platform.name_any();
    let platforms: Api<ChatPlatform> = Api::namespaced(ctx.client.clone(), &ns);

    if is_paused(&platform) {
        write_status(
            &platforms,
            &name,
            &status::paused_status(&platform, Timestamp::now()),
        )
        .await?;
        return Ok(Action::requeue(REQUEUE_READY));
    }

    // Validate (pure): an invalid spec waits for a change instead of being retried.
    let problems = crate::build::validate::validate(&platform);
    if !problems.is_empty() {
        let message = problems.join("; ");
        publish(
            &ctx,
            &platform,
            EventType::Warning,
            reason::INVALID_SPEC,
            "Reconcile",
            message.clone(),
            None,
        )
        .await;
        let status =
            status::blocked_status(&platform, reason::INVALID_SPEC, &message, Timestamp::now());
        write_status(&platforms, &name, &status).await?;
        return Ok(Action::await_change());
    }

    // Secrets: the referenced ones must exist; the generated ones are created once.
    let names = Names::of(&platform)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut secret_data_by_name: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
    for req in referenced_secrets(&platform) {
        let secret = secrets
            .get_opt(&req.name)
            .await
            .map_err(Error::kube("get", "Secret", &req.name))?;
        match check_secret(&req, secret.as_ref()) {
            Ok(data) => secret_data_by_name.push((req.name, data)),
            Err((reason_, message)) => {
                tracing::info!(platform = %name, namespace = %ns, reason = reason_, "{message}.");
                publish(
                    &ctx,
                    &platform,
                    EventType::Warning,
                    reason_,
                    "Reconcile",
                    message.clone(),
                    None,
                )
                .await;
                let status = status::blocked_status(&platform, reason_, &message, Timestamp::now());
                write_status(&platforms, &name, &status).await?;
                return Ok(Action::requeue(REQUEUE_WAITING));
            }
        }
    }
    if platform.spec.auth.signing_keys_secret.is_none() {
        let secret_name = names.signing_keys_secret();
        let data = ensure_generated(
            &ctx,
            &platform,
            &secrets,
            || {
                let kid = format!("k{}", Timestamp::now().as_second());
                Ok(signing_keys_secret(
                    &platform,
                    &names,
                    &kid,
                    &generate_signing_key()?,
                )?)
            },
            &secret_name,
        )
        .await?;
        secret_data_by_name.push((secret_name, data));
    }
    if platform.spec.admin.token_secret_ref.is_none() {
        let secret_name = names.admin_token_secret();
        let data = ensure_generated(
            &ctx,
            &platform,
            &secrets,
            || Ok(admin_token_secret(&platform, &names, &generate_token()?)?),
            &secret_name,
        )
        .await?;
        secret_data_by_name.push((secret_name, data));
    }
    {
        let secret_name = names.media_signing_secret();
        let data = ensure_generated(
            &ctx,
            &platform,
            &secrets,
            || Ok(media_signing_secret(&platform, &names, &generate_token()?)?),
            &secret_name,
        )
        .await?;
        secret_data_by_name.push((secret_name, data));
    }

    // Build (pure) and apply, in a fixed order: identity and config before the pods that use them.
    let inputs = BuildInputs {
        operator_namespace: ctx.operator_namespace.clone(),
        secrets_digest: secrets_digest(secret_data_by_name.iter().map(|(n, d)| (n.as_str(), d))),
    };
    let desired = build::desired(&platform, &inputs)?;
    let client = &ctx.client;
    // Objects this pass changed (created, updated, or drift put back), for one event.
    let pass_started = Timestamp::now();
    let mut changed: Vec<String> = Vec::new();
    let mut note = |kind: &str, applied: &ObjectMeta, obj_changed: bool| {
        if obj_changed {
            changed.push(format!("{kind} {}", applied.name.as_deref().unwrap_or("?")));
        }
    };
    macro_rules! apply_noting {
        ($kind:literal, $obj:expr) => {{
            let applied = apply(client, &ns, $obj).await?;
            note(
                $kind,
                &applied.metadata,
                changed_since(&applied, pass_started),
            );
            applied
        }};
    }
    if let Some(sa) = &desired.service_account {
        apply_noting!("ServiceAccount", sa);
    }
    if let Some(cm) = &desired.config_map {
        apply_noting!("ConfigMap", cm);
    }
    let mut observed: BTreeMap<Component, Observed> = BTreeMap::new();
    for d in &desired.deployments {
        let applied = apply_noting!("Deployment", d);
        if let Some(c) = component_of(&applied.metadata) {
            observed.insert(c, Observed::from_deployment(&applied));
        }
    }
    for s in &desired.stateful_sets {
        let applied = apply_noting!("StatefulSet", s);
        if let Some(c) = component_of(&applied.metadata) {
            observed.insert(c, Observed::from_stateful_set(&applied));
        }
    }
    for s in &desired.services {
        apply_noting!("Service", s);
    }
    for p in &desired.pod_disruption_budgets {
        apply_noting!("PodDisruptionBudget", p);
    }
    for h in &desired.autoscalers {
        apply_noting!("HorizontalPodAutoscaler", h);
    }
    for n in &desired.network_policies {
        apply_noting!("NetworkPolicy", n);
    }
    if let Some(ingress) = &desired.ingress {
        apply_noting!("Ingress", ingress);
    }
    if !changed.is_empty() {
        publish(
            &ctx,
            &platform,
            EventType::Normal,
            "Applied",
            "Reconcile",
            format!("Created or updated {}", changed.join(", ")),
            None,
        )
        .await;
    }

    // The ServiceMonitor only where the Prometheus Operator's CRD exists.
    let monitoring = service_monitor_crd_exists(client).await?;
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &service_monitor_resource());
    if let Some(monitor) = &desired.service_monitor {
        if monitoring {
            monitors
                .patch(
                    &name,
                    &PatchParams::apply(super::FIELD_MANAGER).force(),
                    &Patch::Apply(monitor),
                )
                .await
                .map_err(Error::kube("apply", "ServiceMonitor", &name))?;
        } else {
            let note = format!(
                "observability.serviceMonitor is enabled but the {SERVICE_MONITOR_CRD} CRD is not installed"
            );
            publish(
                &ctx,
                &platform,
                EventType::Warning,
                "ServiceMonitorUnavailable",
                "Reconcile",
                note,
                None,
            )
            .await;
        }
    }

    // Remove what the spec no longer asks for.
    let selector =
        format!("app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGER}");
    let uid = platform
        .metadata
        .uid
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let names_of = |metas: Vec<&ObjectMeta>| {
        metas
            .into_iter()
            .filter_map(|m| m.name.clone())
            .collect::<Vec<_>>()
    };
    let mut pruned = Vec::new();
    let keep = names_of(desired.autoscalers.iter().map(|x| &x.metadata).collect());
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    for n in prune(&hpas, "HorizontalPodAutoscaler", &selector, &uid, &keep).await? {
        pruned.push(("autoscaling/v2", "HorizontalPodAutoscaler", n));
    }
    let keep = names_of(
        desired
            .network_policies
            .iter()
            .map(|x| &x.metadata)
            .collect(),
    );
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    for n in prune(&policies, "NetworkPolicy", &selector, &uid, &keep).await? {
        pruned.push(("networking.k8s.io/v1", "NetworkPolicy", n));
    }
    let keep = names_of(desired.ingress.iter().map(|x| &x.metadata).collect());
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    for n in prune(&ingresses, "Ingress", &selector, &uid, &keep).await? {
        pruned.push(("networking.k8s.io/v1", "Ingress", n));
    }
    if monitoring {
        let keep = names_of(
            desired
                .service_monitor
                .iter()
                .map(|x| &x.metadata)
                .collect(),
        );
        for n in prune(&monitors, "ServiceMonitor", &selector, &uid, &keep).await? {
            pruned.push(("monitoring.coreos.com/v1", "ServiceMonitor", n));
        }
    }
    for (api_version, kind, object) in pruned {
        publish(
            &ctx,
            &platform,
            EventType::Normal,
            "Deleted",
            "Prune",
            format!("Deleted {kind} {object}: no longer in the spec"),
            Some(related(api_version, kind, &object, &platform)),
        )
        .await;
    }

    let tenants: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
    let tenant_count = tenants
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list", "Tenant", &ns))?
        .items
        .iter()
        .filter(|t| t.spec.platform_ref.name == name)
        .count();
    let tenant_count = i32::try_from(tenant_count).unwrap_or(i32::MAX);

    // Components not ready: ask their pods why, so the status names the cause.
    if observed.values().any(|o| !o.is_ready()) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let selector =
            format!("app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGER}");
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube("list", "Pod", &ns))?;
        for (component, o) in observed.iter_mut().filter(|(_, o)| !o.is_ready()) {
            let of_component: Vec<Pod> = list
                .items
                .iter()
                .filter(|p| component_of(&p.metadata) == Some(*component))
                .cloned()
                .collect();
            o.problem = status::pod_problem(&of_component);
        }
    }

    // Events for what changed: the first apply, and configuration (or Secret) changes that roll
    // the pods. Repeats aggregate into a series (one recorder per process).
    match platform
        .status
        .as_ref()
        .and_then(|s| s.config_hash.as_deref())
    {
        None => {
            let note = format!(
                "Applied the platform's objects (configuration {})",
                desired.config_hash
            );
            publish(
                &ctx,
                &platform,
                EventType::Normal,
                "Created",
                "Apply",
                note,
                None,
            )
            .await;
        }
        Some(old) if old != desired.config_hash => {
            let note = format!(
                "Configuration or Secrets changed ({old} -> {}): rolling the pods",
                desired.config_hash
            );
            let config_map = related("v1", "ConfigMap", &names.config_map(), &platform);
            publish(
                &ctx,
                &platform,
                EventType::Normal,
                "ConfigChanged",
                "Apply",
                note,
                Some(config_map),
            )
            .await;
        }
        Some(_) => {}
    }

    let status = status::platform_status(
        &platform,
        &observed,
        tenant_count,
        &desired.config_hash,
        Timestamp::now(),
    );
    let ready = status.version.is_some();
    write_status(&platforms, &name, &status).await?;
    ctx.backoff.reset(&super::backoff_key(platform.as_ref()));
    Ok(Action::requeue(if ready {
        REQUEUE_READY
    } else {
        REQUEUE_WAITING
    }))
}

/// Whether the Prometheus Operator's ServiceMonitor CRD is installed. The operator may read
/// that one CRD by name; a refusal (RBAC) counts as "not installed".
async fn service_monitor_crd_exists(client: &kube::Client) -> Result<bool, Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(SERVICE_MONITOR_CRD).await {
        Ok(found) => Ok(found.is_some()),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(false),
        Err(e) => Err(Error::kube(
            "get",
            "CustomResourceDefinition",
            SERVICE_MONITOR_CRD,
        )(e)),
    }
}

fn component_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<Component> {
    let label = meta.labels.as_ref()?.get("app.kubernetes.io/component")?;
    Component::ALL.into_iter().find(|c| c.name() == label)
}
