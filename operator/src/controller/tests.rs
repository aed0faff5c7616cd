//! Reconcile tests against a mock API server (`tower_test`): each scenario lists the exact calls
//! the reconciler must make, in order, and what the "API server" answers. A missing call fails
//! the scenario's expectations; an extra call finds the mock closed and fails the reconcile.

use super::Context;
use super::platform::{REQUEUE_WAITING, reconcile};
use crate::crd::ChatPlatform;
use crate::crd::common::ConditionType;
use crate::mock_api::{Answer, Call, Seen, call, serve};
use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

fn context(client: Client) -> Arc<Context> {
    let reporter = Reporter {
        controller: "caas-operator".into(),
        instance: Some("op-0".into()),
    };
    let admin = Arc::new(crate::controller::tenant_tests::FakeAdmin::default());
    Arc::new(Context::new(client, "ops-ns", reporter, admin).unwrap())
}

fn minimal_platform() -> ChatPlatform {
    serde_json::from_value(json!({
        "apiVersion": "caas.dev/v1alpha1",
        "kind": "ChatPlatform",
        "metadata": {"name": "orchid", "namespace": "bay", "uid": "uid-orchid-1", "generation": 1},
        "spec": {
            "version": "9.8.7",
            "mongodb": {"uriSecretRef": {"name": "m-secret", "key": "m-key"}},
            "kafka": {"bootstrapServers": "k0:9092"},
            "redis": {"urlSecretRef": {"name": "r-secret", "key": "r-key"}},
            "objectStorage": {"bucket": "b-bucket", "credentialsSecretRef": {"name": "s-secret"}}
        }
    }))
    .unwrap()
}

fn empty_list() -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []})
}

fn status_patch() -> Call {
    let object = serde_json::to_value(minimal_platform()).unwrap();
    call(
        Method::PATCH,
        &format!("{CAAS}/chatplatforms/orchid/status"),
        Answer::WithStatus(object),
    )
}

fn secret(name: &str, keys: &[&str]) -> Value {
    let data: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| ((*k).to_owned(), json!("dmFsdWU=")))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "bay"}, "data": data})
}

const CORE: &str = "/api/v1/namespaces/bay";
const APPS: &str = "/apis/apps/v1/namespaces/bay";
const CAAS: &str = "/apis/caas.dev/v1alpha1/namespaces/bay";
const SM_CRD: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com";

