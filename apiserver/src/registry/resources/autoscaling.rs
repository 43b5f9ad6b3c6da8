//! autoscaling entries: horizontalpodautoscalers in `autoscaling/v2` and `autoscaling/v1`.
//!
//! As in Kubernetes, both versions are one object in storage (`/registry/horizontalpodautoscalers`,
//! stored in the v2 shape): [`HPA_V1`] is a [`StorageView`] converting v1 ↔ v2. What v1 cannot
//! express round-trips through the annotations Kubernetes uses
//! (`autoscaling.alpha.kubernetes.io/metrics`, `…/behavior`, `…/conditions`,
//! `…/current-metrics`), so a v2 object read and written back through v1 loses nothing.

use k8s_openapi::api::autoscaling::{v1 as autoscalingv1, v2 as autoscalingv2};
use serde_json::{Map, Value, json};

use super::util::*;
use crate::registry::*;

const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

/// The CPU utilization an HPA without metrics targets (Kubernetes' default).
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;

const HPA_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Reference",
        "string",
        0,
        "name is the name of the referent; More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names/#names",
    ),
    col(
        "Targets",
        "string",
        0,
        "type represents whether the metric type is Utilization, Value, or AverageValue",
    ),
    col(
        "MinPods",
        "string",
        0,
        "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.  It defaults to 1 pod.  minReplicas is allowed to be 0 if the alpha feature gate HPAScaleToZero is enabled and at least one Object or External metric is configured.  Scaling is active as long as at least one metric value is available.",
    ),
    col(
        "MaxPods",
        "integer",
        0,
        "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up. It cannot be less that minReplicas.",
    ),
    col(
        "Replicas",
        "string",
        0,
        "currentReplicas is current number of replicas of pods managed by this autoscaler, as last seen by the autoscaler.",
    ),
    AGE_COLUMN,
];

/// autoscaling/v2 horizontalpodautoscalers (the stored shape).
pub const HPA_V2: ResourceDef = ResourceDef {
    short_names: &["hpa"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: hpa_v2_defaults,
    validate: validate_hpa_v2,
    columns: HPA_COLUMNS,
    cells: hpa_cells,
    ..def_of::<autoscalingv2::HorizontalPodAutoscaler>(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
    )
};

/// autoscaling/v1 horizontalpodautoscalers: a view of the v2 objects in storage.
pub const HPA_V1: ResourceDef = ResourceDef {
    short_names: &["hpa"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: hpa_v1_defaults,
    validate: validate_hpa_v1,
    columns: HPA_COLUMNS,
    cells: |o| hpa_cells(&v1_to_v2(o)),
    storage_view: Some(StorageView {
        to_storage: v1_to_v2,
        from_storage: v2_to_v1,
    }),
    ..def_of::<autoscalingv1::HorizontalPodAutoscaler>(
        "autoscaling",
        "v1",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
    )
};

/// `SetDefaults_HorizontalPodAutoscaler` (v2): minReplicas 1, CPU at 80% when no metric is
/// given, and a given `behavior` completed with the default rules.
fn hpa_v2_defaults(o: &mut Value) {
    fields::default_at(o, &["spec"], "minReplicas", json!(1));
    if arr(o, &["spec", "metrics"]).is_empty()
        && let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert(
            "metrics".into(),
            json!([cpu_metric(DEFAULT_CPU_UTILIZATION)]),
        );
    }
    if let Some(b) = o
        .get_mut("spec")
        .and_then(|s| s.get_mut("behavior"))
        .and_then(Value::as_object_mut)
    {
        default_rules(b, "scaleUp", 0, default_scale_up_policies());
        default_rules(
            b,
            "scaleDown",
            300,
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
        );
    }
}

fn default_scale_up_policies() -> Value {
    json!([
        {"type": "Pods", "value": 4, "periodSeconds": 15},
        {"type": "Percent", "value": 100, "periodSeconds": 15},
    ])
}

fn default_rules(b: &mut Map<String, Value>, which: &str, window: i64, policies: Value) {
    let r = b.entry(which).or_insert_with(|| json!({}));
    if let Some(r) = r.as_object_mut() {
        r.entry("stabilizationWindowSeconds")
            .or_insert(json!(window));
        r.entry("selectPolicy").or_insert(json!("Max"));
        if r.get("policies")
            .and_then(Value::as_array)
            .is_none_or(|p| p.is_empty())
        {
            r.insert("policies".into(), policies);
        }
    }
}

fn cpu_metric(utilization: i64) -> Value {
    json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": utilization}}})
}

/// `SetDefaults_HorizontalPodAutoscaler` (v1): minReplicas 1.
fn hpa_v1_defaults(o: &mut Value) {
    fields::default_at(o, &["spec"], "minReplicas", json!(1));
}

fn validate_common(o: &Value, errs: &mut Vec<FieldError>) -> i64 {
    let r = |f: &str| fields::str_at(o, &["spec", "scaleTargetRef", f]).unwrap_or("");
    if r("kind").is_empty() {
        errs.push(FieldError::required("spec.scaleTargetRef.kind", ""));
    }
    let name = r("name");
    if name.is_empty() {
        errs.push(FieldError::required("spec.scaleTargetRef.name", ""));
    } else if name.contains('/') || name.contains('%') || name == "." || name == ".." {
        errs.push(FieldError::invalid(
            "spec.scaleTargetRef.name",
            &json!(name),
            "may not contain '/' or '%'",
        ));
    }
    let min = fields::i64_at(o, &["spec", "minReplicas"]).unwrap_or(1);
    if min < 1 {
        errs.push(FieldError::invalid(
            "spec.minReplicas",
            &json!(min),
            "must be greater than or equal to 1",
        ));
    }
    let max = fields::i64_at(o, &["spec", "maxReplicas"]).unwrap_or(0);
    if max < 1 {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            &json!(max),
            "must be greater than 0",
        ));
    }
    if max < min {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            &json!(max),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    min
}

