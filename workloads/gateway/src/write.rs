//! The write path, free of any transport: every change a user makes to a conversation (send,
//! edit, delete, react, read markers, membership), authorized and validated the same way
//! whether it arrives over REST ([`crate::routes`]) or over a socket (`caas-socket`).
//!
//! Message changes are published to the conversation-events log and acknowledged once the log
//! has them durably (the pipeline persists them). Membership and read markers are written to the
//! store, then announced on the log so that every consumer (socket fan-out, search) sees them in
//! log order.

use crate::api::Accepted;
use crate::state::{Access, AppState, Caller};
use caas_bus::{LogPosition, topics};
use caas_domain::event::{
    ConversationEvent, MemberChanged, MessageCreated, MessageDeleted, MessageUpdated,
    ReactionChanged, ReadUpdated,
};
use caas_domain::model::{self, ForwardedFrom, Member, Message, Role};
use caas_domain::permission::{Action, Resource};
use caas_domain::{ConversationId, ErrorCode, MessageId, UserId};
use caas_kit::dedupe::Reservation;
use caas_kit::error::ApiError;
use std::time::Duration;
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A new message.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub text: String,
    /// The client's id of this send: a retried send with the same id is one message.
    pub client_msg_id: Option<String>,
    /// A thread reply to this top-level message.
    pub parent_id: Option<MessageId>,
    /// Media ids of files the sender uploaded to this conversation (at most 10); a message with
    /// files may have no text.
    pub attachments: Vec<String>,
}

/// Sends a message (or a thread reply); the answer means it is durable in the log.
pub async fn send(
    s: &AppState,
    caller: &Caller,
    conversation: &ConversationId,
    new: NewMessage,
) -> Result<Accepted, ApiError> {
    let access = s.access(caller, conversation).await?;
    accept(s, caller, &access, new, None).await
}

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
    new: NewMessage,
    forwarded_from: Option<ForwardedFrom>,
) -> Result<Accepted, ApiError> {
    let NewMessage {
        text,
        client_msg_id,
        parent_id,
        attachments,
    } = new;
    access.decide(
        caller,
        Resource::Message,
        Action::Create,
        Some(caller.user()),
    )?;
    model::validate_body(&text, !attachments.is_empty())?;
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

    let attachments = attached_files(s, caller, &conv.id, &attachments).await?;
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
        forwarded_from,
        attachments,
        created_at,
    };
    let message = event.to_message(caller.tenant(), &conv.id, 0);
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
        position: pos.offset,
        ..message
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

/// The files a message names, checked against the media metadata: each must be a live file
/// the sender uploaded to this conversation (see [`caas_media::attach::validate`]).
async fn attached_files(
    s: &AppState,
    caller: &Caller,
    conversation: &ConversationId,
    ids: &[String],
) -> Result<Vec<model::Attachment>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    caas_media::attach::validate(&*s.media, caller.tenant(), conversation, caller.user(), ids)
        .await
        .map_err(|e| match e.shared {
            Some(ErrorCode::Unavailable) => ApiError::unavailable(e.message),
            Some(code) => ApiError::new(code, e.message),
            None => ApiError::internal(e.message),
        })
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

