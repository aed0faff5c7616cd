//! The status of a platform, computed (purely) from what the API server reported back for its
//! Deployments and StatefulSet. Ready only when every component has all its desired replicas
//! updated and ready; while pods are not ready (no nodes, image pulls, crash loops) the platform
//! is Progressing with a message naming the components, never Ready.

use crate::build::Component;
use crate::crd::ChatPlatform;
use crate::crd::common::{ConditionStatus, ConditionType, condition, set_condition};
use crate::crd::platform::{ChatPlatformStatus, ComponentStatus};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;

/// Reasons written to the conditions. Documented in docs/operator.md (troubleshooting).
pub mod reason {
    pub const ALL_READY: &str = "AllComponentsReady";
    pub const NOT_READY: &str = "ComponentsNotReady";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const ROLLOUT_STUCK: &str = "RolloutStuck";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    pub const PAUSED: &str = "Paused";
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

/// What one workload object reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
    /// The controller has seen the latest spec.
    pub current: bool,
    /// The Deployment's `Progressing` condition said `ProgressDeadlineExceeded`.
    pub stuck: Option<String>,
    /// Why a pod of the component is not running, when one says (see [`pod_problem`]).
    pub problem: Option<String>,
}

impl Observed {
    pub fn from_deployment(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        let desired = d.spec.replicas.or(status.replicas).unwrap_or(0);
        let stuck = status.conditions.iter().flatten().find_map(|c| {
            (c.type_.as_deref() == Some("Progressing")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            .then(|| {
                c.message
                    .clone()
                    .unwrap_or_else(|| "progress deadline exceeded".into())
            })
        });
        Self {
            desired,
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            current: status.observed_generation.is_some()
                && status.observed_generation >= d.metadata.generation,
            stuck,
            problem: None,
        }
    }

    pub fn from_stateful_set(s: &StatefulSet) -> Self {
        let status = s.status.clone().unwrap_or_default();
        let desired = s.spec.replicas.unwrap_or(status.replicas);
        Self {
            desired,
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            current: status.observed_generation.is_some()
                && status.observed_generation >= s.metadata.generation,
            stuck: None,
            problem: None,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.current && self.ready >= self.desired && self.updated >= self.desired
    }
}

/// Container waiting reasons that mean "this will not fix itself soon".
const BAD_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The first reason, in pod-name order, why a pod is not running: unschedulable (e.g. no
/// nodes), an image that cannot be pulled, a crash loop, a missing Secret or ConfigMap.
pub fn pod_problem(pods: &[Pod]) -> Option<String> {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let Some(status) = &pod.status else { continue };
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        {
            let reason = c.reason.as_deref().unwrap_or("Unschedulable");
            return Some(shorten(format!(
                "pod {name}: {reason}: {}",
                c.message.as_deref().unwrap_or("")
            )));
        }
        for cs in status.container_statuses.iter().flatten() {
            if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref())
                && let Some(reason) = waiting.reason.as_deref()
                && BAD_WAITING.contains(&reason)
            {
                return Some(shorten(format!(
                    "pod {name}: {reason}: {}",
                    waiting.message.as_deref().unwrap_or("")
                )));
            }
        }
    }
    None
}

fn shorten(mut s: String) -> String {
    let s_trimmed = s.trim_end_matches([' ', ':']).len();
    s.truncate(s_trimmed);
    if s.len() > 240 {
        let mut end = 240;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// The status after a successful apply.
pub fn platform_status(
    platform: &ChatPlatform,
    observed: &BTreeMap<Component, Observed>,
    tenants: i32,
    config_hash: &str,
    now: Timestamp,
) -> ChatPlatformStatus {
    let generation = platform.metadata.generation;
    let mut status = platform.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.tenants = tenants;
    status.config_hash = Some(config_hash.to_owned());

    let mut components = BTreeMap::new();
    let mut waiting = Vec::new();
    let mut stuck = Vec::new();
    for c in Component::ALL {
        let o = observed.get(&c).cloned().unwrap_or_default();
        if !o.is_ready() {
            match &o.problem {
                Some(problem) => waiting.push(format!(
                    "{} {}/{} ready ({problem})",
                    c.name(),
                    o.ready,
                    o.desired
                )),
                None => waiting.push(format!("{} {}/{} ready", c.name(), o.ready, o.desired)),
            }
        }
        if let Some(message) = &o.stuck {
            stuck.push(format!("{}: {message}", c.name()));
        }
        components.insert(
            c.name().to_owned(),
            ComponentStatus {
                desired_replicas: o.desired,
                ready_replicas: o.ready,
                updated_replicas: o.updated,
                version: o.is_ready().then(|| platform.spec.version.clone()),
            },
        );
    }
    status.components = components;
    let ready = waiting.is_empty();
    status.version = ready.then(|| platform.spec.version.clone());

    let conditions = &mut status.conditions;
    if ready {
        let message = format!("{} components ready", Component::ALL.len());
        set_condition(
            conditions,
            condition(
                ConditionType::Ready,
                ConditionStatus::True,
                reason::ALL_READY,
                message,
                generation,
                now,
            ),
        );
        set_condition(
            conditions,
            condition(
                ConditionType::Progressing,
                ConditionStatus::False,
                reason::ROLLOUT_COMPLETE,
                "",
                generation,
                now,
            ),
        );
    } else {
        let message = format!("waiting for {}", waiting.join(", "));
        set_condition(
            conditions,
            condition(
                ConditionType::Ready,
                ConditionStatus::False,
                reason::NOT_READY,
                message.clone(),
                generation,
                now,
            ),
        );
        set_condition(
            conditions,
            condition(
                ConditionType::Progressing,
                ConditionStatus::True,
                reason::ROLLING_OUT,
                message,
                generation,
                now,
            ),
        );
    }
    if stuck.is_empty() {
        set_condition(
            conditions,
            condition(
                ConditionType::Degraded,
                ConditionStatus::False,
                reason::AS_EXPECTED,
                "",
                generation,
                now,
            ),
        );
    } else {
        set_condition(
            conditions,
            condition(
                ConditionType::Degraded,
                ConditionStatus::True,
                reason::ROLLOUT_STUCK,
                stuck.join("; "),
                generation,
                now,
            ),
        );
    }
    status
}

/// The status when the operator cannot proceed (a missing Secret): Degraded with the cause,
/// not Ready, and the component counts left as last seen.
pub fn blocked_status(
    platform: &ChatPlatform,
    reason_: &str,
    message: &str,
    now: Timestamp,
) -> ChatPlatformStatus {
    let generation = platform.metadata.generation;
    let mut status = platform.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let conditions = &mut status.conditions;
    set_condition(
        conditions,
        condition(
            ConditionType::Degraded,
            ConditionStatus::True,
            reason_,
            message,
            generation,
            now,
        ),
    );
    set_condition(
        conditions,
        condition(
            ConditionType::Ready,
            ConditionStatus::False,
            reason_,
            message,
            generation,
            now,
        ),
    );
    set_condition(
        conditions,
        condition(
            ConditionType::Progressing,
            ConditionStatus::False,
            reason_,
            message,
            generation,
            now,
        ),
    );
    status
}

/// The status while the pause annotation is set.
pub fn paused_status(platform: &ChatPlatform, now: Timestamp) -> ChatPlatformStatus {
    let generation = platform.metadata.generation;
    let mut status = platform.status.clone().unwrap_or_default();
    let message = "the caas.dev/paused annotation is set: no changes are applied";
    set_condition(
        &mut status.conditions,
        condition(
            ConditionType::Progressing,
            ConditionStatus::False,
            reason::PAUSED,
            message,
            generation,
            now,
        ),
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::find_condition;
    use crate::crd::platform::ChatPlatformSpec;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};

    fn platform() -> ChatPlatform {
        let spec: ChatPlatformSpec = serde_json::from_value(serde_json::json!({
            "version": "4.5.6",
            "mongodb": {"uriSecretRef": {"name": "a", "key": "b"}},
            "kafka": {"bootstrapServers": "k:1"},
            "redis": {"urlSecretRef": {"name": "c", "key": "d"}},
            "objectStorage": {"bucket": "bkt", "credentialsSecretRef": {"name": "e"}}
        }))
        .unwrap();
        let mut p = ChatPlatform::new("lark", spec);
        p.metadata.generation = Some(4);
        p
    }

    fn deployment(desired: i32, ready: i32, updated: i32, observed_generation: i64) -> Deployment {
        Deployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(desired),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                observed_generation: Some(observed_generation),
                ..Default::default()
            }),
        }
    }