/// The calls of a full pass once the referenced Secrets are there. `generated_exist`: the
/// signing-keys, admin-token and media-signing Secrets were created by an earlier pass.
fn full_pass(generated_exist: bool) -> Vec<Call> {
    let mut calls = vec![
        call(
            Method::GET,
            &format!("{CORE}/secrets/m-secret"),
            Answer::Json(secret("m-secret", &["m-key"])),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/r-secret"),
            Answer::Json(secret("r-secret", &["r-key"])),
        ),
        call(
            Method::GET,
            &format!("{CORE}/secrets/s-secret"),
            Answer::Json(secret("s-secret", &["accessKeyId", "secretAccessKey"])),
        ),
    ];
    for (generated, key) in [
        ("orchid-signing-keys", "k1.pem"),
        ("orchid-admin-token", "token"),
        ("orchid-media-signing", "key"),
    ] {
        if generated_exist {
            calls.push(call(
                Method::GET,
                &format!("{CORE}/secrets/{generated}"),
                Answer::Json(secret(generated, &[key])),
            ));
        } else {
            calls.push(call(
                Method::GET,
                &format!("{CORE}/secrets/{generated}"),
                Answer::NotFound,
            ));
            calls.push(call(Method::POST, &format!("{CORE}/secrets"), Answer::Echo));
            calls.push(call(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/bay/events",
                Answer::Echo,
            ));
        }
    }
    calls.push(call(
        Method::PATCH,
        &format!("{CORE}/serviceaccounts/orchid"),
        Answer::Echo,
    ));
    calls.push(call(
        Method::PATCH,
        &format!("{CORE}/configmaps/orchid-config"),
        Answer::Echo,
    ));
    for c in ["gateway", "socket", "pipeline", "media"] {
        calls.push(call(
            Method::PATCH,
            &format!("{APPS}/deployments/orchid-{c}"),
            Answer::Echo,
        ));
    }
    calls.push(call(
        Method::PATCH,
        &format!("{APPS}/statefulsets/orchid-search"),
        Answer::Echo,
    ));
    for s in [
        "gateway",
        "socket",
        "pipeline",
        "media",
        "search",
        "search-headless",
    ] {
        calls.push(call(
            Method::PATCH,
            &format!("{CORE}/services/orchid-{s}"),
            Answer::Echo,
        ));
    }
    for c in ["gateway", "socket", "pipeline", "media", "search"] {
        calls.push(call(
            Method::PATCH,
            &format!("/apis/policy/v1/namespaces/bay/poddisruptionbudgets/orchid-{c}"),
            Answer::Echo,
        ));
    }
    for n in [
        "default-deny",
        "gateway",
        "socket",
        "pipeline",
        "media",
        "search",
    ] {
        calls.push(call(
            Method::PATCH,
            &format!("/apis/networking.k8s.io/v1/namespaces/bay/networkpolicies/orchid-{n}"),
            Answer::Echo,
        ));
    }
    calls.push(call(Method::GET, SM_CRD, Answer::NotFound));
    for list in [
        "/apis/autoscaling/v2/namespaces/bay/horizontalpodautoscalers",
        "/apis/networking.k8s.io/v1/namespaces/bay/networkpolicies",
        "/apis/networking.k8s.io/v1/namespaces/bay/ingresses",
    ] {
        calls.push(call(Method::GET, list, Answer::Json(empty_list())));
    }
    calls.push(call(
        Method::GET,
        &format!("{CAAS}/tenants"),
        Answer::Json(json!({
            "apiVersion": "caas.dev/v1alpha1", "kind": "TenantList", "metadata": {},
            "items": [
                {"apiVersion": "caas.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "wren", "namespace": "bay"},
                 "spec": {"platformRef": {"name": "orchid"}, "displayName": "Wren"}},
                {"apiVersion": "caas.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "moth", "namespace": "bay"},
                 "spec": {"platformRef": {"name": "elsewhere"}, "displayName": "Moth"}}
            ]
        })),
    ));
    // Nothing is ready in a mock (no controllers run): the pass asks the pods why.
    calls.push(call(
        Method::GET,
        &format!("{CORE}/pods"),
        Answer::Json(empty_list()),
    ));
    calls.push(call(
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/bay/events",
        Answer::Echo,
    ));
    calls.push(status_patch());
    calls
}

/// A pass over a platform whose status already carries the current config hash: no event.
fn steady_pass() -> Vec<Call> {
    let mut calls = full_pass(true);
    let event = calls.len() - 2;
    assert_eq!(calls[event].method, Method::POST);
    calls.remove(event);
    calls
}

async fn run_scenario(platform: ChatPlatform, calls: Vec<Call>) -> (Action, Vec<Seen>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let expected = calls.len();
    let server = serve(handle, calls);
    let action = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(platform), context(client)),
    )
    .await
    .expect("the reconcile finished (no unexpected extra call)")
    .expect("the reconcile succeeded");
    let seen = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("every expected call came")
        .unwrap();
    assert_eq!(seen.len(), expected);
    (action, seen)
}

fn condition(status: &Value, type_: ConditionType) -> &Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_.as_str())
        .unwrap()
}

