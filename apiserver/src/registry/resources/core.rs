//! core/v1 entries: pods and nodes (namespaces and configmaps live in `mod.rs`; services and
//! endpoints in `services.rs`, serviceaccounts and secrets in `secrets.rs`, core/v1 events in
//! `events.rs`, resourcequotas and limitranges in `quota.rs`).

use k8s_openapi::api::core::v1 as corev1;
use serde_json::{Value, json};

use super::pod;
use super::util::*;
use crate::registry::*;

// ---------------------------------------------------------------------------------------------
// pods

/// core/v1 pods.
pub const PODS: ResourceDef = ResourceDef {
    short_names: &["po"],
    return_deleted_object: true,
    categories: &["all"],
    subresources: &[
        Subresource::Status,
        Subresource::Binding,
        Subresource::Log,
        Subresource::Exec,
        Subresource::PortForward,
        Subresource::Eviction,
        Subresource::EphemeralContainers,
    ],
    has_status: true,
    defaults: pod::pod_defaults,
    validate: validate_pod,
    columns: &[
        NAME_COLUMN,
        col(
            "Ready",
            "string",
            0,
            "The aggregate readiness state of this pod for accepting traffic.",
        ),
        col(
            "Status",
            "string",
            0,
            "The aggregate status of the containers in this pod.",
        ),
        col(
            "Restarts",
            "string",
            0,
            "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        ),
        AGE_COLUMN,
        col(
            "IP",
            "string",
            1,
            "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
        ),
        col(
            "Node",
            "string",
            1,
            "NodeName indicates in which node this pod is scheduled.",
        ),
        col(
            "Nominated Node",
            "string",
            1,
            "nominatedNodeName is set only when this pod preempts other pods on the node.",
        ),
        col(
            "Readiness Gates",
            "string",
            1,
            "If specified, all readiness gates will be evaluated for pod readiness.",
        ),
    ],
    cells: pod_cells,
    field: pod_field,
    selectable_fields: &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ],
    strategy: Strategy {
        prepare_for_update: pod::prepare_for_update,
        graceful_delete: Some(pod::graceful_delete),
        ..Strategy::DEFAULT
    },
    ..def_of::<corev1::Pod>("", "v1", "Pod", "pods", "pod")
};

fn validate_pod(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let spec = o.get("spec").cloned().unwrap_or(Value::Null);
    let mut errs = pod::validate_pod_spec(&spec, "spec");
    match old {
        Some(old) => errs.extend(pod::validate_pod_update(o, old)),
        None => errs.extend(pod::validate_pod_create(o)),
    }
    errs
}

fn none_if_empty(v: &str) -> String {
    if v.is_empty() {
        "<none>".to_string()
    } else {
        v.to_string()
    }
}

/// The latest `lastState.terminated.finishedAt` over the pod's container statuses.
fn last_restart(o: &Value) -> Option<jiff::Timestamp> {
    arr(o, &["status", "containerStatuses"])
        .iter()
        .chain(arr(o, &["status", "initContainerStatuses"]))
        .filter_map(|c| fields::str_at(c, &["lastState", "terminated", "finishedAt"]))
        .filter_map(|t| t.parse::<jiff::Timestamp>().ok())
        .max()
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let (ready, status, restarts) = pod::pod_ready_status_restarts(o);
    let mut restarts_s = restarts.to_string();
    if restarts != 0
        && let Some(t) = last_restart(o)
    {
        let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
        restarts_s = format!("{restarts} ({} ago)", fields::human_duration(secs));
    }
    let ip = arr(o, &["status", "podIPs"])
        .first()
        .map(|p| s(p, &["ip"]))
        .unwrap_or("");
    vec![
        name_cell(o),
        cell(ready),
        cell(status),
        cell(restarts_s),
        age_cell(o),
        cell(none_if_empty(ip)),
        cell(none_if_empty(s(o, &["spec", "nodeName"]))),
        cell(none_if_empty(s(o, &["status", "nominatedNodeName"]))),
        cell(pod::readiness_gates(o)),
    ]
}

