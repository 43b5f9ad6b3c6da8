//! InterPodAffinity: required pod affinity / anti-affinity with topologyKey, including the
//! anti-affinity of pods already placed (filter); preferred terms of both sides (score).

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{PodAffinityTerm, WeightedPodAffinityTerm};
use lotse_core::selectors::label_selector_matches;

use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, PodInfo, ScorePlugin, StateKey, Status,
};

/// Reason when the pod's required affinity finds no matching pods in the node's domain.
pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// Reason when the pod's required anti-affinity finds matching pods in the node's domain.
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// Reason when a placed pod's anti-affinity rejects the incoming pod.
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

type TopologyPair = (String, String);

/// Namespace labels, for terms with a namespaceSelector.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

/// Does `term`, declared by a pod in namespace `owner_ns`, select pod `target`?
pub fn term_matches(
    term: &PodAffinityTerm,
    owner_ns: &str,
    target: &PodInfo,
    ns_labels: &NamespaceLabels,
) -> bool {
    let Some(sel) = &term.label_selector else {
        return false;
    };
    let names = term.namespaces.as_deref().unwrap_or_default();
    let ns_ok = match &term.namespace_selector {
        None => {
            if names.is_empty() {
                target.namespace == owner_ns
            } else {
                names.contains(&target.namespace)
            }
        }
        Some(ns_sel) => {
            names.contains(&target.namespace) || {
                let empty = BTreeMap::new();
                let labels = ns_labels.get(&target.namespace).unwrap_or(&empty);
                label_selector_matches(ns_sel, labels)
            }
        }
    };
    ns_ok && label_selector_matches(sel, &target.labels)
}

