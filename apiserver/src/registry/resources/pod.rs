//! Pod spec behaviour shared by pods and every pod template (Deployments, Jobs, ...):
//! Kubernetes' `SetDefaults_PodSpec`/`SetDefaults_Container`/... and `ValidatePodSpec`, the
//! pod update rules, and kubectl's pod STATUS/READY/RESTARTS computation.

use std::collections::HashSet;

use lotse_core::names::{dns1123_label, dns1123_subdomain};
use lotse_core::qos::pod_qos_class;
use serde_json::{Map, Value, json};

use super::util::*;
use crate::registry::{FieldError, UpdateScope, fields};

/// Sets `key` on an object value if absent or null.
fn set_default(m: &mut Map<String, Value>, key: &str, v: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), v);
    }
}

/// Applies `f` to every object in the array at `key` of `m`.
fn each_in(m: &mut Map<String, Value>, key: &str, mut f: impl FnMut(&mut Map<String, Value>)) {
    if let Some(Value::Array(a)) = m.get_mut(key) {
        for x in a.iter_mut() {
            if let Value::Object(o) = x {
                f(o);
            }
        }
    }
}

/// Applies `f` to the object at `key` of `m` if present.
fn with_obj(m: &mut Map<String, Value>, key: &str, f: impl FnOnce(&mut Map<String, Value>)) {
    if let Some(Value::Object(o)) = m.get_mut(key) {
        f(o);
    }
}

/// The tag of an image reference as `parsers.ParseImageName` sees it ("latest" when neither a tag
/// nor a digest is given, "" for digest-only references).
pub(crate) fn image_tag(image: &str) -> String {
    let (name, has_digest) = match image.split_once('@') {
        Some((n, _)) => (n, true),
        None => (image, false),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag.to_string(),
        None if has_digest => String::new(),
        None => "latest".to_string(),
    }
}

fn default_http_get(h: &mut Map<String, Value>) {
    with_obj(h, "httpGet", |g| {
        set_default(g, "path", json!("/"));
        set_default(g, "scheme", json!("HTTP"));
    });
}

fn default_probe(p: &mut Map<String, Value>) {
    set_default(p, "timeoutSeconds", json!(1));
    set_default(p, "periodSeconds", json!(10));
    set_default(p, "successThreshold", json!(1));
    set_default(p, "failureThreshold", json!(3));
    default_http_get(p);
    with_obj(p, "grpc", |g| set_default(g, "service", json!("")));
}

fn default_field_ref(m: &mut Map<String, Value>) {
    with_obj(m, "fieldRef", |f| set_default(f, "apiVersion", json!("v1")));
}

