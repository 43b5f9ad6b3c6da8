//! DefaultPreemption (PostFilter): when a pod fits nowhere, find a node where removing pods of
//! lower priority makes it fit, as kube-scheduler's default preemption does.
//!
//! Per node whose rejection removing pods could resolve, every lower-priority pod is taken off
//! a copy of the node; if the pod then fits, victims are reprieved one by one, most important
//! first (pods whose eviction would violate a PodDisruptionBudget before the others), keeping
//! out only those the pod cannot fit beside. Among the candidate nodes the one with the fewest
//! budget violations wins, then the lowest highest-victim priority, the lowest sum of
//! priorities, the fewest victims, and the latest start of the highest-priority victims.
//!
//! A pod with `preemptionPolicy: Never` never preempts, and a pod already nominated to a node
//! where lower-priority pods are still terminating waits for them instead of preempting again.
//! Pods nominated to a node count there for pods of lower or equal priority (the room their
//! victims free is theirs), in scheduling and in preemption alike.
//! Filters run with the pre-filter state of the whole cluster (inter-pod affinity and topology
//! spread counts still include the victims), which can only make a candidate look worse.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use lotse_core::selectors::label_selector_matches;

use crate::algorithm::Profile;
use crate::cache::Cache;
use crate::events::{EventSink, EventType, PodEvent};
use crate::framework::{Code, CycleState, NodeInfo, PodInfo};

/// The pods to remove from one node and how many budgets that violates.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The node the preemptor will be nominated to.
    pub node: String,
    /// The pods to evict, most important first.
    pub victims: Vec<Arc<PodInfo>>,
    /// How many of the victims' evictions go past their budget.
    pub num_pdb_violations: usize,
}

/// kube-scheduler's PostFilter message for a pod whose earlier victims are still terminating.
pub const WAITING_FOR_VICTIMS: &str =
    "not eligible due to a terminating pod on the nominated node.";

/// Whether the pod is nominated to a node where pods of lower priority (its victims) are still
/// terminating: it waits for them instead of preempting again.
pub fn waits_for_victims(pod: &PodInfo, cache: &Cache) -> bool {
    !pod.nominated_node_name.is_empty()
        && cache.node(&pod.nominated_node_name).is_some_and(|node| {
            node.pods
                .iter()
                .any(|p| p.terminating && p.priority < pod.priority)
        })
}

/// `PodEligibleToPreemptOthers`.
pub fn eligible(pod: &PodInfo, cache: &Cache) -> bool {
    !pod.preemption_never && !waits_for_victims(pod, cache)
}

/// `MoreImportantPod`: higher priority first, then the one that started earlier.
fn more_important_first(a: &Arc<PodInfo>, b: &Arc<PodInfo>) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| a.start_time.cmp(&b.start_time))
}

/// Finds the node and victims to preempt for `pod`, if any.
pub fn find_candidate(
    profile: &Profile,
    cache: &Cache,
    pod: &PodInfo,
    pdbs: &[PodDisruptionBudget],
) -> Option<Candidate> {
    if !eligible(pod, cache) {
        return None;
    }
    let state = profile.pre_filter(cache, pod);
    if state.pre_filter_rejection.is_some() {
        return None;
    }
    let candidates: Vec<Candidate> = cache
        .nodes()
        .iter()
        .map(|n| cache.with_nominated(n, pod))
        .filter(|n| match profile.filter_node(&state, pod, n) {
            Ok(()) => false,
            Err(s) => s.code == Code::Unschedulable,
        })
        .filter_map(|n| select_victims_on_node(profile, &state, pod, &n, pdbs))
        .collect();
    pick_one_node(candidates)
}

/// `SelectVictimsOnNode`.
fn select_victims_on_node(
    profile: &Profile,
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
    pdbs: &[PodDisruptionBudget],
) -> Option<Candidate> {
    let mut potential: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if potential.is_empty() {
        return None;
    }
    let mut trial = node.clone();
    for p in &potential {
        trial.remove_pod(&p.uid);
    }
    if profile.filter_node(state, pod, &trial).is_err() {
        return None;
    }
    potential.sort_by(more_important_first);
    let (violating, non_violating) = split_by_pdb_violation(&potential, pdbs);
    let mut victims = Vec::new();
    let mut num_pdb_violations = 0;
    for (group, violates) in [(violating, true), (non_violating, false)] {
        for p in group {
            trial.add_pod(p.clone());
            if profile.filter_node(state, pod, &trial).is_err() {
                trial.remove_pod(&p.uid);
                victims.push(p);
                if violates {
                    num_pdb_violations += 1;
                }
            }
        }
    }
    if victims.is_empty() {
        return None;
    }
    victims.sort_by(more_important_first);
    Some(Candidate {
        node: node.name.clone(),
        victims,
        num_pdb_violations,
    })
}

