//! batch/v1 entries: jobs.

use k8s_openapi::api::batch::v1 as batchv1;
use serde_json::{Value, json};

use super::pod;
use super::util::*;
use crate::registry::*;

const TEMPLATE: &[&str] = &["spec", "template"];
const LEGACY_UID: &str = "controller-uid";
const UID: &str = "batch.kubernetes.io/controller-uid";
const LEGACY_NAME: &str = "job-name";
const NAME: &str = "batch.kubernetes.io/job-name";

/// batch/v1 jobs.
pub const JOBS: ResourceDef = ResourceDef {
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: job_defaults,
    validate: validate_job,
    columns: workload_columns![
        col("Status", "string", 0, "Status of the job."),
        col(
            "Completions",
            "string",
            0,
            "The number of pods which reached phase Succeeded.",
        ),
        col(
            "Duration",
            "string",
            0,
            "Time required to complete the job.",
        ),
    ],
    cells: job_cells,
    field: |o, f| match f {
        "status.successful" => Some(int(o, &["status", "succeeded"]).to_string()),
        _ => None,
    },
    selectable_fields: &["status.successful"],
    ..def_of::<batchv1::Job>("batch", "v1", "Job", "jobs", "job")
};

/// `SetDefaults_Job` plus the job strategy's selector generation (needs `metadata.uid`, which the
/// caller sets before defaulting) and the template's pod spec defaults.
fn job_defaults(o: &mut Value) {
    if !present(o, &["spec", "completions"]) && !present(o, &["spec", "parallelism"]) {
        fields::default_at(o, &["spec"], "completions", json!(1));
    }
    fields::default_at(o, &["spec"], "parallelism", json!(1));
    let backoff = if present(o, &["spec", "backoffLimitPerIndex"]) {
        i64::from(i32::MAX)
    } else {
        6
    };
    fields::default_at(o, &["spec"], "backoffLimit", json!(backoff));
    fields::default_at(o, &["spec"], "completionMode", json!("NonIndexed"));
    fields::default_at(o, &["spec"], "suspend", json!(false));
    let has_pfp = present(o, &["spec", "podFailurePolicy"]);
    if has_pfp
        && let Some(Value::Array(rules)) = o
            .get_mut("spec")
            .and_then(|s| s.get_mut("podFailurePolicy"))
            .and_then(|p| p.get_mut("rules"))
    {
        for r in rules.iter_mut() {
            if let Some(Value::Array(conds)) = r.get_mut("onPodConditions") {
                for c in conds.iter_mut() {
                    if s(c, &["status"]).is_empty() {
                        fields::default_at(c, &[], "status", json!("True"));
                    }
                }
            }
        }
    }
    let prp = if has_pfp {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    fields::default_at(o, &["spec"], "podReplacementPolicy", json!(prp));
    // Selector generation (jobStrategy.PrepareForCreate's generateSelector).
    let manual = boolean(o, &["spec", "manualSelector"]);
    let uid = s(o, &["metadata", "uid"]).to_string();
    let name = fields::name(o).to_string();
    if !manual && !uid.is_empty() {
        let labels = fields::ensure_object(o, &["spec", "template", "metadata", "labels"]);
        for key in [LEGACY_NAME, NAME] {
            labels.entry(key).or_insert_with(|| json!(name));
        }
        for key in [LEGACY_UID, UID] {
            labels.entry(key).or_insert_with(|| json!(uid));
        }
        let ml = fields::ensure_object(o, &["spec", "selector", "matchLabels"]);
        ml.entry(UID).or_insert_with(|| json!(uid));
    }
    // Job labels default to the template labels.
    if let Some(tl) = obj(o, &["spec", "template", "metadata", "labels"]).cloned()
        && obj(o, &["metadata", "labels"]).is_none_or(|l| l.is_empty())
    {
        fields::ensure_object(o, &["metadata"]).insert("labels".into(), Value::Object(tl));
    }
    pod::default_template(o, TEMPLATE);
}

fn validate_has_label(errs: &mut Vec<FieldError>, o: &Value, key: &str, expected: &str) {
    let labels = fields::at(o, &["spec", "template", "metadata", "labels"]);
    let path = format!("spec.template.metadata.labels[{key}]");
    match labels.and_then(|l| l.get(key)).and_then(Value::as_str) {
        None => errs.push(FieldError::required(path, expected)),
        Some(v) if v != expected => errs.push(invalid_raw(path, &go_string_map(labels), expected)),
        Some(_) => {}
    }
}

fn validate_job(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let sel = fields::at(o, &["spec", "selector"]).filter(|v| v.is_object());
    let uid = s(o, &["metadata", "uid"]);
    let name = fields::name(o);
    // validateGeneratedSelector
    if !boolean(o, &["spec", "manualSelector"])
        && let Some(sel) = sel
    {
        if uid.is_empty() {
            errs.push(FieldError::required("metadata.uid", ""));
        }
        validate_has_label(&mut errs, o, LEGACY_UID, uid);
        validate_has_label(&mut errs, o, LEGACY_NAME, name);
        validate_has_label(&mut errs, o, UID, uid);
        validate_has_label(&mut errs, o, NAME, name);
        let expected = json!({LEGACY_UID: uid, LEGACY_NAME: name, UID: uid, NAME: name});
        if !selector_matches(sel, expected.as_object()) {
            errs.push(invalid_raw(
                "spec.selector",
                &go_label_selector(sel),
                "`selector` not auto-generated",
            ));
        }
    }
    for f in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        nonnegative(&mut errs, o, &["spec", f], &format!("spec.{f}"));
    }
    let mode = s(o, &["spec", "completionMode"]);
    match mode {
        "" | "NonIndexed" => {
            if let Some(v) = fields::i64_at(o, &["spec", "backoffLimitPerIndex"]) {
                errs.push(FieldError::invalid(
                    "spec.backoffLimitPerIndex",
                    &json!(v),
                    "requires indexed completion mode",
                ));
            }
        }
        "Indexed" => {
            if !present(o, &["spec", "completions"]) {
                errs.push(FieldError::required(
                    "spec.completions",
                    "when completion mode is Indexed",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            "spec.completionMode",
            &json!(other),
            &["NonIndexed", "Indexed"],
        )),
    }
    if let Some(prp) = fields::str_at(o, &["spec", "podReplacementPolicy"]) {
        if present(o, &["spec", "podFailurePolicy"]) {
            if prp != "Failed" {
                errs.push(FieldError::not_supported(
                    "spec.podReplacementPolicy",
                    &json!(prp),
                    &["Failed"],
                ));
            }
        } else if prp != "Failed" && prp != "TerminatingOrFailed" {
            errs.push(FieldError::not_supported(
                "spec.podReplacementPolicy",
                &json!(prp),
                &["Failed", "TerminatingOrFailed"],
            ));
        }
    }
    errs.extend(pod::validate_template(o, TEMPLATE, "spec.template"));
    let rp = s(o, &["spec", "template", "spec", "restartPolicy"]);
    if rp == "Always" || rp.is_empty() {
        errs.push(FieldError::required(
            "spec.template.spec.restartPolicy",
            "valid values: \"OnFailure\", \"Never\"",
        ));
    } else if rp != "OnFailure" && rp != "Never" {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            &json!(rp),
            &["OnFailure", "Never"],
        ));
    } else if present(o, &["spec", "podFailurePolicy"]) && rp != "Never" {
        errs.push(FieldError::invalid(
            "spec.template.spec.restartPolicy",
            &json!(rp),
            "only \"Never\" is supported when podFailurePolicy is specified",
        ));
    }
    // ValidateJobSpec: selector required and matching the template.
    match sel {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => validate_label_selector(&mut errs, sel, "spec.selector"),
    }
    let labels = obj(o, &["spec", "template", "metadata", "labels"]);
    if sel.is_none_or(|sel| !selector_matches(sel, labels)) {
        errs.push(invalid_raw(
            "spec.template.metadata.labels",
            &go_string_map(fields::at(o, &["spec", "template", "metadata", "labels"])),
            "`selector` does not match template `labels`",
        ));
    }
    if let Some(old) = old {
        for f in [
            "completions",
            "completionMode",
            "podFailurePolicy",
            "backoffLimitPerIndex",
        ] {
            immutable(
                &mut errs,
                &format!("spec.{f}"),
                fields::at(o, &["spec", f]),
                fields::at(old, &["spec", f]),
            );
        }
        let new_sel = fields::at(o, &["spec", "selector"]).filter(|v| !v.is_null());
        if new_sel != fields::at(old, &["spec", "selector"]).filter(|v| !v.is_null()) {
            let r = new_sel
                .map(go_label_selector)
                .unwrap_or_else(|| "null".to_string());
            errs.push(invalid_raw("spec.selector", &r, "field is immutable"));
        }
        // The template is immutable, except for scheduling directives of suspended jobs that never
        // started.
        let mutable_scheduling =
            boolean(old, &["spec", "suspend"]) && !present(old, &["status", "startTime"]);
        if !mutable_scheduling {
            immutable(
                &mut errs,
                "spec.template",
                fields::at(o, TEMPLATE),
                fields::at(old, TEMPLATE),
            );
        }
    }
    errs
}