/// `SetDefaults_Container` and the defaults of its nested structs.
fn default_container(c: &mut Map<String, Value>) {
    if c.get("imagePullPolicy")
        .is_none_or(|v| v.is_null() || v == "")
    {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        let policy = if image_tag(image) == "latest" {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    each_in(c, "ports", |p| set_default(p, "protocol", json!("TCP")));
    each_in(c, "env", |e| with_obj(e, "valueFrom", default_field_ref));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        with_obj(c, probe, default_probe);
    }
    with_obj(c, "lifecycle", |l| {
        with_obj(l, "postStart", default_http_get);
        with_obj(l, "preStop", default_http_get);
    });
}

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

/// `SetDefaults_Volume` and the volume sources' defaults.
fn default_volume(v: &mut Map<String, Value>) {
    if !VOLUME_SOURCES
        .iter()
        .any(|k| v.get(*k).is_some_and(|x| !x.is_null()))
    {
        v.insert("emptyDir".into(), json!({}));
    }
    with_obj(v, "secret", |s| set_default(s, "defaultMode", json!(420)));
    with_obj(v, "configMap", |s| {
        set_default(s, "defaultMode", json!(420))
    });
    with_obj(v, "downwardAPI", |s| {
        set_default(s, "defaultMode", json!(420));
        each_in(s, "items", default_field_ref);
    });
    with_obj(v, "hostPath", |s| set_default(s, "type", json!("")));
    with_obj(v, "projected", |s| {
        set_default(s, "defaultMode", json!(420));
        each_in(s, "sources", |src| {
            with_obj(src, "serviceAccountToken", |t| {
                set_default(t, "expirationSeconds", json!(3600))
            });
            with_obj(src, "downwardAPI", |d| {
                each_in(d, "items", default_field_ref)
            });
        });
    });
    with_obj(v, "iscsi", |s| {
        set_default(s, "iscsiInterface", json!("default"))
    });
    with_obj(v, "ephemeral", |e| {
        with_obj(e, "volumeClaimTemplate", |t| {
            with_obj(t, "spec", |s| {
                set_default(s, "volumeMode", json!("Filesystem"))
            });
        });
    });
}

/// `SetDefaults_PodSpec` (+ nested defaults). `is_pod` adds `SetDefaults_Pod`'s pod-only defaults
/// (enableServiceLinks, requests from limits, hostNetwork host ports).
pub(crate) fn default_pod_spec(spec: &mut Value, is_pod: bool) {
    let Value::Object(m) = spec else { return };
    set_default(m, "dnsPolicy", json!("ClusterFirst"));
    set_default(m, "restartPolicy", json!("Always"));
    set_default(m, "securityContext", json!({}));
    set_default(m, "terminationGracePeriodSeconds", json!(30));
    set_default(m, "schedulerName", json!("default-scheduler"));
    each_in(m, "containers", default_container);
    each_in(m, "initContainers", default_container);
    each_in(m, "ephemeralContainers", default_container);
    each_in(m, "volumes", default_volume);
    if is_pod {
        set_default(m, "enableServiceLinks", json!(true));
        let host_network = m
            .get("hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        for key in ["containers", "initContainers"] {
            each_in(m, key, |c| {
                if let Some(limits) = c
                    .get("resources")
                    .and_then(|r| r.get("limits"))
                    .and_then(Value::as_object)
                    .cloned()
                    && !limits.is_empty()
                    && let Some(Value::Object(r)) = c.get_mut("resources")
                {
                    let req = r.entry("requests").or_insert_with(|| json!({}));
                    if !req.is_object() {
                        *req = json!({});
                    }
                    if let Value::Object(req) = req {
                        for (k, v) in limits {
                            req.entry(k).or_insert(v);
                        }
                    }
                }
                if host_network {
                    each_in(c, "ports", |p| {
                        if p.get("hostPort").and_then(Value::as_i64).unwrap_or(0) == 0
                            && let Some(cp) = p.get("containerPort").cloned()
                        {
                            p.insert("hostPort".into(), cp);
                        }
                    });
                }
            });
        }
    }
}

/// `SetDefaults_PodTemplateSpec`-equivalent for a workload: defaults `<path>.spec` of a template.
pub(crate) fn default_template(o: &mut Value, template_path: &[&str]) {
    let mut path: Vec<&str> = template_path.to_vec();
    path.push("spec");
    if fields::at(o, &path).is_some_and(Value::is_object) {
        let spec = fields::ensure_object(o, &path);
        let mut v = Value::Object(std::mem::take(spec));
        default_pod_spec(&mut v, false);
        if let Value::Object(m) = v {
            *fields::ensure_object(o, &path) = m;
        }
    }
}

/// Pod defaults: spec defaults plus the status Kubernetes' pod strategy sets on create
/// (phase Pending, qosClass, the SchedulingGated condition).
pub(crate) fn pod_defaults(o: &mut Value) {
    if let Some(spec) = o.get_mut("spec") {
        default_pod_spec(spec, true);
    }
    let qos = o
        .get("spec")
        .map_or("BestEffort", |s| pod_qos_class(s).as_str());
    let gated = !arr(o, &["spec", "schedulingGates"]).is_empty();
    let status = fields::ensure_object(o, &["status"]);
    set_default(status, "phase", json!("Pending"));
    set_default(status, "qosClass", json!(qos));
    if gated {
        let conds = status.entry("conditions").or_insert_with(|| json!([]));
        if let Value::Array(a) = conds
            && !a
                .iter()
                .any(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"))
        {
            a.push(json!({
                "type": "PodScheduled",
                "status": "False",
                "reason": "SchedulingGated",
                "message": "Scheduling is blocked due to non-empty scheduling gates",
                "lastProbeTime": null,
                "lastTransitionTime": null,
            }));
        }
    }
}

fn validate_ports(errs: &mut Vec<FieldError>, c: &Value, path: &str) {
    let mut names = HashSet::new();
    for (i, p) in arr(c, &["ports"]).iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        let name = s(p, &["name"]);
        if !name.is_empty() {
            push_invalid_all(
                errs,
                &format!("{pp}.name"),
                &json!(name),
                port_name_errors(name),
            );
            if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), &json!(name)));
            }
        }
        let cp = int(p, &["containerPort"]);
        if cp == 0 {
            errs.push(FieldError::required(format!("{pp}.containerPort"), ""));
        } else {
            push_invalid_all(
                errs,
                &format!("{pp}.containerPort"),
                &json!(cp),
                port_num_errors(cp),
            );
        }
        let hp = int(p, &["hostPort"]);
        if hp != 0 {
            push_invalid_all(
                errs,
                &format!("{pp}.hostPort"),
                &json!(hp),
                port_num_errors(hp),
            );
        }
        match s(p, &["protocol"]) {
            "" => errs.push(FieldError::required(format!("{pp}.protocol"), "")),
            "TCP" | "UDP" | "SCTP" => {}
            other => errs.push(FieldError::not_supported(
                format!("{pp}.protocol"),
                &json!(other),
                &["SCTP", "TCP", "UDP"],
            )),
        }
    }
}

fn validate_probe(errs: &mut Vec<FieldError>, c: &Value, key: &str, path: &str) {
    let Some(p) = c.get(key).filter(|p| p.is_object()) else {
        return;
    };
    let pp = format!("{path}.{key}");
    let handlers = ["exec", "httpGet", "tcpSocket", "grpc"]
        .iter()
        .filter(|h| present(p, &[h]))
        .count();
    if handlers == 0 {
        errs.push(FieldError::required(
            pp.clone(),
            "must specify a handler type",
        ));
    } else if handlers > 1 {
        errs.push(FieldError::forbidden(
            pp.clone(),
            "may not specify more than 1 handler type",
        ));
    }
    for f in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        nonnegative(errs, p, &[f], &format!("{pp}.{f}"));
    }
    if key != "readinessProbe" {
        let st = int(p, &["successThreshold"]);
        if present(p, &["successThreshold"]) && st != 1 {
            errs.push(FieldError::invalid(
                format!("{pp}.successThreshold"),
                &json!(st),
                "must be 1",
            ));
        }
    }
}

