//! Tenant reconcile tests: the mock API server for Kubernetes calls, a recording fake for the
//! platform's admin API.

use super::tenant::{FINALIZER, reconcile};
use super::{Context, Error};
use crate::admin_api::{AdminEndpoint, AdminError, TenantAdmin, TenantUpsert};
use crate::crd::Tenant;
use crate::mock_api::{Answer, Call, Seen, call, serve};
use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake admin API was asked, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCall {
    Upsert(String, TenantUpsert),
    Register(String, String),
    Revoke(String, String),
    Suspend(String),
    Delete(String),
}

#[derive(Debug, Default)]
pub struct FakeAdmin {
    pub calls: Mutex<Vec<(AdminEndpoint, AdminCall)>>,
    /// Refuse every call with this HTTP status.
    pub refuse: Option<u16>,
}

impl FakeAdmin {
    fn record(&self, at: &AdminEndpoint, c: AdminCall) -> Result<(), AdminError> {
        self.calls.lock().unwrap().push((at.clone(), c));
        match self.refuse {
            Some(status) => Err(AdminError::Refused {
                what: "the call".into(),
                status,
                body: "{\"code\":\"boom\"}".into(),
            }),
            None => Ok(()),
        }
    }

    fn calls(&self) -> Vec<AdminCall> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl TenantAdmin for FakeAdmin {
    async fn upsert_tenant(
        &self,
        at: &AdminEndpoint,
        id: &str,
        body: &TenantUpsert,
    ) -> Result<(), AdminError> {
        self.record(at, AdminCall::Upsert(id.into(), body.clone()))
    }
    async fn register_credential(
        &self,
        at: &AdminEndpoint,
        id: &str,
        app_id: &str,
        _secret: &str,
    ) -> Result<(), AdminError> {
        self.record(at, AdminCall::Register(id.into(), app_id.into()))
    }
    async fn revoke_credential(
        &self,
        at: &AdminEndpoint,
        id: &str,
        app_id: &str,
    ) -> Result<(), AdminError> {
        self.record(at, AdminCall::Revoke(id.into(), app_id.into()))
    }
    async fn suspend_tenant(&self, at: &AdminEndpoint, id: &str) -> Result<(), AdminError> {
        self.record(at, AdminCall::Suspend(id.into()))
    }
    async fn delete_tenant(&self, at: &AdminEndpoint, id: &str) -> Result<(), AdminError> {
        self.record(at, AdminCall::Delete(id.into()))
    }
}

const CORE: &str = "/api/v1/namespaces/bay";
const CAAS: &str = "/apis/caas.dev/v1alpha1/namespaces/bay";

fn tenant_json(finalized: bool) -> Value {
    let mut t = json!({
        "apiVersion": "caas.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "wren", "namespace": "bay", "uid": "uid-wren-1", "generation": 2},
        "spec": {
            "platformRef": {"name": "orchid"}, "displayName": "Wren Ltd",
            "features": ["search", "uploads", "search"],
            "quotas": {"connections": 7, "messagesPerMinute": 70, "searchesPerMinute": 700, "maxUploadBytes": 7000, "storageBytes": 70000}
        }
    });
    if finalized {
        t["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    t
}

fn platform_json(ready: &str, message: &str) -> Value {
    json!({
        "apiVersion": "caas.dev/v1alpha1", "kind": "ChatPlatform",
        "metadata": {"name": "orchid", "namespace": "bay", "uid": "uid-orchid-1"},
        "spec": {
            "version": "9.8.7",
            "mongodb": {"uriSecretRef": {"name": "m-secret", "key": "m-key"}},
            "kafka": {"bootstrapServers": "k0:9092"},
            "redis": {"urlSecretRef": {"name": "r-secret", "key": "r-key"}},
            "objectStorage": {"bucket": "b-bucket", "credentialsSecretRef": {"name": "s-secret"}}
        },
        "status": {"conditions": [{
            "type": "Ready", "status": ready, "reason": "X", "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]}
    })
}

fn admin_token_secret() -> Value {
    // base64("tok-123\n")
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "orchid-admin-token"}, "data": {"token": "dG9rLTEyMwo="}})
}

fn context(client: Client, admin: Arc<FakeAdmin>) -> Arc<Context> {
    let reporter = Reporter {
        controller: "caas-operator".into(),
        instance: None,
    };
    Arc::new(Context::new(client, "ops-ns", reporter, admin).unwrap())
}

async fn run(
    tenant: Value,
    calls: Vec<Call>,
    admin: Arc<FakeAdmin>,
) -> (Result<Action, Error>, Vec<Seen>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"), admin);
    let n = calls.len();
    let server = serve(handle, calls);
    let tenant: Tenant = serde_json::from_value(tenant).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(tenant), ctx))
        .await
        .expect("the reconcile finished (no unexpected extra call)");
    let seen = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("every expected call came")
        .unwrap();
    assert_eq!(seen.len(), n);
    (result, seen)
}

fn status_patch() -> Call {
    call(
        Method::PATCH,
        &format!("{CAAS}/tenants/wren/status"),
        Answer::WithStatus(tenant_json(true)),
    )
}

fn ready_of(seen: &Seen) -> Value {
    seen.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_new_tenant_gets_credentials_and_is_upserted() {
    let admin = Arc::new(FakeAdmin::default());
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::Json(platform_json("True", "5 components ready")),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/orchid-admin-token"),
            Answer::Json(admin_token_secret()),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/wren-credentials"),
            Answer::NotFound,
        ),
        call(Method::POST, &format!("{CORE}/secrets"), Answer::Echo),
        status_patch(),
    ];
    let (result, seen) = run(tenant_json(true), calls, admin.clone()).await;
    assert_eq!(result.unwrap(), Action::requeue(super::tenant::RESYNC));

