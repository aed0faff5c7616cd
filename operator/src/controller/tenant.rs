//! The Tenant reconcile pipeline, wrapped in kube's finalizer helper:
//! Apply: platform found and Ready? -> admin token read -> credentials Secret read or created
//! once (app id + secret generated here; new ones when the rotation annotation changes) ->
//! tenant upserted and the credential registered through the platform's internal admin API ->
//! the previous credential revoked once its grace period is over -> status Ready.
//! Cleanup (finalizer): per `deletionPolicy`, suspend (Retain) or delete (Delete) the tenant
//! through the admin API; when the platform itself is gone there is nothing left to call.

use super::{Context, Error};
use crate::admin_api::{AdminEndpoint, TenantUpsert};
use crate::build::secrets::generate_token;
use crate::build::{ADMIN_PORT, Component, MANAGER, Names};
use crate::crd::common::{
    ConditionStatus, ConditionType, condition, find_condition, set_condition,
};
use crate::crd::tenant::{
    DeletionPolicy, ROTATE_CREDENTIALS_ANNOTATION, ROTATION_GRACE_SECONDS, TenantStatus,
};
use crate::crd::{ChatPlatform, Tenant};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The finalizer that lets the operator clean up the tenant's data before the Tenant goes.
pub const FINALIZER: &str = "caas.dev/tenant-cleanup";
/// Periodic re-sync of a ready tenant (repairs drift on the platform side).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Retry while the platform is missing or not ready.
pub const WAIT_FOR_PLATFORM: Duration = Duration::from_secs(15);

/// Reasons on the Tenant's conditions.
pub mod reason {
    pub const SYNCED: &str = "Synced";
    pub const PLATFORM_NOT_FOUND: &str = "PlatformNotFound";
    pub const PLATFORM_NOT_READY: &str = "PlatformNotReady";
    pub const ADMIN_TOKEN_MISSING: &str = "AdminTokenMissing";
    pub const CREDENTIALS_INVALID: &str = "CredentialsSecretInvalid";
    pub const ADMIN_API_FAILED: &str = "AdminApiFailed";
    pub const INVALID_NAME: &str = "InvalidName";
}

/// Longest tenant id the platform accepts (`caas_domain::ids::MAX_ID_LEN`).
pub const MAX_TENANT_ID: usize = 64;

/// The tenant id on the platform: the Tenant's name (unique per namespace, and a platform and
/// its tenants share one namespace).
pub fn tenant_id(tenant: &Tenant) -> String {
    tenant.name_any()
}

/// The Secret holding the tenant's app credentials.
pub fn credentials_secret_name(tenant: &Tenant) -> String {
    tenant
        .spec
        .credentials_secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-credentials", tenant.name_any()))
}

/// What the admin API is told about the tenant.
pub fn upsert_body(tenant: &Tenant) -> TenantUpsert {
    let mut features = tenant.spec.features.clone();
    features.sort();
    features.dedup();
    TenantUpsert {
        name: tenant.spec.display_name.clone(),
        quotas: (&tenant.spec.quotas).into(),
        features,
        suspended: tenant.spec.suspended,
    }
}

/// The admin API address of a platform (its gateway Service's internal port).
pub fn admin_base_url(platform: &ChatPlatform) -> Option<String> {
    let names = Names::of(platform).ok()?;
    Some(format!(
        "http://{}.{}.svc:{ADMIN_PORT}",
        names.component(Component::Gateway),
        names.namespace
    ))
}

/// The credentials Secret for a new app id and secret, owned by the Tenant.
pub fn credentials_secret(
    tenant: &Tenant,
    app_id: &str,
    app_secret: &str,
) -> Result<Secret, Error> {
    let owner = tenant
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(credentials_secret_name(tenant)),
            namespace: tenant.namespace(),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), "caas".to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    MANAGER.to_owned(),
                ),
                ("caas.dev/tenant".to_owned(), tenant.name_any()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            ("appId".to_owned(), app_id.to_owned()),
            ("appSecret".to_owned(), app_secret.to_owned()),
            ("tenantId".to_owned(), tenant_id(tenant)),
        ])),
        ..Secret::default()
    })
}

fn data_of(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(v.0.clone()).ok();
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

/// The tenant's status with the Ready condition set.
fn status_with(tenant: &Tenant, ready: bool, reason_: &str, message: &str) -> TenantStatus {
    let generation = tenant.metadata.generation;
    let now = Timestamp::now();
    let mut status = tenant.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let degraded = matches!(
        reason_,
        reason::ADMIN_API_FAILED
            | reason::CREDENTIALS_INVALID
            | reason::ADMIN_TOKEN_MISSING
            | reason::INVALID_NAME
    );
    set_condition(
        &mut status.conditions,
        condition(
            ConditionType::Ready,
            ConditionStatus::from_bool(ready),
            reason_,
            message,
            generation,
            now,
        ),
    );
    set_condition(
        &mut status.conditions,
        condition(
            ConditionType::Degraded,
            ConditionStatus::from_bool(degraded),
            if degraded { reason_ } else { "AsExpected" },
            if degraded { message } else { "" },
            generation,
            now,
        ),
    );
    status
}

async fn write_status(api: &Api<Tenant>, name: &str, status: &TenantStatus) -> Result<(), Error> {
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube("update status of", "Tenant", name))?;
    Ok(())
}

