//! Conversations: create, list mine, get, update and archive.

use crate::api::*;
use crate::state::{AppState, Caller};
use axum::extract::State;
use caas_domain::event::{ConversationChanged, ConversationEvent, MemberChanged};
use caas_domain::model::{self, Conversation, ConversationKind, Member, Role};
use caas_domain::permission::{Action, Resource};
use caas_domain::{ConversationId, ErrorCode, UserId};
use caas_kit::error::{ApiError, ErrorBody, Json, Path, Query};
use caas_store::{ConversationPage, ConversationPatch};
use http::{HeaderMap, StatusCode};

use super::{now, page_limit, stale_headers};

/// Creates a direct, group or channel conversation. A direct conversation with the same person
/// is found, not created twice.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    request_body = CreateConversation,
    responses((status = 201, body = ConversationView), (status = 200, body = ConversationView), (status = 400, body = ErrorBody)))]
pub(crate) async fn create_conversation(
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
pub(crate) async fn list_conversations(
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
pub(crate) async fn get_conversation(
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
pub(crate) async fn update_conversation(
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