fn validate_hpa_v1(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_common(o, &mut errs);
    if let Some(t) = fields::i64_at(o, &["spec", "targetCPUUtilizationPercentage"])
        && t < 1
    {
        errs.push(FieldError::invalid(
            "spec.targetCPUUtilizationPercentage",
            &json!(t),
            "must be greater than or equal to 1",
        ));
    }
    // The v2 fields carried in annotations are validated in their v2 form.
    let v2 = v1_to_v2(o);
    validate_metrics(&v2, &mut errs);
    validate_behavior(&v2, &mut errs);
    errs
}

fn validate_hpa_v2(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_common(o, &mut errs);
    validate_metrics(o, &mut errs);
    validate_behavior(o, &mut errs);
    errs
}

const METRIC_TYPES: &[&str] = &[
    "ContainerResource",
    "External",
    "Object",
    "Pods",
    "Resource",
];

fn validate_metrics(o: &Value, errs: &mut Vec<FieldError>) {
    for (i, m) in arr(o, &["spec", "metrics"]).iter().enumerate() {
        let path = format!("spec.metrics[{i}]");
        let ty = s(m, &["type"]);
        if ty.is_empty() {
            errs.push(FieldError::required(
                format!("{path}.type"),
                "must specify a metric source type",
            ));
            continue;
        }
        if !METRIC_TYPES.contains(&ty) {
            errs.push(FieldError::not_supported(
                format!("{path}.type"),
                &json!(ty),
                METRIC_TYPES,
            ));
            continue;
        }
        let (key, source) = match ty {
            "Resource" => ("resource", m.get("resource")),
            "ContainerResource" => ("containerResource", m.get("containerResource")),
            "Pods" => ("pods", m.get("pods")),
            "Object" => ("object", m.get("object")),
            _ => ("external", m.get("external")),
        };
        let Some(source) = source else {
            errs.push(FieldError::required(
                format!("{path}.{key}"),
                &format!("must populate information for the given metric source (type {ty})"),
            ));
            continue;
        };
        if matches!(ty, "Resource" | "ContainerResource") && s(source, &["name"]).is_empty() {
            errs.push(FieldError::required(
                format!("{path}.{key}.name"),
                "must specify a resource name",
            ));
        }
        let target = format!("{path}.{key}.target");
        let t = source.get("target").cloned().unwrap_or(Value::Null);
        let tt = s(&t, &["type"]);
        if tt.is_empty() {
            errs.push(FieldError::required(
                format!("{target}.type"),
                "must specify a metric target type",
            ));
        } else if !["Utilization", "Value", "AverageValue"].contains(&tt) {
            errs.push(FieldError::not_supported(
                format!("{target}.type"),
                &json!(tt),
                &["AverageValue", "Utilization", "Value"],
            ));
        }
        if let Some(u) = fields::i64_at(&t, &["averageUtilization"])
            && u < 1
        {
            errs.push(FieldError::invalid(
                format!("{target}.averageUtilization"),
                &json!(u),
                "must be greater than 0",
            ));
        }
        let set = |f: &str| t.get(f).is_some_and(|v| !v.is_null());
        if !set("averageUtilization") && !set("averageValue") && !set("value") {
            errs.push(FieldError::required(
                target.clone(),
                "must set either a target raw value or a target average value or a target percentage",
            ));
        }
    }
}

