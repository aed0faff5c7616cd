//! Uploads: single (the body streamed straight into the object store) and chunked (initiate,
//! parts in any order and again after a failure, status, complete, abort). The order of every
//! upload: check the caller and the limits, reserve the quota, store the bytes, verify them
//! (size, SHA-256, sniffed type, image header), and only then record the file. Whatever fails
//! leaves nothing behind: the object is aborted or deleted and the reservation given back.

use crate::error::MediaError;
use crate::model::{
    self, Media, Part, Thumbnail, Upload, UploadState, new_id, object_key, part_key, thumbnail_key,
};
use crate::sniff::{self, HEAD_BYTES};
use crate::state::{Caller, MediaState};
use crate::thumb;
use bytes::Bytes;
use caas_domain::{ConversationId, TenantId};
use futures::{Stream, StreamExt as _};
use http::StatusCode;
use object_store::{PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::time::Duration;
use time::OffsetDateTime;

/// What a stream of bytes turned out to be.
#[derive(Debug, Default)]
pub struct Verifier {
    hasher: Sha256,
    pub size: u64,
    pub head: Vec<u8>,
}

impl Verifier {
    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        if self.head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
    }
    pub fn sha256(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

/// The types a tenant accepts.
fn allowed_types<'a>(s: &'a MediaState, tenant: &TenantId) -> &'a [String] {
    s.config
        .tenant_allowed_types
        .get(tenant.as_str())
        .unwrap_or(&s.config.allowed_types)
}

/// Checks the sniffed type of a file's head against the declared type and the tenant's list.
/// Returns the type to store and, for images, the dimensions from the header.
fn check_type(
    s: &MediaState,
    tenant: &TenantId,
    declared: &str,
    head: &[u8],
) -> Result<(String, Option<(u32, u32)>), MediaError> {
    let sniffed = sniff::sniff(head);
    if !sniff::consistent(declared, &sniffed) {
        return Err(MediaError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type_mismatch",
            format!("the file was declared as {declared} but its bytes are {sniffed}"),
        ));
    }
    if !sniff::allowed(allowed_types(s, tenant), &sniffed) {
        return Err(MediaError::unsupported_type(format!(
            "files of type {sniffed} are not accepted"
        )));
    }
    let dims = if thumb::thumbnailable(&sniffed) {
        match thumb::dimensions(head, s.config.max_image_dimension) {
            Ok(d) => Some(d),
            Err(e @ thumb::ImageError::TooLarge { .. }) => {
                return Err(MediaError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "image_too_large",
                    e.to_string(),
                ));
            }
            Err(thumb::ImageError::Undecodable(_)) => None,
        }
    } else {
        None
    };
    Ok((sniffed, dims))
}

/// Reserves quota, counting a refusal.
async fn reserve(s: &MediaState, caller: &Caller, bytes: u64) -> Result<(), MediaError> {
    let limit = caller.principal.tenant.quotas.storage_bytes;
    if s.repo.reserve(caller.tenant(), bytes, limit).await? {
        return Ok(());
    }
    s.metrics.quota_rejections.inc();
    s.metrics.uploads.with_label_values(&["quota"]).inc();
    Err(MediaError::quota(
        "the tenant's storage quota would be exceeded",
    ))
}

async fn release(s: &MediaState, tenant: &TenantId, bytes: u64) {
    if bytes > 0
        && let Err(e) = s.repo.release(tenant, bytes).await
    {
        tracing::error!(error = %e, tenant_id = %tenant, bytes, "Failed to release reserved quota.");
    }
}

fn outcome(s: &MediaState, e: &MediaError) {
    let o = match e.code {
        "checksum_mismatch" => "checksum_mismatch",
        "payload_too_large" => "too_large",
        "content_type_mismatch" | "unsupported_media_type" | "image_too_large" => "type_refused",
        "incomplete_body" | "empty_file" => "incomplete",
        "quota_exceeded" => return,
        _ => "error",
    };
    s.metrics.uploads.with_label_values(&[o]).inc();
}

/// Input of a single upload.
#[derive(Debug)]
pub struct Single {
    pub conversation: ConversationId,
    pub name: String,
    pub declared_type: String,
    pub content_length: Option<u64>,
    pub sha256: Option<String>,
}