/// `filterPodsWithPDBViolation`: pods whose eviction would take a budget below zero (counting
/// the earlier pods of the list against it), and the others; pods a budget already counts as
/// disrupted do not spend it again.
fn split_by_pdb_violation(
    pods: &[Arc<PodInfo>],
    pdbs: &[PodDisruptionBudget],
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<i32> = pdbs
        .iter()
        .map(|b| {
            b.status
                .as_ref()
                .map(|s| s.disruptions_allowed)
                .unwrap_or(0)
        })
        .collect();
    let mut violating = Vec::new();
    let mut fine = Vec::new();
    for p in pods {
        let mut violates = false;
        for (i, b) in pdbs.iter().enumerate() {
            if b.metadata.namespace.as_deref() != Some(p.namespace.as_str()) {
                continue;
            }
            let Some(sel) = b.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            if !label_selector_matches(sel, &p.labels) {
                continue;
            }
            let already = b
                .status
                .as_ref()
                .and_then(|s| s.disrupted_pods.as_ref())
                .is_some_and(|d| d.contains_key(&p.name));
            if already {
                continue;
            }
            allowed[i] -= 1;
            if allowed[i] < 0 {
                violates = true;
            }
        }
        if violates {
            violating.push(p.clone());
        } else {
            fine.push(p.clone());
        }
    }
    (violating, fine)
}

/// `pickOneNodeForPreemption`.
fn pick_one_node(candidates: Vec<Candidate>) -> Option<Candidate> {
    let highest = |c: &Candidate| c.victims.first().map(|p| p.priority).unwrap_or(i32::MIN);
    // Priorities are shifted to be non-negative before summing, as Kubernetes does.
    let sum = |c: &Candidate| {
        c.victims
            .iter()
            .map(|p| i64::from(p.priority) + i64::from(i32::MAX) + 1)
            .sum::<i64>()
    };
    // The earliest start among the highest-priority victims; later is better.
    let earliest_start = |c: &Candidate| {
        let top = highest(c);
        c.victims
            .iter()
            .filter(|p| p.priority == top)
            .map(|p| p.start_time)
            .min()
            .unwrap_or(0)
    };
    candidates.into_iter().min_by(|a, b| {
        a.num_pdb_violations
            .cmp(&b.num_pdb_violations)
            .then_with(|| highest(a).cmp(&highest(b)))
            .then_with(|| sum(a).cmp(&sum(b)))
            .then_with(|| a.victims.len().cmp(&b.victims.len()))
            .then_with(|| earliest_start(b).cmp(&earliest_start(a)))
    })
}

/// The reason of the `DisruptionTarget` condition set on victims.
pub const PREEMPTION_REASON: &str = "PreemptionByScheduler";

/// The `DisruptionTarget` message kube-scheduler sets on a victim.
pub fn preemption_message(scheduler_name: &str) -> String {
    format!("{scheduler_name}: preempting to accommodate a higher priority pod")
}

