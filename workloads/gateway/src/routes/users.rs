//! Token exchange and users.

use crate::api::*;
use crate::state::{AppState, Caller};
use axum::extract::State;
use caas_domain::event::{ConversationEvent, UserChanged};
use caas_domain::model::{self, User};
use caas_domain::{ErrorCode, UserId};
use caas_kit::error::{ApiError, ErrorBody, Json, Path};
use http::StatusCode;

use super::now;

/// Exchanges app credentials and a user id for a platform user token.
#[utoipa::path(post, path = "/v1/token", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn exchange_token(
    State(s): State<AppState>,
    Json(req): Json<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let bad = || ApiError::new(ErrorCode::InvalidCredentials, "invalid app credentials");
    if req.app_id.is_empty() || req.app_id.len() > 128 {
        return Err(bad());
    }
    let d = s
        .limiter
        .check(
            &format!("token:{}", req.app_id),
            s.config.limits.token_exchanges_per_minute_per_app,
        )
        .await;
    if !d.allowed {
        return Err(
            ApiError::new(ErrorCode::RateLimited, "too many token requests")
                .with_retry_after(d.retry_after.as_secs().max(1)),
        );
    }
    let cred = s.store.get_credential(&req.app_id).await?.ok_or_else(bad)?;
    if cred.expires_at.is_some_and(|e| e <= now())
        || !caas_kit::random::constant_time_eq(
            &caas_kit::random::hash_secret(&req.app_secret),
            &cred.secret_hash,
        )
    {
        return Err(bad());
    }
    let tenant = s.auth.tenant(&cred.tenant_id).await?.ok_or_else(bad)?;
    if !tenant.is_active() {
        return Err(ApiError::new(
            ErrorCode::TenantSuspended,
            "the tenant is suspended",
        ));
    }
    if let Some(name) = &req.name {
        model::validate_name("name", name)?;
    }
    if let Some(data) = &req.data {
        model::validate_user_data(data)?;
    }
    let existing = s.store.get_user(&tenant.id, &req.user_id).await?;
    let user = match existing {
        Some(u) if req.name.is_none() && req.image_url.is_none() && req.data.is_none() => u,
        existing => {
            let before = existing.clone();
            let t = now();
            let base = existing.unwrap_or_else(|| User {
                tenant_id: tenant.id.clone(),
                id: req.user_id.clone(),
                name: req.user_id.to_string(),
                image_url: None,
                data: serde_json::json!({}),
                created_at: t,
                updated_at: t,
                tokens_valid_after: None,
            });
            let user = User {
                name: req.name.clone().unwrap_or(base.name.clone()),
                image_url: req.image_url.clone().or(base.image_url.clone()),
                data: req.data.clone().unwrap_or(base.data.clone()),
                updated_at: t,
                ..base
            };
            let user = s.store.upsert_user(&user).await?;
            announce_profile(&s, before.as_ref(), &user, "token");
            user
        }
    };
    let issued = s.auth.tokens().issue(&tenant.id, &user.id, now())?;
    Ok(Json(TokenResponse {
        token: issued.token,
        token_type: "Bearer",
        expires_at: issued.expires_at,
        user,
        socket_urls: s.config.server.socket_urls.clone(),
    }))
}

/// A user of the caller's tenant.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "users", security(("bearer" = [])),
    params(("user_id" = String, Path)), responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(user_id): Path<UserId>,
) -> Result<Json<User>, ApiError> {
    let user = s
        .store
        .get_user(caller.tenant(), &user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(User {
        tokens_valid_after: None,
        ..user
    }))
}

/// Creates or updates the caller's own profile.
#[utoipa::path(put, path = "/v1/users/{user_id}", tag = "users", security(("bearer" = [])),
    params(("user_id" = String, Path)), request_body = UserUpsert,
    responses((status = 200, body = User), (status = 403, body = ErrorBody)))]
pub(crate) async fn put_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(user_id): Path<UserId>,
    Json(req): Json<UserUpsert>,
) -> Result<Json<User>, ApiError> {
    if &user_id != caller.user() {
        return Err(ApiError::forbidden(
            "users may only change their own profile",
        ));
    }
    model::validate_name("name", &req.name)?;
    let data = req.data.unwrap_or_else(|| serde_json::json!({}));
    model::validate_user_data(&data)?;
    let before = s.store.get_user(caller.tenant(), &user_id).await?;
    let t = now();
    let user = User {
        tenant_id: caller.tenant().clone(),
        id: user_id,
        name: req.name,
        image_url: req.image_url,
        data,
        created_at: t,
        updated_at: t,
        tokens_valid_after: None,
    };
    let user = s.store.upsert_user(&user).await?;
    announce_profile(&s, before.as_ref(), &user, &caller.correlation_id);
    Ok(Json(user))
}

/// Announces a changed name or image (`user.updated`) on each of the user's conversations, so
/// that members' screens and search follow. In the background: a user in many conversations
/// does not hold the answer up; a failure is logged (the profile is changed either way, and
/// the next change or a search rebuild catches up).
fn announce_profile(s: &AppState, before: Option<&User>, after: &User, correlation_id: &str) {
    let Some(before) = before else {
        return; // a new user is in no conversation yet
    };
    if before.name == after.name && before.image_url == after.image_url {
        return;
    }
    let (s, user, correlation_id) = (s.clone(), after.clone(), correlation_id.to_string());
    tokio::spawn(async move {
        let conversations = match s
            .store
            .member_conversation_ids(&user.tenant_id, &user.id)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, tenant_id = %user.tenant_id, user_id = %user.id,
                    "Failed to list a renamed user's conversations; not announced.");
                return;
            }
        };
        for conversation in conversations {
            let event = ConversationEvent::UserUpdated(UserChanged {
                user_id: user.id.clone(),
                name: user.name.clone(),
                image_url: user.image_url.clone(),
                at: user.updated_at,
            });
            s.announce(&user.tenant_id, &conversation, &correlation_id, event)
                .await;
        }
    });
}

/// Logs the caller out everywhere: every token issued until now stops working.
#[utoipa::path(post, path = "/v1/me/revoke-tokens", tag = "users", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub(crate) async fn revoke_my_tokens(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    s.store
        .revoke_user_tokens(caller.tenant(), caller.user(), now())
        .await?;
    s.auth.invalidate_user(caller.tenant(), caller.user());
    Ok(StatusCode::NO_CONTENT)
}