#[tokio::test]
async fn create_from_scratch() {
    let (action, seen) = run_scenario(minimal_platform(), full_pass(false)).await;
    assert_eq!(
        action,
        Action::requeue(REQUEUE_WAITING),
        "pods are not ready yet"
    );

    // Generated Secrets are created (not applied), with owner references.
    let created: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == Method::POST && s.path.ends_with("/secrets"))
        .collect();
    assert_eq!(created.len(), 3);
    assert_eq!(
        created[2].body["stringData"]["key"].as_str().unwrap().len(),
        64,
        "the media URL signing key"
    );
    assert!(
        created[0].body["stringData"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k.ends_with(".pem"))
    );
    assert_eq!(
        created[1].body["stringData"]["token"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(
        created[0].body["metadata"]["ownerReferences"][0]["uid"],
        "uid-orchid-1"
    );

    // Every object is server-side applied with the one field manager, forced.
    for s in seen
        .iter()
        .filter(|s| s.method == Method::PATCH && !s.path.ends_with("/status"))
    {
        assert_eq!(s.content_type, "application/apply-patch+yaml", "{}", s.path);
        assert!(
            s.query.contains("fieldManager=caas-operator"),
            "{}: {}",
            s.path,
            s.query
        );
        assert!(s.query.contains("force=true"), "{}: {}", s.path, s.query);
        assert!(
            s.body["apiVersion"].is_string() && s.body["kind"].is_string(),
            "{}",
            s.path
        );
    }
    let gateway = seen
        .iter()
        .find(|s| s.path.ends_with("/deployments/orchid-gateway"))
        .unwrap();
    assert_eq!(
        gateway.body["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["gateway"])
    );

    // Status: truthful about pods that are not ready, tenants counted.
    let status_patch = seen.last().unwrap();
    let status = &status_patch.body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["tenants"], 1);
    assert_eq!(condition(status, ConditionType::Ready)["status"], "False");
    assert_eq!(
        condition(status, ConditionType::Progressing)["status"],
        "True"
    );
    assert_eq!(
        condition(status, ConditionType::Degraded)["status"],
        "False"
    );
    assert!(
        condition(status, ConditionType::Ready)["message"]
            .as_str()
            .unwrap()
            .contains("gateway 0/2 ready")
    );
    assert_eq!(status["components"]["search"]["desiredReplicas"], 1);
}

#[tokio::test]
async fn generated_secrets_are_never_rewritten() {
    // First pass over an existing platform without status: the "Created" event only.
    let (_, first) = run_scenario(minimal_platform(), full_pass(true)).await;
    let posts: Vec<_> = first.iter().filter(|s| s.method == Method::POST).collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body["reason"], "Created");
    // With the status of that pass: nothing is created, no event at all.
    let mut p = minimal_platform();
    p.status = Some(serde_json::from_value(first.last().unwrap().body["status"].clone()).unwrap());
    let (_, second) = run_scenario(p, steady_pass()).await;
    assert!(
        !second.iter().any(|s| s.method == Method::POST),
        "no create, no event on a steady pass"
    );
}

#[tokio::test]
async fn a_changed_configuration_is_announced() {
    let mut p = minimal_platform();
    p.status = Some(crate::crd::platform::ChatPlatformStatus {
        config_hash: Some("0ld".into()),
        ..Default::default()
    });
    let (_, seen) = run_scenario(p, full_pass(true)).await;
    let event = seen.iter().find(|s| s.method == Method::POST).unwrap();
    assert_eq!(event.body["reason"], "ConfigChanged");
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .starts_with("Configuration or Secrets changed (0ld -> ")
    );
    assert_eq!(event.body["related"]["name"], "orchid-config");
}

#[tokio::test]
async fn missing_secret_degrades_with_its_name() {
    let calls = vec![
        call(
            Method::GET,
            &format!("{CORE}/secrets/m-secret"),
            Answer::NotFound,
        ),
        call(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/bay/events",
            Answer::Echo,
        ),
        status_patch(),
    ];
    let (action, seen) = run_scenario(minimal_platform(), calls).await;
    assert_eq!(action, Action::requeue(REQUEUE_WAITING));
    assert_eq!(seen[1].body["type"], "Warning");
    assert_eq!(seen[1].body["reason"], "SecretNotFound");
    let status = &seen[2].body["status"];
    let degraded = condition(status, ConditionType::Degraded);
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SecretNotFound");
    assert_eq!(degraded["message"], "Secret m-secret not found");
    assert_eq!(condition(status, ConditionType::Ready)["status"], "False");
}

#[tokio::test]
async fn a_secret_without_the_named_key_degrades() {
    let calls = vec![
        call(
            Method::GET,
            &format!("{CORE}/secrets/m-secret"),
            Answer::Json(secret("m-secret", &["other"])),
        ),
        call(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/bay/events",
            Answer::Echo,
        ),
        status_patch(),
    ];
    let (_, seen) = run_scenario(minimal_platform(), calls).await;
    let degraded = condition(&seen[2].body["status"], ConditionType::Degraded);
    assert_eq!(degraded["reason"], "SecretKeyMissing");
    assert_eq!(degraded["message"], "Secret m-secret has no key m-key");
}

