//! `pods/eviction`: deletes a pod only when its PodDisruptionBudget allows it, as Kubernetes'
//! `EvictionREST` does. This module decides; the apiserver hands it a narrow [`Store`] (the
//! pod, its budgets, guarded writes) and turns a [`Refusal`] into a `Status`.
//!
//! A pod that is Pending, finished or already terminating is deleted without looking at
//! budgets. Otherwise the one budget selecting the pod (more than one is refused with 500) must
//! allow a disruption: its `status.disruptionsAllowed` is decremented and the pod recorded in
//! `status.disruptedPods` by a status write guarded by the budget's resourceVersion (retried on
//! conflict), so concurrent evictions never spend the same disruption twice. A refusal is
//! `429 TooManyRequests` with Kubernetes' message and a `DisruptionBudget` cause, which
//! `kubectl drain` retries. An unready pod may go without spending budget when the budget's
//! `unhealthyPodEvictionPolicy` is `AlwaysAllow`, or when the application is healthy enough
//! (`IfHealthyBudget`, the default); the delete is then guarded by the pod's resourceVersion,
//! so a pod that became ready meanwhile is not deleted.
//!
//! Before the delete the pod gets the `DisruptionTarget` condition
//! (`EvictionByEvictionAPI`).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

/// Most entries `status.disruptedPods` may hold before evictions are refused
/// (`MaxDisruptedPodSize`): that many approved evictions the controller has not seen yet.
pub const MAX_DISRUPTED_POD_SIZE: usize = 2000;
/// Attempts and pause of the conflict retries (`EvictionsRetry`: 20 steps of 500 ms).
const RETRY_STEPS: usize = 20;
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The message of every budget refusal.
pub const VIOLATION_MESSAGE: &str =
    "Cannot evict pod as it would violate the pod's disruption budget.";
/// The message of the 500 for a pod selected by several budgets.
pub const MULTIPLE_BUDGETS_MESSAGE: &str = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.";

/// What the eviction reads and writes, for one pod. Objects carry
/// `metadata.resourceVersion`; writes are guarded by it.
#[async_trait]
pub trait Store: Send + Sync {
    /// The store's error (an API error in the apiserver).
    type Error: Send;
    /// Whether `e` is a failed resourceVersion guard (409), worth a retry.
    fn is_conflict(e: &Self::Error) -> bool;
    /// The pod being evicted.
    async fn pod(&self) -> Result<Value, Self::Error>;
    /// The budgets of the pod's namespace that select it (policy/v1: a missing selector selects
    /// nothing, an empty one every pod).
    async fn budgets_selecting(&self, pod: &Value) -> Result<Vec<Value>, Self::Error>;
    /// One budget of the pod's namespace.
    async fn budget(&self, name: &str) -> Result<Value, Self::Error>;
    /// Writes `budget`'s status, guarded by its resourceVersion.
    async fn write_budget_status(&self, budget: Value) -> Result<(), Self::Error>;
    /// Writes `pod` (its status), guarded by its resourceVersion; the new resourceVersion.
    async fn write_pod(&self, pod: Value) -> Result<String, Self::Error>;
    /// Deletes the pod with the caller's delete options, the resourceVersion precondition
    /// replaced by `resource_version` when given.
    async fn delete_pod(&self, resource_version: Option<&str>) -> Result<(), Self::Error>;
}

/// The caller's delete options that steer the eviction itself.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// Why an eviction is refused, in Kubernetes' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 429 with a `DisruptionBudget` cause and, when positive, a suggested delay.
    TooManyRequests {
        /// The cause's message.
        cause: String,
        /// `retryAfterSeconds` (0: none).
        retry_after: i64,
    },
    /// 403 about a budget in a state evictions cannot trust.
    BudgetForbidden {
        /// The budget.
        budget: String,
        /// Why.
        why: String,
    },
    /// 409: the caller's precondition does not hold for the pod.
    PodConflict {
        /// The pod.
        pod: String,
        /// Why.
        why: String,
    },
    /// 500: several budgets select the pod.
    MultipleBudgets,
    /// The conflict retries ran out on a budget.
    BudgetConflicts(String),
}

/// An eviction that did not happen.
#[derive(Debug)]
pub enum Error<E> {
    /// Refused by the rules above.
    Refused(Refusal),
    /// The store failed.
    Store(E),
}

type Outcome<T, E> = Result<T, Error<E>>;

fn refused<T, E>(r: Refusal) -> Outcome<T, E> {
    Err(Error::Refused(r))
}

