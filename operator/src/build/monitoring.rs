//! The optional Prometheus Operator `ServiceMonitor` (`monitoring.coreos.com/v1`), built as a
//! dynamic object because its type is not part of Kubernetes. It scrapes the `metrics` port of
//! every Service of the platform. The reconciler applies it only when the CRD exists.

use super::{BuildError, Names, object_meta, selector_labels};
use crate::crd::ChatPlatform;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

/// The CRD whose presence the reconciler checks.
pub const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";

/// The ServiceMonitor API resource.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// The ServiceMonitor, when the spec enables it.
pub fn service_monitor(
    platform: &ChatPlatform,
    names: &Names,
) -> Result<Option<DynamicObject>, BuildError> {
    let spec = &platform.spec.observability.service_monitor;
    if !spec.enabled {
        return Ok(None);
    }
    let mut metadata = object_meta(platform, names, names.platform.clone(), None)?;
    if let Some(labels) = metadata.labels.as_mut() {
        for (k, v) in &spec.labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let mut obj = DynamicObject::new(&names.platform, &service_monitor_resource()).data(json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(names, None)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": spec.interval}],
        }
    }));
    obj.metadata = metadata;
    Ok(Some(obj))
}
