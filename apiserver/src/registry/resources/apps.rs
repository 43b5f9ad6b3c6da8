//! apps/v1 entries: deployments, replicasets, statefulsets, daemonsets.

use k8s_openapi::api::apps::v1 as appsv1;
use lotse_core::selectors::{selector_string, selector_value_matches};
use serde_json::{Value, json};

use super::pod;
use super::util::*;
use crate::registry::*;

const TEMPLATE: &[&str] = &["spec", "template"];

/// Go's `%#v` of an `intstr.IntOrString`.
fn go_intstr(v: &Value) -> String {
    match v {
        Value::String(s) => format!(
            "intstr.IntOrString{{Type:1, IntVal:0, StrVal:{}}}",
            go_quote(s)
        ),
        other => format!(
            "intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}",
            other.as_i64().unwrap_or(0)
        ),
    }
}

/// `ValidatePositiveIntOrPercent` + `IsNotMoreThan100Percent` (when `max100`).
pub(super) fn validate_int_or_percent(
    errs: &mut Vec<FieldError>,
    v: Option<&Value>,
    path: &str,
    max100: bool,
) {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return;
    };
    match v {
        Value::String(s) => {
            let ok = s
                .strip_suffix('%')
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if !ok {
                errs.push(invalid_raw(path, &go_intstr(v), "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
            } else if max100 && s.trim_end_matches('%').parse::<i64>().unwrap_or(0) > 100 {
                errs.push(invalid_raw(
                    path,
                    &go_intstr(v),
                    "must not be greater than 100%",
                ));
            }
        }
        Value::Number(n) => {
            if n.as_i64().unwrap_or(0) < 0 {
                errs.push(FieldError::invalid(
                    path,
                    v,
                    "must be greater than or equal to 0",
                ));
            }
        }
        _ => errs.push(invalid_raw(
            path,
            &go_intstr(v),
            "must be an integer or percentage (e.g '5%')",
        )),
    }
}

fn int_or_percent_is_zero(v: Option<&Value>) -> bool {
    match v {
        Some(Value::String(s)) => s.trim_end_matches('%').parse::<i64>().unwrap_or(0) == 0,
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        _ => true,
    }
}

/// Selector checks shared by the workloads: required, operator checks, non-empty, and that the
/// selector matches the template labels. `kind_word` is used in "empty selector is invalid for …".
fn validate_selector_and_template(
    errs: &mut Vec<FieldError>,
    o: &Value,
    kind_word: &str,
    require: bool,
) {
    let sel = fields::at(o, &["spec", "selector"]).filter(|v| v.is_object());
    match sel {
        None if require => errs.push(FieldError::required("spec.selector", "")),
        None => {}
        Some(sel) => {
            validate_label_selector(errs, sel, "spec.selector");
            if selector_is_empty(sel) {
                errs.push(invalid_raw(
                    "spec.selector",
                    &go_label_selector(sel),
                    &format!("empty selector is invalid for {kind_word}"),
                ));
            }
        }
    }
    let labels = obj(o, &["spec", "template", "metadata", "labels"]);
    // A nil selector selects nothing; an empty one everything (and is reported above).
    let mismatch = match sel {
        None => true,
        Some(sel) => !selector_is_empty(sel) && !selector_value_matches(sel, labels),
    };
    if mismatch {
        errs.push(invalid_raw(
            "spec.template.metadata.labels",
            &go_string_map(fields::at(o, &["spec", "template", "metadata", "labels"])),
            "`selector` does not match template `labels`",
        ));
    }
}

/// Template checks for replica-style workloads: pod spec, restartPolicy Always, no
/// activeDeadlineSeconds.
fn validate_replica_template(errs: &mut Vec<FieldError>, o: &Value, kind: &str, full_spec: bool) {
    if full_spec {
        errs.extend(pod::validate_template(o, TEMPLATE, "spec.template"));
    }
    let rp = s(o, &["spec", "template", "spec", "restartPolicy"]);
    if rp != "Always" {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            &json!(rp),
            &["Always"],
        ));
    }
    if let Some(ads) = fields::at(o, &["spec", "template", "spec", "activeDeadlineSeconds"])
        .filter(|v| !v.is_null())
    {
        let msg = format!("activeDeadlineSeconds in {kind} is not Supported");
        if kind == "StatefulSet" {
            errs.push(FieldError::forbidden(
                "spec.template.spec.activeDeadlineSeconds",
                &msg,
            ));
        } else {
            errs.push(FieldError::invalid(
                "spec.template.spec.activeDeadlineSeconds",
                ads,
                &msg,
            ));
        }
    }
}