/// A single upload: the body streams into the object store in chunks; memory stays at a few
/// chunks whatever the file's size.
pub async fn single<S, E>(
    s: &MediaState,
    caller: &Caller,
    input: Single,
    body: S,
) -> Result<Media, MediaError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    s.may_upload(caller, &input.conversation).await?;
    model::validate_name(&input.name)?;
    let max = caller.principal.tenant.quotas.max_upload_bytes;
    match input.content_length {
        Some(0) => return Err(MediaError::empty_file()),
        Some(n) if n > max => {
            s.metrics.uploads.with_label_values(&["too_large"]).inc();
            return Err(MediaError::too_large(format!(
                "the file is larger than the tenant's limit of {max} bytes"
            )));
        }
        _ => {}
    }
    let reserved = input.content_length.unwrap_or(max);
    reserve(s, caller, reserved).await?;
    let media_id = new_id();
    // The reservation's record: removed when this request ends; if it never ends (the request
    // timed out and was dropped, the process died), the janitor gives the quota back.
    let now = OffsetDateTime::now_utc();
    let ticket = Upload {
        tenant_id: caller.tenant().clone(),
        id: new_id(),
        conversation_id: input.conversation.clone(),
        owner_id: caller.user().clone(),
        name: input.name.clone(),
        declared_type: input.declared_type.clone(),
        size: reserved,
        sha256: None,
        state: UploadState::Open,
        media_id: media_id.clone(),
        backend_id: String::new(),
        single: true,
        created_at: now,
        expires_at: now
            + time::Duration::milliseconds(s.config.request_timeout_ms as i64)
            + time::Duration::minutes(1),
    };
    if let Err(e) = s.repo.create_upload(&ticket).await {
        release(s, caller.tenant(), reserved).await;
        return Err(e.into());
    }
    let stored = single_stream(s, caller, input, body, media_id, reserved).await;
    if let Err(e) = s.repo.delete_upload(&ticket.tenant_id, &ticket.id).await {
        tracing::warn!(error = %e, "Failed to delete a single upload's reservation record.");
    }
    stored
}

async fn single_stream<S, E>(
    s: &MediaState,
    caller: &Caller,
    input: Single,
    body: S,
    media_id: String,
    reserved: u64,
) -> Result<Media, MediaError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let key = object_key(caller.tenant(), &media_id);
    let result = async {
        let writer = s.blobs.writer(&key).await?;
        let (verifier, kind) = stream_into(s, caller, &input, writer, body, reserved).await?;
        Ok::<_, MediaError>((verifier, kind))
    }
    .await;
    let (verifier, (content_type, dims)) = match result {
        Ok(v) => v,
        Err(e) => {
            release(s, caller.tenant(), reserved).await;
            outcome(s, &e);
            return Err(e);
        }
    };
    let size = verifier.size;
    release(s, caller.tenant(), reserved - size).await;
    let media = Media {
        tenant_id: caller.tenant().clone(),
        id: media_id,
        conversation_id: input.conversation.clone(),
        owner_id: caller.user().clone(),
        name: input.name,
        content_type,
        size,
        sha256: verifier.sha256(),
        width: dims.map(|d| d.0),
        height: dims.map(|d| d.1),
        thumbnail: None,
        created_at: OffsetDateTime::now_utc(),
        deleted_at: None,
    };
    finish(s, caller, media).await
}

