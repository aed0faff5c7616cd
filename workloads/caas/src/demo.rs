//! The try-out chat page of `caas standalone`, and only of standalone: `caas gateway` never
//! mounts any of this. On the API port:
//!
//! - `GET /` and `GET /assets/{file}`: the page (`workloads/caas/assets`: plain HTML, CSS and
//!   JavaScript with the official Socket.IO browser client), embedded in the binary, revalidated
//!   by ETag;
//! - `GET /demo/users`: the demo users the page offers;
//! - `POST /demo/token {"user_id"}`: a user token of the demo tenant for one of those users. It
//!   plays an app's backend: it exchanges the demo app credentials, which stay in this process,
//!   through the gateway's own `POST /v1/token`.
//!
//! [`seed`] creates the demo users and conversations through the gateway's routes (the same
//! write path as any client), idempotently, on every start.

use crate::standalone::Demo;
use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use caas_kit::error::{ApiError, Json};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt as _;

/// The demo users: id and display name.
pub const USERS: &[(&str, &str)] = &[
    ("ann", "Ann Archer"),
    ("bob", "Bob Baker"),
    ("carol", "Carol Chen"),
];

/// The seeded channel every demo user is in.
pub const CHANNEL: &str = "general";

/// The page's files: URL path, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../assets/index.html"),
    ),
    (
        "/assets/chat.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/chat.js"),
    ),
    (
        "/assets/chat.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/chat.css"),
    ),
    (
        "/assets/socket.io.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/socket.io.min.js"),
    ),
];

/// What the page may load: its own scripts and styles, its own origin for REST and WebSocket,
/// nothing inline (message HTML is sanitized by the server; this is the second fence). Images:
/// its own origin (signed media URLs) and `blob:` (thumbnails the page fetched with its token).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct DemoState {
    gateway: Router,
    demo: Arc<Demo>,
}

/// The page, its assets and the demo endpoints. `gateway` is the gateway's public router; the
/// token endpoint calls it in-process.
pub fn router(gateway: Router, demo: Demo) -> Router {
    let state = DemoState {
        gateway,
        demo: Arc::new(demo),
    };
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve("/", &headers) }),
        )
        .route("/assets/{file}", get(asset))
        .route("/demo/users", get(users))
        .route("/demo/token", post(token))
        .with_state(state)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&format!("/assets/{file}"), &headers)
}

/// FNV-1a 64 of the bytes, quoted: the ETag of an embedded file.
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return ApiError::not_found("file").into_response();
    };
    let tag = etag(body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Body::from(*body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = resp.headers_mut();
    // Revalidate every time: the binary may have changed since; an unchanged file costs a 304.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path == "/" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    resp
}

async fn users() -> axum::Json<Value> {
    let users: Vec<Value> = USERS
        .iter()
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    axum::Json(json!({ "users": users }))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user_id: String,
}

/// `POST /demo/token`: the gateway's token exchange with the demo app credentials, for demo
/// users only. The answer is the gateway's (`token`, `expires_at`, `user`, `socket_urls`).
async fn token(
    State(s): State<DemoState>,
    Json(req): Json<TokenRequest>,
) -> Result<Response, ApiError> {
    if !USERS.iter().any(|(id, _)| *id == req.user_id) {
        let ids: Vec<&str> = USERS.iter().map(|(id, _)| *id).collect();
        return Err(ApiError::forbidden(format!(
            "only the demo users get tokens here: {}",
            ids.join(", ")
        )));
    }
    let body = json!({
        "app_id": s.demo.app_id,
        "app_secret": s.demo.app_secret,
        "user_id": req.user_id,
    });
    let req = json_request(Method::POST, "/v1/token", None, &body).map_err(ApiError::internal)?;
    s.gateway.oneshot(req).await.map_err(ApiError::internal)
}

fn json_request(
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
) -> anyhow::Result<Request<Body>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    Ok(req.body(Body::from(serde_json::to_vec(body)?))?)
}

/// Calls the gateway in-process; returns the status and the JSON body.
async fn call(
    gateway: &Router,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let req = json_request(method.clone(), path, bearer, body)?;
    let resp = gateway.clone().oneshot(req).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, json))
}

