//! Unit tests of the builders from small fixtures. Fixture names (`orchid` in `bay`, Secrets
//! `m-secret`, ...) differ from product names so a swapped label or name shows.

use super::config::{CONFIG_FILE, config_hash, secrets_digest};
use super::*;
use crate::crd::platform::AutoscalingSpec;
use caas_config::{BusConfig, Config, StoreConfig};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString as IntOrStr;
use serde_json::json;

mod security;
mod traffic;

fn minimal_platform() -> ChatPlatform {
    serde_json::from_value(json!({
        "apiVersion": "caas.dev/v1alpha1",
        "kind": "ChatPlatform",
        "metadata": {"name": "orchid", "namespace": "bay", "uid": "uid-orchid-1", "generation": 3},
        "spec": {
            "version": "9.8.7",
            "mongodb": {"uriSecretRef": {"name": "m-secret", "key": "m-key"}},
            "kafka": {"bootstrapServers": "k0:9092,k1:9092", "topicPrefix": "t."},
            "redis": {"urlSecretRef": {"name": "r-secret", "key": "r-key"}},
            "objectStorage": {"endpoint": "http://s3.bay:9000", "bucket": "b-bucket", "credentialsSecretRef": {"name": "s-secret"}}
        }
    }))
    .unwrap()
}

/// The full example manifest, with the metadata the API server would add.
fn full_platform() -> ChatPlatform {
    let path = format!(
        "{}/../examples/chatplatform-full.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut p: ChatPlatform =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    p.metadata.namespace = Some("bay".into());
    p.metadata.uid = Some("uid-full-1".into());
    p
}

fn inputs() -> BuildInputs {
    BuildInputs {
        operator_namespace: "ops-ns".into(),
        secrets_digest: "digest-1".into(),
    }
}

fn build(p: &ChatPlatform) -> Desired {
    desired(p, &inputs()).unwrap()
}

fn templates(d: &Desired) -> Vec<(String, &PodTemplateSpec)> {
    let mut out: Vec<(String, &PodTemplateSpec)> = d
        .deployments
        .iter()
        .map(|x| (x.metadata.name.clone().unwrap(), &x.spec.template))
        .collect();
    out.extend(
        d.stateful_sets
            .iter()
            .map(|x| (x.metadata.name.clone().unwrap(), &x.spec.template)),
    );
    out
}

fn container<'a>(d: &'a Desired, name: &str) -> &'a Container {
    let (_, t) = templates(d).into_iter().find(|(n, _)| n == name).unwrap();
    &t.spec.as_ref().unwrap().containers[0]
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.as_ref().unwrap().iter().find(|e| e.name == name)
}