/// Streams `body` into `writer`, verifying as it goes; aborts the writer on any refusal.
async fn stream_into<S, E>(
    s: &MediaState,
    caller: &Caller,
    input: &Single,
    mut writer: WriteMultipart,
    mut body: S,
    limit: u64,
) -> Result<(Verifier, (String, Option<(u32, u32)>)), MediaError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut v = Verifier::default();
    let mut kind = None;
    let refused = loop {
        let chunk = match body.next().await {
            None => break None,
            Some(Err(e)) => break Some(MediaError::incomplete_body(e)),
            Some(Ok(c)) => c,
        };
        if v.size + chunk.len() as u64 > limit {
            break Some(MediaError::too_large(format!(
                "the file is larger than {limit} bytes (the tenant's limit or the declared length)"
            )));
        }
        v.update(&chunk);
        s.metrics.bytes_in.inc_by(chunk.len() as u64);
        // Refuse a wrong type as soon as the head is known, not after the whole file.
        if kind.is_none() && v.head.len() >= HEAD_BYTES {
            match check_type(s, caller.tenant(), &input.declared_type, &v.head) {
                Ok(k) => kind = Some(k),
                Err(e) => break Some(e),
            }
        }
        writer.put(chunk);
        if let Err(e) = writer.wait_for_capacity(2).await {
            break Some(e.into());
        }
    };
    let refused = refused.or_else(|| {
        if v.size == 0 {
            return Some(MediaError::empty_file());
        }
        if let Some(n) = input.content_length
            && n != v.size
        {
            return Some(MediaError::incomplete_body(format!(
                "content-length {n}, received {}",
                v.size
            )));
        }
        None
    });
    let refused = match refused {
        Some(e) => Some(e),
        None if kind.is_none() => {
            match check_type(s, caller.tenant(), &input.declared_type, &v.head) {
                Ok(k) => {
                    kind = Some(k);
                    None
                }
                Err(e) => Some(e),
            }
        }
        None => None,
    };
    let refused = refused.or_else(|| {
        let expected = input.sha256.as_deref()?;
        let got = hex::encode(v.hasher.clone().finalize());
        (got != expected).then(|| {
            MediaError::checksum_mismatch(format!(
                "the file's SHA-256 is {got}, the client said {expected}"
            ))
        })
    });
    if let Some(e) = refused {
        if let Err(err) = writer.abort().await {
            tracing::warn!(error = %err, "Failed to abort a refused upload.");
        }
        return Err(e);
    }
    writer.finish().await?;
    match kind {
        Some(k) => Ok((v, k)),
        None => Err(MediaError::internal("type not checked")),
    }
}

/// Records a stored, verified file: thumbnail, metadata, event. If the record cannot be
/// written, the object is deleted and the quota given back.
async fn finish(s: &MediaState, caller: &Caller, mut media: Media) -> Result<Media, MediaError> {
    media.thumbnail = make_thumbnail(s, &media).await;
    if let Err(e) = s.repo.insert_media(&media).await {
        let key = object_key(&media.tenant_id, &media.id);
        if let Err(err) = s.blobs.delete(&key).await {
            tracing::error!(error = %err, key, "Failed to delete an object whose record failed.");
        }
        if media.thumbnail.is_some()
            && let Err(err) = s
                .blobs
                .delete(&thumbnail_key(&media.tenant_id, &media.id))
                .await
        {
            tracing::warn!(error = %err, "Failed to delete a thumbnail whose record failed.");
        }
        release(s, &media.tenant_id, media.size).await;
        s.metrics.uploads.with_label_values(&["error"]).inc();
        return Err(e.into());
    }
    s.metrics.uploads.with_label_values(&["stored"]).inc();
    s.announce(
        &media.tenant_id,
        &media.conversation_id,
        &caller.correlation_id,
        model::MediaEvent::Uploaded {
            media: media.clone(),
        },
    )
    .await;
    Ok(media)
}

/// A thumbnail for a small enough image of a common type, bounded in memory (the decoder's
/// limits) and time. Failures are logged and counted: the file is stored without one.
async fn make_thumbnail(s: &MediaState, media: &Media) -> Option<Thumbnail> {
    if !thumb::thumbnailable(&media.content_type) || media.width.is_none() {
        return None;
    }
    if media.size > s.config.thumbnail_max_source_bytes {
        s.metrics.thumbnails.with_label_values(&["skipped"]).inc();
        return None;
    }
    let made = async {
        let (mut stream, _) = s
            .blobs
            .get(&object_key(&media.tenant_id, &media.id), None)
            .await
            .map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(media.size as usize);
        while let Some(c) = stream.next().await {
            bytes.extend_from_slice(&c.map_err(|e| e.to_string())?);
        }
        let (px, max_dim, max_alloc) = (
            s.config.thumbnail_px,
            s.config.max_image_dimension,
            s.config.thumbnail_max_alloc_bytes,
        );
        let job =
            tokio::task::spawn_blocking(move || thumb::thumbnail(&bytes, px, max_dim, max_alloc));
        let (bytes, content_type, width, height) =
            tokio::time::timeout(Duration::from_millis(s.config.thumbnail_timeout_ms), job)
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        let size = bytes.len() as u64;
        s.blobs
            .put(
                &thumbnail_key(&media.tenant_id, &media.id),
                PutPayload::from(bytes),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(Thumbnail {
            content_type: content_type.to_string(),
            size,
            width,
            height,
        })
    }
    .await;
    match made {
        Ok(t) => {
            s.metrics.thumbnails.with_label_values(&["made"]).inc();
            Some(t)
        }
        Err(e) => {
            s.metrics.thumbnails.with_label_values(&["failed"]).inc();
            tracing::warn!(error = %e, media_id = %media.id, "Failed to make a thumbnail.");
            None
        }
    }
}

/// Body of `POST .../uploads`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Initiate {
    /// The file name (metadata only).
    pub name: String,
    /// What the client thinks the type is (checked against the bytes).
    #[serde(default)]
    pub content_type: Option<String>,
    /// The whole file's size in bytes (reserved from the tenant's quota now).
    pub size: u64,
    /// Hex SHA-256 of the whole file (else required at `complete`).
    #[serde(default)]
    pub sha256: Option<String>,
}

