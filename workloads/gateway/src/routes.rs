//! Handlers of the public API (`/v1`). Each handler: authenticate ([`Caller`]), load and
//! authorize ([`AppState::access`] + the permission matrix), validate, then either write the
//! store (users, conversations, members, read markers) or publish to the log (messages).

use crate::api::*;
use crate::state::{Access, AppState, CONSISTENCY_HEADER, Caller};
use axum::extract::State;
use axum::response::IntoResponse;
use caas_bus::topics;
use caas_domain::event::{
    ConversationChanged, ConversationEvent, MemberChanged, MessageCreated, MessageDeleted,
    MessageUpdated, ReactionChanged, ReadUpdated,
};
use caas_domain::model::{
    self, Conversation, ConversationKind, ForwardedFrom, Member, Message, Role, User,
};
use caas_domain::permission::{Action, Resource};
use caas_domain::{ConversationId, ErrorCode, MessageId, UserId};
use caas_kit::dedupe::Reservation;
use caas_kit::error::{ApiError, ErrorBody, Json, Path, Query};
use caas_store::{ConversationPage, ConversationPatch, MessagePage, Thread};
use http::{HeaderMap, HeaderValue, StatusCode};
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The public routes with their OpenAPI operations.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(exchange_token))
        .routes(routes!(get_user, put_user))
        .routes(routes!(revoke_my_tokens))
        .routes(routes!(create_conversation, list_conversations))
        .routes(routes!(get_conversation, update_conversation))
        .routes(routes!(list_members, add_member))
        .routes(routes!(remove_member, change_role))
        .routes(routes!(mark_read))
        .routes(routes!(send_message, list_messages))
        .routes(routes!(get_message, edit_message, delete_message))
        .routes(routes!(list_replies))
        .routes(routes!(forward_message))
        .routes(routes!(add_reaction))
        .routes(routes!(remove_reaction))
}

fn page_limit(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=200).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit must be between 1 and 200")),
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

// ---------------------------------------------------------------------------------------------
// Auth and users

/// Exchanges app credentials and a user id for a platform user token.
#[utoipa::path(post, path = "/v1/token", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn exchange_token(
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
            s.store.upsert_user(&user).await?
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
async fn get_user(
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
async fn put_user(
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
    Ok(Json(s.store.upsert_user(&user).await?))
}

/// Logs the caller out everywhere: every token issued until now stops working.
#[utoipa::path(post, path = "/v1/me/revoke-tokens", tag = "users", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn revoke_my_tokens(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    s.store
        .revoke_user_tokens(caller.tenant(), caller.user(), now())
        .await?;
    s.auth.invalidate_user(caller.tenant(), caller.user());
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Conversations

/// Creates a direct, group or channel conversation. A direct conversation with the same person
/// is found, not created twice.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    request_body = CreateConversation,
    responses((status = 201, body = ConversationView), (status = 200, body = ConversationView), (status = 400, body = ErrorBody)))]
