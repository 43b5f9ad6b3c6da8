//! The CustomResourceDefinition object itself: defaults, validation (the common cases of
//! Kubernetes' `ValidateCustomResourceDefinition` and `…Update`) and the status the CRD
//! controller reports (`NamesAccepted`, `Established`, `acceptedNames`, `storedVersions`).

use lotse_core::names;
use serde_json::{Map, Value, json};

use super::printer::JsonPath;
use super::schema::check_structural;
use super::served::Served;
use super::{CLEANUP_FINALIZER, Cause};

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// Kubernetes' defaults for a CRD: `singular` (lower-case kind), `listKind` (`<Kind>List`),
/// `conversion.strategy: None`, and the cleanup finalizer (so deleting a CRD deletes its
/// objects first) unless the CRD is already being deleted.
pub fn defaults(crd: &mut Value) {
    let deleting = crd.pointer("/metadata/deletionTimestamp").is_some();
    if let Some(names) = crd
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
    {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !kind.is_empty() {
            if names
                .get("singular")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                names.insert("singular".into(), json!(kind.to_lowercase()));
            }
            if names
                .get("listKind")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                names.insert("listKind".into(), json!(format!("{kind}List")));
            }
        }
    }
    if let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut)
        && spec.get("conversion").is_none_or(Value::is_null)
    {
        spec.insert("conversion".into(), json!({"strategy": "None"}));
    }
    if !deleting && let Some(meta) = crd.get_mut("metadata").and_then(Value::as_object_mut) {
        let fins = meta
            .entry("finalizers")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = fins
            && !a.iter().any(|f| f == CLEANUP_FINALIZER)
        {
            a.push(json!(CLEANUP_FINALIZER));
        }
    }
}

fn dns1035(field: &str, value: &str, out: &mut Vec<Cause>) {
    let problems = names::dns1035_label(value);
    if !problems.is_empty() {
        out.push(Cause::invalid(
            field.to_string(),
            &json!(value),
            &problems.join(","),
        ));
    }
}

fn kind_like(field: &str, value: &str, out: &mut Vec<Cause>) {
    let problems = names::dns1035_label(&value.to_lowercase());
    if !problems.is_empty() {
        out.push(Cause::invalid(
            field.to_string(),
            &json!(value),
            &format!(
                "may have mixed case, but should otherwise match: {}",
                problems.join(",")
            ),
        ));
    }
}

/// How Kubernetes prints `spec.versions` in an error (Go's `%#v` of the internal type,
/// abbreviated).
fn versions_value(versions: &[Value]) -> Value {
    let names: Vec<String> = versions
        .iter()
        .map(|v| format!("{{Name:\"{}\", …}}", s(v, &["name"])))
        .collect();
    Value::String(format!(
        "[]apiextensions.CustomResourceDefinitionVersion{{{}}}",
        names.join(", ")
    ))
}

