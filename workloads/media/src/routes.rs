//! The HTTP face of the media workload, under `/v1/media`. Handlers only translate HTTP (paths,
//! headers, bodies) into calls of [`crate::upload`] and [`crate::download`].
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/media/conversations/{id}/files?name=` | single upload (body = the bytes) |
//! | `POST /v1/media/conversations/{id}/uploads` | start a chunked upload |
//! | `GET`, `DELETE /v1/media/uploads/{id}` | status with progress; abort |
//! | `PUT /v1/media/uploads/{id}/parts/{n}` | part n (1-based), any order, again after a failure |
//! | `POST /v1/media/uploads/{id}/complete` | assemble, verify, record |
//! | `GET`, `DELETE /v1/media/files/{id}` | metadata; soft delete |
//! | `GET /v1/media/files/{id}/content` | download (Range, ETag) |
//! | `GET /v1/media/files/{id}/thumbnail` | thumbnail of an image |
//! | `POST /v1/media/files/{id}/url?ttl_secs=` | a signed, expiring URL |
//! | `GET /v1/media/signed/{tenant}/{id}?exp=&sig=` | download without a token |
//!
//! [`openapi`] describes them (the `caas` binary merges it into the API's document).

use crate::download;
use crate::error::MediaError;
use crate::model::Media;
use crate::state::{Caller, MediaState};
use crate::upload::{self, Complete, Initiate, PartStatus, Single, UploadStatus};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post, put};
use caas_domain::{ConversationId, TenantId};
use caas_kit::error::{ErrorBody, Json, Path, Query};
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The OpenAPI document of the media routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(upload_single, initiate, status, abort, put_part, complete, metadata, delete, content,
        thumbnail, signed_url, signed),
    tags((name = "media", description = "Files of conversations: uploads, downloads, signed URLs, thumbnails (docs/media.md)"))
)]
struct MediaDoc;

/// The bytes of a file, as a request or response body (only in the OpenAPI document: the
/// handlers stream bodies).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct FileBytes(pub Vec<u8>);

/// The OpenAPI operations of the media routes (`/v1/media/...`), to merge into the API's
/// document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <MediaDoc as utoipa::OpenApi>::openapi()
}

/// The media routes with their state, relative to `/v1/media` (see [`crate::service`]).
pub fn router(state: MediaState) -> Router {
    Router::new()
        .route(
            "/conversations/{conversation_id}/files",
            post(upload_single),
        )
        .route("/conversations/{conversation_id}/uploads", post(initiate))
        .route("/uploads/{upload_id}", get(status).delete(abort))
        .route("/uploads/{upload_id}/parts/{number}", put(put_part))
        .route("/uploads/{upload_id}/complete", post(complete))
        .route("/files/{media_id}", get(metadata).delete(delete))
        .route("/files/{media_id}/content", get(content))
        .route("/files/{media_id}/thumbnail", get(thumbnail))
        .route("/files/{media_id}/url", post(signed_url))
        .route("/signed/{tenant_id}/{media_id}", get(signed))
        .with_state(state)
}

fn content_length(h: &HeaderMap) -> Result<Option<u64>, MediaError> {
    h.get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| MediaError::invalid("invalid content-length"))
        })
        .transpose()
}

/// The optional `x-checksum-sha256` header (hex).
fn checksum(h: &HeaderMap) -> Result<Option<String>, MediaError> {
    h.get("x-checksum-sha256")
        .map(|v| {
            v.to_str()
                .map_err(|_| MediaError::invalid("invalid x-checksum-sha256"))
                .and_then(crate::model::parse_sha256)
        })
        .transpose()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NameQuery {
    /// The file name (metadata only: no `/`, `\`, `..`, control characters; 1-255 bytes).
    pub name: String,
}

#[utoipa::path(post, path = "/v1/media/conversations/{conversation_id}/files", tag = "media", security(("bearer" = [])),
    params(("conversation_id" = String, Path), NameQuery,
        ("x-checksum-sha256" = Option<String>, Header, description = "Hex SHA-256 of the body, verified")),
    request_body(content = FileBytes, content_type = "application/octet-stream",
        description = "The file. `content-type` says what the client thinks it is (checked against the bytes)."),
    responses((status = 201, body = Media), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
async fn upload_single(
    State(s): State<MediaState>,
    caller: Caller,
    Path(conversation): Path<ConversationId>,
    Query(q): Query<NameQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Media>), MediaError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(crate::sniff::essence)
        .unwrap_or_default();
    let input = Single {
        conversation,
        name: q.name,
        declared_type: declared,
        content_length: content_length(&headers)?,
        sha256: checksum(&headers)?,
    };
    let media = upload::single(&s, &caller, input, body.into_data_stream()).await?;
    Ok((StatusCode::CREATED, Json(media)))
}

#[utoipa::path(post, path = "/v1/media/conversations/{conversation_id}/uploads", tag = "media", security(("bearer" = [])),
    params(("conversation_id" = String, Path)), request_body = Initiate,
    responses((status = 201, body = UploadStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn initiate(
    State(s): State<MediaState>,
    caller: Caller,
    Path(conversation): Path<ConversationId>,
    Json(req): Json<Initiate>,
) -> Result<(StatusCode, Json<UploadStatus>), MediaError> {
    let st = upload::initiate(&s, &caller, conversation, req).await?;
    Ok((StatusCode::CREATED, Json(st)))
}

#[utoipa::path(get, path = "/v1/media/uploads/{upload_id}", tag = "media", security(("bearer" = [])),
    params(("upload_id" = String, Path)),
    responses((status = 200, body = UploadStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn status(
    State(s): State<MediaState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UploadStatus>, MediaError> {
    Ok(Json(upload::get_status(&s, &caller, &id).await?))
}

#[utoipa::path(delete, path = "/v1/media/uploads/{upload_id}", tag = "media", security(("bearer" = [])),
    params(("upload_id" = String, Path)),
    responses((status = 204, description = "Aborted: parts removed, quota given back"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn abort(
    State(s): State<MediaState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, MediaError> {
    upload::abort(&s, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/media/uploads/{upload_id}/parts/{number}", tag = "media", security(("bearer" = [])),
    params(("upload_id" = String, Path), ("number" = u32, Path, description = "1-based"),
        ("x-checksum-sha256" = Option<String>, Header, description = "Hex SHA-256 of the part, verified")),
    request_body(content = FileBytes, content_type = "application/octet-stream", description = "The part's bytes."),
    responses((status = 200, body = PartStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn put_part(
    State(s): State<MediaState>,
    caller: Caller,
    Path((id, number)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PartStatus>, MediaError> {
    let p = upload::put_part(
        &s,
        &caller,
        &id,
        number,
        content_length(&headers)?,
        checksum(&headers)?,
        body.into_data_stream(),
    )
    .await?;
    Ok(Json(p))
}

#[utoipa::path(post, path = "/v1/media/uploads/{upload_id}/complete", tag = "media", security(("bearer" = [])),
    params(("upload_id" = String, Path)), request_body = Complete,
    responses((status = 201, body = Media), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn complete(
    State(s): State<MediaState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<Complete>,
) -> Result<(StatusCode, Json<Media>), MediaError> {
    let media = upload::complete(&s, &caller, &id, req).await?;
    Ok((StatusCode::CREATED, Json(media)))
}

#[utoipa::path(get, path = "/v1/media/files/{media_id}", tag = "media", security(("bearer" = [])),
    params(("media_id" = String, Path)),
    responses((status = 200, body = Media), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn metadata(
    State(s): State<MediaState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Media>, MediaError> {
    Ok(Json(s.readable(&caller, &id).await?))
}

#[utoipa::path(delete, path = "/v1/media/files/{media_id}", tag = "media", security(("bearer" = [])),
    params(("media_id" = String, Path)),
    responses((status = 204, description = "Deleted (soft; purged later)"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn delete(
    State(s): State<MediaState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, MediaError> {
    download::delete(&s, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/media/files/{media_id}/content", tag = "media", security(("bearer" = [])),
    params(("media_id" = String, Path), ("range" = Option<String>, Header, description = "One range: `bytes=a-b`, `bytes=a-`, `bytes=-n`"),
        ("if-none-match" = Option<String>, Header), ("if-range" = Option<String>, Header)),
    responses((status = 200, description = "The file", content_type = "application/octet-stream", body = FileBytes),
        (status = 206, description = "The range", content_type = "application/octet-stream", body = FileBytes),
        (status = 304, description = "Not modified"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 416, description = "Range not satisfiable")))]
async fn content(
    State(s): State<MediaState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    let media = s.readable(&caller, &id).await?;
    download::serve(&s, &media, &headers, false).await
}

#[utoipa::path(get, path = "/v1/media/files/{media_id}/thumbnail", tag = "media", security(("bearer" = [])),
    params(("media_id" = String, Path)),
    responses((status = 200, description = "The thumbnail (JPEG, or PNG for transparent images)", content_type = "image/jpeg", body = FileBytes),
        (status = 304, description = "Not modified"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn thumbnail(
    State(s): State<MediaState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    let media = s.readable(&caller, &id).await?;
    download::serve(&s, &media, &headers, true).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UrlQuery {
    /// Lifetime in seconds (default `media.signedUrlTtlSecs`, at most `media.signedUrlMaxTtlSecs`).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedUrl {
    /// `/v1/media/signed/<tenant>/<id>?exp=&sig=` (prefixed with `media.publicBaseUrl`).
    pub url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[utoipa::path(post, path = "/v1/media/files/{media_id}/url", tag = "media", security(("bearer" = [])),
    params(("media_id" = String, Path), UrlQuery),
    responses((status = 200, body = SignedUrl), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn signed_url(
    State(s): State<MediaState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<UrlQuery>,
) -> Result<Json<SignedUrl>, MediaError> {
    let media = s.readable(&caller, &id).await?;
    let ttl = q.ttl_secs.unwrap_or(s.config.signed_url_ttl_secs);
    if ttl == 0 || ttl > s.config.signed_url_max_ttl_secs {
        return Err(MediaError::invalid(format!(
            "ttl_secs must be 1-{}",
            s.config.signed_url_max_ttl_secs
        )));
    }
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(ttl as i64);
    let exp = expires_at.unix_timestamp();
    let sig = s.signer.sign(media.tenant_id.as_str(), &media.id, exp);
    let url = format!(
        "{}/v1/media/signed/{}/{}?exp={exp}&sig={sig}",
        s.config.public_base_url.trim_end_matches('/'),
        media.tenant_id,
        media.id
    );
    Ok(Json(SignedUrl {
        url,
        expires_at: expires_at.replace_nanosecond(0).unwrap_or(expires_at),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// Expiry (Unix seconds).
    #[serde(default)]
    pub exp: Option<i64>,
    /// Hex HMAC-SHA256 over tenant, id and expiry.
    #[serde(default)]
    pub sig: Option<String>,
}

#[utoipa::path(get, path = "/v1/media/signed/{tenant_id}/{media_id}", tag = "media",
    params(("tenant_id" = String, Path), ("media_id" = String, Path), SignedQuery,
        ("range" = Option<String>, Header, description = "One range, as for `content`")),
    responses((status = 200, description = "The file, without a token", content_type = "application/octet-stream", body = FileBytes),
        (status = 206, description = "The range", content_type = "application/octet-stream", body = FileBytes),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn signed(
    State(s): State<MediaState>,
    Path((tenant, id)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<SignedQuery>,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    let forbidden =
        |code: &'static str, msg: &str| MediaError::new(StatusCode::FORBIDDEN, code, msg);
    let (Some(exp), Some(sig)) = (q.exp, q.sig) else {
        return Err(forbidden("invalid_signature", "the URL is not signed"));
    };
    if !s.signer.verify(&tenant, &id, exp, &sig) {
        return Err(forbidden(
            "invalid_signature",
            "the URL's signature is invalid",
        ));
    }
    if exp <= OffsetDateTime::now_utc().unix_timestamp() {
        return Err(forbidden("url_expired", "the URL has expired"));
    }
    let tenant = TenantId::parse(tenant).map_err(|_| MediaError::not_found("file"))?;
    crate::model::check_id(&id)?;
    // A suspended (or removed) tenant's files are not served, signed or not.
    match s.auth.tenant(&tenant).await? {
        Some(t) if t.is_active() => {}
        Some(_) => {
            return Err(MediaError::shared(caas_kit::error::ApiError::new(
                caas_domain::ErrorCode::TenantSuspended,
                "the tenant is suspended",
            )));
        }
        None => return Err(MediaError::not_found("file")),
    }
    let media = s
        .repo
        .get_media(&tenant, &id)
        .await?
        .filter(|m| !m.is_deleted())
        .ok_or_else(|| MediaError::not_found("file"))?;
    download::serve(&s, &media, &headers, false).await
}
