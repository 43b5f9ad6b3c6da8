//! node.k8s.io/v1 entries: runtimeclasses (`ValidateRuntimeClass`, the `handler` immutable, the
//! NAME/HANDLER/AGE table). The RuntimeClass admission is `admission/runtime_class.rs`.

use k8s_openapi::api::node::v1 as nodev1;
use lotse_core::Quantity;
use lotse_core::names::dns1123_label;
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

/// node.k8s.io/v1 runtimeclasses.
pub const RUNTIMECLASSES: ResourceDef = ResourceDef {
    namespaced: false,
    validate: validate_runtime_class,
    columns: &[
        NAME_COLUMN,
        col(
            "Handler",
            "string",
            0,
            "Handler is the name of the underlying runtime and configuration",
        ),
        AGE_COLUMN,
    ],
    cells: |o| vec![name_cell(o), cell(s(o, &["handler"])), age_cell(o)],
    ..def_of::<nodev1::RuntimeClass>(
        "node.k8s.io",
        "v1",
        "RuntimeClass",
        "runtimeclasses",
        "runtimeclass",
    )
};

/// `ValidateRuntimeClass` and, on update, `ValidateRuntimeClassUpdate` (`handler` immutable).
fn validate_runtime_class(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let handler = s(o, &["handler"]);
    push_invalid_all(
        &mut errs,
        "handler",
        &json!(handler),
        dns1123_label(handler),
    );
    if let Some(fixed) = obj(o, &["overhead", "podFixed"]) {
        // `validateOverhead` reuses ValidateResourceRequirements with the overhead as limits.
        for (name, q) in fixed {
            let path = format!("overhead.limits[{name}]");
            container_resource_name(&mut errs, name, &path);
            if Quantity::from_json(q).is_some_and(|q| q.milli < 0) {
                errs.push(FieldError::invalid(
                    &path,
                    q,
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    if let Some(sel) = obj(o, &["scheduling", "nodeSelector"]) {
        for (k, v) in sel {
            let path = "scheduling.nodeSelector";
            push_invalid_all(
                &mut errs,
                path,
                &json!(k),
                crate::validation::qualified_name(k),
            );
            let v = v.as_str().unwrap_or_default();
            push_invalid_all(
                &mut errs,
                path,
                &json!(v),
                crate::validation::label_value(v),
            );
        }
    }
    // `validateTolerations` passes `scheduling.tolerations` on to ValidateTolerations, which
    // adds `tolerations` once more (Kubernetes' paths read `scheduling.tolerations.tolerations[i]`).
    let tolerations = arr(o, &["scheduling", "tolerations"]);
    super::pod::validate_tolerations(&mut errs, tolerations, "scheduling.tolerations.tolerations");
    let mut seen = Vec::new();
    for (i, t) in tolerations.iter().enumerate() {
        let key = ["key", "operator", "value", "effect"].map(|k| s(t, &[k]).to_string());
        if seen.contains(&key) {
            let seconds = match fields::i64_at(t, &["tolerationSeconds"]) {
                Some(n) => format!("({n})"),
                None => "(*int64)(nil)".to_string(),
            };
            errs.push(FieldError {
                reason: "FieldValueDuplicate",
                field: format!("scheduling.tolerations[{i}]"),
                message: format!(
                    "scheduling.tolerations[{i}]: Duplicate value: core.Toleration{{Key:{}, Operator:{}, Value:{}, Effect:{}, TolerationSeconds:{seconds}}}",
                    go_quote(&key[0]),
                    go_quote(&key[1]),
                    go_quote(&key[2]),
                    go_quote(&key[3]),
                ),
            });
        } else {
            seen.push(key);
        }
    }
    if let Some(old) = old {
        immutable(&mut errs, "handler", o.get("handler"), old.get("handler"));
    }
    errs
}

/// `validateContainerResourceName`: a name without a domain is a standard container resource,
/// one with a domain an extended resource name.
fn container_resource_name(errs: &mut Vec<FieldError>, name: &str, path: &str) {
    for m in crate::validation::qualified_name(name) {
        errs.push(FieldError::invalid(path, &json!(name), &m));
    }
    if !name.contains('/') {
        let standard = matches!(name, "cpu" | "memory" | "ephemeral-storage")
            || name.starts_with("hugepages-");
        if !standard {
            errs.push(FieldError::invalid(
                path,
                &json!(name),
                "must be a standard resource for containers",
            ));
        }
    } else if !name.contains("kubernetes.io/") && name.starts_with("requests.") {
        errs.push(FieldError::invalid(
            path,
            &json!(name),
            "doesn't follow extended resource name standard",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(extra: Value) -> Value {
        let mut o = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": "gvisor"}, "handler": "runsc"});
        if let (Value::Object(m), Value::Object(e)) = (&mut o, extra) {
            m.extend(e);
        }
        o
    }

    fn messages(o: &Value, old: Option<&Value>) -> Vec<String> {
        validate_runtime_class(o, old)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn a_full_class_is_valid() {
        let o = rc(json!({
            "overhead": {"podFixed": {"cpu": "250m", "memory": "120Mi"}},
            "scheduling": {"nodeSelector": {"runtime": "gvisor"},
                "tolerations": [{"key": "runtime", "operator": "Equal", "value": "gvisor", "effect": "NoSchedule"}]},
        }));
        assert!(messages(&o, None).is_empty());
        assert!(messages(&o, Some(&o)).is_empty());
    }

    #[test]
    fn handler_is_a_dns_label_and_immutable() {
        assert_eq!(
            messages(&rc(json!({"handler": "Run.SC"})), None),
            [
                "handler: Invalid value: \"Run.SC\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            ]
        );
        assert_eq!(
            messages(&rc(json!({"handler": "kata"})), Some(&rc(json!({})))),
            ["handler: Invalid value: \"kata\": field is immutable"]
        );
    }

    #[test]
    fn overhead_and_scheduling_are_checked() {
        let o = rc(json!({
            "overhead": {"podFixed": {"cpu": "-1", "gpus": "1"}},
            "scheduling": {"nodeSelector": {"bad key!": "v"},
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "k", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "x", "operator": "Maybe"}]},
        }));
        let m = messages(&o, None);
        assert!(
            m.contains(
                &"overhead.limits[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"
                    .to_string()
            )
        );
        assert!(m.contains(
            &"overhead.limits[gpus]: Invalid value: \"gpus\": must be a standard resource for containers"
                .to_string()
        ));
        assert!(m.iter().any(|e| e.starts_with(
            "scheduling.nodeSelector: Invalid value: \"bad key!\": name part must consist of"
        )));
        assert!(m.contains(
            &"scheduling.tolerations.tolerations[2].operator: Unsupported value: \"Maybe\": supported values: \"Equal\", \"Exists\""
                .to_string()
        ));
        assert!(m.contains(
            &"scheduling.tolerations[1]: Duplicate value: core.Toleration{Key:\"k\", Operator:\"Exists\", Value:\"\", Effect:\"NoSchedule\", TolerationSeconds:(*int64)(nil)}"
                .to_string()
        ));
    }
}