fn validate_container(
    errs: &mut Vec<FieldError>,
    c: &Value,
    path: &str,
    volumes: &HashSet<String>,
    is_init: bool,
) {
    let name = s(c, &["name"]);
    if name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else {
        push_invalid_all(
            errs,
            &format!("{path}.name"),
            &json!(name),
            dns1123_label(name),
        );
    }
    if s(c, &["image"]).is_empty() {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    }
    match s(c, &["terminationMessagePolicy"]) {
        "File" | "FallbackToLogsOnError" => {}
        "" => errs.push(FieldError::required(
            format!("{path}.terminationMessagePolicy"),
            "",
        )),
        other => errs.push(FieldError::not_supported(
            format!("{path}.terminationMessagePolicy"),
            &json!(other),
            &["File", "FallbackToLogsOnError"],
        )),
    }
    match s(c, &["imagePullPolicy"]) {
        "Always" | "IfNotPresent" | "Never" => {}
        "" => errs.push(FieldError::required(format!("{path}.imagePullPolicy"), "")),
        other => errs.push(FieldError::not_supported(
            format!("{path}.imagePullPolicy"),
            &json!(other),
            &["Always", "IfNotPresent", "Never"],
        )),
    }
    validate_ports(errs, c, path);
    for (i, m) in arr(c, &["volumeMounts"]).iter().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        let vname = s(m, &["name"]);
        if vname.is_empty() {
            errs.push(FieldError::required(format!("{mp}.name"), ""));
        } else if !volumes.contains(vname) {
            let field = format!("{mp}.name");
            let message = format!("{field}: Not found: {}", go_quote(vname));
            errs.push(FieldError {
                reason: "FieldValueNotFound",
                field,
                message,
            });
        }
        if s(m, &["mountPath"]).is_empty() {
            errs.push(FieldError::required(format!("{mp}.mountPath"), ""));
        }
    }
    let restartable_init = is_init && s(c, &["restartPolicy"]) == "Always";
    if !is_init || restartable_init {
        validate_probe(errs, c, "livenessProbe", path);
        validate_probe(errs, c, "readinessProbe", path);
        validate_probe(errs, c, "startupProbe", path);
    } else {
        for p in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if present(c, &[p]) {
                errs.push(FieldError::forbidden(
                    format!("{path}.{p}"),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
    }
    if is_init
        && let Some(rp) = c.get("restartPolicy").and_then(Value::as_str)
        && rp != "Always"
    {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            &json!(rp),
            &["Always"],
        ));
    }
}

/// `ValidatePodSpec` (the important parts). `path` is the spec's path, e.g. `spec` or
/// `spec.template.spec`.
pub(crate) fn validate_pod_spec(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut vol_names = HashSet::new();
    for (i, v) in arr(spec, &["volumes"]).iter().enumerate() {
        let vp = format!("{path}.volumes[{i}].name");
        let name = s(v, &["name"]);
        if name.is_empty() {
            errs.push(FieldError::required(vp, ""));
        } else {
            push_invalid_all(&mut errs, &vp, &json!(name), dns1123_label(name));
            if !vol_names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(vp, &json!(name)));
            }
        }
    }
    let containers = arr(spec, &["containers"]);
    let mut names: HashSet<String> = HashSet::new();
    for (i, c) in arr(spec, &["initContainers"]).iter().enumerate() {
        let cp = format!("{path}.initContainers[{i}]");
        validate_container(&mut errs, c, &cp, &vol_names, true);
        let n = s(c, &["name"]);
        if !n.is_empty() && !names.insert(n.to_string()) {
            errs.push(FieldError::duplicate(format!("{cp}.name"), &json!(n)));
        }
    }
    let init_names = names.clone();
    let mut regular: HashSet<String> = HashSet::new();
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    for (i, c) in containers.iter().enumerate() {
        let cp = format!("{path}.containers[{i}]");
        validate_container(&mut errs, c, &cp, &vol_names, false);
        let n = s(c, &["name"]);
        if !n.is_empty() && !regular.insert(n.to_string()) {
            errs.push(FieldError::duplicate(format!("{cp}.name"), &json!(n)));
        }
    }
    for (i, c) in arr(spec, &["initContainers"]).iter().enumerate() {
        let n = s(c, &["name"]);
        if regular.contains(n) && init_names.contains(n) {
            errs.push(FieldError::duplicate(
                format!("{path}.initContainers[{i}].name"),
                &json!(n),
            ));
        }
    }
    validate_ephemeral_containers(&mut errs, spec, path, &vol_names);
    match s(spec, &["restartPolicy"]) {
        "Always" | "OnFailure" | "Never" => {}
        "" => errs.push(FieldError::required(format!("{path}.restartPolicy"), "")),
        other => errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            &json!(other),
            &["Always", "OnFailure", "Never"],
        )),
    }
    match s(spec, &["dnsPolicy"]) {
        "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" => {}
        "None" => {
            if !present(spec, &["dnsConfig"]) {
                errs.push(FieldError::required(
                    format!("{path}.dnsConfig"),
                    "must provide `dnsConfig` when `dnsPolicy` is None",
                ));
            }
        }
        "" => errs.push(FieldError::required(format!("{path}.dnsPolicy"), "")),
        other => errs.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            &json!(other),
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        )),
    }
    if let Some(ads) = fields::i64_at(spec, &["activeDeadlineSeconds"])
        && !(1..=i64::from(i32::MAX)).contains(&ads)
    {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            &json!(ads),
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    for key in ["hostname", "subdomain"] {
        let v = s(spec, &[key]);
        if !v.is_empty() {
            push_invalid_all(
                &mut errs,
                &format!("{path}.{key}"),
                &json!(v),
                dns1123_label(v),
            );
        }
    }
    let sa = s(spec, &["serviceAccountName"]);
    if !sa.is_empty() {
        push_invalid_all(
            &mut errs,
            &format!("{path}.serviceAccountName"),
            &json!(sa),
            dns1123_subdomain(sa),
        );
    }
    validate_tolerations(
        &mut errs,
        arr(spec, &["tolerations"]),
        &format!("{path}.tolerations"),
    );
    errs
}