/// A pod object carrying only what events and API calls name.
fn pod_ref(p: &PodInfo) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            uid: Some(p.uid.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `prepareCandidate` and the nomination: each victim gets the `DisruptionTarget` condition
/// and is deleted (with its own grace period) and a `Preempted` event; then the preemptor's
/// `status.nominatedNodeName` names the node, so its next attempt tries that node first.
/// Errors are logged: the preemptor is retried either way.
pub async fn prepare_candidate(
    client: &Client,
    events: &EventSink,
    scheduler_name: &str,
    preemptor: &Pod,
    candidate: &Candidate,
) {
    let preemptor_uid = preemptor.metadata.uid.clone().unwrap_or_default();
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    for v in &candidate.victims {
        let api: Api<Pod> = Api::namespaced(client.clone(), &v.namespace);
        let condition = serde_json::json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "lastTransitionTime": now,
            "reason": PREEMPTION_REASON, "message": preemption_message(scheduler_name),
        }]}});
        if let Err(e) = api
            .patch_status(
                &v.name,
                &PatchParams::default(),
                &Patch::Strategic(&condition),
            )
            .await
        {
            tracing::debug!(pod = %v.name, error = %e, "could not mark preemption victim");
        }
        match api.delete(&v.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = %v.name, error = %e, "could not delete preemption victim");
                continue;
            }
        }
        events.emit(PodEvent {
            pod: Arc::new(pod_ref(v)),
            type_: EventType::Normal,
            reason: "Preempted",
            action: "Preempting",
            note: format!(
                "Preempted by pod {preemptor_uid} on node {}",
                candidate.node
            ),
        });
    }
    let ns = preemptor.metadata.namespace.clone().unwrap_or_default();
    let name = preemptor.metadata.name.clone().unwrap_or_default();
    let nominate = serde_json::json!({"status": {"nominatedNodeName": candidate.node}});
    if let Err(e) = Api::<Pod>::namespaced(client.clone(), &ns)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&nominate))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "could not set nominatedNodeName");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Pod};
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde_json::json;

    fn node(name: &str, cpu: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity("8Gi".into())),
                        ("pods".to_string(), Quantity("110".into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
        }
    }

    fn pod(name: &str, cpu: &str, priority: i32, labels: serde_json::Value) -> PodInfo {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "labels": labels},
            "spec": {"priority": priority, "containers": [{"name": "c", "image": "busybox",
                "resources": {"requests": {"cpu": cpu}}}]},
        }))
        .unwrap();
        PodInfo::new(&p)
    }

    fn cache_with(nodes: &[(&str, &str, Vec<PodInfo>)]) -> Cache {
        let mut c = Cache::default();
        for (name, cpu, pods) in nodes {
            c.upsert_node(&node(name, cpu));
            for p in pods {
                c.assume(Arc::new(p.clone()), name);
            }
        }
        c
    }

    fn pdb(allowed: i32) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("guard".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "guarded".to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: allowed,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn evicts_only_what_is_needed_lowest_priority_first() {
        let cache = cache_with(&[(
            "n1",
            "2",
            vec![pod("low", "1", 1, json!({})), pod("mid", "1", 5, json!({}))],
        )]);
        let preemptor = pod("high", "1", 10, json!({}));
        let c = find_candidate(&Profile::default(), &cache, &preemptor, &[]).unwrap();
        assert_eq!(c.node, "n1");
        let names: Vec<&str> = c.victims.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["low"]);
    }

    #[test]
    fn never_and_equal_priority_do_not_preempt() {
        let cache = cache_with(&[("n1", "1", vec![pod("same", "1", 10, json!({}))])]);
        let preemptor = pod("high", "1", 10, json!({}));
        assert!(find_candidate(&Profile::default(), &cache, &preemptor, &[]).is_none());
        let cache = cache_with(&[("n1", "1", vec![pod("low", "1", 1, json!({}))])]);
        let mut never = pod("high", "1", 10, json!({}));
        never.preemption_never = true;
        assert!(find_candidate(&Profile::default(), &cache, &never, &[]).is_none());
    }

    #[test]
    fn budgets_steer_the_choice_of_node() {
        let cache = cache_with(&[
            (
                "n1",
                "1",
                vec![pod("guarded", "1", 1, json!({"app": "guarded"}))],
            ),
            ("n2", "1", vec![pod("free", "1", 3, json!({}))]),
        ]);
        let preemptor = pod("high", "1", 10, json!({}));
        let c = find_candidate(&Profile::default(), &cache, &preemptor, &[pdb(0)]).unwrap();
        assert_eq!(c.node, "n2", "the node whose victim violates no budget");
        assert_eq!(c.num_pdb_violations, 0);
        // With the budget allowing a disruption, the lower-priority victim wins.
        let c = find_candidate(&Profile::default(), &cache, &preemptor, &[pdb(1)]).unwrap();
        assert_eq!(c.node, "n1");
    }

    #[test]
    fn room_freed_for_a_nominated_pod_is_kept_for_it() {
        let mut cache = cache_with(&[("n1", "2", vec![pod("running", "1", 1, json!({}))])]);
        let mut nominated = pod("urgent", "1", 100, json!({}));
        nominated.nominated_node_name = "n1".into();
        cache.set_nominated(Arc::new(nominated.clone()));
        let profile = Profile::default();
        let mut rng = rand::rng();
        // A lower-priority pod does not take the nominated pod's place...
        let low = pod("later", "1", 5, json!({}));
        assert!(profile.schedule(&cache, &low, 0, &mut rng).is_err());
        // ...preemption may make room by evicting what is below it, counting the nominated
        // pod as present.
        let c = find_candidate(&profile, &cache, &low, &[]);
        assert!(c.is_some_and(|c| c.victims.iter().all(|v| v.name == "running")));
        // The nominated pod itself fits.
        assert!(profile.schedule(&cache, &nominated, 0, &mut rng).is_ok());
        // Once assumed, the nomination is gone.
        cache.assume(Arc::new(nominated), "n1");
        assert!(profile.schedule(&cache, &low, 0, &mut rng).is_err());
    }

    #[test]
    fn waits_for_terminating_victims_on_the_nominated_node() {
        let mut victim = pod("low", "1", 1, json!({}));
        victim.terminating = true;
        let cache = cache_with(&[("n1", "1", vec![victim])]);
        let mut preemptor = pod("high", "1", 10, json!({}));
        preemptor.nominated_node_name = "n1".into();
        assert!(!eligible(&preemptor, &cache));
        preemptor.nominated_node_name.clear();
        assert!(eligible(&preemptor, &cache));
    }
}