    fn all(o: Observed) -> BTreeMap<Component, Observed> {
        Component::ALL.into_iter().map(|c| (c, o.clone())).collect()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000).unwrap()
    }

    #[test]
    fn ready_when_every_component_is_ready() {
        let o = Observed::from_deployment(&deployment(2, 2, 2, 2));
        assert!(o.is_ready());
        let s = platform_status(&platform(), &all(o), 3, "h", now());
        assert_eq!(
            find_condition(&s.conditions, ConditionType::Ready)
                .unwrap()
                .status,
            "True"
        );
        assert_eq!(
            find_condition(&s.conditions, ConditionType::Progressing)
                .unwrap()
                .status,
            "False"
        );
        assert_eq!(s.version.as_deref(), Some("4.5.6"));
        assert_eq!(s.tenants, 3);
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.components["gateway"].ready_replicas, 2);
    }

    #[test]
    fn pods_that_never_become_ready_keep_it_progressing() {
        // No nodes: nothing ready, ever. Not Ready, Progressing with the components named.
        let mut observed = all(Observed::from_deployment(&deployment(2, 2, 2, 2)));
        observed.insert(
            Component::Socket,
            Observed::from_deployment(&deployment(3, 0, 3, 2)),
        );
        let s = platform_status(&platform(), &observed, 0, "h", now());
        let ready = find_condition(&s.conditions, ConditionType::Ready).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::NOT_READY)
        );
        assert!(
            ready.message.contains("socket 0/3 ready"),
            "{}",
            ready.message
        );
        assert!(!ready.message.contains("gateway"), "{}", ready.message);
        assert_eq!(
            find_condition(&s.conditions, ConditionType::Progressing)
                .unwrap()
                .status,
            "True"
        );
        assert_eq!(s.version, None);
        assert_eq!(s.components["socket"].version, None);
        assert_eq!(s.components["gateway"].version.as_deref(), Some("4.5.6"));
    }

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "status": status}))
            .unwrap()
    }

    #[test]
    fn pod_problems_name_the_cause() {
        let unschedulable = pod(
            "lark-gateway-b",
            serde_json::json!({"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu."
            }]}),
        );
        let pulling = pod(
            "lark-gateway-a",
            serde_json::json!({"containerStatuses": [{
                "name": "caas", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x:9\""}}
            }]}),
        );
        let starting = pod(
            "lark-gateway-0",
            serde_json::json!({"containerStatuses": [{
                "name": "caas", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}
            }]}),
        );
        assert_eq!(
            pod_problem(std::slice::from_ref(&starting)),
            None,
            "still starting is not a problem"
        );
        assert_eq!(
            pod_problem(&[unschedulable.clone(), starting.clone()]).as_deref(),
            Some("pod lark-gateway-b: Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.")
        );
        assert_eq!(
            pod_problem(&[unschedulable, pulling, starting]).as_deref(),
            Some("pod lark-gateway-a: ImagePullBackOff: Back-off pulling image \"x:9\""),
            "first by name"
        );
    }

    #[test]
    fn the_problem_is_in_the_ready_message() {
        let mut observed = all(Observed::from_deployment(&deployment(2, 2, 2, 2)));
        let mut media = Observed::from_deployment(&deployment(2, 0, 2, 2));
        media.problem = Some("pod lark-media-x: Unschedulable: 0/1 nodes are available".into());
        observed.insert(Component::Media, media);
        let s = platform_status(&platform(), &observed, 0, "h", now());
        let ready = find_condition(&s.conditions, ConditionType::Ready).unwrap();
        assert_eq!(
            ready.message,
            "waiting for media 0/2 ready (pod lark-media-x: Unschedulable: 0/1 nodes are available)"
        );
    }

    #[test]
    fn a_stale_observed_generation_is_not_ready() {
        let o = Observed::from_deployment(&deployment(2, 2, 2, 1));
        assert!(!o.is_ready());
    }

    #[test]
    fn a_stuck_rollout_is_degraded() {
        let mut d = deployment(2, 1, 1, 2);
        d.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: Some("Progressing".into()),
            status: Some("False".into()),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"x\" has timed out progressing.".into()),
            ..Default::default()
        }]);
        let s = platform_status(
            &platform(),
            &all(Observed::from_deployment(&d)),
            0,
            "h",
            now(),
        );
        let degraded = find_condition(&s.conditions, ConditionType::Degraded).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", reason::ROLLOUT_STUCK)
        );
        assert!(
            degraded.message.contains("timed out"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn blocked_names_the_cause() {
        let s = blocked_status(
            &platform(),
            reason::SECRET_NOT_FOUND,
            "Secret mongo-uri not found",
            now(),
        );
        for t in [ConditionType::Ready, ConditionType::Degraded] {
            let c = find_condition(&s.conditions, t).unwrap();
            assert_eq!(c.message, "Secret mongo-uri not found");
            assert_eq!(c.reason, reason::SECRET_NOT_FOUND);
        }
        assert_eq!(
            find_condition(&s.conditions, ConditionType::Ready)
                .unwrap()
                .status,
            "False"
        );
        assert_eq!(
            find_condition(&s.conditions, ConditionType::Degraded)
                .unwrap()
                .status,
            "True"
        );
    }
}
