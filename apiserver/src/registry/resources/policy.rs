//! policy/v1 entries: poddisruptionbudgets.

use k8s_openapi::api::policy::v1 as policyv1;
use serde_json::{Value, json};

use super::apps::validate_int_or_percent;
use super::util::*;
use crate::registry::*;

/// `unhealthyPodEvictionPolicy` values, as Kubernetes lists them (sorted).
pub const UNHEALTHY_POD_EVICTION_POLICIES: &[&str] = &["AlwaysAllow", "IfHealthyBudget"];

/// policy/v1 poddisruptionbudgets.
pub const PODDISRUPTIONBUDGETS: ResourceDef = ResourceDef {
    short_names: &["pdb"],
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: pdb_defaults,
    validate: validate_pdb,
    columns: &[
        NAME_COLUMN,
        col(
            "Min Available",
            "string",
            0,
            "The minimum number of pods that must be available.",
        ),
        col(
            "Max Unavailable",
            "string",
            0,
            "The maximum number of pods that may be unavailable.",
        ),
        col(
            "Allowed Disruptions",
            "integer",
            0,
            "Calculated number of pods that may be disrupted at this time.",
        ),
        AGE_COLUMN,
    ],
    cells: |o| {
        vec![
            name_cell(o),
            cell(int_or_string_cell(fields::at(o, &["spec", "minAvailable"]))),
            cell(int_or_string_cell(fields::at(
                o,
                &["spec", "maxUnavailable"],
            ))),
            json!(int(o, &["status", "disruptionsAllowed"])),
            age_cell(o),
        ]
    },
    strategy: Strategy {
        tracks_generation: true,
        ..Strategy::DEFAULT
    },
    ..def_of::<policyv1::PodDisruptionBudget>(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
    )
};

/// kubectl's printer: the int-or-string's value, `N/A` when unset.
fn int_or_string_cell(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "N/A".to_string(),
    }
}

/// The status' integer counters are not optional in policy/v1 (a new budget reports zeros until
/// the disruption controller has looked at it).
fn pdb_defaults(o: &mut Value) {
    let status = fields::ensure_object(o, &["status"]);
    for k in [
        "disruptionsAllowed",
        "currentHealthy",
        "desiredHealthy",
        "expectedPods",
    ] {
        status.entry(k).or_insert(json!(0));
    }
}

/// Go's `%#v` of a `policy.PodDisruptionBudgetSpec` as Kubernetes prints it in the "both set"
/// error: pointer fields print as addresses, which are arbitrary in Kubernetes too.
fn go_pdb_spec(o: &Value) -> String {
    let ptr = |path: &str, ty: &str, addr: &str| {
        if present(o, &["spec", path]) {
            format!("(*{ty})({addr})")
        } else {
            format!("(*{ty})(nil)")
        }
    };
    format!(
        "policy.PodDisruptionBudgetSpec{{MinAvailable:{}, Selector:{}, MaxUnavailable:{}, UnhealthyPodEvictionPolicy:{}}}",
        ptr("minAvailable", "intstr.IntOrString", "0xc000a1e000"),
        ptr("selector", "v1.LabelSelector", "0xc000a1e020"),
        ptr("maxUnavailable", "intstr.IntOrString", "0xc000a1e040"),
        ptr(
            "unhealthyPodEvictionPolicy",
            "policy.UnhealthyPodEvictionPolicyType",
            "0xc000a1e060"
        ),
    )
}

