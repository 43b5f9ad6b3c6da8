//! API discovery: `/api`, `/apis`, per group-version resource lists, and aggregated discovery
//! (`apidiscovery.k8s.io` v2 and v2beta1).

use serde_json::{Value, json};

use crate::registry::{self, ResourceDef, Subresource};

const MAIN_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Verbs Kubernetes reports for a subresource.
pub fn subresource_verbs(s: Subresource) -> &'static [&'static str] {
    match s {
        Subresource::Status
        | Subresource::Scale
        | Subresource::EphemeralContainers
        | Subresource::Approval => &["get", "patch", "update"],
        Subresource::Binding | Subresource::Eviction | Subresource::Token => &["create"],
        Subresource::Log => &["get"],
        Subresource::Exec | Subresource::PortForward => &["create", "get"],
        Subresource::Finalize => &["update"],
    }
}

/// The kind a subresource responds with: (group, version, kind).
fn subresource_kind(
    def: &ResourceDef,
    s: Subresource,
) -> (&'static str, &'static str, &'static str) {
    match s {
        Subresource::Scale => ("autoscaling", "v1", "Scale"),
        Subresource::Binding => ("", "v1", "Binding"),
        Subresource::Eviction => ("policy", "v1", "Eviction"),
        Subresource::Token => ("authentication.k8s.io", "v1", "TokenRequest"),
        Subresource::Exec => ("", "v1", "PodExecOptions"),
        Subresource::PortForward => ("", "v1", "PodPortForwardOptions"),
        Subresource::Log => ("", "v1", "Pod"),
        _ => (def.group, def.version, def.kind),
    }
}

/// The non-core groups served, in order, each with its versions.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    let served = registry::catalog::served();
    for r in served.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) => {
                if !vs.contains(&r.version) {
                    vs.push(r.version)
                }
            }
            None => out.push((r.group, vec![r.version])),
        }
    }
    // Custom resources' versions in Kubernetes' priority order (the first is preferred).
    for (g, vs) in &mut out {
        if served.iter().any(|r| r.group == *g && r.custom.is_some()) {
            vs.sort_by(|a, b| crate::crd::version_priority(a, b));
        }
    }
    let extra = crate::endpoints::reviews::extra_groups().iter();
    for (g, v) in extra.chain(crate::metrics_api::extra_groups()) {
        if !out.iter().any(|(og, _)| og == g) {
            out.push((g, vec![v]));
        }
    }
    out
}

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups().iter().map(|(g, vs)| group_json(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    let (g, vs) = groups().into_iter().find(|(g, _)| *g == group)?;
    let mut v = group_json(g, &vs);
    if let Value::Object(m) = &mut v {
        m.insert("kind".into(), "APIGroup".into());
        m.insert("apiVersion".into(), "v1".into());
    }
    Some(v)
}

/// `GET /api/v1` or `/apis/<g>/<v>`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = registry::catalog::served()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let mut extra: Vec<Value> = crate::endpoints::reviews::extra_resources(group, version);
    extra.extend(crate::metrics_api::extra_resources(group, version));
    let extra: Vec<Value> = extra
        .into_iter()
        .chain(crate::endpoints::componentstatus::extra_resources(
            group, version,
        ))
        .collect();
    if defs.is_empty() && extra.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for d in defs {
        let mut r = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": MAIN_VERBS,
        });
        if let Value::Object(m) = &mut r {
            if !d.short_names.is_empty() {
                m.insert("shortNames".into(), json!(d.short_names));
            }
            if !d.categories.is_empty() {
                m.insert("categories".into(), json!(d.categories));
            }
        }
        resources.push(r);
        for s in d.subresources {
            let (g, v, k) = subresource_kind(d, *s);
            let mut sr = json!({
                "name": format!("{}/{}", d.plural, s.name()),
                "singularName": "",
                "namespaced": d.namespaced,
                "kind": k,
                "verbs": subresource_verbs(*s),
            });
            if (g != d.group || v != d.version)
                && let Value::Object(m) = &mut sr
            {
                m.insert("group".into(), g.into());
                m.insert("version".into(), v.into());
            }
            resources.push(sr);
        }
    }
    resources.extend(extra);
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn aggregated_resource(d: &ResourceDef) -> Value {
    let subs: Vec<Value> = d
        .subresources
        .iter()
        .map(|s| {
            let (g, v, k) = subresource_kind(d, *s);
            json!({"subresource": s.name(), "responseKind": {"group": g, "version": v, "kind": k}, "verbs": subresource_verbs(*s)})
        })
        .collect();
    let mut r = json!({
        "resource": d.plural,
        "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
        "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": d.singular,
        "verbs": MAIN_VERBS,
    });
    if let Value::Object(m) = &mut r {
        if !d.short_names.is_empty() {
            m.insert("shortNames".into(), json!(d.short_names));
        }
        if !d.categories.is_empty() {
            m.insert("categories".into(), json!(d.categories));
        }
        if !subs.is_empty() {
            m.insert("subresources".into(), Value::Array(subs));
        }
    }
    r
}

/// Aggregated discovery document for `/api` (core=true) or `/apis`; `api_version` is
/// `apidiscovery.k8s.io/v2` or `apidiscovery.k8s.io/v2beta1`.
pub fn aggregated(core: bool, api_version: &str) -> Value {
    let group_names: Vec<(&str, Vec<&str>)> = if core {
        vec![("", vec!["v1"])]
    } else {
        groups()
    };
    let items: Vec<Value> = group_names
        .iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| {
                    let mut resources: Vec<Value> = registry::catalog::served()
                        .into_iter()
                        .filter(|r| r.group == *g && r.version == *v)
                        .map(aggregated_resource)
                        .collect();
                    resources.extend(crate::endpoints::reviews::extra_aggregated_resources(g, v));
                    resources.extend(
                        crate::endpoints::componentstatus::extra_aggregated_resources(g, v),
                    );
                    resources.extend(crate::metrics_api::extra_aggregated_resources(g, v));
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_resource_list_has_namespaces_with_subresources() {
        let list = resource_list("", "v1").expect("core list");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(names.contains(&"namespaces"));
        assert!(names.contains(&"namespaces/status"));
    }

    #[test]
    fn aggregated_core_group_is_named_empty() {
        let doc = aggregated(true, "apidiscovery.k8s.io/v2");
        assert_eq!(doc["items"][0]["metadata"]["name"], "");
        assert_eq!(doc["items"][0]["versions"][0]["version"], "v1");
    }
}
