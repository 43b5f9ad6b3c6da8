//! Namespace controller: empties a Terminating namespace of every namespaced object the
//! apiserver serves (found through discovery), reports progress in conditions, then removes
//! the `kubernetes` finalizer so the apiserver can drop the namespace.
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::events::Recorder;
use crate::util;

/// The finalizer the namespace controller owns in `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";

struct Ctx {
    client: Client,
}

/// Runs the namespace controller until its watch stream ends.
pub async fn run(client: Client, _recorder: Recorder) -> Result<(), Error> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    util::run_controller(
        Controller::new(Api::<Namespace>::all(client), watcher::Config::default()),
        reconcile,
        ctx,
        "namespace",
        Duration::from_secs(2),
    )
    .await
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let ns_api: Api<Namespace> = Api::all(ctx.client.clone());
    let (remaining, failures, discovery_error) = delete_content(&ctx.client, &name).await;
    let mut conds = vec![
        cond(
            "NamespaceDeletionDiscoveryFailure",
            discovery_error.as_deref(),
            "DiscoveryFailed",
            "ResourcesDiscovered",
            "All resources successfully discovered",
        ),
        cond(
            "NamespaceDeletionGroupVersionParsingFailure",
            None,
            "",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed",
        ),
        cond(
            "NamespaceDeletionContentFailure",
            (!failures.is_empty())
                .then(|| failures.join(", "))
                .as_deref(),
            "ContentDeletionFailed",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization",
        ),
    ];
    let remaining_msg = (!remaining.is_empty()).then(|| {
        format!(
            "Some resources are remaining: {}",
            remaining
                .iter()
                .map(|(r, n)| format!("{r} has {n} resource instances"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    conds.push(cond(
        "NamespaceContentRemaining",
        remaining_msg.as_deref(),
        "SomeResourcesRemain",
        "ContentRemoved",
        "All content successfully removed",
    ));
    conds.push(cond(
        "NamespaceFinalizersRemaining",
        None,
        "SomeFinalizersRemain",
        "ContentHasNoFinalizers",
        "All content-preserving finalizers finished",
    ));
    let old: Vec<NamespaceCondition> = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for c in &mut conds {
        if let Some(o) = old.iter().find(|o| o.type_ == c.type_)
            && o.status == c.status
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
    let same = conds.iter().all(|c| {
        old.iter()
            .any(|o| o.type_ == c.type_ && o.status == c.status && o.message == c.message)
    });
    if !same {
        let patch = json!({"status": {"conditions": conds}});
        if let Err(e) = ns_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            tracing::debug!(error = %e, "namespace conditions");
        }
    }
    if !remaining.is_empty() || discovery_error.is_some() || !failures.is_empty() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let mut latest = ns_api.get(&name).await?;
    if let Some(spec) = latest.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    latest.status = None;
    match ns_api
        .replace_subresource("finalize", &name, &PostParams::default(), &latest)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

fn cond(
    type_: &str,
    problem: Option<&str>,
    bad_reason: &str,
    ok_reason: &str,
    ok_message: &str,
) -> NamespaceCondition {
    let (status, reason, message) = match problem {
        Some(m) => ("True", bad_reason, m.to_string()),
        None => ("False", ok_reason, ok_message.to_string()),
    };
    NamespaceCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(crate::util::now()),
    }
}

/// Deletes every namespaced object in `ns`. Returns what is still there per resource, the
/// deletions that failed, and a discovery error if discovery did not complete.
async fn delete_content(
    client: &Client,
    ns: &str,
) -> (Vec<(String, usize)>, Vec<String>, Option<String>) {
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(d) => d,
        Err(e) => return (vec![], vec![], Some(format!("Discovery failed: {e}"))),
    };
    let mut remaining = Vec::new();
    let mut failures = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let items = match api.list(&ListParams::default()).await {
                Ok(l) => l.items,
                Err(e) => {
                    failures.push(format!("listing {}: {e}", ar.plural));
                    continue;
                }
            };
            if items.is_empty() {
                continue;
            }
            let resource = if ar.group.is_empty() {
                ar.plural.clone()
            } else {
                format!("{}.{}", ar.plural, ar.group)
            };
            remaining.push((resource, items.len()));
            for obj in items
                .iter()
                .filter(|o| o.metadata.deletion_timestamp.is_none())
            {
                match api
                    .delete(&obj.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        failures.push(format!("deleting {}/{}: {e}", ar.plural, obj.name_any()))
                    }
                }
            }
        }
    }
    (remaining, failures, None)
}