/// The state of an upload as shown to its owner.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadStatus {
    pub id: String,
    pub conversation_id: ConversationId,
    pub name: String,
    pub state: UploadState,
    pub size: u64,
    pub received_bytes: u64,
    /// Percent of `size` received, 0-100.
    pub progress: f64,
    pub parts: Vec<PartStatus>,
    pub min_part_bytes: u64,
    pub max_part_bytes: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartStatus {
    pub number: u32,
    pub size: u64,
    pub sha256: String,
}

fn status(s: &MediaState, u: &Upload, parts: &[Part]) -> UploadStatus {
    let received: u64 = parts.iter().map(|p| p.size).sum();
    UploadStatus {
        id: u.id.clone(),
        conversation_id: u.conversation_id.clone(),
        name: u.name.clone(),
        state: u.state,
        size: u.size,
        received_bytes: received,
        progress: if u.size == 0 {
            0.0
        } else {
            ((received as f64 / u.size as f64) * 10_000.0).round() / 100.0
        },
        parts: parts
            .iter()
            .map(|p| PartStatus {
                number: p.number,
                size: p.size,
                sha256: p.sha256.clone(),
            })
            .collect(),
        min_part_bytes: s.config.min_part_bytes,
        max_part_bytes: s.config.max_part_bytes,
        expires_at: u.expires_at,
    }
}

/// Starts a chunked upload: checks, reserves the whole size, opens the backend's multipart
/// upload.
pub async fn initiate(
    s: &MediaState,
    caller: &Caller,
    conversation: ConversationId,
    req: Initiate,
) -> Result<UploadStatus, MediaError> {
    s.may_upload(caller, &conversation).await?;
    model::validate_name(&req.name)?;
    let sha256 = req.sha256.as_deref().map(model::parse_sha256).transpose()?;
    if req.size == 0 {
        return Err(MediaError::empty_file());
    }
    let max = caller.principal.tenant.quotas.max_upload_bytes;
    if req.size > max {
        s.metrics.uploads.with_label_values(&["too_large"]).inc();
        return Err(MediaError::too_large(format!(
            "the file is larger than the tenant's limit of {max} bytes"
        )));
    }
    let max_part = s.config.max_part_bytes.max(1);
    if req.size.div_ceil(max_part) > u64::from(s.config.max_parts) {
        return Err(MediaError::too_large(format!(
            "a file of {} bytes needs more than {} parts of at most {max_part} bytes",
            req.size, s.config.max_parts
        )));
    }
    let declared_type = sniff::essence(req.content_type.as_deref().unwrap_or(""));
    if !declared_type.is_empty()
        && declared_type != sniff::OCTET_STREAM
        && !sniff::allowed(allowed_types(s, caller.tenant()), &declared_type)
    {
        return Err(MediaError::unsupported_type(format!(
            "files of type {declared_type} are not accepted"
        )));
    }
    reserve(s, caller, req.size).await?;
    let media_id = new_id();
    let key = object_key(caller.tenant(), &media_id);
    let backend_id = match s.blobs.create_multipart(&key).await {
        Ok(id) => id.unwrap_or_default(),
        Err(e) => {
            release(s, caller.tenant(), req.size).await;
            return Err(e.into());
        }
    };
    let now = OffsetDateTime::now_utc();
    let upload = Upload {
        tenant_id: caller.tenant().clone(),
        id: new_id(),
        conversation_id: conversation,
        owner_id: caller.user().clone(),
        name: req.name,
        declared_type,
        size: req.size,
        sha256,
        state: UploadState::Open,
        media_id,
        backend_id,
        single: false,
        created_at: now,
        expires_at: now + time::Duration::seconds(s.config.upload_expiry_secs as i64),
    };
    if let Err(e) = s.repo.create_upload(&upload).await {
        if let Err(err) = s.blobs.abort_multipart(&key, &upload.backend_id).await {
            tracing::warn!(error = %err, "Failed to abort a multipart upload.");
        }
        release(s, caller.tenant(), req.size).await;
        return Err(e.into());
    }
    Ok(status(s, &upload, &[]))
}