fn validate_behavior(o: &Value, errs: &mut Vec<FieldError>) {
    for which in ["scaleUp", "scaleDown"] {
        let Some(rules) = o.pointer(&format!("/spec/behavior/{which}")) else {
            continue;
        };
        let path = format!("spec.behavior.{which}");
        if let Some(w) = fields::i64_at(rules, &["stabilizationWindowSeconds"]) {
            if w < 0 {
                errs.push(FieldError::invalid(
                    format!("{path}.stabilizationWindowSeconds"),
                    &json!(w),
                    "must be greater than or equal to zero",
                ));
            } else if w > 3600 {
                errs.push(FieldError::invalid(
                    format!("{path}.stabilizationWindowSeconds"),
                    &json!(w),
                    "must be less than or equal to 3600",
                ));
            }
        }
        let sp = s(rules, &["selectPolicy"]);
        if !sp.is_empty() && !["Max", "Min", "Disabled"].contains(&sp) {
            errs.push(FieldError::not_supported(
                format!("{path}.selectPolicy"),
                &json!(sp),
                &["Disabled", "Max", "Min"],
            ));
        }
        let policies = arr(rules, &["policies"]);
        if policies.is_empty() && rules.get("policies").is_some() {
            errs.push(FieldError::required(
                format!("{path}.policies"),
                "must specify at least one Policy",
            ));
        }
        for (i, p) in policies.iter().enumerate() {
            let pp = format!("{path}.policies[{i}]");
            let ty = s(p, &["type"]);
            if !["Pods", "Percent"].contains(&ty) {
                errs.push(FieldError::not_supported(
                    format!("{pp}.type"),
                    &json!(ty),
                    &["Percent", "Pods"],
                ));
            }
            let period = int(p, &["periodSeconds"]);
            if period <= 0 {
                errs.push(FieldError::invalid(
                    format!("{pp}.periodSeconds"),
                    &json!(period),
                    "must be greater than zero",
                ));
            } else if period > 1800 {
                errs.push(FieldError::invalid(
                    format!("{pp}.periodSeconds"),
                    &json!(period),
                    "must be less than or equal to 1800",
                ));
            }
            let value = int(p, &["value"]);
            if value <= 0 {
                errs.push(FieldError::invalid(
                    format!("{pp}.value"),
                    &json!(value),
                    "must be greater than zero",
                ));
            }
        }
    }
}

/// `printHorizontalPodAutoscaler`: NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE.
fn hpa_cells(o: &Value) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        s(o, &["spec", "scaleTargetRef", "kind"]),
        s(o, &["spec", "scaleTargetRef", "name"])
    );
    let min = fields::i64_at(o, &["spec", "minReplicas"])
        .map(|m| m.to_string())
        .unwrap_or_else(|| "<unset>".into());
    vec![
        name_cell(o),
        cell(reference),
        cell(format_metrics(
            arr(o, &["spec", "metrics"]),
            arr(o, &["status", "currentMetrics"]),
        )),
        cell(min),
        json!(int(o, &["spec", "maxReplicas"])),
        json!(int(o, &["status", "currentReplicas"])),
        age_cell(o),
    ]
}

