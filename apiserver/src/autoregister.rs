//! kube-apiserver's autoregister and APIService availability controllers: one
//! `apiregistration.k8s.io/v1` APIService per served group version (built-in ones created at
//! start, custom resource ones kept in step with the established CRDs), and the `Available`
//! condition of every APIService (local ones available; Lotse does not proxy aggregated APIs,
//! so an APIService naming a service is reported unavailable).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::handlers::{self, DeleteOpts, UpdateScope};
use crate::registry::fields;
use crate::registry::resources::apiregistration::{
    self as reg, APISERVICES, AUTOMANAGED_LABEL, MANAGE_CONTINUOUSLY, MANAGE_ON_START,
};
use crate::server::AppState;

/// How often the APIServices are brought in step with the served group versions.
const RESYNC: Duration = Duration::from_secs(5);

/// Every group version served now, with whether it belongs to custom resources.
fn served_group_versions() -> Vec<(String, String, bool)> {
    let served = crate::registry::served();
    let mut out = vec![(String::new(), "v1".to_string(), false)];
    for (g, vs) in crate::discovery::groups() {
        let custom = served.iter().any(|r| r.group == g && r.custom.is_some());
        for v in vs {
            out.push((g.to_string(), v.to_string(), custom));
        }
    }
    out
}

async fn current(state: &AppState) -> Vec<Value> {
    let Ok(cacher) = state.cacher(&APISERVICES) else {
        return Vec::new();
    };
    if cacher.wait_fresh().await.is_err() {
        return Vec::new();
    }
    let prefix = format!("/registry/{}/", APISERVICES.storage_prefix);
    cacher
        .list(&prefix, None, 0, &|_| true)
        .await
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
        .collect()
}

fn label(o: &Value) -> &str {
    fields::str_at(o, &["metadata", "labels", AUTOMANAGED_LABEL]).unwrap_or("")
}

/// One pass: creates missing APIServices (and, for managed ones, restores their spec: the
/// `onstart` ones only at start), deletes the continuously managed ones whose group version is
/// no longer served, and writes each APIService's `Available` condition when it changes.
pub async fn sync(state: &AppState, at_start: bool) {
    let existing = current(state).await;
    let wanted: Vec<Value> = served_group_versions()
        .iter()
        .filter_map(|(g, v, custom)| reg::desired(g, v, *custom))
        .collect();
    for d in &wanted {
        let name = fields::name(d);
        match existing.iter().find(|e| fields::name(e) == name) {
            None => {
                let r = handlers::create_object(
                    state,
                    &APISERVICES,
                    None,
                    d.clone(),
                    false,
                    None,
                    "Update",
                )
                .await;
                match r {
                    Ok(_) => tracing::debug!(apiservice = name, "registered"),
                    Err(e) if e.code == 409 => {}
                    Err(e) => tracing::warn!(apiservice = name, error = %e, "could not register"),
                }
            }
            Some(cur) => {
                let managed = match label(cur) {
                    MANAGE_CONTINUOUSLY => true,
                    MANAGE_ON_START => at_start,
                    _ => false,
                };
                if managed && cur.get("spec") != d.get("spec") {
                    let mut new = cur.clone();
                    new["spec"] = d["spec"].clone();
                    write(state, cur, new, UpdateScope::Main).await;
                }
            }
        }
    }
    for e in &existing {
        let name = fields::name(e);
        if label(e) == MANAGE_CONTINUOUSLY && !wanted.iter().any(|d| fields::name(d) == name) {
            let opts = DeleteOpts::default();
            if let Err(err) = handlers::delete_object(state, &APISERVICES, None, name, &opts).await
                && err.code != 404
            {
                tracing::warn!(apiservice = name, error = %err, "could not unregister");
            }
        }
    }
    // Availability (the re-read list includes the ones just created).
    let now = reg::now();
    for e in current(state).await {
        let c = reg::wanted_available(&e, &now);
        let conditions = e
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|x| x.get("type") == c.get("type") && *x == c)
        {
            continue;
        }
        let mut kept: Vec<Value> = conditions
            .into_iter()
            .filter(|x| x.get("type") != c.get("type"))
            .collect();
        kept.push(c);
        let mut new = e.clone();
        fields::ensure_object(&mut new, &["status"]).insert("conditions".into(), kept.into());
        write(state, &e, new, UpdateScope::Status).await;
    }
}

async fn write(state: &AppState, cur: &Value, new: Value, scope: UpdateScope) {
    let name = fields::name(cur).to_string();
    let rv = fields::str_at(cur, &["metadata", "resourceVersion"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let r = handlers::write_update(
        state,
        &APISERVICES,
        None,
        &name,
        cur.clone(),
        rv,
        new,
        scope,
        false,
        None,
        "Update",
    )
    .await;
    if let Err(e) = r
        && e.code != 409
        && e.code != 404
    {
        tracing::warn!(apiservice = name, error = %e, "could not update");
    }
}

/// Registers the served group versions now, then keeps the APIServices in step in the
/// background.
pub async fn start(state: &Arc<AppState>) {
    sync(state, true).await;
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RESYNC);
        tick.tick().await;
        loop {
            tick.tick().await;
            sync(&state, false).await;
        }
    });
}
