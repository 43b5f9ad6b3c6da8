//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `tools/leaderelection`:
//! the leader renews the Lease every retry period; a candidate takes it over only once the
//! record it last *observed* has not changed for `leaseDurationSeconds` by its own clock (so
//! clock skew between machines does not matter); the leader steps down when it cannot renew
//! within the renew deadline. Every write is guarded by the resourceVersion that was read, so
//! two candidates never both win.
//!
//! Defaults are client-go's (and kube-controller-manager's and kube-scheduler's): 15 s lease,
//! 10 s renew deadline, 2 s retry period, configurable through [`Timings`].

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use crate::Error;

/// How long a Lease is valid after its last renewal (client-go `LeaseDuration`).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader keeps trying to renew before it steps down (client-go `RenewDeadline`).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between acquire or renew attempts (client-go `RetryPeriod`).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Candidates wait up to this factor of the retry period longer between attempts, so they do
/// not all ask at once (client-go `JitterFactor`).
pub const JITTER_FACTOR: f64 = 1.2;

/// How long leases last and how often they are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long non-leaders wait after the last observed renewal before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Pause between acquire or renew attempts.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        }
    }
}

impl Timings {
    /// client-go's `NewLeaderElector` checks: the leader must give up before others may take
    /// over, and must have time for more than one (jittered) attempt before it gives up.
    pub fn validate(&self) -> Result<(), Error> {
        if self.lease_duration <= self.renew_deadline {
            return Err(Error::InvalidTimings(
                "leaseDuration must be greater than renewDeadline",
            ));
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return Err(Error::InvalidTimings(
                "renewDeadline must be greater than retryPeriod*JitterFactor",
            ));
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err(Error::InvalidTimings(
                "leaseDuration must be at least one second (leaseDurationSeconds)",
            ));
        }
        if self.retry_period.is_zero() {
            return Err(Error::InvalidTimings(
                "retryPeriod must be greater than zero",
            ));
        }
        Ok(())
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// The retry period with client-go's jitter (`wait.Jitter(retryPeriod, JitterFactor)`).
    fn jittered_retry(&self) -> Duration {
        self.retry_period
            .mul_f64(1.0 + rand::random::<f64>() * JITTER_FACTOR)
    }
}

/// The Lease record last seen and when (client-go `observedRecord` / `observedTime`).
#[derive(Debug)]
struct Observed {
    spec: Option<LeaseSpec>,
    time: Instant,
}

/// What one acquire-or-renew attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// This candidate holds the Lease now.
    Leading,
    /// Another candidate holds a Lease that is still valid.
    HeldBy(String),
    /// Someone else wrote the Lease between our read and our write (409); try again.
    Conflict,
}

/// One candidate for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    observed: Mutex<Observed>,
}

