//! networking.k8s.io/v1 entries: networkpolicies, ingresses, ingressclasses.

use k8s_openapi::api::networking::v1 as netv1;
use lotse_core::names::{dns1035_label, dns1123_subdomain, max_len_error};
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

/// networking.k8s.io/v1 networkpolicies.
pub const NETWORKPOLICIES: ResourceDef = ResourceDef {
    short_names: &["netpol"],
    defaults: netpol_defaults,
    validate: validate_netpol,
    columns: &[
        NAME_COLUMN,
        col(
            "Pod-Selector",
            "string",
            0,
            "Selects the pods to which this NetworkPolicy object applies.",
        ),
        AGE_COLUMN,
    ],
    cells: |o| {
        vec![
            name_cell(o),
            cell(format_label_selector(fields::at(
                o,
                &["spec", "podSelector"],
            ))),
            age_cell(o),
        ]
    },
    strategy: Strategy {
        tracks_generation: true,
        ..Strategy::DEFAULT
    },
    ..def_of::<netv1::NetworkPolicy>(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
    )
};

fn default_ports(rules: Option<&mut Value>) {
    let Some(Value::Array(rules)) = rules else {
        return;
    };
    for r in rules.iter_mut() {
        if let Some(Value::Array(ports)) = r.get_mut("ports") {
            for p in ports.iter_mut() {
                fields::default_at(p, &[], "protocol", json!("TCP"));
            }
        }
    }
}

fn netpol_defaults(o: &mut Value) {
    let has_egress = !arr(o, &["spec", "egress"]).is_empty();
    if arr(o, &["spec", "policyTypes"]).is_empty() {
        let mut types = vec![json!("Ingress")];
        if has_egress {
            types.push(json!("Egress"));
        }
        fields::ensure_object(o, &["spec"]).insert("policyTypes".into(), Value::Array(types));
    }
    if let Some(spec) = o.get_mut("spec") {
        default_ports(spec.get_mut("ingress"));
        default_ports(spec.get_mut("egress"));
    }
}

fn validate_rules(errs: &mut Vec<FieldError>, o: &Value, key: &str, peers: &str) {
    for (i, r) in arr(o, &["spec", key]).iter().enumerate() {
        let rp = format!("spec.{key}[{i}]");
        for (j, p) in arr(r, &["ports"]).iter().enumerate() {
            let pp = format!("{rp}.ports[{j}]");
            match s(p, &["protocol"]) {
                "TCP" | "UDP" | "SCTP" => {}
                other => errs.push(FieldError::not_supported(
                    format!("{pp}.protocol"),
                    &json!(other),
                    &["SCTP", "TCP", "UDP"],
                )),
            }
            match p.get("port") {
                Some(Value::Number(n)) => {
                    let n = n.as_i64().unwrap_or(0);
                    push_invalid_all(errs, &format!("{pp}.port"), &json!(n), port_num_errors(n));
                    if let Some(end) = fields::i64_at(p, &["endPort"])
                        && end < n
                    {
                        errs.push(FieldError::invalid(
                            format!("{pp}.endPort"),
                            &json!(end),
                            "must be greater than or equal to `port`",
                        ));
                    }
                }
                Some(Value::String(name)) => {
                    push_invalid_all(
                        errs,
                        &format!("{pp}.port"),
                        &json!(name),
                        port_name_errors(name),
                    );
                    if present(p, &["endPort"]) {
                        errs.push(FieldError::forbidden(
                            format!("{pp}.endPort"),
                            "may not be specified when `port` is non-numeric",
                        ));
                    }
                }
                _ => {
                    if present(p, &["endPort"]) {
                        errs.push(FieldError::required(
                            format!("{pp}.port"),
                            "must be specified when `endPort` is specified",
                        ));
                    }
                }
            }
        }
        for (j, peer) in arr(r, &[peers]).iter().enumerate() {
            let pp = format!("{rp}.{peers}[{j}]");
            let n = ["podSelector", "namespaceSelector", "ipBlock"]
                .iter()
                .filter(|k| present(peer, &[k]))
                .count();
            if n == 0 {
                errs.push(FieldError::required(pp.clone(), "must specify a peer"));
            } else if present(peer, &["ipBlock"]) && n > 1 {
                errs.push(FieldError::forbidden(
                    pp.clone(),
                    "may not specify both ipBlock and another peer",
                ));
            }
            if present(peer, &["ipBlock"]) && s(peer, &["ipBlock", "cidr"]).is_empty() {
                errs.push(FieldError::required(format!("{pp}.ipBlock.cidr"), ""));
            }
        }
    }
}

