//! The controllers as the binary runs them (`run`: watchers, reflectors, triggers, both
//! reconcilers, graceful shutdown) against the in-process fake API server.

use super::{Context, WatchScope, run};
use crate::fake_api::{FakeApiServer, NoopAdmin};
use kube::runtime::events::Reporter;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reconciles_a_platform_and_its_tenants_then_stops_on_shutdown() {
    let fake = FakeApiServer::new(3, Duration::ZERO);
    let reporter = Reporter {
        controller: "caas-operator".into(),
        instance: None,
    };
    let ctx = Arc::new(Context::new(fake.client(), "ops", reporter, Arc::new(NoopAdmin)).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = futures::FutureExt::shared(Box::pin(async move {
        let _ = stopped.await;
    }));
    let task = tokio::spawn(run(
        ctx,
        WatchScope::Namespaces(vec!["bay".into()]),
        shutdown,
    ));

    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.tenants_ready_at().is_none() || fake.platform_applied_at().is_none() {
        assert!(
            Instant::now() < deadline,
            "not reconciled in time ({} calls)",
            fake.calls()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = fake.platform_status().unwrap();
    assert_eq!(status["tenants"], 3, "{status}");
    assert_eq!(status["components"]["gateway"]["desiredReplicas"], 2);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run stops on shutdown")
        .unwrap();
}