/// `ValidateTolerations`: operators and effects of the tolerations at `path`.
pub(crate) fn validate_tolerations(errs: &mut Vec<FieldError>, tolerations: &[Value], path: &str) {
    for (i, t) in tolerations.iter().enumerate() {
        let tp = format!("{path}[{i}]");
        match s(t, &["operator"]) {
            "" | "Equal" => {}
            "Exists" => {
                if !s(t, &["value"]).is_empty() {
                    errs.push(FieldError::invalid(
                        format!("{tp}.operator"),
                        &json!(s(t, &["value"])),
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{tp}.operator"),
                &json!(other),
                &["Equal", "Exists"],
            )),
        }
        match s(t, &["effect"]) {
            "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute" => {}
            other => errs.push(FieldError::not_supported(
                format!("{tp}.effect"),
                &json!(other),
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            )),
        }
    }
}

/// `ValidatePodTemplateSpec` for a workload template at `path` (e.g. `spec.template`).
pub(crate) fn validate_template(o: &Value, template_path: &[&str], path: &str) -> Vec<FieldError> {
    let Some(t) = fields::at(o, template_path).filter(|t| t.is_object()) else {
        return vec![FieldError::required(path.to_string(), "")];
    };
    let spec = t.get("spec").cloned().unwrap_or(Value::Null);
    let mut errs = validate_pod_spec(&spec, &format!("{path}.spec"));
    if !arr(&spec, &["ephemeralContainers"]).is_empty() {
        errs.push(FieldError::forbidden(
            format!("{path}.spec.ephemeralContainers"),
            "ephemeral containers not allowed in pod template",
        ));
    }
    errs
}

const POD_UPDATABLE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// A small line diff of two pretty-printed JSON values (`-` old, `+` new).
fn simple_diff(old: &Value, new: &Value) -> String {
    let o = serde_json::to_string_pretty(old).unwrap_or_default();
    let n = serde_json::to_string_pretty(new).unwrap_or_default();
    let ol: Vec<&str> = o.lines().collect();
    let nl: Vec<&str> = n.lines().collect();
    let mut start = 0;
    while start < ol.len() && start < nl.len() && ol[start] == nl[start] {
        start += 1;
    }
    let (mut oe, mut ne) = (ol.len(), nl.len());
    while oe > start && ne > start && ol[oe - 1] == nl[ne - 1] {
        oe -= 1;
        ne -= 1;
    }
    let mut out = Vec::new();
    out.extend(ol[start..oe].iter().map(|l| format!("-{l}")));
    out.extend(nl[start..ne].iter().map(|l| format!("+{l}")));
    out.join("\n")
}

/// The fields an ephemeral container may not set, in Go field order
/// (`allowedEphemeralContainerFields` is the complement).
const EPHEMERAL_FORBIDDEN_FIELDS: &[&str] = &[
    "ports",
    "resources",
    "resizePolicy",
    "restartPolicy",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
];

/// Go's zero value: absent, null, empty object/array/string.
fn is_zero(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.values().all(|v| is_zero(Some(v))),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Bool(b)) => !b,
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
    }
}

