//! The harness every caas workload runs in. What lives here is shared by all five workloads and
//! by `caas standalone`; what a single workload does lives in its own crate.
//!
//! - [`config`]: load [`caas_config::Config`] from a file and `CAAS_*` environment variables.
//! - [`telemetry`]: JSON logs; [`correlation`]: the `x-correlation-id` carried through.
//! - [`metrics`]: the Prometheus registry and the HTTP metrics; served on its own port.
//! - [`health`]: `/health`, `/ready` (cached, 503 while draining) and the detailed report.
//! - [`shutdown`]: one cancellation signal for SIGTERM/SIGINT, drain with a deadline.
//! - [`server`]: the HTTP middleware stack and serving with graceful shutdown.
//! - [`error`]: [`error::ApiError`], one JSON error shape with a stable code.
//! - [`auth`]: Ed25519 keys, platform user tokens, the authenticator (tenant suspended, revoked).
//! - [`ratelimit`], [`dedupe`]: in memory by default, Redis-backed across pods.
//! - [`random`]: secrets and ids.

pub mod auth;
pub mod config;
pub mod correlation;
pub mod dedupe;
pub mod error;
pub mod health;
pub mod metrics;
pub mod random;
pub mod ratelimit;
pub mod server;
pub mod shutdown;
pub mod telemetry;
