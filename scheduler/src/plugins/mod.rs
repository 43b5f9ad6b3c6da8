//! The filter and score plugins of the default Kubernetes profile, one file per plugin, plus the
//! toleration helpers they share (label and node selector matching is `lotse_core::selectors`).

pub mod balanced_allocation;
pub mod default_preemption;
pub mod image_locality;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod taint_toleration;
pub mod volume_binding;

use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::framework::{FilterPlugin, ScorePlugin};

/// Filters in the order kube-scheduler's default profile runs them; the first failure per node
/// is the one reported.
pub fn default_filters() -> Vec<Box<dyn FilterPlugin>> {
    vec![
        Box::new(node_unschedulable::NodeUnschedulable),
        Box::new(node_name::NodeName),
        Box::new(taint_toleration::TaintToleration),
        Box::new(node_affinity::NodeAffinity),
        Box::new(node_ports::NodePorts),
        Box::new(node_resources_fit::NodeResourcesFit),
        Box::new(volume_binding::VolumeBinding),
        Box::new(pod_topology_spread::PodTopologySpread),
        Box::new(inter_pod_affinity::InterPodAffinity),
    ]
}

/// Scores with the default profile's weights.
pub fn default_scores() -> Vec<Box<dyn ScorePlugin>> {
    vec![
        Box::new(taint_toleration::TaintToleration),
        Box::new(node_affinity::NodeAffinity),
        Box::new(node_resources_fit::NodeResourcesFit),
        Box::new(pod_topology_spread::PodTopologySpread),
        Box::new(inter_pod_affinity::InterPodAffinity),
        Box::new(balanced_allocation::BalancedAllocation),
        Box::new(image_locality::ImageLocality),
    ]
}

/// `Toleration.ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// True if any toleration tolerates the taint.
pub fn tolerated(ts: &[Toleration], taint: &Taint) -> bool {
    ts.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders for pods and nodes in plugin tests.
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{Value, json};

    use crate::framework::{NodeInfo, PodInfo};

    pub fn pod(spec: Value) -> PodInfo {
        pod_labeled("p", serde_json::Map::new().into(), spec)
    }

    pub fn pod_labeled(name: &str, labels: Value, spec: Value) -> PodInfo {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c"}]);
        }
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
            "spec": spec
        }))
        .unwrap();
        PodInfo::new(&p)
    }

    pub fn node(name: &str, labels: Value, spec: Value, alloc: Value) -> NodeInfo {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
            "status": {"allocatable": alloc}
        }))
        .unwrap();
        NodeInfo::new(&n)
    }

    pub fn plain_node(name: &str) -> NodeInfo {
        node(
            name,
            json!({"kubernetes.io/hostname": name}),
            json!({}),
            json!({"cpu": "4", "memory": "8Gi", "pods": "110"}),
        )
    }

    pub fn place(node: &mut NodeInfo, pod: PodInfo) {
        node.add_pod(Arc::new(pod));
    }
}