fn required_affinity(p: &PodInfo) -> &[PodAffinityTerm] {
    p.affinity
        .as_ref()
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn required_anti_affinity(p: &PodInfo) -> &[PodAffinityTerm] {
    p.affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn preferred_affinity(p: &PodInfo) -> &[WeightedPodAffinityTerm] {
    p.affinity
        .as_ref()
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn preferred_anti_affinity(p: &PodInfo) -> &[WeightedPodAffinityTerm] {
    p.affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

/// Where PreFilter leaves the [`PreFilterState`].
const PRE_FILTER_KEY: StateKey = "PreFilterInterPodAffinity";
/// Where PreScore leaves the [`PreScoreState`].
const PRE_SCORE_KEY: StateKey = "PreScoreInterPodAffinity";

/// Counts computed once per scheduling cycle over every placed pod.
#[derive(Debug, Default)]
pub struct PreFilterState {
    existing_anti_affinity: HashMap<TopologyPair, i64>,
    affinity: HashMap<TopologyPair, i64>,
    anti_affinity: HashMap<TopologyPair, i64>,
    matches_own_affinity: bool,
}

/// PreFilter: stores the counts, or nothing when neither side has any terms (the common case).
pub fn pre_filter<'a>(
    state: &mut CycleState,
    pod: &PodInfo,
    nodes: impl Iterator<Item = &'a NodeInfo>,
    any_placed_affinity: bool,
    ns_labels: &NamespaceLabels,
) {
    if let Some(s) = pre_filter_state(pod, nodes, any_placed_affinity, ns_labels) {
        state.write(PRE_FILTER_KEY, s);
    }
}

fn pre_filter_state<'a>(
    pod: &PodInfo,
    nodes: impl Iterator<Item = &'a NodeInfo>,
    any_placed_affinity: bool,
    ns_labels: &NamespaceLabels,
) -> Option<PreFilterState> {
    let aff = required_affinity(pod);
    let anti = required_anti_affinity(pod);
    if aff.is_empty() && anti.is_empty() && !any_placed_affinity {
        return None;
    }
    let mut s = PreFilterState {
        matches_own_affinity: aff
            .iter()
            .all(|t| term_matches(t, &pod.namespace, pod, ns_labels)),
        ..Default::default()
    };
    for node in nodes {
        for existing in &node.pods {
            if node.pods_with_affinity > 0 {
                for t in required_anti_affinity(existing) {
                    if let Some(v) = node.labels.get(&t.topology_key)
                        && term_matches(t, &existing.namespace, pod, ns_labels)
                    {
                        *s.existing_anti_affinity
                            .entry((t.topology_key.clone(), v.clone()))
                            .or_default() += 1;
                    }
                }
            }
            if !aff.is_empty()
                && aff
                    .iter()
                    .all(|t| term_matches(t, &pod.namespace, existing, ns_labels))
            {
                for t in aff {
                    if let Some(v) = node.labels.get(&t.topology_key) {
                        *s.affinity
                            .entry((t.topology_key.clone(), v.clone()))
                            .or_default() += 1;
                    }
                }
            }
            for t in anti {
                if let Some(v) = node.labels.get(&t.topology_key)
                    && term_matches(t, &pod.namespace, existing, ns_labels)
                {
                    *s.anti_affinity
                        .entry((t.topology_key.clone(), v.clone()))
                        .or_default() += 1;
                }
            }
        }
    }
    Some(s)
}

/// Topology-pair scores from preferred terms (and placed pods' required affinity, weight 1).
#[derive(Debug, Default)]
pub struct PreScoreState {
    topology_score: HashMap<String, HashMap<String, i64>>,
}

/// PreScore: stores the topology scores, or nothing if nothing could contribute.
pub fn pre_score<'a>(
    state: &mut CycleState,
    pod: &PodInfo,
    nodes: impl Iterator<Item = &'a NodeInfo>,
    any_placed_affinity: bool,
    ns_labels: &NamespaceLabels,
) {
    if let Some(s) = pre_score_state(pod, nodes, any_placed_affinity, ns_labels) {
        state.write(PRE_SCORE_KEY, s);
    }
}

fn pre_score_state<'a>(
    pod: &PodInfo,
    nodes: impl Iterator<Item = &'a NodeInfo>,
    any_placed_affinity: bool,
    ns_labels: &NamespaceLabels,
) -> Option<PreScoreState> {
    let pref = preferred_affinity(pod);
    let pref_anti = preferred_anti_affinity(pod);
    if pref.is_empty() && pref_anti.is_empty() && !any_placed_affinity {
        return None;
    }
    let mut s = PreScoreState::default();
    let mut add = |node: &NodeInfo, key: &str, w: i64| {
        if let Some(v) = node.labels.get(key) {
            *s.topology_score
                .entry(key.to_string())
                .or_default()
                .entry(v.clone())
                .or_default() += w;
        }
    };
    for node in nodes {
        for existing in &node.pods {
            for t in pref {
                if term_matches(&t.pod_affinity_term, &pod.namespace, existing, ns_labels) {
                    add(node, &t.pod_affinity_term.topology_key, i64::from(t.weight));
                }
            }
            for t in pref_anti {
                if term_matches(&t.pod_affinity_term, &pod.namespace, existing, ns_labels) {
                    add(
                        node,
                        &t.pod_affinity_term.topology_key,
                        -i64::from(t.weight),
                    );
                }
            }
            if node.pods_with_affinity == 0 || !existing.has_pod_affinity() {
                continue;
            }
            // Hard pod affinity symmetric weight is 1 in the default profile.
            for t in required_affinity(existing) {
                if term_matches(t, &existing.namespace, pod, ns_labels) {
                    add(node, &t.topology_key, 1);
                }
            }
            for t in preferred_affinity(existing) {
                if term_matches(&t.pod_affinity_term, &existing.namespace, pod, ns_labels) {
                    add(node, &t.pod_affinity_term.topology_key, i64::from(t.weight));
                }
            }
            for t in preferred_anti_affinity(existing) {
                if term_matches(&t.pod_affinity_term, &existing.namespace, pod, ns_labels) {
                    add(
                        node,
                        &t.pod_affinity_term.topology_key,
                        -i64::from(t.weight),
                    );
                }
            }
        }
    }
    Some(s)
}

/// The InterPodAffinity filter and score.
pub struct InterPodAffinity;

impl FilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        let Some(s) = state.read::<PreFilterState>(PRE_FILTER_KEY) else {
            return Ok(());
        };
        // Affinity: every topology key present, and a matching pod in each domain.
        let aff = required_affinity(pod);
        if !aff.is_empty() {
            let mut pods_exist = true;
            for t in aff {
                let Some(v) = node.labels.get(&t.topology_key) else {
                    return Err(Status::unresolvable(ERR_AFFINITY));
                };
                if s.affinity
                    .get(&(t.topology_key.clone(), v.clone()))
                    .copied()
                    .unwrap_or(0)
                    <= 0
                {
                    pods_exist = false;
                }
            }
            // The first pod of a group that has affinity to itself may go anywhere.
            let first_of_group = s.affinity.is_empty() && s.matches_own_affinity;
            if !(pods_exist || first_of_group) {
                return Err(Status::unresolvable(ERR_AFFINITY));
            }
        }
        for t in required_anti_affinity(pod) {
            if let Some(v) = node.labels.get(&t.topology_key)
                && s.anti_affinity
                    .get(&(t.topology_key.clone(), v.clone()))
                    .copied()
                    .unwrap_or(0)
                    > 0
            {
                return Err(Status::unschedulable(ERR_ANTI_AFFINITY));
            }
        }
        if !s.existing_anti_affinity.is_empty() {
            for (k, v) in &node.labels {
                if s.existing_anti_affinity
                    .get(&(k.clone(), v.clone()))
                    .copied()
                    .unwrap_or(0)
                    > 0
                {
                    return Err(Status::unschedulable(ERR_EXISTING_ANTI_AFFINITY));
                }
            }
        }
        Ok(())
    }
}