    let secret = &seen[3].body;
    let app_id = secret["stringData"]["appId"].as_str().unwrap().to_owned();
    assert!(app_id.starts_with("app_") && app_id.len() >= 4);
    assert!(secret["stringData"]["appSecret"].as_str().unwrap().len() >= 32);
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        "uid-wren-1"
    );

    let calls = admin.calls.lock().unwrap().clone();
    assert_eq!(
        calls[0].0,
        AdminEndpoint {
            base_url: "http://orchid-gateway.bay.svc:8081".into(),
            token: "tok-123".into()
        }
    );
    let AdminCall::Upsert(id, body) = &calls[0].1 else {
        panic!("{calls:?}")
    };
    assert_eq!(id, "wren");
    assert_eq!(body.name, "Wren Ltd");
    assert_eq!(body.features, ["search", "uploads"]);
    assert_eq!(
        (body.quotas.max_connections, body.quotas.storage_bytes),
        (7, 70000)
    );
    assert!(!body.suspended);
    assert_eq!(
        calls[1].1,
        AdminCall::Register("wren".into(), app_id.clone())
    );

    let ready = ready_of(&seen[4]);
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("Synced"))
    );
    assert_eq!(seen[4].body["status"]["appId"], app_id);
    assert_eq!(
        seen[4].body["status"]["credentialsSecret"],
        "wren-credentials"
    );
    // The wire body matches the gateway's PutTenant (snake_case quotas, deny_unknown_fields).
    let wire = serde_json::to_value(body).unwrap();
    assert_eq!(wire["quotas"]["messages_per_minute"], 70);
    let mut keys = wire.as_object().unwrap().keys().collect::<Vec<_>>();
    keys.sort();
    assert_eq!(keys, ["features", "name", "quotas", "suspended"]);
}