fn parsed_config(d: &Desired) -> Config {
    let yaml = &d.config_map.as_ref().unwrap().data.as_ref().unwrap()[CONFIG_FILE];
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn config_map_is_the_shared_config_type_the_workloads_parse() {
    let d = build(&minimal_platform());
    let cm = d.config_map.as_ref().unwrap();
    assert_eq!(cm.metadata.name.as_deref(), Some("orchid-config"));
    // deny_unknown_fields on caas_config::Config: this parse fails on any field it does not know.
    let config = parsed_config(&d);
    assert_eq!(
        config.store,
        StoreConfig::Mongodb {
            uri: String::new(),
            database: "caas".into()
        }
    );
    let BusConfig::Kafka(kafka) = &config.bus else {
        panic!("bus is {:?}", config.bus)
    };
    assert_eq!(kafka.brokers, "k0:9092,k1:9092");
    assert_eq!(kafka.topic_prefix, "t.");
    assert_eq!(kafka.partitions, 12);
    assert_eq!(kafka.replication_factor, 3);
    let redis = config.redis.as_ref().unwrap();
    assert_eq!(
        (redis.url.as_str(), redis.key_prefix.as_str()),
        ("", "caas:")
    );
    assert_eq!(config.auth.keys_dir, "/etc/caas/keys");
    assert_eq!(config.auth.token_ttl_secs, 3600);
    assert_eq!(config.admin.token_file, "/etc/caas/admin/token");
    assert_eq!(config.server.listen, "0.0.0.0:8080");
    assert_eq!(config.server.internal_listen, "0.0.0.0:8081");
    assert_eq!(config.server.metrics_listen, "0.0.0.0:9090");
    assert_eq!(config.server.drain_delay_ms, 2_000);
    assert_eq!(config.server.shutdown_deadline_ms, 25_000);
    assert_eq!(
        config.server.socket_urls,
        ["http://orchid-socket.bay.svc:8080"]
    );
}

#[test]
fn full_spec_reaches_the_config() {
    let d = build(&full_platform());
    let config = parsed_config(&d);
    assert_eq!(
        config.store,
        StoreConfig::Mongodb {
            uri: String::new(),
            database: "caas_prod".into()
        }
    );
    let BusConfig::Kafka(kafka) = &config.bus else {
        panic!()
    };
    assert_eq!(
        (
            kafka.partitions,
            kafka.replication_factor,
            kafka.create_topics
        ),
        (24, 3, false)
    );
    assert_eq!(
        kafka
            .properties
            .get("security.protocol")
            .map(String::as_str),
        Some("SSL")
    );
    assert_eq!(config.auth.active_kid, "k2");
    assert_eq!(config.auth.issuer, "chat.example.com");
    assert_eq!(config.auth.token_ttl_secs, 900);
    assert_eq!(config.log.level, "info,caas_gateway=debug");
    assert_eq!(config.server.socket_urls, ["https://chat.example.com"]);
    assert_eq!(config.server.shutdown_deadline_ms, 40_000);
}

#[test]
fn secrets_reach_pods_as_env_from_secrets_never_the_config_map() {
    let d = build(&minimal_platform());
    let yaml = &d.config_map.as_ref().unwrap().data.as_ref().unwrap()[CONFIG_FILE];
    for secret_name in ["m-secret", "r-secret", "s-secret"] {
        assert!(
            !yaml.contains(secret_name),
            "{secret_name} in the ConfigMap:\n{yaml}"
        );
    }
    for (name, _) in templates(&d) {
        let c = container(&d, &name);
        let store = env(c, "CAAS_STORE__URI")
            .unwrap()
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (store.name.as_str(), store.key.as_str()),
            ("m-secret", "m-key"),
            "{name}"
        );
        let redis = env(c, "CAAS_REDIS__URL")
            .unwrap()
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (redis.name.as_str(), redis.key.as_str()),
            ("r-secret", "r-key"),
            "{name}"
        );
        assert_eq!(
            env(c, "CAAS_CONFIG").unwrap().value.as_deref(),
            Some("/etc/caas/config/config.yaml")
        );
    }
    // S3 credentials and the URL signing key only where they are used.
    let media = container(&d, "orchid-media");
    let from_secret = |name: &str| {
        let r = env(media, name)
            .unwrap()
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        (r.name.clone(), r.key.clone())
    };
    assert_eq!(
        from_secret("CAAS_MEDIA__BACKEND__SECRET_KEY"),
        ("s-secret".to_owned(), "secretAccessKey".to_owned())
    );
    assert_eq!(
        from_secret("CAAS_MEDIA__BACKEND__ACCESS_KEY"),
        ("s-secret".to_owned(), "accessKeyId".to_owned())
    );
    assert_eq!(
        from_secret("CAAS_MEDIA__SIGNING_KEY"),
        ("orchid-media-signing".to_owned(), "key".to_owned())
    );
    for other in ["orchid-gateway", "orchid-socket"] {
        assert!(env(container(&d, other), "CAAS_MEDIA__BACKEND__SECRET_KEY").is_none());
        assert!(env(container(&d, other), "CAAS_MEDIA__SIGNING_KEY").is_none());
    }
}

#[test]
fn media_and_search_get_their_configuration() {
    let d = build(&minimal_platform());
    let cm = d.config_map.as_ref().unwrap();
    let cfg: Config = serde_yaml::from_str(&cm.data.as_ref().unwrap()[CONFIG_FILE]).unwrap();
    match &cfg.media.backend {
        caas_config::MediaBackend::S3(s3) => {
            assert_eq!(s3.bucket, "b-bucket");
            assert_eq!(s3.endpoint, "http://s3.bay:9000");
            assert!(s3.allow_http && s3.path_style);
            assert!(
                s3.access_key.is_empty() && s3.secret_key.is_empty(),
                "keys never in the ConfigMap"
            );
        }
        other => panic!("media backend {other:?}"),
    }
    assert!(cfg.media.signing_key.is_empty());
    assert_eq!(cfg.search.index_dir, "/var/lib/caas/search");
}