/// Validates a CRD (`old` on update). Built-in groups (`served_groups`) may not be claimed.
pub fn validate(crd: &Value, old: Option<&Value>, builtin_groups: &[&str]) -> Vec<Cause> {
    let mut out = Vec::new();
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let group = s(&spec, &["group"]);
    let plural = s(&spec, &["names", "plural"]);
    let name = s(crd, &["metadata", "name"]);
    if name != format!("{plural}.{group}") {
        out.push(Cause::invalid(
            "metadata.name".into(),
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        out.push(Cause::required("spec.group".into(), ""));
    } else {
        let problems = names::dns1123_subdomain(group);
        if !problems.is_empty() {
            out.push(Cause::invalid(
                "spec.group".into(),
                &json!(group),
                &problems.join(","),
            ));
        }
        if !group.contains('.') {
            out.push(Cause::invalid(
                "spec.group".into(),
                &json!(group),
                "should be a domain with at least one dot",
            ));
        } else if builtin_groups.contains(&group) {
            out.push(Cause::invalid(
                "spec.group".into(),
                &json!(group),
                "is a group served by the API server itself",
            ));
        }
    }
    match s(&spec, &["scope"]) {
        "Cluster" | "Namespaced" => {}
        "" => out.push(Cause::required("spec.scope".into(), "")),
        other => out.push(Cause::not_supported(
            "spec.scope".into(),
            &json!(other),
            &["Cluster", "Namespaced"],
        )),
    }
    if spec.get("preserveUnknownFields").and_then(Value::as_bool) == Some(true) {
        out.push(Cause::invalid(
            "spec.preserveUnknownFields".into(),
            &json!(true),
            "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead",
        ));
    }
    validate_names(&spec, &mut out);
    validate_versions(&spec, &mut out);
    match s(&spec, &["conversion", "strategy"]) {
        "" | "None" => {}
        other => out.push(Cause::not_supported(
            "spec.conversion.strategy".into(),
            &json!(other),
            &["None"],
        )),
    }
    if let Some(old) = old {
        let old_scope = s(old, &["spec", "scope"]);
        let scope = s(&spec, &["scope"]);
        if !old_scope.is_empty() && old_scope != scope {
            out.push(Cause::invalid(
                "spec.scope".into(),
                &json!(scope),
                "field is immutable",
            ));
        }
        let stored: Vec<&str> = crd
            .pointer("/status/storedVersions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let versions: Vec<&str> = spec
            .get("versions")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| s(v, &["name"])).collect())
            .unwrap_or_default();
        for (i, sv) in stored.iter().enumerate() {
            if !versions.contains(sv) {
                out.push(Cause::invalid(
                    format!("status.storedVersions[{i}]"),
                    &json!(sv),
                    "must appear in spec.versions",
                ));
            }
        }
    }
    out
}

fn validate_names(spec: &Value, out: &mut Vec<Cause>) {
    let names = spec.get("names").cloned().unwrap_or(Value::Null);
    let plural = s(&names, &["plural"]);
    if plural.is_empty() {
        out.push(Cause::required("spec.names.plural".into(), ""));
    } else {
        dns1035("spec.names.plural", plural, out);
    }
    let singular = s(&names, &["singular"]);
    if !singular.is_empty() {
        dns1035("spec.names.singular", singular, out);
    }
    let kind = s(&names, &["kind"]);
    if kind.is_empty() {
        out.push(Cause::required("spec.names.kind".into(), ""));
    } else {
        kind_like("spec.names.kind", kind, out);
    }
    let list_kind = s(&names, &["listKind"]);
    if list_kind.is_empty() {
        out.push(Cause::required("spec.names.listKind".into(), ""));
    } else {
        kind_like("spec.names.listKind", list_kind, out);
        if list_kind == kind {
            out.push(Cause::invalid(
                "spec.names.listKind".into(),
                &json!(list_kind),
                "kind and listKind may not be the same",
            ));
        }
    }
    for (key, field) in [("shortNames", "shortNames"), ("categories", "categories")] {
        if let Some(a) = names.get(key).and_then(Value::as_array) {
            for (i, v) in a.iter().enumerate() {
                dns1035(
                    &format!("spec.names.{field}[{i}]"),
                    v.as_str().unwrap_or(""),
                    out,
                );
            }
        }
    }
}

fn validate_versions(spec: &Value, out: &mut Vec<Cause>) {
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        out.push(Cause::invalid(
            "spec.versions".into(),
            &versions_value(&versions),
            "must have exactly one version marked as storage version",
        ));
        return;
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if storage != 1 {
        out.push(Cause::invalid(
            "spec.versions".into(),
            &versions_value(&versions),
            "must have exactly one version marked as storage version",
        ));
    }
    if !versions
        .iter()
        .any(|v| v.get("served").and_then(Value::as_bool) == Some(true))
    {
        out.push(Cause::invalid(
            "spec.versions".into(),
            &versions_value(&versions),
            "must have at least one version marked as served",
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let base = format!("spec.versions[{i}]");
        let name = s(v, &["name"]);
        if name.is_empty() {
            out.push(Cause::required(format!("{base}.name"), ""));
        } else {
            dns1035(&format!("{base}.name"), name, out);
            if seen.contains(&name) {
                out.push(Cause::duplicate(format!("{base}.name"), &json!(name)));
            }
            seen.push(name);
        }
        let schema_path = format!("{base}.schema.openAPIV3Schema");
        match v.pointer("/schema/openAPIV3Schema") {
            None | Some(Value::Null) => {
                out.push(Cause::required(schema_path, "schemas are required"))
            }
            Some(schema) => check_structural(schema, &schema_path, true, out),
        }
        if let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array) {
            for (j, c) in cols.iter().enumerate() {
                let cp = format!("{base}.additionalPrinterColumns[{j}]");
                if s(c, &["name"]).is_empty() {
                    out.push(Cause::required(format!("{cp}.name"), ""));
                }
                match s(c, &["type"]) {
                    "integer" | "number" | "string" | "boolean" | "date" => {}
                    "" => out.push(Cause::required(format!("{cp}.type"), "")),
                    other => out.push(Cause::not_supported(
                        format!("{cp}.type"),
                        &json!(other),
                        &["boolean", "date", "integer", "number", "string"],
                    )),
                }
                let jp = s(c, &["jsonPath"]);
                if jp.is_empty() {
                    out.push(Cause::required(format!("{cp}.JSONPath"), ""));
                } else if let Err(e) = JsonPath::parse(jp) {
                    out.push(Cause::invalid(format!("{cp}.JSONPath"), &json!(jp), &e));
                }
            }
        }
        if let Some(fields) = v.get("selectableFields").and_then(Value::as_array) {
            let fp = format!("{base}.selectableFields");
            if fields.len() > 8 {
                out.push(Cause {
                    reason: "FieldValueTooMany",
                    field: fp.clone(),
                    message: format!(
                        "{fp}: Too many: {}: must have at most 8 items",
                        fields.len()
                    ),
                });
            }
            let mut seen_paths = Vec::new();
            for (j, f) in fields.iter().enumerate() {
                let jp = s(f, &["jsonPath"]);
                let field = format!("{fp}[{j}].jsonPath");
                if jp.is_empty() {
                    out.push(Cause::required(field, ""));
                } else if JsonPath::parse(jp).is_err() || jp.contains('[') {
                    out.push(Cause::invalid(
                        field,
                        &json!(jp),
                        "must be a simple json path starting with .",
                    ));
                } else if seen_paths.contains(&jp) {
                    out.push(Cause::duplicate(field, &json!(jp)));
                } else {
                    seen_paths.push(jp);
                }
            }
        }
        if let Some(scale) = v.pointer("/subresources/scale") {
            let sp = format!("{base}.subresources.scale");
            let spec_path = s(scale, &["specReplicasPath"]);
            if spec_path.is_empty() {
                out.push(Cause::required(format!("{sp}.specReplicasPath"), ""));
            } else if !spec_path.starts_with(".spec.") || JsonPath::parse(spec_path).is_err() {
                out.push(Cause::invalid(
                    format!("{sp}.specReplicasPath"),
                    &json!(spec_path),
                    "should be a json path under .spec",
                ));
            }
            let status_path = s(scale, &["statusReplicasPath"]);
            if status_path.is_empty() {
                out.push(Cause::required(format!("{sp}.statusReplicasPath"), ""));
            } else if !status_path.starts_with(".status.") || JsonPath::parse(status_path).is_err()
            {
                out.push(Cause::invalid(
                    format!("{sp}.statusReplicasPath"),
                    &json!(status_path),
                    "should be a json path under .status",
                ));
            }
            let sel = s(scale, &["labelSelectorPath"]);
            if !sel.is_empty()
                && ((!sel.starts_with(".spec.") && !sel.starts_with(".status."))
                    || JsonPath::parse(sel).is_err())
            {
                out.push(Cause::invalid(
                    format!("{sp}.labelSelectorPath"),
                    &json!(sel),
                    "should be a json path under either .spec or .status",
                ));
            }
        }
    }
}

/// What makes two served versions the same registry entry.
pub fn shape_key(s: &Served) -> String {
    let cols: Vec<String> = s
        .columns
        .iter()
        .map(|c| {
            format!(
                "{}|{}|{}|{}|{:?}",
                c.name, c.type_, c.format, c.priority, c.path
            )
        })
        .collect();
    format!(
        "{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}",
        s.crd_uid,
        s.group,
        s.version,
        s.storage_version,
        s.kind,
        s.list_kind,
        s.short_names,
        s.categories,
        s.namespaced,
        s.singular,
        s.status,
        s.scale.as_ref().map(|x| format!("{:?}", x)),
        cols,
        s.deprecation_warning,
        s.selectable.iter().map(|(n, _)| n).collect::<Vec<_>>()
    )
}

/// Names of a CRD another established CRD of the same group already uses, as Kubernetes'
/// naming controller reports them: (reason, message) of the first conflict.
pub fn name_conflict(crd: &Value, others: &[Value]) -> Option<(&'static str, String)> {
    let group = s(crd, &["spec", "group"]);
    let name = s(crd, &["metadata", "name"]);
    let names = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    for other in others {
        if s(other, &["metadata", "name"]) == name || s(other, &["spec", "group"]) != group {
            continue;
        }
        let Some(accepted) = other.pointer("/status/acceptedNames") else {
            continue;
        };
        let mut taken: Vec<&str> = vec![s(accepted, &["plural"]), s(accepted, &["singular"])];
        if let Some(a) = accepted.get("shortNames").and_then(Value::as_array) {
            taken.extend(a.iter().filter_map(Value::as_str));
        }
        let plural = s(&names, &["plural"]);
        if taken.contains(&plural) {
            return Some(("PluralConflict", format!("\"{plural}\" is already in use")));
        }
        let singular = s(&names, &["singular"]);
        if !singular.is_empty() && taken.contains(&singular) {
            return Some((
                "SingularConflict",
                format!("\"{singular}\" is already in use"),
            ));
        }
        if let Some(a) = names.get("shortNames").and_then(Value::as_array) {
            for sn in a.iter().filter_map(Value::as_str) {
                if taken.contains(&sn) {
                    return Some(("ShortNamesConflict", format!("\"{sn}\" is already in use")));
                }
            }
        }
        let kinds = [s(accepted, &["kind"]), s(accepted, &["listKind"])];
        let kind = s(&names, &["kind"]);
        if kinds.contains(&kind) {
            return Some(("KindConflict", format!("\"{kind}\" is already in use")));
        }
        let list_kind = s(&names, &["listKind"]);
        if kinds.contains(&list_kind) {
            return Some((
                "ListKindConflict",
                format!("\"{list_kind}\" is already in use"),
            ));
        }
    }
    None
}

fn condition(
    old: &[Value],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let prev = old.iter().find(|c| s(c, &["type"]) == type_);
    let since = match prev {
        Some(p) if s(p, &["status"]) == status => s(p, &["lastTransitionTime"]).to_string(),
        _ => now.to_string(),
    };
    json!({"type": type_, "status": status, "lastTransitionTime": since,
        "reason": reason, "message": message})
}

/// The status the CRD controller writes: names accepted unless another CRD holds them, the
/// resource established once its names are accepted, the storage version recorded in
/// `storedVersions`, and `Terminating` while the CRD's objects are being deleted.
pub fn status(crd: &Value, others: &[Value], now: &str) -> Value {
    let old_conditions = crd
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let conflict = name_conflict(crd, others);
    let mut conditions = Vec::new();
    let mut status = Map::new();
    match &conflict {
        None => {
            conditions.push(condition(
                &old_conditions,
                "NamesAccepted",
                "True",
                "NoConflicts",
                "no conflicts found",
                now,
            ));
            conditions.push(condition(
                &old_conditions,
                "Established",
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted",
                now,
            ));
            status.insert("acceptedNames".into(), names);
        }
        Some((reason, message)) => {
            conditions.push(condition(
                &old_conditions,
                "NamesAccepted",
                "False",
                reason,
                message,
                now,
            ));
            conditions.push(condition(
                &old_conditions,
                "Established",
                "False",
                "NotAccepted",
                "not all names are accepted",
                now,
            ));
            status.insert(
                "acceptedNames".into(),
                crd.pointer("/status/acceptedNames")
                    .cloned()
                    .unwrap_or_else(|| json!({"plural": "", "kind": ""})),
            );
        }
    }
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        conditions.push(condition(
            &old_conditions,
            "Terminating",
            "True",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            now,
        ));
    }
    status.insert("conditions".into(), Value::Array(conditions));
    let mut stored: Vec<Value> = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(sv) = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        })
        .map(|v| s(v, &["name"]).to_string())
        && !stored.iter().any(|x| x == sv.as_str())
    {
        stored.push(json!(sv));
    }
    status.insert("storedVersions".into(), Value::Array(stored));
    Value::Object(status)
}

