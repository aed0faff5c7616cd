//! A store outage during a run, against a real MongoDB wire-protocol server (nx-27017) that the
//! test starts, kills (SIGKILL) and starts again on the same port and data file: the pipeline
//! stops consuming (circuit breaker), `/ready` answers 503 and then 200 again, the attempts
//! against the dead store stay bounded (backoff, not a hot loop), and once the store is back
//! every message is stored exactly once.
//!
//! Needs `nx-27017` on PATH (`pip install nx-27017`; `scripts/test.sh` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use caas_bus::embedded::EmbeddedLog;
use caas_config::PipelineConfig;
use caas_domain::MessageId;
use caas_domain::model::TenantStatus;
use caas_kit::health::Health;
use caas_store::DynStore;
use caas_store::mongo::MongoStore;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    child: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nx(dir: &Path, port: u16) -> Server {
    let log =
        std::fs::File::create(dir.join(format!("nx-{}.log", Instant::now().elapsed().as_nanos())))
            .unwrap();
    let child = Command::new("nx-27017")
        .arg("--db")
        .arg(dir.join("nx.db"))
        .args(["--host", "127.0.0.1", "-p", &port.to_string()])
        .arg("--pid-file")
        .arg(dir.join("nx.pid"))
        .arg("--log-file")
        .arg(dir.join("nx.server.log"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("nx-27017 is needed on PATH for this test (pip install nx-27017; scripts/test.sh installs it)");
    let end = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nx-27017 did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child: Some(child) }
}

async fn ready_status(url: &str) -> u16 {
    reqwest::get(url).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_pauses_the_pipeline_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut nx = start_nx(dir.path(), port);
    let uri =
        format!("mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=500&connectTimeoutMS=500");
    let mongo = MongoStore::connect(&uri, "outage").await.unwrap();
    let store: DynStore = Arc::new(mongo.clone());
    let log = Arc::new(EmbeddedLog::open(dir.path().join("log.db"), 2).unwrap());
    let (acme, room) = (tid("acme"), cid("room"));
    tenant(store.as_ref(), &acme, TenantStatus::Active).await;
    conversation(store.as_ref(), &acme, &room, &["ann", "ben"]).await;

    let cfg = PipelineConfig {
        batch_max_events: 50,
        batch_linger_ms: 1,
        breaker_min_backoff_ms: 50,
        breaker_max_backoff_ms: 400,
        ..PipelineConfig::default()
    };
    let running = start(store.clone(), log.clone(), cfg);
    // /ready as the workloads serve it (caas-kit), with the pipeline's check.
    let ph = running.health.clone();
    let health = Health::builder()
        .check("pipeline", move || {
            let ph = ph.clone();
            async move { ph.check() }
        })
        .build(Duration::ZERO);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ready = format!("http://{}/ready", listener.local_addr().unwrap());
    let router = health.public_router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    assert_eq!(ready_status(&ready).await, 200);

    let ids: Vec<MessageId> = (0..400).map(|_| MessageId::generate()).collect();
    for (i, id) in ids[..150].iter().enumerate() {
        publish(
            log.as_ref(),
            &acme,
            &room,
            created(*id, "ann", &format!("m{i}"), &[]),
        )
        .await;
    }
    wait_for(
        "the first messages stored",
        Duration::from_secs(60),
        || async { (all_messages(store.as_ref(), &acme, &room).await.len() == 150).then_some(()) },
    )
    .await;

    // The store goes away (SIGKILL), the log keeps accepting.
    if let Some(mut c) = nx.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let outage = Instant::now();
    for (i, id) in ids[150..].iter().enumerate() {
        publish(
            log.as_ref(),
            &acme,
            &room,
            created(*id, "ben", &format!("m{}", i + 150), &[]),
        )
        .await;
    }
    wait_for("readiness to turn 503", Duration::from_secs(30), || async {
        (ready_status(&ready).await == 503).then_some(())
    })
    .await;
    assert_eq!(running.metrics.breaker_open.get(), 1);
    // Keep the store down for a while; meanwhile the pipeline must not spin.
    let before = running.metrics.errors_of("persist")
        + running.metrics.errors_of("tenant")
        + running.metrics.errors_of("authorize");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = running.metrics.errors_of("persist")
        + running.metrics.errors_of("tenant")
        + running.metrics.errors_of("authorize")
        - before;
    let secs = outage.elapsed().as_secs_f64();
    // Backoff 50 ms doubling to 400 ms: at most ~20 attempts per second even with no time
    // spent in the failing call itself (a hot loop would make thousands).
    assert!(
        (attempts as f64) <= secs * 20.0 + 5.0,
        "{attempts} store attempts in {secs:.1} s of outage"
    );
    assert!(attempts >= 1, "the pipeline keeps probing the store");
    assert_eq!(ready_status(&ready).await, 503);

    // The store comes back (same port, same data): the pipeline resumes by itself.
    nx = start_nx(dir.path(), port);
    wait_for("readiness back to 200", Duration::from_secs(60), || async {
        (ready_status(&ready).await == 200).then_some(())
    })
    .await;
    let all = wait_for("every message stored", Duration::from_secs(60), || async {
        let all = all_messages(store.as_ref(), &acme, &room).await;
        (all.len() >= 400).then_some(all)
    })
    .await;
    let breaker = running.metrics.breaker_open.clone();
    running.stop().await;
    assert_eq!(all.len(), 400, "each message once");
    let texts: Vec<String> = all.iter().map(|m| m.text.clone()).collect();
    let want: Vec<String> = (0..400).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want, "in log order");
    assert_eq!(breaker.get(), 0);
    drop(nx);
}
