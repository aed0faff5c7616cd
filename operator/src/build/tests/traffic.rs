//! The builders' traffic: Services, the Ingress, NetworkPolicies, the ServiceMonitor and the
//! socket Service's client affinity.

use super::*;

fn service(d: &Desired, name: &str) -> Vec<(String, i32)> {
    let s = d
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap();
    s.spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.port))
        .collect()
}

#[test]
fn services_expose_what_each_component_serves() {
    let d = build(&minimal_platform());
    let own = |v: &[(&str, i32)]| {
        v.iter()
            .map(|(n, p)| (n.to_string(), *p))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        service(&d, "orchid-gateway"),
        own(&[("http", 8080), ("admin", 8081), ("metrics", 9090)])
    );
    assert_eq!(
        service(&d, "orchid-socket"),
        own(&[("http", 8080), ("metrics", 9090)])
    );
    assert_eq!(service(&d, "orchid-pipeline"), own(&[("metrics", 9090)]));
    let gw = d
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("orchid-gateway"))
        .unwrap();
    let selector = gw.spec.as_ref().unwrap().selector.as_ref().unwrap();
    assert_eq!(selector["app.kubernetes.io/component"], "gateway");
    assert_eq!(selector["app.kubernetes.io/instance"], "orchid");
}

#[test]
fn network_policies_deny_by_default_and_admit_the_operator_to_admin_only() {
    let d = build(&minimal_platform());
    let deny = &d.network_policies[0];
    assert_eq!(deny.metadata.name.as_deref(), Some("orchid-default-deny"));
    let spec = deny.spec.as_ref().unwrap();
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned()][..])
    );
    assert!(spec.ingress.as_ref().is_none_or(Vec::is_empty));
    assert_eq!(
        spec.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app.kubernetes.io/instance"],
        "orchid"
    );

    assert_eq!(d.network_policies.len(), 6);
    for np in &d.network_policies[1..] {
        let name = np.metadata.name.clone().unwrap();
        let rules = np.spec.as_ref().unwrap().ingress.clone().unwrap();
        for rule in &rules {
            let port = &rule.ports.as_ref().unwrap()[0].port;
            if port == &Some(IntOrStr::Int(ADMIN_PORT)) {
                let from = rule.from.as_ref().unwrap();
                assert_eq!(from.len(), 1, "{name}");
                let ns = from[0]
                    .namespace_selector
                    .as_ref()
                    .unwrap()
                    .match_labels
                    .as_ref()
                    .unwrap();
                assert_eq!(ns["kubernetes.io/metadata.name"], "ops-ns", "{name}");
                let pods = from[0]
                    .pod_selector
                    .as_ref()
                    .unwrap()
                    .match_labels
                    .as_ref()
                    .unwrap();
                assert_eq!(pods["app.kubernetes.io/name"], "caas-operator", "{name}");
            }
        }
        let ports: Vec<_> = rules
            .iter()
            .map(|r| r.ports.as_ref().unwrap()[0].port.clone().unwrap())
            .collect();
        if name == "orchid-pipeline" {
            assert!(
                !ports.contains(&IntOrStr::Int(HTTP_PORT)),
                "nothing calls the pipeline"
            );
        } else {
            assert!(ports.contains(&IntOrStr::Int(HTTP_PORT)), "{name}");
        }
    }

    let full = build(&full_platform());
    let metrics_rule = full.network_policies[1]
        .spec
        .as_ref()
        .unwrap()
        .ingress
        .as_ref()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let from = metrics_rule.from.unwrap();
    assert_eq!(
        from[0]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "monitoring"
    );

    let mut off = minimal_platform();
    off.spec.network_policy.enabled = false;
    assert!(build(&off).network_policies.is_empty());
}

#[test]
fn ingress_routes_socket_io_and_the_rest_to_the_gateway() {
    assert!(build(&minimal_platform()).ingress.is_none());
    let d = build(&full_platform());
    let ingress = d.ingress.unwrap();
    let spec = ingress.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let tls = &spec.tls.unwrap()[0];
    assert_eq!(tls.secret_name.as_deref(), Some("chat-example-com-tls"));
    assert_eq!(
        tls.hosts.as_deref(),
        Some(&["chat.example.com".to_owned()][..])
    );
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("chat.example.com"));
    let paths: Vec<(String, String)> = rule
        .http
        .as_ref()
        .unwrap()
        .paths
        .iter()
        .map(|p| {
            (
                p.path.clone().unwrap(),
                p.backend.service.as_ref().unwrap().name.clone(),
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            ("/socket.io".to_owned(), "chat-prod-socket".to_owned()),
            ("/v1/media".to_owned(), "chat-prod-media".to_owned()),
            ("/v1/search".to_owned(), "chat-prod-search".to_owned()),
            ("/".to_owned(), "chat-prod-gateway".to_owned())
        ]
    );
    assert_eq!(
        ingress.metadata.annotations.unwrap()["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "3600"
    );
}

#[test]
fn service_monitor_scrapes_every_metrics_port_when_enabled() {
    assert!(build(&minimal_platform()).service_monitor.is_none());
    let d = build(&full_platform());
    let sm = d.service_monitor.unwrap();
    let json = serde_json::to_value(&sm).unwrap();
    assert_eq!(json["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(json["kind"], "ServiceMonitor");
    assert_eq!(json["metadata"]["name"], "chat-prod");
    assert_eq!(json["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(json["metadata"]["ownerReferences"][0]["uid"], "uid-full-1");
    assert_eq!(
        json["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "chat-prod"
    );
    assert_eq!(
        json["spec"]["endpoints"][0],
        json!({"port": "metrics", "path": "/metrics", "interval": "15s"})
    );
    // Every Service it selects has the port it scrapes.
    for s in &d.services {
        let spec = s.spec.as_ref().unwrap();
        if spec.cluster_ip.as_deref() == Some("None") {
            continue;
        }
        assert!(
            spec.ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.name.as_deref() == Some("metrics"))
        );
    }
}

#[test]
fn the_socket_service_keeps_a_client_on_one_pod() {
    let d = build(&minimal_platform());
    let svc = |name: &str| {
        d.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.session_affinity.clone())
    };
    assert_eq!(svc("orchid-socket").as_deref(), Some("ClientIP"));
    assert_eq!(svc("orchid-gateway"), None);
}