async fn create_conversation(
    State(s): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateConversation>,
) -> Result<(StatusCode, Json<ConversationView>), ApiError> {
    let me = caller.user().clone();
    let mut others: Vec<UserId> = req.members.into_iter().filter(|u| u != &me).collect();
    others.sort();
    others.dedup();
    if others.len() > model::MAX_INITIAL_MEMBERS {
        return Err(ApiError::invalid(format!(
            "at most {} members at creation",
            model::MAX_INITIAL_MEMBERS
        )));
    }
    for field in [("name", &req.name), ("topic", &req.topic)] {
        if let Some(v) = field.1 {
            model::validate_name(field.0, v)?;
        }
    }
    let id = match req.kind {
        ConversationKind::Direct => {
            if others.len() != 1 {
                return Err(ApiError::invalid(
                    "a direct conversation has exactly one other member",
                ));
            }
            if req.id.is_some() {
                return Err(ApiError::invalid("direct conversations have a derived id"));
            }
            ConversationId::direct(&me, &others[0])
        }
        _ => req.id.unwrap_or_else(ConversationId::generate),
    };
    for u in &others {
        if s.store.get_user(caller.tenant(), u).await?.is_none() {
            return Err(ApiError::invalid(format!("unknown user {u}")));
        }
    }
    let t = now();
    let conversation = Conversation {
        tenant_id: caller.tenant().clone(),
        id: id.clone(),
        kind: req.kind,
        name: req.name,
        topic: req.topic,
        created_by: me.clone(),
        created_at: t,
        updated_at: t,
        archived_at: None,
        last_message: None,
        member_count: 0,
    };
    let creator_role = if req.kind == ConversationKind::Direct {
        Role::Member
    } else {
        Role::Owner
    };
    let member = |user: &UserId, role| Member {
        tenant_id: caller.tenant().clone(),
        conversation_id: id.clone(),
        user_id: user.clone(),
        role,
        joined_at: t,
        last_read_position: -1,
        unread_count: 0,
    };
    let mut members = vec![member(&me, creator_role)];
    members.extend(others.iter().map(|u| member(u, Role::Member)));
    match s.store.create_conversation(&conversation, &members).await {
        Ok(()) => {}
        Err(caas_store::StoreError::AlreadyExists) if req.kind == ConversationKind::Direct => {
            let access = s.access(&caller, &id).await?;
            access.decide(&caller, Resource::Conversation, Action::Read, None)?;
            return Ok((
                StatusCode::OK,
                Json(ConversationView {
                    conversation: access.conversation,
                    membership: access.member,
                }),
            ));
        }
        Err(caas_store::StoreError::AlreadyExists) => {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                "a conversation with this id exists",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    for m in &members {
        let ev = ConversationEvent::MemberAdded(MemberChanged {
            user_id: m.user_id.clone(),
            role: Some(m.role),
            by: me.clone(),
            at: t,
        });
        s.announce(caller.tenant(), &id, &caller.correlation_id, ev)
            .await;
    }
    let stored = s
        .store
        .get_conversation(caller.tenant(), &id)
        .await?
        .unwrap_or(conversation);
    Ok((
        StatusCode::CREATED,
        Json(ConversationView {
            conversation: stored,
            membership: Some(members.remove(0)),
        }),
    ))
}

/// The caller's conversations, most recently active first, with unread counts and the last
/// message.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    params(ConversationListQuery), responses((status = 200, body = ConversationListView)))]
async fn list_conversations(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<ConversationListQuery>,
) -> Result<(HeaderMap, Json<ConversationListView>), ApiError> {
    if let Some(c) = &q.cursor
        && caas_store::decode_conversation_cursor(c).is_none()
    {
        return Err(ApiError::new(ErrorCode::InvalidCursor, "malformed cursor"));
    }
    let page = ConversationPage {
        cursor: q.cursor,
        limit: page_limit(q.limit, 50)?,
        include_archived: q.include_archived.unwrap_or(false),
    };
    let fresh = s.wait_all_persisted().await?;
    let list = s
        .store
        .list_user_conversations(caller.tenant(), caller.user(), &page)
        .await?;
    let view = ConversationListView {
        conversations: list
            .items
            .into_iter()
            .map(|(conversation, m)| ConversationView {
                conversation,
                membership: Some(m),
            })
            .collect(),
        next_cursor: list.next,
    };
    Ok((stale_headers(fresh), Json(view)))
}

/// One conversation.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = String, Path)), responses((status = 200, body = ConversationView), (status = 404, body = ErrorBody)))]
async fn get_conversation(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
) -> Result<Json<ConversationView>, ApiError> {
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Conversation, Action::Read, None)?;
    Ok(Json(ConversationView {
        conversation: access.conversation,
        membership: access.member,
    }))
}

/// Renames, changes the topic, archives or unarchives.
#[utoipa::path(patch, path = "/v1/conversations/{conversation_id}", tag = "conversations", security(("bearer" = [])),
    params(("conversation_id" = String, Path)), request_body = UpdateConversation,
    responses((status = 200, body = ConversationView), (status = 403, body = ErrorBody)))]
