//! An in-process fake Kubernetes API server for tests and the benchmark (not used by the
//! operator binary): enough of the API for the real controllers (`controller::run`) to list,
//! watch, apply and write status for one ChatPlatform and N Tenants, answering at once or after
//! a fixed latency. Scripted, call-by-call tests use `mock_api` instead.

use crate::admin_api::{AdminEndpoint, AdminError, TenantAdmin, TenantUpsert};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use kube::client::Body;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type ResBody = BoxBody<Bytes, Infallible>;

/// The fake API server: one ChatPlatform `orchid` in namespace `bay` (Ready), `tenants` Tenants
/// `t0..` on it (with the finalizer already set), every Secret holding every key the
/// reconcilers read. Lists answer from that; watches stay open and silent; applies and creates
/// echo; status writes are recorded.
pub struct FakeApiServer {
    tenants: usize,
    latency: Duration,
    calls: AtomicUsize,
    ready_tenants: Mutex<std::collections::HashSet<String>>,
    platform_applied: Mutex<Option<Instant>>,
    platform_status: Mutex<Option<Value>>,
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

impl FakeApiServer {
    pub fn new(tenants: usize, latency: Duration) -> Arc<Self> {
        Arc::new(Self {
            tenants,
            latency,
            calls: AtomicUsize::new(0),
            ready_tenants: Mutex::default(),
            platform_applied: Mutex::default(),
            platform_status: Mutex::default(),
            tenants_ready: Mutex::default(),
        })
    }

    /// A client whose every request this fake answers.
    pub fn client(self: &Arc<Self>) -> kube::Client {
        let fake = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(req).await) }
        });
        kube::Client::new(service, "bay")
    }

    /// Requests answered so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// When the platform's status was first written (every object applied).
    pub fn platform_applied_at(&self) -> Option<Instant> {
        *self
            .platform_applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The last status written for the platform.
    pub fn platform_status(&self) -> Option<Value> {
        self.platform_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When the last Tenant got a Ready status with an app id.
    pub fn tenants_ready_at(&self) -> Option<Instant> {
        *self.tenants_ready.lock().unwrap_or_else(|e| e.into_inner())
    }

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
                    *self
                        .platform_status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(body["status"].clone());
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
#[derive(Debug)]
pub struct NoopAdmin;

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
