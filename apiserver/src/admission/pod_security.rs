//! Pod Security Admission: the `pod-security.kubernetes.io/enforce|warn|audit` namespace labels
//! with the privileged/baseline/restricted levels, Kubernetes' checks in its order and its
//! messages (`violates PodSecurity "restricted:latest": ...`). Pods are rejected on `enforce`;
//! `warn` (and `enforce` for workload templates) become `Warning` headers.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Operation;
use crate::error::{ApiError, ApiResult};
use crate::registry::resources::NAMESPACES;
use crate::registry::{ResourceDef, fields};
use crate::server::AppState;

/// A Pod Security Standards level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No restrictions.
    Privileged,
    /// Minimally restrictive: blocks known privilege escalations.
    Baseline,
    /// Hardening best practices.
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` / `containers "a", "b"` with the matching verb form.
fn subjects(kind: &str, names: &[String]) -> String {
    if names.len() == 1 {
        format!("{kind} {}", quoted(names))
    } else {
        format!("{kind}s {}", quoted(names))
    }
}

fn verb(names: &[String], one: &str, many: &str) -> String {
    if names.len() == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}

struct Pod<'a> {
    spec: &'a Value,
}

impl<'a> Pod<'a> {
    fn containers(&self) -> Vec<&'a Value> {
        super::all_containers(self.spec)
    }

    fn names(&self, mut pred: impl FnMut(&Value) -> bool) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|c| pred(c))
            .map(|c| {
                c.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    fn pod_sc(&self, path: &str) -> Option<&'a Value> {
        self.spec.pointer(&format!("/securityContext/{path}"))
    }
}

fn sc<'v>(c: &'v Value, path: &str) -> Option<&'v Value> {
    c.pointer(&format!("/securityContext/{path}"))
}

fn caps_added(c: &Value) -> Vec<String> {
    sc(c, "capabilities/add")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Checks of `level` that `spec` violates: (title, detail), in Kubernetes' order.
pub fn evaluate(level: Level, spec: &Value) -> Vec<(String, String)> {
    let p = Pod { spec };
    let mut out: Vec<(String, String)> = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    // capabilities_baseline
    let mut bad_caps = BTreeSet::new();
    let names = p.names(|c| {
        let extra: Vec<String> = caps_added(c)
            .into_iter()
            .filter(|x| !BASELINE_CAPS.contains(&x.as_str()))
            .collect();
        let has = !extra.is_empty();
        bad_caps.extend(extra);
        has
    });
    if !names.is_empty() {
        let caps: Vec<String> = bad_caps.into_iter().collect();
        out.push((
            "non-default capabilities".into(),
            format!(
                "{} must not include {} in securityContext.capabilities.add",
                subjects("container", &names),
                quoted(&caps)
            ),
        ));
    }
    // hostNamespaces
    let host: Vec<&str> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| spec.get(*k).and_then(Value::as_bool) == Some(true))
        .collect();
    if !host.is_empty() {
        out.push((
            "host namespaces".into(),
            host.iter()
                .map(|k| format!("{k}=true"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    // hostPathVolumes
    let volumes: Vec<&Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let vname = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let host_paths: Vec<String> = volumes
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| vname(v))
        .collect();
    if !host_paths.is_empty() {
        out.push(("hostPath volumes".into(), subjects("volume", &host_paths)));
    }
    // hostPorts
    let mut ports = BTreeSet::new();
    let names = p.names(|c| {
        let ps: Vec<i64> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("hostPort").and_then(Value::as_i64))
            .filter(|p| *p != 0)
            .collect();
        let has = !ps.is_empty();
        ports.extend(ps);
        has
    });
    if !names.is_empty() {
        let ps: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        let noun = if ps.len() == 1 {
            "hostPort"
        } else {
            "hostPorts"
        };
        out.push((
            "hostPort".into(),
            format!(
                "{} {} {noun} {}",
                subjects("container", &names),
                verb(&names, "uses", "use"),
                ps.join(", ")
            ),
        ));
    }
    // privileged
    let names = p.names(|c| sc(c, "privileged").and_then(Value::as_bool) == Some(true));
    if !names.is_empty() {
        out.push((
            "privileged".into(),
            format!(
                "{} must not set securityContext.privileged=true",
                subjects("container", &names)
            ),
        ));
    }
    // seccompProfile_baseline (replaced by the restricted check at restricted level)
    if level == Level::Baseline {
        let mut parts = Vec::new();
        if p.pod_sc("seccompProfile/type").and_then(Value::as_str) == Some("Unconfined") {
            parts.push(
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\""
                    .to_string(),
            );
        }
        let names =
            p.names(|c| sc(c, "seccompProfile/type").and_then(Value::as_str) == Some("Unconfined"));
        if !names.is_empty() {
            parts.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                subjects("container", &names)
            ));
        }
        if !parts.is_empty() {
            out.push(("seccompProfile".into(), parts.join("; ")));
        }
        return out;
    }
    // allowPrivilegeEscalation
    let names =
        p.names(|c| sc(c, "allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false));
    if !names.is_empty() {
        out.push((
            "allowPrivilegeEscalation != false".into(),
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                subjects("container", &names)
            ),
        ));
    }
    // capabilities_restricted
    let mut parts = Vec::new();
    let names = p.names(|c| {
        !sc(c, "capabilities/drop")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("ALL")))
    });
    if !names.is_empty() {
        parts.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            subjects("container", &names)
        ));
    }
    let mut bad = BTreeSet::new();
    let names = p.names(|c| {
        let extra: Vec<String> = caps_added(c)
            .into_iter()
            .filter(|x| x != "NET_BIND_SERVICE")
            .collect();
        let has = !extra.is_empty();
        bad.extend(extra);
        has
    });
    if !names.is_empty() {
        let caps: Vec<String> = bad.into_iter().collect();
        parts.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            subjects("container", &names),
            quoted(&caps)
        ));
    }
    if !parts.is_empty() {
        out.push(("unrestricted capabilities".into(), parts.join("; ")));
    }
    // restrictedVolumes
    let mut types = BTreeSet::new();
    let bad_vols: Vec<String> = volumes
        .iter()
        .filter(|v| {
            let t: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .filter(|k| k != "name" && !RESTRICTED_VOLUME_TYPES.contains(&k.as_str()))
                .collect();
            let has = !t.is_empty();
            types.extend(t);
            has
        })
        .map(|v| vname(v))
        .collect();
    if !bad_vols.is_empty() {
        let ts: Vec<String> = types.into_iter().collect();
        let noun = if ts.len() == 1 { "type" } else { "types" };
        out.push((
            "restricted volume types".into(),
            format!(
                "{} {} restricted volume {noun} {}",
                subjects("volume", &bad_vols),
                verb(&bad_vols, "uses", "use"),
                quoted(&ts)
            ),
        ));
    }
    // runAsNonRoot
    let mut parts = Vec::new();
    let pod_nonroot = p.pod_sc("runAsNonRoot").and_then(Value::as_bool);
    if pod_nonroot == Some(false) {
        parts.push("pod must not set securityContext.runAsNonRoot=false".to_string());
    }
    let explicit_false = p.names(|c| sc(c, "runAsNonRoot").and_then(Value::as_bool) == Some(false));
    if !explicit_false.is_empty() {
        parts.push(format!(
            "{} must not set securityContext.runAsNonRoot=false",
            subjects("container", &explicit_false)
        ));
    }
    if pod_nonroot != Some(true) {
        let unset = p.names(|c| sc(c, "runAsNonRoot").is_none());
        if !unset.is_empty() {
            parts.push(format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                subjects("container", &unset)
            ));
        }
    }
    if !parts.is_empty() {
        out.push(("runAsNonRoot != true".into(), parts.join("; ")));
    }
    // runAsUser
    let mut parts = Vec::new();
    if p.pod_sc("runAsUser").and_then(Value::as_i64) == Some(0) {
        parts.push("pod must not set runAsUser=0".to_string());
    }
    let names = p.names(|c| sc(c, "runAsUser").and_then(Value::as_i64) == Some(0));
    if !names.is_empty() {
        parts.push(format!(
            "{} must not set runAsUser=0",
            subjects("container", &names)
        ));
    }
    if !parts.is_empty() {
        out.push(("runAsUser=0".into(), parts.join("; ")));
    }
    // seccompProfile_restricted
    let valid = |t: Option<&str>| matches!(t, Some("RuntimeDefault") | Some("Localhost"));
    let mut parts = Vec::new();
    let pod_type = p.pod_sc("seccompProfile/type").and_then(Value::as_str);
    if pod_type.is_some() && !valid(pod_type) {
        parts.push(format!(
            "pod must not set securityContext.seccompProfile.type to {:?}",
            pod_type.unwrap_or_default()
        ));
    }
    let mut bad_types = BTreeSet::new();
    let explicit_bad = p.names(|c| {
        let t = sc(c, "seccompProfile/type").and_then(Value::as_str);
        let bad = t.is_some() && !valid(t);
        if bad {
            bad_types.insert(t.unwrap_or_default().to_string());
        }
        bad
    });
    if !explicit_bad.is_empty() {
        let ts: Vec<String> = bad_types.into_iter().collect();
        parts.push(format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            subjects("container", &explicit_bad),
            quoted(&ts)
        ));
    }
    if !valid(pod_type) {
        let unset = p.names(|c| sc(c, "seccompProfile/type").is_none());
        if !unset.is_empty() {
            parts.push(format!("pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"", subjects("container", &unset)));
        }
    }
    if !parts.is_empty() {
        out.push(("seccompProfile".into(), parts.join("; ")));
    }
    out
}

/// The policy text of a violation list.
pub fn describe(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(t, d)| format!("{t} ({d})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pod_spec_of<'v>(def: &ResourceDef, obj: &'v Value) -> Option<(&'v Value, bool)> {
    match (def.group, def.kind) {
        ("", "Pod") => obj.get("spec").map(|s| (s, true)),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job")
        | ("", "ReplicationController")
        | ("", "PodTemplate") => obj.pointer("/spec/template/spec").map(|s| (s, false)),
        ("batch", "CronJob") => obj
            .pointer("/spec/jobTemplate/spec/template/spec")
            .map(|s| (s, false)),
        _ => None,
    }
}

/// Enforces and warns according to the namespace's labels.
pub async fn admit(
    state: &AppState,
    def: &ResourceDef,
    op: Operation,
    obj: &Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let Some((spec, is_pod)) = pod_spec_of(def, obj) else {
        return Ok(());
    };
    if op == Operation::Update {
        let old_spec = old.and_then(|o| pod_spec_of(def, o)).map(|(s, _)| s);
        if old_spec == Some(spec) {
            return Ok(());
        }
    }
    let ns = fields::namespace(obj);
    let Some(nsobj) = crate::authn::cached(state, &NAMESPACES, "", ns)
        .await
        .ok()
        .flatten()
    else {
        return Ok(());
    };
    let label = |k: &str| {
        nsobj
            .pointer(&format!("/metadata/labels/pod-security.kubernetes.io~1{k}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let version =
        |mode: &str| label(&format!("{mode}-version")).unwrap_or_else(|| "latest".to_string());
    let enforce = label("enforce").and_then(|l| Level::parse(&l));
    let warn = label("warn").and_then(|l| Level::parse(&l));
    if let Some(level) = enforce {
        let v = evaluate(level, spec);
        if !v.is_empty() {
            let policy = format!("{}:{}", level.name(), version("enforce"));
            if is_pod {
                return Err(ApiError::forbidden(
                    def,
                    fields::name(obj),
                    &format!("violates PodSecurity {policy:?}: {}", describe(&v)),
                ));
            }
            crate::auth::add_warning(format!(
                "would violate PodSecurity {policy:?}: {}",
                describe(&v)
            ));
        }
    }
    if let Some(level) = warn
        && Some(level) != enforce
    {
        let v = evaluate(level, spec);
        if !v.is_empty() {
            let policy = format!("{}:{}", level.name(), version("warn"));
            crate::auth::add_warning(format!(
                "would violate PodSecurity {policy:?}: {}",
                describe(&v)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restricted_messages_match_kubernetes() {
        let spec = json!({"containers": [{"name": "nginx", "image": "nginx", "securityContext": {"privileged": true}}]});
        assert_eq!(
            describe(&evaluate(Level::Restricted, &spec)),
            "privileged (container \"nginx\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"nginx\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"nginx\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"nginx\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert_eq!(
            describe(&evaluate(Level::Baseline, &spec)),
            "privileged (container \"nginx\" must not set securityContext.privileged=true)"
        );
        let ok = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}, "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
        assert!(evaluate(Level::Restricted, &ok).is_empty());
        let host = json!({"hostNetwork": true, "volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 80}]}]});
        assert_eq!(
            describe(&evaluate(Level::Baseline, &host)),
            "host namespaces (hostNetwork=true), hostPath volumes (volume \"h\"), hostPort (container \"a\" uses hostPort 80)"
        );
    }
}