async fn update_conversation(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
    Json(req): Json<UpdateConversation>,
) -> Result<Json<ConversationView>, ApiError> {
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Conversation, Action::Update, None)?;
    if access.conversation.kind == ConversationKind::Direct
        && (req.name.is_some() || req.topic.is_some())
    {
        return Err(ApiError::invalid(
            "direct conversations have no name or topic",
        ));
    }
    for field in [("name", &req.name), ("topic", &req.topic)] {
        if let Some(v) = field.1 {
            model::validate_name(field.0, v)?;
        }
    }
    let t = now();
    let patch = ConversationPatch {
        name: req.name,
        topic: req.topic,
        archived_at: req.archived.map(|a| a.then_some(t)),
        updated_at: Some(t),
    };
    let conv = s
        .store
        .update_conversation(caller.tenant(), &id, &patch)
        .await?;
    if let Some(a) = req.archived {
        let action = if a {
            "conversation.archive"
        } else {
            "conversation.unarchive"
        };
        s.audit(
            caller.tenant(),
            &format!("user:{}", caller.user()),
            action,
            format!("conversation:{id}"),
            serde_json::json!({}),
        )
        .await;
    }
    let ev = ConversationEvent::ConversationUpdated(ConversationChanged {
        name: conv.name.clone(),
        topic: conv.topic.clone(),
        archived: conv.is_archived(),
        by: caller.user().clone(),
        at: t,
    });
    s.announce(caller.tenant(), &id, &caller.correlation_id, ev)
        .await;
    Ok(Json(ConversationView {
        conversation: conv,
        membership: access.member,
    }))
}

// ---------------------------------------------------------------------------------------------
// Members

/// Members, ordered by user id.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/members", tag = "members", security(("bearer" = [])),
    params(("conversation_id" = String, Path), MemberListQuery), responses((status = 200, body = MemberList)))]
