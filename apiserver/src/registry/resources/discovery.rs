//! discovery.k8s.io/v1 entries: endpointslices.

use k8s_openapi::api::discovery::v1 as discv1;
use lotse_core::names::dns1123_subdomain;
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

/// discovery.k8s.io/v1 endpointslices.
pub const ENDPOINTSLICES: ResourceDef = ResourceDef {
    defaults: |o| {
        if let Some(Value::Array(ports)) = o.get_mut("ports") {
            for p in ports.iter_mut() {
                fields::default_at(p, &[], "name", json!(""));
                fields::default_at(p, &[], "protocol", json!("TCP"));
            }
        }
    },
    validate: validate_endpointslice,
    columns: &[
        NAME_COLUMN,
        col(
            "AddressType",
            "string",
            0,
            "addressType specifies the type of address carried by this EndpointSlice.",
        ),
        col(
            "Ports",
            "string",
            0,
            "ports specifies the list of network ports exposed by each endpoint in this slice.",
        ),
        col(
            "Endpoints",
            "string",
            0,
            "endpoints is a list of unique endpoints in this slice.",
        ),
        AGE_COLUMN,
    ],
    cells: |o| {
        vec![
            name_cell(o),
            cell(s(o, &["addressType"])),
            cell(slice_ports(o)),
            cell(slice_endpoints(o)),
            age_cell(o),
        ]
    },
    ..def_of::<discv1::EndpointSlice>(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
    )
};

fn list_with_more(list: Vec<String>, count: usize) -> String {
    let max = 3;
    let ret = list.join(",");
    if count > max {
        format!("{ret} + {} more...", count - max)
    } else if ret.is_empty() {
        "<unset>".to_string()
    } else {
        ret
    }
}

/// kubectl's `formatDiscoveryPorts`.
pub(crate) fn slice_ports(o: &Value) -> String {
    let ports = arr(o, &["ports"]);
    let list = ports
        .iter()
        .take(3)
        .map(|p| match fields::i64_at(p, &["port"]) {
            Some(n) => n.to_string(),
            None => match fields::str_at(p, &["name"]) {
                Some(n) => n.to_string(),
                None => "*".to_string(),
            },
        })
        .collect();
    list_with_more(list, ports.len())
}

/// kubectl's `formatDiscoveryEndpoints`.
pub(crate) fn slice_endpoints(o: &Value) -> String {
    let all: Vec<String> = arr(o, &["endpoints"])
        .iter()
        .flat_map(|e| {
            arr(e, &["addresses"])
                .iter()
                .map(|a| a.as_str().unwrap_or("").to_string())
        })
        .collect();
    let count = all.len();
    list_with_more(all.into_iter().take(3).collect(), count)
}

fn validate_endpointslice(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let at = s(o, &["addressType"]);
    match at {
        "IPv4" | "IPv6" | "FQDN" => {}
        "" => errs.push(FieldError::required("addressType", "")),
        other => errs.push(FieldError::not_supported(
            "addressType",
            &json!(other),
            &["FQDN", "IPv4", "IPv6"],
        )),
    }
    for (i, e) in arr(o, &["endpoints"]).iter().enumerate() {
        let addrs = arr(e, &["addresses"]);
        let ap = format!("endpoints[{i}].addresses");
        if addrs.is_empty() {
            errs.push(FieldError::required(
                ap.clone(),
                "must contain at least 1 address",
            ));
        }
        for (j, a) in addrs.iter().enumerate() {
            let a = a.as_str().unwrap_or("");
            let ok = match at {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => dns1123_subdomain(a).is_empty(),
            };
            if !ok {
                let detail = match at {
                    "IPv4" => "must be a valid IPv4 address",
                    "IPv6" => "must be a valid IPv6 address",
                    _ => "must be a valid DNS subdomain",
                };
                errs.push(FieldError::invalid(format!("{ap}[{j}]"), &json!(a), detail));
            }
        }
    }
    for (i, p) in arr(o, &["ports"]).iter().enumerate() {
        let pp = format!("ports[{i}]");
        if let Some(n) = fields::i64_at(p, &["port"]) {
            push_invalid_all(
                &mut errs,
                &format!("{pp}.port"),
                &json!(n),
                port_num_errors(n),
            );
        }
        match s(p, &["protocol"]) {
            "TCP" | "UDP" | "SCTP" => {}
            other => errs.push(FieldError::not_supported(
                format!("{pp}.protocol"),
                &json!(other),
                &["SCTP", "TCP", "UDP"],
            )),
        }
    }
    if let Some(old) = old {
        immutable(
            &mut errs,
            "addressType",
            o.get("addressType"),
            old.get("addressType"),
        );
    }
    errs
}
