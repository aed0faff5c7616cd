//! Members: list, add or join, remove or leave, change role; read markers.

use crate::api::*;
use crate::state::{AppState, Caller};
use crate::write;
use axum::extract::State;
use caas_domain::model::Member;
use caas_domain::permission::{Action, Resource};
use caas_domain::{ConversationId, UserId};
use caas_kit::error::{ApiError, ErrorBody, Json, Path, Query};
use http::StatusCode;

use super::page_limit;

/// Members, ordered by user id.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/members", tag = "members", security(("bearer" = [])),
    params(("conversation_id" = String, Path), MemberListQuery), responses((status = 200, body = MemberList)))]
pub(crate) async fn list_members(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
    Query(q): Query<MemberListQuery>,
) -> Result<Json<MemberList>, ApiError> {
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Member, Action::Read, None)?;
    let limit = page_limit(q.limit, 100)?;
    let members = s
        .store
        .list_members(caller.tenant(), &id, q.cursor.as_ref(), limit)
        .await?;
    let next_cursor = (members.len() as u32 == limit)
        .then(|| members.last().map(|m| m.user_id.to_string()))
        .flatten();
    Ok(Json(MemberList {
        members,
        next_cursor,
    }))
}

/// Adds a member (owners and admins), or joins a channel (anyone, for themselves).
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/members", tag = "members", security(("bearer" = [])),
    params(("conversation_id" = String, Path)), request_body = AddMember,
    responses((status = 201, body = Member), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn add_member(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
    Json(req): Json<AddMember>,
) -> Result<(StatusCode, Json<Member>), ApiError> {
    let member = write::add_member(&s, &caller, &id, req.user_id, req.role).await?;
    Ok((StatusCode::CREATED, Json(member)))
}

/// Removes a member (moderators and up, by rank), or leaves (anyone, for themselves).
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/members/{user_id}", tag = "members", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_member(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(ConversationId, UserId)>,
) -> Result<StatusCode, ApiError> {
    write::remove_member(&s, &caller, &id, user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Changes a member's role (owners and admins, below their own rank).
#[utoipa::path(patch, path = "/v1/conversations/{conversation_id}/members/{user_id}", tag = "members", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("user_id" = String, Path)), request_body = ChangeRole,
    responses((status = 200, body = Member), (status = 403, body = ErrorBody)))]
pub(crate) async fn change_role(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(ConversationId, UserId)>,
    Json(req): Json<ChangeRole>,
) -> Result<Json<Member>, ApiError> {
    Ok(Json(
        write::change_role(&s, &caller, &id, user_id, req.role).await?,
    ))
}

/// Moves the caller's read marker forward and returns the membership with its unread count.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/read", tag = "members", security(("bearer" = [])),
    params(("conversation_id" = String, Path)), request_body = MarkRead,
    responses((status = 200, body = Member), (status = 403, body = ErrorBody)))]
pub(crate) async fn mark_read(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
    Json(req): Json<MarkRead>,
) -> Result<Json<Member>, ApiError> {
    Ok(Json(
        write::mark_read(&s, &caller, &id, req.position).await?,
    ))
}