fn job_condition(o: &Value, ty: &str) -> bool {
    arr(o, &["status", "conditions"])
        .iter()
        .find(|c| s(c, &["type"]) == ty)
        .is_some_and(|c| s(c, &["status"]) == "True")
}

fn ts(v: &Value, path: &[&str]) -> Option<i64> {
    fields::str_at(v, path)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

fn job_cells(o: &Value) -> Vec<Value> {
    let succeeded = int(o, &["status", "succeeded"]);
    let completions = match fields::i64_at(o, &["spec", "completions"]) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let p = int(o, &["spec", "parallelism"]);
            if p > 1 {
                format!("{succeeded}/1 of {p}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let duration = match (
        ts(o, &["status", "startTime"]),
        ts(o, &["status", "completionTime"]),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => {
            fields::human_duration((jiff::Timestamp::now().as_second() - start).max(0))
        }
        (Some(start), Some(end)) => fields::human_duration((end - start).max(0)),
    };
    let status = if job_condition(o, "Complete") {
        "Complete"
    } else if job_condition(o, "Failed") {
        "Failed"
    } else if present(o, &["metadata", "deletionTimestamp"]) {
        "Terminating"
    } else if job_condition(o, "Suspended") {
        "Suspended"
    } else if job_condition(o, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    workload_cells(
        o,
        [cell(status), cell(completions), cell(duration)],
        Some(format_label_selector(fields::at(o, &["spec", "selector"]))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Value {
        let mut j = json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]}}}});
        job_defaults(&mut j);
        j
    }

    #[test]
    fn job_defaults_generate_the_selector() {
        let j = job();
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
        assert_eq!(j["spec"]["suspend"], false);
        assert_eq!(j["spec"]["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(j["spec"]["selector"], json!({"matchLabels": {UID: "u1"}}));
        let labels = json!({LEGACY_NAME: "pi", NAME: "pi", LEGACY_UID: "u1", UID: "u1"});
        assert_eq!(j["spec"]["template"]["metadata"]["labels"], labels);
        assert_eq!(j["metadata"]["labels"], labels);
        assert!(
            validate_job(&j, None).is_empty(),
            "{:?}",
            validate_job(&j, None)
        );
        let mut par = json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"parallelism": 3, "template": {}}});
        job_defaults(&mut par);
        assert!(par["spec"].get("completions").is_none());
        assert_eq!(job_cells(&par)[2], "0/1 of 3");
    }

    #[test]
    fn job_validation_messages() {
        let mut j = job();
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        j["spec"]["backoffLimit"] = json!(-1);
        let msgs: Vec<String> = validate_job(&j, None)
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            msgs,
            [
                "spec.backoffLimit: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
            ]
        );
        let old = job();
        let mut new = job();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:2");
        new["spec"]["completions"] = json!(2);
        let fields: Vec<String> = validate_job(&new, Some(&old))
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["spec.completions", "spec.template"]);
    }
}