/// Reads the platform's admin token; `None` when its Secret or key is missing.
async fn admin_endpoint(
    ctx: &Context,
    platform: &ChatPlatform,
) -> Result<Option<AdminEndpoint>, Error> {
    let ns = platform
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let names = Names::of(platform)?;
    let (secret_name, key) = crate::build::pod::admin_token_source(platform, &names);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) =
        secrets
            .get_opt(&secret_name)
            .await
            .map_err(Error::kube("get", "Secret", &secret_name))?
    else {
        return Ok(None);
    };
    let (Some(token), Some(base_url)) = (data_of(&secret, &key), admin_base_url(platform)) else {
        return Ok(None);
    };
    Ok(Some(AdminEndpoint {
        base_url,
        token: token.trim().to_owned(),
    }))
}

/// Reconciles one Tenant (with its finalizer).
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start("tenant");
    let ns = tenant
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let tenants: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&tenants, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(t) => apply(&t, &ctx, &tenants, &ns).await,
            Finalizer::Cleanup(t) => cleanup(&t, &ctx, &ns).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(
    tenant: &Tenant,
    ctx: &Context,
    tenants: &Api<Tenant>,
    ns: &str,
) -> Result<Action, Error> {
    let name = tenant.name_any();
    // The name is the platform's tenant id, which allows at most 64 characters.
    if name.len() > MAX_TENANT_ID {
        let message = format!(
            "the Tenant name is the tenant id on the platform and must be at most {MAX_TENANT_ID} characters"
        );
        write_status(
            tenants,
            &name,
            &status_with(tenant, false, reason::INVALID_NAME, &message),
        )
        .await?;
        return Ok(Action::await_change());
    }
    let platform_name = &tenant.spec.platform_ref.name;
    let platforms: Api<ChatPlatform> = Api::namespaced(ctx.client.clone(), ns);
    let Some(platform) = platforms.get_opt(platform_name).await.map_err(Error::kube(
        "get",
        "ChatPlatform",
        platform_name,
    ))?
    else {
        let message = format!("ChatPlatform {platform_name} not found");
        write_status(
            tenants,
            &name,
            &status_with(tenant, false, reason::PLATFORM_NOT_FOUND, &message),
        )
        .await?;
        return Ok(Action::requeue(WAIT_FOR_PLATFORM));
    };
    let platform_ready = platform
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, ConditionType::Ready).cloned());
    if platform_ready.as_ref().is_none_or(|c| c.status != "True") {
        let why = platform_ready
            .map(|c| c.message)
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "no status yet".into());
        let message = format!("ChatPlatform {platform_name} is not ready: {why}");
        write_status(
            tenants,
            &name,
            &status_with(tenant, false, reason::PLATFORM_NOT_READY, &message),
        )
        .await?;
        return Ok(Action::requeue(WAIT_FOR_PLATFORM));
    }
    let Some(endpoint) = admin_endpoint(ctx, &platform).await? else {
        let message = format!("the admin token Secret of ChatPlatform {platform_name} is missing");
        write_status(
            tenants,
            &name,
            &status_with(tenant, false, reason::ADMIN_TOKEN_MISSING, &message),
        )
        .await?;
        return Ok(Action::requeue(WAIT_FOR_PLATFORM));
    };

    // Credentials: generated once, kept in a Secret owned by the Tenant.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = credentials_secret_name(tenant);
    let existing =
        secrets
            .get_opt(&secret_name)
            .await
            .map_err(Error::kube("get", "Secret", &secret_name))?;
    let rotation = tenant
        .annotations()
        .get(ROTATE_CREDENTIALS_ANNOTATION)
        .cloned();
    let (app_id, app_secret, previous) = match existing {
        Some(secret) => {
            let (Some(mut app_id), Some(mut app_secret)) =
                (data_of(&secret, "appId"), data_of(&secret, "appSecret"))
            else {
                let message = format!(
                    "Secret {secret_name} lacks appId or appSecret; delete it to have new credentials issued"
                );
                write_status(
                    tenants,
                    &name,
                    &status_with(tenant, false, reason::CREDENTIALS_INVALID, &message),
                )
                .await?;
                return Ok(Action::requeue(WAIT_FOR_PLATFORM));
            };
            let mut previous = data_of(&secret, "previousAppId");
            // The Secret records the rotation it holds, so a pass interrupted after writing it
            // does not rotate twice.
            if let Some(value) = &rotation
                && data_of(&secret, "rotatedFor").as_ref() != Some(value)
            {
                let (new_id, new_secret) = new_credentials()?;
                let patch = serde_json::json!({"stringData": {
                    "appId": new_id, "appSecret": new_secret, "previousAppId": app_id, "rotatedFor": value,
                }});
                secrets
                    .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::kube("update", "Secret", &secret_name))?;
                tracing::info!(tenant = %name, previous = %app_id, "Rotated the tenant's credentials.");
                previous = Some(std::mem::replace(&mut app_id, new_id));
                app_secret = new_secret;
            }
            (app_id, app_secret, previous)
        }
        None => {
            let (app_id, app_secret) = new_credentials()?;
            let mut secret = credentials_secret(tenant, &app_id, &app_secret)?;
            if let (Some(value), Some(data)) = (&rotation, secret.string_data.as_mut()) {
                // Fresh credentials satisfy any rotation asked for so far.
                data.insert("rotatedFor".into(), value.clone());
            }
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(Error::kube("create", "Secret", &secret_name))?;
            (app_id, app_secret, None)
        }
    };

    let id = tenant_id(tenant);
    let admin_result = async {
        ctx.admin
            .upsert_tenant(&endpoint, &id, &upsert_body(tenant))
            .await?;
        ctx.admin
            .register_credential(&endpoint, &id, &app_id, &app_secret)
            .await
    }
    .await;
    if let Err(error) = admin_result {
        let status = status_with(tenant, false, reason::ADMIN_API_FAILED, &error.to_string());
        write_status(tenants, &name, &status).await?;
        return Err(Error::Admin(error));
    }

    // After a rotation the previous credential works for a grace period, then is revoked.
    let now = Timestamp::now();
    let mut previous_status: Option<(String, Timestamp)> = None;
    if let Some(previous) = previous {
        let old = tenant.status.as_ref();
        let revoke_after = old
            .filter(|s| s.previous_app_id.as_deref() == Some(previous.as_str()))
            .and_then(|s| s.previous_revoke_after.as_deref())
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or_else(|| {
                now.checked_add(SignedDuration::from_secs(ROTATION_GRACE_SECONDS))
                    .unwrap_or(now)
            });
        if now >= revoke_after {
            if let Err(error) = ctx.admin.revoke_credential(&endpoint, &id, &previous).await {
                let status =
                    status_with(tenant, false, reason::ADMIN_API_FAILED, &error.to_string());
                write_status(tenants, &name, &status).await?;
                return Err(Error::Admin(error));
            }
            let patch = serde_json::json!({"data": {"previousAppId": null}});
            secrets
                .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::kube("update", "Secret", &secret_name))?;
        } else {
            previous_status = Some((previous, revoke_after));
        }
    }

    let mut status = status_with(
        tenant,
        true,
        reason::SYNCED,
        &format!("tenant {id} is up to date on ChatPlatform {platform_name}"),
    );
    status.tenant_id = Some(id);
    status.app_id = Some(app_id);
    status.credentials_secret = Some(secret_name);
    status.rotated_for = rotation.or(status.rotated_for);
    let requeue = match &previous_status {
        Some((_, revoke_after)) => {
            let wait = revoke_after.duration_since(now).unsigned_abs();
            wait.min(RESYNC)
        }
        None => RESYNC,
    };
    status.previous_app_id = previous_status.as_ref().map(|(p, _)| p.clone());
    status.previous_revoke_after = previous_status.map(|(_, t)| t.to_string());
    write_status(tenants, &name, &status).await?;
    ctx.backoff.reset(&super::backoff_key(tenant));
    Ok(Action::requeue(requeue))
}