/// The caller's own, unexpired upload; everyone else gets 404.
async fn own_upload(s: &MediaState, caller: &Caller, id: &str) -> Result<Upload, MediaError> {
    model::check_id(id).map_err(|_| MediaError::not_found("upload"))?;
    s.repo
        .get_upload(caller.tenant(), id)
        .await?
        .filter(|u| {
            !u.single && &u.owner_id == caller.user() && u.expires_at > OffsetDateTime::now_utc()
        })
        .ok_or_else(|| MediaError::not_found("upload"))
}

pub async fn get_status(
    s: &MediaState,
    caller: &Caller,
    id: &str,
) -> Result<UploadStatus, MediaError> {
    let u = own_upload(s, caller, id).await?;
    let parts = s.repo.list_parts(caller.tenant(), &u.id).await?;
    Ok(status(s, &u, &parts))
}

/// Stores part `number` (1-based) of an upload. The part is held in memory (at most
/// `maxPartBytes`) while it is hashed and stored; an earlier part with the same number is
/// replaced, so a failed part is simply sent again.
pub async fn put_part<S, E>(
    s: &MediaState,
    caller: &Caller,
    id: &str,
    number: u32,
    content_length: Option<u64>,
    part_sha256: Option<String>,
    mut body: S,
) -> Result<PartStatus, MediaError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let u = own_upload(s, caller, id).await?;
    if u.state != UploadState::Open {
        return Err(MediaError::conflict("the upload is being completed"));
    }
    if number == 0 || number > s.config.max_parts {
        return Err(MediaError::invalid(format!(
            "part numbers are 1-{}",
            s.config.max_parts
        )));
    }
    let limit = s.config.max_part_bytes.min(u.size);
    if content_length.is_some_and(|n| n > limit) {
        return Err(MediaError::too_large(format!(
            "a part is at most {limit} bytes"
        )));
    }
    let mut chunks = Vec::new();
    let mut v = Verifier::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(MediaError::incomplete_body)?;
        if v.size + chunk.len() as u64 > limit {
            return Err(MediaError::too_large(format!(
                "a part is at most {limit} bytes"
            )));
        }
        v.update(&chunk);
        chunks.push(chunk);
    }
    if v.size == 0 {
        return Err(MediaError::new(
            StatusCode::BAD_REQUEST,
            "empty_part",
            "a part must not be empty",
        ));
    }
    if let Some(n) = content_length
        && n != v.size
    {
        return Err(MediaError::incomplete_body(format!(
            "content-length {n}, received {}",
            v.size
        )));
    }
    if number == 1 {
        check_type(s, caller.tenant(), &u.declared_type, &v.head)?;
    }
    let size = v.size;
    let sha256 = v.sha256();
    if let Some(expected) = part_sha256
        && expected != sha256
    {
        return Err(MediaError::checksum_mismatch(format!(
            "part {number}'s SHA-256 is {sha256}, the client said {expected}"
        )));
    }
    let key = object_key(&u.tenant_id, &u.media_id);
    let etag = s
        .blobs
        .put_part(
            &key,
            &u.backend_id,
            &part_key(&u.tenant_id, &u.id, number),
            number,
            PutPayload::from_iter(chunks),
        )
        .await?;
    s.metrics.bytes_in.inc_by(size);
    let part = Part {
        number,
        size,
        sha256: sha256.clone(),
        etag,
    };
    s.repo.put_part(&u.tenant_id, &u.id, &part).await?;
    Ok(PartStatus {
        number,
        size,
        sha256,
    })
}