async fn list_members(
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
async fn add_member(
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
async fn remove_member(
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
async fn change_role(
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
async fn mark_read(
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

// ---------------------------------------------------------------------------------------------
// Messages

/// Validates, renders and publishes a new message; the answer means it is durable in the log.
async fn accept(
    s: &AppState,
    caller: &Caller,
    access: &Access,
    text: String,
    client_msg_id: Option<String>,
    parent_id: Option<MessageId>,
    forwarded_from: Option<ForwardedFrom>,
) -> Result<Accepted, ApiError> {
    access.decide(
        caller,
        Resource::Message,
        Action::Create,
        Some(caller.user()),
    )?;
    model::validate_text(&text)?;
    if let Some(c) = &client_msg_id {
        model::validate_client_msg_id(c)?;
    }
    let conv = &access.conversation;
    if let Some(p) = parent_id {
        let parent = match s.store.get_message(caller.tenant(), &conv.id, &p).await? {
            Some(m) => Some(m),
            None if s.wait_persisted(&conv.id).await? => {
                s.store.get_message(caller.tenant(), &conv.id, &p).await?
            }
            None => None,
        };
        let parent = parent.ok_or_else(|| ApiError::not_found("parent message"))?;
        if parent.parent_id.is_some() {
            return Err(ApiError::invalid(
                "replies go to the thread's top-level message",
            ));
        }
    }
    s.rate_limit(caller, "msg").await?;

    let message_id = match &client_msg_id {
        Some(c) => MessageId::for_client_id(caller.tenant(), &conv.id, caller.user(), c),
        None => MessageId::generate(),
    };
    let dedupe_key = client_msg_id
        .as_ref()
        .map(|c| format!("{}:{}:{}:{c}", caller.tenant(), conv.id, caller.user()));
    if let Some(key) = &dedupe_key {
        if let Some(done) = reserve(s, key).await? {
            return Ok(done);
        }
        // Not in the de-duplication cache (restarted, or beyond its window): a send acked long
        // enough ago is in the store. One acked moments before a restart may still be on its way
        // there; publishing it again is harmless — same message id, stored once.
        if let Some(m) = s
            .store
            .get_message(caller.tenant(), &conv.id, &message_id)
            .await?
        {
            let partition = s.partition_of(&conv.id);
            let done = Accepted {
                position: m.position,
                partition,
                message: m,
            };
            complete(s, key, &done).await;
            return Ok(done);
        }
    }

    let rendered = caas_domain::text::render(&text);
    let mut mentions = Vec::new();
    for candidate in rendered.mentions.iter().take(20) {
        if let Ok(u) = UserId::parse(candidate.as_str())
            && s.store
                .get_member(caller.tenant(), &conv.id, &u)
                .await?
                .is_some()
        {
            mentions.push(u);
        }
    }
    let created_at = now();
    let event = MessageCreated {
        message_id,
        sender_id: caller.user().clone(),
        text: text.clone(),
        html: rendered.html.clone(),
        mentions: mentions.clone(),
        links: rendered.links.clone(),
        hashtags: rendered.hashtags.clone(),
        parent_id,
        client_msg_id: client_msg_id.clone(),
        forwarded_from: forwarded_from.clone(),
        created_at,
    };
    let published = s
        .publish(
            caller.tenant(),
            &conv.id,
            &caller.correlation_id,
            ConversationEvent::MessageCreated(event),
        )
        .await;
    let pos = match published {
        Ok(p) => p,
        Err(e) => {
            if let Some(key) = &dedupe_key
                && let Err(err) = s.dedupe.release(key).await
            {
                tracing::warn!(error = %err, "Failed to release a send reservation.");
            }
            return Err(e);
        }
    };
    let message = Message {
        tenant_id: caller.tenant().clone(),
        conversation_id: conv.id.clone(),
        id: message_id,
        position: pos.offset,
        sender_id: caller.user().clone(),
        text,
        html: rendered.html,
        mentions,
        links: rendered.links,
        hashtags: rendered.hashtags,
        parent_id,
        reply_count: 0,
        reactions: BTreeMap::new(),
        client_msg_id,
        forwarded_from,
        created_at,
        edited_at: None,
        deleted_at: None,
        deleted_by: None,
    };
    let done = Accepted {
        message,
        partition: pos.partition,
        position: pos.offset,
    };
    if let Some(key) = &dedupe_key {
        complete(s, key, &done).await;
    }
    Ok(done)
}

/// Reserves a client message id. `Some` when the send was already done.
async fn reserve(s: &AppState, key: &str) -> Result<Option<Accepted>, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match s.dedupe.reserve(key).await.map_err(ApiError::unavailable)? {
            Reservation::Fresh => return Ok(None),
            Reservation::Done(v) => {
                return serde_json::from_str(&v)
                    .map(Some)
                    .map_err(ApiError::internal);
            }
            Reservation::InFlight if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Reservation::InFlight => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "a send with this client_msg_id is in progress; retry",
                ));
            }
        }
    }
}

async fn complete(s: &AppState, key: &str, done: &Accepted) {
    let ttl = Duration::from_secs(s.config.limits.dedupe_window_secs);
    match serde_json::to_string(done) {
        Ok(v) => {
            if let Err(e) = s.dedupe.complete(key, &v, ttl).await {
                tracing::warn!(error = %e, "Failed to remember a send for de-duplication.");
            }
        }
        Err(e) => tracing::error!(error = %e, "Failed to encode a send result."),
    }
}

/// Sends a message (or a thread reply with `parent_id`). Idempotent with `client_msg_id`.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/messages", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path)), request_body = SendMessage,
    responses((status = 201, body = Accepted), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn send_message(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
    Json(req): Json<SendMessage>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let access = s.access(&caller, &id).await?;
    let done = accept(
        &s,
        &caller,
        &access,
        req.text,
        req.client_msg_id,
        req.parent_id,
        None,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(done)))
}

fn stale_headers(fresh: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        CONSISTENCY_HEADER,
        HeaderValue::from_static(if fresh { "fresh" } else { "stale" }),
    );
    h
}

async fn list_page(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    thread: Thread,
    q: MessageListQuery,
) -> Result<impl IntoResponse + use<>, ApiError> {
    let limit = page_limit(q.limit, 50)?;
    let page = match (q.before, q.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidCursor,
                "give `before` or `after`, not both",
            ));
        }
        (Some(p), None) => MessagePage::Before { position: p, limit },
        (None, Some(p)) => MessagePage::After { position: p, limit },
        (None, None) => MessagePage::Latest { limit },
    };
    let fresh = s.wait_persisted(id).await?;
    let messages: Vec<Message> = s
        .store
        .list_messages(caller.tenant(), id, thread, page)
        .await?
        .into_iter()
        .map(Message::redacted)
        .collect();
    let has_more = messages.len() as u32 == limit;
    Ok((
        stale_headers(fresh),
        Json(MessageListView { messages, has_more }),
    ))
}