/// A new app id and secret (the gateway requires 4-128 and 32-256 characters).
fn new_credentials() -> Result<(String, String), Error> {
    Ok((
        format!("app_{}", &generate_token()?[..20]),
        format!("sk_{}", generate_token()?),
    ))
}

async fn cleanup(tenant: &Tenant, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let platform_name = &tenant.spec.platform_ref.name;
    let platforms: Api<ChatPlatform> = Api::namespaced(ctx.client.clone(), ns);
    let platform = platforms.get_opt(platform_name).await.map_err(Error::kube(
        "get",
        "ChatPlatform",
        platform_name,
    ))?;
    let Some(platform) = platform.filter(|p| p.metadata.deletion_timestamp.is_none()) else {
        tracing::info!(tenant = %tenant.name_any(), platform = %platform_name, "The platform is gone; nothing to clean up on it.");
        return Ok(Action::await_change());
    };
    let Some(endpoint) = admin_endpoint(ctx, &platform).await? else {
        tracing::warn!(tenant = %tenant.name_any(), platform = %platform_name, "No admin token: the tenant's data is left on the platform.");
        return Ok(Action::await_change());
    };
    let id = tenant_id(tenant);
    match tenant.spec.deletion_policy {
        DeletionPolicy::Delete => ctx
            .admin
            .delete_tenant(&endpoint, &id)
            .await
            .map_err(Error::Admin)?,
        DeletionPolicy::Retain => ctx
            .admin
            .suspend_tenant(&endpoint, &id)
            .await
            .map_err(Error::Admin)?,
    }
    tracing::info!(tenant = %id, policy = ?tenant.spec.deletion_policy, "Cleaned up the tenant on the platform.");
    Ok(Action::await_change())
}
