//! Handlers of the public API (`/v1`). Each handler: authenticate ([`Caller`]), load and
//! authorize ([`AppState::access`] + the permission matrix), validate, then either write the
//! store (users, conversations, members, read markers) or publish to the log (messages).

mod conversations;
mod members;
mod messages;
mod users;

use crate::state::{AppState, CONSISTENCY_HEADER};
use caas_kit::error::ApiError;
use http::{HeaderMap, HeaderValue};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The public routes with their OpenAPI operations.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(users::exchange_token))
        .routes(routes!(users::get_user, users::put_user))
        .routes(routes!(users::revoke_my_tokens))
        .routes(routes!(
            conversations::create_conversation,
            conversations::list_conversations
        ))
        .routes(routes!(
            conversations::get_conversation,
            conversations::update_conversation
        ))
        .routes(routes!(members::list_members, members::add_member))
        .routes(routes!(members::remove_member, members::change_role))
        .routes(routes!(members::mark_read))
        .routes(routes!(messages::send_message, messages::list_messages))
        .routes(routes!(
            messages::get_message,
            messages::edit_message,
            messages::delete_message
        ))
        .routes(routes!(messages::list_replies))
        .routes(routes!(messages::forward_message))
        .routes(routes!(messages::add_reaction))
        .routes(routes!(messages::remove_reaction))
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

fn stale_headers(fresh: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        CONSISTENCY_HEADER,
        HeaderValue::from_static(if fresh { "fresh" } else { "stale" }),
    );
    h
}
