//! Leader election over a `coordination.k8s.io/v1` Lease, so several operator replicas can run
//! and exactly one reconciles. The decision (create, renew, take over an expired lease, or
//! wait) is a pure function of the Lease and the clock; the API calls use the Lease's
//! `resourceVersion`, so two candidates racing for it cannot both win (the loser gets 409).
//! A leader that cannot renew before its lease would expire stops, rather than risk two leaders.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::Duration;

/// Settings of one election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica (its pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(4),
        }
    }
}

/// What to do with the Lease as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it and let it expire (or released it): take it over.
    TakeOver,
    /// Someone else holds it.
    Wait,
}

/// Decides from the Lease and the clock.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(_) => {
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match spec.renew_time.or(spec.acquire_time) {
                Some(MicroTime(renewed))
                    if renewed.checked_add(duration).is_ok_and(|end| end > now) =>
                {
                    Decision::Wait
                }
                _ => Decision::TakeOver,
            }
        }
    }
}

fn held_spec(
    cfg: &LeaseConfig,
    now: Timestamp,
    previous: Option<&LeaseSpec>,
    transition: bool,
) -> LeaseSpec {
    let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time: if transition {
            Some(MicroTime(now))
        } else {
            previous
                .and_then(|s| s.acquire_time.clone())
                .or(Some(MicroTime(now)))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if transition && previous.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// One round: returns whether this replica holds the lease afterwards. A lost race (409) is
/// `Ok(false)`; other API errors are returned.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    now: Timestamp,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let result = match decide(current.as_ref(), &cfg.identity, now) {
        Decision::Wait => return Ok(false),
        Decision::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(held_spec(cfg, now, None, true)),
            };
            api.create(&PostParams::default(), &lease).await
        }
        decision @ (Decision::Renew | Decision::TakeOver) => {
            let Some(mut lease) = current else {
                return Ok(false);
            };
            lease.spec = Some(held_spec(
                cfg,
                now,
                lease.spec.as_ref(),
                decision == Decision::TakeOver,
            ));
            // `replace` sends the resourceVersion we read: a concurrent change makes it fail with 409.
            api.replace(&cfg.name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until this replica holds the lease.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig) {
    loop {
        match try_acquire_or_renew(api, cfg, Timestamp::now()).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "Acquired the leader lease.");
                return;
            }
            Ok(false) => tracing::debug!(lease = %cfg.name, "Another replica leads; waiting."),
            Err(error) => {
                tracing::warn!(error = %error, lease = %cfg.name, "Failed to read or write the leader lease.")
            }
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

/// Renews the lease until it cannot: returns when leadership is lost (another holder, or no
/// successful renewal for two thirds of the lease duration).
pub async fn hold(api: &Api<Lease>, cfg: &LeaseConfig) {
    let deadline = cfg.lease_duration.mul_f64(2.0 / 3.0);
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.retry_period).await;
        match try_acquire_or_renew(api, cfg, Timestamp::now()).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %cfg.name, "Another replica took the leader lease.");
                return;
            }
            Err(error) => {
                tracing::warn!(error = %error, lease = %cfg.name, "Failed to renew the leader lease.");
                if last_renewed.elapsed() >= deadline {
                    tracing::error!(lease = %cfg.name, "Could not renew the leader lease in time.");
                    return;
                }
            }
        }
    }
}

/// Gives the lease up on a clean shutdown, so a standby replica takes over at once.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    api.replace(&cfg.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(at(renewed))),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "me", at(100)), Decision::Create);
        assert_eq!(
            decide(Some(&lease(Some("me"), 10)), "me", at(100)),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease(Some("other"), 95)), "me", at(100)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&lease(Some("other"), 80)), "me", at(100)),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(None, 99)), "me", at(100)),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(Some(""), 99)), "me", at(100)),
            Decision::TakeOver
        );
    }

    #[test]
    fn take_over_counts_a_transition_and_renew_keeps_acquire_time() {
        let cfg = LeaseConfig::new("l", "ns", "me");
        let previous = lease(Some("other"), 10).spec.unwrap();
        let taken = held_spec(&cfg, at(100), Some(&previous), true);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(100))));
        let renewed = held_spec(&cfg, at(110), Some(&taken), false);
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(110))));
        assert_eq!(renewed.holder_identity.as_deref(), Some("me"));
    }

    mod api {
        use super::*;
        use crate::mock_api::{Answer, call, serve};
        use http::{Method, Request, Response};
        use kube::Client;
        use kube::client::Body;
        use serde_json::json;

        const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops-ns/leases/caas-lease";

        fn lease_json(holder: &str, renewed: &str) -> serde_json::Value {
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "caas-lease", "namespace": "ops-ns", "resourceVersion": "7"},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed}
            })
        }

        async fn round(
            calls: Vec<crate::mock_api::Call>,
            now: Timestamp,
        ) -> (bool, Vec<crate::mock_api::Seen>) {
            let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let api: Api<Lease> = Api::namespaced(Client::new(service, "ops-ns"), "ops-ns");
            let n = calls.len();
            let server = serve(handle, calls);
            let cfg = LeaseConfig::new("caas-lease", "ops-ns", "op-a");
            let held = tokio::time::timeout(
                Duration::from_secs(5),
                try_acquire_or_renew(&api, &cfg, now),
            )
            .await
            .unwrap()
            .unwrap();
            let seen = tokio::time::timeout(Duration::from_secs(1), server)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(seen.len(), n);
            (held, seen)
        }

        #[tokio::test]
        async fn creates_an_absent_lease() {
            let calls = vec![
                call(Method::GET, PATH, Answer::NotFound),
                call(
                    Method::POST,
                    "/apis/coordination.k8s.io/v1/namespaces/ops-ns/leases",
                    Answer::Echo,
                ),
            ];
            let (held, seen) = round(calls, at(1_000)).await;
            assert!(held);
            assert_eq!(seen[1].body["spec"]["holderIdentity"], "op-a");
        }

        #[tokio::test]
        async fn waits_while_another_holds_a_fresh_lease() {
            let calls = vec![call(
                Method::GET,
                PATH,
                Answer::Json(lease_json("op-b", "1970-01-01T00:16:35Z")),
            )];
            let (held, _) = round(calls, at(1_000)).await;
            assert!(!held, "no write while op-b's lease (renewed 5 s ago) holds");
        }

        #[tokio::test]
        async fn takes_over_an_expired_lease_with_its_resource_version() {
            let calls = vec![
                call(
                    Method::GET,
                    PATH,
                    Answer::Json(lease_json("op-b", "1970-01-01T00:10:00Z")),
                ),
                call(Method::PUT, PATH, Answer::Echo),
            ];
            let (held, seen) = round(calls, at(1_000)).await;
            assert!(held);
            assert_eq!(seen[1].body["metadata"]["resourceVersion"], "7");
            assert_eq!(seen[1].body["spec"]["holderIdentity"], "op-a");
            assert_eq!(seen[1].body["spec"]["leaseTransitions"], 1);
        }

        #[tokio::test]
        async fn a_lost_race_is_not_leadership() {
            let calls = vec![
                call(
                    Method::GET,
                    PATH,
                    Answer::Json(lease_json("op-b", "1970-01-01T00:10:00Z")),
                ),
                call(Method::PUT, PATH, Answer::Conflict),
            ];
            let (held, _) = round(calls, at(1_000)).await;
            assert!(!held);
        }
    }
}
