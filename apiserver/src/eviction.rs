//! `pods/eviction`: deletes a pod only when its PodDisruptionBudget allows it, as Kubernetes'
//! `EvictionREST` does.
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

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::handlers::{
    Ctx, DeleteOpts, UpdateScope, delete_object, delete_opts, get_current, header_str,
    json_response, object_key, set_rv, write_update,
};
use crate::registry::resources::PODDISRUPTIONBUDGETS;
use crate::registry::{ResourceDef, fields};
use crate::request;
use crate::server::AppState;

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

fn respond(code: StatusCode, v: &Value) -> Response {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// `429 TooManyRequests` with a `DisruptionBudget` cause (`retry_after` 0 is left out, as
/// Kubernetes omits it).
fn too_many_requests(cause: String, retry_after: i64) -> ApiError {
    let mut details = serde_json::Map::new();
    details.insert(
        "causes".into(),
        json!([{"reason": "DisruptionBudget", "message": cause}]),
    );
    if retry_after > 0 {
        details.insert("retryAfterSeconds".into(), json!(retry_after));
    }
    ApiError {
        code: 429,
        reason: "TooManyRequests",
        message: VIOLATION_MESSAGE.to_string(),
        details: Some(Value::Object(details)),
    }
}

/// `createTooManyRequestsError`: the budget has changes the controller has not processed.
fn still_processing(pdb_name: &str) -> ApiError {
    too_many_requests(
        format!("The disruption budget {pdb_name} is still being processed by the server."),
        10,
    )
}

/// `403` for a budget in a state evictions cannot trust (`poddisruptionbudget.policy "x" is
/// forbidden: ...`).
fn budget_forbidden(pdb_name: &str, why: &str) -> ApiError {
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!("poddisruptionbudget.policy \"{pdb_name}\" is forbidden: {why}"),
        details: Some(json!({"name": pdb_name, "group": "policy", "kind": "poddisruptionbudget"})),
    }
}

fn phase(pod: &Value) -> &str {
    fields::str_at(pod, &["status", "phase"]).unwrap_or("")
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

/// Whether a budget selects the pod: a missing selector selects nothing, an empty one every
/// pod of the namespace (policy/v1), and an invalid one nothing.
pub fn budget_selects(pdb: &Value, pod: &Value) -> bool {
    let Some(sel) = fields::at(pdb, &["spec", "selector"]).filter(|s| s.is_object()) else {
        return false;
    };
    crate::registry::resources::label_selector_matches(
        sel,
        pod.pointer("/metadata/labels").and_then(Value::as_object),
    )
}

/// The budgets of the pod's namespace that select it.
async fn budgets_of(state: &AppState, pod: &Value) -> ApiResult<Vec<Value>> {
    let def = &PODDISRUPTIONBUDGETS;
    let cacher = state.cacher(def)?;
    cacher.wait_fresh().await?;
    let prefix = format!(
        "/registry/{}/{}/",
        def.storage_prefix,
        fields::namespace(pod)
    );
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    Ok(list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
        .filter(|pdb| budget_selects(pdb, pod))
        .collect())
}

/// Serves `POST pods/<name>/eviction`.
pub async fn evict(ctx: &Ctx<'_>, name: &str, body: Bytes) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let ns = ctx.rp.namespace.as_deref();
    let eviction = request::decode_object(
        header_str(ctx.headers, axum::http::header::CONTENT_TYPE),
        &body,
    )?;
    if fields::name(&eviction) != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let options_body = match eviction.get("deleteOptions").filter(|v| v.is_object()) {
        Some(o) => {
            Bytes::from(serde_json::to_vec(o).map_err(|e| ApiError::internal(e.to_string()))?)
        }
        None => Bytes::new(),
    };
    let opts = delete_opts(ctx.query, &options_body)?;
    match evict_pod(ctx.state, def, ns, name, &opts).await? {
        Evicted::Deleted => Ok(respond(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )),
        Evicted::MultipleBudgets => Ok(respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": MULTIPLE_BUDGETS_MESSAGE, "code": 500}),
        )),
    }
}

/// The outcome of an eviction that did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Evicted {
    /// The pod was deleted (or marked for graceful deletion).
    Deleted,
    /// More than one budget selects the pod; nothing was done.
    MultipleBudgets,
}

