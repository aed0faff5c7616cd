//! The optional Ingress: one host, Socket.IO (`/socket.io`) to the socket Service, files
//! (`/v1/media`) to media, queries (`/v1/search`) to search, everything else to the gateway.
//! TLS when the spec names a Secret.

use super::{BuildError, Component, Names, object_meta};
use crate::crd::ChatPlatform;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

fn path(names: &Names, prefix: &str, component: Component) -> HTTPIngressPath {
    HTTPIngressPath {
        path: Some(prefix.into()),
        path_type: "Prefix".into(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: names.component(component),
                port: Some(ServiceBackendPort {
                    name: Some("http".into()),
                    number: None,
                }),
            }),
            resource: None,
        },
    }
}

/// The Ingress, when the spec asks for one.
pub fn ingress(platform: &ChatPlatform, names: &Names) -> Result<Option<Ingress>, BuildError> {
    let Some(spec) = &platform.spec.ingress else {
        return Ok(None);
    };
    let mut metadata = object_meta(platform, names, names.platform.clone(), None)?;
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    Ok(Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![
                        path(names, "/socket.io", Component::Socket),
                        path(names, "/v1/media", Component::Media),
                        path(names, "/v1/search", Component::Search),
                        path(names, "/", Component::Gateway),
                    ],
                }),
            }]),
            default_backend: None,
        }),
        ..Ingress::default()
    }))
}
