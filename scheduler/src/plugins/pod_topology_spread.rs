//! PodTopologySpread: hard constraints (`whenUnsatisfiable: DoNotSchedule`, filter) and soft
//! ones (`ScheduleAnyway`, score).

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use lotse_core::selectors::label_selector_matches;

use super::{node_affinity, tolerated};
use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, PodInfo, ScorePlugin, StateKey, Status,
};

/// Reason when the skew would exceed maxSkew.
pub const ERR_CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
/// Reason when the node lacks a constraint's topology key.
pub const ERR_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// A constraint with its selector completed by matchLabelKeys.
#[derive(Debug, Clone)]
struct Constraint {
    key: String,
    max_skew: i64,
    min_domains: i64,
    selector: LabelSelector,
    honor_affinity: bool,
    honor_taints: bool,
}

fn constraints(pod: &PodInfo, hard: bool) -> Vec<Constraint> {
    pod.topology_spread
        .iter()
        .filter(|c| (c.when_unsatisfiable == "DoNotSchedule") == hard)
        .map(|c: &TopologySpreadConstraint| {
            let mut selector = c.label_selector.clone().unwrap_or_default();
            for k in c.match_label_keys.iter().flatten() {
                if let Some(v) = pod.labels.get(k) {
                    selector
                        .match_expressions
                        .get_or_insert_with(Vec::new)
                        .push(LabelSelectorRequirement {
                            key: k.clone(),
                            operator: "In".into(),
                            values: Some(vec![v.clone()]),
                        });
                }
            }
            Constraint {
                key: c.topology_key.clone(),
                max_skew: i64::from(c.max_skew),
                min_domains: i64::from(c.min_domains.unwrap_or(1)),
                // A missing labelSelector selects nothing.
                selector: if c.label_selector.is_some() {
                    selector
                } else {
                    LabelSelector {
                        match_labels: Some([("\0".into(), "\0".into())].into()),
                        ..Default::default()
                    }
                },
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            }
        })
        .collect()
}

fn node_counts(c: &Constraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    if c.honor_affinity && !node_affinity::required_matches(pod, node) {
        return false;
    }
    if c.honor_taints
        && node.taints.iter().any(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(&pod.tolerations, t)
        })
    {
        return false;
    }
    true
}

fn count_matching(c: &Constraint, pod: &PodInfo, node: &NodeInfo) -> i64 {
    node.pods
        .iter()
        .filter(|p| p.namespace == pod.namespace && label_selector_matches(&c.selector, &p.labels))
        .count() as i64
}

/// Where PreFilter leaves the [`PreFilterState`].
const PRE_FILTER_KEY: StateKey = "PreFilterPodTopologySpread";
/// Where PreScore leaves the [`PreScoreState`].
const PRE_SCORE_KEY: StateKey = "PreScorePodTopologySpread";

/// Hard-constraint counts per topology domain.
#[derive(Debug, Default)]
pub struct PreFilterState {
    constraints: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    min_match: Vec<i64>,
}

/// PreFilter: stores the counts over all nodes, or nothing without hard constraints.
pub fn pre_filter<'a>(
    state: &mut CycleState,
    pod: &PodInfo,
    nodes: impl Iterator<Item = &'a NodeInfo>,
) {
    if let Some(s) = pre_filter_state(pod, nodes) {
        state.write(PRE_FILTER_KEY, s);
    }
}

fn pre_filter_state<'a>(
    pod: &PodInfo,
    nodes: impl Iterator<Item = &'a NodeInfo>,
) -> Option<PreFilterState> {
    let cs = constraints(pod, true);
    if cs.is_empty() {
        return None;
    }
    let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
    for node in nodes {
        // Nodes lacking any of the keys are not counted at all.
        if cs.iter().any(|c| !node.labels.contains_key(&c.key)) {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            if !node_counts(c, pod, node) {
                continue;
            }
            let v = &node.labels[&c.key];
            *counts[i].entry(v.clone()).or_default() += count_matching(c, pod, node);
        }
    }
    let min_match = cs
        .iter()
        .zip(&counts)
        .map(|(c, m)| {
            if (m.len() as i64) < c.min_domains {
                0
            } else {
                m.values().copied().min().unwrap_or(0)
            }
        })
        .collect();
    Some(PreFilterState {
        constraints: cs,
        counts,
        min_match,
    })
}

/// Soft-constraint counts over the feasible nodes' domains.
#[derive(Debug, Default)]
pub struct PreScoreState {
    constraints: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    weights: Vec<f64>,
}

/// PreScore: stores the counts over the feasible nodes' domains, or nothing without soft
/// constraints.
pub fn pre_score<'a>(
    state: &mut CycleState,
    pod: &PodInfo,
    feasible: &[&NodeInfo],
    all: impl Iterator<Item = &'a NodeInfo>,
) {
    if let Some(s) = pre_score_state(pod, feasible, all) {
        state.write(PRE_SCORE_KEY, s);
    }
}