/// `validateEphemeralContainers`: the common container rules, names unique across every
/// container of the pod, `targetContainerName` naming an init or regular container, and
/// none of the fields that make a container part of the workload.
fn validate_ephemeral_containers(
    errs: &mut Vec<FieldError>,
    spec: &Value,
    path: &str,
    volumes: &HashSet<String>,
) {
    let ephemeral = arr(spec, &["ephemeralContainers"]);
    if ephemeral.is_empty() {
        return;
    }
    let others: HashSet<&str> = arr(spec, &["containers"])
        .iter()
        .chain(arr(spec, &["initContainers"]))
        .map(|c| s(c, &["name"]))
        .collect();
    let mut all = others.clone();
    for (i, ec) in ephemeral.iter().enumerate() {
        let ip = format!("{path}.ephemeralContainers[{i}]");
        validate_container(errs, ec, &ip, volumes, false);
        let name = s(ec, &["name"]);
        if !all.insert(name) {
            errs.push(FieldError::duplicate(format!("{ip}.name"), &json!(name)));
        }
        let target = s(ec, &["targetContainerName"]);
        if !target.is_empty() && !others.contains(target) {
            let field = format!("{ip}.targetContainerName");
            let message = format!("{field}: Not found: {}", go_quote(target));
            errs.push(FieldError {
                reason: "FieldValueNotFound",
                field,
                message,
            });
        }
        for f in EPHEMERAL_FORBIDDEN_FIELDS {
            if !is_zero(ec.get(*f)) {
                errs.push(FieldError::forbidden(
                    format!("{ip}.{f}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        for (j, m) in arr(ec, &["volumeMounts"]).iter().enumerate() {
            for f in ["subPath", "subPathExpr"] {
                if !s(m, &[f]).is_empty() {
                    errs.push(FieldError::forbidden(
                        format!("{ip}.volumeMounts[{j}].{f}"),
                        "cannot be set for an Ephemeral Container",
                    ));
                }
            }
        }
    }
}

/// `ValidatePodCreate`: ephemeral containers are only added through the subresource.
pub(crate) fn validate_pod_create(pod: &Value) -> Vec<FieldError> {
    if arr(pod, &["spec", "ephemeralContainers"]).is_empty() {
        Vec::new()
    } else {
        vec![FieldError::forbidden(
            "spec.ephemeralContainers",
            "cannot be set on create",
        )]
    }
}

/// The second half of `ValidatePodEphemeralContainersUpdate`: existing ephemeral containers
/// are neither removed nor changed (matched by name: patches don't keep the order).
fn validate_ephemeral_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let new_list = arr(new, &["spec", "ephemeralContainers"]);
    // Static pods don't support ephemeral containers (kubernetes#113935).
    if new_list != arr(old, &["spec", "ephemeralContainers"])
        && old
            .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some()
    {
        return vec![FieldError::forbidden(
            "",
            "static pods do not support ephemeral containers",
        )];
    }
    for oc in arr(old, &["spec", "ephemeralContainers"]) {
        let name = s(oc, &["name"]);
        match new_list.iter().find(|c| s(c, &["name"]) == name) {
            None => errs.push(FieldError::forbidden(
                "spec.ephemeralContainers",
                &format!(
                    "existing ephemeral containers {} may not be removed\n",
                    go_quote(name)
                ),
            )),
            Some(nc) if strip_nulls(nc) != strip_nulls(oc) => errs.push(FieldError::forbidden(
                "spec.ephemeralContainers",
                &format!(
                    "existing ephemeral containers {} may not be changed\n{}",
                    go_quote(name),
                    simple_diff(oc, nc)
                ),
            )),
            Some(_) => {}
        }
    }
    errs
}

/// The pod spec's containers of all kinds, in Kubernetes' visiting order (init, regular,
/// ephemeral).
pub fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect()
}

/// The pod update strategy: ephemeral containers change only through
/// `pods/ephemeralcontainers`, and that subresource changes nothing else.
pub(crate) fn prepare_for_update(old: &Value, new: &mut Value, scope: UpdateScope) {
    match scope {
        UpdateScope::Main => keep_ephemeral_containers(old, new),
        UpdateScope::EphemeralContainers => {
            *new = keep_only_ephemeral_containers(old, std::mem::take(new));
        }
        UpdateScope::Status | UpdateScope::Approval => {}
    }
}

/// `CheckGracefulDelete`: a pod bound to a node and not finished is deleted gracefully (the
/// kubelet stops it and confirms), by default after `spec.terminationGracePeriodSeconds` (30).
pub(crate) fn graceful_delete(obj: &Value) -> Option<i64> {
    let bound = fields::str_at(obj, &["spec", "nodeName"]).is_some_and(|n| !n.is_empty());
    let finished = matches!(
        fields::str_at(obj, &["status", "phase"]),
        Some("Succeeded") | Some("Failed")
    );
    (bound && !finished)
        .then(|| fields::i64_at(obj, &["spec", "terminationGracePeriodSeconds"]).unwrap_or(30))
}

/// `dropNonEphemeralContainerUpdates`: a write through `pods/ephemeralcontainers` takes only
/// `spec.ephemeralContainers` (and the metadata the caller may touch) from `new`.
fn keep_only_ephemeral_containers(old: &Value, new: Value) -> Value {
    let mut out = old.clone();
    if let Value::Object(m) = &mut out {
        if let Some(meta) = new.get("metadata") {
            m.insert("metadata".into(), meta.clone());
        }
        if let Some(Value::Object(spec)) = m.get_mut("spec") {
            match new.pointer("/spec/ephemeralContainers") {
                Some(v) if !v.is_null() => spec.insert("ephemeralContainers".into(), v.clone()),
                _ => spec.remove("ephemeralContainers"),
            };
        }
    }
    fields::ensure_object(&mut out, &["metadata"]).remove("resourceVersion");
    out
}

/// A write of the pod itself keeps the stored ephemeral containers: they change only through
/// `pods/ephemeralcontainers`.
fn keep_ephemeral_containers(old: &Value, new: &mut Value) {
    if let Some(Value::Object(spec)) = new.get_mut("spec") {
        match old.pointer("/spec/ephemeralContainers") {
            Some(v) => spec.insert("ephemeralContainers".into(), v.clone()),
            None => spec.remove("ephemeralContainers"),
        };
    }
}

/// `ValidatePodUpdate`'s spec rules: only images, activeDeadlineSeconds, toleration additions,
/// terminationGracePeriodSeconds (negative to 1) and scheduling gate removals may change.
pub(crate) fn validate_pod_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = validate_ephemeral_update(new, old);
    let new_spec = strip_nulls(new.get("spec").unwrap_or(&Value::Null));
    let old_spec = strip_nulls(old.get("spec").unwrap_or(&Value::Null));
    // activeDeadlineSeconds: may be set or decreased, never unset or increased.
    let new_ads = fields::i64_at(&new_spec, &["activeDeadlineSeconds"]);
    let old_ads = fields::i64_at(&old_spec, &["activeDeadlineSeconds"]);
    match (old_ads, new_ads) {
        (Some(_), None) => errs.push(invalid_raw(
            "spec.activeDeadlineSeconds",
            "null",
            "must not update from a positive integer to nil value",
        )),
        (Some(o), Some(n)) if n > o => errs.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            &json!(n),
            "must be less than or equal to previous value",
        )),
        _ => {}
    }
    let mut munged = new_spec.clone();
    if let (Value::Object(m), Value::Object(om)) = (&mut munged, &old_spec) {
        for key in ["containers", "initContainers"] {
            let old_list = om.get(key).and_then(Value::as_array);
            if let (Some(Value::Array(a)), Some(ol)) = (m.get_mut(key), old_list)
                && a.len() == ol.len()
            {
                for (c, oc) in a.iter_mut().zip(ol) {
                    if let Value::Object(c) = c {
                        match oc.get("image") {
                            Some(img) => c.insert("image".into(), img.clone()),
                            None => c.remove("image"),
                        };
                    }
                }
            }
        }
        for key in ["activeDeadlineSeconds", "ephemeralContainers"] {
            match om.get(key) {
                Some(v) => m.insert(key.into(), v.clone()),
                None => m.remove(key),
            };
        }
        // Tolerations: additions only.
        let old_t = om
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let new_t = m
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if old_t.iter().all(|t| new_t.contains(t)) {
            match om.get("tolerations") {
                Some(v) => m.insert("tolerations".into(), v.clone()),
                None => m.remove("tolerations"),
            };
        }
        // Scheduling gates: removals only.
        let old_g = om
            .get("schedulingGates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let new_g = m
            .get("schedulingGates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if new_g.iter().all(|g| old_g.contains(g)) {
            match om.get("schedulingGates") {
                Some(v) => m.insert("schedulingGates".into(), v.clone()),
                None => m.remove("schedulingGates"),
            };
        }
        let old_tgps = om
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64);
        let new_tgps = m
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64);
        if old_tgps.is_some_and(|t| t < 0) && new_tgps == Some(1) {
            m.insert("terminationGracePeriodSeconds".into(), json!(old_tgps));
        }
    }
    if munged != old_spec {
        let detail = format!("{POD_UPDATABLE}\n{}", simple_diff(&old_spec, &munged));
        errs.push(FieldError::forbidden("spec", &detail));
    }
    errs
}

