//! The HTTP face of search: `/v1/search/...` for users (JWT, per-user rate limit, scope from the
//! store's memberships at query time) and `/admin/v1/search/...` on the internal port (rebuild,
//! status). Bad input is a 4xx with a stable code, never a panic. [`openapi`] describes the
//! public routes (the `caas` binary merges it into the API's document).

use crate::engine::{Engine, EngineError, RebuildStatus};
use crate::index::Generation;
use crate::query::{self, MessageSearch, Named, QueryError, Scope, Sort, Suggestions};
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::response::IntoResponse;
use axum::routing::get;
use caas_config::Config;
use caas_domain::{ConversationId, ErrorCode, UserId};
use caas_kit::auth::{Authenticator, Principal, bearer};
use caas_kit::error::{ApiError, ErrorBody, Json, Query};
use caas_kit::ratelimit::RateLimiter;
use http::StatusCode;
use http::request::Parts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;

/// Everything the handlers need. Cheap to clone.
#[derive(Clone)]
pub struct SearchState {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<dyn RateLimiter>,
    pub config: Arc<Config>,
    /// The bearer token of the internal admin API.
    pub admin_token: Arc<String>,
}

impl std::fmt::Debug for SearchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchState").finish_non_exhaustive()
    }
}

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<SearchState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SearchState) -> Result<Self, ApiError> {
        let token = bearer(parts.headers.get(http::header::AUTHORIZATION))?;
        Ok(Caller(state.auth.authenticate(token).await?))
    }
}

/// The platform operator on the internal API.
#[derive(Debug, Clone)]
pub struct Admin;

impl FromRequestParts<SearchState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SearchState) -> Result<Self, ApiError> {
        let token = bearer(parts.headers.get(http::header::AUTHORIZATION))?;
        if !caas_kit::random::constant_time_eq(token, &state.admin_token) {
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                "invalid admin token",
            ));
        }
        Ok(Admin)
    }
}

/// The public routes, relative to `/v1/search` (for `Router::nest`).
pub fn routes(state: SearchState) -> Router {
    Router::new()
        .route("/messages", get(search_messages))
        .route("/conversations", get(search_conversations))
        .route("/users", get(search_users))
        .route("/suggest", get(suggest))
        .with_state(state)
}

/// The public routes under `/v1/search`.
pub fn router(state: SearchState) -> Router {
    Router::new().nest(PUBLIC_PREFIX, routes(state))
}

/// The internal (admin) routes, relative to `/admin/v1/search`.
pub fn internal_routes(state: SearchState) -> Router {
    Router::new()
        .route("/rebuild", get(rebuild_status).post(start_rebuild))
        .route("/status", get(index_status))
        .with_state(state)
}

/// The internal (admin) routes under `/admin/v1/search`.
pub fn internal_router(state: SearchState) -> Router {
    Router::new().nest(INTERNAL_PREFIX, internal_routes(state))
}

/// The OpenAPI document of the public routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(search_messages, search_conversations, search_users, suggest),
    tags((name = "search", description = "Full-text search over the caller's conversations (docs/search.md)"))
)]
struct SearchDoc;

/// The OpenAPI operations of the public routes (`/v1/search/...`), to merge into the API's
/// document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <SearchDoc as utoipa::OpenApi>::openapi()
}

pub const PUBLIC_PREFIX: &str = "/v1/search";
pub const INTERNAL_PREFIX: &str = "/admin/v1/search";

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Invalid(m) => ApiError::invalid(m),
            QueryError::InvalidCursor(m) => ApiError::new(ErrorCode::InvalidCursor, m),
            QueryError::Index(e) => ApiError::internal(e),
        }
    }
}

