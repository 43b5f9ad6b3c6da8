//! scheduling.k8s.io/v1 entries: priorityclasses, and the system classes Kubernetes creates at
//! start (`system-cluster-critical`, `system-node-critical`).

use k8s_openapi::api::scheduling::v1 as schedulingv1;
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

/// Names starting with this are reserved for the system classes.
pub const SYSTEM_PRIORITY_CLASS_PREFIX: &str = "system-";
/// The highest value a user-defined class may have (`HighestUserDefinablePriority`).
pub const HIGHEST_USER_DEFINABLE_PRIORITY: i64 = 1_000_000_000;
/// Value of `system-cluster-critical` (`SystemCriticalPriority`).
pub const SYSTEM_CRITICAL_PRIORITY: i64 = 2 * HIGHEST_USER_DEFINABLE_PRIORITY;

/// A class Kubernetes defines itself: name, value and description.
pub struct SystemPriorityClass {
    /// Class name.
    pub name: &'static str,
    /// Priority value.
    pub value: i64,
    /// Its `description`.
    pub description: &'static str,
}

/// The system classes, created at apiserver start as Kubernetes' bootstrap does (neither is a
/// global default).
pub const SYSTEM_PRIORITY_CLASSES: &[SystemPriorityClass] = &[
    SystemPriorityClass {
        name: "system-node-critical",
        value: SYSTEM_CRITICAL_PRIORITY + 1000,
        description: "Used for system critical pods that must not be moved from their current node.",
    },
    SystemPriorityClass {
        name: "system-cluster-critical",
        value: SYSTEM_CRITICAL_PRIORITY,
        description: "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    },
];

/// The PriorityClass object of a system class.
pub fn system_priority_class(c: &SystemPriorityClass) -> Value {
    json!({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": c.name},
        "value": c.value,
        "description": c.description,
    })
}

/// scheduling.k8s.io/v1 priorityclasses.
pub const PRIORITYCLASSES: ResourceDef = ResourceDef {
    namespaced: false,
    short_names: &["pc"],
    defaults: priority_class_defaults,
    validate: validate_priority_class,
    columns: &[
        NAME_COLUMN,
        col(
            "Value",
            "integer",
            0,
            "value represents the integer value of this priority class. This is the actual priority that pods receive when they have the name of this class in their pod spec.",
        ),
        col(
            "Global-Default",
            "boolean",
            0,
            "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class. Only one PriorityClass can be marked as `globalDefault`. However, if more than one PriorityClasses exists with their `globalDefault` field set to true, the smallest value of such global default PriorityClasses will be used as the default priority.",
        ),
        AGE_COLUMN,
        col(
            "PreemptionPolicy",
            "string",
            0,
            "preemptionPolicy is the Policy for preempting pods with lower priority. One of Never, PreemptLowerPriority. Defaults to PreemptLowerPriority if unset.",
        ),
    ],
    cells: |o| {
        vec![
            name_cell(o),
            json!(int(o, &["value"])),
            json!(boolean(o, &["globalDefault"])),
            age_cell(o),
            cell(s(o, &["preemptionPolicy"])),
        ]
    },
    ..def_of::<schedulingv1::PriorityClass>(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
    )
};

fn priority_class_defaults(o: &mut Value) {
    if let Value::Object(m) = o
        && m.get("preemptionPolicy").is_none_or(Value::is_null)
    {
        m.insert("preemptionPolicy".into(), json!("PreemptLowerPriority"));
    }
}

/// `IsKnownSystemPriorityClass`: `Err` says why a `system-` class is not one of the system
/// classes.
fn known_system_class(name: &str, value: i64, global_default: bool) -> Result<(), String> {
    let Some(c) = SYSTEM_PRIORITY_CLASSES.iter().find(|c| c.name == name) else {
        return Err(format!("{name} is not a known system priority class"));
    };
    if c.value != value {
        return Err(format!(
            "value of {} PriorityClass must be {}",
            c.name, c.value
        ));
    }
    if global_default {
        return Err(format!(
            "globalDefault of {} PriorityClass must be false",
            c.name
        ));
    }
    Ok(())
}

/// `ValidatePriorityClass` and, on update, `ValidatePriorityClassUpdate` (value and
/// preemptionPolicy immutable).
fn validate_priority_class(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = fields::name(o);
    let value = int(o, &["value"]);
    if name.starts_with(SYSTEM_PRIORITY_CLASS_PREFIX) {
        if let Err(why) = known_system_class(name, value, boolean(o, &["globalDefault"])) {
            errs.push(FieldError::forbidden(
                "metadata.name",
                &format!(
                    "priority class names with '{SYSTEM_PRIORITY_CLASS_PREFIX}' prefix are reserved for system use only. error: {why}"
                ),
            ));
        }
    } else if value > HIGHEST_USER_DEFINABLE_PRIORITY {
        errs.push(FieldError::forbidden(
            "value",
            &format!(
                "maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE_PRIORITY}"
            ),
        ));
    }
    if let Some(p) = o.get("preemptionPolicy").filter(|p| !p.is_null()) {
        validate_preemption_policy(&mut errs, p, "preemptionPolicy");
    }
    if let Some(old) = old {
        if value != int(old, &["value"]) {
            errs.push(FieldError::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
        immutable(
            &mut errs,
            "preemptionPolicy",
            o.get("preemptionPolicy"),
            old.get("preemptionPolicy"),
        );
    }
    errs
}

/// `validatePreemptionPolicy` (shared with pods' `spec.preemptionPolicy`).
pub(crate) fn validate_preemption_policy(errs: &mut Vec<FieldError>, p: &Value, field: &str) {
    match p.as_str() {
        Some("PreemptLowerPriority" | "Never") => {}
        Some("") => errs.push(FieldError::required(field, "")),
        _ => errs.push(FieldError::not_supported(
            field,
            p,
            &["PreemptLowerPriority", "Never"],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(name: &str, value: i64) -> Value {
        let mut o = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value});
        priority_class_defaults(&mut o);
        o
    }

    fn messages(o: &Value, old: Option<&Value>) -> Vec<String> {
        validate_priority_class(o, old)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn system_classes_are_valid_and_reserved() {
        for c in SYSTEM_PRIORITY_CLASSES {
            let mut o = system_priority_class(c);
            priority_class_defaults(&mut o);
            assert!(messages(&o, None).is_empty(), "{}", c.name);
        }
        assert_eq!(
            messages(&pc("system-cluster-critical", 5), None),
            [
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: value of system-cluster-critical PriorityClass must be 2000000000"
            ]
        );
        assert_eq!(
            messages(&pc("system-mine", 5), None),
            [
                "metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: system-mine is not a known system priority class"
            ]
        );
    }

    #[test]
    fn user_values_are_bounded() {
        assert!(messages(&pc("high", 1_000_000_000), None).is_empty());
        assert_eq!(
            messages(&pc("higher", 1_000_000_001), None),
            ["value: Forbidden: maximum allowed value of a user defined priority is 1000000000"]
        );
    }

    #[test]
    fn value_and_policy_are_immutable() {
        let old = pc("high", 10);
        let mut new = pc("high", 11);
        new["preemptionPolicy"] = json!("Never");
        assert_eq!(
            messages(&new, Some(&old)),
            [
                "value: Forbidden: may not be changed in an update.",
                "preemptionPolicy: Invalid value: \"Never\": field is immutable"
            ]
        );
        let mut bad = pc("low", 1);
        bad["preemptionPolicy"] = json!("Sometimes");
        assert_eq!(
            messages(&bad, None),
            [
                "preemptionPolicy: Unsupported value: \"Sometimes\": supported values: \"PreemptLowerPriority\", \"Never\""
            ]
        );
    }
}