#[tokio::test]
async fn paused_platform_changes_nothing() {
    let mut p = minimal_platform();
    p.metadata.annotations = Some([("caas.dev/paused".to_owned(), "true".to_owned())].into());
    let calls = vec![status_patch()];
    let (_, seen) = run_scenario(p, calls).await;
    let progressing = condition(&seen[0].body["status"], ConditionType::Progressing);
    assert_eq!(progressing["reason"], "Paused");
}

#[test]
fn referenced_secrets_are_merged_by_name() {
    let mut p = minimal_platform();
    p.spec.redis.url_secret_ref.name = "m-secret".into();
    let reqs = super::platform::referenced_secrets(&p);
    let names: Vec<_> = reqs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["m-secret", "s-secret"]);
    assert_eq!(reqs[0].keys, ["m-key", "r-key"]);
    assert_eq!(reqs[1].keys, ["accessKeyId", "secretAccessKey"]);
}

#[test]
fn error_metric_labels_are_stable() {
    use super::Error;
    assert_eq!(
        Error::MissingObjectKey("x").metric_label(),
        "missing_object_key"
    );
    let e = Error::Build(crate::build::BuildError::MissingMetadata("metadata.uid"));
    assert_eq!(e.metric_label(), "build");
}

fn index_of(calls: &[Call], method: Method, path: &str) -> usize {
    calls
        .iter()
        .position(|c| c.method == method && c.path == path)
        .unwrap()
}

fn hpa(name: &str, owner_uid: &str) -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": "bay", "ownerReferences": [{
            "apiVersion": "caas.dev/v1alpha1", "kind": "ChatPlatform", "name": "orchid",
            "uid": owner_uid, "controller": true
        }]},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": name}, "maxReplicas": 3}
    })
}

#[tokio::test]
async fn objects_no_longer_in_the_spec_are_pruned() {
    // Autoscaling was turned off for socket: its HPA goes; an HPA owned by someone else stays.
    let mut calls = full_pass(true);
    const HPAS: &str = "/apis/autoscaling/v2/namespaces/bay/horizontalpodautoscalers";
    let i = index_of(&calls, Method::GET, HPAS);
    calls[i].answer = Answer::Json(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList", "metadata": {},
        "items": [hpa("orchid-socket", "uid-orchid-1"), hpa("orchid-other", "uid-someone-else")]
    }));
    calls.insert(
        i + 1,
        call(
            Method::DELETE,
            &format!("{HPAS}/orchid-socket"),
            Answer::Json(hpa("orchid-socket", "uid-orchid-1")),
        ),
    );
    let j = index_of(
        &calls,
        Method::GET,
        "/apis/networking.k8s.io/v1/namespaces/bay/ingresses",
    );
    calls.insert(
        j + 1,
        call(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/bay/events",
            Answer::Echo,
        ),
    );
    let (_, seen) = run_scenario(minimal_platform(), calls).await;
    let list = seen.iter().find(|s| s.path == HPAS).unwrap();
    assert!(
        list.query.contains("app.kubernetes.io%2Finstance%3Dorchid"),
        "{}",
        list.query
    );
    let event = seen.iter().find(|s| s.path.ends_with("/events")).unwrap();
    assert_eq!(event.body["reason"], "Deleted");
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("HorizontalPodAutoscaler orchid-socket")
    );
}

#[tokio::test]
async fn a_second_pass_applies_the_same_objects() {
    // Server-side apply of identical intent is a no-op for the API server; drift made by
    // others is overwritten by the same apply (forced, one field manager).
    let (_, first) = run_scenario(minimal_platform(), full_pass(true)).await;
    let (_, second) = run_scenario(minimal_platform(), full_pass(true)).await;
    let applies = |seen: &[Seen]| -> Vec<(String, Value)> {
        seen.iter()
            .filter(|s| s.method == Method::PATCH && !s.path.ends_with("/status"))
            .map(|s| (s.path.clone(), s.body.clone()))
            .collect()
    };
    assert_eq!(applies(&first), applies(&second));
    assert_eq!(applies(&first).len(), 24);
}