impl SearchState {
    /// Takes one search from the caller's and the tenant's budgets (the same keys the gateway
    /// uses, so a shared limiter counts both).
    async fn rate_limit(&self, caller: &Caller) -> Result<(), ApiError> {
        let p = &caller.0;
        let per_user = self.config.limits.searches_per_minute_per_user;
        let d = self
            .limiter
            .check(
                &format!("search:u:{}:{}", p.tenant_id(), p.user_id),
                per_user,
            )
            .await;
        if !d.allowed {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("limit of {per_user} searches per minute per user reached"),
            )
            .with_retry_after(d.retry_after.as_secs().max(1)));
        }
        let per_tenant = p.tenant.quotas.searches_per_minute;
        let d = self
            .limiter
            .check(&format!("search:t:{}", p.tenant_id()), per_tenant)
            .await;
        if !d.allowed {
            return Err(ApiError::new(
                ErrorCode::QuotaExceeded,
                format!("the tenant's limit of {per_tenant} searches per minute is reached"),
            )
            .with_retry_after(d.retry_after.as_secs().max(1)));
        }
        Ok(())
    }

    /// The caller's tenant and conversations, read from the store now: leaving a conversation
    /// removes its messages from the next search.
    async fn scope(&self, caller: &Caller) -> Result<Scope, ApiError> {
        let p = &caller.0;
        let ids = self
            .engine
            .store()
            .member_conversation_ids(p.tenant_id(), &p.user_id)
            .await?;
        Ok(Scope {
            tenant: p.tenant_id().to_string(),
            conversations: ids.into_iter().map(|c| c.to_string()).collect(),
        })
    }

    /// Runs `f` on the current generation on the blocking pool, timing it as `kind`.
    async fn on_index<T: Send + 'static>(
        &self,
        kind: &str,
        f: impl FnOnce(&Generation) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let g = self
            .engine
            .current()
            .ok_or_else(|| ApiError::unavailable("the search index is being built"))?;
        let start = Instant::now();
        let r = tokio::task::spawn_blocking(move || f(&g))
            .await
            .map_err(ApiError::internal)??;
        self.engine
            .metrics
            .query_seconds
            .with_label_values(&[kind])
            .observe(start.elapsed().as_secs_f64());
        Ok(r)
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessagesParams {
    /// The query: words (all must match), `"a phrase"`, `pre*`, `-excluded`. Required unless a
    /// filter is given.
    pub q: Option<String>,
    /// Only this conversation.
    pub conversation_id: Option<String>,
    /// Only messages of this user.
    pub sender_id: Option<String>,
    /// RFC 3339; messages created at or after.
    pub from: Option<String>,
    /// RFC 3339; messages created before.
    pub to: Option<String>,
    /// Messages with (`true`) or without (`false`) files.
    pub has_attachment: Option<bool>,
    /// `relevance` (default) or `time` (newest first).
    pub sort: Option<String>,
    /// 1..=50, default 20.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (with the same other parameters).
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct FoundMessage {
    pub id: String,
    pub conversation_id: String,
    pub sender_id: String,
    pub text: String,
    pub position: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub edited_at: Option<OffsetDateTime>,
    pub parent_id: Option<String>,
    /// The message carries files.
    pub has_attachment: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SearchHit {
    pub message: FoundMessage,
    /// BM25 score; null with `sort=time`.
    pub score: Option<f32>,
    /// HTML-escaped fragment with matches in `<mark>`.
    pub highlight: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MessagesResponse {
    pub hits: Vec<SearchHit>,
    /// Pass as `cursor` (with the same other parameters) for the next page.
    pub next_cursor: Option<String>,
    pub total: usize,
}

fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    let t = OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::invalid(format!("{name} must be an RFC 3339 time")))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn parse_limit(limit: Option<u32>, default: u32, max: u32) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n as usize),
        _ => Err(ApiError::invalid(format!("limit must be 1 to {max}"))),
    }
}

