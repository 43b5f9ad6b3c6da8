//! NodeName: a pod that names a node may only go there.

use crate::framework::{CycleState, FilterPlugin, NodeInfo, PodInfo, Status};

/// Reason worded as kube-scheduler's `nodename.ErrReason`.
pub const ERR_REASON: &str = "node(s) didn't match the requested node name";

/// The NodeName filter.
pub struct NodeName;

impl FilterPlugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        if pod.node_name.is_empty() || pod.node_name == node.name {
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
    fn only_the_named_node() {
        let p = pod(json!({"nodeName": "a"}));
        let s = CycleState::default();
        assert!(NodeName.filter(&s, &p, &plain_node("a")).is_ok());
        assert_eq!(
            NodeName.filter(&s, &p, &plain_node("b")),
            Err(Status::unresolvable(ERR_REASON))
        );
        assert!(
            NodeName
                .filter(&s, &pod(json!({})), &plain_node("b"))
                .is_ok()
        );
    }
}
