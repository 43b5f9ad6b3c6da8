//! ControllerRevision history of DaemonSets and StatefulSets, as Kubernetes'
//! `pkg/controller/history` with the two controllers' `constructHistory` and `truncateHistory`:
//! one revision `<owner>-<hash>` per pod template, labelled with the template's labels and
//! `controller-revision-hash`, holding the template as a replace patch in `data` (what
//! `kubectl rollout history|undo` read). The revision of the current template is found by its
//! data, whatever its name, and renumbered newest when a template returns; a different revision
//! already holding the name is a hash collision resolved through `status.collisionCount`;
//! revisions beyond `revisionHistoryLimit` that no pod runs are deleted, oldest first.
use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Error;
use crate::util;

/// Label carrying the template revision of a revision and of the pods made from it.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// Annotation copied from the owner onto a new revision (the CHANGE-CAUSE of
/// `kubectl rollout history`).
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// A workload whose pod templates are kept as ControllerRevisions.
pub trait Versioned:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug
{
    /// `spec.template`, `spec.selector` and `spec.revisionHistoryLimit`; `None` without a spec.
    fn history_spec(&self) -> Option<(&PodTemplateSpec, &LabelSelector, Option<i32>)>;
    /// `status.collisionCount`, which the revision hash includes.
    fn collision_count(&self) -> Option<i32>;
}

impl Versioned for DaemonSet {
    fn history_spec(&self) -> Option<(&PodTemplateSpec, &LabelSelector, Option<i32>)> {
        let s = self.spec.as_ref()?;
        Some((&s.template, &s.selector, s.revision_history_limit))
    }
    fn collision_count(&self) -> Option<i32> {
        self.status.as_ref().and_then(|s| s.collision_count)
    }
}

impl Versioned for StatefulSet {
    fn history_spec(&self) -> Option<(&PodTemplateSpec, &LabelSelector, Option<i32>)> {
        let s = self.spec.as_ref()?;
        Some((&s.template, &s.selector, s.revision_history_limit))
    }
    fn collision_count(&self) -> Option<i32> {
        self.status.as_ref().and_then(|s| s.collision_count)
    }
}

/// The `data` of the revision for `template`, as Kubernetes' `getPatch`: the template as a
/// replace patch under `spec.template`.
pub fn revision_data(template: &PodTemplateSpec) -> Result<serde_json::Value, Error> {
    let mut t = serde_json::to_value(template)?;
    if let Some(obj) = t.as_object_mut() {
        obj.insert("$patch".into(), json!("replace"));
    }
    Ok(json!({"spec": {"template": t}}))
}

