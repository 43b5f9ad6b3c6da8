//! More core/v1 entries: replicationcontrollers, podtemplates and (for its Table only)
//! componentstatuses.

use k8s_openapi::api::core::v1 as corev1;
use serde_json::{Value, json};

use super::pod;
use super::util::*;
use crate::registry::*;

const TEMPLATE: &[&str] = &["spec", "template"];

/// core/v1 replicationcontrollers (with `/status` and `/scale`).
pub const REPLICATIONCONTROLLERS: ResourceDef = ResourceDef {
    short_names: &["rc"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    has_status: true,
    defaults: rc_defaults,
    validate: validate_rc,
    columns: workload_columns![
        col(
            "Desired",
            "integer",
            0,
            "Replicas is the number of desired replicas. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller#what-is-a-replicationcontroller",
        ),
        col(
            "Current",
            "integer",
            0,
            "Replicas is the most recently observed number of replicas. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller#what-is-a-replicationcontroller",
        ),
        col(
            "Ready",
            "integer",
            0,
            "The number of ready replicas for this replication controller.",
        ),
    ],
    cells: |o| {
        workload_cells(
            o,
            [
                Value::from(int(o, &["spec", "replicas"])),
                Value::from(int(o, &["status", "replicas"])),
                Value::from(int(o, &["status", "readyReplicas"])),
            ],
            Some(format_labels(obj(o, &["spec", "selector"]))),
        )
    },
    ..def_of::<corev1::ReplicationController>(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
    )
};

/// `SetDefaults_ReplicationController`: selector and labels from the template's labels,
/// one replica; then the template's pod defaults.
fn rc_defaults(o: &mut Value) {
    if let Some(tl) = obj(o, &["spec", "template", "metadata", "labels"]).cloned() {
        if obj(o, &["spec", "selector"]).is_none_or(|s| s.is_empty()) {
            fields::ensure_object(o, &["spec"])
                .insert("selector".into(), Value::Object(tl.clone()));
        }
        if obj(o, &["metadata", "labels"]).is_none_or(|l| l.is_empty()) {
            fields::ensure_object(o, &["metadata"]).insert("labels".into(), Value::Object(tl));
        }
    }
    fields::default_at(o, &["spec"], "replicas", json!(1));
    pod::default_template(o, TEMPLATE);
}

/// `ValidateReplicationControllerSpec` with `ValidatePodTemplateSpecForRC`.
fn validate_rc(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    nonnegative(
        &mut errs,
        o,
        &["spec", "minReadySeconds"],
        "spec.minReadySeconds",
    );
    let selector = obj(o, &["spec", "selector"]).filter(|s| !s.is_empty());
    if selector.is_none() {
        errs.push(FieldError::required("spec.selector", ""));
    }
    nonnegative(&mut errs, o, &["spec", "replicas"], "spec.replicas");
    if !present(o, TEMPLATE) {
        errs.push(FieldError::required("spec.template", ""));
        return errs;
    }
    let labels = fields::at(o, &["spec", "template", "metadata", "labels"]);
    if let Some(sel) = selector {
        let matches = sel
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
        if !matches {
            errs.push(invalid_raw(
                "spec.template.metadata.labels",
                &go_string_map(labels),
                "`selector` does not match template `labels`",
            ));
        }
    }
    errs.extend(pod::validate_template(o, TEMPLATE, "spec.template"));
    let rp = s(o, &["spec", "template", "spec", "restartPolicy"]);
    if rp != "Always" {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            &json!(rp),
            &["Always"],
        ));
    }
    if let Some(v) = fields::at(o, &["spec", "template", "spec", "activeDeadlineSeconds"])
        .filter(|v| !v.is_null())
    {
        errs.push(FieldError::invalid(
            "spec.template.spec.activeDeadlineSeconds",
            v,
            "activeDeadlineSeconds in ReplicationController is not Supported",
        ));
    }
    errs
}

