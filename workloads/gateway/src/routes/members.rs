//! Members: list, add or join, remove or leave, change role; read markers.

use crate::api::*;
use crate::state::{AppState, Caller};
use axum::extract::State;
use caas_bus::topics;
use caas_domain::event::{ConversationEvent, MemberChanged, ReadUpdated};
use caas_domain::model::{Member, Role};
use caas_domain::permission::{Action, Resource};
use caas_domain::{ConversationId, ErrorCode, UserId};
use caas_kit::error::{ApiError, ErrorBody, Json, Path, Query};
use http::StatusCode;

use super::{now, page_limit};

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
    let access = s.access(&caller, &id).await?;
    let role = req.role.unwrap_or(Role::Member);
    let new_role = (role != Role::Member).then_some(role);
    access.decide_member(
        &caller,
        Resource::Member,
        Action::Create,
        Some(&req.user_id),
        None,
        new_role,
    )?;
    if s.store
        .get_user(caller.tenant(), &req.user_id)
        .await?
        .is_none()
    {
        return Err(ApiError::invalid(format!("unknown user {}", req.user_id)));
    }
    let t = now();
    let member = Member {
        tenant_id: caller.tenant().clone(),
        conversation_id: id.clone(),
        user_id: req.user_id.clone(),
        role,
        joined_at: t,
        last_read_position: -1,
        unread_count: 0,
    };
    s.store.add_member(&member).await.map_err(|e| match e {
        caas_store::StoreError::AlreadyExists => {
            ApiError::new(ErrorCode::AlreadyExists, "already a member")
        }
        e => e.into(),
    })?;
    if role != Role::Member {
        s.audit(
            caller.tenant(),
            &format!("user:{}", caller.user()),
            "member.role_change",
            format!("conversation:{id}/user:{}", req.user_id),
            serde_json::json!({"role": role}),
        )
        .await;
    }
    let ev = ConversationEvent::MemberAdded(MemberChanged {
        user_id: req.user_id,
        role: Some(role),
        by: caller.user().clone(),
        at: t,
    });
    s.announce(caller.tenant(), &id, &caller.correlation_id, ev)
        .await;
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
    let access = s.access(&caller, &id).await?;
    let target = s.store.get_member(caller.tenant(), &id, &user_id).await?;
    access.decide_member(
        &caller,
        Resource::Member,
        Action::Delete,
        Some(&user_id),
        target.as_ref().map(|m| m.role),
        None,
    )?;
    if target.is_none() {
        return Err(ApiError::not_found("member"));
    }
    s.store
        .remove_member(caller.tenant(), &id, &user_id)
        .await?;
    if &user_id != caller.user() {
        s.audit(
            caller.tenant(),
            &format!("user:{}", caller.user()),
            "member.remove",
            format!("conversation:{id}/user:{user_id}"),
            serde_json::json!({}),
        )
        .await;
    }
    let ev = ConversationEvent::MemberRemoved(MemberChanged {
        user_id,
        role: None,
        by: caller.user().clone(),
        at: now(),
    });
    s.announce(caller.tenant(), &id, &caller.correlation_id, ev)
        .await;
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
    let access = s.access(&caller, &id).await?;
    let target = s.store.get_member(caller.tenant(), &id, &user_id).await?;
    access.decide_member(
        &caller,
        Resource::Member,
        Action::Update,
        Some(&user_id),
        target.as_ref().map(|m| m.role),
        Some(req.role),
    )?;
    let Some(mut target) = target else {
        return Err(ApiError::not_found("member"));
    };
    s.store
        .set_member_role(caller.tenant(), &id, &user_id, req.role)
        .await?;
    s.audit(
        caller.tenant(),
        &format!("user:{}", caller.user()),
        "member.role_change",
        format!("conversation:{id}/user:{user_id}"),
        serde_json::json!({"from": target.role, "to": req.role}),
    )
    .await;
    target.role = req.role;
    let ev = ConversationEvent::MemberUpdated(MemberChanged {
        user_id,
        role: Some(req.role),
        by: caller.user().clone(),
        at: now(),
    });
    s.announce(caller.tenant(), &id, &caller.correlation_id, ev)
        .await;
    Ok(Json(target))
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
    let access = s.access(&caller, &id).await?;
    access.decide(
        &caller,
        Resource::ReadMarker,
        Action::Update,
        Some(caller.user()),
    )?;
    if access.member.is_none() {
        return Err(ApiError::new(
            ErrorCode::NotMember,
            "only members have read markers",
        ));
    }
    let head = s
        .bus
        .high_watermark(topics::CONVERSATION_EVENTS, s.partition_of(&id))
        .await?
        - 1;
    let position = match req.position {
        Some(p) if p < -1 => return Err(ApiError::invalid("position must be >= -1")),
        Some(p) => p.min(head),
        None => head,
    };
    // Count against what was published before: the unread count is exact once stored.
    s.wait_persisted(&id).await?;
    let member = s
        .store
        .mark_read(caller.tenant(), &id, caller.user(), position)
        .await?;
    let ev = ConversationEvent::ReadUpdated(ReadUpdated {
        user_id: caller.user().clone(),
        position: member.last_read_position,
        at: now(),
    });
    s.announce(caller.tenant(), &id, &caller.correlation_id, ev)
        .await;
    Ok(Json(member))
}
