//! core/v1 entries: services and endpoints.

use k8s_openapi::api::core::v1 as corev1;
use lotse_core::names::{dns1123_label, dns1123_subdomain};
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

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
    fn endpoint_cells() {
        let ep = json!({"subsets": [{"addresses": [{"ip": "10.1.0.1"}, {"ip": "10.1.0.2"}],
            "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(
            format_endpoints(&ep),
            "10.1.0.1:80,10.1.0.2:80,10.1.0.1:443 + 1 more..."
        );
        assert_eq!(format_endpoints(&json!({})), "<none>");
    }
}
