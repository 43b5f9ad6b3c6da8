//! TaintToleration: NoSchedule/NoExecute taints must be tolerated (filter); fewer untolerated
//! PreferNoSchedule taints score higher.

use super::tolerated;
use crate::framework::{
    CycleState, FilterPlugin, NodeInfo, PodInfo, ScorePlugin, Status, default_normalize,
};

/// The TaintToleration filter and score.
pub struct TaintToleration;

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        let untolerated = node
            .taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .find(|t| !tolerated(&pod.tolerations, t));
        match untolerated {
            None => Ok(()),
            Some(t) => Err(Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            ))),
        }
    }
}

impl ScorePlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn weight(&self) -> i64 {
        3
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        // Only tolerations with effect PreferNoSchedule or empty count here, as in Kubernetes.
        let tols: Vec<_> = pod
            .tolerations
            .iter()
            .filter(|t| {
                matches!(
                    t.effect.as_deref(),
                    None | Some("") | Some("PreferNoSchedule")
                )
            })
            .cloned()
            .collect();
        node.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&tols, t))
            .count() as i64
    }
    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn tainted(taints: serde_json::Value) -> NodeInfo {
        node("n", json!({}), json!({"taints": taints}), json!({}))
    }

    #[test]
    fn untolerated_taint_message() {
        let n = tainted(
            json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
        );
        let s = CycleState::default();
        assert_eq!(
            TaintToleration.filter(&s, &pod(json!({})), &n),
            Err(Status::unresolvable(
                "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"
            ))
        );
        let n = tainted(json!([{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]));
        assert_eq!(
            TaintToleration
                .filter(&s, &pod(json!({})), &n)
                .unwrap_err()
                .reasons[0],
            "node(s) had untolerated taint {dedicated: gpu}"
        );
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let n = tainted(json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]));
        let s = CycleState::default();
        for tol in [
            json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "operator": "Exists"}),
            json!({"operator": "Exists"}),
            json!({"key": "dedicated", "operator": "Equal", "value": "gpu"}),
        ] {
            assert!(
                TaintToleration
                    .filter(&s, &pod(json!({"tolerations": [tol.clone()]})), &n)
                    .is_ok(),
                "{tol}"
            );
        }
        for tol in [
            json!({"key": "dedicated", "value": "cpu"}),
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
            json!({"key": "other", "operator": "Exists"}),
        ] {
            assert!(
                TaintToleration
                    .filter(&s, &pod(json!({"tolerations": [tol.clone()]})), &n)
                    .is_err(),
                "{tol}"
            );
        }
        // PreferNoSchedule never filters.
        let soft = tainted(json!([{"key": "k", "effect": "PreferNoSchedule"}]));
        assert!(TaintToleration.filter(&s, &pod(json!({})), &soft).is_ok());
    }

    #[test]
    fn prefer_no_schedule_scores_lower() {
        let s = CycleState::default();
        let p = pod(json!({}));
        let a = tainted(
            json!([{"key": "k", "effect": "PreferNoSchedule"}, {"key": "j", "effect": "PreferNoSchedule"}]),
        );
        let b = tainted(json!([{"key": "k", "effect": "PreferNoSchedule"}]));
        let c = plain_node("c");
        let mut scores: Vec<i64> = [&a, &b, &c]
            .iter()
            .map(|n| TaintToleration.score(&s, &p, n))
            .collect();
        TaintToleration.normalize(&s, &mut scores);
        assert_eq!(scores, vec![0, 50, 100]);
    }
}