impl LeaderElector {
    /// A candidate called `identity` (unique per process) for the Lease `namespace/name`;
    /// fails on timings client-go would refuse.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Result<Self, Error> {
        timings.validate()?;
        Ok(LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timings,
            observed: Mutex::new(Observed {
                spec: None,
                time: Instant::now(),
            }),
        })
    }

    /// Waits for the Lease, then runs `work` while renewing it. Returns `work`'s output, or
    /// [`Error::LeadershipLost`] as soon as leadership is lost (`work` is dropped then: the
    /// caller must stop acting, as client-go's users exit).
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, Error> {
        self.acquire().await;
        tokio::select! {
            out = work => Ok(out),
            () = self.hold() => Err(Error::LeadershipLost),
        }
    }

    /// Blocks until this candidate holds the Lease (retrying every jittered retry period).
    pub async fn acquire(&self) {
        loop {
            match self.attempt(Instant::now()).await {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    tracing::debug!(lease = %self.name, %holder, "lease is held by another candidate");
                }
                Ok(Attempt::Conflict) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election attempt failed")
                }
            }
            tokio::time::sleep(self.timings.jittered_retry()).await;
        }
    }

    /// Renews the Lease every retry period; returns when leadership is lost: a renewal round
    /// did not succeed within the renew deadline (each attempt is cut off at the deadline
    /// too), or another candidate holds the Lease.
    pub async fn hold(&self) {
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            if let Err(why) = self.renew_round().await {
                tracing::error!(lease = %self.name, identity = %self.identity, "leadership lost: {why}");
                return;
            }
        }
    }

    /// One renewal round (client-go `renew`: poll every retry period until the deadline).
    async fn renew_round(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.timings.renew_deadline;
        loop {
            match tokio::time::timeout_at(deadline, self.attempt(Instant::now())).await {
                Ok(Ok(Attempt::Leading)) => return Ok(()),
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    return Err(format!("the lease is held by {holder}"));
                }
                Ok(Ok(Attempt::Conflict)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.name, error = %e, "lease renewal failed")
                }
                Err(_) => {}
            }
            let next = Instant::now() + self.timings.retry_period;
            if next >= deadline {
                return Err(format!(
                    "could not renew the lease within the renew deadline ({:?})",
                    self.timings.renew_deadline
                ));
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// One acquire-or-renew attempt; true if this candidate holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        Ok(self.attempt(Instant::now()).await? == Attempt::Leading)
    }

    /// client-go `tryAcquireOrRenew`, with `now` as this candidate's clock.
    async fn attempt(&self, now: Instant) -> Result<Attempt, Error> {
        let wall = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(wall, wall, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec, now);
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e.into()),
            };
        };
        let old = lease.spec.clone().unwrap_or_default();
        let holder = old.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !holder.is_empty() && !mine && self.still_valid(&old, now) {
            return Ok(Attempt::HeldBy(holder));
        }
        let (acquired, transitions) = if mine {
            (
                old.acquire_time.map(|t| t.0).unwrap_or(wall),
                old.lease_transitions.unwrap_or(0),
            )
        } else {
            (wall, old.lease_transitions.unwrap_or(0) + 1)
        };
        lease.spec = Some(self.spec(acquired, wall, transitions));
        // `lease.metadata.resourceVersion` is the one read: the apiserver refuses the write
        // with 409 if anyone wrote in between.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(updated.spec, now);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// Records `spec` as observed at `now` if it differs from the last one seen, and tells
    /// whether it is still valid by this candidate's clock.
    fn still_valid(&self, spec: &LeaseSpec, now: Instant) -> bool {
        let mut o = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        if o.spec.as_ref() != Some(spec) {
            o.spec = Some(spec.clone());
            o.time = now;
        }
        let seconds = spec
            .lease_duration_seconds
            .unwrap_or(self.timings.lease_seconds());
        let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
        o.time + duration > now
    }

    fn observe(&self, spec: Option<LeaseSpec>, now: Instant) {
        let mut o = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        o.spec = spec;
        o.time = now;
    }

    fn spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timings.lease_seconds()),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use serde_json::{Value, json};

    use super::*;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

    /// An apiserver holding one Lease, with resourceVersion preconditions on update.
    #[derive(Default)]
    struct FakeApi {
        lease: Mutex<Option<Value>>,
        rv: Mutex<u64>,
        down: AtomicBool,
    }

    fn status(code: StatusCode, reason: &str) -> Response<Full<Bytes>> {
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": reason, "reason": reason, "code": code.as_u16()});
        reply(code, &body)
    }

    fn reply(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = code;
        r
    }

    impl FakeApi {
        fn handle(&self, method: &Method, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
            if self.down.load(Ordering::SeqCst) {
                return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
            }
            let mut lease = self.lease.lock().unwrap();
            let mut rv = self.rv.lock().unwrap();
            let sent: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            match (method, path.strip_prefix(LEASES)) {
                (&Method::GET, Some("/test")) => match lease.as_ref() {
                    Some(l) => reply(StatusCode::OK, l),
                    None => status(StatusCode::NOT_FOUND, "NotFound"),
                },
                (&Method::POST, Some("")) if lease.is_some() => {
                    status(StatusCode::CONFLICT, "AlreadyExists")
                }
                (&Method::PUT, Some("/test"))
                    if lease.as_ref().map(|l| &l["metadata"]["resourceVersion"])
                        != Some(&sent["metadata"]["resourceVersion"]) =>
                {
                    status(StatusCode::CONFLICT, "Conflict")
                }
                (&Method::POST, Some("")) | (&Method::PUT, Some("/test")) => {
                    *rv += 1;
                    let mut stored = sent;
                    stored["apiVersion"] = json!("coordination.k8s.io/v1");
                    stored["kind"] = json!("Lease");
                    stored["metadata"]["namespace"] = json!("kube-system");
                    stored["metadata"]["resourceVersion"] = json!(rv.to_string());
                    *lease = Some(stored.clone());
                    reply(StatusCode::OK, &stored)
                }
                _ => status(StatusCode::NOT_FOUND, "NotFound"),
            }
        }

        fn spec(&self) -> LeaseSpec {
            let lease = self.lease.lock().unwrap().clone().unwrap();
            serde_json::from_value(lease["spec"].clone()).unwrap()
        }

        fn client(self: &Arc<Self>) -> Client {
            let api = self.clone();
            let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
                let api = api.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await?.to_bytes();
                    Ok::<_, kube::Error>(api.handle(&parts.method, parts.uri.path(), &body))
                }
            });
            Client::new(svc, "default")
        }
    }

    fn elector(api: &Arc<FakeApi>, identity: &str) -> LeaderElector {
        LeaderElector::new(
            api.client(),
            "kube-system",
            "test",
            identity,
            Timings::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_first_candidate_creates_the_lease_and_renews_it() {
        let api = Arc::new(FakeApi::default());
        let a = elector(&api, "a");
        let t = Instant::now();
        assert_eq!(a.attempt(t).await.unwrap(), Attempt::Leading);
        let first = api.spec();
        assert_eq!(first.holder_identity.as_deref(), Some("a"));
        assert_eq!(first.lease_duration_seconds, Some(15));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(a.attempt(t + RETRY_PERIOD).await.unwrap(), Attempt::Leading);
        let renewed = api.spec();
        assert_eq!(renewed.acquire_time, first.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(*api.rv.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn others_take_over_only_after_a_lease_duration_without_change_by_their_clock() {
        let api = Arc::new(FakeApi::default());
        let (a, b) = (elector(&api, "a"), elector(&api, "b"));
        let t = Instant::now();
        assert_eq!(a.attempt(t).await.unwrap(), Attempt::Leading);
        assert_eq!(b.attempt(t).await.unwrap(), Attempt::HeldBy("a".into()));
        // a renews: b sees a new record and starts counting again.
        assert_eq!(a.attempt(t).await.unwrap(), Attempt::Leading);
        let later = t + Duration::from_secs(10);
        assert_eq!(b.attempt(later).await.unwrap(), Attempt::HeldBy("a".into()));
        // a stops renewing: 15 s after b last saw a change, b takes the Lease.
        let expired = later + LEASE_DURATION + Duration::from_millis(1);
        assert_eq!(
            b.attempt(later + LEASE_DURATION - Duration::from_millis(1))
                .await
                .unwrap(),
            Attempt::HeldBy("a".into())
        );
        assert_eq!(b.attempt(expired).await.unwrap(), Attempt::Leading);
        let spec = api.spec();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));
        // a, back, finds b's fresh Lease and must not act.
        assert_eq!(
            a.attempt(expired).await.unwrap(),
            Attempt::HeldBy("b".into())
        );
        assert!(!a.try_acquire_or_renew().await.unwrap());
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let api = Arc::new(FakeApi::default());
        let (a, b) = (elector(&api, "a"), elector(&api, "b"));
        assert!(a.try_acquire_or_renew().await.unwrap());
        {
            let mut lease = api.lease.lock().unwrap();
            if let Some(l) = lease.as_mut() {
                l["spec"]["holderIdentity"] = json!("");
            }
        }
        assert!(b.try_acquire_or_renew().await.unwrap());
        assert_eq!(api.spec().holder_identity.as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn a_write_on_a_stale_resource_version_loses() {
        let api = Arc::new(FakeApi::default());
        let a = elector(&api, "a");
        assert!(a.try_acquire_or_renew().await.unwrap());
        let stale: Lease =
            serde_json::from_value(api.lease.lock().unwrap().clone().unwrap()).unwrap();
        assert!(a.try_acquire_or_renew().await.unwrap());
        let err = a
            .api
            .replace("test", &PostParams::default(), &stale)
            .await
            .unwrap_err();
        assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
        // Two candidates creating at once: the second gets AlreadyExists, not the Lease.
        let b = elector(&api, "b");
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("test".into()),
                ..Default::default()
            },
            spec: Some(b.spec(Timestamp::now(), Timestamp::now(), 0)),
        };
        let err = b
            .api
            .create(&PostParams::default(), &lease)
            .await
            .unwrap_err();
        assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
        assert_eq!(api.spec().holder_identity.as_deref(), Some("a"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_leader_steps_down_when_renewing_fails_past_the_deadline() {
        let api = Arc::new(FakeApi::default());
        let timings = Timings {
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(300),
            retry_period: Duration::from_millis(50),
        };
        let a = LeaderElector::new(api.client(), "kube-system", "test", "a", timings).unwrap();
        let started = Instant::now();
        let out = a
            .run(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                api.down.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await
            })
            .await;
        assert!(matches!(out, Err(Error::LeadershipLost)), "{out:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(1),
            "stepped down after {took:?}"
        );
        // While renewals succeed, work runs to its end.
        let api = Arc::new(FakeApi::default());
        let b = LeaderElector::new(api.client(), "kube-system", "test", "b", timings).unwrap();
        let done = b.run(tokio::time::sleep(Duration::from_millis(200))).await;
        assert!(done.is_ok());
    }

    #[test]
    fn timings_are_checked_as_client_go_does() {
        assert!(Timings::default().validate().is_ok());
        let t = |l, r, p| Timings {
            lease_duration: Duration::from_millis(l),
            renew_deadline: Duration::from_millis(r),
            retry_period: Duration::from_millis(p),
        };
        assert!(t(4000, 3000, 500).validate().is_ok());
        assert!(t(10_000, 10_000, 2000).validate().is_err());
        assert!(t(15_000, 2000, 2000).validate().is_err());
        assert!(t(500, 400, 100).validate().is_err());
        assert!(t(15_000, 10_000, 0).validate().is_err());
    }
}