/// Evicts one pod honouring its disruption budget (see the module documentation).
pub async fn evict_pod(
    state: &AppState,
    def: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> ApiResult<Evicted> {
    let caller_set_rv = opts.rv.is_some();
    // Pods that need no budget are deleted right away (retried on conflict unless the caller
    // gave a resourceVersion precondition).
    let mut attempt = 0;
    let pod = loop {
        attempt += 1;
        let (pod, rv) = get_current(state, def, ns, name).await?;
        if !can_ignore_pdb(&pod) {
            break pod;
        }
        let mut o = clone_opts(opts);
        if should_enforce_resource_version(&pod) && !caller_set_rv {
            o.rv = Some(rv.to_string());
        }
        match add_condition_and_delete(state, def, ns, name, &o).await {
            Ok(()) => return Ok(Evicted::Deleted),
            Err(e) if e.code == 409 && !caller_set_rv && attempt < RETRY_STEPS => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(e),
        }
    };
    let pod_rv = fields::str_at(&pod, &["metadata", "resourceVersion"])
        .unwrap_or("")
        .to_string();

    let budgets = budgets_of(state, &pod).await?;
    if budgets.len() > 1 {
        return Ok(Evicted::MultipleBudgets);
    }
    let mut guard_with_pod_rv = false;
    let mut pdb_name = String::new();
    if let Some(pdb) = budgets.first() {
        pdb_name = fields::name(pdb).to_string();
        if !is_pod_ready(&pod) {
            let policy = fields::str_at(pdb, &["spec", "unhealthyPodEvictionPolicy"]);
            let current = fields::i64_at(pdb, &["status", "currentHealthy"]).unwrap_or(0);
            let desired = fields::i64_at(pdb, &["status", "desiredHealthy"]).unwrap_or(0);
            // An unready pod counts toward neither figure: deleting it spends no budget when
            // the policy says so or the application is healthy without it.
            guard_with_pod_rv =
                policy == Some("AlwaysAllow") || (current >= desired && desired > 0);
        }
        if !guard_with_pod_rv {
            spend_disruption(state, ns, &pdb_name, name, opts.dry_run).await?;
        }
    }
    let mut o = clone_opts(opts);
    if guard_with_pod_rv {
        o.rv = Some(pod_rv);
    }
    match add_condition_and_delete(state, def, ns, name, &o).await {
        Ok(()) => Ok(Evicted::Deleted),
        // The unready pod changed (perhaps became ready) since the decision: let the client
        // come back.
        Err(e) if e.code == 409 && guard_with_pod_rv && !caller_set_rv => {
            Err(still_processing(&pdb_name))
        }
        Err(e) => Err(e),
    }
}

fn clone_opts(o: &DeleteOpts) -> DeleteOpts {
    DeleteOpts {
        propagation: o.propagation.clone(),
        grace: o.grace,
        uid: o.uid.clone(),
        rv: o.rv.clone(),
        dry_run: o.dry_run,
    }
}

/// Decrements the budget's `disruptionsAllowed` and records the pod in `disruptedPods`, guarded
/// by the budget's resourceVersion and retried on conflict (`checkAndDecrement`).
async fn spend_disruption(
    state: &AppState,
    ns: Option<&str>,
    pdb_name: &str,
    pod_name: &str,
    dry_run: bool,
) -> ApiResult<()> {
    let def = &PODDISRUPTIONBUDGETS;
    for _ in 0..RETRY_STEPS {
        let (pdb, rv) = get_current(state, def, ns, pdb_name).await?;
        let updated = decremented(&pdb, pod_name, jiff::Timestamp::now())?;
        if dry_run {
            return Ok(());
        }
        match write_update(
            state,
            def,
            ns,
            pdb_name,
            pdb,
            rv,
            updated,
            UpdateScope::Status,
            false,
            None,
            "Update",
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 409 => tokio::time::sleep(RETRY_PAUSE).await,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError {
        code: 504,
        reason: "Timeout",
        message: format!("couldn't update PodDisruptionBudget \"{pdb_name}\" due to conflicts"),
        details: Some(json!({"retryAfterSeconds": 10})),
    })
}

/// The budget after one disruption for `pod_name`, or the refusal.
fn decremented(pdb: &Value, pod_name: &str, now: jiff::Timestamp) -> ApiResult<Value> {
    let name = fields::name(pdb);
    let generation = fields::i64_at(pdb, &["metadata", "generation"]).unwrap_or(0);
    let observed = fields::i64_at(pdb, &["status", "observedGeneration"]).unwrap_or(0);
    if observed < generation {
        return Err(still_processing(name));
    }
    let allowed = fields::i64_at(pdb, &["status", "disruptionsAllowed"]).unwrap_or(0);
    if allowed < 0 {
        return Err(budget_forbidden(
            name,
            "pdb disruptions allowed is negative",
        ));
    }
    let disrupted = pdb
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .map(|m| m.len())
        .unwrap_or(0);
    if disrupted > MAX_DISRUPTED_POD_SIZE {
        return Err(budget_forbidden(
            name,
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        let desired = fields::i64_at(pdb, &["status", "desiredHealthy"]).unwrap_or(0);
        let current = fields::i64_at(pdb, &["status", "currentHealthy"]).unwrap_or(0);
        return Err(too_many_requests(
            format!(
                "The disruption budget {name} needs {desired} healthy pods and has {current} currently"
            ),
            0,
        ));
    }
    let mut updated = pdb.clone();
    let status = fields::ensure_object(&mut updated, &["status"]);
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
    let allowed = fields::i64_at(pdb, &["status", "disruptionsAllowed"]).unwrap_or(0);
    let observed = fields::i64_at(pdb, &["status", "observedGeneration"]).unwrap_or(0);
    let (status, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let ts = jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string();
    let st = fields::ensure_object(pdb, &["status"]);
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
/// caller's preconditions against the stored pod, then deletes it with the options (a
/// resourceVersion precondition moves to the version the condition write produced).
async fn add_condition_and_delete(
    state: &AppState,
    def: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> ApiResult<()> {
    let mut opts = clone_opts(opts);
    if !opts.dry_run {
        let (mut pod, rv) = get_current(state, def, ns, name).await?;
        let uid = fields::str_at(&pod, &["metadata", "uid"]).unwrap_or("");
        if let Some(want) = opts.uid.as_deref().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(pod_conflict(
                name,
                &format!(
                    "the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
                ),
            ));
        }
        if let Some(want) = opts.rv.as_deref().filter(|r| !r.is_empty())
            && want != rv.to_string()
        {
            return Err(pod_conflict(
                name,
                &format!(
                    "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({rv}). The object might have been modified"
                ),
            ));
        }
        if set_disruption_target(&mut pod, jiff::Timestamp::now()) {
            fields::ensure_object(&mut pod, &["metadata"]).remove("resourceVersion");
            let bytes = def
                .encode_for_storage(&pod)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            match state
                .storage
                .update(&object_key(def, ns, name), rv, bytes)
                .await
            {
                Ok(nrv) => {
                    set_rv(&mut pod, nrv);
                    if opts.rv.is_some() {
                        opts.rv = Some(nrv.to_string());
                    }
                }
                Err(e) => return Err(ApiError::from_storage(e, def, name)),
            }
        }
    }
    delete_object(state, def, ns, name, &opts).await?;
    Ok(())
}

/// `Operation cannot be fulfilled on Pod "x": why` (Kubernetes names the group-resource `Pod`
/// here).
fn pod_conflict(name: &str, why: &str) -> ApiError {
    ApiError {
        code: 409,
        reason: "Conflict",
        message: format!("Operation cannot be fulfilled on Pod \"{name}\": {why}"),
        details: Some(json!({"name": name, "kind": "Pod"})),
    }
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
    let status = fields::ensure_object(pod, &["status"]);
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
        assert_eq!(e.code, 429);
        assert_eq!(e.reason, "TooManyRequests");
        assert_eq!(e.message, VIOLATION_MESSAGE);
        assert_eq!(
            e.details,
            Some(json!({"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget web needs 2 healthy pods and has 2 currently"}]}))
        );
    }

    #[test]
    fn unobserved_generation_asks_to_come_back() {
        let e = decremented(&pdb(3, 2, 1), "p", jiff::Timestamp::now()).unwrap_err();
        assert_eq!(e.code, 429);
        assert_eq!(
            e.details,
            Some(json!({"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget web is still being processed by the server."}],
                "retryAfterSeconds": 10}))
        );
    }

    #[test]
    fn negative_allowed_is_forbidden() {
        let e = decremented(&pdb(-1, 1, 1), "p", jiff::Timestamp::now()).unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "poddisruptionbudget.policy \"web\" is forbidden: pdb disruptions allowed is negative"
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
    fn selection_follows_policy_v1() {
        let pod = json!({"metadata": {"labels": {"app": "web"}}});
        let mut b = pdb(1, 1, 1);
        assert!(budget_selects(&b, &pod));
        b["spec"]["selector"] = json!({});
        assert!(budget_selects(&b, &pod), "empty selector selects all");
        b["spec"].as_object_mut().unwrap().remove("selector");
        assert!(!budget_selects(&b, &pod), "no selector selects nothing");
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
