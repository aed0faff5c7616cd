//! The reconcilers and what they share: the [`Context`] handed to every reconcile, the one
//! [`Error`] enum (with a metric label per variant), the Prometheus [`Metrics`], server-side
//! apply with the operator's single field manager, and [`run`], which starts the controllers.
//!
//! `platform` holds the ChatPlatform reconcile pipeline (fetch Secrets -> build (pure) -> apply
//! -> status); `status` the pure status computation. Tenant reconcile is not written yet.

pub mod platform;
pub mod status;
pub mod tenant;

#[cfg(test)]
mod run_tests;
#[cfg(test)]
pub(crate) mod tenant_tests;
#[cfg(test)]
mod tests;

use crate::admin_api::{AdminError, TenantAdmin};
use crate::build::BuildError;
use crate::build::secrets::SecretGenError;
use crate::crd::{ChatPlatform, Tenant};
use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "caas-operator";

/// Everything that can fail in a reconcile. Expected conditions of the world (a Secret that
/// does not exist yet, pods that are not ready) are not errors: they are written to the status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the object has no {0}")]
    MissingObjectKey(&'static str),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    SecretGeneration(#[from] SecretGenError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("failed to {verb} {kind} {name}: {source}")]
    Kube {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The `error` label of `caas_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::Build(_) => "build",
            Error::SecretGeneration(_) => "secret_generation",
            Error::Kube { .. } => "kube_api",
            Error::Admin(_) => "admin_api",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
        }
    }

    pub(crate) fn kube(
        verb: &'static str,
        kind: &'static str,
        name: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Error {
        let name = name.into();
        move |source| Error::Kube {
            verb,
            kind,
            name,
            source,
        }
    }
}

/// The operator's Prometheus metrics.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "caas_operator_reconciles_total",
                "Reconciles started, by controller.",
            ),
            &["controller"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "caas_operator_reconcile_errors_total",
                "Reconciles that failed, by controller and error.",
            ),
            &["controller", "error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "caas_operator_reconcile_duration_seconds",
                "Duration of a reconcile, by controller.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["controller"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
        })
    }

    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn start(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        ReconcileTimer {
            histogram: self.duration.with_label_values(&[controller]),
            started: Instant::now(),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer {
    histogram: prometheus::Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// What every reconcile gets.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    /// Namespace the operator runs in (NetworkPolicies admit it to the admin port).
    pub operator_namespace: String,
    pub metrics: Metrics,
    pub reporter: Reporter,
    /// One recorder for the process, so repeated events aggregate into a series instead of
    /// piling up as new Event objects.
    pub recorder: Recorder,
    /// The platforms' tenant admin API.
    pub admin: Arc<dyn TenantAdmin>,
    /// Per-object retry delays after errors.
    pub backoff: Arc<Backoff>,
}

/// Exponential retry delays per object: 5 s, 10 s, 20 s, ... up to 5 minutes; reset by a
/// successful reconcile.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Backoff {
    const BASE: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(300);

    /// The delay before the next attempt for `key`, counting this failure.
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(key.to_owned()).or_insert(0);
        let delay = Self::BASE
            .saturating_mul(1u32 << (*n).min(10))
            .min(Self::MAX);
        *n = n.saturating_add(1);
        delay
    }

    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

impl Context {
    pub fn new(
        client: Client,
        operator_namespace: impl Into<String>,
        reporter: Reporter,
        admin: Arc<dyn TenantAdmin>,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            operator_namespace: operator_namespace.into(),
            metrics: Metrics::new()?,
            reporter,
            admin,
            backoff: Arc::default(),
        })
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("operator_namespace", &self.operator_namespace)
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

/// Server-side apply of one namespaced object with the operator's field manager, forcing
/// ownership of the fields it sets (drift is corrected on every pass).
pub async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kind = short_kind::<K>();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(Error::kube("apply", kind, name))
}

/// Whether a server-side apply answered with `obj` changed it: the API server moves the time of
/// our field manager's entry in `managedFields` only when our apply changed something, so an
/// entry at or after `since` (the pass's start, whole seconds like the field) means it did —
/// a creation, a spec change, or drift someone else made that this pass put back.
pub fn changed_since<K: Resource>(obj: &K, since: k8s_openapi::jiff::Timestamp) -> bool {
    let since = since.as_second();
    obj.meta().managed_fields.iter().flatten().any(|f| {
        f.manager.as_deref() == Some(FIELD_MANAGER)
            && f.operation.as_deref() == Some("Apply")
            && f.time.as_ref().is_some_and(|t| t.0.as_second() >= since)
    })
}

/// Deletes the objects in `api` matching `selector` that the owner (by uid) controls and that
/// are not in `keep`: what the spec no longer asks for (an HPA after autoscaling was turned
/// off, NetworkPolicies after they were disabled). Returns the deleted names.
pub async fn prune<K>(
    api: &Api<K>,
    kind: &'static str,
    selector: &str,
    owner_uid: &str,
    keep: &[String],
) -> Result<Vec<String>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(Error::kube("list", kind, selector))?;
    let mut deleted = Vec::new();
    for obj in list.items {
        let name = obj.meta().name.clone().unwrap_or_default();
        let owned = obj
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner_uid && o.controller == Some(true));
        if !owned || keep.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(Error::kube("delete", kind, name)(e)),
        }
    }
    Ok(deleted)
}

fn short_kind<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds of the objects the operator applies, as static strings for error messages.
    match K::kind(&()).as_ref() {
        "ServiceAccount" => "ServiceAccount",
        "ConfigMap" => "ConfigMap",
        "Secret" => "Secret",
        "Deployment" => "Deployment",
        "StatefulSet" => "StatefulSet",
        "Service" => "Service",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "HorizontalPodAutoscaler" => "HorizontalPodAutoscaler",
        "NetworkPolicy" => "NetworkPolicy",
        "Ingress" => "Ingress",
        "ChatPlatform" => "ChatPlatform",
        "Tenant" => "Tenant",
        _ => "object",
    }
}

/// The backoff key of an object.
pub fn backoff_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()).to_lowercase(),
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default()
    )
}

/// Logs and counts a failed platform reconcile, then retries with backoff.
pub fn platform_error_policy(
    platform: Arc<ChatPlatform>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(error = %error, platform = %platform.name_any(), namespace = ?platform.namespace(), "Failed to reconcile the platform.");
    ctx.metrics
        .errors
        .with_label_values(&["chatplatform", error.metric_label()])
        .inc();
    Action::requeue(ctx.backoff.next(&backoff_key(platform.as_ref())))
}

/// Logs and counts a failed tenant reconcile, then retries with backoff.
pub fn tenant_error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, tenant = %tenant.name_any(), namespace = ?tenant.namespace(), "Failed to reconcile the tenant.");
    ctx.metrics
        .errors
        .with_label_values(&["tenant", error.metric_label()])
        .inc();
    Action::requeue(ctx.backoff.next(&backoff_key(tenant.as_ref())))
}

/// The platform a Tenant belongs to (same namespace).
pub fn platform_of_tenant(tenant: Tenant) -> Option<ObjectRef<ChatPlatform>> {
    let ns = tenant.namespace()?;
    Some(ObjectRef::new(&tenant.spec.platform_ref.name).within(&ns))
}

/// Which namespaces to watch: all, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchScope {
    All,
    Namespaces(Vec<String>),
}

/// Runs the ChatPlatform and Tenant controllers until `shutdown` resolves (one pair per
/// watched namespace when the scope is a list).
pub async fn run(
    ctx: Arc<Context>,
    scope: WatchScope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=caas-operator");
    let namespaces: Vec<Option<String>> = match scope {
        WatchScope::All => vec![None],
        WatchScope::Namespaces(list) => list.into_iter().map(Some).collect(),
    };
    let mut controllers = Vec::new();
    for ns in namespaces {
        let client = ctx.client.clone();
        let api = |c: Client| -> Api<ChatPlatform> {
            match &ns {
                Some(ns) => Api::namespaced(c, ns),
                None => Api::all(c),
            }
        };
        fn child<K>(client: Client, ns: &Option<String>) -> Api<K>
        where
            K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
        {
            match ns {
                Some(ns) => Api::namespaced(client, ns),
                None => Api::all(client),
            }
        }
        let controller = Controller::new(api(client.clone()), watcher::Config::default())
            .owns(child::<Deployment>(client.clone(), &ns), managed.clone())
            .owns(child::<StatefulSet>(client.clone(), &ns), managed.clone())
            .owns(child::<ConfigMap>(client.clone(), &ns), managed.clone())
            .owns(child::<Service>(client.clone(), &ns), managed.clone())
            // A Tenant added to or removed from a platform changes its tenant count.
            .watches(
                child::<Tenant>(client.clone(), &ns),
                watcher::Config::default(),
                platform_of_tenant,
            )
            .graceful_shutdown_on(shutdown.clone())
            .run(platform::reconcile, platform_error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(error = %error, "Reconcile trigger failed.");
                }
            });
        controllers.push(controller.boxed());
        let tenants = Controller::new(
            child::<Tenant>(client.clone(), &ns),
            watcher::Config::default(),
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(tenant::reconcile, tenant_error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(error = %error, "Reconcile trigger failed.");
            }
        });
        controllers.push(tenants.boxed());
    }
    futures::future::join_all(controllers).await;
}