fn cond_true(o: &Value, ty: &str) -> bool {
    arr(o, &["status", "conditions"])
        .iter()
        .any(|c| s(c, &["type"]) == ty && s(c, &["status"]) == "True")
}

/// kubectl's pod row: (READY, STATUS, RESTARTS) as `printPod` computes them.
pub(crate) fn pod_ready_status_restarts(pod: &Value) -> (String, String, i64) {
    let phase = s(pod, &["status", "phase"]);
    let mut reason = phase.to_string();
    let status_reason = s(pod, &["status", "reason"]);
    if !status_reason.is_empty() {
        reason = status_reason.to_string();
    }
    for c in arr(pod, &["status", "conditions"]) {
        if s(c, &["type"]) == "PodScheduled" && s(c, &["reason"]) == "SchedulingGated" {
            reason = "SchedulingGated".to_string();
        }
    }
    let init_specs = arr(pod, &["spec", "initContainers"]);
    let is_restartable = |name: &str| {
        init_specs
            .iter()
            .any(|c| s(c, &["name"]) == name && s(c, &["restartPolicy"]) == "Always")
    };
    let mut total = arr(pod, &["spec", "containers"]).len() as i64;
    total += init_specs
        .iter()
        .filter(|c| s(c, &["restartPolicy"]) == "Always")
        .count() as i64;
    let mut ready = 0i64;
    let mut restarts = 0i64;
    let mut restartable_restarts = 0i64;
    let mut initializing = false;
    for (i, c) in arr(pod, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        let rc = int(c, &["restartCount"]);
        restarts += rc;
        let restartable = is_restartable(s(c, &["name"]));
        if restartable {
            restartable_restarts += rc;
        }
        let terminated = c
            .get("state")
            .and_then(|st| st.get("terminated"))
            .filter(|t| t.is_object());
        let waiting = c
            .get("state")
            .and_then(|st| st.get("waiting"))
            .filter(|t| t.is_object());
        if terminated.is_some_and(|t| int(t, &["exitCode"]) == 0) {
            continue;
        }
        if restartable && boolean(c, &["started"]) {
            if boolean(c, &["ready"]) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let r = s(t, &["reason"]);
            reason = if r.is_empty() {
                let sig = int(t, &["signal"]);
                if sig != 0 {
                    format!("Init:Signal:{sig}")
                } else {
                    format!("Init:ExitCode:{}", int(t, &["exitCode"]))
                }
            } else {
                format!("Init:{r}")
            };
        } else if let Some(w) = waiting
            .filter(|w| !s(w, &["reason"]).is_empty() && s(w, &["reason"]) != "PodInitializing")
        {
            reason = format!("Init:{}", s(w, &["reason"]));
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    if !initializing || cond_true(pod, "Initialized") {
        restarts = restartable_restarts;
        let mut has_running = false;
        for c in arr(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts += int(c, &["restartCount"]);
            let state = c.get("state");
            let waiting = state
                .and_then(|st| st.get("waiting"))
                .filter(|t| t.is_object());
            let terminated = state
                .and_then(|st| st.get("terminated"))
                .filter(|t| t.is_object());
            let running = state
                .and_then(|st| st.get("running"))
                .filter(|t| t.is_object());
            if let Some(w) = waiting.filter(|w| !s(w, &["reason"]).is_empty()) {
                reason = s(w, &["reason"]).to_string();
            } else if let Some(t) = terminated {
                let r = s(t, &["reason"]);
                reason = if !r.is_empty() {
                    r.to_string()
                } else if int(t, &["signal"]) != 0 {
                    format!("Signal:{}", int(t, &["signal"]))
                } else {
                    format!("ExitCode:{}", int(t, &["exitCode"]))
                };
            } else if boolean(c, &["ready"]) && running.is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if cond_true(pod, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }
    let deleting = present(pod, &["metadata", "deletionTimestamp"]);
    if deleting && status_reason == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }
    (format!("{ready}/{total}"), reason, restarts)
}

/// The pod's readiness gates cell (`<none>` or `true/total`).
pub(crate) fn readiness_gates(pod: &Value) -> String {
    let gates = arr(pod, &["spec", "readinessGates"]);
    if gates.is_empty() {
        return "<none>".to_string();
    }
    let conds = arr(pod, &["status", "conditions"]);
    let n = gates
        .iter()
        .filter(|g| {
            let ty = s(g, &["conditionType"]);
            conds
                .iter()
                .find(|c| s(c, &["type"]) == ty)
                .is_some_and(|c| s(c, &["status"]) == "True")
        })
        .count();
    format!("{n}/{}", gates.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_pull_policy_follows_the_tag() {
        for (image, policy) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.25", "IfNotPresent"),
            ("localhost:5000/nginx", "Always"),
            ("localhost:5000/nginx:1.0", "IfNotPresent"),
            ("nginx@sha256:abcd", "IfNotPresent"),
            ("nginx:1.0@sha256:abcd", "IfNotPresent"),
        ] {
            let mut spec = json!({"containers": [{"name": "c", "image": image}]});
            default_pod_spec(&mut spec, false);
            assert_eq!(spec["containers"][0]["imagePullPolicy"], policy, "{image}");
        }
    }

    #[test]
    fn pod_spec_defaults() {
        let mut pod = json!({"spec": {
            "hostNetwork": true,
            "containers": [{
                "name": "c", "image": "x:1", "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                "livenessProbe": {"httpGet": {"port": 80}}
            }],
            "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "s"}}]
        }});
        pod_defaults(&mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        let c = &spec["containers"][0];
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(
            c["ports"][0],
            json!({"containerPort": 80, "hostPort": 80, "protocol": "TCP"})
        );
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                   "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(spec["volumes"][1]["secret"]["defaultMode"], 420);
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "Guaranteed"})
        );
        let mut template = json!({"containers": [{"name": "c", "image": "x"}]});
        default_pod_spec(&mut template, false);
        assert!(template.get("enableServiceLinks").is_none());
    }

    fn msgs(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.message.as_str()).collect()
    }

    #[test]
    fn pod_spec_validation_messages() {
        let spec =
            json!({"restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "containers": []});
        assert_eq!(
            msgs(&validate_pod_spec(&spec, "spec")),
            ["spec.containers: Required value"]
        );
        let c = |name: &str, image: &str| json!({"name": name, "image": image, "imagePullPolicy": "Always", "terminationMessagePolicy": "File"});
        let spec = json!({"restartPolicy": "Sometimes", "dnsPolicy": "ClusterFirst",
            "containers": [c("Web", "x"), c("a", ""), c("a", "y")]});
        assert_eq!(
            msgs(&validate_pod_spec(&spec, "spec")),
            [
                "spec.containers[0].name: Invalid value: \"Web\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                "spec.containers[1].image: Required value",
                "spec.containers[2].name: Duplicate value: \"a\"",
                "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            ]
        );
        let mut bad_port = c("a", "x");
        bad_port["ports"] = json!([{"containerPort": 70000, "protocol": "TCP"}]);
        let spec = json!({"restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "containers": [bad_port]});
        assert_eq!(
            msgs(&validate_pod_spec(&spec, "spec")),
            [
                "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
            ]
        );
    }

    #[test]
    fn pod_updates_only_change_allowed_fields() {
        let mut old = json!({"spec": {"containers": [{"name": "c", "image": "x:1"}]}});
        pod_defaults(&mut old);
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("x:2");
        new["spec"]["activeDeadlineSeconds"] = json!(30);
        new["spec"]["tolerations"] = json!([{"key": "k", "operator": "Exists"}]);
        assert!(validate_pod_update(&new, &old).is_empty());
        new["spec"]["containers"][0]["command"] = json!(["sleep"]);
        let errs = validate_pod_update(&new, &old);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec");
        assert!(errs[0].message.starts_with("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)\n"));
    }

    #[test]
    fn ephemeral_containers_are_validated_like_kubernetes() {
        let mut pod = json!({"spec": {
            "containers": [{"name": "main", "image": "busybox"}],
            "ephemeralContainers": [
                {"name": "dbg", "image": "busybox", "targetContainerName": "main", "resources": {}},
                {"name": "main", "image": "busybox", "targetContainerName": "nope",
                 "ports": [{"containerPort": 80}],
                 "readinessProbe": {"exec": {"command": ["true"]}},
                 "lifecycle": {"preStop": {"exec": {"command": ["true"]}}}},
            ],
        }});
        pod_defaults(&mut pod);
        let errs = validate_pod_spec(&pod["spec"], "spec");
        let m = msgs(&errs);
        for want in [
            "spec.ephemeralContainers[1].name: Duplicate value: \"main\"",
            "spec.ephemeralContainers[1].targetContainerName: Not found: \"nope\"",
            "spec.ephemeralContainers[1].ports: Forbidden: cannot be set for an Ephemeral Container",
            "spec.ephemeralContainers[1].readinessProbe: Forbidden: cannot be set for an Ephemeral Container",
            "spec.ephemeralContainers[1].lifecycle: Forbidden: cannot be set for an Ephemeral Container",
        ] {
            assert!(m.contains(&want), "{want} missing in {m:?}");
        }
        assert!(
            !m.iter().any(|e| e.contains("ephemeralContainers[0]")),
            "{m:?}"
        );
        assert_eq!(
            msgs(&validate_pod_create(&pod)),
            ["spec.ephemeralContainers: Forbidden: cannot be set on create"]
        );
    }

    #[test]
    fn existing_ephemeral_containers_are_neither_changed_nor_removed() {
        let mut old = json!({"spec": {"containers": [{"name": "c", "image": "x"}],
            "ephemeralContainers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]}});
        pod_defaults(&mut old);
        // Added through the subresource: only the new list is taken.
        let mut sent = old.clone();
        sent["spec"]["containers"][0]["image"] = json!("changed-elsewhere");
        if let Some(a) = sent["spec"]["ephemeralContainers"].as_array_mut() {
            a.push(json!({"name": "c2", "image": "busybox"}));
        }
        let new = keep_only_ephemeral_containers(&old, sent);
        assert_eq!(new["spec"]["containers"], old["spec"]["containers"]);
        assert_eq!(
            new["spec"]["ephemeralContainers"].as_array().map(Vec::len),
            Some(3)
        );
        assert!(validate_pod_update(&new, &old).is_empty());
        // Removing `a` and changing `b`.
        let mut bad = old.clone();
        bad["spec"]["ephemeralContainers"] = json!([{"name": "b", "image": "other"}]);
        let errs = validate_pod_update(&bad, &old);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(
            errs[0].message,
            "spec.ephemeralContainers: Forbidden: existing ephemeral containers \"a\" may not be removed\n"
        );
        assert!(errs[1].message.starts_with(
            "spec.ephemeralContainers: Forbidden: existing ephemeral containers \"b\" may not be changed\n"
        ));
        // Not on static pods.
        let mut mirror = old.clone();
        mirror["metadata"] = json!({"annotations": {"kubernetes.io/config.mirror": "x"}});
        let mut added = mirror.clone();
        added["spec"]["ephemeralContainers"] = json!([]);
        assert_eq!(
            msgs(&validate_pod_update(&added, &mirror)),
            [": Forbidden: static pods do not support ephemeral containers"]
        );
        assert!(validate_pod_update(&mirror, &mirror).is_empty());
        // A write of the pod itself keeps them.
        let mut main = old.clone();
        main["spec"]["ephemeralContainers"] = json!([]);
        keep_ephemeral_containers(&old, &mut main);
        assert_eq!(main, old);
    }

    fn status_of(pod: Value) -> (String, String, i64) {
        pod_ready_status_restarts(&pod)
    }

    #[test]
    fn pod_status_column_is_computed_like_kubectl() {
        let running = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {"phase": "Running",
        "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
            {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
        ]}});
        assert_eq!(
            status_of(running.clone()),
            ("1/2".into(), "CrashLoopBackOff".into(), 3)
        );
        let mut terminating = running.clone();
        terminating["metadata"] = json!({"deletionTimestamp": "2024-01-01T00:00:00Z"});
        assert_eq!(status_of(terminating).1, "Terminating");
        let init = json!({"spec": {"initContainers": [{"name": "i"}, {"name": "j"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i", "state": {"terminated": {"exitCode": 0}}},
                {"name": "j", "state": {"running": {}}}],
                "containerStatuses": [{"name": "a", "state": {"waiting": {"reason": "PodInitializing"}}}]}});
        assert_eq!(status_of(init), ("0/1".into(), "Init:1/2".into(), 0));
        let init_err = json!({"spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}});
        assert_eq!(status_of(init_err).1, "Init:Error");
        let done = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Succeeded",
            "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}});
        assert_eq!(status_of(done), ("0/1".into(), "Completed".into(), 0));
        let evicted = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Failed", "reason": "Evicted"}});
        assert_eq!(status_of(evicted).1, "Evicted");
        let gated = json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}});
        assert_eq!(status_of(gated).1, "SchedulingGated");
    }
}
