//! The search workload of caas (`caas search`, and inside `caas standalone`): a tantivy index
//! of the conversation-events log.
//!
//! - [`schema`]: fields, analyzers, the index version (pure).
//! - [`index`]: one index generation on disk; log positions live in its commit payload.
//! - [`indexer`]: log batches → index operations → one commit (documents + positions) → consumer
//!   offsets.
//! - [`engine`]: the current generation, the indexer loop, online rebuilds from the store.
//! - [`query`]: scoped queries (messages, suggestions, conversations and users by name).
//! - [`http`]: `/v1/search/...` and the admin API; [`metrics`].
//!
//! Isolation: every document carries its tenant; every query requires the caller's tenant and
//! restricts messages and conversations to the conversations the caller is a member of, read
//! from the store at query time.

#![forbid(unsafe_code)]

pub mod engine;
pub mod http;
pub mod index;
pub mod indexer;
pub mod metrics;
pub mod query;
pub mod schema;

pub use engine::Engine;
pub use http::{
    INTERNAL_PREFIX, PUBLIC_PREFIX, SearchState, internal_router, internal_routes, router, routes,
};
pub use metrics::SearchMetrics;