#[test]
fn one_workload_per_component_with_the_caas_image_and_subcommand() {
    let d = build(&minimal_platform());
    let deployments: Vec<_> = d
        .deployments
        .iter()
        .map(|x| x.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        deployments,
        [
            "orchid-gateway",
            "orchid-socket",
            "orchid-pipeline",
            "orchid-media"
        ]
    );
    assert_eq!(d.stateful_sets.len(), 1);
    for (name, sub) in [
        ("orchid-gateway", "gateway"),
        ("orchid-pipeline", "pipeline"),
        ("orchid-search", "search"),
    ] {
        let c = container(&d, name);
        assert_eq!(c.image.as_deref(), Some("ghcr.io/caas-dev/caas:9.8.7"));
        assert_eq!(c.args.as_deref(), Some(&[sub.to_owned()][..]));
    }
    let full = build(&full_platform());
    let pod = full.deployments[0].spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.image_pull_secrets.as_ref().unwrap()[0].name,
        "registry-credentials"
    );
}

#[test]
fn search_is_a_stateful_set_with_an_index_volume() {
    let d = build(&full_platform());
    let sts = &d.stateful_sets[0];
    assert_eq!(sts.metadata.name.as_deref(), Some("chat-prod-search"));
    assert_eq!(
        sts.spec.service_name.as_deref(),
        Some("chat-prod-search-headless")
    );
    assert_eq!(sts.spec.replicas, Some(2));
    let claim = &sts.spec.volume_claim_templates.as_ref().unwrap()[0];
    let claim_spec = claim.spec.as_ref().unwrap();
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "50Gi"
    );
    let c = &sts.spec.template.spec.as_ref().unwrap().containers[0];
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "data")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/lib/caas");
    assert_eq!(c.working_dir.as_deref(), Some("/var/lib/caas"));
    assert!(d.services.iter().any(|s| s.metadata.name.as_deref()
        == Some("chat-prod-search-headless")
        && s.spec.as_ref().unwrap().cluster_ip.as_deref() == Some("None")));
}

#[test]
fn probes_and_draining() {
    let d = build(&minimal_platform());
    for (name, t) in templates(&d) {
        let pod = t.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        };
        assert_eq!(path(&c.liveness_probe), "/health", "{name}");
        assert_eq!(path(&c.readiness_probe), "/ready", "{name}");
        assert_eq!(path(&c.startup_probe), "/health", "{name}");
        let sleep = c
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .as_ref()
            .unwrap();
        assert_eq!(sleep.seconds, 5, "{name}");
        // preStop 5 + drain 2 + deadline 25 + 5 of margin.
        assert_eq!(pod.termination_grace_period_seconds, Some(37), "{name}");
    }
}

#[test]
fn everything_is_owned_by_the_platform() {
    let d = build(&minimal_platform());
    let mut metas = vec![
        &d.service_account.as_ref().unwrap().metadata,
        &d.config_map.as_ref().unwrap().metadata,
    ];
    metas.extend(d.deployments.iter().map(|x| &x.metadata));
    metas.extend(d.stateful_sets.iter().map(|x| &x.metadata));
    metas.extend(d.services.iter().map(|x| &x.metadata));
    metas.extend(d.pod_disruption_budgets.iter().map(|x| &x.metadata));
    metas.extend(d.network_policies.iter().map(|x| &x.metadata));
    assert!(metas.len() > 15);
    for m in metas {
        let owners = m.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1, "{:?}", m.name);
        let o = &owners[0];
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("ChatPlatform", "orchid", "uid-orchid-1")
        );
        assert_eq!(o.api_version, "caas.dev/v1alpha1");
        assert_eq!(o.controller, Some(true));
        assert_eq!(m.namespace.as_deref(), Some("bay"));
        assert_eq!(
            m.labels.as_ref().unwrap()["app.kubernetes.io/instance"],
            "orchid"
        );
        assert_eq!(
            m.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "caas-operator"
        );
    }
}

#[test]
fn missing_uid_is_an_error_not_an_orphan() {
    let mut p = minimal_platform();
    p.metadata.uid = None;
    assert!(matches!(
        desired(&p, &inputs()),
        Err(BuildError::MissingMetadata("metadata.uid"))
    ));
}

