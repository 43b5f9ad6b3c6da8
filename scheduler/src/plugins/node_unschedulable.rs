//! NodeUnschedulable: cordoned nodes (`spec.unschedulable`) take only pods tolerating
//! `node.kubernetes.io/unschedulable:NoSchedule`.

use k8s_openapi::api::core::v1::Taint;

use super::tolerated;
use crate::framework::{CycleState, FilterPlugin, NodeInfo, PodInfo, Status};

/// Reason worded as kube-scheduler's `ErrReasonUnschedulable`.
pub const ERR_REASON: &str = "node(s) were unschedulable";

/// The NodeUnschedulable filter.
pub struct NodeUnschedulable;

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        if !node.unschedulable {
            return Ok(());
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if tolerated(&pod.tolerations, &taint) {
            Ok(())
        } else {
            Err(Status::unresolvable(ERR_REASON))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    #[test]
    fn cordoned_nodes_reject_unless_tolerated() {
        let n = node("a", json!({}), json!({"unschedulable": true}), json!({}));
        let s = CycleState::default();
        assert_eq!(
            NodeUnschedulable.filter(&s, &pod(json!({})), &n),
            Err(Status::unresolvable(ERR_REASON))
        );
        let tol = pod(
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert!(NodeUnschedulable.filter(&s, &tol, &n).is_ok());
        assert!(
            NodeUnschedulable
                .filter(&s, &pod(json!({})), &plain_node("b"))
                .is_ok()
        );
    }
}