/// `ValidatePodDisruptionBudgetSpec` and, for policy/v1, the status checks of
/// `ValidatePodDisruptionBudgetStatusUpdate`. The spec may change on update (policy/v1).
fn validate_pdb(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let min = fields::at(o, &["spec", "minAvailable"]).filter(|v| !v.is_null());
    let max = fields::at(o, &["spec", "maxUnavailable"]).filter(|v| !v.is_null());
    if min.is_some() && max.is_some() {
        errs.push(invalid_raw(
            "spec",
            &go_pdb_spec(o),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    validate_int_or_percent(&mut errs, min, "spec.minAvailable", true);
    validate_int_or_percent(&mut errs, max, "spec.maxUnavailable", true);
    if let Some(sel) = fields::at(o, &["spec", "selector"]).filter(|v| v.is_object()) {
        validate_label_selector(&mut errs, sel, "spec.selector");
    }
    if let Some(p) = fields::at(o, &["spec", "unhealthyPodEvictionPolicy"]).filter(|v| !v.is_null())
        && !p
            .as_str()
            .is_some_and(|p| UNHEALTHY_POD_EVICTION_POLICIES.contains(&p))
    {
        errs.push(FieldError::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            p,
            UNHEALTHY_POD_EVICTION_POLICIES,
        ));
    }
    for (i, c) in arr(o, &["status", "conditions"]).iter().enumerate() {
        validate_condition(&mut errs, c, &format!("status.conditions[{i}]"));
    }
    for k in [
        "disruptionsAllowed",
        "currentHealthy",
        "desiredHealthy",
        "expectedPods",
    ] {
        nonnegative(&mut errs, o, &["status", k], &format!("status.{k}"));
    }
    errs
}

/// The parts of `metav1validation.ValidateCondition` a controller can get wrong: type, status,
/// reason and observedGeneration.
fn validate_condition(errs: &mut Vec<FieldError>, c: &Value, path: &str) {
    if s(c, &["type"]).is_empty() {
        errs.push(FieldError::required(format!("{path}.type"), "must be set"));
    }
    let status = s(c, &["status"]);
    if !matches!(status, "True" | "False" | "Unknown") {
        errs.push(FieldError::not_supported(
            format!("{path}.status"),
            &json!(status),
            &["False", "True", "Unknown"],
        ));
    }
    if let Some(g) = fields::i64_at(c, &["observedGeneration"])
        && g < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.observedGeneration"),
            &json!(g),
            "must be greater than or equal to zero",
        ));
    }
    if s(c, &["reason"]).is_empty() {
        errs.push(FieldError::required(
            format!("{path}.reason"),
            "must be set",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(spec: Value) -> Value {
        let mut o = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "default"}, "spec": spec});
        pdb_defaults(&mut o);
        o
    }

    fn messages(o: &Value) -> Vec<String> {
        validate_pdb(o, None)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn min_and_max_are_exclusive() {
        let m = messages(&pdb(
            json!({"minAvailable": 1, "maxUnavailable": 1, "selector": {"matchLabels": {"a": "b"}}}),
        ));
        assert_eq!(
            m,
            [
                "spec: Invalid value: policy.PodDisruptionBudgetSpec{MinAvailable:(*intstr.IntOrString)(0xc000a1e000), Selector:(*v1.LabelSelector)(0xc000a1e020), MaxUnavailable:(*intstr.IntOrString)(0xc000a1e040), UnhealthyPodEvictionPolicy:(*policy.UnhealthyPodEvictionPolicyType)(nil)}: minAvailable and maxUnavailable cannot be both set"
            ]
        );
    }

    #[test]
    fn values_and_percentages() {
        assert!(messages(&pdb(json!({"minAvailable": "50%"}))).is_empty());
        assert!(messages(&pdb(json!({"maxUnavailable": 0}))).is_empty());
        assert_eq!(
            messages(&pdb(json!({"minAvailable": -1}))),
            ["spec.minAvailable: Invalid value: -1: must be greater than or equal to 0"]
        );
        assert_eq!(
            messages(&pdb(json!({"maxUnavailable": "150%"}))),
            [
                "spec.maxUnavailable: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:\"150%\"}: must not be greater than 100%"
            ]
        );
        assert_eq!(messages(&pdb(json!({"minAvailable": "x"}))).len(), 1);
        assert_eq!(
            messages(&pdb(json!({"unhealthyPodEvictionPolicy": "Sometimes"}))),
            [
                "spec.unhealthyPodEvictionPolicy: Unsupported value: \"Sometimes\": supported values: \"AlwaysAllow\", \"IfHealthyBudget\""
            ]
        );
    }

    #[test]
    fn status_counters_are_nonnegative() {
        let mut o = pdb(json!({"minAvailable": 1}));
        o["status"]["disruptionsAllowed"] = json!(-1);
        assert_eq!(
            messages(&o),
            ["status.disruptionsAllowed: Invalid value: -1: must be greater than or equal to 0"]
        );
    }

    #[test]
    fn table_cells() {
        let mut o = pdb(json!({"minAvailable": "50%"}));
        o["status"]["disruptionsAllowed"] = json!(1);
        let cells = (PODDISRUPTIONBUDGETS.cells)(&o);
        assert_eq!(cells[1], json!("50%"));
        assert_eq!(cells[2], json!("N/A"));
        assert_eq!(cells[3], json!(1));
    }
}