fn validate_netpol(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(sel) = fields::at(o, &["spec", "podSelector"]) {
        validate_label_selector(&mut errs, sel, "spec.podSelector");
    }
    validate_rules(&mut errs, o, "ingress", "from");
    validate_rules(&mut errs, o, "egress", "to");
    let types = arr(o, &["spec", "policyTypes"]);
    for (i, t) in types.iter().enumerate() {
        let v = t.as_str().unwrap_or("");
        if v != "Ingress" && v != "Egress" {
            errs.push(FieldError::not_supported(
                format!("spec.policyTypes[{i}]"),
                t,
                &["Ingress", "Egress"],
            ));
        }
    }
    if types.len() > 2 {
        errs.push(invalid_raw(
            "spec.policyTypes",
            &go_string_slice(fields::at(o, &["spec", "policyTypes"])),
            "may not specify more than two policyTypes",
        ));
    }
    errs
}

/// The annotation marking the default IngressClass (`networkingv1.AnnotationIsDefaultIngressClass`).
pub const DEFAULT_INGRESS_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Whether an IngressClass carries the default-class annotation set to "true".
pub fn is_default_ingress_class(c: &Value) -> bool {
    s(
        c,
        &["metadata", "annotations", DEFAULT_INGRESS_CLASS_ANNOTATION],
    ) == "true"
}

/// networking.k8s.io/v1 ingresses.
pub const INGRESSES: ResourceDef = ResourceDef {
    short_names: &["ing"],
    subresources: &[Subresource::Status],
    has_status: true,
    validate: validate_ingress,
    columns: &[
        NAME_COLUMN,
        col(
            "Class",
            "string",
            0,
            "The name of the IngressClass resource that should be used for additional configuration",
        ),
        col(
            "Hosts",
            "string",
            0,
            "Hosts that incoming requests are matched against before the ingress rule",
        ),
        col(
            "Address",
            "string",
            0,
            "Address is a list containing ingress points for the load-balancer",
        ),
        col(
            "Ports",
            "string",
            0,
            "Ports of TLS configurations that open",
        ),
        AGE_COLUMN,
    ],
    cells: ingress_cells,
    ..def_of::<netv1::Ingress>("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress")
};

/// networking.k8s.io/v1 ingressclasses (cluster-scoped).
pub const INGRESSCLASSES: ResourceDef = ResourceDef {
    namespaced: false,
    validate: validate_ingress_class,
    columns: &[
        NAME_COLUMN,
        col(
            "Controller",
            "string",
            0,
            "Controller that is responsible for handling this class",
        ),
        col(
            "Parameters",
            "string",
            0,
            "A reference to a resource with additional parameters",
        ),
        AGE_COLUMN,
    ],
    cells: |o| {
        let params = match fields::at(o, &["spec", "parameters"]) {
            Some(p) if p.is_object() => {
                let mut out = s(p, &["kind"]).to_string();
                if let Some(g) = fields::str_at(p, &["apiGroup"]) {
                    out = format!("{out}.{g}");
                }
                format!("{out}/{}", s(p, &["name"]))
            }
            _ => "<none>".to_string(),
        };
        vec![
            name_cell(o),
            cell(s(o, &["spec", "controller"])),
            cell(params),
            age_cell(o),
        ]
    },
    ..def_of::<netv1::IngressClass>(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
    )
};

