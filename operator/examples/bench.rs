//! Operator benchmark (not a test): the real controllers (`controller::run`: watches,
//! reflectors, reconcilers) against an in-process fake API server that answers every call at
//! once (or after `--latency-ms`), with one ChatPlatform and N Tenants.
//!
//! Measures, per N (each in its own process, so RSS is not carried over):
//! - time from start to the platform's first status write (every object applied),
//! - time until every Tenant is Ready, and the number of API calls,
//! - the process's resident memory (VmRSS) and peak (VmHWM) after all tenants are Ready.
//!
//! Run: `cargo run --release -p caas-operator --example bench -- [--latency-ms 1]`
//! (one process per N in 1, 100, 1000), or `-- --tenants N` for a single measurement.

use caas_operator::controller::{self, Context, WatchScope};
use caas_operator::fake_api::{FakeApiServer, NoopAdmin};
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn measure(tenants: usize, latency: Duration) -> Value {
    let fake = FakeApiServer::new(tenants, latency);
    let client = fake.client();
    let reporter = Reporter {
        controller: "caas-operator".into(),
        instance: None,
    };
    let ctx = Arc::new(
        Context::new(client, "ops", reporter, Arc::new(NoopAdmin))
            .unwrap_or_else(|e| panic!("metrics: {e}")),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = futures::FutureExt::shared(Box::pin(async move {
        let _ = stop_rx.await;
    }));
    let started = Instant::now();
    let run = tokio::spawn(controller::run(ctx, WatchScope::All, shutdown));
    let deadline = started + Duration::from_secs(300);
    loop {
        let done = fake.tenants_ready_at().is_some() && fake.platform_applied_at().is_some();
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let platform_ms = fake
        .platform_applied_at()
        .map(|t| (t - started).as_secs_f64() * 1e3);
    let tenants_ms = fake
        .tenants_ready_at()
        .map(|t| (t - started).as_secs_f64() * 1e3);
    let result = json!({
        "tenants": tenants,
        "latency_ms": latency.as_secs_f64() * 1e3,
        "platform_applied_ms": platform_ms,
        "all_tenants_ready_ms": tenants_ms,
        "api_calls": fake.calls(),
        "rss_kb": proc_status_kb("VmRSS:"),
        "peak_rss_kb": proc_status_kb("VmHWM:"),
    });
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), run).await;
    result
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let latency = Duration::from_micros(
        (arg("--latency-ms")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            * 1e3) as u64,
    );
    if let Some(n) = arg("--tenants").and_then(|v| v.parse().ok()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        println!("{}", runtime.block_on(measure(n, latency)));
        return;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    println!(
        "| tenants | API latency | platform applied | all tenants Ready | API calls | RSS | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for n in [1, 100, 1000] {
        let out = std::process::Command::new(&exe)
            .args([
                "--tenants",
                &n.to_string(),
                "--latency-ms",
                &format!("{}", latency.as_secs_f64() * 1e3),
            ])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let ms = |k: &str| {
            v[k].as_f64()
                .map_or("timeout".to_owned(), |x| format!("{x:.1} ms"))
        };
        println!(
            "| {n} | {} ms | {} | {} | {} | {:.1} MiB | {:.1} MiB |",
            v["latency_ms"],
            ms("platform_applied_ms"),
            ms("all_tenants_ready_ms"),
            v["api_calls"],
            v["rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
            v["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
        );
    }
}
