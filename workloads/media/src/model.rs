//! The records of the media workload (files, uploads, parts), the events it publishes, and the
//! validation of client input (file names, checksums, ids). No I/O.

use crate::error::MediaError;
use caas_domain::{ConversationId, TenantId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Longest file name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// A stored file. Its bytes live in the object store under [`object_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Media {
    pub tenant_id: TenantId,
    pub id: String,
    pub conversation_id: ConversationId,
    pub owner_id: UserId,
    /// The client's file name (metadata only: never part of a path).
    pub name: String,
    /// The type sniffed from the bytes, not the one the client claimed.
    pub content_type: String,
    pub size: u64,
    /// Hex SHA-256 of the bytes, verified against the client's on upload; also the ETag.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Thumbnail>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub deleted_at: Option<OffsetDateTime>,
}

impl Media {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
    /// The strong ETag of the content.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.sha256)
    }
}

/// The thumbnail of an image (`GET /v1/media/files/{id}/thumbnail`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Thumbnail {
    pub content_type: String,
    pub size: u64,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Parts may be uploaded.
    Open,
    /// `complete` is assembling and verifying it; parts are refused.
    Completing,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Completing => "completing",
        }
    }
}

/// A chunked, resumable upload in progress. Its quota (`size`) is reserved when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upload {
    pub tenant_id: TenantId,
    pub id: String,
    pub conversation_id: ConversationId,
    pub owner_id: UserId,
    pub name: String,
    /// What the client said the type is (checked against the sniffed type).
    pub declared_type: String,
    /// Total bytes, declared at the start.
    pub size: u64,
    /// The client's hex SHA-256 of the whole file, when given at the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub state: UploadState,
    /// The id of the file this upload becomes (and of its object).
    pub media_id: String,
    /// The object store's multipart upload id (S3); empty where parts are objects (local).
    pub backend_id: String,
    /// A single upload in flight: not addressable by clients; it holds the quota reservation so
    /// that the janitor gives it back if the request never finishes (timeout, crash).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// One received part of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// 1-based, like S3.
    pub number: u32,
    pub size: u64,
    pub sha256: String,
    /// The backend's part id (S3 ETag); empty for the local backend.
    pub etag: String,
}

/// Events on the media-events topic, keyed by conversation id, for search and webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MediaEvent {
    #[serde(rename = "media.uploaded")]
    Uploaded { media: Media },
    #[serde(rename = "media.deleted")]
    Deleted {
        media_id: String,
        conversation_id: ConversationId,
        deleted_by: UserId,
        #[serde(with = "time::serde::rfc3339")]
        deleted_at: OffsetDateTime,
    },
}

impl MediaEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Uploaded { .. } => "media.uploaded",
            Self::Deleted { .. } => "media.deleted",
        }
    }
}

/// The topic of media events.
pub const MEDIA_EVENTS: &str = "media-events";

/// The object key of a file's bytes: tenant first, never derived from client input.
pub fn object_key(tenant: &TenantId, media_id: &str) -> String {
    format!("t/{tenant}/m/{media_id}")
}

/// The object key of a file's thumbnail.
pub fn thumbnail_key(tenant: &TenantId, media_id: &str) -> String {
    format!("t/{tenant}/m/{media_id}.thumb")
}

/// The object key of one part of an upload on backends without native multipart uploads.
pub fn part_key(tenant: &TenantId, upload_id: &str, number: u32) -> String {
    format!("t/{tenant}/u/{upload_id}/{number:05}")
}

/// A new id for a file or an upload: a UUIDv7 in simple form.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Checks an id of a file or upload taken from a URL: 32 lowercase hex digits.
pub fn check_id(id: &str) -> Result<(), MediaError> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(MediaError::not_found("file"))
    }
}

/// Checks a client file name: a plain name, never a path. Refuses empty names, `/`, `\`,
/// `.` and `..`, control characters and names over [`MAX_NAME_BYTES`].
pub fn validate_name(name: &str) -> Result<(), MediaError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(MediaError::invalid_name(format!(
            "the file name must be 1-{MAX_NAME_BYTES} bytes"
        )));
    }
    if name == "." || name == ".." || name.contains("..") {
        return Err(MediaError::invalid_name(
            "the file name must not contain `..`",
        ));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(MediaError::invalid_name(
            "the file name must not contain `/`, `\\` or control characters",
        ));
    }
    Ok(())
}

/// Normalises a client's hex SHA-256 (64 hex digits, any case) to lowercase.
pub fn parse_sha256(s: &str) -> Result<String, MediaError> {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(MediaError::invalid("sha256 must be 64 hexadecimal digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_look_like_paths_are_refused() {
        for bad in [
            "",
            "..",
            ".",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "x\0y",
            "a\nb",
            "..hidden",
        ] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.code, "invalid_name", "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
        for good in ["photo.jpg", "Résumé 2026 (final).pdf", ".profile", "a.b.c"] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn checksums_and_ids() {
        let h = "AB".repeat(32);
        assert_eq!(parse_sha256(&h).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"g".repeat(64)).is_err());
        check_id(&new_id()).unwrap();
        assert!(check_id("../x").is_err());
        assert!(check_id(&"A".repeat(32)).is_err());
    }

    #[test]
    fn keys_are_tenant_first() {
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(object_key(&t, "abc"), "t/acme/m/abc");
        assert_eq!(part_key(&t, "u1", 3), "t/acme/u/u1/00003");
    }
}