#[tokio::test]
async fn the_ingress_is_applied_when_asked_for() {
    let mut p = minimal_platform();
    p.spec.ingress = Some(serde_json::from_value(json!({"host": "chat.bay.test"})).unwrap());
    let mut calls = full_pass(true);
    let i = index_of(&calls, Method::GET, SM_CRD);
    calls.insert(
        i,
        call(
            Method::PATCH,
            "/apis/networking.k8s.io/v1/namespaces/bay/ingresses/orchid",
            Answer::Echo,
        ),
    );
    let (_, seen) = run_scenario(p, calls).await;
    let ingress = seen
        .iter()
        .find(|s| s.path.ends_with("/ingresses/orchid"))
        .unwrap();
    assert_eq!(ingress.body["spec"]["rules"][0]["host"], "chat.bay.test");
}

#[tokio::test]
#[should_panic(expected = "Closed")]
async fn the_harness_fails_a_reconcile_that_makes_an_unexpected_call() {
    // Drop the expected status write: the reconcile's last call then finds the mock closed.
    let mut calls = full_pass(true);
    calls.pop();
    run_scenario(minimal_platform(), calls).await;
}

fn with_service_monitor() -> ChatPlatform {
    let mut p = minimal_platform();
    p.spec.observability.service_monitor.enabled = true;
    p
}

#[tokio::test]
async fn the_service_monitor_is_applied_where_its_crd_exists() {
    let mut calls = full_pass(true);
    let i = index_of(&calls, Method::GET, SM_CRD);
    calls[i].answer = Answer::Json(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
                 "scope": "Namespaced", "versions": []}
    }));
    const SMS: &str = "/apis/monitoring.coreos.com/v1/namespaces/bay/servicemonitors";
    calls.insert(
        i + 1,
        call(Method::PATCH, &format!("{SMS}/orchid"), Answer::Echo),
    );
    let j = index_of(
        &calls,
        Method::GET,
        "/apis/networking.k8s.io/v1/namespaces/bay/ingresses",
    );
    calls.insert(j + 1, call(Method::GET, SMS, Answer::Json(empty_list())));
    let (_, seen) = run_scenario(with_service_monitor(), calls).await;
    let sm = seen
        .iter()
        .find(|s| s.path == format!("{SMS}/orchid"))
        .unwrap();
    assert_eq!(sm.body["kind"], "ServiceMonitor");
    assert!(sm.query.contains("fieldManager=caas-operator"));
}

#[tokio::test]
async fn a_missing_service_monitor_crd_is_a_warning_not_a_failure() {
    let mut calls = full_pass(true);
    let i = index_of(&calls, Method::GET, SM_CRD);
    calls.insert(
        i + 1,
        call(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/bay/events",
            Answer::Echo,
        ),
    );
    let (_, seen) = run_scenario(with_service_monitor(), calls).await;
    let event = seen.iter().find(|s| s.path.ends_with("/events")).unwrap();
    assert_eq!(
        (event.body["type"].as_str(), event.body["reason"].as_str()),
        (Some("Warning"), Some("ServiceMonitorUnavailable"))
    );
}

#[test]
fn a_tenant_maps_to_its_platform() {
    let tenant: crate::crd::Tenant = serde_json::from_value(json!({
        "apiVersion": "caas.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "wren", "namespace": "bay"},
        "spec": {"platformRef": {"name": "orchid"}, "displayName": "Wren"}
    }))
    .unwrap();
    let r = super::platform_of_tenant(tenant).unwrap();
    assert_eq!(
        (r.name.as_str(), r.namespace.as_deref()),
        ("orchid", Some("bay"))
    );
}

#[tokio::test]
async fn an_invalid_spec_waits_for_a_change() {
    let mut p = minimal_platform();
    p.spec
        .components
        .gateway
        .pod
        .env
        .push(k8s_openapi::api::core::v1::EnvVar {
            name: "CAAS_REDIS__URL".into(),
            value: Some("redis://elsewhere".into()),
            ..Default::default()
        });
    let calls = vec![
        call(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/bay/events",
            Answer::Echo,
        ),
        status_patch(),
    ];
    let (action, seen) = run_scenario(p, calls).await;
    assert_eq!(action, Action::await_change());
    let degraded = condition(&seen[1].body["status"], ConditionType::Degraded);
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("components.gateway.pod.env sets CAAS_REDIS__URL")
    );
}