fn selector_immutable(errs: &mut Vec<FieldError>, o: &Value, old: &Value) {
    let new = fields::at(o, &["spec", "selector"]);
    let oldv = fields::at(old, &["spec", "selector"]);
    if new.filter(|v| !v.is_null()) != oldv.filter(|v| !v.is_null()) {
        let rendered = new
            .filter(|v| v.is_object())
            .map(go_label_selector)
            .unwrap_or_else(|| "null".to_string());
        errs.push(invalid_raw(
            "spec.selector",
            &rendered,
            "field is immutable",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// deployments

/// apps/v1 deployments.
pub const DEPLOYMENTS: ResourceDef = ResourceDef {
    short_names: &["deploy"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    has_status: true,
    defaults: deployment_defaults,
    validate: validate_deployment,
    columns: workload_columns![
        col("Ready", "string", 0, "Number of the pod with ready state"),
        col(
            "Up-to-date",
            "string",
            0,
            "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
        ),
        col(
            "Available",
            "string",
            0,
            "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
        ),
    ],
    cells: |o| {
        workload_cells(
            o,
            [
                cell(format!(
                    "{}/{}",
                    int(o, &["status", "readyReplicas"]),
                    int(o, &["spec", "replicas"])
                )),
                Value::from(int(o, &["status", "updatedReplicas"])),
                Value::from(int(o, &["status", "availableReplicas"])),
            ],
            Some(selector_string(fields::at(o, &["spec", "selector"]))),
        )
    },
    strategy: Strategy {
        tracks_generation: true,
        ..Strategy::DEFAULT
    },
    ..def_of::<appsv1::Deployment>("apps", "v1", "Deployment", "deployments", "deployment")
};

fn deployment_defaults(o: &mut Value) {
    fields::default_at(o, &["spec"], "replicas", json!(1));
    fields::default_at(o, &["spec", "strategy"], "type", json!("RollingUpdate"));
    if s(o, &["spec", "strategy", "type"]) == "RollingUpdate" {
        fields::default_at(
            o,
            &["spec", "strategy", "rollingUpdate"],
            "maxUnavailable",
            json!("25%"),
        );
        fields::default_at(
            o,
            &["spec", "strategy", "rollingUpdate"],
            "maxSurge",
            json!("25%"),
        );
    }
    fields::default_at(o, &["spec"], "revisionHistoryLimit", json!(10));
    fields::default_at(o, &["spec"], "progressDeadlineSeconds", json!(600));
    pod::default_template(o, TEMPLATE);
}

fn validate_deployment(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    nonnegative(&mut errs, o, &["spec", "replicas"], "spec.replicas");
    validate_selector_and_template(&mut errs, o, "deployment", true);
    validate_replica_template(&mut errs, o, "ReplicaSet", true);
    let strategy = fields::at(o, &["spec", "strategy"])
        .cloned()
        .unwrap_or(Value::Null);
    match s(&strategy, &["type"]) {
        "Recreate" => {
            if present(&strategy, &["rollingUpdate"]) {
                errs.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => {
            let ru = strategy
                .get("rollingUpdate")
                .cloned()
                .unwrap_or(Value::Null);
            let mu = ru.get("maxUnavailable");
            let ms = ru.get("maxSurge");
            validate_int_or_percent(
                &mut errs,
                mu,
                "spec.strategy.rollingUpdate.maxUnavailable",
                false,
            );
            validate_int_or_percent(&mut errs, ms, "spec.strategy.rollingUpdate.maxSurge", false);
            if int_or_percent_is_zero(mu) && int_or_percent_is_zero(ms) {
                errs.push(invalid_raw(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    &go_intstr(mu.unwrap_or(&json!(0))),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
            if let Some(Value::String(p)) = mu
                && p.trim_end_matches('%').parse::<i64>().unwrap_or(0) > 100
            {
                errs.push(invalid_raw(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    &go_intstr(&json!(p)),
                    "must not be greater than 100%",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            "spec.strategy",
            &json!(other),
            &["Recreate", "RollingUpdate"],
        )),
    }
    nonnegative(
        &mut errs,
        o,
        &["spec", "minReadySeconds"],
        "spec.minReadySeconds",
    );
    nonnegative(
        &mut errs,
        o,
        &["spec", "revisionHistoryLimit"],
        "spec.revisionHistoryLimit",
    );
    if let Some(pds) = fields::i64_at(o, &["spec", "progressDeadlineSeconds"]) {
        nonnegative(
            &mut errs,
            o,
            &["spec", "progressDeadlineSeconds"],
            "spec.progressDeadlineSeconds",
        );
        if pds <= int(o, &["spec", "minReadySeconds"]) {
            errs.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                &json!(pds),
                "must be greater than minReadySeconds",
            ));
        }
    }
    if let Some(old) = old {
        selector_immutable(&mut errs, o, old);
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// controllerrevisions

/// apps/v1 controllerrevisions (DaemonSet and StatefulSet history, read by `kubectl rollout history`).
pub const CONTROLLERREVISIONS: ResourceDef = ResourceDef {
    validate: |o, _old| {
        let mut errs = Vec::new();
        nonnegative(&mut errs, o, &["revision"], "revision");
        errs
    },
    columns: &[
        NAME_COLUMN,
        col(
            "Controller",
            "string",
            0,
            "The controller owning this revision.",
        ),
        col(
            "Revision",
            "integer",
            0,
            "Revision indicates the revision of the state represented by Data.",
        ),
        AGE_COLUMN,
    ],
    cells: |o| {
        let owner = fields::at(o, &["metadata", "ownerReferences"])
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter()
                    .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            })
            .map(|r| {
                let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
                let group = r
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .and_then(|v| v.rsplit_once('/').map(|(g, _)| g))
                    .unwrap_or_default();
                let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
                let kind = if group.is_empty() {
                    kind.to_lowercase()
                } else {
                    format!("{}.{group}", kind.to_lowercase())
                };
                format!("{kind}/{name}")
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            name_cell(o),
            cell(owner),
            Value::from(fields::i64_at(o, &["revision"]).unwrap_or(0)),
            age_cell(o),
        ]
    },
    ..def_of::<appsv1::ControllerRevision>(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
    )
};

// ---------------------------------------------------------------------------------------------
// replicasets

/// apps/v1 replicasets.
pub const REPLICASETS: ResourceDef = ResourceDef {
    short_names: &["rs"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    has_status: true,
    defaults: |o| {
        fields::default_at(o, &["spec"], "replicas", json!(1));
        pod::default_template(o, TEMPLATE);
    },
    validate: validate_replicaset,
    columns: workload_columns![
        col(
            "Desired",
            "integer",
            0,
            "Replicas is the number of desired pods.",
        ),
        col(
            "Current",
            "integer",
            0,
            "Replicas is the most recently observed number of replicas.",
        ),
        col(
            "Ready",
            "integer",
            0,
            "The number of ready replicas for this replica set.",
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
            Some(format_label_selector(fields::at(o, &["spec", "selector"]))),
        )
    },
    field: |o, f| match f {
        "status.replicas" => Some(int(o, &["status", "replicas"]).to_string()),
        _ => None,
    },
    selectable_fields: &["status.replicas"],
    strategy: Strategy {
        tracks_generation: true,
        ..Strategy::DEFAULT
    },
    ..def_of::<appsv1::ReplicaSet>("apps", "v1", "ReplicaSet", "replicasets", "replicaset")
};

fn validate_replicaset(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    nonnegative(&mut errs, o, &["spec", "replicas"], "spec.replicas");
    nonnegative(
        &mut errs,
        o,
        &["spec", "minReadySeconds"],
        "spec.minReadySeconds",
    );
    validate_selector_and_template(&mut errs, o, "deployment", true);
    validate_replica_template(&mut errs, o, "ReplicaSet", true);
    if let Some(old) = old {
        selector_immutable(&mut errs, o, old);
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// statefulsets

/// apps/v1 statefulsets.
pub const STATEFULSETS: ResourceDef = ResourceDef {
    short_names: &["sts"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    has_status: true,
    defaults: statefulset_defaults,
    validate: validate_statefulset,
    columns: workload_columns![
        no_selector,
        col("Ready", "string", 0, "Number of the pod with ready state"),
    ],
    cells: |o| {
        workload_cells(
            o,
            [cell(format!(
                "{}/{}",
                int(o, &["status", "readyReplicas"]),
                int(o, &["spec", "replicas"])
            ))],
            None,
        )
    },
    strategy: Strategy {
        tracks_generation: true,
        ..Strategy::DEFAULT
    },
    ..def_of::<appsv1::StatefulSet>("apps", "v1", "StatefulSet", "statefulsets", "statefulset")
};

fn statefulset_defaults(o: &mut Value) {
    fields::default_at(o, &["spec"], "podManagementPolicy", json!("OrderedReady"));
    if s(o, &["spec", "updateStrategy", "type"]).is_empty() {
        fields::ensure_object(o, &["spec", "updateStrategy"])
            .insert("type".into(), json!("RollingUpdate"));
        fields::ensure_object(o, &["spec", "updateStrategy", "rollingUpdate"]);
    }
    if s(o, &["spec", "updateStrategy", "type"]) == "RollingUpdate"
        && present(o, &["spec", "updateStrategy", "rollingUpdate"])
    {
        fields::default_at(
            o,
            &["spec", "updateStrategy", "rollingUpdate"],
            "partition",
            json!(0),
        );
    }
    fields::default_at(
        o,
        &["spec", "persistentVolumeClaimRetentionPolicy"],
        "whenDeleted",
        json!("Retain"),
    );
    fields::default_at(
        o,
        &["spec", "persistentVolumeClaimRetentionPolicy"],
        "whenScaled",
        json!("Retain"),
    );
    fields::default_at(o, &["spec"], "replicas", json!(1));
    fields::default_at(o, &["spec"], "revisionHistoryLimit", json!(10));
    if let Some(Value::Array(vcts)) = o
        .get_mut("spec")
        .and_then(|s| s.get_mut("volumeClaimTemplates"))
    {
        for t in vcts.iter_mut() {
            if t.get("spec").is_some_and(Value::is_object) {
                fields::default_at(t, &["spec"], "volumeMode", json!("Filesystem"));
            }
            fields::default_at(t, &["status"], "phase", json!("Pending"));
        }
    }
    pod::default_template(o, TEMPLATE);
}

fn validate_statefulset(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match s(o, &["spec", "podManagementPolicy"]) {
        "" => errs.push(FieldError::required("spec.podManagementPolicy", "")),
        "OrderedReady" | "Parallel" => {}
        other => errs.push(FieldError::invalid(
            "spec.podManagementPolicy",
            &json!(other),
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    match s(o, &["spec", "updateStrategy", "type"]) {
        "" => errs.push(FieldError::required("spec.updateStrategy", "")),
        "OnDelete" => {
            if present(o, &["spec", "updateStrategy", "rollingUpdate"]) {
                let v = fields::at(o, &["spec", "updateStrategy", "rollingUpdate"])
                    .cloned()
                    .unwrap_or(Value::Null);
                errs.push(FieldError::invalid(
                    "spec.updateStrategy.rollingUpdate",
                    &v,
                    "only allowed for updateStrategy 'RollingUpdate'",
                ));
            }
        }
        "RollingUpdate" => {
            nonnegative(
                &mut errs,
                o,
                &["spec", "updateStrategy", "rollingUpdate", "partition"],
                "spec.updateStrategy.rollingUpdate.partition",
            );
        }
        _ => {
            let v = fields::at(o, &["spec", "updateStrategy"])
                .cloned()
                .unwrap_or(Value::Null);
            errs.push(FieldError::invalid(
                "spec.updateStrategy",
                &v,
                "must be 'RollingUpdate' or 'OnDelete'",
            ));
        }
    }
    for key in ["whenDeleted", "whenScaled"] {
        let v = s(o, &["spec", "persistentVolumeClaimRetentionPolicy", key]);
        if v != "Retain" && v != "Delete" {
            errs.push(FieldError::not_supported(
                format!("spec.persistentVolumeClaimRetentionPolicy.{key}"),
                &json!(v),
                &["Retain", "Delete"],
            ));
        }
    }
    nonnegative(&mut errs, o, &["spec", "replicas"], "spec.replicas");
    nonnegative(
        &mut errs,
        o,
        &["spec", "minReadySeconds"],
        "spec.minReadySeconds",
    );
    nonnegative(
        &mut errs,
        o,
        &["spec", "ordinals", "start"],
        "spec.ordinals.start",
    );
    validate_selector_and_template(&mut errs, o, "statefulset", true);
    // Kubernetes does not validate the StatefulSet pod spec (volume claim templates satisfy mounts).
    validate_replica_template(&mut errs, o, "StatefulSet", false);
    if let Some(old) = old {
        let mut new_spec = o.get("spec").cloned().unwrap_or(json!({}));
        let old_spec = old.get("spec").cloned().unwrap_or(json!({}));
        if let (Value::Object(n), Value::Object(os)) = (&mut new_spec, &old_spec) {
            for key in [
                "replicas",
                "template",
                "updateStrategy",
                "minReadySeconds",
                "ordinals",
                "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy",
            ] {
                match os.get(key) {
                    Some(v) => n.insert(key.into(), v.clone()),
                    None => n.remove(key),
                };
            }
        }
        if new_spec != old_spec {
            errs.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// daemonsets

/// apps/v1 daemonsets.
pub const DAEMONSETS: ResourceDef = ResourceDef {
    short_names: &["ds"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: daemonset_defaults,
    validate: validate_daemonset,
    columns: workload_columns![
        col(
            "Desired",
            "integer",
            0,
            "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
        ),
        col(
            "Current",
            "integer",
            0,
            "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
        ),
        col(
            "Ready",
            "integer",
            0,
            "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
        ),
        col(
            "Up-to-date",
            "integer",
            0,
            "The total number of nodes that are running updated daemon pod",
        ),
        col(
            "Available",
            "integer",
            0,
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
        ),
        col(
            "Node Selector",
            "string",
            0,
            "NodeSelector is a selector which must be true for the pod to fit on a node.",
        ),
    ],
    cells: |o| {
        workload_cells(
            o,
            [
                Value::from(int(o, &["status", "desiredNumberScheduled"])),
                Value::from(int(o, &["status", "currentNumberScheduled"])),
                Value::from(int(o, &["status", "numberReady"])),
                Value::from(int(o, &["status", "updatedNumberScheduled"])),
                Value::from(int(o, &["status", "numberAvailable"])),
                cell(format_labels(obj(
                    o,
                    &["spec", "template", "spec", "nodeSelector"],
                ))),
            ],
            Some(format_label_selector(fields::at(o, &["spec", "selector"]))),
        )
    },
    strategy: Strategy {
        tracks_generation: true,
        ..Strategy::DEFAULT
    },
    ..def_of::<appsv1::DaemonSet>("apps", "v1", "DaemonSet", "daemonsets", "daemonset")
};

fn daemonset_defaults(o: &mut Value) {
    fields::default_at(
        o,
        &["spec", "updateStrategy"],
        "type",
        json!("RollingUpdate"),
    );
    if s(o, &["spec", "updateStrategy", "type"]) == "RollingUpdate" {
        fields::default_at(
            o,
            &["spec", "updateStrategy", "rollingUpdate"],
            "maxUnavailable",
            json!(1),
        );
        fields::default_at(
            o,
            &["spec", "updateStrategy", "rollingUpdate"],
            "maxSurge",
            json!(0),
        );
    }
    fields::default_at(o, &["spec"], "revisionHistoryLimit", json!(10));
    pod::default_template(o, TEMPLATE);
}

fn validate_daemonset(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_selector_and_template(&mut errs, o, "daemonset", false);
    validate_replica_template(&mut errs, o, "DaemonSet", true);
    nonnegative(
        &mut errs,
        o,
        &["spec", "minReadySeconds"],
        "spec.minReadySeconds",
    );
    nonnegative(
        &mut errs,
        o,
        &["spec", "revisionHistoryLimit"],
        "spec.revisionHistoryLimit",
    );
    match s(o, &["spec", "updateStrategy", "type"]) {
        "OnDelete" => {}
        "RollingUpdate" => {
            let mu = fields::at(
                o,
                &["spec", "updateStrategy", "rollingUpdate", "maxUnavailable"],
            );
            let ms = fields::at(o, &["spec", "updateStrategy", "rollingUpdate", "maxSurge"]);
            let p = "spec.updateStrategy.rollingUpdate";
            validate_int_or_percent(&mut errs, mu, &format!("{p}.maxUnavailable"), true);
            validate_int_or_percent(&mut errs, ms, &format!("{p}.maxSurge"), true);
            let mu_zero = int_or_percent_is_zero(mu);
            let ms_zero = int_or_percent_is_zero(ms);
            if !mu_zero && !ms_zero {
                errs.push(invalid_raw(
                    format!("{p}.maxSurge"),
                    &go_intstr(ms.unwrap_or(&json!(0))),
                    "may not be set when maxUnavailable is non-zero",
                ));
            } else if mu_zero && ms_zero {
                errs.push(FieldError::required(
                    format!("{p}.maxUnavailable"),
                    "cannot be 0 when maxSurge is 0",
                ));
            }
        }
        "" => errs.push(FieldError::required("spec.updateStrategy.type", "")),
        other => errs.push(FieldError::not_supported(
            "spec.updateStrategy.type",
            &json!(other),
            &["OnDelete", "RollingUpdate"],
        )),
    }
    if let Some(old) = old {
        selector_immutable(&mut errs, o, old);
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(|e| e.message.clone()).collect()
    }

    fn deployment() -> Value {
        let mut d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        deployment_defaults(&mut d);
        d
    }

    #[test]
    fn deployment_defaults_match_kubernetes() {
        let d = deployment();
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
        assert!(validate_deployment(&d, None).is_empty());
    }

    #[test]
    fn deployment_validation_messages() {
        let mut d = deployment();
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["template"]["metadata"]["labels"] = json!({"app": "x"});
        assert_eq!(
            msgs(&validate_deployment(&d, None)),
            [
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"x\"}: `selector` does not match template `labels`",
            ]
        );
        let mut d = deployment();
        d["spec"].as_object_mut().map(|m| m.remove("selector"));
        assert_eq!(
            msgs(&validate_deployment(&d, None)),
            [
                "spec.selector: Required value",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
            ]
        );
        let old = deployment();
        let mut new = deployment();
        new["spec"]["selector"]["matchLabels"] = json!({"app": "web", "tier": "fe"});
        new["spec"]["template"]["metadata"]["labels"] = json!({"app": "web", "tier": "fe"});
        assert_eq!(
            msgs(&validate_deployment(&new, Some(&old))),
            [
                "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"tier\":\"fe\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
            ]
        );
        let mut d = deployment();
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxUnavailable": 0, "maxSurge": 0});
        assert_eq!(
            msgs(&validate_deployment(&d, None)),
            [
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}: may not be 0 when `maxSurge` is 0",
            ]
        );
    }

    #[test]
    fn workload_defaults_and_cells() {
        let mut sts = json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}],
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        statefulset_defaults(&mut sts);
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["status"]["phase"],
            "Pending"
        );
        let mut new = sts.clone();
        new["spec"]["serviceName"] = json!("other");
        assert_eq!(msgs(&validate_statefulset(&new, Some(&sts))).len(), 1);
        let mut ds = json!({"spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"nodeSelector": {"k": "v"}, "containers": [{"name": "c", "image": "i"}]}}}});
        daemonset_defaults(&mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"],
            json!({"maxUnavailable": 1, "maxSurge": 0})
        );
        assert!(validate_daemonset(&ds, None).is_empty());
        let cells = (DAEMONSETS.cells)(&ds);
        assert_eq!(cells[6], "k=v");
        assert_eq!(cells[10], "a=b");
        let mut rs = deployment();
        rs["spec"]["selector"]["matchExpressions"] =
            json!([{"key": "tier", "operator": "NotIn", "values": ["b", "a"]}]);
        let cells = (REPLICASETS.cells)(&rs);
        assert_eq!(cells[7], "app=web,tier notin (a,b)");
        let cells = (DEPLOYMENTS.cells)(&rs);
        assert_eq!(cells[1], "0/1");
        assert_eq!(cells[5], "web");
        assert_eq!(cells[6], "nginx");
    }
}