/// The template a ControllerRevision holds.
pub fn revision_template(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = revision
        .data
        .as_ref()?
        .0
        .get("spec")?
        .get("template")?
        .clone();
    if let Some(obj) = t.as_object_mut() {
        obj.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// Whether a ControllerRevision holds `data` (nulls, empty objects and empty lists aside, so
/// that a round trip through the apiserver does not make the same template look different).
fn revision_holds(revision: &ControllerRevision, data: &serde_json::Value) -> bool {
    revision
        .data
        .as_ref()
        .is_some_and(|d| util::pruned(d.0.clone()) == util::pruned(data.clone()))
}

/// The hash of a revision of `owner_name`: its `controller-revision-hash` label, or else what
/// follows `<owner>-` in its name.
pub fn revision_hash(owner_name: &str, revision: &ControllerRevision) -> String {
    revision
        .labels()
        .get(REVISION_HASH)
        .cloned()
        .unwrap_or_else(|| {
            let name = revision.name_any();
            let prefix = format!("{owner_name}-");
            name.strip_prefix(&prefix).unwrap_or(&name).to_string()
        })
}

/// Brings the owner's history up to date with its template and returns it with the current
/// revision's hash (the `controller-revision-hash` of up-to-date pods). Revisions whose hash is
/// in `keep` (those pods still run, or a StatefulSet's current revision) are never deleted.
pub async fn sync<K: Versioned>(
    client: &Client,
    owner: &K,
    keep: &BTreeSet<String>,
) -> Result<(Vec<ControllerRevision>, String), Error> {
    let kind = K::kind(&()).to_lowercase();
    let ns = owner.namespace().unwrap_or_default();
    let uid = owner.uid().unwrap_or_default();
    let owner_name = owner.name_any();
    let (template, selector, history_limit) = owner
        .history_spec()
        .ok_or_else(|| Error::Invalid(format!("{kind} without spec")))?;
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let mut history: Vec<ControllerRevision> = api
        .list(&ListParams::default().labels(&util::selector_query(selector)))
        .await?
        .items
        .into_iter()
        .filter(|r| util::controller_ref(r).is_some_and(|o| o.uid == uid))
        .collect();
    let max = history.iter().map(|r| r.revision).max().unwrap_or(0);
    let data = revision_data(template)?;
    let existing = history
        .iter()
        .filter(|r| revision_holds(r, &data))
        .max_by_key(|r| r.revision)
        .cloned();
    let current = match existing {
        Some(r) => {
            if r.revision != max {
                // Rolled back to an older template: it becomes the newest revision again.
                api.patch(
                    &r.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"revision": max + 1})),
                )
                .await?;
            }
            revision_hash(&owner_name, &r)
        }
        None => {
            let hash = crate::deployment::template_hash(template, owner.collision_count());
            let name = format!("{owner_name}-{hash}");
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_HASH.into(), hash.clone());
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: owner
                        .annotations()
                        .get(CHANGE_CAUSE)
                        .map(|c| [(CHANGE_CAUSE.to_string(), c.clone())].into()),
                    owner_references: Some(vec![util::owner_ref(owner)]),
                    ..Default::default()
                },
                data: Some(RawExtension(data.clone())),
                revision: max + 1,
            };
            match api.create(&PostParams::default(), &revision).await {
                Ok(r) => history.push(r),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let taken = api.get(&name).await?;
                    if !revision_holds(&taken, &data) {
                        bump_collision_count(client, owner, &name).await?;
                        return Err(Error::Invalid(format!(
                            "controllerrevision {ns}/{name} holds another template; collisionCount bumped"
                        )));
                    }
                    // Written by an earlier sync whose list this one raced.
                    history.push(taken);
                }
                Err(e) => return Err(e.into()),
            }
            hash
        }
    };
    let limit = history_limit.unwrap_or(10).max(0) as usize;
    let mut old: Vec<&ControllerRevision> = history
        .iter()
        .filter(|r| {
            let h = revision_hash(&owner_name, r);
            h != current && !keep.contains(&h)
        })
        .collect();
    if old.len() > limit {
        old.sort_by_key(|r| r.revision);
        for r in &old[..old.len() - limit] {
            match api.delete(&r.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok((history, current))
}

/// Increments `status.collisionCount` after a hash collision on `name`, as Kubernetes does:
/// only when the count the hash was computed with is still the stored one (read fresh from
/// the apiserver, and the write guarded by its resourceVersion).
async fn bump_collision_count<K: Versioned>(
    client: &Client,
    owner: &K,
    name: &str,
) -> Result<(), Error> {
    let kind = K::kind(&()).to_lowercase();
    let api: Api<K> = Api::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    let fresh = api.get_status(&owner.name_any()).await?;
    let used = owner.collision_count();
    let stored = fresh.collision_count();
    if stored != used {
        return Err(Error::Invalid(format!(
            "stale collisionCount {used:?} (stored {stored:?}) for {kind} {}; retrying",
            owner.name_any()
        )));
    }
    let count = used.unwrap_or(0) + 1;
    api.patch_status(
        &owner.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"resourceVersion": fresh.resource_version()},
            "status": {"collisionCount": count},
        })),
    )
    .await?;
    tracing::info!(%kind, owner = %owner.name_any(), revision = name, collision_count = count, "hash collision; bumped collisionCount");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "a", "image": "busybox"}]}}))
        .unwrap_or_default()
    }

    #[test]
    fn revision_hash_includes_collision_count_and_data_matches_semantically() {
        let template = template();
        let hashes = [None, Some(0), Some(1), Some(2)]
            .map(|c| crate::deployment::template_hash(&template, c));
        let distinct: BTreeSet<&String> = hashes.iter().collect();
        assert_eq!(distinct.len(), 4, "{hashes:?}");
        assert_eq!(
            hashes[2],
            crate::deployment::template_hash(&template, Some(1)),
            "stable"
        );

        let data = revision_data(&template).unwrap_or_default();
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let mut stored = data.clone();
        stored["spec"]["template"]["spec"]["volumes"] = json!([]);
        stored["spec"]["template"]["metadata"]["annotations"] = json!(null);
        let revision = |d: serde_json::Value| ControllerRevision {
            data: Some(RawExtension(d)),
            ..Default::default()
        };
        assert!(revision_holds(&revision(stored), &data));
        let mut other = data.clone();
        other["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx");
        assert!(!revision_holds(&revision(other), &data));
    }

    #[test]
    fn revision_data_round_trips_to_the_template() {
        let template = template();
        let rev = ControllerRevision {
            data: Some(RawExtension(revision_data(&template).unwrap_or_default())),
            ..Default::default()
        };
        assert_eq!(revision_template(&rev), Some(template));
    }

    #[test]
    fn hash_from_label_or_name() {
        let mut rev = ControllerRevision {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(revision_hash("web", &rev), "abc");
        rev.metadata.labels = Some([(REVISION_HASH.to_string(), "xyz".to_string())].into());
        assert_eq!(revision_hash("web", &rev), "xyz");
    }
}
