//! core/v1 entries: pods, nodes, services, endpoints, serviceaccounts, secrets, events,
//! resourcequotas, limitranges (namespaces and configmaps live in `mod.rs`).

use k8s_openapi::api::core::v1 as corev1;
use lotse_core::names::{dns1123_label, dns1123_subdomain, max_len_error};
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

// ---------------------------------------------------------------------------------------------
// services

/// core/v1 services (stored under `services/specs` like Kubernetes).
pub const SERVICES: ResourceDef = ResourceDef {
    short_names: &["svc"],
    return_deleted_object: true,
    categories: &["all"],
    storage_prefix: "services/specs",
    name_rule: NameRule::Label1035,
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: service_defaults,
    validate: validate_service,
    columns: &[
        NAME_COLUMN,
        col(
            "Type",
            "string",
            0,
            "type determines how the Service is exposed. Defaults to ClusterIP.",
        ),
        col(
            "Cluster-IP",
            "string",
            0,
            "clusterIP is the IP address of the service and is usually assigned randomly.",
        ),
        col(
            "External-IP",
            "string",
            0,
            "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
        ),
        col(
            "Port(s)",
            "string",
            0,
            "The list of ports that are exposed by this service.",
        ),
        AGE_COLUMN,
        col(
            "Selector",
            "string",
            1,
            "Route service traffic to pods with label keys and values matching this selector.",
        ),
    ],
    cells: service_cells,
    field: |o, f| match f {
        "spec.clusterIP" => Some(s(o, &["spec", "clusterIP"]).to_string()),
        "spec.type" => Some(s(o, &["spec", "type"]).to_string()),
        _ => None,
    },
    selectable_fields: &["spec.clusterIP", "spec.type"],
    strategy: Strategy {
        allocates_service_addresses: true,
        ..Strategy::DEFAULT
    },
    ..def_of::<corev1::Service>("", "v1", "Service", "services", "service")
};

fn service_defaults(o: &mut Value) {
    // ServiceStatus.loadBalancer is not omitempty in Go: every Service carries
    // `status: {loadBalancer: {}}`, also right after create.
    fields::ensure_object(o, &["status", "loadBalancer"]);
    let spec = fields::ensure_object(o, &["spec"]);
    let affinity = spec
        .get("sessionAffinity")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if affinity.is_empty() {
        spec.insert("sessionAffinity".into(), json!("None"));
    }
    let affinity = spec
        .get("sessionAffinity")
        .and_then(Value::as_str)
        .unwrap_or("None")
        .to_string();
    if affinity == "None" {
        spec.remove("sessionAffinityConfig");
    } else if affinity == "ClientIP"
        && spec
            .get("sessionAffinityConfig")
            .and_then(|c| c.get("clientIP"))
            .and_then(|c| c.get("timeoutSeconds"))
            .is_none_or(Value::is_null)
    {
        spec.insert(
            "sessionAffinityConfig".into(),
            json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
    }
    if spec
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        spec.insert("type".into(), json!("ClusterIP"));
    }
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut() {
            if let Value::Object(p) = p {
                if p.get("protocol")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    p.insert("protocol".into(), json!("TCP"));
                }
                let tp = p.get("targetPort");
                let unset = tp.is_none_or(|t| t.is_null() || t == 0 || t == "");
                if unset && let Some(port) = p.get("port").cloned() {
                    p.insert("targetPort".into(), port);
                }
            }
        }
    }
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let externally_accessible =
        ty == "LoadBalancer" || ty == "NodePort" || (ty == "ClusterIP" && has_external_ips);
    if externally_accessible
        && spec
            .get("externalTrafficPolicy")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        spec.insert("externalTrafficPolicy".into(), json!("Cluster"));
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer" | "ClusterIP")
        && spec.get("internalTrafficPolicy").is_none_or(Value::is_null)
    {
        spec.insert("internalTrafficPolicy".into(), json!("Cluster"));
    }
    if ty == "LoadBalancer"
        && spec
            .get("allocateLoadBalancerNodePorts")
            .is_none_or(Value::is_null)
    {
        spec.insert("allocateLoadBalancerNodePorts".into(), json!(true));
    }
    // clusterIP / clusterIPs are kept in sync (the service REST layer's normalization).
    let cip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let cips_empty = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if !cip.is_empty() && cips_empty {
        spec.insert("clusterIPs".into(), json!([cip]));
    } else if cip.is_empty()
        && let Some(first) = spec
            .get("clusterIPs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .cloned()
    {
        spec.insert("clusterIP".into(), first);
    }
    // IP family defaults (the service REST layer's initIPFamilyFields on a single-stack IPv4
    // cluster).
    if ty != "ExternalName" {
        let cip = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let has_selector = spec
            .get("selector")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty());
        let headless_no_selector = cip == "None" && !has_selector;
        if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
            let policy = if headless_no_selector {
                "RequireDualStack"
            } else {
                "SingleStack"
            };
            spec.insert("ipFamilyPolicy".into(), json!(policy));
        }
        if spec
            .get("ipFamilies")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            let fam = if cip.contains(':') { "IPv6" } else { "IPv4" };
            let mut fams = vec![json!(fam)];
            if headless_no_selector
                && spec.get("ipFamilyPolicy").and_then(Value::as_str) != Some("SingleStack")
            {
                fams.push(json!(if fam == "IPv4" { "IPv6" } else { "IPv4" }));
            }
            spec.insert("ipFamilies".into(), Value::Array(fams));
        }
    }
}