/// Edits the caller's own message.
pub async fn edit(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    mid: MessageId,
    text: String,
) -> Result<Accepted, ApiError> {
    let access = s.access(caller, id).await?;
    access.decide(caller, Resource::Message, Action::Read, None)?;
    let mut msg = load_message(s, caller, id, &mid).await?;
    access.decide(
        caller,
        Resource::Message,
        Action::Update,
        Some(&msg.sender_id),
    )?;
    if msg.deleted_at.is_some() {
        return Err(ApiError::not_found("message"));
    }
    model::validate_text(&text)?;
    s.rate_limit(caller, "msg").await?;
    let rendered = caas_domain::text::render(&text);
    let mentions = member_mentions(s, caller, id, &rendered.mentions).await?;
    let t = now();
    let ev = ConversationEvent::MessageUpdated(MessageUpdated {
        message_id: mid,
        editor_id: caller.user().clone(),
        text: text.clone(),
        html: rendered.html.clone(),
        mentions: mentions.clone(),
        links: rendered.links.clone(),
        hashtags: rendered.hashtags.clone(),
        edited_at: t,
    });
    let pos = s
        .publish(caller.tenant(), id, &caller.correlation_id, ev)
        .await?;
    msg.text = text;
    msg.html = rendered.html;
    msg.mentions = mentions;
    msg.links = rendered.links;
    msg.hashtags = rendered.hashtags;
    msg.edited_at = Some(t);
    Ok(Accepted {
        message: msg,
        partition: pos.partition,
        position: pos.offset,
    })
}

/// Deletes a message (soft): its author, or a moderator and up. `None` when it was already
/// deleted (nothing published).
pub async fn delete(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    mid: MessageId,
) -> Result<Option<LogPosition>, ApiError> {
    let access = s.access(caller, id).await?;
    access.decide(caller, Resource::Message, Action::Read, None)?;
    let msg = load_message(s, caller, id, &mid).await?;
    access.decide(
        caller,
        Resource::Message,
        Action::Delete,
        Some(&msg.sender_id),
    )?;
    if msg.deleted_at.is_some() {
        return Ok(None);
    }
    let ev = ConversationEvent::MessageDeleted(MessageDeleted {
        message_id: mid,
        deleted_by: caller.user().clone(),
        deleted_at: now(),
    });
    let pos = s
        .publish(caller.tenant(), id, &caller.correlation_id, ev)
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
    Ok(Some(pos))
}

/// Adds the caller's reaction.
pub async fn add_reaction(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    mid: MessageId,
    kind: String,
) -> Result<LogPosition, ApiError> {
    model::validate_reaction(&kind)?;
    let access = s.access(caller, id).await?;
    access.decide(caller, Resource::Message, Action::Read, None)?;
    access.decide(
        caller,
        Resource::Reaction,
        Action::Create,
        Some(caller.user()),
    )?;
    let msg = load_message(s, caller, id, &mid).await?;
    if msg.deleted_at.is_some() {
        return Err(ApiError::not_found("message"));
    }
    s.rate_limit(caller, "msg").await?;
    let ev = ConversationEvent::ReactionAdded(ReactionChanged {
        message_id: mid,
        user_id: caller.user().clone(),
        kind,
        at: now(),
    });
    s.publish(caller.tenant(), id, &caller.correlation_id, ev)
        .await
}

/// Removes the caller's reaction (moderators: anyone's, with `user`).
pub async fn remove_reaction(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    mid: MessageId,
    kind: String,
    user: Option<UserId>,
) -> Result<LogPosition, ApiError> {
    model::validate_reaction(&kind)?;
    let access = s.access(caller, id).await?;
    access.decide(caller, Resource::Message, Action::Read, None)?;
    let user = user.unwrap_or_else(|| caller.user().clone());
    access.decide(caller, Resource::Reaction, Action::Delete, Some(&user))?;
    load_message(s, caller, id, &mid).await?;
    let ev = ConversationEvent::ReactionRemoved(ReactionChanged {
        message_id: mid,
        user_id: user.clone(),
        kind,
        at: now(),
    });
    let pos = s
        .publish(caller.tenant(), id, &caller.correlation_id, ev)
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
    Ok(pos)
}

