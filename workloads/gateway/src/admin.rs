//! The tenant admin API (`/admin/v1`, internal port, admin bearer token): what the operator and
//! platform staff call. Create, update (idempotent `PUT`), suspend, resume and delete tenants;
//! quotas and features; credentials (generated here, or registered by the operator, which keeps
//! the secret in a Kubernetes Secret); revoking a user's tokens; the audit trail; tenant
//! webhooks (where the pipeline posts a tenant's notification events); the pipeline's dead
//! letters (list, inspect, replay to the original topic, discard). Every change is audited with
//! actor `admin`.

use crate::state::{Admin, AppState};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post, put};
use caas_domain::model::{AppCredential, AuditEntry, Quotas, Tenant, TenantStatus};
use caas_domain::{ErrorCode, TenantId, UserId};
use caas_kit::error::{ApiError, Json, Path, Query};
use caas_kit::random;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/admin/v1/tenants/{tenant_id}",
            get(get_tenant).put(put_tenant).delete(delete_tenant),
        )
        .route("/admin/v1/tenants/{tenant_id}/suspend", post(suspend))
        .route("/admin/v1/tenants/{tenant_id}/resume", post(resume))
        .route(
            "/admin/v1/tenants/{tenant_id}/credentials",
            post(rotate_credentials),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/credentials/{app_id}",
            put(register_credential).delete(revoke_credential),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/users/{user_id}/revoke-tokens",
            post(revoke_user),
        )
        .route("/admin/v1/audit", get(list_audit))
        .route(
            "/admin/v1/tenants/{tenant_id}/webhook",
            get(get_webhook).put(put_webhook).delete(delete_webhook),
        )
        .route("/admin/v1/dead-letters", get(list_dead_letters))
        .route("/admin/v1/dead-letters/{id}", get(get_dead_letter))
        .route(
            "/admin/v1/dead-letters/{id}/replay",
            post(replay_dead_letter),
        )
        .route(
            "/admin/v1/dead-letters/{id}/discard",
            post(discard_dead_letter),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: TenantId,
    name: String,
    #[serde(default)]
    quotas: Option<Quotas>,
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutTenant {
    name: String,
    #[serde(default)]
    quotas: Option<Quotas>,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    suspended: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NewCredential {
    pub app_id: String,
    /// Shown once; only its hash is stored.
    pub app_secret: String,
}

#[derive(Debug, Serialize)]
struct CredentialInfo {
    app_id: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize)]
struct TenantView {
    tenant: Tenant,
    credentials: Vec<CredentialInfo>,
}

#[derive(Debug, Serialize)]
struct Created {
    tenant: Tenant,
    credentials: NewCredential,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn features(mut f: Vec<String>) -> Result<Vec<String>, ApiError> {
    for x in &f {
        if x.is_empty()
            || x.len() > 64
            || !x
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(ApiError::invalid(
                "features are 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
    }
    f.sort();
    f.dedup();
    Ok(f)
}

async fn new_credential(s: &AppState, tenant: &TenantId) -> Result<NewCredential, ApiError> {
    let cred = NewCredential {
        app_id: random::id("app_"),
        app_secret: random::secret("sk_"),
    };
    s.store
        .put_credential(&AppCredential {
            app_id: cred.app_id.clone(),
            tenant_id: tenant.clone(),
            secret_hash: random::hash_secret(&cred.app_secret),
            created_at: now(),
            expires_at: None,
        })
        .await?;
    Ok(cred)
}

async fn view(s: &AppState, id: &TenantId) -> Result<TenantView, ApiError> {
    let tenant = s
        .store
        .get_tenant(id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let credentials = s
        .store
        .list_credentials(id)
        .await?
        .into_iter()
        .map(|c| CredentialInfo {
            app_id: c.app_id,
            created_at: c.created_at,
            expires_at: c.expires_at,
        })
        .collect();
    Ok(TenantView {
        tenant,
        credentials,
    })
}

async fn create_tenant(
    State(s): State<AppState>,
    _admin: Admin,
    Json(req): Json<CreateTenant>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    caas_domain::model::validate_name("name", &req.name)?;
    let t = now();
    let tenant = Tenant {
        id: req.id.clone(),
        name: req.name,
        status: TenantStatus::Active,
        quotas: req.quotas.unwrap_or_default(),
        features: features(req.features)?,
        created_at: t,
        updated_at: t,
    };
    s.store.create_tenant(&tenant).await.map_err(|e| match e {
        caas_store::StoreError::AlreadyExists => {
            ApiError::new(ErrorCode::AlreadyExists, "tenant exists")
        }
        e => e.into(),
    })?;
    let credentials = new_credential(&s, &tenant.id).await?;
    s.audit(
        &tenant.id,
        "admin",
        "tenant.create",
        format!("tenant:{}", tenant.id),
        serde_json::json!({"app_id": credentials.app_id}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            tenant,
            credentials,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<TenantId>,
    limit: Option<u32>,
}

async fn list_tenants(
    State(s): State<AppState>,
    _admin: Admin,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Tenant>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(s.store.list_tenants(q.after.as_ref(), limit).await?))
}

async fn get_tenant(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<TenantId>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(view(&s, &id).await?))
}

/// Creates or replaces name, quotas, features and suspension: what a Tenant manifest says.
async fn put_tenant(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<TenantId>,
    Json(req): Json<PutTenant>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    caas_domain::model::validate_name("name", &req.name)?;
    let t = now();
    let status = if req.suspended {
        TenantStatus::Suspended
    } else {
        TenantStatus::Active
    };
    let features = features(req.features)?;
    let existing = s.store.get_tenant(&id).await?;
    let code = match existing {
        Some(old) => {
            let tenant = Tenant {
                name: req.name,
                status,
                quotas: req.quotas.unwrap_or(old.quotas.clone()),
                features,
                updated_at: t,
                ..old.clone()
            };
            if tenant != old {
                s.store.put_tenant(&tenant).await?;
                s.audit(&id, "admin", "tenant.update", format!("tenant:{id}"), serde_json::json!({"status": tenant.status, "quotas": tenant.quotas, "features": tenant.features})).await;
            }
            StatusCode::OK
        }
        None => {
            let tenant = Tenant {
                id: id.clone(),
                name: req.name,
                status,
                quotas: req.quotas.unwrap_or_default(),
                features,
                created_at: t,
                updated_at: t,
            };
            match s.store.create_tenant(&tenant).await {
                Ok(()) | Err(caas_store::StoreError::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
            s.audit(
                &id,
                "admin",
                "tenant.create",
                format!("tenant:{id}"),
                serde_json::json!({}),
            )
            .await;
            StatusCode::CREATED
        }
    };
    s.auth.invalidate_tenant(&id);
    Ok((code, Json(view(&s, &id).await?)))
}

async fn set_status(
    s: &AppState,
    id: &TenantId,
    status: TenantStatus,
) -> Result<Json<TenantView>, ApiError> {
    let mut tenant = s
        .store
        .get_tenant(id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    if tenant.status != status {
        tenant.status = status;
        tenant.updated_at = now();
        s.store.put_tenant(&tenant).await?;
        let action = if status == TenantStatus::Suspended {
            "tenant.suspend"
        } else {
            "tenant.resume"
        };
        s.audit(
            id,
            "admin",
            action,
            format!("tenant:{id}"),
            serde_json::json!({}),
        )
        .await;
    }
    s.auth.invalidate_tenant(id);
    Ok(Json(view(s, id).await?))
}

async fn suspend(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<TenantId>,
) -> Result<Json<TenantView>, ApiError> {
    set_status(&s, &id, TenantStatus::Suspended).await
}

async fn resume(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<TenantId>,
) -> Result<Json<TenantView>, ApiError> {
    set_status(&s, &id, TenantStatus::Active).await
}

/// Deletes the tenant and all of its data. The audit trail keeps the record of it.
async fn delete_tenant(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<TenantId>,
) -> Result<StatusCode, ApiError> {
    match s.store.delete_tenant(&id).await {
        Ok(()) => {
            s.audit(
                &id,
                "admin",
                "tenant.delete",
                format!("tenant:{id}"),
                serde_json::json!({}),
            )
            .await;
        }
        Err(caas_store::StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    s.auth.invalidate_tenant(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How long the current credentials keep working (default 0: they stop now).
    #[serde(default)]
    grace_seconds: u64,
}

/// Issues a new credential; the existing ones expire after the grace period.
async fn rotate_credentials(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<TenantId>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<NewCredential>), ApiError> {
    // The body is optional: empty means the defaults.
    let grace = if body.is_empty() {
        0
    } else {
        serde_json::from_slice::<Rotate>(&body)
            .map_err(|e| ApiError::new(ErrorCode::MalformedJson, e.to_string()))?
            .grace_seconds
    };
    s.store
        .get_tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let expires = now() + time::Duration::seconds(grace.min(30 * 86_400) as i64);
    for mut c in s.store.list_credentials(&id).await? {
        if c.expires_at.is_none_or(|e| e > expires) {
            c.expires_at = Some(expires);
            s.store.put_credential(&c).await?;
        }
    }
    let cred = new_credential(&s, &id).await?;
    s.audit(
        &id,
        "admin",
        "credentials.rotate",
        format!("tenant:{id}"),
        serde_json::json!({"app_id": cred.app_id, "grace_seconds": grace}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(cred)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    app_secret: String,
}

/// Registers a credential whose secret the caller generated (the operator keeps it in a Secret).
async fn register_credential(
    State(s): State<AppState>,
    _admin: Admin,
    Path((id, app_id)): Path<(TenantId, String)>,
    Json(req): Json<Register>,
) -> Result<StatusCode, ApiError> {
    if app_id.len() < 4
        || app_id.len() > 128
        || !app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::new(
            ErrorCode::InvalidId,
            "app id must be 4-128 characters of A-Z a-z 0-9 _ -",
        ));
    }
    if req.app_secret.len() < 32 || req.app_secret.len() > 256 {
        return Err(ApiError::invalid("app secret must be 32-256 characters"));
    }
    s.store
        .get_tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    if let Some(existing) = s.store.get_credential(&app_id).await? {
        if existing.tenant_id != id {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "app id belongs to another tenant",
            ));
        }
        if existing.secret_hash == random::hash_secret(&req.app_secret)
            && existing.expires_at.is_none()
        {
            return Ok(StatusCode::OK);
        }
    }
    s.store
        .put_credential(&AppCredential {
            app_id: app_id.clone(),
            tenant_id: id.clone(),
            secret_hash: random::hash_secret(&req.app_secret),
            created_at: now(),
            expires_at: None,
        })
        .await?;
    s.audit(
        &id,
        "admin",
        "credentials.register",
        format!("tenant:{id}/app:{app_id}"),
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::CREATED)
}

async fn revoke_credential(
    State(s): State<AppState>,
    _admin: Admin,
    Path((id, app_id)): Path<(TenantId, String)>,
) -> Result<StatusCode, ApiError> {
    let mut c = s
        .store
        .get_credential(&app_id)
        .await?
        .filter(|c| c.tenant_id == id)
        .ok_or_else(|| ApiError::not_found("credential"))?;
    c.expires_at = Some(now());
    s.store.put_credential(&c).await?;
    s.audit(
        &id,
        "admin",
        "credentials.revoke",
        format!("tenant:{id}/app:{app_id}"),
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_user(
    State(s): State<AppState>,
    _admin: Admin,
    Path((id, user)): Path<(TenantId, UserId)>,
) -> Result<StatusCode, ApiError> {
    s.store.revoke_user_tokens(&id, &user, now()).await?;
    s.auth.invalidate_user(&id, &user);
    s.audit(
        &id,
        "admin",
        "user.revoke_tokens",
        format!("tenant:{id}/user:{user}"),
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    tenant_id: Option<TenantId>,
    before: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct AuditPage {
    entries: Vec<AuditEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<String>,
}

/// The audit trail, newest first.
async fn list_audit(
    State(s): State<AppState>,
    _admin: Admin,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = s
        .store
        .list_audit(q.tenant_id.as_ref(), q.before.as_deref(), limit)
        .await?;
    let next_before = (entries.len() as u32 == limit)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_before,
    }))
}

// ---------------------------------------------------------------------------------------------
// Tenant webhooks.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutWebhook {
    url: String,
    /// The signing secret; generated (and shown once) when omitted.
    #[serde(default)]
    secret: Option<String>,
    /// `message`, `mention`; empty or omitted: all.
    #[serde(default)]
    events: Vec<String>,
}

/// A webhook as the admin API shows it: the secret only when it was just generated.
#[derive(Debug, Serialize)]
struct WebhookView {
    tenant_id: TenantId,
    url: String,
    events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl WebhookView {
    fn of(w: caas_store::TenantWebhook, show_secret: bool) -> Self {
        Self {
            tenant_id: w.tenant_id,
            url: w.url,
            events: w.events,
            secret: show_secret.then_some(w.secret),
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// Sets the tenant's webhook: `url` (http or https), `secret` (16-256 characters; generated
/// when omitted and then shown in this answer only), `events`.
async fn put_webhook(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<TenantId>,
    Json(req): Json<PutWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    s.store
        .get_tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let url = req.url.trim().to_string();
    if url.len() > 2048
        || !(url.starts_with("https://") || url.starts_with("http://"))
        || url.contains(char::is_whitespace)
    {
        return Err(ApiError::invalid(
            "url must be an http:// or https:// URL of at most 2048 characters",
        ));
    }
    for e in &req.events {
        if e != "message" && e != "mention" {
            return Err(ApiError::invalid(format!(
                "unknown webhook event {e:?} (message, mention)"
            )));
        }
    }
    let generated = req.secret.is_none();
    let secret = match req.secret {
        Some(x) if (16..=256).contains(&x.len()) => x,
        Some(_) => return Err(ApiError::invalid("secret must be 16-256 characters")),
        None => random::secret("whsec_"),
    };
    let existing = s.store.get_webhook(&id).await?;
    let t = now();
    let mut events = req.events;
    events.sort();
    events.dedup();
    let hook = caas_store::TenantWebhook {
        tenant_id: id.clone(),
        url,
        secret,
        events,
        created_at: existing.as_ref().map(|w| w.created_at).unwrap_or(t),
        updated_at: t,
    };
    s.store.put_webhook(&hook).await?;
    s.audit(
        &id,
        "admin",
        "webhook.put",
        format!("tenant:{id}/webhook"),
        serde_json::json!({"url": hook.url, "events": hook.events, "secret_generated": generated}),
    )
    .await;
    let code = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(WebhookView::of(hook, generated))))
}

async fn get_webhook(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<TenantId>,
) -> Result<Json<WebhookView>, ApiError> {
    let hook = s
        .store
        .get_webhook(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(WebhookView::of(hook, false)))
}

async fn delete_webhook(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<TenantId>,
) -> Result<StatusCode, ApiError> {
    match s.store.delete_webhook(&id).await {
        Ok(()) => {
            s.audit(
                &id,
                "admin",
                "webhook.delete",
                format!("tenant:{id}/webhook"),
                serde_json::json!({}),
            )
            .await;
            Ok(StatusCode::NO_CONTENT)
        }
        Err(caas_store::StoreError::NotFound) => Err(ApiError::not_found("webhook")),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Dead letters of the pipeline.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterListQuery {
    tenant_id: Option<TenantId>,
    /// `pending` (default), `replayed`, `discarded` or `all`.
    status: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct DeadLetterPage {
    dead_letters: Vec<caas_store::DeadLetter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

/// Dead letters, oldest first; `tenant_id`, `status` (default `pending`), `after`, `limit`.
async fn list_dead_letters(
    State(s): State<AppState>,
    _admin: Admin,
    Query(q): Query<DeadLetterListQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    use caas_store::DeadLetterStatus;
    let status = match q.status.as_deref() {
        None => Some(DeadLetterStatus::Pending),
        Some("all") => None,
        Some(x) => Some(DeadLetterStatus::parse(x).ok_or_else(|| {
            ApiError::invalid("status is one of pending, replayed, discarded, all")
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let dead_letters = s
        .store
        .list_dead_letters(&caas_store::DeadLetterQuery {
            tenant: q.tenant_id,
            status,
            after: q.after,
            limit,
        })
        .await?;
    let next_after = (dead_letters.len() as u32 == limit)
        .then(|| dead_letters.last().map(|d| d.id.clone()))
        .flatten();
    Ok(Json(DeadLetterPage {
        dead_letters,
        next_after,
    }))
}

async fn get_dead_letter(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<caas_store::DeadLetter>, ApiError> {
    Ok(Json(
        s.store
            .get_dead_letter(&id)
            .await?
            .ok_or_else(|| ApiError::not_found("dead letter"))?,
    ))
}

fn resolve_error(e: caas_pipeline::dead_letter::ResolveError) -> ApiError {
    use caas_pipeline::dead_letter::ResolveError as R;
    match e {
        R::NotFound => ApiError::not_found("dead letter"),
        R::NotPending(_) => ApiError::new(ErrorCode::Conflict, e.to_string()),
        R::BadPayload(_) => ApiError::new(ErrorCode::Internal, e.to_string()),
        R::Store(e) => e.into(),
        R::Bus(e) => e.into(),
    }
}

#[derive(Debug, Serialize)]
struct Replayed {
    dead_letter: caas_store::DeadLetter,
    /// Where the record was published again.
    topic: String,
    partition: i32,
    offset: i64,
}

/// Publishes a pending dead letter's record again to its original topic (after the cause was
/// fixed: a tenant resumed, a member added, a webhook repaired) and marks it replayed.
async fn replay_dead_letter(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<Replayed>, ApiError> {
    let (dl, pos) = caas_pipeline::dead_letter::replay(s.store.as_ref(), s.bus.as_ref(), &id)
        .await
        .map_err(resolve_error)?;
    if let Some(t) = &dl.tenant_id {
        s.audit(
            t,
            "admin",
            "dead_letter.replay",
            format!("dead_letter:{id}"),
            serde_json::json!({"topic": dl.topic, "partition": pos.partition, "offset": pos.offset}),
        )
        .await;
    }
    Ok(Json(Replayed {
        topic: dl.topic.clone(),
        dead_letter: dl,
        partition: pos.partition,
        offset: pos.offset,
    }))
}

/// Marks a pending dead letter discarded (it stays listed under `status=discarded`).
async fn discard_dead_letter(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<caas_store::DeadLetter>, ApiError> {
    let dl = caas_pipeline::dead_letter::discard(s.store.as_ref(), &id)
        .await
        .map_err(resolve_error)?;
    if let Some(t) = &dl.tenant_id {
        s.audit(
            t,
            "admin",
            "dead_letter.discard",
            format!("dead_letter:{id}"),
            serde_json::json!({}),
        )
        .await;
    }
    Ok(Json(dl))
}