fn validate_service(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ty = s(o, &["spec", "type"]);
    let cip = s(o, &["spec", "clusterIP"]);
    match ty {
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName" => {}
        "" => errs.push(FieldError::required("spec.type", "")),
        other => errs.push(FieldError::not_supported(
            "spec.type",
            &json!(other),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        )),
    }
    if ty == "ExternalName" {
        let en = s(o, &["spec", "externalName"]);
        if en.is_empty() {
            errs.push(FieldError::required("spec.externalName", ""));
        } else {
            push_invalid_all(
                &mut errs,
                "spec.externalName",
                &json!(en),
                dns1123_subdomain(en.trim_end_matches('.')),
            );
        }
    }
    match s(o, &["spec", "sessionAffinity"]) {
        "None" | "ClientIP" => {}
        "" => errs.push(FieldError::required("spec.sessionAffinity", "")),
        other => errs.push(FieldError::not_supported(
            "spec.sessionAffinity",
            &json!(other),
            &["ClientIP", "None"],
        )),
    }
    let ports = arr(o, &["spec", "ports"]);
    let headless = cip == "None";
    if ports.is_empty() && !headless && ty != "ExternalName" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let require_name = ports.len() > 1;
    let mut names = std::collections::HashSet::new();
    let mut port_protos = std::collections::HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let name = s(p, &["name"]);
        if name.is_empty() {
            if require_name {
                errs.push(FieldError::required(format!("{pp}.name"), ""));
            }
        } else {
            push_invalid_all(
                &mut errs,
                &format!("{pp}.name"),
                &json!(name),
                dns1123_label(name),
            );
            if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), &json!(name)));
            }
        }
        let port = int(p, &["port"]);
        push_invalid_all(
            &mut errs,
            &format!("{pp}.port"),
            &json!(port),
            port_num_errors(port),
        );
        let proto = s(p, &["protocol"]);
        match proto {
            "TCP" | "UDP" | "SCTP" => {}
            "" => errs.push(FieldError::required(format!("{pp}.protocol"), "")),
            other => errs.push(FieldError::not_supported(
                format!("{pp}.protocol"),
                &json!(other),
                &["SCTP", "TCP", "UDP"],
            )),
        }
        if !port_protos.insert((port, proto.to_string())) {
            errs.push(FieldError::duplicate(
                pp.clone(),
                &json!({"port": port, "protocol": proto}),
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                push_invalid_all(
                    &mut errs,
                    &format!("{pp}.targetPort"),
                    &json!(n),
                    port_num_errors(n),
                );
            }
            Some(Value::String(t)) => {
                push_invalid_all(
                    &mut errs,
                    &format!("{pp}.targetPort"),
                    &json!(t),
                    port_name_errors(t),
                );
            }
            _ => {}
        }
        let node_port = int(p, &["nodePort"]);
        if node_port != 0 {
            if ty == "ClusterIP" || ty == "ExternalName" {
                errs.push(FieldError::forbidden(
                    format!("{pp}.nodePort"),
                    &format!("may not be used when `type` is '{ty}'"),
                ));
            } else {
                push_invalid_all(
                    &mut errs,
                    &format!("{pp}.nodePort"),
                    &json!(node_port),
                    port_num_errors(node_port),
                );
            }
        }
    }
    if let Some(ports_sel) = obj(o, &["spec", "selector"]) {
        for (k, v) in ports_sel {
            if v.as_str().is_none() {
                errs.push(FieldError::invalid(
                    format!("spec.selector[{k}]"),
                    v,
                    "must be a string",
                ));
            }
        }
    }
    if let Some(old) = old {
        let old_ty = s(old, &["spec", "type"]);
        if ty != "ExternalName" && old_ty != "ExternalName" {
            let new_ips = arr(o, &["spec", "clusterIPs"]);
            let old_ips = arr(old, &["spec", "clusterIPs"]);
            if !new_ips.is_empty() && new_ips.len() == old_ips.len() {
                for (i, ip) in old_ips.iter().enumerate() {
                    if new_ips.get(i) != Some(ip) {
                        errs.push(invalid_raw(
                            format!("spec.clusterIPs[{i}]"),
                            &go_string_slice(fields::at(o, &["spec", "clusterIPs"])),
                            "may not change once set",
                        ));
                    }
                }
            } else if !new_ips.is_empty()
                && !old_ips.is_empty()
                && new_ips.first() != old_ips.first()
            {
                errs.push(invalid_raw(
                    "spec.clusterIPs[0]",
                    &go_string_slice(fields::at(o, &["spec", "clusterIPs"])),
                    "may not change once set",
                ));
            }
        }
    }
    errs
}