/// What standalone adds to the service port: seeds the demo data (a failure is logged, the page
/// is served anyway), then the page and the demo endpoints.
pub fn extra(demo: Demo) -> crate::run::Extra {
    Box::new(move |state| {
        Box::pin(async move {
            let gateway = caas_gateway::router(state);
            if let Err(e) = seed(&gateway, &demo).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "Failed to seed the demo users and conversations."
                );
            }
            Ok(router(gateway, demo))
        })
    })
}

/// Creates (or updates) the demo users, the channel `general` with all of them (created by ann,
/// with a welcome message) and a direct conversation of ann and bob. Safe to run on every start:
/// what exists is left as it is.
pub async fn seed(gateway: &Router, demo: &Demo) -> anyhow::Result<()> {
    let mut tokens = Vec::new();
    for (id, name) in USERS {
        let body = json!({
            "app_id": demo.app_id,
            "app_secret": demo.app_secret,
            "user_id": id,
            "name": name,
        });
        let (status, answer) = call(gateway, Method::POST, "/v1/token", None, &body).await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "token exchange for {id}: {status} {answer}"
        );
        let token = answer["token"]
            .as_str()
            .with_context(|| format!("token exchange for {id}: no token in {answer}"))?;
        tokens.push(token.to_string());
    }
    let ann = tokens.first().context("no demo users")?;
    let others: Vec<&str> = USERS.iter().skip(1).map(|(id, _)| *id).collect();

    let channel = json!({
        "kind": "channel",
        "id": CHANNEL,
        "name": "General",
        "topic": "Everyone in the demo tenant",
        "members": others,
    });
    let (status, answer) = call(
        gateway,
        Method::POST,
        "/v1/conversations",
        Some(ann),
        &channel,
    )
    .await?;
    match status {
        StatusCode::CREATED => {
            let welcome = json!({
                "text": "Welcome to caas, @bob and @carol! Open this page in a second window as another demo user and say hello. #demo",
                "client_msg_id": "demo-welcome",
            });
            let path = format!("/v1/conversations/{CHANNEL}/messages");
            let (status, answer) = call(gateway, Method::POST, &path, Some(ann), &welcome).await?;
            anyhow::ensure!(
                status == StatusCode::CREATED,
                "welcome message: {status} {answer}"
            );
        }
        StatusCode::CONFLICT if answer["error"]["code"] == "already_exists" => {}
        _ => anyhow::bail!("creating #{CHANNEL}: {status} {answer}"),
    }

    let direct =
        json!({"kind": "direct", "members": [others.first().context("no second demo user")?]});
    let (status, answer) = call(
        gateway,
        Method::POST,
        "/v1/conversations",
        Some(ann),
        &direct,
    )
    .await?;
    anyhow::ensure!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "creating the direct conversation: {status} {answer}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn page_only() -> Router {
        router(
            Router::new(),
            Demo {
                tenant_id: "demo".into(),
                app_id: "app_x".into(),
                app_secret: "sk_x".into(),
            },
        )
    }

    async fn get_with(path: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::builder().uri(path);
        if let Some(t) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        page_only()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn files_are_served_with_their_type_and_revalidated_by_etag() {
        for (path, ty, body) in ASSETS {
            let r = get_with(path, None).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], *ty, "{path}");
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache", "{path}");
            let tag = r.headers()[header::ETAG].to_str().unwrap().to_string();
            let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(&bytes[..], *body, "{path}");

            let again = get_with(path, Some(&tag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
            let stale = get_with(path, Some("\"0000000000000000\"")).await;
            assert_eq!(stale.status(), StatusCode::OK, "{path}");
        }
        // Distinct files, distinct tags.
        let tags: std::collections::BTreeSet<String> =
            ASSETS.iter().map(|(_, _, b)| etag(b)).collect();
        assert_eq!(tags.len(), ASSETS.len());
    }

    #[tokio::test]
    async fn the_page_carries_a_content_security_policy() {
        let r = get_with("/", None).await;
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let html = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        let html = String::from_utf8(html.to_vec()).unwrap();
        for (path, _, _) in &ASSETS[1..] {
            assert!(html.contains(path), "index.html loads {path}");
        }
    }

    #[tokio::test]
    async fn unknown_assets_are_404() {
        let r = get_with("/assets/nope.js", None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn tokens_only_for_demo_users() {
        let req = json_request(
            Method::POST,
            "/demo/token",
            None,
            &json!({"user_id": "mallory"}),
        )
        .unwrap();
        let r = page_only().oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }
}
