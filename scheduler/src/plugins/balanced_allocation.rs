//! NodeResourcesBalancedAllocation: prefer nodes whose cpu and memory use stay balanced.

use crate::framework::{CycleState, MAX_NODE_SCORE, NodeInfo, PodInfo, ScorePlugin};

/// The BalancedAllocation score.
pub struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        // Best-effort pods skip this plugin in Kubernetes.
        if pod.requests.milli_cpu == 0 && pod.requests.memory == 0 {
            return 0;
        }
        let frac = |req: i64, cap: i64| {
            if cap == 0 {
                0.0
            } else {
                ((req as f64) / (cap as f64)).min(1.0)
            }
        };
        let cpu = frac(
            node.requested.milli_cpu + pod.requests.milli_cpu,
            node.allocatable.milli_cpu,
        );
        let mem = frac(
            node.requested.memory + pod.requests.memory,
            node.allocatable.memory,
        );
        let std = (cpu - mem).abs() / 2.0;
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    #[test]
    fn balanced_scores_higher() {
        let s = CycleState::default();
        let p = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}),
        );
        let even = node(
            "a",
            json!({}),
            json!({}),
            json!({"cpu": "4", "memory": "4Gi"}),
        );
        let skewed = node(
            "b",
            json!({}),
            json!({}),
            json!({"cpu": "2", "memory": "8Gi"}),
        );
        assert_eq!(BalancedAllocation.score(&s, &p, &even), 100);
        // cpu 0.5, memory 0.125 -> std 0.1875 -> 81
        assert_eq!(BalancedAllocation.score(&s, &p, &skewed), 81);
        assert_eq!(BalancedAllocation.score(&s, &pod(json!({})), &even), 0);
    }
}