/// kubectl's `makePortString`: `80/TCP`, `80:30080/TCP`, comma-joined.
pub(crate) fn service_ports(o: &Value) -> String {
    arr(o, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int(p, &["port"]);
            let proto = s(p, &["protocol"]);
            let np = int(p, &["nodePort"]);
            if np > 0 {
                format!("{port}:{np}/{proto}")
            } else {
                format!("{port}/{proto}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn service_external_ip(o: &Value) -> String {
    let ext: Vec<&str> = arr(o, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match s(o, &["spec", "type"]) {
        "ClusterIP" | "NodePort" => {
            if ext.is_empty() {
                "<none>".to_string()
            } else {
                ext.join(",")
            }
        }
        "LoadBalancer" => {
            let mut lb: Vec<String> = arr(o, &["status", "loadBalancer", "ingress"])
                .iter()
                .filter_map(|i| {
                    let ip = s(i, &["ip"]);
                    let host = s(i, &["hostname"]);
                    if !ip.is_empty() {
                        Some(ip.to_string())
                    } else if !host.is_empty() {
                        Some(host.to_string())
                    } else {
                        None
                    }
                })
                .collect();
            lb.sort();
            lb.dedup();
            if !ext.is_empty() {
                lb.extend(ext.iter().map(|e| e.to_string()));
                return lb.join(",");
            }
            if lb.is_empty() {
                "<pending>".to_string()
            } else {
                lb.join(",")
            }
        }
        "ExternalName" => s(o, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    }
}

fn service_cells(o: &Value) -> Vec<Value> {
    let cluster_ip = arr(o, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| "<none>".to_string());
    let ports = service_ports(o);
    vec![
        name_cell(o),
        cell(s(o, &["spec", "type"])),
        cell(cluster_ip),
        cell(service_external_ip(o)),
        cell(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports
        }),
        age_cell(o),
        cell(format_labels(obj(o, &["spec", "selector"]))),
    ]
}

// ---------------------------------------------------------------------------------------------
// endpoints

/// core/v1 endpoints (stored under `services/endpoints` like Kubernetes).
pub const ENDPOINTS: ResourceDef = ResourceDef {
    short_names: &["ep"],
    storage_prefix: "services/endpoints",
    defaults: |o| {
        if let Some(Value::Array(subsets)) = o.get_mut("subsets") {
            for ss in subsets.iter_mut() {
                if let Some(Value::Array(ports)) = ss.get_mut("ports") {
                    for p in ports.iter_mut() {
                        fields::default_at(p, &[], "protocol", json!("TCP"));
                    }
                }
            }
        }
    },
    validate: validate_endpoints,
    columns: &[
        NAME_COLUMN,
        col(
            "Endpoints",
            "string",
            0,
            "The set of all endpoints is the union of all subsets.",
        ),
        AGE_COLUMN,
    ],
    cells: |o| vec![name_cell(o), cell(format_endpoints(o)), age_cell(o)],
    ..def_of::<corev1::Endpoints>("", "v1", "Endpoints", "endpoints", "endpoints")
};

fn validate_endpoints(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, ss) in arr(o, &["subsets"]).iter().enumerate() {
        let sp = format!("subsets[{i}]");
        for key in ["addresses", "notReadyAddresses"] {
            for (j, a) in arr(ss, &[key]).iter().enumerate() {
                let ip = s(a, &["ip"]);
                if ip.parse::<std::net::IpAddr>().is_err() {
                    errs.push(FieldError::invalid(
                        format!("{sp}.{key}[{j}].ip"),
                        &json!(ip),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    ));
                }
            }
        }
        let ports = arr(ss, &["ports"]);
        for (j, p) in ports.iter().enumerate() {
            let pp = format!("{sp}.ports[{j}]");
            let name = s(p, &["name"]);
            if name.is_empty() {
                if ports.len() > 1 {
                    errs.push(FieldError::required(format!("{pp}.name"), ""));
                }
            } else {
                push_invalid_all(
                    &mut errs,
                    &format!("{pp}.name"),
                    &json!(name),
                    dns1123_label(name),
                );
            }
            let port = int(p, &["port"]);
            push_invalid_all(
                &mut errs,
                &format!("{pp}.port"),
                &json!(port),
                port_num_errors(port),
            );
            match s(p, &["protocol"]) {
                "TCP" | "UDP" | "SCTP" => {}
                "" => errs.push(FieldError::required(format!("{pp}.protocol"), "")),
                other => errs.push(FieldError::not_supported(
                    format!("{pp}.protocol"),
                    &json!(other),
                    &["SCTP", "TCP", "UDP"],
                )),
            }
        }
    }
    errs
}

/// kubectl's `formatEndpoints` (at most 3 entries, then `+ N more...`).
pub(crate) fn format_endpoints(o: &Value) -> String {
    let subsets = arr(o, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let max = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addrs = arr(ss, &["addresses"]);
        let ports = arr(ss, &["ports"]);
        if ports.is_empty() {
            count += addrs.len();
            for a in addrs {
                if list.len() == max {
                    more = true;
                    break;
                }
                list.push(s(a, &["ip"]).to_string());
            }
            continue;
        }
        for p in ports {
            count += addrs.len();
            for a in addrs {
                if list.len() == max {
                    more = true;
                    break;
                }
                let ip = s(a, &["ip"]);
                let port = int(p, &["port"]);
                list.push(if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                });
            }
        }
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - max)
    } else {
        ret
    }
}

// ---------------------------------------------------------------------------------------------
// serviceaccounts

/// core/v1 serviceaccounts.
pub const SERVICEACCOUNTS: ResourceDef = ResourceDef {
    short_names: &["sa"],
    return_deleted_object: true,
    subresources: &[Subresource::Token],
    columns: &[
        NAME_COLUMN,
        col(
            "Secrets",
            "string",
            0,
            "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
        ),
        AGE_COLUMN,
    ],
    cells: |o| {
        vec![
            name_cell(o),
            Value::from(arr(o, &["secrets"]).len()),
            age_cell(o),
        ]
    },
    ..def_of::<corev1::ServiceAccount>(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
    )
};

// ---------------------------------------------------------------------------------------------
// secrets

/// `stringData` is write-only: its entries are base64-encoded into `data` (overriding keys of
/// the same name) and the field is dropped, as Kubernetes' conversion does on every write.
fn merge_string_data(o: &mut Value) {
    use base64::Engine as _;
    let Value::Object(m) = o else { return };
    let Some(Value::Object(sd)) = m.remove("stringData") else {
        return;
    };
    if sd.is_empty() {
        return;
    }
    let data = m
        .entry("data")
        .or_insert_with(|| Value::Object(Default::default()));
    if !data.is_object() {
        *data = Value::Object(Default::default());
    }
    if let Value::Object(d) = data {
        for (k, v) in sd {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            d.insert(
                k,
                Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

/// core/v1 secrets.
pub const SECRETS: ResourceDef = ResourceDef {
    defaults: |o| {
        merge_string_data(o);
        if let Value::Object(m) = o
            && m.get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            m.insert("type".into(), json!("Opaque"));
        }
    },
    validate: validate_secret,
    columns: &[
        NAME_COLUMN,
        col(
            "Type",
            "string",
            0,
            "Used to facilitate programmatic handling of secret data.",
        ),
        col("Data", "string", 0, "Data contains the secret data."),
        AGE_COLUMN,
    ],
    cells: |o| {
        let n = obj(o, &["data"]).map(|m| m.len()).unwrap_or(0);
        vec![
            name_cell(o),
            cell(s(o, &["type"])),
            Value::from(n),
            age_cell(o),
        ]
    },
    field: |o, f| match f {
        "type" => Some(s(o, &["type"]).to_string()),
        _ => None,
    },
    selectable_fields: &["type"],
    ..def_of::<corev1::Secret>("", "v1", "Secret", "secrets", "secret")
};

/// `IsConfigMapKey` messages.
pub(crate) fn config_key_errors(k: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if k.len() > 253 {
        errs.push(max_len_error(253));
    }
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        errs.push("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".to_string());
    }
    if k == "." {
        errs.push("must not be '.'".to_string());
    } else if k == ".." {
        errs.push("must not be '..'".to_string());
    } else if k.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

fn validate_secret(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(data) = obj(o, &["data"]) {
        for k in data.keys() {
            push_invalid_all(
                &mut errs,
                &format!("data[{k}]"),
                &json!(k),
                config_key_errors(k),
            );
        }
    }
    let has = |k: &str| obj(o, &["data"]).is_some_and(|d| d.contains_key(k));
    let ty = s(o, &["type"]);
    let sa_name = &[
        "metadata",
        "annotations",
        "kubernetes.io/service-account.name",
    ];
    let required: &[(&str, &str)] = match ty {
        "kubernetes.io/service-account-token" if s(o, sa_name).is_empty() => &[(
            "metadata.annotations[kubernetes.io/service-account.name]",
            "",
        )],
        "kubernetes.io/dockercfg" if !has(".dockercfg") => &[("data[.dockercfg]", "")],
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            &[("data[.dockerconfigjson]", "")]
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => &[(
            "data[username]",
            "must specify at least one of username or password",
        )],
        "kubernetes.io/ssh-auth" if !has("ssh-privatekey") => &[("data[ssh-privatekey]", "")],
        "kubernetes.io/tls" => match (has("tls.crt"), has("tls.key")) {
            (false, false) => &[("data[tls.crt]", ""), ("data[tls.key]", "")],
            (false, true) => &[("data[tls.crt]", "")],
            (true, false) => &[("data[tls.key]", "")],
            (true, true) => &[],
        },
        _ => &[],
    };
    for (f, d) in required {
        errs.push(FieldError::required(*f, d));
    }
    if let Some(old) = old {
        immutable(&mut errs, "type", o.get("type"), old.get("type"));
    }
    immutable_once_set(&mut errs, o, old, &["data"]);
    errs
}

// ---------------------------------------------------------------------------------------------
// events (core/v1)

/// core/v1 events. Stored under `events` (Kubernetes stores core and events.k8s.io Events as the
/// same objects; here events.k8s.io has its own prefix, see `events.rs`).
pub const EVENTS: ResourceDef = ResourceDef {
    short_names: &["ev"],
    validate: validate_core_event,
    columns: EVENT_COLUMNS,
    cells: core_event_cells,
    field: core_event_field,
    selectable_fields: EVENT_SELECTABLE,
    ..def_of::<corev1::Event>("", "v1", "Event", "events", "event")
};

/// The event table columns (shared with events.k8s.io).
pub(crate) const EVENT_COLUMNS: &[Column] = &[
    col(
        "Last Seen",
        "string",
        0,
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    col(
        "Type",
        "string",
        0,
        "Type of this event (Normal, Warning), new types could be added in the future",
    ),
    col(
        "Reason",
        "string",
        0,
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    col(
        "Object",
        "string",
        0,
        "The object that this event is about.",
    ),
    col(
        "Subobject",
        "string",
        1,
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
    ),
    col(
        "Source",
        "string",
        1,
        "The component reporting this event. Should be a short machine understandable string.",
    ),
    col(
        "Message",
        "string",
        0,
        "A human-readable description of the status of this operation.",
    ),
    col(
        "First Seen",
        "string",
        1,
        "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
    ),
    col(
        "Count",
        "string",
        1,
        "The number of times this event has occurred.",
    ),
    Column {
        priority: 1,
        ..NAME_COLUMN
    },
];

/// Field selectors of core/v1 events.
pub(crate) const EVENT_SELECTABLE: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

fn validate_core_event(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ns = fields::namespace(o);
    let ino = s(o, &["involvedObject", "namespace"]);
    if !ns.is_empty() && !ino.is_empty() && ns != ino {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            &json!(ino),
            "does not match event.namespace",
        ));
    }
    let ty = s(o, &["type"]);
    if (!s(o, &["reportingComponent"]).is_empty() || present(o, &["eventTime"]))
        && ty != "Normal"
        && ty != "Warning"
    {
        errs.push(FieldError::invalid(
            "type",
            &json!(ty),
            "has invalid value: expected Normal or Warning",
        ));
    }
    errs
}

fn since(ts: &str) -> String {
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => {
            fields::human_duration((jiff::Timestamp::now().as_second() - t.as_second()).max(0))
        }
        Err(_) => "<unknown>".to_string(),
    }
}

/// The event row from core/v1-shaped fields (`printEvent`).
pub(crate) fn core_event_cells(o: &Value) -> Vec<Value> {
    let first_ts = s(o, &["firstTimestamp"]);
    let first = if first_ts.is_empty() {
        since(s(o, &["eventTime"]))
    } else {
        since(first_ts)
    };
    let last_ts = s(o, &["lastTimestamp"]);
    let mut last = if last_ts.is_empty() {
        first.clone()
    } else {
        since(last_ts)
    };
    let mut count = int(o, &["count"]);
    if present(o, &["series"]) {
        last = since(s(o, &["series", "lastObservedTime"]));
        count = int(o, &["series", "count"]);
    } else if count == 0 {
        count = 1;
    }
    let kind = lower(s(o, &["involvedObject", "kind"]));
    let name = s(o, &["involvedObject", "name"]);
    let target = if name.is_empty() {
        kind
    } else {
        format!("{kind}/{name}")
    };
    let component = match s(o, &["source", "component"]) {
        "" => s(o, &["reportingComponent"]),
        c => c,
    };
    let host = match s(o, &["source", "host"]) {
        "" => s(o, &["reportingInstance"]),
        h => h,
    };
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    vec![
        cell(last),
        cell(s(o, &["type"])),
        cell(s(o, &["reason"])),
        cell(target),
        cell(s(o, &["involvedObject", "fieldPath"])),
        cell(source),
        cell(s(o, &["message"]).trim()),
        cell(first),
        Value::from(count),
        name_cell(o),
    ]
}

/// Field selector values of a core/v1-shaped event.
pub(crate) fn core_event_field(o: &Value, f: &str) -> Option<String> {
    if let Some(v) = object_reference_field(o, "involvedObject", f) {
        return Some(v.to_string());
    }
    let v = match f {
        "reason" => s(o, &["reason"]),
        "reportingComponent" => s(o, &["reportingComponent"]),
        "source" => match s(o, &["source", "component"]) {
            "" => s(o, &["reportingComponent"]),
            c => c,
        },
        "type" => s(o, &["type"]),
        _ => return None,
    };
    Some(v.to_string())
}

// ---------------------------------------------------------------------------------------------
// resourcequotas

/// core/v1 resourcequotas.
pub const RESOURCEQUOTAS: ResourceDef = ResourceDef {
    short_names: &["quota"],
    subresources: &[Subresource::Status],
    has_status: true,
    validate: validate_quota,
    columns: &[
        NAME_COLUMN,
        col(
            "Request",
            "string",
            0,
            "Request represents a minimum amount of cpu/memory that a container may consume.",
        ),
        col(
            "Limit",
            "string",
            0,
            "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
        ),
        AGE_COLUMN,
    ],
    cells: quota_cells,
    strategy: Strategy {
        tracks_generation: true,
        ..Strategy::DEFAULT
    },
    ..def_of::<corev1::ResourceQuota>("", "v1", "ResourceQuota", "resourcequotas", "resourcequota")
};

/// Resource names Kubernetes' quota system knows (`IsStandardQuotaResourceName`), besides the
/// `hugepages-*` / `requests.hugepages-*` ones.
const STANDARD_QUOTA_RESOURCES: &[&str] = &[
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "persistentvolumeclaims",
    "configmaps",
    "services.nodeports",
    "services.loadbalancers",
];

/// Resource names without a `/` that are valid at all (`IsStandardResourceName`); `storage` is
/// one, but not a quota resource.
fn is_standard_resource_name(k: &str) -> bool {
    k == "storage" || is_standard_quota_resource(k)
}

fn is_standard_quota_resource(k: &str) -> bool {
    STANDARD_QUOTA_RESOURCES.contains(&k)
        || k.starts_with("hugepages-")
        || k.starts_with("requests.hugepages-")
}

/// The quota scopes Kubernetes knows (`IsStandardResourceQuotaScope`).
const QUOTA_SCOPES: &[&str] = &[
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
    "VolumeAttributesClass",
];

/// Whether a quota scope can constrain a resource (`IsResourceQuotaScopeValidForResource`):
/// pod scopes only pod counts and compute, BestEffort only the pod count.
fn scope_valid_for_resource(scope: &str, resource: &str) -> bool {
    const POD_COMPUTE: &[&str] = &[
        "cpu",
        "memory",
        "limits.cpu",
        "limits.memory",
        "requests.cpu",
        "requests.memory",
    ];
    match scope {
        "Terminating"
        | "NotTerminating"
        | "NotBestEffort"
        | "PriorityClass"
        | "CrossNamespacePodAffinity" => resource == "pods" || POD_COMPUTE.contains(&resource),
        "BestEffort" => resource == "pods",
        "VolumeAttributesClass" => {
            resource == "persistentvolumeclaims" || resource == "requests.storage"
        }
        _ => true,
    }
}

/// Go's `%#v` of the internal `[]core.ResourceQuotaScope`.
fn go_scopes(v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        None => "[]core.ResourceQuotaScope(nil)".to_string(),
        Some(a) => {
            let body = a
                .iter()
                .map(|x| go_quote(x.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", ");
            format!("[]core.ResourceQuotaScope{{{body}}}")
        }
    }
}

/// Go's `%#v` of the internal `core.ScopeSelector`.
fn go_scope_selector(sel: &Value) -> String {
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]core.ScopedResourceSelectorRequirement(nil)".to_string(),
        Some(a) => {
            let body = a
                .iter()
                .map(|e| {
                    format!(
                        "core.ScopedResourceSelectorRequirement{{ScopeName:{}, Operator:{}, Values:{}}}",
                        go_quote(s(e, &["scopeName"])),
                        go_quote(s(e, &["operator"])),
                        go_string_slice(e.get("values"))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("[]core.ScopedResourceSelectorRequirement{{{body}}}")
        }
    };
    format!("core.ScopeSelector{{MatchExpressions:{exprs}}}")
}

/// Kubernetes' `ValidateResourceQuotaResourceName` for one `hard`/`used` key.
fn validate_quota_resource_name(errs: &mut Vec<FieldError>, path: &str, k: &str) {
    if k.contains('/') {
        return;
    }
    let key = json!(k);
    if !is_standard_resource_name(k) {
        errs.push(FieldError::invalid(
            path,
            &key,
            "must be a standard resource type or fully qualified",
        ));
    }
    if !is_standard_quota_resource(k) {
        errs.push(FieldError::invalid(
            path,
            &key,
            "must be a standard resource for quota",
        ));
    }
}

fn validate_quota_resources(errs: &mut Vec<FieldError>, o: &Value, path: &[&str], field: &str) {
    let Some(list) = obj(o, path) else { return };
    // Kubernetes walks a Go map (no order); sorted keys keep the messages stable.
    let mut entries: Vec<(&String, &Value)> = list.iter().collect();
    entries.sort_unstable_by_key(|(k, _)| k.as_str());
    for (k, v) in entries {
        let p = format!("{field}[{k}]");
        validate_quota_resource_name(errs, &p, k);
        if v.as_str().is_some_and(|q| q.starts_with('-')) {
            errs.push(FieldError::invalid(
                p,
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// Kubernetes' `ValidateResourceQuota`: resource names and quantities in `spec.hard` and the
/// status, scopes (known, applicable to every standard hard resource, not conflicting) and the
/// scope selector (the same, plus operator/values rules), with Kubernetes' messages.
fn validate_quota(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_quota_resources(&mut errs, o, &["spec", "hard"], "spec.hard");
    // Hard resources in sorted order, as Kubernetes iterates them.
    let mut hard: Vec<&str> = obj(o, &["spec", "hard"])
        .map(|h| h.keys().map(String::as_str).collect())
        .unwrap_or_default();
    hard.sort_unstable();
    let standard_hard: Vec<&str> = hard
        .into_iter()
        .filter(|k| is_standard_quota_resource(k))
        .collect();
    const CONFLICTS: &[(&str, &str)] = &[
        ("BestEffort", "NotBestEffort"),
        ("Terminating", "NotTerminating"),
    ];
    let scopes_value = o.pointer("/spec/scopes");
    let scopes: Vec<&str> = arr(o, &["spec", "scopes"])
        .iter()
        .map(|v| v.as_str().unwrap_or(""))
        .collect();
    if !scopes.is_empty() {
        let rendered = go_scopes(scopes_value);
        for scope in &scopes {
            if !QUOTA_SCOPES.contains(scope) {
                errs.push(invalid_raw("spec.scopes", &rendered, "unsupported scope"));
            }
            for k in &standard_hard {
                if !scope_valid_for_resource(scope, k) {
                    errs.push(invalid_raw(
                        "spec.scopes",
                        &rendered,
                        "unsupported scope applied to resource",
                    ));
                }
            }
        }
        for (a, b) in CONFLICTS {
            if scopes.contains(a) && scopes.contains(b) {
                errs.push(invalid_raw("spec.scopes", &rendered, "conflicting scopes"));
            }
        }
    }
    if let Some(sel) = o.pointer("/spec/scopeSelector").filter(|v| !v.is_null()) {
        let base = "spec.scopeSelector.matchExpressions";
        let rendered_sel = go_scope_selector(sel);
        let mut seen = Vec::new();
        for req in arr(sel, &["matchExpressions"]) {
            let scope = s(req, &["scopeName"]);
            let op = s(req, &["operator"]);
            let values = arr(req, &["values"]);
            if !QUOTA_SCOPES.contains(&scope) {
                errs.push(FieldError::invalid(
                    format!("{base}.scopeName"),
                    &json!(scope),
                    "unsupported scope",
                ));
            }
            for k in &standard_hard {
                if !scope_valid_for_resource(scope, k) {
                    errs.push(invalid_raw(
                        base,
                        &rendered_sel,
                        "unsupported scope applied to resource",
                    ));
                }
            }
            if matches!(
                scope,
                "BestEffort"
                    | "NotBestEffort"
                    | "Terminating"
                    | "NotTerminating"
                    | "CrossNamespacePodAffinity"
            ) && op != "Exists"
            {
                errs.push(FieldError::invalid(
                    format!("{base}.operator"),
                    &json!(op),
                    "must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity",
                ));
            }
            match op {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        errs.push(FieldError::required(
                            format!("{base}.values"),
                            "must be at least one value when `operator` is 'In' or 'NotIn' for scope selector",
                        ));
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        errs.push(invalid_raw(
                            format!("{base}.values"),
                            &go_string_slice(req.get("values")),
                            "must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector",
                        ));
                    }
                }
                _ => errs.push(FieldError::invalid(
                    format!("{base}.operator"),
                    &json!(op),
                    "not a valid selector operator",
                )),
            }
            seen.push(scope);
        }
        for (a, b) in CONFLICTS {
            if seen.contains(a) && seen.contains(b) {
                errs.push(invalid_raw(
                    base,
                    &go_scopes(scopes_value),
                    "conflicting scopes",
                ));
            }
        }
    }
    if let Some(old) = old {
        // Scopes are fixed at creation (compared as sets).
        fn set(v: &Value) -> Vec<&str> {
            let mut s: Vec<&str> = arr(v, &["spec", "scopes"])
                .iter()
                .map(|x| x.as_str().unwrap_or(""))
                .collect();
            s.sort_unstable();
            s.dedup();
            s
        }
        if set(o) != set(old) {
            errs.push(invalid_raw(
                "spec.scopes",
                &go_scopes(scopes_value),
                "field is immutable",
            ));
        }
    }
    validate_quota_resources(&mut errs, o, &["status", "hard"], "status.hard");
    validate_quota_resources(&mut errs, o, &["status", "used"], "status.used");
    errs
}

fn quota_cells(o: &Value) -> Vec<Value> {
    let hard = obj(o, &["status", "hard"]);
    let used = obj(o, &["status", "used"]);
    let mut keys: Vec<&String> = hard.map(|h| h.keys().collect()).unwrap_or_default();
    keys.sort();
    let mut req = Vec::new();
    let mut lim = Vec::new();
    for k in keys {
        let h = hard
            .and_then(|h| h.get(k))
            .and_then(Value::as_str)
            .unwrap_or("0");
        let u = used
            .and_then(|u| u.get(k))
            .and_then(Value::as_str)
            .unwrap_or("0");
        let entry = format!("{k}: {u}/{h}");
        let pieces: Vec<&str> = k.split('.').collect();
        if pieces.len() > 1 && pieces[0] == "limits" {
            lim.push(entry)
        } else {
            req.push(entry)
        }
    }
    vec![
        name_cell(o),
        cell(req.join(", ")),
        cell(lim.join(", ")),
        age_cell(o),
    ]
}

// ---------------------------------------------------------------------------------------------
// limitranges

/// core/v1 limitranges.
pub const LIMITRANGES: ResourceDef = ResourceDef {
    short_names: &["limits"],
    defaults: limitrange_defaults,
    validate: validate_limitrange,
    ..def_of::<corev1::LimitRange>("", "v1", "LimitRange", "limitranges", "limitrange")
};

fn limitrange_defaults(o: &mut Value) {
    let Some(Value::Array(limits)) = o.get_mut("spec").and_then(|s| s.get_mut("limits")) else {
        return;
    };
    for item in limits.iter_mut() {
        let Value::Object(m) = item else { continue };
        if m.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let get = |m: &serde_json::Map<String, Value>, k: &str| {
            m.get(k)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let max = get(m, "max");
        let min = get(m, "min");
        let mut default = get(m, "default");
        let mut default_request = get(m, "defaultRequest");
        for (k, v) in max {
            default.entry(k).or_insert(v);
        }
        for (k, v) in default.clone() {
            default_request.entry(k).or_insert(v);
        }
        for (k, v) in min {
            default_request.entry(k).or_insert(v);
        }
        if !default.is_empty() {
            m.insert("default".into(), Value::Object(default));
        }
        if !default_request.is_empty() {
            m.insert("defaultRequest".into(), Value::Object(default_request));
        }
    }
}

/// Kubernetes' `validateLimitRangeResourceName` for Container and Pod items: a standard resource
/// name that containers can request (names with a `/` are not checked here).
fn validate_limit_resource_name(errs: &mut Vec<FieldError>, ty: &str, path: &str, k: &str) {
    if k.contains('/') || !matches!(ty, "Container" | "Pod") {
        return;
    }
    let key = json!(k);
    if !is_standard_resource_name(k) {
        errs.push(FieldError::invalid(
            path,
            &key,
            "must be a standard resource type or fully qualified",
        ));
    }
    if !matches!(k, "cpu" | "memory" | "ephemeral-storage") && !k.starts_with("hugepages-") {
        errs.push(FieldError::invalid(
            path,
            &key,
            "must be a standard resource for containers",
        ));
    }
}

/// Kubernetes' `ValidateLimitRange`: known types, one item per type, no defaults for Pod items,
/// valid resource names, and min ≤ defaultRequest ≤ default ≤ max, ratio ≥ 1 and ≤ max/min.
fn validate_limitrange(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    use lotse_core::Quantity;
    let mut errs = Vec::new();
    let mut types: Vec<&str> = Vec::new();
    for (i, item) in arr(o, &["spec", "limits"]).iter().enumerate() {
        let idx = format!("spec.limits[{i}]");
        let ty = s(item, &["type"]);
        if ty.is_empty() {
            errs.push(FieldError::required(format!("{idx}.type"), ""));
        } else if !ty.contains('/') && !matches!(ty, "Pod" | "Container" | "PersistentVolumeClaim")
        {
            errs.push(FieldError::invalid(
                format!("{idx}.type"),
                &json!(ty),
                "must be a standard limit type or fully qualified",
            ));
        }
        if types.contains(&ty) {
            errs.push(FieldError::duplicate(format!("{idx}.type"), &json!(ty)));
        }
        types.push(ty);
        // Quantities per section, keys sorted (Kubernetes walks Go maps).
        let section = |name: &str| -> Vec<(String, Quantity)> {
            let mut v: Vec<(String, Quantity)> = obj(item, &[name])
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, q)| Some((k.clone(), Quantity::from_json(q)?)))
                        .collect()
                })
                .unwrap_or_default();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let max = section("max");
        let min = section("min");
        let mut default = section("default");
        let mut default_request = section("defaultRequest");
        let ratio = section("maxLimitRequestRatio");
        for (name, list) in [("max", &max), ("min", &min)] {
            for (k, _) in list {
                validate_limit_resource_name(&mut errs, ty, &format!("{idx}.{name}[{k}]"), k);
            }
        }
        if ty == "Pod" {
            for name in ["default", "defaultRequest"] {
                if obj(item, &[name]).is_some_and(|m| !m.is_empty()) {
                    errs.push(FieldError::forbidden(
                        format!("{idx}.{name}"),
                        "may not be specified when `type` is 'Pod'",
                    ));
                }
            }
            default.clear();
            default_request.clear();
        } else {
            for (name, list) in [("default", &default), ("defaultRequest", &default_request)] {
                for (k, _) in list {
                    validate_limit_resource_name(&mut errs, ty, &format!("{idx}.{name}[{k}]"), k);
                }
            }
        }
        if ty == "PersistentVolumeClaim"
            && !max.iter().any(|(k, _)| k == "storage")
            && !min.iter().any(|(k, _)| k == "storage")
        {
            errs.push(FieldError::required(
                format!("{idx}.limits"),
                "either minimum or maximum storage value is required, but neither was provided",
            ));
        }
        for (k, _) in &ratio {
            validate_limit_resource_name(
                &mut errs,
                ty,
                &format!("{idx}.maxLimitRequestRatio[{k}]"),
                k,
            );
        }
        let find = |list: &Vec<(String, Quantity)>, k: &str| {
            list.iter().find(|(n, _)| n == k).map(|(_, q)| *q)
        };
        let mut keys: Vec<&str> = max
            .iter()
            .chain(&min)
            .chain(&default)
            .chain(&default_request)
            .chain(&ratio)
            .map(|(k, _)| k.as_str())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let bad = |errs: &mut Vec<FieldError>, field: &str, k: &str, q: Quantity, msg: String| {
            errs.push(FieldError::invalid(
                format!("{idx}.{field}[{k}]"),
                &json!(q.to_string()),
                &msg,
            ));
        };
        for k in keys {
            let (mn, mx) = (find(&min, k), find(&max, k));
            let (def, req, r) = (
                find(&default, k),
                find(&default_request, k),
                find(&ratio, k),
            );
            if let (Some(mn), Some(mx)) = (mn, mx)
                && mn.milli > mx.milli
            {
                bad(
                    &mut errs,
                    "min",
                    k,
                    mn,
                    format!("min value {mn} is greater than max value {mx}"),
                );
            }
            if let (Some(req), Some(mn)) = (req, mn)
                && mn.milli > req.milli
            {
                bad(
                    &mut errs,
                    "defaultRequest",
                    k,
                    req,
                    format!("min value {mn} is greater than default request value {req}"),
                );
            }
            if let (Some(req), Some(mx)) = (req, mx)
                && req.milli > mx.milli
            {
                bad(
                    &mut errs,
                    "defaultRequest",
                    k,
                    req,
                    format!("default request value {req} is greater than max value {mx}"),
                );
            }
            if let (Some(req), Some(def)) = (req, def)
                && req.milli > def.milli
            {
                bad(
                    &mut errs,
                    "defaultRequest",
                    k,
                    req,
                    format!(
                        "default request value {req} is greater than default limit value {def}"
                    ),
                );
            }
            if let (Some(def), Some(mn)) = (def, mn)
                && mn.milli > def.milli
            {
                bad(
                    &mut errs,
                    "default",
                    k,
                    def,
                    format!("min value {mn} is greater than default value {def}"),
                );
            }
            if let (Some(def), Some(mx)) = (def, mx)
                && def.milli > mx.milli
            {
                bad(
                    &mut errs,
                    "default",
                    k,
                    def,
                    format!("default value {def} is greater than max value {mx}"),
                );
            }
            if let Some(r) = r {
                if r.milli < 1000 {
                    bad(
                        &mut errs,
                        "maxLimitRequestRatio",
                        k,
                        r,
                        format!("ratio {r} is less than 1"),
                    );
                }
                if let (Some(mn), Some(mx)) = (mn, mx)
                    && mn.milli != 0
                {
                    let limit = mx.milli as f64 / mn.milli as f64;
                    if r.milli as f64 / 1000.0 > limit {
                        bad(
                            &mut errs,
                            "maxLimitRequestRatio",
                            k,
                            r,
                            format!("ratio {r} is greater than max/min = {limit:.6}"),
                        );
                    }
                }
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.message.as_str()).collect()
    }

    #[test]
    fn service_defaults_and_ports_column() {
        let mut svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443, "targetPort": "https", "nodePort": 30443}]}});
        service_defaults(&mut svc);
        let spec = &svc["spec"];
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][1]["targetPort"], "https");
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(service_ports(&svc), "80/TCP,443:30443/TCP");
        let cells = service_cells(&svc);
        assert_eq!(cells[2], "<none>");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[6], "app=web");
        let mut lb = json!({"spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.5", "ports": [{"port": 80}]}});
        service_defaults(&mut lb);
        assert_eq!(lb["spec"]["clusterIPs"], json!(["10.0.0.5"]));
        assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);
        let cells = service_cells(&lb);
        assert_eq!(cells[2], "10.0.0.5");
        assert_eq!(cells[3], "<pending>");
        let mut headless = json!({"spec": {"clusterIP": "None"}});
        service_defaults(&mut headless);
        assert_eq!(headless["spec"]["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(headless["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    }

    #[test]
    fn service_validation_messages() {
        let mut svc = json!({"spec": {"type": "Foo", "ports": [{"port": 0}, {"port": 81, "nodePort": 30001}]}});
        service_defaults(&mut svc);
        assert_eq!(
            msgs(&validate_service(&svc, None)),
            [
                "spec.type: Unsupported value: \"Foo\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
                "spec.ports[0].name: Required value",
                "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ports[1].name: Required value",
            ]
        );
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        service_defaults(&mut svc);
        assert!(validate_service(&svc, None).is_empty());
        svc["spec"]["clusterIP"] = json!("10.0.0.1");
        svc["spec"]["clusterIPs"] = json!(["10.0.0.1"]);
        let mut new = svc.clone();
        new["spec"]["clusterIP"] = json!("10.0.0.2");
        new["spec"]["clusterIPs"] = json!(["10.0.0.2"]);
        assert_eq!(
            msgs(&validate_service(&new, Some(&svc))),
            ["spec.clusterIPs[0]: Invalid value: []string{\"10.0.0.2\"}: may not change once set"]
        );
        let nodeport = json!({"spec": {"type": "ClusterIP", "sessionAffinity": "None", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30000}]}});
        assert_eq!(
            msgs(&validate_service(&nodeport, None)),
            ["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"]
        );
    }

    #[test]
    fn node_and_endpoint_cells() {
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
        let ep = json!({"subsets": [{"addresses": [{"ip": "10.1.0.1"}, {"ip": "10.1.0.2"}],
            "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(
            format_endpoints(&ep),
            "10.1.0.1:80,10.1.0.2:80,10.1.0.1:443 + 1 more..."
        );
        assert_eq!(format_endpoints(&json!({})), "<none>");
    }

    #[test]
    fn secret_string_data_merges_into_data() {
        let mut secret =
            json!({"data": {"a": "eA==", "b": "eA=="}, "stringData": {"b": "pw", "c": "hello"}});
        (SECRETS.defaults)(&mut secret);
        assert_eq!(
            secret,
            json!({"type": "Opaque", "data": {"a": "eA==", "b": "cHc=", "c": "aGVsbG8="}})
        );
    }

    #[test]
    fn secret_and_event_rules() {
        let mut secret = json!({"data": {"bad key": "eA=="}});
        (SECRETS.defaults)(&mut secret);
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(
            msgs(&validate_secret(&secret, None)),
            [
                "data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
            ]
        );
        let tls = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
        assert_eq!(
            msgs(&validate_secret(&tls, None)),
            ["data[tls.key]: Required value"]
        );
        let mut changed = tls.clone();
        changed["type"] = json!("Opaque");
        assert!(
            msgs(&validate_secret(&changed, Some(&tls)))
                .contains(&"type: Invalid value: \"Opaque\": field is immutable")
        );
        let ev = json!({"metadata": {"name": "e", "namespace": "default"}, "involvedObject": {"kind": "Pod", "name": "p"},
            "reason": "Started", "message": " hi ", "type": "Normal", "count": 3,
            "source": {"component": "kubelet", "host": "n1"}});
        let cells = core_event_cells(&ev);
        assert_eq!(cells[3], "pod/p");
        assert_eq!(cells[5], "kubelet, n1");
        assert_eq!(cells[6], "hi");
        assert_eq!(cells[8], 3);
        assert_eq!(core_event_field(&ev, "source").as_deref(), Some("kubelet"));
    }

    #[test]
    fn quota_scopes_and_selector_follow_kubernetes() {
        let ok = json!({"spec": {"hard": {"pods": "5", "count/deployments.apps": "2"}, "scopes": ["BestEffort"]}});
        assert!(validate_quota(&ok, None).is_empty());
        let ok = json!({"spec": {"hard": {"requests.cpu": "1", "pods": "3"},
            "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        assert!(validate_quota(&ok, None).is_empty());
        let best_effort_cpu = json!({"spec": {"hard": {"pods": "5", "requests.cpu": "1", "services": "1"}, "scopes": ["BestEffort", "NotBestEffort"]}});
        assert_eq!(
            msgs(&validate_quota(&best_effort_cpu, None)),
            [
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\"}: unsupported scope applied to resource",
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\"}: unsupported scope applied to resource",
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\"}: unsupported scope applied to resource",
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\"}: conflicting scopes",
            ]
        );
        let bad_names = json!({"spec": {"hard": {"foo": "1", "storage": "1Gi", "pods": "-1"}, "scopes": ["Sometimes"]}});
        assert_eq!(
            msgs(&validate_quota(&bad_names, None)),
            [
                "spec.hard[foo]: Invalid value: \"foo\": must be a standard resource type or fully qualified",
                "spec.hard[foo]: Invalid value: \"foo\": must be a standard resource for quota",
                "spec.hard[pods]: Invalid value: \"-1\": must be greater than or equal to 0",
                "spec.hard[storage]: Invalid value: \"storage\": must be a standard resource for quota",
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"Sometimes\"}: unsupported scope",
            ]
        );
        let selector = json!({"spec": {"hard": {"services": "1"}, "scopeSelector": {"matchExpressions": [
            {"scopeName": "Terminating", "operator": "In", "values": ["x"]},
            {"scopeName": "NotTerminating", "operator": "Exists", "values": ["y"]},
            {"scopeName": "PriorityClass", "operator": "In"},
            {"scopeName": "Nope", "operator": "Has"}]}}});
        let sel = "core.ScopeSelector{MatchExpressions:[]core.ScopedResourceSelectorRequirement{core.ScopedResourceSelectorRequirement{ScopeName:\"Terminating\", Operator:\"In\", Values:[]string{\"x\"}}, core.ScopedResourceSelectorRequirement{ScopeName:\"NotTerminating\", Operator:\"Exists\", Values:[]string{\"y\"}}, core.ScopedResourceSelectorRequirement{ScopeName:\"PriorityClass\", Operator:\"In\", Values:[]string(nil)}, core.ScopedResourceSelectorRequirement{ScopeName:\"Nope\", Operator:\"Has\", Values:[]string(nil)}}}";
        let applied = format!(
            "spec.scopeSelector.matchExpressions: Invalid value: {sel}: unsupported scope applied to resource"
        );
        assert_eq!(
            msgs(&validate_quota(&selector, None)),
            [
                applied.as_str(),
                "spec.scopeSelector.matchExpressions.operator: Invalid value: \"In\": must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity",
                applied.as_str(),
                "spec.scopeSelector.matchExpressions.values: Invalid value: []string{\"y\"}: must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector",
                applied.as_str(),
                "spec.scopeSelector.matchExpressions.values: Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector",
                "spec.scopeSelector.matchExpressions.scopeName: Invalid value: \"Nope\": unsupported scope",
                "spec.scopeSelector.matchExpressions.operator: Invalid value: \"Has\": not a valid selector operator",
                "spec.scopeSelector.matchExpressions: Invalid value: []core.ResourceQuotaScope(nil): conflicting scopes",
            ]
        );
        let old = json!({"spec": {"hard": {"pods": "1"}, "scopes": ["Terminating"]}});
        let new = json!({"spec": {"hard": {"pods": "1"}, "scopes": ["NotTerminating"]}});
        assert_eq!(
            msgs(&validate_quota(&new, Some(&old))),
            [
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"NotTerminating\"}: field is immutable"
            ]
        );
    }

    #[test]
    fn limitrange_validation_after_defaulting() {
        // The defaulted limit (= max) is below the requested default request.
        let mut lr = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "1Gi"}, "defaultRequest": {"cpu": "2", "memory": "512Mi"}},
            {"type": "Pod", "default": {"cpu": "1"}, "max": {"pods": "1"}, "maxLimitRequestRatio": {"cpu": "500m"}},
            {"type": "Container"},
            {"type": "Node"},
            {"type": "PersistentVolumeClaim"}]}});
        limitrange_defaults(&mut lr);
        assert_eq!(
            msgs(&validate_limitrange(&lr, None)),
            [
                "spec.limits[0].defaultRequest[cpu]: Invalid value: \"2\": default request value 2 is greater than max value 1",
                "spec.limits[0].defaultRequest[cpu]: Invalid value: \"2\": default request value 2 is greater than default limit value 1",
                "spec.limits[0].defaultRequest[memory]: Invalid value: \"512Mi\": min value 1Gi is greater than default request value 512Mi",
                "spec.limits[1].max[pods]: Invalid value: \"pods\": must be a standard resource for containers",
                "spec.limits[1].default: Forbidden: may not be specified when `type` is 'Pod'",
                "spec.limits[1].maxLimitRequestRatio[cpu]: Invalid value: \"500m\": ratio 500m is less than 1",
                "spec.limits[2].type: Duplicate value: \"Container\"",
                "spec.limits[3].type: Invalid value: \"Node\": must be a standard limit type or fully qualified",
                "spec.limits[4].limits: Required value: either minimum or maximum storage value is required, but neither was provided",
            ]
        );
        let ok = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "2"}, "min": {"cpu": "100m"},
            "default": {"cpu": "1"}, "defaultRequest": {"cpu": "500m"}, "maxLimitRequestRatio": {"cpu": "4"}}]}});
        assert!(validate_limitrange(&ok, None).is_empty());
        let ratio = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "min": {"cpu": "500m"},
            "maxLimitRequestRatio": {"cpu": "3"}}]}});
        assert_eq!(
            msgs(&validate_limitrange(&ratio, None)),
            [
                "spec.limits[0].maxLimitRequestRatio[cpu]: Invalid value: \"3\": ratio 3 is greater than max/min = 2.000000"
            ]
        );
    }

    #[test]
    fn quota_and_limitrange() {
        let q = json!({"status": {"hard": {"pods": "10", "limits.cpu": "2", "requests.cpu": "1"},
            "used": {"pods": "1", "limits.cpu": "500m"}}});
        let cells = quota_cells(&q);
        assert_eq!(cells[1], "pods: 1/10, requests.cpu: 0/1");
        assert_eq!(cells[2], "limits.cpu: 500m/2");
        let mut lr = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "1Mi"}}]}});
        limitrange_defaults(&mut lr);
        assert_eq!(lr["spec"]["limits"][0]["default"], json!({"cpu": "2"}));
        assert_eq!(
            lr["spec"]["limits"][0]["defaultRequest"],
            json!({"cpu": "2", "memory": "1Mi"})
        );
    }
}