/// Validates the parameters into a search (pure).
pub fn message_search(p: MessagesParams) -> Result<MessageSearch, ApiError> {
    let conversation = p
        .conversation_id
        .map(|c| {
            ConversationId::parse(c)
                .map(|c| c.to_string())
                .map_err(|_| ApiError::new(ErrorCode::InvalidId, "invalid conversation_id"))
        })
        .transpose()?;
    let sender = p
        .sender_id
        .map(|u| {
            UserId::parse(u)
                .map(|u| u.to_string())
                .map_err(|_| ApiError::new(ErrorCode::InvalidId, "invalid sender_id"))
        })
        .transpose()?;
    let from_ms = p
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?;
    let to_ms = p.to.as_deref().map(|v| parse_time("to", v)).transpose()?;
    if let (Some(a), Some(b)) = (from_ms, to_ms)
        && a >= b
    {
        return Err(ApiError::invalid("from must be before to"));
    }
    let sort = match p.sort.as_deref() {
        None | Some("relevance") => Sort::Relevance,
        Some("time") => Sort::Time,
        Some(_) => return Err(ApiError::invalid("sort must be relevance or time")),
    };
    let q = p.q.unwrap_or_default();
    let filtered = conversation.is_some()
        || sender.is_some()
        || from_ms.is_some()
        || to_ms.is_some()
        || p.has_attachment.is_some();
    if q.trim().is_empty() && !filtered {
        return Err(ApiError::invalid("q is required (or at least one filter)"));
    }
    Ok(MessageSearch {
        q,
        conversation,
        sender,
        from_ms,
        to_ms,
        has_attachment: p.has_attachment,
        sort,
        limit: parse_limit(p.limit, 20, 50)?,
        cursor: p.cursor,
    })
}

