//! The gateway: the REST face of caas (`/v1`), and the tenant admin API on the internal port
//! (`/admin/v1`). Handlers live in [`routes`] (user API) and [`admin`] (operator API); shared
//! state, the caller extractors and the write path helpers live in [`state`].
//!
//! Writes of messages never touch the store: they are validated, authorized and rendered here,
//! published to the conversation-events log, and acknowledged once the log has them; the pipeline
//! persists them. Reads wait (bounded) until the log's partition of the conversation has been
//! persisted up to what was published before the read began — read-your-writes without reading
//! the log. Conversations, members and users are written to the store directly, then announced
//! on the log.

pub mod admin;
pub mod api;
pub mod routes;
pub mod state;
pub mod write;

pub use state::AppState;

use axum::Router;
use utoipa::OpenApi as _;

/// The OpenAPI document of the public API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "caas API", description = "Chat as a service: REST API (v1)."),
    modifiers(&SecurityAddon),
    tags(
        (name = "auth", description = "Token exchange"),
        (name = "users"), (name = "conversations"), (name = "members"), (name = "messages")
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The public router (without the standard middleware stack: see `caas_kit::server::wrap`) and
/// its OpenAPI document, also served at `/v1/openapi.json`.
pub fn router(state: AppState) -> Router {
    router_with_openapi(state, openapi())
}

/// [`router`] serving `doc` at `/v1/openapi.json`: the `caas` binary passes the gateway's
/// document merged with those of the other workloads' public routes (media, search), which this
/// crate does not depend on.
pub fn router_with_openapi(state: AppState, doc: utoipa::openapi::OpenApi) -> Router {
    let (router, _) = routes::openapi_router().split_for_parts();
    let doc = std::sync::Arc::new(doc);
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .with_state(state)
}

/// The OpenAPI document, for generation into `docs/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) = routes::openapi_router().split_for_parts();
    let mut full = ApiDoc::openapi();
    full.merge(doc);
    full
}

/// The internal router: the tenant admin API.
pub fn internal_router(state: AppState) -> Router {
    admin::router().with_state(state)
}