fn hash_of(d: &Desired) -> String {
    let hashes: Vec<String> = templates(d)
        .iter()
        .map(|(_, t)| {
            t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        })
        .collect();
    assert!(hashes.iter().all(|h| h == &d.config_hash), "{hashes:?}");
    d.config_hash.clone()
}

#[test]
fn config_hash_rolls_pods_on_config_or_secret_change_only() {
    let p = minimal_platform();
    let base = hash_of(&build(&p));
    assert_eq!(base, hash_of(&build(&p)), "deterministic");

    let mut changed = p.clone();
    changed.spec.kafka.partitions = 13;
    assert_ne!(base, hash_of(&build(&changed)));

    let rotated = BuildInputs {
        secrets_digest: "digest-2".into(),
        ..inputs()
    };
    assert_ne!(base, hash_of(&desired(&p, &rotated).unwrap()));

    // Scaling is not a config change.
    let mut scaled = p.clone();
    scaled.spec.components.gateway.replicas = 7;
    assert_eq!(base, hash_of(&build(&scaled)));
}

#[test]
fn secrets_digest_is_order_independent_and_content_sensitive() {
    let a = std::collections::BTreeMap::from([("k".to_owned(), b"v1".to_vec())]);
    let b = std::collections::BTreeMap::from([("k".to_owned(), b"v2".to_vec())]);
    assert_eq!(
        secrets_digest([("x", &a), ("y", &b)]),
        secrets_digest([("y", &b), ("x", &a)])
    );
    assert_ne!(secrets_digest([("x", &a)]), secrets_digest([("x", &b)]));
    let cm = build(&minimal_platform()).config_map.unwrap();
    assert_ne!(config_hash(&cm, "a"), config_hash(&cm, "b"));
}

#[test]
fn autoscaling_owns_the_replica_count() {
    let mut p = minimal_platform();
    let d = build(&p);
    assert!(d.autoscalers.is_empty());
    assert!(d.deployments.iter().all(|x| x.spec.replicas == Some(2)));
    assert_eq!(d.stateful_sets[0].spec.replicas, Some(1));

    p.spec.components.socket.autoscaling = Some(AutoscalingSpec {
        min_replicas: 3,
        max_replicas: 9,
        target_cpu_utilization_percentage: 55,
    });
    let d = build(&p);
    let socket = d
        .deployments
        .iter()
        .find(|x| x.metadata.name.as_deref() == Some("orchid-socket"))
        .unwrap();
    assert_eq!(socket.spec.replicas, None, "the HPA sets it");
    assert_eq!(d.autoscalers.len(), 1);
    let hpa = &d.autoscalers[0].spec;
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 9));
    assert_eq!(hpa.scale_target_ref.name, "orchid-socket");
    assert_eq!(hpa.scale_target_ref.kind, "Deployment");
    let metric = &hpa.metrics.as_ref().unwrap()[0];
    assert_eq!(
        metric.resource.as_ref().unwrap().target.average_utilization,
        Some(55)
    );
}

#[test]
fn a_pdb_per_component() {
    let d = build(&minimal_platform());
    assert_eq!(d.pod_disruption_budgets.len(), 5);
    for pdb in &d.pod_disruption_budgets {
        let spec = pdb.spec.as_ref().unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrStr::Int(1)));
        let sel = spec
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert!(
            pdb.metadata
                .name
                .as_ref()
                .unwrap()
                .ends_with(&sel["app.kubernetes.io/component"])
        );
    }
}

#[test]
fn pods_spread_over_nodes_and_zones_unless_the_spec_says_otherwise() {
    let d = build(&minimal_platform());
    let pod = d.deployments[1].spec.template.spec.as_ref().unwrap();
    let spread = pod.topology_spread_constraints.as_ref().unwrap();
    let keys: Vec<_> = spread.iter().map(|t| t.topology_key.as_str()).collect();
    assert_eq!(
        keys,
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    );
    for t in spread {
        assert_eq!(
            t.when_unsatisfiable, "ScheduleAnyway",
            "never blocks scheduling"
        );
        let labels = t
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(labels["app.kubernetes.io/component"], "socket");
        assert_eq!(labels["app.kubernetes.io/instance"], "orchid");
    }
    // The full example sets its own for the gateway: used as given.
    let full = build(&full_platform());
    let gateway = full.deployments[0].spec.template.spec.as_ref().unwrap();
    let spread = gateway.topology_spread_constraints.as_ref().unwrap();
    assert_eq!(spread.len(), 1);
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
}