fn pod_field(o: &Value, f: &str) -> Option<String> {
    Some(match f {
        "spec.nodeName" => s(o, &["spec", "nodeName"]).to_string(),
        "spec.restartPolicy" => s(o, &["spec", "restartPolicy"]).to_string(),
        "spec.schedulerName" => s(o, &["spec", "schedulerName"]).to_string(),
        "spec.serviceAccountName" => s(o, &["spec", "serviceAccountName"]).to_string(),
        "spec.hostNetwork" => boolean(o, &["spec", "hostNetwork"]).to_string(),
        "status.phase" => s(o, &["status", "phase"]).to_string(),
        "status.podIP" => arr(o, &["status", "podIPs"])
            .first()
            .map(|p| s(p, &["ip"]))
            .unwrap_or_else(|| s(o, &["status", "podIP"]))
            .to_string(),
        "status.nominatedNodeName" => s(o, &["status", "nominatedNodeName"]).to_string(),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// nodes

/// core/v1 nodes (cluster-scoped; stored under `minions` like Kubernetes).
pub const NODES: ResourceDef = ResourceDef {
    namespaced: false,
    short_names: &["no"],
    storage_prefix: "minions",
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: node_defaults,
    validate: validate_node,
    columns: &[
        NAME_COLUMN,
        col("Status", "string", 0, "The status of the node"),
        col("Roles", "string", 0, "The roles of the node"),
        AGE_COLUMN,
        col(
            "Version",
            "string",
            0,
            "Kubelet Version reported by the node.",
        ),
        col(
            "Internal-IP",
            "string",
            1,
            "List of addresses reachable to the node.",
        ),
        col(
            "External-IP",
            "string",
            1,
            "List of addresses reachable to the node.",
        ),
        col(
            "OS-Image",
            "string",
            1,
            "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
        ),
        col(
            "Kernel-Version",
            "string",
            1,
            "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
        ),
        col(
            "Container-Runtime",
            "string",
            1,
            "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
        ),
    ],
    cells: node_cells,
    field: |o, f| match f {
        "spec.unschedulable" => Some(boolean(o, &["spec", "unschedulable"]).to_string()),
        _ => None,
    },
    selectable_fields: &["spec.unschedulable"],
    strategy: Strategy {
        prepare_for_create: keep_status,
        ..Strategy::DEFAULT
    },
    ..def_of::<corev1::Node>("", "v1", "Node", "nodes", "node")
};

fn node_defaults(o: &mut Value) {
    // SetDefaults_NodeStatus: allocatable defaults to capacity.
    if let Some(cap) = obj(o, &["status", "capacity"]).cloned()
        && !present(o, &["status", "allocatable"])
    {
        fields::ensure_object(o, &["status"]).insert("allocatable".into(), Value::Object(cap));
    }
}

fn validate_node(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, t) in arr(o, &["spec", "taints"]).iter().enumerate() {
        let p = format!("spec.taints[{i}]");
        let key = s(t, &["key"]);
        if key.is_empty() {
            errs.push(FieldError::required(format!("{p}.key"), ""));
        }
        match s(t, &["effect"]) {
            "NoSchedule" | "PreferNoSchedule" | "NoExecute" => {}
            "" => errs.push(FieldError::required(format!("{p}.effect"), "")),
            other => errs.push(FieldError::not_supported(
                format!("{p}.effect"),
                &json!(other),
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            )),
        }
    }
    if let Some(old) = old {
        let old_cidrs = arr(old, &["spec", "podCIDRs"]);
        if !old_cidrs.is_empty() && arr(o, &["spec", "podCIDRs"]) != old_cidrs {
            errs.push(FieldError::forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
        let old_pid = s(old, &["spec", "providerID"]);
        if !old_pid.is_empty() && s(o, &["spec", "providerID"]) != old_pid {
            errs.push(FieldError::forbidden(
                "spec.providerID",
                "node updates may not change providerID except from \"\" to valid",
            ));
        }
    }
    errs
}

fn node_address(o: &Value, ty: &str) -> String {
    arr(o, &["status", "addresses"])
        .iter()
        .find(|a| s(a, &["type"]) == ty)
        .map(|a| s(a, &["address"]).to_string())
        .unwrap_or_else(|| "<none>".to_string())
}

/// The node's STATUS cell (`Ready`, `NotReady`, `Unknown`, `,SchedulingDisabled`).
pub(crate) fn node_status(o: &Value) -> String {
    let mut status = Vec::new();
    if let Some(c) = arr(o, &["status", "conditions"])
        .iter()
        .find(|c| s(c, &["type"]) == "Ready")
    {
        status.push(if s(c, &["status"]) == "True" {
            "Ready"
        } else {
            "NotReady"
        });
    }
    if status.is_empty() {
        status.push("Unknown");
    }
    if boolean(o, &["spec", "unschedulable"]) {
        status.push("SchedulingDisabled");
    }
    status.join(",")
}

fn node_roles(o: &Value) -> String {
    let mut roles = std::collections::BTreeSet::new();
    if let Some(labels) = obj(o, &["metadata", "labels"]) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" && v.as_str().is_some_and(|v| !v.is_empty()) {
                roles.insert(v.as_str().unwrap_or("").to_string());
            }
        }
    }
    if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    }
}

fn unknown_if_empty(v: &str) -> String {
    if v.is_empty() {
        "<unknown>".to_string()
    } else {
        v.to_string()
    }
}

fn node_cells(o: &Value) -> Vec<Value> {
    vec![
        name_cell(o),
        cell(node_status(o)),
        cell(node_roles(o)),
        age_cell(o),
        cell(s(o, &["status", "nodeInfo", "kubeletVersion"])),
        cell(node_address(o, "InternalIP")),
        cell(node_address(o, "ExternalIP")),
        cell(unknown_if_empty(s(o, &["status", "nodeInfo", "osImage"]))),
        cell(unknown_if_empty(s(
            o,
            &["status", "nodeInfo", "kernelVersion"],
        ))),
        cell(unknown_if_empty(s(
            o,
            &["status", "nodeInfo", "containerRuntimeVersion"],
        ))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_cells_follow_kubectl() {
        let node = json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0"}}});
        let cells = node_cells(&node);
        assert_eq!(cells[1], "Ready,SchedulingDisabled");
        assert_eq!(cells[2], "control-plane");
        assert_eq!(cells[4], "v1.33.0");
        assert_eq!(cells[5], "10.0.0.1");
        assert_eq!(cells[6], "<none>");
        assert_eq!(cells[7], "<unknown>");
    }
}