/// Top-level messages in position order. Without `before`/`after`: the newest page.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path), MessageListQuery),
    responses((status = 200, body = MessageListView), (status = 404, body = ErrorBody)))]
async fn list_messages(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
    Query(q): Query<MessageListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Message, Action::Read, None)?;
    list_page(&s, &caller, &id, Thread::TopLevel, q).await
}

/// Replies of a thread in position order.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages/{message_id}/replies", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("message_id" = String, Path), MessageListQuery),
    responses((status = 200, body = MessageListView), (status = 404, body = ErrorBody)))]
async fn list_replies(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, mid)): Path<(ConversationId, MessageId)>,
    Query(q): Query<MessageListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Message, Action::Read, None)?;
    load_message(&s, &caller, &id, &mid).await?;
    list_page(&s, &caller, &id, Thread::Replies(mid), q).await
}

/// Loads a message after waiting for persistence of what was published before.
async fn load_message(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    mid: &MessageId,
) -> Result<Message, ApiError> {
    s.wait_persisted(id).await?;
    s.store
        .get_message(caller.tenant(), id, mid)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))
}

/// One message.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages/{message_id}", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("message_id" = String, Path)),
    responses((status = 200, body = Message), (status = 404, body = ErrorBody)))]
async fn get_message(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, mid)): Path<(ConversationId, MessageId)>,
) -> Result<Json<Message>, ApiError> {
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Message, Action::Read, None)?;
    Ok(Json(load_message(&s, &caller, &id, &mid).await?.redacted()))
}

/// Edits the caller's own message.
#[utoipa::path(patch, path = "/v1/conversations/{conversation_id}/messages/{message_id}", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("message_id" = String, Path)), request_body = EditMessage,
    responses((status = 200, body = Accepted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn edit_message(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, mid)): Path<(ConversationId, MessageId)>,
    Json(req): Json<EditMessage>,
) -> Result<Json<Accepted>, ApiError> {
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Message, Action::Read, None)?;
    let mut msg = load_message(&s, &caller, &id, &mid).await?;
    access.decide(
        &caller,
        Resource::Message,
        Action::Update,
        Some(&msg.sender_id),
    )?;
    if msg.deleted_at.is_some() {
        return Err(ApiError::not_found("message"));
    }
    model::validate_text(&req.text)?;
    s.rate_limit(&caller, "msg").await?;
    let rendered = caas_domain::text::render(&req.text);
    let mut mentions = Vec::new();
    for candidate in rendered.mentions.iter().take(20) {
        if let Ok(u) = UserId::parse(candidate.as_str())
            && s.store
                .get_member(caller.tenant(), &id, &u)
                .await?
                .is_some()
        {
            mentions.push(u);
        }
    }
    let t = now();
    let ev = ConversationEvent::MessageUpdated(MessageUpdated {
        message_id: mid,
        editor_id: caller.user().clone(),
        text: req.text.clone(),
        html: rendered.html.clone(),
        mentions: mentions.clone(),
        links: rendered.links.clone(),
        hashtags: rendered.hashtags.clone(),
        edited_at: t,
    });
    let pos = s
        .publish(caller.tenant(), &id, &caller.correlation_id, ev)
        .await?;
    msg.text = req.text;
    msg.html = rendered.html;
    msg.mentions = mentions;
    msg.links = rendered.links;
    msg.hashtags = rendered.hashtags;
    msg.edited_at = Some(t);
    Ok(Json(Accepted {
        message: msg,
        partition: pos.partition,
        position: pos.offset,
    }))
}

