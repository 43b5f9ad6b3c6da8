//! NodePorts: host ports must be free on the node.

use crate::framework::{CycleState, FilterPlugin, NodeInfo, PodInfo, Status};

/// Reason worded as kube-scheduler's `nodeports.ErrReason`.
pub const ERR_REASON: &str = "node(s) didn't have free ports for the requested pod ports";

/// The NodePorts filter.
pub struct NodePorts;

impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status> {
        let conflict = pod
            .host_ports
            .iter()
            .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
        if conflict {
            Err(Status::unschedulable(ERR_REASON))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn with_port(name: &str, port: serde_json::Value) -> PodInfo {
        pod_labeled(
            name,
            json!({}),
            json!({"containers": [{"name": "c", "ports": [port]}]}),
        )
    }

    #[test]
    fn host_port_conflicts() {
        let s = CycleState::default();
        let mut n = plain_node("a");
        place(
            &mut n,
            with_port("x", json!({"containerPort": 80, "hostPort": 8080})),
        );
        let same = with_port("y", json!({"containerPort": 81, "hostPort": 8080}));
        assert_eq!(
            NodePorts.filter(&s, &same, &n),
            Err(Status::unschedulable(ERR_REASON))
        );
        let udp = with_port(
            "y",
            json!({"containerPort": 81, "hostPort": 8080, "protocol": "UDP"}),
        );
        assert!(NodePorts.filter(&s, &udp, &n).is_ok());
        let ip = with_port(
            "y",
            json!({"containerPort": 81, "hostPort": 8080, "hostIP": "10.0.0.1"}),
        );
        assert!(
            NodePorts.filter(&s, &ip, &n).is_err(),
            "wildcard conflicts with a specific address"
        );
        let other = with_port("y", json!({"containerPort": 81, "hostPort": 9090}));
        assert!(NodePorts.filter(&s, &other, &n).is_ok());
        let no_host_port = with_port("y", json!({"containerPort": 8080}));
        assert!(NodePorts.filter(&s, &no_host_port, &n).is_ok());
    }
}
