//! Messages: the write path to the log (send, thread reply, forward, edit, delete,
//! reactions) and the reads that wait for persistence (list, replies, get).

use crate::api::*;
use crate::state::{Access, AppState, Caller};
use axum::extract::State;
use axum::response::IntoResponse;
use caas_domain::event::{
    ConversationEvent, MessageCreated, MessageDeleted, MessageUpdated, ReactionChanged,
};
use caas_domain::model::{self, ForwardedFrom, Message};
use caas_domain::permission::{Action, Resource};
use caas_domain::{ConversationId, ErrorCode, MessageId, UserId};
use caas_kit::dedupe::Reservation;
use caas_kit::error::{ApiError, ErrorBody, Json, Path, Query};
use caas_store::{MessagePage, Thread};
use http::StatusCode;
use std::collections::BTreeMap;
use std::time::Duration;

use super::{now, page_limit, stale_headers};

/// The mentioned candidates that are members of the conversation (at most the first 20).
async fn member_mentions(
    s: &AppState,
    caller: &Caller,
    conversation: &ConversationId,
    candidates: &[String],
) -> Result<Vec<UserId>, ApiError> {
    let mut mentions = Vec::new();
    for candidate in candidates.iter().take(20) {
        if let Ok(u) = UserId::parse(candidate.as_str())
            && s.store
                .get_member(caller.tenant(), conversation, &u)
                .await?
                .is_some()
        {
            mentions.push(u);
        }
    }
    Ok(mentions)
}

/// Validates, renders and publishes a new message; the answer means it is durable in the log.
pub(crate) async fn accept(
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
    let mentions = member_mentions(s, caller, &conv.id, &rendered.mentions).await?;
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
pub(crate) async fn reserve(s: &AppState, key: &str) -> Result<Option<Accepted>, ApiError> {
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

pub(crate) async fn complete(s: &AppState, key: &str, done: &Accepted) {
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
pub(crate) async fn send_message(
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

pub(crate) async fn list_page(
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
pub(crate) async fn list_messages(
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
pub(crate) async fn list_replies(
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
pub(crate) async fn load_message(
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
pub(crate) async fn get_message(
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
pub(crate) async fn edit_message(
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
    let mentions = member_mentions(&s, &caller, &id, &rendered.mentions).await?;
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
pub(crate) async fn delete_message(
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
pub(crate) async fn forward_message(
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
pub(crate) async fn add_reaction(
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
pub(crate) async fn remove_reaction(
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
