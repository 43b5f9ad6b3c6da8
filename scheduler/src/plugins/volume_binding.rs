//! VolumeBinding and VolumeRestrictions: the pod's PersistentVolumeClaims decide where it may
//! run.
//!
//! PreFilter (kube-scheduler's wording): a claim that does not exist, or is being deleted, makes
//! the pod unschedulable everywhere; so does an unbound claim whose class binds immediately
//! (the PV controller binds it, the pod waits), and (VolumeRestrictions) a `ReadWriteOncePod`
//! claim another pod already uses. Filter: a bound claim's volume must admit the node through
//! its node affinity; an unbound `WaitForFirstConsumer` claim needs on that node either an
//! available volume that satisfies it or a class with a provisioner. PreBind (in
//! [`crate::binder`]) then writes the chosen node onto such claims
//! (`volume.kubernetes.io/selected-node`) and waits until the PV controller has bound them.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use lotse_core::Quantity;
use lotse_core::selectors::node_requirement_matches;

use crate::cache::Cache;
use crate::framework::{CycleState, FilterPlugin, NodeInfo, PodInfo, StateKey, Status};

/// Claims, volumes and classes as the scheduler last saw them.
#[derive(Debug, Default)]
pub struct VolumeListers {
    /// Claims by (namespace, name).
    pub claims: HashMap<(String, String), PersistentVolumeClaim>,
    /// Volumes by name.
    pub volumes: HashMap<String, PersistentVolume>,
    /// StorageClasses by name.
    pub classes: HashMap<String, StorageClass>,
}

/// Where PreFilter leaves the [`PreFilterState`].
const PRE_FILTER_KEY: StateKey = "PreFilterVolumeBinding";

/// What VolumeBinding's PreFilter found for the pod.
#[derive(Debug, Default)]
pub struct PreFilterState {
    /// Volumes of the pod's bound claims.
    pub bound: Vec<PersistentVolume>,
    /// Unbound claims of `WaitForFirstConsumer` classes, with whether their class provisions.
    pub delayed: Vec<(PersistentVolumeClaim, bool)>,
    /// Available, unclaimed volumes (candidates for the delayed claims).
    pub candidates: Vec<PersistentVolume>,
}

const ERR_AFFINITY: &str = "node(s) had volume node affinity conflict";
const ERR_BIND: &str = "node(s) didn't find available persistent volumes to bind";
const ERR_RWOP: &str =
    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode";

fn bytes(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> i64 {
    q.and_then(|q| Quantity::parse(&q.0).ok())
        .map(|q| q.value())
        .unwrap_or(0)
}

fn claim_class(c: &PersistentVolumeClaim) -> String {
    c.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class").cloned())
        .or_else(|| c.spec.as_ref().and_then(|s| s.storage_class_name.clone()))
        .unwrap_or_default()
}

/// Whether the volume's required node affinity admits the node (no affinity: every node).
pub fn volume_fits(pv: &PersistentVolume, labels: &BTreeMap<String, String>) -> bool {
    let Some(req) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    req.node_selector_terms.iter().any(|t| {
        let exprs = t.match_expressions.as_deref().unwrap_or_default();
        !exprs.is_empty()
            && exprs
                .iter()
                .all(|e| node_requirement_matches(e, labels.get(&e.key)))
    })
}

/// PreFilter of VolumeBinding and VolumeRestrictions: stores the view of the pod's claims (nothing
/// for a pod without claims). `Err` makes the pod unschedulable on every node.
pub fn pre_filter(state: &mut CycleState, cache: &Cache, pod: &PodInfo) -> Result<(), Status> {
    if let Some(s) = pre_filter_state(cache, pod)? {
        state.write(PRE_FILTER_KEY, s);
    }
    Ok(())
}

fn pre_filter_state(cache: &Cache, pod: &PodInfo) -> Result<Option<PreFilterState>, Status> {
    if pod.claims.is_empty() {
        return Ok(None);
    }
    let listers = &cache.volumes;
    let mut state = PreFilterState::default();
    let mut unbound_immediate = false;
    for name in &pod.claims {
        let Some(claim) = listers.claims.get(&(pod.namespace.clone(), name.clone())) else {
            return Err(Status::unresolvable(format!(
                "persistentvolumeclaim \"{name}\" not found"
            )));
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(Status::unresolvable(format!(
                "persistentvolumeclaim \"{name}\" is being deleted"
            )));
        }
        let modes = claim
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.clone())
            .unwrap_or_default();
        if modes.iter().any(|m| m == "ReadWriteOncePod") && used_by_other_pod(cache, pod, name) {
            return Err(Status::unresolvable(ERR_RWOP));
        }
        let volume = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        if !volume.is_empty() {
            match listers.volumes.get(&volume) {
                Some(pv) => state.bound.push(pv.clone()),
                None => {
                    return Err(Status::unresolvable("pvc(s) bound to non-existent pv(s)"));
                }
            }
            continue;
        }
        let class = listers.classes.get(&claim_class(claim));
        match class {
            Some(c) if c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") => {
                let provisions = c.provisioner != "kubernetes.io/no-provisioner";
                state.delayed.push((claim.clone(), provisions));
            }
            _ => unbound_immediate = true,
        }
    }
    if unbound_immediate {
        return Err(Status::unresolvable(
            "pod has unbound immediate PersistentVolumeClaims",
        ));
    }
    if !state.delayed.is_empty() {
        state.candidates = listers
            .volumes
            .values()
            .filter(|pv| {
                pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none())
                    && pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available")
            })
            .cloned()
            .collect();
    }
    Ok(Some(state))
}