/// True when a CRD's names were accepted (its resource may be served).
pub fn is_established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|c| s(c, &["type"]) == "Established" && s(c, &["status"]) == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "kind": "CronTab"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}}}]}})
    }

    fn msgs(crd: &Value) -> Vec<String> {
        validate(crd, None, &["apps"])
            .into_iter()
            .map(|c| c.message)
            .collect()
    }

    #[test]
    fn defaults_fill_names_conversion_and_finalizer() {
        let mut c = crd();
        defaults(&mut c);
        assert_eq!(c["spec"]["names"]["singular"], "crontab");
        assert_eq!(c["spec"]["names"]["listKind"], "CronTabList");
        assert_eq!(c["spec"]["conversion"]["strategy"], "None");
        assert_eq!(c["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
        assert!(msgs(&c).is_empty(), "{:?}", msgs(&c));
    }

    #[test]
    fn invalid_crds_get_kubernetes_messages() {
        let mut c = crd();
        defaults(&mut c);
        c["metadata"]["name"] = json!("crontab.stable.example.com");
        assert_eq!(
            msgs(&c),
            vec![
                "metadata.name: Invalid value: \"crontab.stable.example.com\": must be spec.names.plural+\".\"+spec.group"
            ]
        );
        let mut c = crd();
        defaults(&mut c);
        c["spec"]["group"] = json!("example");
        c["metadata"]["name"] = json!("crontabs.example");
        assert_eq!(
            msgs(&c),
            vec![
                "spec.group: Invalid value: \"example\": should be a domain with at least one dot"
            ]
        );
        let mut c = crd();
        defaults(&mut c);
        c["spec"]["versions"][0]["storage"] = json!(false);
        c["spec"]["versions"][0]["schema"] = Value::Null;
        c["spec"]["names"]["plural"] = json!("CronTabs");
        let m = msgs(&c);
        assert!(
            m.contains(
                &"spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required"
                    .to_string()
            ),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|x| x.starts_with("spec.versions: Invalid value: ")
                    && x.ends_with("must have exactly one version marked as storage version")),
            "{m:?}"
        );
        assert!(
            m.iter().any(|x| x
                .starts_with("spec.names.plural: Invalid value: \"CronTabs\": a DNS-1035 label")),
            "{m:?}"
        );
    }

    #[test]
    fn status_accepts_names_unless_taken() {
        let mut c = crd();
        defaults(&mut c);
        let st = status(&c, &[], "2026-01-01T00:00:00Z");
        assert_eq!(st["conditions"][1]["type"], "Established");
        assert_eq!(st["conditions"][1]["status"], "True");
        assert_eq!(st["storedVersions"], json!(["v1"]));
        assert_eq!(st["acceptedNames"]["kind"], "CronTab");
        let mut established = c.clone();
        established["status"] = st;
        assert!(is_established(&established));
        let mut other = established.clone();
        other["metadata"]["name"] = json!("crontabs2.stable.example.com");
        let mut rival = c.clone();
        rival["metadata"]["name"] = json!("crons.stable.example.com");
        rival["spec"]["names"] = json!({"plural": "crons", "singular": "cron", "kind": "CronTab", "listKind": "CronList"});
        let st = status(&rival, &[other], "2026-01-01T00:00:00Z");
        assert_eq!(st["conditions"][0]["status"], "False");
        assert_eq!(st["conditions"][0]["reason"], "KindConflict");
        assert_eq!(
            st["conditions"][0]["message"],
            "\"CronTab\" is already in use"
        );
    }
}