/// Deletes a message (soft): its author, or a moderator and up.
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/messages/{message_id}", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("message_id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_message(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, mid)): Path<(ConversationId, MessageId)>,
) -> Result<StatusCode, ApiError> {
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Message, Action::Read, None)?;
    let msg = load_message(&s, &caller, &id, &mid).await?;
    access.decide(
        &caller,
        Resource::Message,
        Action::Delete,
        Some(&msg.sender_id),
    )?;
    if msg.deleted_at.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let ev = ConversationEvent::MessageDeleted(MessageDeleted {
        message_id: mid,
        deleted_by: caller.user().clone(),
        deleted_at: now(),
    });
    s.publish(caller.tenant(), &id, &caller.correlation_id, ev)
        .await?;
    if &msg.sender_id != caller.user() {
        s.audit(
            caller.tenant(),
            &format!("user:{}", caller.user()),
            "message.delete_by_moderator",
            format!("conversation:{id}/message:{mid}"),
            serde_json::json!({"sender_id": msg.sender_id}),
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Forwards a message into another conversation the caller may write to.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/messages/{message_id}/forward", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("message_id" = String, Path)), request_body = ForwardMessage,
    responses((status = 201, body = Accepted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn forward_message(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, mid)): Path<(ConversationId, MessageId)>,
    Json(req): Json<ForwardMessage>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let source = s.access(&caller, &id).await?;
    source.decide(&caller, Resource::Message, Action::Read, None)?;
    let msg = load_message(&s, &caller, &id, &mid).await?;
    if msg.deleted_at.is_some() {
        return Err(ApiError::not_found("message"));
    }
    let target = s.access(&caller, &req.conversation_id).await?;
    let from = ForwardedFrom {
        conversation_id: id,
        message_id: mid,
        sender_id: msg.sender_id.clone(),
    };
    let done = accept(
        &s,
        &caller,
        &target,
        msg.text,
        req.client_msg_id,
        None,
        Some(from),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(done)))
}

/// Adds the caller's reaction.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/messages/{message_id}/reactions", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("message_id" = String, Path)), request_body = AddReaction,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_reaction(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, mid)): Path<(ConversationId, MessageId)>,
    Json(req): Json<AddReaction>,
) -> Result<StatusCode, ApiError> {
    model::validate_reaction(&req.kind)?;
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Message, Action::Read, None)?;
    access.decide(
        &caller,
        Resource::Reaction,
        Action::Create,
        Some(caller.user()),
    )?;
    let msg = load_message(&s, &caller, &id, &mid).await?;
    if msg.deleted_at.is_some() {
        return Err(ApiError::not_found("message"));
    }
    s.rate_limit(&caller, "msg").await?;
    let ev = ConversationEvent::ReactionAdded(ReactionChanged {
        message_id: mid,
        user_id: caller.user().clone(),
        kind: req.kind,
        at: now(),
    });
    s.publish(caller.tenant(), &id, &caller.correlation_id, ev)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the caller's reaction (moderators: anyone's, with `user_id`).
#[utoipa::path(delete, path = "/v1/conversations/{conversation_id}/messages/{message_id}/reactions/{kind}", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path), ("message_id" = String, Path), ("kind" = String, Path), ReactionQuery),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_reaction(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, mid, kind)): Path<(ConversationId, MessageId, String)>,
    Query(q): Query<ReactionQuery>,
) -> Result<StatusCode, ApiError> {
    model::validate_reaction(&kind)?;
    let access = s.access(&caller, &id).await?;
    access.decide(&caller, Resource::Message, Action::Read, None)?;
    let user = q.user_id.unwrap_or_else(|| caller.user().clone());
    access.decide(&caller, Resource::Reaction, Action::Delete, Some(&user))?;
    load_message(&s, &caller, &id, &mid).await?;
    let ev = ConversationEvent::ReactionRemoved(ReactionChanged {
        message_id: mid,
        user_id: user.clone(),
        kind,
        at: now(),
    });
    s.publish(caller.tenant(), &id, &caller.correlation_id, ev)
        .await?;
    if &user != caller.user() {
        s.audit(
            caller.tenant(),
            &format!("user:{}", caller.user()),
            "reaction.remove_by_moderator",
            format!("conversation:{id}/message:{mid}/user:{user}"),
            serde_json::json!({}),
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
}
