//! batch/v1 entries: jobs and cronjobs.

use k8s_openapi::api::batch::v1 as batchv1;
use lotse_core::selectors::selector_value_matches;
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
    strategy: Strategy {
        tracks_generation: true,
        ..Strategy::DEFAULT
    },
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
        if !selector_value_matches(sel, expected.as_object()) {
            errs.push(invalid_raw(
                "spec.selector",
                &go_label_selector(sel),
                "`selector` not auto-generated",
            ));
        }
    }
    errs.extend(validate_job_spec(o));
    // ValidateJobSpec: selector required and matching the template.
    match sel {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => validate_label_selector(&mut errs, sel, "spec.selector"),
    }
    let labels = obj(o, &["spec", "template", "metadata", "labels"]);
    if sel.is_none_or(|sel| !selector_value_matches(sel, labels)) {
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

/// `validateJobSpec`: the checks of a Job spec that do not involve its selector (counts,
/// completion mode, pod replacement policy, the pod template and its restart policy). `o` holds
/// the spec under `spec`; CronJobs run it on their job template.
fn validate_job_spec(o: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
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

/// Where a CronJob's job template lives.
const JOB_TEMPLATE_POD: &[&str] = &["spec", "jobTemplate", "spec", "template"];

/// batch/v1 cronjobs.
pub const CRONJOBS: ResourceDef = ResourceDef {
    short_names: &["cj"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: cronjob_defaults,
    validate: validate_cronjob,
    columns: &[
        NAME_COLUMN,
        col(
            "Schedule",
            "string",
            0,
            "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
        ),
        col(
            "Timezone",
            "string",
            0,
            "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process.",
        ),
        col(
            "Suspend",
            "boolean",
            0,
            "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
        ),
        col(
            "Active",
            "integer",
            0,
            "A list of pointers to currently running jobs.",
        ),
        col(
            "Last Schedule",
            "string",
            0,
            "Information when was the last time the job was successfully scheduled.",
        ),
        AGE_COLUMN,
        col("Containers", "string", 1, CONTAINERS_DESC),
        col("Images", "string", 1, IMAGES_DESC),
        col(
            "Selector",
            "string",
            1,
            "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
        ),
    ],
    cells: cronjob_cells,
    strategy: Strategy {
        tracks_generation: true,
        ..Strategy::DEFAULT
    },
    ..def_of::<batchv1::CronJob>("batch", "v1", "CronJob", "cronjobs", "cronjob")
};

/// `SetDefaults_CronJob` plus the pod defaults of the job template.
fn cronjob_defaults(o: &mut Value) {
    fields::default_at(o, &["spec"], "concurrencyPolicy", json!("Allow"));
    fields::default_at(o, &["spec"], "suspend", json!(false));
    fields::default_at(o, &["spec"], "successfulJobsHistoryLimit", json!(3));
    fields::default_at(o, &["spec"], "failedJobsHistoryLimit", json!(1));
    pod::default_template(o, JOB_TEMPLATE_POD);
}

/// `ValidateCronJobCreate`/`ValidateCronJobUpdate`.
fn validate_cronjob(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let schedule = s(o, &["spec", "schedule"]);
    let time_zone = fields::at(o, &["spec", "timeZone"]).filter(|v| !v.is_null());
    if schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule", ""));
    } else {
        if let Err(e) = cron_schedule::parse_standard(schedule) {
            errs.push(FieldError::invalid(
                "spec.schedule",
                &json!(schedule),
                &e.to_string(),
            ));
        }
        // A TZ= prefix is only tolerated on objects that already had one.
        let allow_tz = old.is_some_and(|old| s(old, &["spec", "schedule"]).contains("TZ"));
        if schedule.contains("TZ") {
            let msg = match (allow_tz, time_zone.is_some()) {
                (true, true) => {
                    Some("cannot use both timeZone field and TZ or CRON_TZ in schedule")
                }
                (true, false) => None,
                (false, _) => {
                    Some("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
                }
            };
            if let Some(msg) = msg {
                errs.push(FieldError::invalid("spec.schedule", &json!(schedule), msg));
            }
        }
    }
    nonnegative(
        &mut errs,
        o,
        &["spec", "startingDeadlineSeconds"],
        "spec.startingDeadlineSeconds",
    );
    let old_zone =
        old.and_then(|old| fields::at(old, &["spec", "timeZone"]).filter(|v| !v.is_null()));
    if old.is_none() || old_zone != time_zone {
        validate_time_zone(&mut errs, time_zone);
    }
    match s(o, &["spec", "concurrencyPolicy"]) {
        "Allow" | "Forbid" | "Replace" => {}
        "" => errs.push(FieldError::required("spec.concurrencyPolicy", "")),
        other => errs.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            &json!(other),
            &["Allow", "Forbid", "Replace"],
        )),
    }
    // ValidateJobTemplateSpec: the Job checks at spec.jobTemplate.spec.
    let template_spec = fields::at(o, &["spec", "jobTemplate", "spec"])
        .cloned()
        .unwrap_or(Value::Null);
    for e in validate_job_spec(&json!({ "spec": template_spec })) {
        errs.push(reroot(e, "spec.jobTemplate.spec"));
    }
    if let Some(sel) =
        fields::at(o, &["spec", "jobTemplate", "spec", "selector"]).filter(|v| v.is_object())
    {
        errs.push(invalid_raw(
            "spec.jobTemplate.spec.selector",
            &go_label_selector(sel),
            "`selector` will be auto-generated",
        ));
    }
    if boolean(o, &["spec", "jobTemplate", "spec", "manualSelector"]) {
        errs.push(FieldError::not_supported(
            "spec.jobTemplate.spec.manualSelector",
            &json!(true),
            &["nil", "false"],
        ));
    }
    for f in ["successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        nonnegative(&mut errs, o, &["spec", f], &format!("spec.{f}"));
    }
    // The controller appends "-<11 digits>" to name Jobs, and Job names are DNS labels (63).
    let name = fields::name(o);
    if old.is_none() && name.len() > 52 {
        errs.push(FieldError::invalid(
            "metadata.name",
            &json!(name),
            "must be no more than 52 characters",
        ));
    }
    errs
}

/// Moves an error found at `spec...` of a wrapped Job spec to `root...`.
fn reroot(mut e: FieldError, root: &str) -> FieldError {
    if let Some(rest) = e.field.strip_prefix("spec") {
        e.field = format!("{root}{rest}");
    }
    if let Some(rest) = e.message.strip_prefix("spec") {
        e.message = format!("{root}{rest}");
    }
    e
}

/// `validateTimeZone`: IANA name syntax, not `Local`, and known to the time zone database.
fn validate_time_zone(errs: &mut Vec<FieldError>, time_zone: Option<&Value>) {
    let Some(v) = time_zone else { return };
    let tz = v.as_str().unwrap_or("");
    if tz.is_empty() {
        errs.push(FieldError::invalid(
            "spec.timeZone",
            v,
            "timeZone must be nil or non-empty string",
        ));
        return;
    }
    let part_ok = |p: &str| {
        p != "."
            && p != ".."
            && !p.starts_with('-')
            && (1..=14).contains(&p.len())
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'+'))
    };
    if !tz.split('/').all(part_ok) {
        errs.push(FieldError::invalid(
            "spec.timeZone",
            v,
            &format!("unknown time zone {tz}"),
        ));
        return;
    }
    if tz.eq_ignore_ascii_case("Local") {
        errs.push(FieldError::invalid(
            "spec.timeZone",
            v,
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
    }
    if let Err(e) = cron_schedule::load_location(tz) {
        errs.push(FieldError::invalid("spec.timeZone", v, &e.to_string()));
    }
}

/// kubectl's `printCronJob` row.
fn cronjob_cells(o: &Value) -> Vec<Value> {
    let time_zone = fields::str_at(o, &["spec", "timeZone"]).unwrap_or("<none>");
    let suspend = match fields::at(o, &["spec", "suspend"]).and_then(Value::as_bool) {
        Some(b) => b.to_string(),
        None => "<unset>".to_string(),
    };
    let last_schedule = match ts(o, &["status", "lastScheduleTime"]) {
        Some(t) => fields::human_duration((jiff::Timestamp::now().as_second() - t).max(0)),
        None => "<none>".to_string(),
    };
    let (names, images) = container_cells(arr(
        o,
        &[
            "spec",
            "jobTemplate",
            "spec",
            "template",
            "spec",
            "containers",
        ],
    ));
    vec![
        name_cell(o),
        cell(s(o, &["spec", "schedule"])),
        cell(time_zone),
        cell(suspend),
        Value::from(arr(o, &["status", "active"]).len()),
        cell(last_schedule),
        age_cell(o),
        cell(names),
        cell(images),
        cell(format_label_selector(fields::at(
            o,
            &["spec", "jobTemplate", "spec", "selector"],
        ))),
    ]
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

    fn cronjob() -> Value {
        let mut c = json!({"metadata": {"name": "hello", "uid": "u2"}, "spec": {
            "schedule": "*/1 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure", "containers": [{"name": "hello", "image": "busybox"}]}}}}}});
        cronjob_defaults(&mut c);
        c
    }

    fn messages(errs: Vec<FieldError>) -> Vec<String> {
        errs.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn cronjob_defaults_and_columns() {
        let c = cronjob();
        assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(c["spec"]["suspend"], false);
        assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
        assert!(
            c["spec"]["jobTemplate"]["spec"]
                .get("backoffLimit")
                .is_none()
        );
        assert!(
            validate_cronjob(&c, None).is_empty(),
            "{:?}",
            validate_cronjob(&c, None)
        );
        let cells = cronjob_cells(&c);
        assert_eq!(
            &cells[..6],
            &[
                json!("hello"),
                json!("*/1 * * * *"),
                json!("<none>"),
                json!("false"),
                json!(0),
                json!("<none>")
            ]
        );
        assert_eq!(
            &cells[7..],
            &[json!("hello"), json!("busybox"), json!("<none>")]
        );
        let cols: Vec<&str> = CRONJOBS.columns.iter().map(|c| c.name).collect();
        assert_eq!(
            cols,
            [
                "Name",
                "Schedule",
                "Timezone",
                "Suspend",
                "Active",
                "Last Schedule",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
    }

    #[test]
    fn cronjob_validation_messages() {
        let mut c = cronjob();
        c["spec"]["schedule"] = json!("61 * * * *");
        c["spec"]["timeZone"] = json!("Europe/Pariss");
        c["spec"]["concurrencyPolicy"] = json!("Sometimes");
        c["spec"]["successfulJobsHistoryLimit"] = json!(-1);
        c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        assert_eq!(
            messages(validate_cronjob(&c, None)),
            [
                "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61",
                "spec.timeZone: Invalid value: \"Europe/Pariss\": unknown time zone Europe/Pariss",
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
                "spec.jobTemplate.spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
                "spec.successfulJobsHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
            ]
        );
        let mut c = cronjob();
        c["spec"]["schedule"] = json!("CRON_TZ=UTC * * * * *");
        assert_eq!(
            messages(validate_cronjob(&c, None)),
            [
                "spec.schedule: Invalid value: \"CRON_TZ=UTC * * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            ]
        );
        // An object that already had TZ= may keep it, but not add timeZone beside it.
        let old = c.clone();
        assert!(validate_cronjob(&c, Some(&old)).is_empty());
        c["spec"]["timeZone"] = json!("UTC");
        assert_eq!(
            messages(validate_cronjob(&c, Some(&old))),
            [
                "spec.schedule: Invalid value: \"CRON_TZ=UTC * * * * *\": cannot use both timeZone field and TZ or CRON_TZ in schedule"
            ]
        );
        let mut c = cronjob();
        c["spec"]["schedule"] = json!("");
        c["spec"]["timeZone"] = json!("Local");
        c["metadata"]["name"] = json!("x".repeat(53));
        assert_eq!(
            messages(validate_cronjob(&c, None)),
            [
                "spec.schedule: Required value",
                "spec.timeZone: Invalid value: \"Local\": timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
                format!(
                    "metadata.name: Invalid value: \"{}\": must be no more than 52 characters",
                    "x".repeat(53)
                )
                .as_str(),
            ]
        );
    }
}
