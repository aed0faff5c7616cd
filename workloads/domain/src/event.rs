//! Conversation events: what travels on the conversation-events log, keyed by conversation id.
//! The accepter (gateway or socket) validates, renders and authorizes, then publishes one of
//! these; the pipeline persists it, socket pods fan it out, search indexes it — all in log order.
//!
//! The JSON form (`{"type": "message.created", ...}`) is a public contract between workloads of
//! different versions: add optional fields only; anything else is a new `type`.

use crate::ids::{ConversationId, MessageId, TenantId, UserId};
use crate::model::{Attachment, ForwardedFrom, Message, Position, Role};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Version of the payload schema, carried in the envelope.
pub const SCHEMA_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ConversationEvent {
    #[serde(rename = "message.created")]
    MessageCreated(MessageCreated),
    #[serde(rename = "message.updated")]
    MessageUpdated(MessageUpdated),
    #[serde(rename = "message.deleted")]
    MessageDeleted(MessageDeleted),
    #[serde(rename = "reaction.added")]
    ReactionAdded(ReactionChanged),
    #[serde(rename = "reaction.removed")]
    ReactionRemoved(ReactionChanged),
    #[serde(rename = "read.updated")]
    ReadUpdated(ReadUpdated),
    #[serde(rename = "member.added")]
    MemberAdded(MemberChanged),
    #[serde(rename = "member.removed")]
    MemberRemoved(MemberChanged),
    #[serde(rename = "member.updated")]
    MemberUpdated(MemberChanged),
    #[serde(rename = "conversation.updated")]
    ConversationUpdated(ConversationChanged),
    /// A member's profile changed (name, image): announced on each of the user's
    /// conversations, for members' screens and search.
    #[serde(rename = "user.updated")]
    UserUpdated(UserChanged),
    /// The pipeline refused a `message.created` that is on the log (e.g. the sender left the
    /// conversation before it was stored): it is not stored, and whoever showed or indexed it
    /// from the log takes it back.
    #[serde(rename = "message.rejected")]
    MessageRejected(MessageRejected),
}

impl ConversationEvent {
    /// The `type` string, also carried as a log header.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::MessageCreated(_) => "message.created",
            Self::MessageUpdated(_) => "message.updated",
            Self::MessageDeleted(_) => "message.deleted",
            Self::ReactionAdded(_) => "reaction.added",
            Self::ReactionRemoved(_) => "reaction.removed",
            Self::ReadUpdated(_) => "read.updated",
            Self::MemberAdded(_) => "member.added",
            Self::MemberRemoved(_) => "member.removed",
            Self::MemberUpdated(_) => "member.updated",
            Self::ConversationUpdated(_) => "conversation.updated",
            Self::UserUpdated(_) => "user.updated",
            Self::MessageRejected(_) => "message.rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageCreated {
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub text: String,
    pub html: String,
    #[serde(default)]
    pub mentions: Vec<UserId>,
    #[serde(default)]
    pub links: Vec<String>,
    #[serde(default)]
    pub hashtags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_from: Option<ForwardedFrom>,
    /// Files the gateway checked (the sender's own, live, in this conversation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl MessageCreated {
    /// The message this event creates, as stored and as returned to the sender: `position` is
    /// the event's log offset (the conversation's order).
    pub fn to_message(
        &self,
        tenant_id: &TenantId,
        conversation_id: &ConversationId,
        position: Position,
    ) -> Message {
        Message {
            tenant_id: tenant_id.clone(),
            conversation_id: conversation_id.clone(),
            id: self.message_id,
            position,
            sender_id: self.sender_id.clone(),
            text: self.text.clone(),
            html: self.html.clone(),
            mentions: self.mentions.clone(),
            links: self.links.clone(),
            hashtags: self.hashtags.clone(),
            parent_id: self.parent_id,
            reply_count: 0,
            reactions: Default::default(),
            client_msg_id: self.client_msg_id.clone(),
            forwarded_from: self.forwarded_from.clone(),
            attachments: self.attachments.clone(),
            created_at: self.created_at,
            edited_at: None,
            deleted_at: None,
            deleted_by: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageUpdated {
    pub message_id: MessageId,
    pub editor_id: UserId,
    pub text: String,
    pub html: String,
    #[serde(default)]
    pub mentions: Vec<UserId>,
    #[serde(default)]
    pub links: Vec<String>,
    #[serde(default)]
    pub hashtags: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub edited_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageDeleted {
    pub message_id: MessageId,
    pub deleted_by: UserId,
    #[serde(with = "time::serde::rfc3339")]
    pub deleted_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReactionChanged {
    pub message_id: MessageId,
    pub user_id: UserId,
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadUpdated {
    pub user_id: UserId,
    pub position: Position,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberChanged {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub by: UserId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationChanged {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub archived: bool,
    pub by: UserId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A message the pipeline refused, with the stable code of why (`not_member`,
/// `tenant_suspended`, `text_empty`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRejected {
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub code: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A user's profile as it now is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserChanged {
    pub user_id: UserId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_tagged_and_round_trips() {
        let e = ConversationEvent::ReactionAdded(ReactionChanged {
            message_id: MessageId::generate(),
            user_id: UserId::parse("u").unwrap(),
            kind: "👍".into(),
            at: OffsetDateTime::UNIX_EPOCH,
        });
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.starts_with("{\"type\":\"reaction.added\""), "{s}");
        assert_eq!(serde_json::from_str::<ConversationEvent>(&s).unwrap(), e);
        assert_eq!(e.type_name(), "reaction.added");
    }
}
