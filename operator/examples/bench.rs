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

use bytes::Bytes;
use caas_operator::admin_api::{AdminEndpoint, AdminError, TenantAdmin, TenantUpsert};
use caas_operator::controller::{self, Context, WatchScope};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type ResBody = BoxBody<Bytes, Infallible>;

struct Fake {
    tenants: usize,
    latency: Duration,
    calls: AtomicUsize,
    ready_tenants: Mutex<std::collections::HashSet<String>>,
    platform_applied: Mutex<Option<Instant>>,
    tenants_ready: Mutex<Option<Instant>>,
}

fn json_response(status: u16, v: &Value) -> Response<ResBody> {
    let bytes = Bytes::from(serde_json::to_vec(v).unwrap_or_default());
    let mut r = Response::new(Full::new(bytes).boxed());
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn not_found() -> Response<ResBody> {
    json_response(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404}),
    )
}

fn platform() -> Value {
    json!({
        "apiVersion": "caas.dev/v1alpha1", "kind": "ChatPlatform",
        "metadata": {"name": "orchid", "namespace": "bay", "uid": "uid-orchid", "generation": 1, "resourceVersion": "1"},
        "spec": {
            "version": "9.8.7",
            "mongodb": {"uriSecretRef": {"name": "creds", "key": "uri"}},
            "kafka": {"bootstrapServers": "k0:9092"},
            "redis": {"urlSecretRef": {"name": "creds", "key": "url"}},
            "objectStorage": {"bucket": "bkt", "credentialsSecretRef": {"name": "creds"}}
        },
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "AllComponentsReady", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    })
}

fn tenant(i: usize) -> Value {
    json!({
        "apiVersion": "caas.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": format!("t{i}"), "namespace": "bay", "uid": format!("uid-t{i}"), "generation": 1,
                     "resourceVersion": "1", "finalizers": ["caas.dev/tenant-cleanup"]},
        "spec": {"platformRef": {"name": "orchid"}, "displayName": format!("Tenant {i}"), "features": ["search"]}
    })
}

fn secret(name: &str) -> Value {
    let v = "dmFsdWUtdmFsdWUtdmFsdWUtdmFsdWUtdmFsdWUtdmFsdWU=";
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "bay"},
           "data": {"uri": v, "url": v, "accessKeyId": v, "secretAccessKey": v, "token": v, "k1.pem": v, "appId": v, "appSecret": v}})
}

impl Fake {
    async fn handle(self: Arc<Self>, req: Request<Body>) -> Response<ResBody> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        if query.contains("watch=true") || query.contains("watch=1") {
            // A watch that never sends anything: the caches stay as listed.
            let pending = futures::stream::pending::<Result<http_body::Frame<Bytes>, Infallible>>();
            return Response::new(StreamBody::new(pending).boxed());
        }
        let body = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match method {
            Method::GET if path.ends_with("/chatplatforms") => {
                json_response(200, &list("ChatPlatformList", vec![platform()]))
            }
            Method::GET if path.ends_with("/tenants") => json_response(
                200,
                &list("TenantList", (0..self.tenants).map(tenant).collect()),
            ),
            Method::GET if path.contains("/chatplatforms/") => json_response(200, &platform()),
            Method::GET if path.contains("/secrets/") => {
                json_response(200, &secret(path.rsplit('/').next().unwrap_or("")))
            }
            Method::GET if path.contains("customresourcedefinitions") => not_found(),
            Method::GET => json_response(200, &list("List", vec![])),
            Method::PATCH if path.ends_with("/status") => {
                let parts: Vec<&str> = path.split('/').collect();
                let name = parts[parts.len() - 2];
                let mut object = if path.contains("/tenants/") {
                    tenant(name.trim_start_matches('t').parse().unwrap_or(0))
                } else {
                    platform()
                };
                object["status"] = body["status"].clone();
                if path.contains("/chatplatforms/") {
                    self.platform_applied
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert_with(Instant::now);
                } else if body["status"]["appId"].is_string() {
                    let mut ready = self.ready_tenants.lock().unwrap_or_else(|e| e.into_inner());
                    ready.insert(name.to_owned());
                    if ready.len() == self.tenants {
                        self.tenants_ready
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(Instant::now);
                    }
                }
                json_response(200, &object)
            }
            Method::PATCH | Method::POST | Method::PUT => json_response(200, &body),
            _ => not_found(),
        }
    }
}

/// An admin API that accepts everything at once.
struct NoopAdmin;

#[async_trait::async_trait]
impl TenantAdmin for NoopAdmin {
    async fn upsert_tenant(
        &self,
        _: &AdminEndpoint,
        _: &str,
        _: &TenantUpsert,
    ) -> Result<(), AdminError> {
        Ok(())
    }
    async fn register_credential(
        &self,
        _: &AdminEndpoint,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<(), AdminError> {
        Ok(())
    }
    async fn revoke_credential(
        &self,
        _: &AdminEndpoint,
        _: &str,
        _: &str,
    ) -> Result<(), AdminError> {
        Ok(())
    }
    async fn suspend_tenant(&self, _: &AdminEndpoint, _: &str) -> Result<(), AdminError> {
        Ok(())
    }
    async fn delete_tenant(&self, _: &AdminEndpoint, _: &str) -> Result<(), AdminError> {
        Ok(())
    }
}

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
    let fake = Arc::new(Fake {
        tenants,
        latency,
        calls: AtomicUsize::new(0),
        ready_tenants: Mutex::default(),
        platform_applied: Mutex::default(),
        tenants_ready: Mutex::default(),
    });
    let service = {
        let fake = fake.clone();
        tower::service_fn(move |req: Request<Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(req).await) }
        })
    };
    let client = kube::Client::new(service, "bay");
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
        let done = fake
            .tenants_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
            && fake
                .platform_applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let platform_ms = fake
        .platform_applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| (t - started).as_secs_f64() * 1e3);
    let tenants_ms = fake
        .tenants_ready
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|t| (t - started).as_secs_f64() * 1e3);
    let result = json!({
        "tenants": tenants,
        "latency_ms": latency.as_secs_f64() * 1e3,
        "platform_applied_ms": platform_ms,
        "all_tenants_ready_ms": tenants_ms,
        "api_calls": fake.calls.load(Ordering::Relaxed),
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