/// Moves the caller's read marker forward (to the newest message without `position`) and
/// returns the membership with its unread count.
pub async fn mark_read(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    position: Option<i64>,
) -> Result<Member, ApiError> {
    let access = s.access(caller, id).await?;
    access.decide(
        caller,
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
        .high_watermark(topics::CONVERSATION_EVENTS, s.partition_of(id))
        .await?
        - 1;
    let position = match position {
        Some(p) if p < -1 => return Err(ApiError::invalid("position must be >= -1")),
        Some(p) => p.min(head),
        None => head,
    };
    // Count against what was published before: the unread count is exact once stored.
    s.wait_persisted(id).await?;
    let member = s
        .store
        .mark_read(caller.tenant(), id, caller.user(), position)
        .await?;
    let ev = ConversationEvent::ReadUpdated(ReadUpdated {
        user_id: caller.user().clone(),
        position: member.last_read_position,
        at: now(),
    });
    s.announce(caller.tenant(), id, &caller.correlation_id, ev)
        .await;
    Ok(member)
}

/// Adds a member (owners and admins), or joins a channel (anyone, for themselves).
pub async fn add_member(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    user_id: UserId,
    role: Option<Role>,
) -> Result<Member, ApiError> {
    let access = s.access(caller, id).await?;
    let role = role.unwrap_or(Role::Member);
    let new_role = (role != Role::Member).then_some(role);
    access.decide_member(
        caller,
        Resource::Member,
        Action::Create,
        Some(&user_id),
        None,
        new_role,
    )?;
    if s.store.get_user(caller.tenant(), &user_id).await?.is_none() {
        return Err(ApiError::invalid(format!("unknown user {user_id}")));
    }
    let t = now();
    let member = Member {
        tenant_id: caller.tenant().clone(),
        conversation_id: id.clone(),
        user_id: user_id.clone(),
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
            format!("conversation:{id}/user:{user_id}"),
            serde_json::json!({"role": role}),
        )
        .await;
    }
    let ev = ConversationEvent::MemberAdded(MemberChanged {
        user_id,
        role: Some(role),
        by: caller.user().clone(),
        at: t,
    });
    s.announce(caller.tenant(), id, &caller.correlation_id, ev)
        .await;
    Ok(member)
}

/// Removes a member (moderators and up, by rank), or leaves (anyone, for themselves).
pub async fn remove_member(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    user_id: UserId,
) -> Result<(), ApiError> {
    let access = s.access(caller, id).await?;
    let target = s.store.get_member(caller.tenant(), id, &user_id).await?;
    access.decide_member(
        caller,
        Resource::Member,
        Action::Delete,
        Some(&user_id),
        target.as_ref().map(|m| m.role),
        None,
    )?;
    if target.is_none() {
        return Err(ApiError::not_found("member"));
    }
    s.store.remove_member(caller.tenant(), id, &user_id).await?;
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
    s.announce(caller.tenant(), id, &caller.correlation_id, ev)
        .await;
    Ok(())
}

/// Changes a member's role (owners and admins, below their own rank).
pub async fn change_role(
    s: &AppState,
    caller: &Caller,
    id: &ConversationId,
    user_id: UserId,
    role: Role,
) -> Result<Member, ApiError> {
    let access = s.access(caller, id).await?;
    let target = s.store.get_member(caller.tenant(), id, &user_id).await?;
    access.decide_member(
        caller,
        Resource::Member,
        Action::Update,
        Some(&user_id),
        target.as_ref().map(|m| m.role),
        Some(role),
    )?;
    let Some(mut target) = target else {
        return Err(ApiError::not_found("member"));
    };
    s.store
        .set_member_role(caller.tenant(), id, &user_id, role)
        .await?;
    s.audit(
        caller.tenant(),
        &format!("user:{}", caller.user()),
        "member.role_change",
        format!("conversation:{id}/user:{user_id}"),
        serde_json::json!({"from": target.role, "to": role}),
    )
    .await;
    target.role = role;
    let ev = ConversationEvent::MemberUpdated(MemberChanged {
        user_id,
        role: Some(role),
        by: caller.user().clone(),
        at: now(),
    });
    s.announce(caller.tenant(), id, &caller.correlation_id, ev)
        .await;
    Ok(target)
}