fn quantity(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// `formatHPAMetrics`: at most two metrics, `<name>: <current>/<target>`, then `+ N more...`.
fn format_metrics(specs: &[Value], statuses: &[Value]) -> String {
    if specs.is_empty() {
        return "<none>".into();
    }
    const MAXIMUM: usize = 2;
    let unknown = || "<unknown>".to_string();
    let mut list = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let status = statuses.get(i);
        let ty = s(spec, &["type"]);
        let entry = match ty {
            "External" | "Object" => {
                let key = if ty == "External" {
                    "external"
                } else {
                    "object"
                };
                let cur = status
                    .and_then(|st| st.get(key))
                    .and_then(|x| x.get("current"));
                match spec.pointer(&format!("/{key}/target/averageValue")) {
                    Some(avg) => format!(
                        "{}/{} (avg)",
                        cur.and_then(|c| c.get("averageValue"))
                            .map(|v| quantity(Some(v)))
                            .unwrap_or_else(unknown),
                        quantity(Some(avg))
                    ),
                    None => format!(
                        "{}/{}",
                        cur.and_then(|c| c.get("value"))
                            .map(|v| quantity(Some(v)))
                            .unwrap_or_else(unknown),
                        quantity(spec.pointer(&format!("/{key}/target/value")))
                    ),
                }
            }
            "Pods" => format!(
                "{}/{}",
                status
                    .and_then(|st| st.pointer("/pods/current/averageValue"))
                    .map(|v| quantity(Some(v)))
                    .unwrap_or_else(unknown),
                quantity(spec.pointer("/pods/target/averageValue"))
            ),
            "Resource" | "ContainerResource" => {
                let key = if ty == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let name = s(spec, &[key, "name"]);
                let cur = status
                    .and_then(|st| st.get(key))
                    .and_then(|x| x.get("current"));
                match spec.pointer(&format!("/{key}/target/averageValue")) {
                    Some(avg) => format!(
                        "{name}: {}/{}",
                        cur.and_then(|c| c.get("averageValue"))
                            .map(|v| quantity(Some(v)))
                            .unwrap_or_else(unknown),
                        quantity(Some(avg))
                    ),
                    None => {
                        let current = cur
                            .and_then(|c| c.get("averageUtilization"))
                            .and_then(Value::as_i64)
                            .map(|u| format!("{u}%"))
                            .unwrap_or_else(unknown);
                        let target = spec
                            .pointer(&format!("/{key}/target/averageUtilization"))
                            .and_then(Value::as_i64)
                            .map(|u| format!("{u}%"))
                            .unwrap_or_else(|| "<auto>".into());
                        format!("{name}: {current}/{target}")
                    }
                }
            }
            _ => "<unknown type>".into(),
        };
        list.push(entry);
    }
    let count = list.len();
    if count > MAXIMUM {
        list.truncate(MAXIMUM);
        return format!("{} + {} more...", list.join(", "), count - MAXIMUM);
    }
    list.join(", ")
}

fn is_cpu_utilization(m: &Value) -> bool {
    s(m, &["type"]) == "Resource"
        && s(m, &["resource", "name"]) == "cpu"
        && s(m, &["resource", "target", "type"]) == "Utilization"
}

fn annotations_mut(o: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    let m = meta.as_object_mut()?;
    m.entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

fn drop_empty_annotations(o: &mut Map<String, Value>) {
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut)
        && meta
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(|a| a.is_empty())
    {
        meta.remove("annotations");
    }
}

