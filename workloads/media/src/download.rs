//! Downloads: the whole file, one byte range (206, or 416 outside the file), conditional
//! requests (`If-None-Match` → 304; `If-Range`), always streamed from the object store. Shared
//! by the token route and the signed-URL route. Deletion: the soft delete and the purge.

use crate::error::MediaError;
use crate::model::{Media, MediaEvent, object_key, thumbnail_key};
use crate::range::{self, RangeRequest};
use crate::sniff;
use crate::state::{Caller, MediaState};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use time::OffsetDateTime;

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

/// `filename="ascii"; filename*=UTF-8''percent-encoded`.
fn disposition(inline: bool, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Answers a download of `media` (or of its thumbnail).
pub async fn serve(
    s: &MediaState,
    media: &Media,
    headers: &HeaderMap,
    thumbnail: bool,
) -> Result<Response, MediaError> {
    let (key, size, content_type, etag) = if thumbnail {
        let t = media
            .thumbnail
            .as_ref()
            .ok_or_else(|| MediaError::not_found("thumbnail"))?;
        (
            thumbnail_key(&media.tenant_id, &media.id),
            t.size,
            t.content_type.clone(),
            format!("\"{}-t\"", media.sha256),
        )
    } else {
        (
            object_key(&media.tenant_id, &media.id),
            media.size,
            media.content_type.clone(),
            media.etag(),
        )
    };
    let mut h = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).map_err(MediaError::internal);
    h.insert(header::ETAG, hv(&etag)?);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if if_none_match(headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // `If-Range` with another validator: the client's partial copy is stale; send it all.
    let stale = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != etag);
    let wanted = if stale {
        RangeRequest::Full
    } else {
        range::parse(range_header, size)
    };
    let (status, range) = match wanted {
        RangeRequest::Full => (StatusCode::OK, None),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        RangeRequest::Unsatisfiable => return Err(MediaError::range_not_satisfiable(size)),
    };
    let (stream, _) = s.blobs.get(&key, range.clone()).await?;
    let length = range.as_ref().map_or(size, |r| r.end - r.start);
    if let Some(r) = &range {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {}-{}/{size}", r.start, r.end - 1))?,
        );
    }
    h.insert(header::CONTENT_TYPE, hv(&content_type)?);
    h.insert(header::CONTENT_LENGTH, hv(&length.to_string())?);
    h.insert(
        header::CONTENT_DISPOSITION,
        hv(&disposition(sniff::inline_safe(&content_type), &media.name))?,
    );
    let out = s.metrics.bytes_out.clone();
    let body = Body::from_stream(stream.map(move |c| {
        if let Ok(b) = &c {
            out.inc_by(b.len() as u64);
        }
        c
    }));
    Ok((status, h, body).into_response())
}

/// Soft-deletes a file: it stops being readable at once (signed URLs included); the bytes are
/// purged later. The tenant's quota is given back now.
pub async fn delete(s: &MediaState, caller: &Caller, id: &str) -> Result<(), MediaError> {
    let media = s.readable(caller, id).await?;
    s.may_delete(caller, &media).await?;
    let at = OffsetDateTime::now_utc();
    let Some(deleted) = s.repo.mark_deleted(caller.tenant(), id, at).await? else {
        return Err(MediaError::not_found("file"));
    };
    if let Err(e) = s.repo.release(caller.tenant(), deleted.size).await {
        tracing::error!(error = %e, "Failed to release the quota of a deleted file.");
    }
    s.announce(
        caller.tenant(),
        &deleted.conversation_id,
        &caller.correlation_id,
        MediaEvent::Deleted {
            media_id: deleted.id.clone(),
            conversation_id: deleted.conversation_id.clone(),
            deleted_by: caller.user().clone(),
            deleted_at: at,
        },
    )
    .await;
    Ok(())
}

/// Removes the bytes and records of files deleted before `before`. Returns how many.
pub async fn purge(s: &MediaState, before: OffsetDateTime) -> Result<usize, MediaError> {
    let mut n = 0;
    for m in s.repo.purgeable(before, 500).await? {
        s.blobs.delete(&object_key(&m.tenant_id, &m.id)).await?;
        s.blobs.delete(&thumbnail_key(&m.tenant_id, &m.id)).await?;
        s.repo.remove_media(&m.tenant_id, &m.id).await?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_safe() {
        assert_eq!(
            disposition(true, "a b.png"),
            "inline; filename=\"a b.png\"; filename*=UTF-8''a%20b.png"
        );
        let d = disposition(false, "r\"é.pdf");
        assert!(d.starts_with("attachment; filename=\"r__.pdf\""), "{d}");
        assert!(d.ends_with("r%22%C3%A9.pdf"), "{d}");
    }

    #[test]
    fn etag_matching() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", \"abc\""),
        );
        assert!(if_none_match(&h, "\"abc\""));
        assert!(!if_none_match(&h, "\"abd\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&h, "\"q\""));
    }
}
