//! Request and response bodies of the public API. Requests refuse unknown fields.

use caas_domain::model::{Conversation, ConversationKind, Member, Message, Position, Role, User};
use caas_domain::{ConversationId, MessageId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub app_id: String,
    pub app_secret: String,
    pub user_id: UserId,
    /// Creates or updates the user's profile on the way.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub token_type: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub user: User,
    /// Where the realtime clients connect.
    pub socket_urls: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpsert {
    pub name: String,
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    pub kind: ConversationKind,
    /// Chosen by the app; generated when absent. Direct conversations have a derived id.
    #[serde(default)]
    pub id: Option<ConversationId>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    /// Other members (the creator is added as owner).
    #[serde(default)]
    pub members: Vec<UserId>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversation {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub archived: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationView {
    pub conversation: Conversation,
    /// The caller's membership; absent for a channel the caller has not joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership: Option<Member>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationListView {
    pub conversations: Vec<ConversationView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConversationListQuery {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
    pub include_archived: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub user_id: UserId,
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MemberListQuery {
    pub cursor: Option<UserId>,
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The text (may be empty when the message carries files).
    #[serde(default)]
    pub text: String,
    /// Makes the send idempotent: a retry with the same id is the same message.
    #[serde(default)]
    pub client_msg_id: Option<String>,
    /// Replies in the thread of this top-level message.
    #[serde(default)]
    pub parent_id: Option<MessageId>,
    /// Ids of files uploaded to this conversation through `/v1/media` by the sender (at most
    /// 10). With files the text may be empty.
    #[serde(default)]
    pub attachments: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    pub text: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardMessage {
    pub conversation_id: ConversationId,
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddReaction {
    pub kind: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// Everything up to this position is read; absent: everything published so far.
    #[serde(default)]
    pub position: Option<Position>,
}

/// The answer to a write that went to the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub message: Message,
    /// Where the event is in the log: the resume cursor of realtime clients.
    pub partition: i32,
    pub position: Position,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MessageListQuery {
    /// Messages strictly before this position (older).
    pub before: Option<Position>,
    /// Messages strictly after this position (newer).
    pub after: Option<Position>,
    /// 1-200, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageListView {
    /// In ascending position order.
    pub messages: Vec<Message>,
    /// Whether a page in the requested direction may follow.
    pub has_more: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReactionQuery {
    /// Moderators may remove another user's reaction.
    pub user_id: Option<UserId>,
}