/// An autoscaling/v2 object in the autoscaling/v1 shape (Kubernetes' conversion: the CPU
/// utilization target maps to `targetCPUUtilizationPercentage`; other metrics, `behavior`,
/// conditions and other current metrics go to annotations).
pub fn v2_to_v1(o: &Value) -> Value {
    let Some(src) = o.as_object() else {
        return o.clone();
    };
    let mut out = src.clone();
    out.insert("apiVersion".into(), json!("autoscaling/v1"));
    let spec = src.get("spec").cloned().unwrap_or(json!({}));
    let metrics = arr(&spec, &["metrics"]).to_vec();
    let (cpu, others): (Vec<Value>, Vec<Value>) = metrics.into_iter().partition(is_cpu_utilization);
    let mut v1spec = Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(v) = spec.get(k) {
            v1spec.insert(k.into(), v.clone());
        }
    }
    if let Some(u) = cpu
        .first()
        .and_then(|m| m.pointer("/resource/target/averageUtilization"))
    {
        v1spec.insert("targetCPUUtilizationPercentage".into(), u.clone());
    }
    let status = src.get("status").cloned().unwrap_or(Value::Null);
    let mut v1status = Map::new();
    for k in [
        "observedGeneration",
        "lastScaleTime",
        "currentReplicas",
        "desiredReplicas",
    ] {
        if let Some(v) = status.get(k) {
            v1status.insert(k.into(), v.clone());
        }
    }
    let (cur_cpu, cur_others): (Vec<Value>, Vec<Value>) = arr(&status, &["currentMetrics"])
        .iter()
        .cloned()
        .partition(|m| s(m, &["type"]) == "Resource" && s(m, &["resource", "name"]) == "cpu");
    if let Some(u) = cur_cpu
        .first()
        .and_then(|m| m.pointer("/resource/current/averageUtilization"))
    {
        v1status.insert("currentCPUUtilizationPercentage".into(), u.clone());
    }
    if status.is_object() {
        v1status.entry("currentReplicas").or_insert(json!(0));
        v1status.entry("desiredReplicas").or_insert(json!(0));
    }
    let conditions = arr(&status, &["conditions"]).to_vec();
    let behavior = spec.get("behavior").cloned();
    out.insert("spec".into(), Value::Object(v1spec));
    if status.is_object() {
        out.insert("status".into(), Value::Object(v1status));
    }
    if let Some(a) = annotations_mut(&mut out) {
        let mut put = |k: &str, v: Value| {
            if let Ok(s) = serde_json::to_string(&v) {
                a.insert(k.into(), json!(s));
            }
        };
        if !others.is_empty() {
            put(METRICS_ANNOTATION, Value::Array(others));
        }
        if let Some(b) = behavior {
            put(BEHAVIOR_ANNOTATION, b);
        }
        if !conditions.is_empty() {
            put(CONDITIONS_ANNOTATION, Value::Array(conditions));
        }
        if !cur_others.is_empty() {
            put(CURRENT_METRICS_ANNOTATION, Value::Array(cur_others));
        }
    }
    drop_empty_annotations(&mut out);
    Value::Object(out)
}