/// The ingress printer's cells (`printIngress`).
fn ingress_cells(o: &Value) -> Vec<Value> {
    let class = fields::str_at(o, &["spec", "ingressClassName"])
        .or_else(|| {
            fields::str_at(
                o,
                &["metadata", "annotations", "kubernetes.io/ingress.class"],
            )
        })
        .unwrap_or("<none>");
    let rules = arr(o, &["spec", "rules"]);
    let hosts: Vec<&str> = rules
        .iter()
        .map(|r| s(r, &["host"]))
        .filter(|h| !h.is_empty())
        .collect();
    let hosts = match hosts.len() {
        0 => "*".to_string(),
        n if n > 4 => format!("{} + {} more...", hosts[..4].join(","), n - 4),
        _ => hosts.join(","),
    };
    let addrs: Vec<&str> = arr(o, &["status", "loadBalancer", "ingress"])
        .iter()
        .filter_map(|i| {
            fields::str_at(i, &["ip"])
                .filter(|s| !s.is_empty())
                .or_else(|| fields::str_at(i, &["hostname"]).filter(|s| !s.is_empty()))
        })
        .collect();
    let mut address = addrs.join(",");
    if address.len() > 16 {
        address = format!("{}...", &address[..13]);
    }
    let ports = if arr(o, &["spec", "tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name_cell(o),
        cell(class),
        cell(hosts),
        cell(address),
        cell(ports),
        age_cell(o),
    ]
}

/// `IsWildcardDNS1123Subdomain`.
fn wildcard_dns1123_errors(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    if v.len() > 253 {
        out.push(max_len_error(253));
    }
    let ok = v
        .strip_prefix("*.")
        .is_some_and(|rest| dns1123_subdomain(rest).is_empty());
    if !ok {
        out.push("a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
    }
    out
}

fn host_errors(host: &str) -> Vec<String> {
    if host.contains('*') {
        wildcard_dns1123_errors(host)
    } else {
        dns1123_subdomain(host)
    }
}

/// `validateIngressBackend`.
fn validate_backend(errs: &mut Vec<FieldError>, b: &Value, path: &str) {
    let has_resource = fields::at(b, &["resource"]).is_some_and(|v| !v.is_null());
    let has_service = fields::at(b, &["service"]).is_some_and(|v| !v.is_null());
    match (has_resource, has_service) {
        (true, true) => errs.push(FieldError::invalid(
            path,
            &json!(""),
            "cannot set both resource and service backends",
        )),
        (true, false) => {
            let rp = format!("{path}.resource");
            if s(b, &["resource", "kind"]).is_empty() {
                errs.push(FieldError::required(format!("{rp}.kind"), ""));
            }
            if s(b, &["resource", "name"]).is_empty() {
                errs.push(FieldError::required(format!("{rp}.name"), ""));
            }
        }
        (false, true) => {
            let name = s(b, &["service", "name"]);
            if name.is_empty() {
                errs.push(FieldError::required(format!("{path}.service.name"), ""));
            } else {
                push_invalid_all(
                    errs,
                    &format!("{path}.service.name"),
                    &json!(name),
                    dns1035_label(name),
                );
            }
            let port_name = s(b, &["service", "port", "name"]);
            let port_num = int(b, &["service", "port", "number"]);
            if !port_name.is_empty() && port_num != 0 {
                errs.push(FieldError::invalid(
                    path,
                    &json!(""),
                    "cannot set both port name & port number",
                ));
            } else if !port_name.is_empty() {
                push_invalid_all(
                    errs,
                    &format!("{path}.service.port.name"),
                    &json!(port_name),
                    port_name_errors(port_name),
                );
            } else if port_num != 0 {
                push_invalid_all(
                    errs,
                    &format!("{path}.service.port.number"),
                    &json!(port_num),
                    port_num_errors(port_num),
                );
            } else {
                errs.push(FieldError::required(
                    path,
                    "port name or number is required",
                ));
            }
        }
        (false, false) => errs.push(FieldError::invalid(
            path,
            &json!(""),
            "resource or service backend is required",
        )),
    }
}

/// `validateHTTPIngressPath`.
fn validate_path(errs: &mut Vec<FieldError>, p: &Value, path: &str) {
    // The typed round trip turns an absent pathType into "".
    let Some(kind) = fields::str_at(p, &["pathType"]).filter(|k| !k.is_empty()) else {
        errs.push(FieldError::required(
            format!("{path}.pathType"),
            "pathType must be specified",
        ));
        return;
    };
    let value = s(p, &["path"]);
    let pf = format!("{path}.path");
    match kind {
        "Exact" | "Prefix" => {
            if !value.starts_with('/') {
                errs.push(FieldError::invalid(
                    &pf,
                    &json!(value),
                    "must be an absolute path",
                ));
            }
            if !value.is_empty() {
                for seq in ["//", "/./", "/../", "%2f", "%2F"] {
                    if value.contains(seq) {
                        errs.push(FieldError::invalid(
                            &pf,
                            &json!(value),
                            &format!("must not contain '{seq}'"),
                        ));
                    }
                }
                for suf in ["/..", "/."] {
                    if value.ends_with(suf) {
                        errs.push(FieldError::invalid(
                            &pf,
                            &json!(value),
                            &format!("cannot end with '{suf}'"),
                        ));
                    }
                }
            }
        }
        "ImplementationSpecific" => {
            if !value.is_empty() && !value.starts_with('/') {
                errs.push(FieldError::invalid(
                    &pf,
                    &json!(value),
                    "must be an absolute path",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            format!("{path}.pathType"),
            &json!(other),
            &["Exact", "ImplementationSpecific", "Prefix"],
        )),
    }
    if let Some(b) = fields::at(p, &["backend"]) {
        validate_backend(errs, b, &format!("{path}.backend"));
    } else {
        validate_backend(errs, &json!({}), &format!("{path}.backend"));
    }
}

/// `ValidateIngressSpec` (with the status rules of `ValidateIngressLoadBalancerStatus` left to
/// the type check).
fn validate_ingress(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let rules = arr(o, &["spec", "rules"]);
    let default_backend = fields::at(o, &["spec", "defaultBackend"]).filter(|v| !v.is_null());
    if rules.is_empty() && default_backend.is_none() {
        errs.push(invalid_raw(
            "spec",
            "null",
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(b) = default_backend {
        validate_backend(&mut errs, b, "spec.defaultBackend");
    }
    for (i, r) in rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        let host = s(r, &["host"]);
        if !host.is_empty() {
            if host.parse::<std::net::IpAddr>().is_ok() {
                errs.push(FieldError::invalid(
                    format!("{rp}.host"),
                    &json!(host),
                    "must be a DNS name, not an IP address",
                ));
            }
            push_invalid_all(
                &mut errs,
                &format!("{rp}.host"),
                &json!(host),
                host_errors(host),
            );
        }
        if let Some(http) = fields::at(r, &["http"]).filter(|v| !v.is_null()) {
            let paths = arr(http, &["paths"]);
            if paths.is_empty() {
                errs.push(FieldError::required(format!("{rp}.http.paths"), ""));
            }
            for (j, p) in paths.iter().enumerate() {
                validate_path(&mut errs, p, &format!("{rp}.http.paths[{j}]"));
            }
        }
    }
    for (i, t) in arr(o, &["spec", "tls"]).iter().enumerate() {
        for (j, h) in arr(t, &["hosts"]).iter().enumerate() {
            let h = h.as_str().unwrap_or("");
            push_invalid_all(
                &mut errs,
                &format!("spec.tls[{i}].hosts[{j}]"),
                &json!(h),
                host_errors(h),
            );
        }
        let secret = s(t, &["secretName"]);
        if !secret.is_empty() {
            push_invalid_all(
                &mut errs,
                &format!("spec.tls[{i}].secretName"),
                &json!(secret),
                dns1123_subdomain(secret),
            );
        }
    }
    if let Some(class) = fields::str_at(o, &["spec", "ingressClassName"]) {
        push_invalid_all(
            &mut errs,
            "spec.ingressClassName",
            &json!(class),
            dns1123_subdomain(class),
        );
    }
    errs
}

/// `ValidateIngressClass`: the controller is a domain-prefixed path of at most 250 characters,
/// immutable.
fn validate_ingress_class(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let controller = s(o, &["spec", "controller"]);
    let f = "spec.controller";
    if controller.len() > 250 {
        errs.push(FieldError {
            reason: "FieldValueTooLong",
            field: f.into(),
            message: format!("{f}: Too long: may not be more than 250 bytes"),
        });
    }
    if controller.is_empty() {
        errs.push(FieldError::required(f, ""));
    } else {
        match controller.split_once('/') {
            Some((host, p)) if !host.is_empty() && !p.is_empty() => {
                push_invalid_all(&mut errs, f, &json!(host), dns1123_subdomain(host));
                let ok = p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:".contains(c));
                if !ok {
                    errs.push(FieldError::invalid(f, &json!(p), "must be a valid path"));
                }
            }
            _ => errs.push(FieldError::invalid(
                f,
                &json!(controller),
                "must be a domain-prefixed path (such as \"acme.io/foo\")",
            )),
        }
    }
    if let Some(old) = old
        && s(old, &["spec", "controller"]) != controller
    {
        errs.push(FieldError::invalid(
            f,
            &json!(controller),
            "field is immutable",
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(errs: Vec<FieldError>) -> Vec<String> {
        errs.into_iter().map(|e| e.message).collect()
    }

    fn svc(name: &str, port: Value) -> Value {
        json!({"service": {"name": name, "port": port}})
    }

    #[test]
    fn ingress_validation_messages() {
        let ing = json!({"spec": {
            "rules": [
                {"host": "1.2.3.4", "http": {"paths": [
                    {"path": "api", "pathType": "Prefix", "backend": svc("a", json!({"number": 80}))},
                    {"path": "/x", "backend": svc("a", json!({"number": 80}))},
                    {"path": "/a//b", "pathType": "Exact", "backend": svc("a", json!({"name": "http", "number": 80}))},
                    {"path": "/", "pathType": "Regex", "backend": {}},
                ]}},
                {"host": "*.ok.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": svc("a", json!({}))},
                ]}},
                {"host": "a.*.example"},
            ],
            "tls": [{"hosts": ["Bad_Host"]}],
            "ingressClassName": "Lotse",
        }});
        assert_eq!(
            msgs(validate_ingress(&ing, None)),
            [
                "spec.rules[0].host: Invalid value: \"1.2.3.4\": must be a DNS name, not an IP address",
                "spec.rules[0].http.paths[0].path: Invalid value: \"api\": must be an absolute path",
                "spec.rules[0].http.paths[1].pathType: Required value: pathType must be specified",
                "spec.rules[0].http.paths[2].path: Invalid value: \"/a//b\": must not contain '//'",
                "spec.rules[0].http.paths[2].backend: Invalid value: \"\": cannot set both port name & port number",
                "spec.rules[0].http.paths[3].pathType: Unsupported value: \"Regex\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\"",
                "spec.rules[0].http.paths[3].backend: Invalid value: \"\": resource or service backend is required",
                "spec.rules[1].http.paths[0].backend: Required value: port name or number is required",
                "spec.rules[2].host: Invalid value: \"a.*.example\": a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "spec.tls[0].hosts[0]: Invalid value: \"Bad_Host\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "spec.ingressClassName: Invalid value: \"Lotse\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            ]
        );
        assert_eq!(
            msgs(validate_ingress(&json!({"spec": {}}), None)),
            ["spec: Invalid value: null: either `defaultBackend` or `rules` must be specified"]
        );
    }

    #[test]
    fn ingress_class_controller_rules() {
        let c = |ctl: &str| json!({"spec": {"controller": ctl}});
        assert!(validate_ingress_class(&c("lotse.dev/ingress"), None).is_empty());
        assert_eq!(
            msgs(validate_ingress_class(&c("lotse"), None)),
            [
                "spec.controller: Invalid value: \"lotse\": must be a domain-prefixed path (such as \"acme.io/foo\")"
            ]
        );
        assert_eq!(
            msgs(validate_ingress_class(&c("a.io/x"), Some(&c("b.io/x")))),
            ["spec.controller: Invalid value: \"a.io/x\": field is immutable"]
        );
    }

    #[test]
    fn ingress_cells_as_kubectl_prints_them() {
        let ing = json!({"metadata": {"name": "web", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"ingressClassName": "lotse", "tls": [{"hosts": ["a"]}],
                "rules": [{"host": "a"}, {"host": "b"}, {"host": "c"}, {"host": "d"}, {"host": "e"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}}});
        let cells = ingress_cells(&ing);
        assert_eq!(cells[1], json!("lotse"));
        assert_eq!(cells[2], json!("a,b,c,d + 1 more..."));
        assert_eq!(cells[3], json!("10.0.0.1,10.0..."));
        assert_eq!(cells[4], json!("80, 443"));
        let bare = json!({"metadata": {"name": "x"}, "spec": {}});
        let cells = ingress_cells(&bare);
        assert_eq!(
            cells[1..5],
            [json!("<none>"), json!("*"), json!(""), json!("80")]
        );
    }
}