#[tokio::test]
async fn existing_credentials_are_reused() {
    let admin = Arc::new(FakeAdmin::default());
    let creds = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wren-credentials"},
        "data": {"appId": "YXBwX2tlcHQ=", "appSecret": "c2tfc2VjcmV0"}});
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::Json(platform_json("True", "")),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/orchid-admin-token"),
            Answer::Json(admin_token_secret()),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/wren-credentials"),
            Answer::Json(creds),
        ),
        status_patch(),
    ];
    let (result, _) = run(tenant_json(true), calls, admin.clone()).await;
    result.unwrap();
    assert_eq!(
        admin.calls()[1],
        AdminCall::Register("wren".into(), "app_kept".into())
    );
}

#[tokio::test]
async fn platform_not_ready_is_reported_with_its_cause() {
    let admin = Arc::new(FakeAdmin::default());
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::Json(platform_json("False", "waiting for socket 0/2 ready")),
        ),
        status_patch(),
    ];
    let (result, seen) = run(tenant_json(true), calls, admin.clone()).await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(super::tenant::WAIT_FOR_PLATFORM)
    );
    let ready = ready_of(&seen[1]);
    assert_eq!(ready["reason"], "PlatformNotReady");
    assert_eq!(
        ready["message"],
        "ChatPlatform orchid is not ready: waiting for socket 0/2 ready"
    );
    assert!(admin.calls().is_empty());
}

#[tokio::test]
async fn missing_platform_is_reported() {
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::NotFound,
        ),
        status_patch(),
    ];
    let (result, seen) = run(tenant_json(true), calls, Arc::default()).await;
    result.unwrap();
    assert_eq!(
        ready_of(&seen[1])["message"],
        "ChatPlatform orchid not found"
    );
}

#[tokio::test]
async fn an_admin_api_refusal_is_an_error_with_backoff_and_a_truthful_status() {
    let admin = Arc::new(FakeAdmin {
        refuse: Some(503),
        ..FakeAdmin::default()
    });
    let creds = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wren-credentials"},
        "data": {"appId": "YXBwX2tlcHQ=", "appSecret": "c2tfc2VjcmV0"}});
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::Json(platform_json("True", "")),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/orchid-admin-token"),
            Answer::Json(admin_token_secret()),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/wren-credentials"),
            Answer::Json(creds),
        ),
        status_patch(),
    ];
    let (result, seen) = run(tenant_json(true), calls, admin).await;
    let error = result.unwrap_err();
    assert_eq!(error.metric_label(), "admin_api");
    let ready = ready_of(&seen[3]);
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("AdminApiFailed"))
    );
    assert!(
        ready["message"].as_str().unwrap().contains("HTTP 503"),
        "{ready}"
    );

    // Retried with growing delays.
    let backoff = super::Backoff::default();
    let delays: Vec<_> = (0..8)
        .map(|_| backoff.next("tenant/bay/wren").as_secs())
        .collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
    backoff.reset("tenant/bay/wren");
    assert_eq!(backoff.next("tenant/bay/wren").as_secs(), 5);
}

#[tokio::test]
async fn a_new_tenant_gets_the_finalizer_first() {
    let calls = vec![call(
        Method::PATCH,
        &format!("{CAAS}/tenants/wren"),
        Answer::Json(tenant_json(true)),
    )];
    let (result, seen) = run(tenant_json(false), calls, Arc::default()).await;
    result.unwrap();
    assert!(
        seen[0].body.to_string().contains(FINALIZER),
        "{}",
        seen[0].body
    );
}

fn deleting(policy: &str) -> Value {
    let mut t = tenant_json(true);
    t["metadata"]["deletionTimestamp"] = json!("2026-02-02T00:00:00Z");
    t["spec"]["deletionPolicy"] = json!(policy);
    t
}