fn used_by_other_pod(cache: &Cache, pod: &PodInfo, claim: &str) -> bool {
    cache.nodes().iter().any(|n| {
        n.pods.iter().any(|p| {
            p.uid != pod.uid && p.namespace == pod.namespace && p.claims.iter().any(|c| c == claim)
        })
    })
}

/// Whether an available, unclaimed volume on the node satisfies the claim.
fn static_volume_fits(
    volumes: &[PersistentVolume],
    claim: &PersistentVolumeClaim,
    labels: &BTreeMap<String, String>,
) -> bool {
    let spec = claim.spec.clone().unwrap_or_default();
    let request = bytes(
        spec.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    );
    let class = claim_class(claim);
    let modes = spec.access_modes.unwrap_or_default();
    volumes.iter().any(|pv| {
        let ps = pv.spec.clone().unwrap_or_default();
        ps.storage_class_name.clone().unwrap_or_default() == class
            && bytes(ps.capacity.as_ref().and_then(|c| c.get("storage"))) >= request
            && modes
                .iter()
                .all(|m| ps.access_modes.iter().flatten().any(|x| x == m))
            && volume_fits(pv, labels)
    })
}

/// The VolumeBinding filter.
pub struct VolumeBinding;

/// VolumeBinding's Filter against the PreFilter state.
pub fn filter(state: &CycleState, node: &NodeInfo) -> Result<(), Status> {
    let Some(s) = state.read::<PreFilterState>(PRE_FILTER_KEY) else {
        return Ok(());
    };
    if s.bound.iter().any(|pv| !volume_fits(pv, &node.labels)) {
        return Err(Status::unresolvable(ERR_AFFINITY));
    }
    for (claim, provisions) in &s.delayed {
        if !provisions && !static_volume_fits(&s.candidates, claim, &node.labels) {
            return Err(Status::unresolvable(ERR_BIND));
        }
    }
    Ok(())
}

impl FilterPlugin for VolumeBinding {
    fn name(&self) -> &'static str {
        "VolumeBinding"
    }
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        filter(state, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil;
    use serde_json::json;

    fn listers() -> VolumeListers {
        let mut l = VolumeListers::default();
        let class: StorageClass =
            serde_json::from_value(json!({"metadata": {"name": "local-path"},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}))
            .unwrap();
        l.classes.insert("local-path".into(), class);
        let claim = |name: &str, class: &str, volume: Option<&str>, modes: &[&str]| {
            let c: PersistentVolumeClaim = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"storageClassName": class, "volumeName": volume, "accessModes": modes,
                    "resources": {"requests": {"storage": "1Gi"}}}
            }))
            .unwrap();
            (("default".to_string(), name.to_string()), c)
        };
        l.claims.extend([
            claim("wait", "local-path", None, &["ReadWriteOnce"]),
            claim("immediate", "manual", None, &["ReadWriteOnce"]),
            claim("bound", "local-path", Some("pv1"), &["ReadWriteOnce"]),
            claim("solo", "local-path", Some("pv1"), &["ReadWriteOncePod"]),
        ]);
        let pv: PersistentVolume = serde_json::from_value(json!({"metadata": {"name": "pv1"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}}))
        .unwrap();
        l.volumes.insert("pv1".into(), pv);
        l
    }

    fn pod_with(claims: &[&str]) -> PodInfo {
        let vols: Vec<_> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        testutil::pod(json!({"volumes": vols}))
    }

    fn msg(r: Result<Option<PreFilterState>, Status>) -> String {
        r.err().map(|s| s.reasons.join(",")).unwrap_or_default()
    }

    #[test]
    fn prefilter_rejects_missing_and_immediate_unbound_claims() {
        let mut cache = Cache::default();
        cache.volumes = listers();
        assert_eq!(
            msg(pre_filter_state(&cache, &pod_with(&["missing"]))),
            "persistentvolumeclaim \"missing\" not found"
        );
        assert_eq!(
            msg(pre_filter_state(&cache, &pod_with(&["immediate"]))),
            "pod has unbound immediate PersistentVolumeClaims"
        );
        let s = pre_filter_state(&cache, &pod_with(&["wait", "bound"]))
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!((s.bound.len(), s.delayed.len()), (1, 1));
    }

    #[test]
    fn bound_volumes_pin_the_node_and_rwop_claims_are_exclusive() {
        let mut cache = Cache::default();
        cache.volumes = listers();
        let mut state = CycleState::default();
        assert!(pre_filter(&mut state, &cache, &pod_with(&["bound"])).is_ok());
        assert!(filter(&state, &testutil::plain_node("n1")).is_ok());
        assert_eq!(
            filter(&state, &testutil::plain_node("n2")).map_err(|s| s.reasons.join(",")),
            Err(ERR_AFFINITY.to_string())
        );
        let n: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
        cache.upsert_node(&n);
        let mut other = pod_with(&["solo"]);
        other.uid = "other".into();
        cache.assume(std::sync::Arc::new(other), "n1");
        assert_eq!(
            msg(pre_filter_state(&cache, &pod_with(&["solo"]))),
            ERR_RWOP
        );
    }
}
