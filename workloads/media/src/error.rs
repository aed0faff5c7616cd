//! The media workload's errors: the same JSON shape as every caas API
//! (`{"error": {"code": "...", "message": "..."}}`), with codes of its own where the shared
//! vocabulary has none (`checksum_mismatch`, `range_not_satisfiable`, `invalid_name`, ...).
//! Errors of the shared vocabulary ([`ApiError`]: authentication, not found, quota) keep their
//! codes. Internal detail goes to the logs, never to the client.

use axum::response::{IntoResponse, Response};
use caas_domain::ErrorCode;
use caas_kit::error::ApiError;
use http::StatusCode;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `Content-Range: bytes */<size>` on 416.
    pub size: Option<u64>,
    pub shared: Option<ErrorCode>,
}

impl MediaError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            size: None,
            shared: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::shared(ApiError::invalid(message))
    }
    pub fn not_found(what: &str) -> Self {
        Self::shared(ApiError::not_found(what))
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::shared(ApiError::forbidden(message))
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::shared(ApiError::new(ErrorCode::PayloadTooLarge, message))
    }
    pub fn unsupported_type(message: impl Into<String>) -> Self {
        Self::shared(ApiError::new(ErrorCode::UnsupportedMediaType, message))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::shared(ApiError::new(ErrorCode::Conflict, message))
    }
    pub fn quota(message: impl Into<String>) -> Self {
        Self::shared(ApiError::new(ErrorCode::QuotaExceeded, message))
    }
    pub fn checksum_mismatch(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "checksum_mismatch", message)
    }
    pub fn invalid_name(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_name", message)
    }
    pub fn empty_file() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "empty_file",
            "zero-byte files are not accepted",
        )
    }
    pub fn incomplete_body(detail: impl std::fmt::Display) -> Self {
        tracing::debug!(error = %detail, "Upload body ended early.");
        Self::new(
            StatusCode::BAD_REQUEST,
            "incomplete_body",
            "the request body ended before all bytes arrived; nothing was stored",
        )
    }
    pub fn range_not_satisfiable(size: u64) -> Self {
        Self {
            size: Some(size),
            ..Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "the requested range is outside the file",
            )
        }
    }
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::shared(ApiError::internal(detail))
    }
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        Self::shared(ApiError::unavailable(detail))
    }
    pub fn shared(e: ApiError) -> Self {
        let status =
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            code: e.code.as_str(),
            message: e.message,
            size: None,
            shared: Some(e.code),
        }
    }
}

impl From<ApiError> for MediaError {
    fn from(e: ApiError) -> Self {
        Self::shared(e)
    }
}

impl From<caas_store::StoreError> for MediaError {
    fn from(e: caas_store::StoreError) -> Self {
        Self::shared(e.into())
    }
}

impl From<crate::repo::RepoError> for MediaError {
    fn from(e: crate::repo::RepoError) -> Self {
        match e {
            crate::repo::RepoError::Unavailable(d) => Self::unavailable(d),
            other => Self::internal(other),
        }
    }
}

impl From<object_store::Error> for MediaError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => Self::not_found("file content"),
            other => Self::unavailable(format!("object store: {other}")),
        }
    }
}

impl std::fmt::Display for MediaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for MediaError {}

impl IntoResponse for MediaError {
    fn into_response(self) -> Response {
        if let Some(code) = self.shared {
            let mut resp = ApiError::new(code, self.message).into_response();
            if code == ErrorCode::Unavailable {
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
            }
            return resp;
        }
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(size) = self.size
            && let Ok(v) = http::HeaderValue::from_str(&format!("bytes */{size}"))
        {
            resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
        }
        resp
    }
}