/// Body of `POST .../complete`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Complete {
    /// Hex SHA-256 of the whole file (required unless given at the start).
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Assembles the parts into the file, verifies it end to end and records it. A refused file
/// (wrong checksum, lying type) ends the upload: nothing is kept and the quota is given back.
pub async fn complete(
    s: &MediaState,
    caller: &Caller,
    id: &str,
    req: Complete,
) -> Result<Media, MediaError> {
    let u = own_upload(s, caller, id).await?;
    let given = req.sha256.as_deref().map(model::parse_sha256).transpose()?;
    let expected = match (&u.sha256, &given) {
        (Some(a), Some(b)) if a != b => {
            return Err(MediaError::invalid(
                "sha256 differs from the one given when the upload started",
            ));
        }
        (Some(a), _) => a.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) => {
            return Err(MediaError::invalid(
                "sha256 of the whole file is required (here or when starting the upload)",
            ));
        }
    };
    if !s
        .repo
        .set_upload_state(
            caller.tenant(),
            id,
            UploadState::Open,
            UploadState::Completing,
        )
        .await?
    {
        return Err(MediaError::conflict(
            "the upload is already being completed",
        ));
    }
    let reopen = || async {
        if let Err(e) = s
            .repo
            .set_upload_state(
                caller.tenant(),
                id,
                UploadState::Completing,
                UploadState::Open,
            )
            .await
        {
            tracing::warn!(error = %e, "Failed to reopen an upload.");
        }
    };
    let parts = s.repo.list_parts(caller.tenant(), id).await?;
    if let Err(e) = check_parts(s, &u, &parts) {
        reopen().await;
        return Err(e);
    }
    let key = object_key(&u.tenant_id, &u.media_id);
    // Assemble and verify.
    let verified: Result<Verifier, MediaError> = if s.blobs.native_multipart() {
        let etags = parts.iter().map(|p| p.etag.clone()).collect();
        if let Err(e) = s.blobs.complete_multipart(&key, &u.backend_id, etags).await {
            reopen().await;
            return Err(e.into());
        }
        read_back(s, &key).await
    } else {
        concat_local(s, &u, &parts, &key).await
    };
    let refused = match verified {
        Err(e) => Err(e),
        Ok(v) => {
            let kind = check_type(s, caller.tenant(), &u.declared_type, &v.head);
            let size = v.size;
            let got = v.sha256();
            match kind {
                Err(e) => Err(e),
                Ok(_) if size != u.size => Err(MediaError::invalid(format!(
                    "received {size} bytes, the upload declared {}",
                    u.size
                ))),
                Ok(_) if got != expected => Err(MediaError::checksum_mismatch(format!(
                    "the file's SHA-256 is {got}, the client said {expected}"
                ))),
                Ok((content_type, dims)) => Ok((content_type, dims, got)),
            }
        }
    };
    let (content_type, dims, sha256) = match refused {
        Ok(v) => v,
        Err(e) => {
            outcome(s, &e);
            discard(s, &u, &parts).await;
            if let Err(err) = s.blobs.delete(&key).await {
                tracing::warn!(error = %err, key, "Failed to delete a refused file.");
            }
            return Err(e);
        }
    };
    let media = Media {
        tenant_id: u.tenant_id.clone(),
        id: u.media_id.clone(),
        conversation_id: u.conversation_id.clone(),
        owner_id: u.owner_id.clone(),
        name: u.name.clone(),
        content_type,
        size: u.size,
        sha256,
        width: dims.map(|d| d.0),
        height: dims.map(|d| d.1),
        thumbnail: None,
        created_at: OffsetDateTime::now_utc(),
        deleted_at: None,
    };
    // The reservation becomes the file's usage; `finish` gives it back if recording fails.
    let media = finish(s, caller, media).await;
    remove_parts(s, &u, &parts).await;
    if let Err(e) = s.repo.delete_upload(&u.tenant_id, &u.id).await {
        tracing::warn!(error = %e, "Failed to delete a completed upload's record.");
    }
    media
}

