//! Types shared by both custom resources: Secret key references, condition types and reasons,
//! and the one function that updates a condition list the way Kubernetes expects
//! (`lastTransitionTime` moves only when the status changes). No API calls here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A key in a Secret in the same namespace as the resource that names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The condition types the operator writes, on both resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionType {
    /// Everything the resource asks for is in place and serving.
    Ready,
    /// The operator is changing something, or waiting for pods to become ready.
    Progressing,
    /// Something is wrong that the operator cannot fix alone (a missing Secret, an API that
    /// refuses); the message names it.
    Degraded,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Progressing => "Progressing",
            ConditionType::Degraded => "Degraded",
        }
    }
}

/// A condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    pub fn from_bool(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// Builds a condition stamped with `now`.
pub fn condition(
    type_: ConditionType,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.as_str().to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: Time(now),
    }
}

/// Inserts or replaces the condition of the same type. The previous `lastTransitionTime` is kept
/// when the status did not change, so the time says when the status last flipped.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time.clone();
        }
        *old = new;
    } else {
        conditions.push(new);
    }
}

/// The condition of a type, if present.
pub fn find_condition(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Schema of a `conditions` list: a map keyed by `type`, so server-side apply merges entries.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut list = Vec::new();
        set_condition(
            &mut list,
            condition(
                ConditionType::Ready,
                ConditionStatus::False,
                "A",
                "a",
                Some(1),
                at(10),
            ),
        );
        set_condition(
            &mut list,
            condition(
                ConditionType::Ready,
                ConditionStatus::False,
                "B",
                "b",
                Some(2),
                at(20),
            ),
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_transition_time, Time(at(10)));
        assert_eq!(list[0].reason, "B");
        assert_eq!(list[0].observed_generation, Some(2));
        set_condition(
            &mut list,
            condition(
                ConditionType::Ready,
                ConditionStatus::True,
                "C",
                "c",
                Some(2),
                at(30),
            ),
        );
        assert_eq!(list[0].last_transition_time, Time(at(30)));
        set_condition(
            &mut list,
            condition(
                ConditionType::Degraded,
                ConditionStatus::False,
                "D",
                "",
                Some(2),
                at(30),
            ),
        );
        assert_eq!(list.len(), 2);
        assert_eq!(
            find_condition(&list, ConditionType::Degraded).map(|c| c.reason.as_str()),
            Some("D")
        );
    }
}
