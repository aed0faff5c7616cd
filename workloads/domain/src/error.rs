//! Errors of the domain, each with a stable code that clients can match on. The HTTP mapping
//! lives in `caas_kit::error`; this file only says what went wrong.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. The string form (`snake_case`) is part of the public API:
/// never rename a variant's string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // 400
    InvalidId,
    InvalidArgument,
    TextTooLong,
    TextEmpty,
    InvalidCursor,
    InvalidAttachment,
    MalformedJson,
    UnknownField,
    // 401
    Unauthenticated,
    TokenExpired,
    TokenNotYetValid,
    TokenInvalid,
    TokenRevoked,
    TenantSuspended,
    InvalidCredentials,
    // 403
    Forbidden,
    NotMember,
    // 404
    NotFound,
    // 405
    MethodNotAllowed,
    // 409
    Conflict,
    AlreadyExists,
    Archived,
    // 413
    PayloadTooLarge,
    // 415
    UnsupportedMediaType,
    // 429
    RateLimited,
    QuotaExceeded,
    // 503
    Unavailable,
    Overloaded,
    // 500
    Internal,
}

impl ErrorCode {
    /// The stable string form, e.g. `text_too_long`.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidId => "invalid_id",
            InvalidArgument => "invalid_argument",
            TextTooLong => "text_too_long",
            TextEmpty => "text_empty",
            InvalidCursor => "invalid_cursor",
            InvalidAttachment => "invalid_attachment",
            MalformedJson => "malformed_json",
            UnknownField => "unknown_field",
            Unauthenticated => "unauthenticated",
            TokenExpired => "token_expired",
            TokenNotYetValid => "token_not_yet_valid",
            TokenInvalid => "token_invalid",
            TokenRevoked => "token_revoked",
            TenantSuspended => "tenant_suspended",
            InvalidCredentials => "invalid_credentials",
            Forbidden => "forbidden",
            NotMember => "not_member",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Conflict => "conflict",
            AlreadyExists => "already_exists",
            Archived => "archived",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RateLimited => "rate_limited",
            QuotaExceeded => "quota_exceeded",
            Unavailable => "unavailable",
            Overloaded => "overloaded",
            Internal => "internal",
        }
    }

    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidId | InvalidArgument | TextTooLong | TextEmpty | InvalidCursor
            | InvalidAttachment | MalformedJson | UnknownField => 400,
            Unauthenticated | TokenExpired | TokenNotYetValid | TokenInvalid | TokenRevoked
            | TenantSuspended | InvalidCredentials => 401,
            Forbidden | NotMember => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            Conflict | AlreadyExists | Archived => 409,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            RateLimited | QuotaExceeded => 429,
            Unavailable | Overloaded => 503,
            Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal by the domain: a code and a message that is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DomainError {
    pub code: ErrorCode,
    pub message: String,
}

impl DomainError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_form_equals_as_str() {
        for code in [
            ErrorCode::TextTooLong,
            ErrorCode::NotMember,
            ErrorCode::TokenRevoked,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