/// `createTooManyRequestsError`: the budget has changes the controller has not processed.
fn still_processing(pdb_name: &str) -> Refusal {
    Refusal::TooManyRequests {
        cause: format!("The disruption budget {pdb_name} is still being processed by the server."),
        retry_after: 10,
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn object_at<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    let Value::Object(m) = v else {
        unreachable!("just made an object")
    };
    let e = m.entry(key).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    match e {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn phase(pod: &Value) -> &str {
    str_at(pod, "/status/phase")
}

fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// `canIgnorePDB`: finished, Pending and terminating pods disrupt nothing more.
fn can_ignore_pdb(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed" | "Pending") || terminating(pod)
}

/// `shouldEnforceResourceVersion`: all but finished and terminating pods could become ready
/// while the eviction decides.
fn should_enforce_resource_version(pod: &Value) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && !terminating(pod)
}

/// `IsPodReady`.
pub fn is_pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True")))
}

/// Evicts the store's pod honouring its disruption budget (see the module documentation):
/// `Ok` once the pod is deleted (or marked for graceful deletion).
pub async fn evict<S: Store>(store: &S, opts: &Options) -> Outcome<(), S::Error> {
    let caller_set_rv = opts.resource_version.is_some();
    // Pods that need no budget are deleted right away (retried on conflict unless the caller
    // gave a resourceVersion precondition).
    let mut attempt = 0;
    let pod = loop {
        attempt += 1;
        let pod = store.pod().await.map_err(Error::Store)?;
        if !can_ignore_pdb(&pod) {
            break pod;
        }
        let rv = (should_enforce_resource_version(&pod) && !caller_set_rv)
            .then(|| str_at(&pod, "/metadata/resourceVersion").to_string());
        match add_condition_and_delete(store, opts, rv).await {
            Ok(()) => return Ok(()),
            Err(Error::Store(e))
                if S::is_conflict(&e) && !caller_set_rv && attempt < RETRY_STEPS =>
            {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(e),
        }
    };
    let budgets = store.budgets_selecting(&pod).await.map_err(Error::Store)?;
    if budgets.len() > 1 {
        return refused(Refusal::MultipleBudgets);
    }
    let mut guard_with_pod_rv = false;
    let mut pdb_name = String::new();
    if let Some(pdb) = budgets.first() {
        pdb_name = str_at(pdb, "/metadata/name").to_string();
        if !is_pod_ready(&pod) {
            let policy = str_at(pdb, "/spec/unhealthyPodEvictionPolicy");
            let current = int_at(pdb, "/status/currentHealthy");
            let desired = int_at(pdb, "/status/desiredHealthy");
            // An unready pod counts toward neither figure: deleting it spends no budget when
            // the policy says so or the application is healthy without it.
            guard_with_pod_rv = policy == "AlwaysAllow" || (current >= desired && desired > 0);
        }
        if !guard_with_pod_rv {
            let pod_name = str_at(&pod, "/metadata/name");
            spend_disruption(store, &pdb_name, pod_name, opts.dry_run).await?;
        }
    }
    let rv = guard_with_pod_rv.then(|| str_at(&pod, "/metadata/resourceVersion").to_string());
    match add_condition_and_delete(store, opts, rv).await {
        Ok(()) => Ok(()),
        // The unready pod changed (perhaps became ready) since the decision: let the client
        // come back.
        Err(Error::Store(e)) if S::is_conflict(&e) && guard_with_pod_rv && !caller_set_rv => {
            refused(still_processing(&pdb_name))
        }
        Err(e) => Err(e),
    }
}

/// Decrements the budget's `disruptionsAllowed` and records the pod in `disruptedPods`, guarded
/// by the budget's resourceVersion and retried on conflict (`checkAndDecrement`).
async fn spend_disruption<S: Store>(
    store: &S,
    pdb_name: &str,
    pod_name: &str,
    dry_run: bool,
) -> Outcome<(), S::Error> {
    for _ in 0..RETRY_STEPS {
        let pdb = store.budget(pdb_name).await.map_err(Error::Store)?;
        let updated =
            decremented(&pdb, pod_name, jiff::Timestamp::now()).map_err(Error::Refused)?;
        if dry_run {
            return Ok(());
        }
        match store.write_budget_status(updated).await {
            Ok(()) => return Ok(()),
            Err(e) if S::is_conflict(&e) => tokio::time::sleep(RETRY_PAUSE).await,
            Err(e) => return Err(Error::Store(e)),
        }
    }
    refused(Refusal::BudgetConflicts(pdb_name.to_string()))
}

/// The budget after one disruption for `pod_name`, or the refusal.
fn decremented(pdb: &Value, pod_name: &str, now: jiff::Timestamp) -> Result<Value, Refusal> {
    let name = str_at(pdb, "/metadata/name");
    let generation = int_at(pdb, "/metadata/generation");
    let observed = int_at(pdb, "/status/observedGeneration");
    if observed < generation {
        return Err(still_processing(name));
    }
    let allowed = int_at(pdb, "/status/disruptionsAllowed");
    let forbidden = |why: &str| Refusal::BudgetForbidden {
        budget: name.to_string(),
        why: why.to_string(),
    };
    if allowed < 0 {
        return Err(forbidden("pdb disruptions allowed is negative"));
    }
    let disrupted = pdb
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .map(|m| m.len())
        .unwrap_or(0);
    if disrupted > MAX_DISRUPTED_POD_SIZE {
        return Err(forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        let desired = int_at(pdb, "/status/desiredHealthy");
        let current = int_at(pdb, "/status/currentHealthy");
        return Err(Refusal::TooManyRequests {
            cause: format!(
                "The disruption budget {name} needs {desired} healthy pods and has {current} currently"
            ),
            retry_after: 0,
        });
    }
    let mut updated = pdb.clone();
    let status = object_at(&mut updated, "status");
    status.insert("disruptionsAllowed".into(), json!(allowed - 1));
    let ts = jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string();
    let disrupted = status.entry("disruptedPods").or_insert_with(|| json!({}));
    if !disrupted.is_object() {
        *disrupted = json!({});
    }
    if let Value::Object(m) = disrupted {
        m.insert(pod_name.to_string(), json!(ts));
    }
    if allowed - 1 == 0 {
        set_disruption_allowed_condition(&mut updated, now);
    }
    Ok(updated)
}

/// `UpdateDisruptionAllowedCondition`: `DisruptionAllowed` True/`SufficientPods` while
/// disruptions are allowed, False/`InsufficientPods` otherwise; the transition time moves only
/// when the status flips.
pub fn set_disruption_allowed_condition(pdb: &mut Value, now: jiff::Timestamp) {
    let allowed = int_at(pdb, "/status/disruptionsAllowed");
    let observed = int_at(pdb, "/status/observedGeneration");
    let (status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let ts = jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string();
    let st = object_at(pdb, "status");
    let conds = st.entry("conditions").or_insert_with(|| json!([]));
    if !conds.is_array() {
        *conds = json!([]);
    }
    let Value::Array(list) = conds else { return };
    match list
        .iter_mut()
        .find(|c| c.get("type") == Some(&json!("DisruptionAllowed")))
    {
        Some(c) => {
            if c.get("status") != Some(&json!(status)) {
                c["status"] = json!(status);
                c["lastTransitionTime"] = json!(ts);
            }
            c["reason"] = json!(reason);
            c["observedGeneration"] = json!(observed);
            if c.get("message").is_none() {
                c["message"] = json!("");
            }
        }
        None => list.push(json!({
            "type": "DisruptionAllowed", "status": status, "observedGeneration": observed,
            "lastTransitionTime": ts, "reason": reason, "message": "",
        })),
    }
}

/// `addConditionAndDeletePod`: marks the pod `DisruptionTarget` (unless dry run), checking the
/// caller's preconditions against the stored pod, then deletes it (a resourceVersion
/// precondition moves to the version the condition write produced).
async fn add_condition_and_delete<S: Store>(
    store: &S,
    opts: &Options,
    guard_rv: Option<String>,
) -> Outcome<(), S::Error> {
    let mut rv = guard_rv.or_else(|| opts.resource_version.clone());
    if !opts.dry_run {
        let mut pod = store.pod().await.map_err(Error::Store)?;
        let name = str_at(&pod, "/metadata/name").to_string();
        let uid = str_at(&pod, "/metadata/uid").to_string();
        let current = str_at(&pod, "/metadata/resourceVersion").to_string();
        if let Some(want) = opts.uid.as_deref().filter(|u| !u.is_empty())
            && want != uid
        {
            return refused(Refusal::PodConflict {
                pod: name,
                why: format!(
                    "the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
                ),
            });
        }
        if let Some(want) = rv.as_deref().filter(|r| !r.is_empty())
            && want != current
        {
            return refused(Refusal::PodConflict {
                pod: name,
                why: format!(
                    "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({current}). The object might have been modified"
                ),
            });
        }
        if set_disruption_target(&mut pod, jiff::Timestamp::now()) {
            let new_rv = store.write_pod(pod).await.map_err(Error::Store)?;
            if rv.is_some() {
                rv = Some(new_rv);
            }
        }
    }
    store.delete_pod(rv.as_deref()).await.map_err(Error::Store)
}

/// Sets the `DisruptionTarget` condition (`EvictionByEvictionAPI`); false when it was already
/// there unchanged.
fn set_disruption_target(pod: &mut Value, now: jiff::Timestamp) -> bool {
    let ts = jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string();
    let wanted = json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null,
        "lastTransitionTime": ts, "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting"});
    let status = object_at(pod, "status");
    let conds = status.entry("conditions").or_insert_with(|| json!([]));
    if !conds.is_array() {
        *conds = json!([]);
    }
    let Value::Array(list) = conds else {
        return false;
    };
    match list
        .iter_mut()
        .find(|c| c.get("type") == Some(&json!("DisruptionTarget")))
    {
        Some(c) => {
            let same = c.get("status") == Some(&json!("True"))
                && c.get("reason") == wanted.get("reason")
                && c.get("message") == wanted.get("message");
            if same {
                return false;
            }
            if c.get("status") == Some(&json!("True")) {
                c["reason"] = wanted["reason"].clone();
                c["message"] = wanted["message"].clone();
            } else {
                *c = wanted;
            }
            true
        }
        None => {
            list.push(wanted);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(allowed: i64, generation: i64, observed: i64) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "generation": generation},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 2, "desiredHealthy": 2,
                "expectedPods": 2, "observedGeneration": observed}})
    }

    #[test]
    fn zero_allowed_is_429_with_the_budget_cause() {
        let e = decremented(&pdb(0, 1, 1), "p", jiff::Timestamp::now()).unwrap_err();
        assert_eq!(
            e,
            Refusal::TooManyRequests {
                cause: "The disruption budget web needs 2 healthy pods and has 2 currently".into(),
                retry_after: 0
            }
        );
    }

    #[test]
    fn unobserved_generation_asks_to_come_back() {
        let e = decremented(&pdb(3, 2, 1), "p", jiff::Timestamp::now()).unwrap_err();
        assert_eq!(
            e,
            Refusal::TooManyRequests {
                cause: "The disruption budget web is still being processed by the server.".into(),
                retry_after: 10
            }
        );
    }

    #[test]
    fn negative_allowed_is_forbidden() {
        let e = decremented(&pdb(-1, 1, 1), "p", jiff::Timestamp::now()).unwrap_err();
        assert_eq!(
            e,
            Refusal::BudgetForbidden {
                budget: "web".into(),
                why: "pdb disruptions allowed is negative".into()
            }
        );
    }

    #[test]
    fn spending_the_last_disruption_records_the_pod_and_flips_the_condition() {
        let now: jiff::Timestamp = "2026-12-05T16:00:00Z".parse().unwrap();
        let out = decremented(&pdb(1, 1, 1), "p", now).unwrap();
        assert_eq!(out["status"]["disruptionsAllowed"], json!(0));
        assert_eq!(
            out["status"]["disruptedPods"],
            json!({"p": "2026-12-05T16:00:00Z"})
        );
        let c = &out["status"]["conditions"][0];
        assert_eq!(c["type"], json!("DisruptionAllowed"));
        assert_eq!(c["status"], json!("False"));
        assert_eq!(c["reason"], json!("InsufficientPods"));
        let out = decremented(&pdb(2, 1, 1), "q", now).unwrap();
        assert_eq!(out["status"]["disruptionsAllowed"], json!(1));
        assert!(out["status"].get("conditions").is_none());
    }

    #[test]
    fn which_pods_skip_the_budget() {
        for (phase, deleting, skip) in [
            ("Running", false, false),
            ("Pending", false, true),
            ("Succeeded", false, true),
            ("Failed", false, true),
            ("Running", true, true),
        ] {
            let mut pod = json!({"metadata": {}, "status": {"phase": phase}});
            if deleting {
                pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            assert_eq!(can_ignore_pdb(&pod), skip, "{phase} {deleting}");
        }
    }

    #[test]
    fn disruption_target_condition() {
        let mut pod = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(set_disruption_target(&mut pod, jiff::Timestamp::now()));
        let c = &pod["status"]["conditions"][1];
        assert_eq!(c["reason"], json!("EvictionByEvictionAPI"));
        assert_eq!(c["message"], json!("Eviction API: evicting"));
        assert!(!set_disruption_target(&mut pod, jiff::Timestamp::now()));
    }
}