impl ScorePlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(s) = state.read::<PreScoreState>(PRE_SCORE_KEY) else {
            return 0;
        };
        s.topology_score
            .iter()
            .filter_map(|(key, vals)| node.labels.get(key).and_then(|v| vals.get(v)))
            .sum()
    }
    fn normalize(&self, state: &CycleState, scores: &mut [i64]) {
        if state.read::<PreScoreState>(PRE_SCORE_KEY).is_none() {
            return;
        }
        let (min, max) = scores
            .iter()
            .fold((i64::MAX, i64::MIN), |(a, b), s| (a.min(*s), b.max(*s)));
        let diff = max - min;
        for s in scores.iter_mut() {
            *s = if diff > 0 {
                MAX_NODE_SCORE * (*s - min) / diff
            } else {
                0
            };
        }
    }
}

/// Topology keys used by any of a pod's terms (for tests and diagnostics).
pub fn topology_keys(p: &PodInfo) -> HashSet<String> {
    required_affinity(p)
        .iter()
        .chain(required_anti_affinity(p))
        .map(|t| t.topology_key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn anti(app: &str) -> serde_json::Value {
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}]}}})
    }
    fn aff(app: &str, key: &str) -> serde_json::Value {
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}}})
    }

    fn run(pod: &PodInfo, nodes: &[NodeInfo]) -> Vec<Result<(), Status>> {
        let any = nodes.iter().any(|n| n.pods_with_affinity > 0);
        let mut state = CycleState::default();
        pre_filter(&mut state, pod, nodes.iter(), any, &Default::default());
        nodes
            .iter()
            .map(|n| InterPodAffinity.filter(&state, pod, n))
            .collect()
    }

    #[test]
    fn anti_affinity_spreads_replicas() {
        let mut nodes = vec![plain_node("a"), plain_node("b"), plain_node("c")];
        place(
            &mut nodes[0],
            pod_labeled("web-1", json!({"app": "web"}), anti("web")),
        );
        let p = pod_labeled("web-2", json!({"app": "web"}), anti("web"));
        let r = run(&p, &nodes);
        assert_eq!(r[0], Err(Status::unschedulable(ERR_ANTI_AFFINITY)));
        assert!(r[1].is_ok() && r[2].is_ok());
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let mut nodes = vec![plain_node("a"), plain_node("b")];
        place(
            &mut nodes[0],
            pod_labeled("db", json!({"app": "db"}), anti("web")),
        );
        let p = pod_labeled("web", json!({"app": "web"}), json!({}));
        let r = run(&p, &nodes);
        assert_eq!(r[0], Err(Status::unschedulable(ERR_EXISTING_ANTI_AFFINITY)));
        assert!(r[1].is_ok());
    }

    #[test]
    fn affinity_needs_a_matching_pod_in_the_domain() {
        let mut nodes = vec![
            node("a", json!({"zone": "z1"}), json!({}), json!({})),
            node("b", json!({"zone": "z1"}), json!({}), json!({})),
            node("c", json!({"zone": "z2"}), json!({}), json!({})),
            node("d", json!({}), json!({}), json!({})),
        ];
        place(
            &mut nodes[0],
            pod_labeled("cache", json!({"app": "cache"}), json!({})),
        );
        let p = pod_labeled("web", json!({"app": "web"}), aff("cache", "zone"));
        let r = run(&p, &nodes);
        assert!(r[0].is_ok() && r[1].is_ok());
        assert_eq!(r[2], Err(Status::unresolvable(ERR_AFFINITY)));
        assert_eq!(r[3], Err(Status::unresolvable(ERR_AFFINITY)));
        // First pod of a self-affine group may go anywhere with the key.
        let first = pod_labeled("x", json!({"app": "x"}), aff("x", "zone"));
        let r = run(&first, &nodes);
        assert!(r[2].is_ok());
        assert!(r[3].is_err());
    }

    #[test]
    fn preferred_affinity_scores() {
        let mut nodes = [plain_node("a"), plain_node("b")];
        place(
            &mut nodes[1],
            pod_labeled("cache", json!({"app": "cache"}), json!({})),
        );
        let p = pod_labeled(
            "web",
            json!({}),
            json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}}]}}}),
        );
        let mut state = CycleState::default();
        pre_score(&mut state, &p, nodes.iter(), false, &Default::default());
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| InterPodAffinity.score(&state, &p, n))
            .collect();
        assert_eq!(scores, vec![0, 50]);
        InterPodAffinity.normalize(&state, &mut scores);
        assert_eq!(scores, vec![0, 100]);
    }
}
