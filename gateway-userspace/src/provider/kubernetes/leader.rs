//! Lease-based leader election: which of the agents (one per node) writes status and manages Services. Every
//! agent programs its own node whatever the outcome.
//!
//! The protocol is client-go's, on a `coordination.k8s.io/v1` Lease in the agent's namespace:
//! * No Lease: create it holding it (a `409 Conflict` means another agent was first).
//! * Held by us, or released (no holder): renew / take it with a `replace` carrying the `resourceVersion` that
//!   was read, so two agents racing cannot both win (the loser gets `409 Conflict`).
//! * Held by another agent: taken over only when its record has not changed for `leaseDurationSeconds`, timed
//!   with our own monotonic clock from when we first saw that record (no trust in clocks across nodes).
//!
//! The leader renews every `retry_period`; when it cannot renew for `renew_deadline` (shorter than the lease
//! duration) it stops writing before any other agent may take over. On shutdown it gives the lease up
//! ([`release`]) so another agent takes over at its next try. A lost or failed attempt never ends the
//! loop: it keeps trying. No dependency beyond kube: the logic is small and tested against the mock API server.
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::chrono::Utc;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Where the Lease is and who we are.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The agents' namespace.
    pub namespace: String,
    /// The Lease's name (one per controller name; agents sharing it elect one leader).
    pub name: String,
    /// This agent's identity in `holderIdentity` (the pod name).
    pub identity: String,
    /// `leaseDurationSeconds`: how long an unrenewed lease blocks other agents. Whole seconds, at least 1.
    pub lease_duration: Duration,
    /// The leader stops writing when it could not renew for this long; shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the lease is renewed, or tried by the others.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseSettings {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Runs the election; the receiver says whether this agent is the leader now (`false` to begin with).
pub fn elect(client: Client, settings: LeaseSettings) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut elector = Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        };
        let mut renewed: Option<Instant> = None;
        loop {
            let attempt =
                tokio::time::timeout(elector.settings.renew_deadline, elector.attempt()).await;
            let leading = match attempt {
                Ok(Ok(true)) => {
                    renewed = Some(Instant::now());
                    true
                }
                Ok(Ok(false)) => {
                    renewed = None;
                    false
                }
                Ok(Err(e)) => {
                    warn!(lease = elector.settings.name, error = %e, "leader election: the Lease could not be read or written");
                    renewed.is_some_and(|t| t.elapsed() < elector.settings.renew_deadline)
                }
                Err(_) => {
                    warn!(
                        lease = elector.settings.name,
                        "leader election: the API server did not answer in time"
                    );
                    renewed.is_some_and(|t| t.elapsed() < elector.settings.renew_deadline)
                }
            };
            tx.send_if_modified(|was| {
                if *was != leading {
                    info!(
                        lease = elector.settings.name,
                        identity = elector.settings.identity,
                        leading,
                        "leadership changed"
                    );
                }
                std::mem::replace(was, leading) != leading
            });
            if tx.is_closed() {
                break;
            }
            tokio::time::sleep(elector.settings.retry_period).await;
        }
    });
    (rx, task)
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// Another holder's record as last seen, and when we first saw it unchanged.
    observed: Option<(LeaseSpec, Instant)>,
}

impl Elector {
    fn duration_seconds(&self) -> i32 {
        self.settings.lease_duration.as_secs().max(1) as i32
    }

    /// One round: `Ok(true)` when we hold the lease after it.
    async fn attempt(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Utc::now());
        let me = self.settings.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_lost(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if !holder.is_empty() && holder != me {
            if self.observed.as_ref().map(|(s, _)| s) != Some(&spec) {
                self.observed = Some((spec.clone(), Instant::now()));
            }
            let valid_for =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(1).max(1) as u64);
            if self
                .observed
                .as_ref()
                .is_some_and(|(_, seen)| seen.elapsed() < valid_for)
            {
                return Ok(false);
            }
            info!(
                lease = self.settings.name,
                holder, "the Lease was not renewed in time; taking it over"
            );
        }
        let taking = holder != me;
        let mut next = spec;
        next.holder_identity = Some(me);
        next.lease_duration_seconds = Some(self.duration_seconds());
        next.renew_time = Some(now.clone());
        if taking {
            next.acquire_time = Some(now);
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(next);
        // `lease` carries the resourceVersion we read: the replace fails with 409 if anyone wrote in between.
        let result = self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await;
        if result.is_ok() {
            self.observed = None;
        }
        conflict_is_lost(result)
    }
}

/// Gives the lease up if this agent holds it (no holder, so another agent takes it at its next try instead of
/// waiting for it to expire). Call after the election and the writer have stopped. Best effort: errors are logged.
pub async fn release(client: Client, settings: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let result = async {
        let Some(mut lease) = api.get_opt(&settings.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Utc::now()));
        conflict_is_lost(
            api.replace(&settings.name, &PostParams::default(), &lease)
                .await,
        )
    }
    .await;
    match result {
        Ok(true) => info!(lease = settings.name, "leadership released"),
        Ok(false) => {}
        Err(e) => {
            warn!(lease = settings.name, error = %e, "releasing the Lease failed; it will expire")
        }
    }
}

/// A write that lost a race (`409 Conflict`, e.g. another agent renewed or created first) is a lost round, not
/// an error.
fn conflict_is_lost(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