fn check_parts(s: &MediaState, u: &Upload, parts: &[Part]) -> Result<(), MediaError> {
    let missing: Vec<u32> = (1..=parts.last().map_or(0, |p| p.number))
        .filter(|n| !parts.iter().any(|p| p.number == *n))
        .collect();
    let received: u64 = parts.iter().map(|p| p.size).sum();
    if parts.is_empty() || !missing.is_empty() || received != u.size {
        return Err(MediaError::new(
            StatusCode::BAD_REQUEST,
            "parts_incomplete",
            format!(
                "received {received} of {} bytes; missing parts: {missing:?}",
                u.size
            ),
        ));
    }
    // S3 refuses parts under 5 MiB (all but the last), whatever the configuration says.
    let min = if s.blobs.native_multipart() {
        s.config
            .min_part_bytes
            .max(crate::blobs::WRITE_CHUNK as u64)
    } else {
        s.config.min_part_bytes
    };
    if let Some(p) = parts[..parts.len() - 1].iter().find(|p| p.size < min) {
        return Err(MediaError::new(
            StatusCode::BAD_REQUEST,
            "part_too_small",
            format!(
                "part {} has {} bytes; every part but the last needs at least {min}",
                p.number, p.size
            ),
        ));
    }
    Ok(())
}

async fn read_back(s: &MediaState, key: &str) -> Result<Verifier, MediaError> {
    let (mut stream, _) = s.blobs.get(key, None).await?;
    let mut v = Verifier::default();
    while let Some(c) = stream.next().await {
        v.update(&c?);
    }
    Ok(v)
}

async fn concat_local(
    s: &MediaState,
    u: &Upload,
    parts: &[Part],
    key: &str,
) -> Result<Verifier, MediaError> {
    let mut writer = s.blobs.writer(key).await?;
    let mut v = Verifier::default();
    let copied = async {
        for p in parts {
            let (mut stream, _) = s
                .blobs
                .get(&part_key(&u.tenant_id, &u.id, p.number), None)
                .await?;
            while let Some(c) = stream.next().await {
                let c = c?;
                v.update(&c);
                writer.put(c);
                writer.wait_for_capacity(2).await?;
            }
        }
        Ok::<_, object_store::Error>(())
    }
    .await;
    match copied {
        Ok(()) => {
            writer.finish().await?;
            Ok(v)
        }
        Err(e) => {
            if let Err(err) = writer.abort().await {
                tracing::warn!(error = %err, "Failed to abort an assembly.");
            }
            Err(e.into())
        }
    }
}

async fn remove_parts(s: &MediaState, u: &Upload, parts: &[Part]) {
    if s.blobs.native_multipart() {
        return;
    }
    for p in parts {
        if let Err(e) = s
            .blobs
            .delete(&part_key(&u.tenant_id, &u.id, p.number))
            .await
        {
            tracing::warn!(error = %e, "Failed to delete an upload part.");
        }
    }
}

/// Ends an upload without a file: parts and multipart upload gone, record gone, quota back.
pub(crate) async fn discard(s: &MediaState, u: &Upload, parts: &[Part]) {
    let key = object_key(&u.tenant_id, &u.media_id);
    if let Err(e) = s.blobs.abort_multipart(&key, &u.backend_id).await {
        tracing::warn!(error = %e, "Failed to abort a multipart upload.");
    }
    remove_parts(s, u, parts).await;
    if let Err(e) = s.repo.delete_upload(&u.tenant_id, &u.id).await {
        tracing::warn!(error = %e, "Failed to delete an upload's record.");
    }
    release(s, &u.tenant_id, u.size).await;
}

/// Aborts the caller's upload.
pub async fn abort(s: &MediaState, caller: &Caller, id: &str) -> Result<(), MediaError> {
    let u = own_upload(s, caller, id).await?;
    if !s
        .repo
        .set_upload_state(
            caller.tenant(),
            id,
            UploadState::Open,
            UploadState::Completing,
        )
        .await?
    {
        return Err(MediaError::conflict("the upload is being completed"));
    }
    let parts = s.repo.list_parts(caller.tenant(), id).await?;
    discard(s, &u, &parts).await;
    s.metrics.uploads.with_label_values(&["aborted"]).inc();
    Ok(())
}
