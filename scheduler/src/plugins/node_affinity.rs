//! NodeAffinity: `nodeSelector` and required node affinity (filter), preferred node affinity
//! (score).

use k8s_openapi::api::core::v1::NodeSelectorTerm;
use lotse_core::selectors::node_requirement_matches;

use crate::framework::{
    CycleState, FilterPlugin, NodeInfo, PodInfo, ScorePlugin, Status, default_normalize,
};

/// Reason worded as kube-scheduler's `ErrReasonPod`.
pub const ERR_REASON: &str = "node(s) didn't match Pod's node affinity/selector";

/// The NodeAffinity filter and score.
pub struct NodeAffinity;

/// A term matches when all its expressions and fields match; an empty term matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| node_requirement_matches(r, node.labels.get(&r.key)))
        && fields.iter().all(|r| {
            // metadata.name is the only supported field, as in Kubernetes.
            r.key == "metadata.name" && node_requirement_matches(r, Some(&node.name))
        })
}

/// nodeSelector and required node affinity, as `RequiredNodeAffinity.Match`.
pub fn required_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    if pod
        .node_selector
        .iter()
        .any(|(k, v)| node.labels.get(k) != Some(v))
    {
        return false;
    }
    let required = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
    }
}

impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        if required_matches(pod, node) {
            Ok(())
        } else {
            Err(Status::unresolvable(ERR_REASON))
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn weight(&self) -> i64 {
        2
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let preferred = pod
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        preferred
            .into_iter()
            .flatten()
            .filter(|t| t.weight != 0 && term_matches(&t.preference, node))
            .map(|t| i64::from(t.weight))
            .sum()
    }
    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::{Value, json};

    fn req(exprs: Value) -> PodInfo {
        pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}),
        )
    }

    #[test]
    fn node_selector() {
        let s = CycleState::default();
        let n = node("a", json!({"disk": "ssd"}), json!({}), json!({}));
        assert!(
            NodeAffinity
                .filter(&s, &pod(json!({"nodeSelector": {"disk": "ssd"}})), &n)
                .is_ok()
        );
        assert_eq!(
            NodeAffinity.filter(&s, &pod(json!({"nodeSelector": {"disk": "hdd"}})), &n),
            Err(Status::unresolvable(ERR_REASON))
        );
    }

    #[test]
    fn all_operators() {
        let s = CycleState::default();
        let n = node(
            "a",
            json!({"zone": "z1", "cores": "8"}),
            json!({}),
            json!({}),
        );
        let ok = |e: Value| NodeAffinity.filter(&s, &req(json!([e])), &n).is_ok();
        assert!(ok(
            json!({"key": "zone", "operator": "In", "values": ["z1", "z2"]})
        ));
        assert!(!ok(
            json!({"key": "zone", "operator": "In", "values": ["z2"]})
        ));
        assert!(ok(
            json!({"key": "zone", "operator": "NotIn", "values": ["z2"]})
        ));
        assert!(!ok(
            json!({"key": "zone", "operator": "NotIn", "values": ["z1"]})
        ));
        assert!(ok(
            json!({"key": "missing", "operator": "NotIn", "values": ["z1"]})
        ));
        assert!(ok(json!({"key": "zone", "operator": "Exists"})));
        assert!(!ok(json!({"key": "missing", "operator": "Exists"})));
        assert!(ok(json!({"key": "missing", "operator": "DoesNotExist"})));
        assert!(ok(
            json!({"key": "cores", "operator": "Gt", "values": ["4"]})
        ));
        assert!(!ok(
            json!({"key": "cores", "operator": "Gt", "values": ["8"]})
        ));
        assert!(ok(
            json!({"key": "cores", "operator": "Lt", "values": ["16"]})
        ));
        assert!(!ok(
            json!({"key": "zone", "operator": "Lt", "values": ["16"]})
        ));
    }

    #[test]
    fn match_fields_and_or_of_terms() {
        let s = CycleState::default();
        let n = node("node-1", json!({}), json!({}), json!({}));
        let p = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "x", "operator": "Exists"}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}
            ]}}}}),
        );
        assert!(NodeAffinity.filter(&s, &p, &n).is_ok());
        assert!(NodeAffinity.filter(&s, &p, &plain_node("node-2")).is_err());
        // An empty term matches nothing.
        let empty = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{}]}}}}),
        );
        assert!(NodeAffinity.filter(&s, &empty, &n).is_err());
    }

    #[test]
    fn preferred_scores() {
        let s = CycleState::default();
        let p = pod(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}},
                {"weight": 5, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}
            ]}}}),
        );
        let a = node("a", json!({"zone": "z1", "ssd": ""}), json!({}), json!({}));
        let b = node("b", json!({"zone": "z1"}), json!({}), json!({}));
        let c = node("c", json!({}), json!({}), json!({}));
        let mut scores: Vec<i64> = [&a, &b, &c]
            .iter()
            .map(|n| NodeAffinity.score(&s, &p, n))
            .collect();
        assert_eq!(scores, vec![15, 10, 0]);
        NodeAffinity.normalize(&s, &mut scores);
        assert_eq!(scores, vec![100, 66, 0]);
    }
}
