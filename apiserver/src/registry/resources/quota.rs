//! core/v1 entries: resourcequotas and limitranges.

use k8s_openapi::api::core::v1 as corev1;
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

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
}