#[tokio::test]
async fn a_repeated_warning_becomes_a_series_not_new_events() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    let one_pass = || {
        vec![
            call(
                Method::GET,
                &format!("{CORE}/secrets/m-secret"),
                Answer::NotFound,
            ),
            call(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/bay/events",
                Answer::Echo,
            ),
            status_patch(),
        ]
    };
    let mut calls = one_pass();
    let mut second = one_pass();
    second[1] = call(
        Method::PATCH,
        "/apis/events.k8s.io/v1/namespaces/bay/events/*",
        Answer::Echo,
    );
    calls.extend(second);
    let server = serve(handle, calls);
    for _ in 0..2 {
        tokio::time::timeout(
            Duration::from_secs(3),
            reconcile(Arc::new(minimal_platform()), ctx.clone()),
        )
        .await
        .unwrap()
        .unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen[4].method, Method::PATCH);
    assert!(
        seen[4].body.to_string().contains("series"),
        "{}",
        seen[4].body
    );
}

#[tokio::test]
async fn the_status_names_why_pods_do_not_run() {
    let mut calls = full_pass(true);
    let i = index_of(&calls, Method::GET, &format!("{CORE}/pods"));
    calls[i].answer = Answer::Json(json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [{
            "metadata": {"name": "orchid-socket-7d9f", "labels": {"app.kubernetes.io/component": "socket"}},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                       "message": "no nodes available to schedule pods"}]}
        }]
    }));
    let (_, seen) = run_scenario(minimal_platform(), calls).await;
    let pods = seen
        .iter()
        .find(|s| s.path == format!("{CORE}/pods"))
        .unwrap();
    assert!(
        pods.query.contains("app.kubernetes.io%2Finstance%3Dorchid"),
        "{}",
        pods.query
    );
    let ready = condition(&seen.last().unwrap().body["status"], ConditionType::Ready).clone();
    assert_eq!(ready["status"], "False");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("socket 0/2 ready (pod orchid-socket-7d9f: Unschedulable: no nodes available to schedule pods)"),
        "{message}"
    );
    assert!(message.contains("gateway 0/2 ready,"), "{message}");
}

/// A Service as the API server answers an apply: our field manager's entry last moved at `time`.
fn applied_service(name: &str, time: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name, "namespace": "bay",
            "managedFields": [{
                "manager": "caas-operator", "operation": "Apply", "apiVersion": "v1",
                "time": time, "fieldsType": "FieldsV1", "fieldsV1": {}
            }]
        },
        "spec": {}
    })
}

#[tokio::test]
async fn what_a_pass_changed_is_announced_in_one_event() {
    // The API server moved our entry's time: this pass changed the Service (e.g. put back a
    // field someone edited). One Normal event names it.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut calls = full_pass(true);
    let svc = format!("{CORE}/services/orchid-socket");
    let i = index_of(&calls, Method::PATCH, &svc);
    calls[i] = call(
        Method::PATCH,
        &svc,
        Answer::Json(applied_service("orchid-socket", &now)),
    );
    let i = index_of(&calls, Method::GET, SM_CRD);
    calls.insert(
        i,
        call(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/bay/events",
            Answer::Echo,
        ),
    );
    let (_, seen) = run_scenario(minimal_platform(), calls).await;
    let event = seen
        .iter()
        .find(|s| s.path.ends_with("/events") && s.body["reason"] == "Applied")
        .expect("an Applied event");
    assert_eq!(event.body["type"], "Normal");
    assert_eq!(
        event.body["note"],
        "Created or updated Service orchid-socket"
    );

    // An entry that did not move (an apply that changed nothing): no event.
    let mut calls = full_pass(true);
    let i = index_of(&calls, Method::PATCH, &svc);
    calls[i] = call(
        Method::PATCH,
        &svc,
        Answer::Json(applied_service("orchid-socket", "2020-01-01T00:00:00Z")),
    );
    let (_, seen) = run_scenario(minimal_platform(), calls).await;
    assert!(!seen.iter().any(|s| s.body["reason"] == "Applied"));
}
