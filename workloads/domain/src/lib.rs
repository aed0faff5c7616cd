//! The chat model of caas, pure: no I/O, no async, no clocks (callers pass `now`).
//!
//! - [`ids`]: validated identifiers (tenant, user, conversation, message).
//! - [`error`]: [`DomainError`] with a stable machine-readable [`ErrorCode`].
//! - [`model`]: tenants, users, conversations, members, messages, reactions.
//! - [`permission`]: the deny-by-default matrix (role x resource x action) plus membership and
//!   ownership rules.
//! - [`text`]: sanitising and extracting mentions, links and hashtags.
//! - [`event`]: the conversation events that travel on the log.

pub mod error;
pub mod event;
pub mod ids;
pub mod model;
pub mod permission;
pub mod text;

pub use error::{DomainError, ErrorCode};
pub use ids::{ConversationId, MessageId, TenantId, UserId};