/// core/v1 podtemplates.
pub const PODTEMPLATES: ResourceDef = ResourceDef {
    defaults: |o| pod::default_template(o, &["template"]),
    validate: |o, _| {
        let mut errs = pod::validate_template(o, &["template"], "template");
        let rp = s(o, &["template", "spec", "restartPolicy"]);
        if !matches!(rp, "Always" | "OnFailure" | "Never") {
            errs.push(FieldError::not_supported(
                "template.spec.restartPolicy",
                &json!(rp),
                &["Always", "OnFailure", "Never"],
            ));
        }
        errs
    },
    columns: &[
        NAME_COLUMN,
        col("Containers", "string", 0, CONTAINERS_DESC),
        col("Images", "string", 0, IMAGES_DESC),
        col(
            "Pod Labels",
            "string",
            0,
            "The labels for the pod template.",
        ),
    ],
    cells: |o| {
        let (names, images) = container_cells(arr(o, &["template", "spec", "containers"]));
        vec![
            name_cell(o),
            cell(names),
            cell(images),
            cell(format_labels(obj(o, &["template", "metadata", "labels"]))),
        ]
    },
    ..def_of::<corev1::PodTemplate>("", "v1", "PodTemplate", "podtemplates", "podtemplate")
};

/// core/v1 componentstatuses: the entry behind the Table of `kubectl get cs` (not in `ALL`:
/// the objects are computed, never stored; served by `crate::endpoints::componentstatus`).
pub const COMPONENTSTATUSES: ResourceDef = ResourceDef {
    namespaced: false,
    short_names: &["cs"],
    columns: &[
        NAME_COLUMN,
        col("Status", "string", 0, "Status of the component conditions"),
        col(
            "Message",
            "string",
            0,
            "Message of the component conditions",
        ),
        col("Error", "string", 0, "Error of the component conditions"),
    ],
    cells: status_cells,
    ..def_of::<corev1::ComponentStatus>(
        "",
        "v1",
        "ComponentStatus",
        "componentstatuses",
        "componentstatus",
    )
};

/// kubectl's `printComponentStatus` row.
fn status_cells(o: &Value) -> Vec<Value> {
    let mut status = "Unknown";
    let (mut message, mut error) = ("", "");
    for c in o
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if c.get("type").and_then(Value::as_str) == Some("Healthy") {
            status = if c.get("status").and_then(Value::as_str) == Some("True") {
                "Healthy"
            } else {
                "Unhealthy"
            };
            message = c.get("message").and_then(Value::as_str).unwrap_or("");
            error = c.get("error").and_then(Value::as_str).unwrap_or("");
            break;
        }
    }
    vec![
        json!(fields::name(o)),
        json!(status),
        json!(message),
        json!(error),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_status_rows_as_kubectl_prints_them() {
        let ok = crate::endpoints::componentstatus::object("scheduler", Ok(()));
        assert_eq!(
            status_cells(&ok),
            [json!("scheduler"), json!("Healthy"), json!("ok"), json!("")]
        );
        let bad =
            crate::endpoints::componentstatus::object("etcd-0", Err("connection refused".into()));
        assert_eq!(
            status_cells(&bad),
            [
                json!("etcd-0"),
                json!("Unhealthy"),
                json!(""),
                json!("connection refused")
            ]
        );
    }

    fn rc() -> Value {
        let mut o = json!({"metadata": {"name": "web"}, "spec": {"template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}});
        rc_defaults(&mut o);
        o
    }

    #[test]
    fn rc_defaults_selector_and_labels_from_the_template() {
        let o = rc();
        assert_eq!(o["spec"]["selector"], json!({"app": "web"}));
        assert_eq!(o["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(o["spec"]["replicas"], 1);
        assert_eq!(o["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(
            validate_rc(&o, None).is_empty(),
            "{:?}",
            validate_rc(&o, None)
        );
        let cells = (REPLICATIONCONTROLLERS.cells)(&o);
        assert_eq!(cells[1..4], [json!(1), json!(0), json!(0)]);
        assert_eq!(
            cells[5..],
            [json!("nginx"), json!("nginx"), json!("app=web")]
        );
    }

    #[test]
    fn rc_validation_messages() {
        let mut o = rc();
        o["spec"]["selector"] = json!({"app": "other"});
        o["spec"]["replicas"] = json!(-1);
        o["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        let msgs: Vec<String> = validate_rc(&o, None)
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            msgs,
            [
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            ]
        );
    }

    #[test]
    fn podtemplate_columns() {
        let mut o = json!({"metadata": {"name": "t"}, "template": {"metadata": {"labels": {"b": "2", "a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}});
        (PODTEMPLATES.defaults)(&mut o);
        assert!((PODTEMPLATES.validate)(&o, None).is_empty());
        assert_eq!(
            (PODTEMPLATES.cells)(&o),
            [json!("t"), json!("c"), json!("busybox"), json!("a=1,b=2")]
        );
    }
}
