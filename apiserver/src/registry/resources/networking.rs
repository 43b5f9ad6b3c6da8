//! networking.k8s.io/v1 entries: networkpolicies.

use k8s_openapi::api::networking::v1 as netv1;
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
