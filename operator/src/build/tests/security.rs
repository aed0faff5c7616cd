//! The builders' security: every pod template is PSS-restricted, overrides cannot take the
//! selector labels, only the workloads that sign get signing keys, generated Secrets are usable.

use super::*;

fn assert_restricted(name: &str, t: &PodTemplateSpec) {
    let pod = t.spec.as_ref().unwrap();
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true), "{name}");
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault",
        "{name}"
    );
    assert_ne!(psc.run_as_user, Some(0), "{name}");
    assert_eq!(pod.automount_service_account_token, Some(false), "{name}");
    assert!(
        pod.host_network.is_none() && pod.host_pid.is_none() && pod.host_ipc.is_none(),
        "{name}"
    );
    for v in pod.volumes.iter().flatten() {
        assert!(v.host_path.is_none(), "{name}: hostPath volume {}", v.name);
    }
    let all = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in all {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true), "{name}/{}", c.name);
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{name}/{}",
            c.name
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{name}/{}",
            c.name
        );
        assert_ne!(sc.privileged, Some(true), "{name}/{}", c.name);
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{name}/{}",
            c.name
        );
        assert!(
            caps.add.as_ref().is_none_or(Vec::is_empty),
            "{name}/{}",
            c.name
        );
        assert_eq!(
            sc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault",
            "{name}/{}",
            c.name
        );
    }
}

#[test]
fn every_pod_template_is_pss_restricted() {
    for p in [minimal_platform(), full_platform()] {
        let d = build(&p);
        let all = templates(&d);
        assert_eq!(all.len(), 5);
        for (name, t) in all {
            assert_restricted(&name, t);
        }
    }
}

#[test]
fn pod_overrides_cannot_steal_the_selector_labels() {
    let mut p = minimal_platform();
    p.spec
        .components
        .media
        .pod
        .labels
        .insert("app.kubernetes.io/instance".into(), "evil".into());
    p.spec
        .components
        .media
        .pod
        .labels
        .insert("team".into(), "blue".into());
    let d = build(&p);
    let media = d
        .deployments
        .iter()
        .find(|x| x.metadata.name.as_deref() == Some("orchid-media"))
        .unwrap();
    let labels = media
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(labels["app.kubernetes.io/instance"], "orchid");
    assert_eq!(labels["team"], "blue");
    for (k, v) in media.spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(labels.get(k), Some(v), "selector label {k} on the pods");
    }
}

#[test]
fn pipeline_does_not_mount_signing_keys() {
    let d = build(&minimal_platform());
    let mounts = |name: &str| -> Vec<String> {
        container(&d, name)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.clone())
            .collect()
    };
    assert!(mounts("orchid-gateway").contains(&"/etc/caas/keys".to_owned()));
    assert!(!mounts("orchid-pipeline").contains(&"/etc/caas/keys".to_owned()));
    let pod = &d.deployments[0].spec.template.spec.as_ref().unwrap();
    let keys = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "signing-keys")
        .unwrap();
    assert_eq!(
        keys.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("orchid-signing-keys")
    );
    let admin = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "admin-token")
        .unwrap();
    assert_eq!(
        admin.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("orchid-admin-token")
    );

    let full = build(&full_platform());
    let pod = &full.deployments[0].spec.template.spec.as_ref().unwrap();
    let admin = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "admin-token")
        .unwrap();
    let secret = admin.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("caas-admin"));
    assert_eq!(secret.items.as_ref().unwrap()[0].key, "token");
    let keys = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "signing-keys")
        .unwrap();
    assert_eq!(
        keys.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("caas-signing-keys")
    );
}

#[test]
fn generated_secrets_hold_usable_material() {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let pem = secrets::generate_signing_key().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    assert_ne!(key.to_bytes(), [0u8; 32]);
    assert_ne!(pem, secrets::generate_signing_key().unwrap());

    let token = secrets::generate_token().unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));

    let p = minimal_platform();
    let names = Names::of(&p).unwrap();
    let s = secrets::signing_keys_secret(&p, &names, "k-1", &pem).unwrap();
    assert_eq!(s.metadata.name.as_deref(), Some("orchid-signing-keys"));
    assert!(s.string_data.as_ref().unwrap().contains_key("k-1.pem"));
    let t = secrets::admin_token_secret(&p, &names, &token).unwrap();
    assert_eq!(t.string_data.as_ref().unwrap()["token"], token);
    assert_eq!(
        t.metadata.owner_references.as_ref().unwrap()[0].uid,
        "uid-orchid-1"
    );
}
