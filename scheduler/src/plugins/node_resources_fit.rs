//! NodeResourcesFit: requests must fit allocatable minus what is already placed (filter);
//! LeastAllocated scoring on cpu and memory (score).

use crate::framework::{
    Code, CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, PodInfo, ScorePlugin, Status,
};

/// The NodeResourcesFit filter and its LeastAllocated score strategy.
pub struct NodeResourcesFit;

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        let mut reasons = Vec::new();
        let mut unresolvable = false;
        if node.pods.len() as i64 + 1 > node.allowed_pods {
            reasons.push("Too many pods".into());
        }
        let req = &pod.requests;
        let alloc = &node.allocatable;
        let used = &node.requested;
        let mut check =
            |want: i64, have: i64, used: i64, reason: std::borrow::Cow<'static, str>| {
                if want > 0 && want > have - used {
                    reasons.push(reason);
                    unresolvable |= want > have;
                }
            };
        check(
            req.milli_cpu,
            alloc.milli_cpu,
            used.milli_cpu,
            "Insufficient cpu".into(),
        );
        check(
            req.memory,
            alloc.memory,
            used.memory,
            "Insufficient memory".into(),
        );
        check(
            req.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
            "Insufficient ephemeral-storage".into(),
        );
        for (name, want) in &req.scalar {
            let have = alloc.scalar.get(name).copied().unwrap_or(0);
            let u = used.scalar.get(name).copied().unwrap_or(0);
            check(*want, have, u, format!("Insufficient {name}").into());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            let code = if unresolvable {
                Code::UnschedulableAndUnresolvable
            } else {
                Code::Unschedulable
            };
            Err(Status { code, reasons })
        }
    }
}

/// `(capacity - requested) * 100 / capacity`, 0 when over capacity.
fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

impl ScorePlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let cpu = least_requested(
            node.non_zero_cpu + pod.non_zero_cpu,
            node.allocatable.milli_cpu,
        );
        let mem = least_requested(
            node.non_zero_memory + pod.non_zero_memory,
            node.allocatable.memory,
        );
        (cpu + mem) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn req(cpu: &str, mem: &str) -> PodInfo {
        pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}),
        )
    }

    #[test]
    fn insufficient_resources_reasons() {
        let s = CycleState::default();
        let mut n = node(
            "a",
            json!({}),
            json!({}),
            json!({"cpu": "2", "memory": "1Gi", "pods": "2", "example.com/gpu": "1"}),
        );
        place(
            &mut n,
            pod_labeled(
                "x",
                json!({}),
                json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1500m", "memory": "512Mi"}}}]}),
            ),
        );
        assert!(
            NodeResourcesFit
                .filter(&s, &req("500m", "512Mi"), &n)
                .is_ok()
        );
        let e = NodeResourcesFit
            .filter(&s, &req("501m", "513Mi"), &n)
            .unwrap_err();
        assert_eq!(e.reasons, vec!["Insufficient cpu", "Insufficient memory"]);
        assert_eq!(e.code, Code::Unschedulable);
        let e = NodeResourcesFit
            .filter(&s, &req("3", "1Mi"), &n)
            .unwrap_err();
        assert_eq!(
            e.code,
            Code::UnschedulableAndUnresolvable,
            "more than the whole node"
        );
        let gpu2 = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": "2"}}}]}),
        );
        assert_eq!(
            NodeResourcesFit.filter(&s, &gpu2, &n).unwrap_err().reasons,
            vec!["Insufficient example.com/gpu"]
        );
        let eph = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"ephemeral-storage": "1"}}}]}),
        );
        assert_eq!(
            NodeResourcesFit.filter(&s, &eph, &n).unwrap_err().reasons,
            vec!["Insufficient ephemeral-storage"]
        );
        place(&mut n, pod_labeled("y", json!({}), json!({})));
        assert_eq!(
            NodeResourcesFit
                .filter(&s, &pod(json!({})), &n)
                .unwrap_err()
                .reasons,
            vec!["Too many pods"]
        );
    }

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let s = CycleState::default();
        let p = req("1", "1Gi");
        let empty = node(
            "a",
            json!({}),
            json!({}),
            json!({"cpu": "4", "memory": "4Gi", "pods": "10"}),
        );
        let mut busy = empty.clone();
        place(&mut busy, req("2", "2Gi"));
        assert_eq!(NodeResourcesFit.score(&s, &p, &empty), 75);
        assert_eq!(NodeResourcesFit.score(&s, &p, &busy), 25);
    }
}