#[tokio::test]
async fn deletion_follows_the_policy_then_releases_the_finalizer() {
    for (policy, expected) in [
        ("Delete", AdminCall::Delete("wren".into())),
        ("Retain", AdminCall::Suspend("wren".into())),
    ] {
        let admin = Arc::new(FakeAdmin::default());
        let calls = vec![
            call(
                Method::GET,
                &format!("{CAAS}/chatplatforms/orchid"),
                Answer::Json(platform_json("True", "")),
            ),
            call(
                Method::GET,
                &format!("{CORE}/secrets/orchid-admin-token"),
                Answer::Json(admin_token_secret()),
            ),
            call(
                Method::PATCH,
                &format!("{CAAS}/tenants/wren"),
                Answer::Json(tenant_json(false)),
            ),
        ];
        let (result, seen) = run(deleting(policy), calls, admin.clone()).await;
        result.unwrap();
        assert_eq!(admin.calls(), [expected], "{policy}");
        assert!(
            seen[2].body.to_string().contains("remove"),
            "{}",
            seen[2].body
        );
    }
}

#[tokio::test]
async fn a_failed_cleanup_keeps_the_finalizer() {
    let admin = Arc::new(FakeAdmin {
        refuse: Some(500),
        ..FakeAdmin::default()
    });
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::Json(platform_json("True", "")),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/orchid-admin-token"),
            Answer::Json(admin_token_secret()),
        ),
    ];
    let (result, _) = run(deleting("Delete"), calls, admin).await;
    assert_eq!(result.unwrap_err().metric_label(), "admin_api");
}

#[tokio::test]
async fn deletion_after_the_platform_is_gone_does_not_block() {
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::NotFound,
        ),
        call(
            Method::PATCH,
            &format!("{CAAS}/tenants/wren"),
            Answer::Json(tenant_json(false)),
        ),
    ];
    let admin = Arc::new(FakeAdmin::default());
    let (result, _) = run(deleting("Delete"), calls, admin.clone()).await;
    result.unwrap();
    assert!(admin.calls().is_empty());
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn creds_secret(pairs: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(b64(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wren-credentials"}, "data": data})
}

#[tokio::test]
async fn the_rotation_annotation_issues_new_credentials_and_keeps_the_old_for_a_grace_period() {
    let admin = Arc::new(FakeAdmin::default());
    let mut tenant = tenant_json(true);
    tenant["metadata"]["annotations"] = json!({"caas.dev/rotate-credentials": "r1"});
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::Json(platform_json("True", "")),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/orchid-admin-token"),
            Answer::Json(admin_token_secret()),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/wren-credentials"),
            Answer::Json(creds_secret(&[
                ("appId", "app_old1"),
                ("appSecret", "sk_old"),
            ])),
        ),
        call(
            Method::PATCH,
            &format!("{CORE}/secrets/wren-credentials"),
            Answer::Json(creds_secret(&[("appId", "x"), ("appSecret", "y")])),
        ),
        call(
            Method::PATCH,
            &format!("{CAAS}/tenants/wren/status"),
            Answer::WithStatus(tenant.clone()),
        ),
    ];
    let (result, seen) = run(tenant, calls, admin.clone()).await;
    let action = result.unwrap();
    let patch = &seen[3].body["stringData"];
    let new_id = patch["appId"].as_str().unwrap().to_owned();
    assert_ne!(new_id, "app_old1");
    assert_eq!(patch["previousAppId"], "app_old1");
    assert_eq!(patch["rotatedFor"], "r1");
    assert!(patch["appSecret"].as_str().unwrap().starts_with("sk_"));
    assert_eq!(
        admin.calls()[1],
        AdminCall::Register("wren".into(), new_id.clone())
    );
    assert!(
        !admin
            .calls()
            .iter()
            .any(|c| matches!(c, AdminCall::Revoke(..))),
        "old one still in its grace period"
    );
    let status = &seen[4].body["status"];
    assert_eq!(status["appId"], new_id.as_str());
    assert_eq!(status["rotatedFor"], "r1");
    assert_eq!(status["previousAppId"], "app_old1");
    let revoke_after: k8s_openapi::jiff::Timestamp = status["previousRevokeAfter"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let in_secs = revoke_after.as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
    assert!((3500..=3600).contains(&in_secs), "{in_secs}");
    assert_eq!(
        action,
        Action::requeue(super::tenant::RESYNC),
        "the grace period is longer"
    );
}

#[tokio::test]
async fn a_rotation_already_written_to_the_secret_is_not_repeated() {
    let admin = Arc::new(FakeAdmin::default());
    let mut tenant = tenant_json(true);
    tenant["metadata"]["annotations"] = json!({"caas.dev/rotate-credentials": "r1"});
    let secret = creds_secret(&[
        ("appId", "app_new1"),
        ("appSecret", "sk_new"),
        ("previousAppId", "app_old1"),
        ("rotatedFor", "r1"),
    ]);
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::Json(platform_json("True", "")),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/orchid-admin-token"),
            Answer::Json(admin_token_secret()),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/wren-credentials"),
            Answer::Json(secret),
        ),
        call(
            Method::PATCH,
            &format!("{CAAS}/tenants/wren/status"),
            Answer::WithStatus(tenant.clone()),
        ),
    ];
    let (result, seen) = run(tenant, calls, admin.clone()).await;
    result.unwrap();
    assert_eq!(
        admin.calls()[1],
        AdminCall::Register("wren".into(), "app_new1".into())
    );
    assert_eq!(seen[3].body["status"]["previousAppId"], "app_old1");
}