#[utoipa::path(get, path = "/v1/search/messages", tag = "search", security(("bearer" = [])),
    params(MessagesParams),
    responses((status = 200, body = MessagesResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn search_messages(
    State(s): State<SearchState>,
    caller: Caller,
    Query(p): Query<MessagesParams>,
) -> Result<Json<MessagesResponse>, ApiError> {
    s.rate_limit(&caller).await?;
    let search = message_search(p)?;
    let scope = s.scope(&caller).await?;
    let page = s
        .on_index("messages", move |g| {
            query::search_messages(g, &scope, &search)
        })
        .await?;
    Ok(Json(MessagesResponse {
        hits: page
            .hits
            .into_iter()
            .map(|h| SearchHit {
                message: FoundMessage {
                    id: h.message.id,
                    conversation_id: h.message.conversation_id,
                    sender_id: h.message.sender,
                    text: h.message.text,
                    position: h.message.position,
                    created_at: from_ms(h.message.created_ms),
                    edited_at: h.message.edited_ms.map(from_ms),
                    parent_id: h.message.parent_id,
                    has_attachment: h.message.has_attachment,
                },
                score: h.score,
                highlight: h.highlight,
            })
            .collect(),
        next_cursor: page.next_cursor,
        total: page.total,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NameParams {
    /// Words, each matched as a prefix of a word of the name (required).
    pub q: Option<String>,
    /// 1-50, default 20 (suggestions: 1-20, default 8).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NamedResponse {
    pub results: Vec<NamedItem>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NamedItem {
    pub id: String,
    pub name: String,
}

fn named_response(v: Vec<Named>) -> NamedResponse {
    NamedResponse {
        results: v
            .into_iter()
            .map(|n| NamedItem {
                id: n.id,
                name: n.name,
            })
            .collect(),
    }
}

fn required_q(q: Option<String>) -> Result<String, ApiError> {
    match q {
        Some(q) if !q.trim().is_empty() => Ok(q),
        _ => Err(ApiError::invalid("q is required")),
    }
}

#[utoipa::path(get, path = "/v1/search/conversations", tag = "search", security(("bearer" = [])),
    params(NameParams),
    responses((status = 200, body = NamedResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn search_conversations(
    State(s): State<SearchState>,
    caller: Caller,
    Query(p): Query<NameParams>,
) -> Result<Json<NamedResponse>, ApiError> {
    s.rate_limit(&caller).await?;
    let q = required_q(p.q)?;
    let limit = parse_limit(p.limit, 20, 50)?;
    let scope = s.scope(&caller).await?;
    let v = s
        .on_index("conversations", move |g| {
            query::search_conversations(g, &scope, &q, limit)
        })
        .await?;
    Ok(Json(named_response(v)))
}

#[utoipa::path(get, path = "/v1/search/users", tag = "search", security(("bearer" = [])),
    params(NameParams),
    responses((status = 200, body = NamedResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn search_users(
    State(s): State<SearchState>,
    caller: Caller,
    Query(p): Query<NameParams>,
) -> Result<Json<NamedResponse>, ApiError> {
    s.rate_limit(&caller).await?;
    let q = required_q(p.q)?;
    let limit = parse_limit(p.limit, 20, 50)?;
    let scope = Scope {
        tenant: caller.0.tenant_id().to_string(),
        conversations: Vec::new(),
    };
    let v = s
        .on_index("users", move |g| query::search_users(g, &scope, &q, limit))
        .await?;
    Ok(Json(named_response(v)))
}

#[utoipa::path(get, path = "/v1/search/suggest", tag = "search", security(("bearer" = [])),
    params(NameParams),
    responses((status = 200, body = Suggestions), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn suggest(
    State(s): State<SearchState>,
    caller: Caller,
    Query(p): Query<NameParams>,
) -> Result<Json<Suggestions>, ApiError> {
    s.rate_limit(&caller).await?;
    let q = required_q(p.q)?;
    let limit = parse_limit(p.limit, 8, 20)?;
    let scope = s.scope(&caller).await?;
    let v = s
        .on_index("suggest", move |g| query::suggest(g, &scope, &q, limit))
        .await?;
    Ok(Json(v))
}

async fn start_rebuild(
    State(s): State<SearchState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    match s.engine.request_rebuild() {
        Ok(status) => Ok((StatusCode::ACCEPTED, Json(status))),
        Err(EngineError::AlreadyRunning) => Err(ApiError::new(
            ErrorCode::Conflict,
            "a rebuild is already running (or the index is being built)",
        )),
        Err(e) => Err(ApiError::unavailable(e)),
    }
}

async fn rebuild_status(State(s): State<SearchState>, _admin: Admin) -> Json<RebuildStatus> {
    Json(s.engine.status())
}

#[derive(Debug, Serialize)]
pub struct IndexStatus {
    pub generation: Option<String>,
    pub documents: u64,
    pub bytes: u64,
    /// Per partition, the next log offset to index.
    pub positions: BTreeMap<i32, i64>,
    pub group_id: String,
    pub rebuild: RebuildStatus,
}

async fn index_status(
    State(s): State<SearchState>,
    _admin: Admin,
) -> Result<Json<IndexStatus>, ApiError> {
    let g = s.engine.current();
    let (documents, bytes, positions, generation) = match g {
        Some(g) => tokio::task::spawn_blocking(move || {
            (
                g.num_docs(),
                g.size_bytes(),
                g.positions(),
                Some(g.id.clone()),
            )
        })
        .await
        .map_err(ApiError::internal)?,
        None => (0, 0, BTreeMap::new(), None),
    };
    Ok(Json(IndexStatus {
        generation,
        documents,
        bytes,
        positions,
        group_id: s.engine.group_id.clone(),
        rebuild: s.engine.status(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn params() -> MessagesParams {
        MessagesParams {
            q: Some("pizza".into()),
            conversation_id: None,
            sender_id: None,
            from: None,
            to: None,
            has_attachment: None,
            sort: None,
            limit: None,
            cursor: None,
        }
    }

    #[test]
    fn parameters_are_validated_with_stable_codes() {
        let code = |p: MessagesParams| message_search(p).unwrap_err().code;
        assert_eq!(message_search(params()).unwrap().limit, 20);
        assert_eq!(
            code(MessagesParams {
                q: None,
                ..params()
            }),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(MessagesParams {
                limit: Some(0),
                ..params()
            }),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(MessagesParams {
                sort: Some("best".into()),
                ..params()
            }),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(MessagesParams {
                from: Some("yesterday".into()),
                ..params()
            }),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(MessagesParams {
                conversation_id: Some("a/b".into()),
                ..params()
            }),
            ErrorCode::InvalidId
        );
        assert_eq!(
            code(MessagesParams {
                from: Some("2026-01-02T00:00:00Z".into()),
                to: Some("2026-01-01T00:00:00Z".into()),
                ..params()
            }),
            ErrorCode::InvalidArgument
        );
        let only_filter = MessagesParams {
            q: None,
            has_attachment: Some(true),
            ..params()
        };
        assert!(message_search(only_filter).is_ok());
    }
}
