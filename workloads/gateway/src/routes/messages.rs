//! Messages: the REST face of the write path ([`crate::write`]: send, thread reply, forward,
//! edit, delete, reactions) and the reads that wait for persistence (list, replies, get).

use crate::api::*;
use crate::state::{AppState, Caller};
use crate::write::{self, NewMessage, load_message};
use axum::extract::State;
use axum::response::IntoResponse;
use caas_domain::model::{ForwardedFrom, Message};
use caas_domain::permission::{Action, Resource};
use caas_domain::{ConversationId, ErrorCode, MessageId};
use caas_kit::error::{ApiError, ErrorBody, Json, Path, Query};
use caas_store::{MessagePage, Thread};
use http::StatusCode;

use super::{page_limit, stale_headers};

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
    let done = write::send(
        &s,
        &caller,
        &id,
        NewMessage {
            text: req.text,
            client_msg_id: req.client_msg_id,
            parent_id: req.parent_id,
            attachments: req.attachments,
        },
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
    Ok(Json(write::edit(&s, &caller, &id, mid, req.text).await?))
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
    write::delete(&s, &caller, &id, mid).await?;
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
    if msg.text.trim().is_empty() && !msg.attachments.is_empty() {
        // Files belong to the conversation they were uploaded to; copying them is not built.
        return Err(ApiError::new(
            ErrorCode::InvalidAttachment,
            "this message has only files, and files cannot be forwarded; upload them to the other conversation",
        ));
    }
    let new = NewMessage {
        text: msg.text,
        client_msg_id: req.client_msg_id,
        ..NewMessage::default()
    };
    let done = write::accept(&s, &caller, &target, new, Some(from)).await?;
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
    write::add_reaction(&s, &caller, &id, mid, req.kind).await?;
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
    write::remove_reaction(&s, &caller, &id, mid, kind, q.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