fn pre_score_state<'a>(
    pod: &PodInfo,
    feasible: &[&NodeInfo],
    all: impl Iterator<Item = &'a NodeInfo>,
) -> Option<PreScoreState> {
    let cs = constraints(pod, false);
    if cs.is_empty() {
        return None;
    }
    let mut domains: Vec<HashSet<&str>> = vec![HashSet::new(); cs.len()];
    for n in feasible {
        if cs.iter().all(|c| n.labels.contains_key(&c.key)) {
            for (i, c) in cs.iter().enumerate() {
                domains[i].insert(n.labels[&c.key].as_str());
            }
        }
    }
    let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
    for node in all {
        if cs.iter().any(|c| !node.labels.contains_key(&c.key)) {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            let v = &node.labels[&c.key];
            if !domains[i].contains(v.as_str()) || !node_counts(c, pod, node) {
                continue;
            }
            *counts[i].entry(v.clone()).or_default() += count_matching(c, pod, node);
        }
    }
    let weights = domains
        .iter()
        .map(|d| ((d.len() + 2) as f64).ln())
        .collect();
    Some(PreScoreState {
        constraints: cs,
        counts,
        weights,
    })
}

/// The PodTopologySpread filter and score.
pub struct PodTopologySpread;

impl FilterPlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        let Some(s) = state.read::<PreFilterState>(PRE_FILTER_KEY) else {
            return Ok(());
        };
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(v) = node.labels.get(&c.key) else {
                return Err(Status::unresolvable(ERR_MISSING_LABEL));
            };
            let self_match = i64::from(label_selector_matches(&c.selector, &pod.labels));
            let count = s.counts[i].get(v).copied().unwrap_or(0);
            if count + self_match - s.min_match[i] > c.max_skew {
                return Err(Status::unschedulable(ERR_CONSTRAINTS));
            }
        }
        Ok(())
    }
}

/// Raw score marking a node lacking a soft constraint's key (scored 0 after normalizing).
const IGNORED: i64 = -1;

impl ScorePlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(s) = state.read::<PreScoreState>(PRE_SCORE_KEY) else {
            return 0;
        };
        if s.constraints
            .iter()
            .any(|c| !node.labels.contains_key(&c.key))
        {
            return IGNORED;
        }
        let mut score = 0.0;
        for (i, c) in s.constraints.iter().enumerate() {
            let cnt = s.counts[i].get(&node.labels[&c.key]).copied().unwrap_or(0);
            score += cnt as f64 * s.weights[i] + (c.max_skew - 1) as f64;
        }
        score.round() as i64
    }
    fn normalize(&self, state: &CycleState, scores: &mut [i64]) {
        if state.read::<PreScoreState>(PRE_SCORE_KEY).is_none() {
            return;
        }
        let valid = scores.iter().copied().filter(|s| *s != IGNORED);
        let min = valid.clone().min().unwrap_or(0);
        let max = valid.max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if *s == IGNORED {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn spread(when: &str, skew: i32) -> serde_json::Value {
        json!({"topologySpreadConstraints": [{"maxSkew": skew, "topologyKey": "zone", "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": {"app": "web"}}}]})
    }

    fn zoned() -> Vec<NodeInfo> {
        let mut nodes = vec![
            node("a", json!({"zone": "z1"}), json!({}), json!({})),
            node("b", json!({"zone": "z2"}), json!({}), json!({})),
            node("c", json!({}), json!({}), json!({})),
        ];
        place(
            &mut nodes[0],
            pod_labeled("w1", json!({"app": "web"}), json!({})),
        );
        nodes
    }

    #[test]
    fn hard_constraint_skew() {
        let nodes = zoned();
        let p = pod_labeled("w2", json!({"app": "web"}), spread("DoNotSchedule", 1));
        let mut state = CycleState::default();
        pre_filter(&mut state, &p, nodes.iter());
        assert_eq!(
            PodTopologySpread.filter(&state, &p, &nodes[0]),
            Err(Status::unschedulable(ERR_CONSTRAINTS))
        );
        assert!(PodTopologySpread.filter(&state, &p, &nodes[1]).is_ok());
        assert_eq!(
            PodTopologySpread.filter(&state, &p, &nodes[2]),
            Err(Status::unresolvable(ERR_MISSING_LABEL))
        );
        let loose = pod_labeled("w2", json!({"app": "web"}), spread("DoNotSchedule", 2));
        let mut state = CycleState::default();
        pre_filter(&mut state, &loose, nodes.iter());
        assert!(PodTopologySpread.filter(&state, &loose, &nodes[0]).is_ok());
    }

    #[test]
    fn soft_constraint_scores_emptier_domain_higher() {
        let nodes = zoned();
        let p = pod_labeled("w2", json!({"app": "web"}), spread("ScheduleAnyway", 1));
        let feasible: Vec<&NodeInfo> = nodes.iter().collect();
        let mut state = CycleState::default();
        pre_score(&mut state, &p, &feasible, nodes.iter());
        assert!(
            PodTopologySpread.filter(&state, &p, &nodes[0]).is_ok(),
            "soft constraints never filter"
        );
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| PodTopologySpread.score(&state, &p, n))
            .collect();
        PodTopologySpread.normalize(&state, &mut scores);
        assert!(scores[1] > scores[0], "{scores:?}");
        assert_eq!(scores[2], 0);
    }
}
