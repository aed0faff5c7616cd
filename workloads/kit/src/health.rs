//! Health and readiness.
//! - `/health`: liveness. The process answers; no dependency is consulted, so a slow database
//!   never gets pods killed.
//! - `/ready`: every registered dependency check passed (results cached for `ready_cache_ms`, so
//!   probes never hammer a dependency), and the process is not draining (503 from the moment
//!   SIGTERM arrives, so load balancers stop sending work).
//! - `/ready/detail` (internal port): per dependency status, latency, last error and when.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use http::StatusCode;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The process's readiness state.
pub struct Health {
    checks: Vec<(String, CheckFn)>,
    ttl: Duration,
    draining: AtomicBool,
    cache: tokio::sync::Mutex<Option<(Instant, Report)>>,
    last_errors: Mutex<HashMap<String, (String, OffsetDateTime)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.checks.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub name: String,
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_error_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ready: bool,
    pub draining: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    pub checks: Vec<CheckReport>,
}

/// Builds a [`Health`].
#[derive(Default)]
pub struct HealthBuilder {
    checks: Vec<(String, CheckFn)>,
}

impl HealthBuilder {
    /// Adds a dependency check; it should answer within a few hundred milliseconds (it is given
    /// 2 s before counting as failed).
    pub fn check<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name.to_string(), Arc::new(move || Box::pin(f()))));
        self
    }

    pub fn build(self, ttl: Duration) -> Arc<Health> {
        Arc::new(Health {
            checks: self.checks,
            ttl,
            draining: AtomicBool::new(false),
            cache: tokio::sync::Mutex::new(None),
            last_errors: Mutex::new(HashMap::new()),
        })
    }
}

impl Health {
    pub fn builder() -> HealthBuilder {
        HealthBuilder::default()
    }

    /// From now on `/ready` answers 503.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The report, from the cache when fresh.
    pub async fn report(&self) -> Report {
        let mut cache = self.cache.lock().await;
        if let Some((at, r)) = cache.as_ref()
            && at.elapsed() < self.ttl
        {
            let mut r = r.clone();
            r.draining = self.is_draining();
            r.ready = r.ready && !r.draining;
            return r;
        }
        let results = futures::future::join_all(self.checks.iter().map(|(name, f)| async move {
            let start = Instant::now();
            let res = match tokio::time::timeout(Duration::from_secs(2), f()).await {
                Ok(r) => r,
                Err(_) => Err("timed out after 2s".to_string()),
            };
            (name.clone(), start.elapsed(), res)
        }))
        .await;
        let now = OffsetDateTime::now_utc();
        let mut last = self.last_errors.lock();
        let checks: Vec<CheckReport> = results
            .into_iter()
            .map(|(name, took, res)| {
                if let Err(e) = &res {
                    tracing::warn!(dependency = %name, error = %e, "Dependency check failed.");
                    last.insert(name.clone(), (e.clone(), now));
                }
                let (last_error, last_error_at) = last
                    .get(&name)
                    .map(|(e, at)| (Some(e.clone()), Some(*at)))
                    .unwrap_or_default();
                CheckReport {
                    name,
                    ok: res.is_ok(),
                    latency_ms: took.as_secs_f64() * 1000.0,
                    error: res.err(),
                    last_error,
                    last_error_at,
                }
            })
            .collect();
        drop(last);
        let draining = self.is_draining();
        let report = Report {
            ready: !draining && checks.iter().all(|c| c.ok),
            draining,
            checked_at: now,
            checks,
        };
        *cache = Some((Instant::now(), report.clone()));
        report
    }

    /// `/health` and `/ready`, for the service port.
    pub fn public_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/health",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/ready", get(ready))
            .with_state(self.clone())
    }

    /// `/ready/detail`, for the internal port.
    pub fn detail_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/ready/detail", get(detail))
            .with_state(self.clone())
    }
}

async fn ready(State(h): State<Arc<Health>>) -> Response {
    let r = h.report().await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if r.draining {
        "draining"
    } else if r.ready {
        "ready"
    } else {
        "not_ready"
    };
    let failing: Vec<&str> = r
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    (
        status,
        axum::Json(serde_json::json!({"status": word, "failing": failing})),
    )
        .into_response()
}

async fn detail(State(h): State<Arc<Health>>) -> Response {
    let r = h.report().await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn caches_and_drains() {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let (c, f) = (calls.clone(), fail.clone());
        let h = Health::builder()
            .check("db", move || {
                let (c, f) = (c.clone(), f.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if f.load(Ordering::SeqCst) {
                        Err("down".into())
                    } else {
                        Ok(())
                    }
                }
            })
            .build(Duration::from_secs(3600));
        assert!(h.report().await.ready);
        assert!(h.report().await.ready);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "cached");
        h.set_draining();
        let r = h.report().await;
        assert!(!r.ready && r.draining);

        // Recovery shows once the cache expires (here: a fresh Health with ttl 0).
        fail.store(true, Ordering::SeqCst);
        let f2 = fail.clone();
        let h2 = Health::builder()
            .check("db", move || {
                let f = f2.clone();
                async move {
                    if f.load(Ordering::SeqCst) {
                        Err("down".into())
                    } else {
                        Ok(())
                    }
                }
            })
            .build(Duration::ZERO);
        assert!(!h2.report().await.ready);
        fail.store(false, Ordering::SeqCst);
        let r = h2.report().await;
        assert!(r.ready);
        assert_eq!(
            r.checks[0].last_error.as_deref(),
            Some("down"),
            "last error is kept"
        );
    }

    #[tokio::test]
    async fn failing_check_reports_last_error() {
        let h = Health::builder()
            .check("kafka", || async { Err("refused".to_string()) })
            .build(Duration::ZERO);
        let r = h.report().await;
        assert!(!r.ready);
        assert_eq!(r.checks[0].error.as_deref(), Some("refused"));
        assert_eq!(r.checks[0].last_error.as_deref(), Some("refused"));
    }
}