#[tokio::test]
async fn the_previous_credential_is_revoked_after_its_grace_period() {
    let admin = Arc::new(FakeAdmin::default());
    let mut tenant = tenant_json(true);
    tenant["metadata"]["annotations"] = json!({"caas.dev/rotate-credentials": "r1"});
    tenant["status"] = json!({"rotatedFor": "r1", "previousAppId": "app_old1", "previousRevokeAfter": "2020-01-01T00:00:00Z"});
    let secret = creds_secret(&[
        ("appId", "app_new1"),
        ("appSecret", "sk_new"),
        ("previousAppId", "app_old1"),
        ("rotatedFor", "r1"),
    ]);
    let calls = vec![
        call(
            Method::GET,
            &format!("{CAAS}/chatplatforms/orchid"),
            Answer::Json(platform_json("True", "")),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/orchid-admin-token"),
            Answer::Json(admin_token_secret()),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/wren-credentials"),
            Answer::Json(secret.clone()),
        ),
        call(
            Method::PATCH,
            &format!("{CORE}/secrets/wren-credentials"),
            Answer::Json(secret),
        ),
        call(
            Method::PATCH,
            &format!("{CAAS}/tenants/wren/status"),
            Answer::WithStatus(tenant.clone()),
        ),
    ];
    let (result, seen) = run(tenant, calls, admin.clone()).await;
    assert_eq!(result.unwrap(), Action::requeue(super::tenant::RESYNC));
    assert_eq!(
        admin.calls()[2],
        AdminCall::Revoke("wren".into(), "app_old1".into())
    );
    assert_eq!(seen[3].body, json!({"data": {"previousAppId": null}}));
    let status = &seen[4].body["status"];
    assert!(status.get("previousAppId").is_none(), "{status}");
    assert_eq!(status["appId"], "app_new1");
}

#[tokio::test]
async fn a_name_longer_than_a_tenant_id_is_refused_without_calls() {
    let mut tenant = tenant_json(true);
    let long = "w".repeat(65);
    tenant["metadata"]["name"] = json!(long);
    let calls = vec![call(
        Method::PATCH,
        &format!("{CAAS}/tenants/{long}/status"),
        Answer::WithStatus(tenant.clone()),
    )];
    let admin = Arc::new(FakeAdmin::default());
    let (result, seen) = run(tenant, calls, admin.clone()).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(ready_of(&seen[0])["reason"], "InvalidName");
    assert!(admin.calls().is_empty());
}