/// An autoscaling/v1 object in the autoscaling/v2 shape (inverse of [`v2_to_v1`]; the
/// annotations are consumed).
pub fn v1_to_v2(o: &Value) -> Value {
    let Some(src) = o.as_object() else {
        return o.clone();
    };
    let mut out = src.clone();
    out.insert("apiVersion".into(), json!("autoscaling/v2"));
    let mut taken: Map<String, Value> = Map::new();
    if let Some(a) = annotations_mut(&mut out) {
        for k in [
            METRICS_ANNOTATION,
            BEHAVIOR_ANNOTATION,
            CONDITIONS_ANNOTATION,
            CURRENT_METRICS_ANNOTATION,
        ] {
            if let Some(v) = a.remove(k)
                && let Some(parsed) = v.as_str().and_then(|s| serde_json::from_str(s).ok())
            {
                taken.insert(k.into(), parsed);
            }
        }
    }
    drop_empty_annotations(&mut out);
    let spec = src.get("spec").cloned().unwrap_or(json!({}));
    let mut v2spec = Map::new();
    for k in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
        if let Some(v) = spec.get(k) {
            v2spec.insert(k.into(), v.clone());
        }
    }
    let mut metrics = Vec::new();
    if let Some(u) = spec
        .get("targetCPUUtilizationPercentage")
        .and_then(Value::as_i64)
    {
        metrics.push(cpu_metric(u));
    }
    if let Some(Value::Array(more)) = taken.remove(METRICS_ANNOTATION) {
        metrics.extend(more);
    }
    if !metrics.is_empty() {
        v2spec.insert("metrics".into(), Value::Array(metrics));
    }
    if let Some(b) = taken.remove(BEHAVIOR_ANNOTATION) {
        v2spec.insert("behavior".into(), b);
    }
    out.insert("spec".into(), Value::Object(v2spec));
    if let Some(status) = src.get("status").filter(|s| s.is_object()) {
        let mut v2status = Map::new();
        for k in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(v) = status.get(k) {
                v2status.insert(k.into(), v.clone());
            }
        }
        let mut current = Vec::new();
        if let Some(u) = status
            .get("currentCPUUtilizationPercentage")
            .and_then(Value::as_i64)
        {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": u}}}));
        }
        if let Some(Value::Array(more)) = taken.remove(CURRENT_METRICS_ANNOTATION) {
            current.extend(more);
        }
        if !current.is_empty() {
            v2status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(c) = taken.remove(CONDITIONS_ANNOTATION) {
            v2status.insert("conditions".into(), c);
        }
        out.insert("status".into(), Value::Object(v2status));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    cpu_metric(50),
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}},
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 70, "averageValue": "70m"}}},
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "SucceededRescale"}],
            },
        })
    }

    #[test]
    fn v1_and_v2_convert_both_ways_without_loss() {
        let v1 = v2_to_v1(&v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 70);
        assert!(
            v1["metadata"]["annotations"][METRICS_ANNOTATION]
                .as_str()
                .is_some_and(|s| s.contains("100Mi"))
        );
        let back = v1_to_v2(&v1);
        assert_eq!(back["spec"], v2()["spec"]);
        assert_eq!(back["status"]["conditions"], v2()["status"]["conditions"]);
        assert!(back["metadata"].get("annotations").is_none());
    }

    #[test]
    fn defaults_fill_cpu_and_behavior_rules() {
        let mut o = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 3, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}}}});
        hpa_v2_defaults(&mut o);
        assert_eq!(o["spec"]["minReplicas"], 1);
        assert_eq!(o["spec"]["metrics"][0], cpu_metric(80));
        assert_eq!(
            o["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            10
        );
        assert_eq!(o["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max");
        assert_eq!(
            o["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"],
            0
        );
        assert_eq!(
            o["spec"]["behavior"]["scaleUp"]["policies"],
            default_scale_up_policies()
        );
    }

    #[test]
    fn validation_uses_kubernetes_wording() {
        let o = json!({"spec": {"scaleTargetRef": {"kind": "Deployment"}, "minReplicas": 0, "maxReplicas": 0,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}}]}});
        let msgs: Vec<String> = validate_hpa_v2(&o, None)
            .into_iter()
            .map(|e| e.message)
            .collect();
        for want in [
            "spec.scaleTargetRef.name: Required value",
            "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
            "spec.maxReplicas: Invalid value: 0: must be greater than 0",
            "spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0",
        ] {
            assert!(
                msgs.iter().any(|m| m == want),
                "missing {want:?} in {msgs:?}"
            );
        }
        let v1 = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 2, "targetCPUUtilizationPercentage": 0}});
        let msgs: Vec<String> = validate_hpa_v1(&v1, None)
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert!(msgs.contains(&"spec.targetCPUUtilizationPercentage: Invalid value: 0: must be greater than or equal to 1".to_string()), "{msgs:?}");
    }

    #[test]
    fn table_cells_as_kubectl_prints_them() {
        let cells = hpa_cells(&v2());
        assert_eq!(cells[1], "Deployment/web");
        assert_eq!(cells[2], "cpu: 70%/50%, memory: <unknown>/100Mi");
        assert_eq!(cells[3], "1");
        assert_eq!(cells[4], 5);
        assert_eq!(cells[5], 2);
        let none = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 2}});
        assert_eq!(hpa_cells(&none)[2], "<none>");
        assert_eq!(hpa_cells(&none)[3], "<unset>");
    }
}
