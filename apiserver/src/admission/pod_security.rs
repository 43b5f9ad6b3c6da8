//! Pod Security Admission: the `pod-security.kubernetes.io/enforce|warn|audit` namespace labels
//! with the privileged/baseline/restricted levels, Kubernetes' checks in its order and its
//! messages (`violates PodSecurity "restricted:latest": ...`). Pods are rejected on `enforce`;
//! `warn` violations become `Warning` headers and `audit` violations the audit annotation
//! `pod-security.kubernetes.io/audit-violations`, logged as `tracing` events at target `audit`
//! (Lotse has no audit log backend). Workload templates (Deployment, Job, ...) get warn and
//! audit, never enforce; without a `warn` label warn follows a stricter `enforce` level, so
//! templates still warn about what their pods would be rejected for. [`Exemptions`] (users,
//! namespaces, runtime classes) skip evaluation; evaluations and exemptions are counted in
//! `pod_security_evaluations_total` / `pod_security_exemptions_total`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Mutex;

use serde_json::Value;

use super::Operation;
use super::{Admit, Handles, Request};
use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::resources::NAMESPACES;
use crate::registry::{ResourceDef, fields};
use async_trait::async_trait;

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
        crate::registry::resources::pod::all_containers(self.spec)
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

/// Kubernetes' `PodSecurityConfiguration` exemptions: requests by these users, in these
/// namespaces, or of pods with these runtime classes are not evaluated at all. Empty by default
/// (like Kubernetes, `kube-system` is not exempt unless listed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exemptions {
    /// Authenticated user names (after impersonation).
    pub usernames: BTreeSet<String>,
    /// Namespace names.
    pub namespaces: BTreeSet<String>,
    /// `spec.runtimeClassName` values.
    pub runtime_classes: BTreeSet<String>,
}

impl Exemptions {
    /// Why a request is exempt (`namespace`, `user`, `runtimeClass` — the value of Kubernetes'
    /// `pod-security.kubernetes.io/exempt` audit annotation), in Kubernetes' order.
    pub fn reason(
        &self,
        namespace: &str,
        user: Option<&str>,
        spec: &Value,
    ) -> Option<&'static str> {
        if self.namespaces.contains(namespace) {
            return Some("namespace");
        }
        if user.is_some_and(|u| self.usernames.contains(u)) {
            return Some("user");
        }
        let rc = spec.get("runtimeClassName").and_then(Value::as_str);
        if rc.is_some_and(|r| self.runtime_classes.contains(r)) {
            return Some("runtimeClass");
        }
        None
    }
}

/// Audit annotation with the audit-level violations.
pub const AUDIT_VIOLATIONS_ANNOTATION: &str = "pod-security.kubernetes.io/audit-violations";
/// Audit annotation naming why a request was exempt.
pub const EXEMPT_ANNOTATION: &str = "pod-security.kubernetes.io/exempt";
/// Audit annotation with the enforced policy of an evaluated pod.
pub const ENFORCE_POLICY_ANNOTATION: &str = "pod-security.kubernetes.io/enforce-policy";

/// A level and version, printed as Kubernetes does (`restricted:latest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelVersion {
    /// The level.
    pub level: Level,
    /// `latest` or `v1.N`.
    pub version: String,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.level.name(), self.version)
    }
}

/// The namespace's policy for the three modes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Violations reject pods.
    pub enforce: LevelVersion,
    /// Violations become audit annotations.
    pub audit: LevelVersion,
    /// Violations become `Warning` headers.
    pub warn: LevelVersion,
}

fn parse_version(s: &str) -> Option<String> {
    if s == "latest" {
        return Some(s.to_string());
    }
    let minor = s.strip_prefix("v1.")?;
    (!minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())).then(|| s.to_string())
}

impl Policy {
    /// Kubernetes' `PolicyToEvaluate` with the default policy `privileged:latest`: an invalid
    /// level means `restricted`, an invalid version `latest`; without a `warn` label, warn
    /// follows a stricter `enforce` level (and its version unless `warn-version` is set).
    pub fn from_labels(label: impl Fn(&str) -> Option<String>) -> Policy {
        let level = |mode: &str| {
            label(mode).map(|l| match Level::parse(&l) {
                Some(level) => (level, true),
                None => (Level::Restricted, false),
            })
        };
        let version = |mode: &str| label(&format!("{mode}-version")).map(|v| parse_version(&v));
        let lv = |mode: &str| LevelVersion {
            level: level(mode).map_or(Level::Privileged, |(l, _)| l),
            version: version(mode)
                .flatten()
                .unwrap_or_else(|| "latest".to_string()),
        };
        let enforce = lv("enforce");
        let audit = lv("audit");
        let mut warn = lv("warn");
        let enforce_valid = level("enforce").is_some_and(|(_, ok)| ok);
        let warn_valid = level("warn").is_some_and(|(_, ok)| ok);
        let warn_version_valid = version("warn").is_some_and(|v| v.is_some());
        if !warn_valid && enforce_valid && enforce.level > warn.level {
            warn.level = enforce.level;
            if !warn_version_valid {
                warn.version.clone_from(&enforce.version);
            }
        }
        Policy {
            enforce,
            audit,
            warn,
        }
    }
}

/// What one evaluation decided (Kubernetes' audit annotations and warnings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The rejection message (enforce, pods only).
    pub denied: Option<String>,
    /// Audit annotations (key, value).
    pub audit_annotations: Vec<(&'static str, String)>,
    /// `Warning` header texts.
    pub warnings: Vec<String>,
    /// Evaluations for `pod_security_evaluations_total`: (decision, level, version, mode).
    pub evaluations: Vec<(&'static str, Level, String, &'static str)>,
}

/// Kubernetes' `EvaluatePod`: enforce (only when `enforce`, i.e. for pods), audit, then warn
/// (not when the request is rejected anyway).
pub fn evaluate_policy(policy: &Policy, spec: &Value, enforce: bool) -> Decision {
    let mut d = Decision::default();
    let check = |lv: &LevelVersion| {
        let v = evaluate(lv.level, spec);
        (v.is_empty(), describe(&v))
    };
    if enforce {
        d.audit_annotations
            .push((ENFORCE_POLICY_ANNOTATION, policy.enforce.to_string()));
        let (ok, text) = check(&policy.enforce);
        let decision = if ok {
            "allow"
        } else {
            d.denied = Some(format!(
                "violates PodSecurity {:?}: {text}",
                policy.enforce.to_string()
            ));
            "deny"
        };
        d.evaluations.push((
            decision,
            policy.enforce.level,
            policy.enforce.version.clone(),
            "enforce",
        ));
    }
    let (ok, text) = check(&policy.audit);
    if !ok {
        d.audit_annotations.push((
            AUDIT_VIOLATIONS_ANNOTATION,
            format!(
                "would violate PodSecurity {:?}: {text}",
                policy.audit.to_string()
            ),
        ));
        d.evaluations.push((
            "deny",
            policy.audit.level,
            policy.audit.version.clone(),
            "audit",
        ));
    }
    if d.denied.is_none() {
        let (ok, text) = check(&policy.warn);
        if !ok {
            d.warnings.push(format!(
                "would violate PodSecurity {:?}: {text}",
                policy.warn.to_string()
            ));
            d.evaluations.push((
                "deny",
                policy.warn.level,
                policy.warn.version.clone(),
                "warn",
            ));
        }
    }
    d
}

type EvaluationKey = (
    &'static str,
    &'static str,
    String,
    &'static str,
    &'static str,
    &'static str,
);

/// Pod Security admission configuration and counters, held by `AppState`.
#[derive(Default)]
pub struct PodSecurity {
    /// Requests that are not evaluated.
    pub exemptions: Exemptions,
    /// (decision, policy_level, policy_version, mode, request_operation, resource) -> count.
    evaluations: Mutex<BTreeMap<EvaluationKey, u64>>,
    /// (request_operation, resource) -> count.
    exempt: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl PodSecurity {
    /// With the given exemptions.
    pub fn new(exemptions: Exemptions) -> PodSecurity {
        PodSecurity {
            exemptions,
            ..PodSecurity::default()
        }
    }

    /// `pod_security_evaluations_total` and `pod_security_exemptions_total` in Prometheus text
    /// format, with Kubernetes' names and labels.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP pod_security_evaluations_total [ALPHA] Number of policy evaluations that occurred, not counting ignored or exempt requests.\n# TYPE pod_security_evaluations_total counter\n");
        if let Ok(m) = self.evaluations.lock() {
            for ((decision, level, version, mode, op, resource), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "pod_security_evaluations_total{{decision=\"{decision}\",mode=\"{mode}\",policy_level=\"{level}\",policy_version=\"{version}\",request_operation=\"{op}\",resource=\"{resource}\",subresource=\"\"}} {n}"
                );
            }
        }
        out.push_str("# HELP pod_security_exemptions_total [ALPHA] Number of exempt requests, not counting ignored or out of scope requests.\n# TYPE pod_security_exemptions_total counter\n");
        if let Ok(m) = self.exempt.lock() {
            for ((op, resource), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "pod_security_exemptions_total{{request_operation=\"{op}\",resource=\"{resource}\",subresource=\"\"}} {n}"
                );
            }
        }
        out
    }

    fn record(&self, d: &Decision, op: &'static str, resource: &'static str) {
        if let Ok(mut m) = self.evaluations.lock() {
            for (decision, level, version, mode) in &d.evaluations {
                *m.entry((
                    *decision,
                    level.name(),
                    version.clone(),
                    *mode,
                    op,
                    resource,
                ))
                .or_default() += 1;
            }
        }
    }

    fn record_exemption(&self, op: &'static str, resource: &'static str) {
        if let Ok(mut m) = self.exempt.lock() {
            *m.entry((op, resource)).or_default() += 1;
        }
    }
}

/// The request an audit annotation belongs to.
struct AuditContext<'a> {
    user: &'a str,
    verb: &'static str,
    resource: &'a str,
    namespace: &'a str,
    name: &'a str,
}

/// Lotse has no audit log backend: audit annotations become `tracing` events at target `audit`.
fn audit_annotation(ctx: &AuditContext<'_>, key: &str, value: &str) {
    tracing::info!(
        target: "audit",
        user = ctx.user,
        verb = ctx.verb,
        resource = ctx.resource,
        namespace = ctx.namespace,
        name = ctx.name,
        annotation_key = key,
        annotation_value = value,
        "audit annotation"
    );
}

/// Enforces (pods), audits and warns (pods and workload templates) according to the
/// namespace's labels, unless the request (by `user`; None for the apiserver's own writes) is
/// exempt.
pub async fn admit(
    reader: &CacheReader,
    psa: &PodSecurity,
    user: Option<&crate::auth::UserInfo>,
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
    let verb = match op {
        Operation::Create => "create",
        Operation::Update => "update",
    };
    let resource = if is_pod { "pod" } else { "controller" };
    let ns = fields::namespace(obj);
    let user_name = user.map(|u| u.name.as_str());
    let ctx = AuditContext {
        user: user_name.unwrap_or_default(),
        verb,
        resource: def.plural,
        namespace: ns,
        name: fields::name(obj),
    };
    // Namespace and user exemptions come before the namespace lookup, the runtime class one
    // after it (Kubernetes' order).
    if let Some(reason) = psa.exemptions.reason(ns, user_name, &Value::Null) {
        psa.record_exemption(verb, resource);
        audit_annotation(&ctx, EXEMPT_ANNOTATION, reason);
        return Ok(());
    }
    let Some(nsobj) = reader.cached(&NAMESPACES, "", ns).await.ok().flatten() else {
        return Ok(());
    };
    let policy = Policy::from_labels(|k| {
        nsobj
            .pointer(&format!("/metadata/labels/pod-security.kubernetes.io~1{k}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let all_privileged = [&policy.audit, &policy.warn]
        .into_iter()
        .chain(is_pod.then_some(&policy.enforce))
        .all(|lv| lv.level == Level::Privileged);
    if all_privileged {
        return Ok(());
    }
    if let Some(reason) = psa.exemptions.reason("", None, spec) {
        psa.record_exemption(verb, resource);
        audit_annotation(&ctx, EXEMPT_ANNOTATION, reason);
        return Ok(());
    }
    let d = evaluate_policy(&policy, spec, is_pod);
    psa.record(&d, verb, resource);
    for (k, v) in &d.audit_annotations {
        if *k == AUDIT_VIOLATIONS_ANNOTATION {
            audit_annotation(&ctx, k, v);
        }
    }
    if let Some(msg) = d.denied {
        return Err(ApiError::forbidden(def, fields::name(obj), &msg));
    }
    for w in d.warnings {
        crate::auth::add_warning(w);
    }
    Ok(())
}

/// The PodSecurity plugin with its configuration (exemptions) and counters.
pub struct PodSecurityAdmission(pub std::sync::Arc<PodSecurity>);

#[async_trait]
impl Admit for PodSecurityAdmission {
    fn name(&self) -> &'static str {
        "PodSecurity"
    }

    async fn validate(&self, h: Handles<'_>, r: &Request<'_>, obj: &Value) -> ApiResult<()> {
        admit(h.reader, &self.0, r.user, r.def, r.op, obj, r.old).await
    }
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

    fn labels(pairs: &[(&str, &str)]) -> Policy {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Policy::from_labels(|k| map.get(k).cloned())
    }

    fn lv(level: Level, version: &str) -> LevelVersion {
        LevelVersion {
            level,
            version: version.to_string(),
        }
    }

    fn privileged_pod() -> Value {
        json!({"containers": [{"name": "nginx", "image": "nginx", "securityContext": {"privileged": true}}]})
    }

    #[test]
    fn policy_from_labels_defaults_like_kubernetes() {
        let none = labels(&[]);
        assert_eq!(none.enforce, lv(Level::Privileged, "latest"));
        assert_eq!(none.audit, lv(Level::Privileged, "latest"));
        assert_eq!(none.warn, lv(Level::Privileged, "latest"));
        // warn follows a stricter enforce level and its version ...
        let p = labels(&[("enforce", "baseline"), ("enforce-version", "v1.30")]);
        assert_eq!(p.warn, lv(Level::Baseline, "v1.30"));
        assert_eq!(p.audit, lv(Level::Privileged, "latest"));
        // ... but not an explicit warn label, and keeps an explicit warn-version.
        let p = labels(&[("enforce", "restricted"), ("warn", "baseline")]);
        assert_eq!(p.warn, lv(Level::Baseline, "latest"));
        let p = labels(&[("enforce", "restricted"), ("warn-version", "v1.29")]);
        assert_eq!(p.warn, lv(Level::Restricted, "v1.29"));
        // Invalid levels mean restricted (and don't default warn), invalid versions latest.
        let p = labels(&[
            ("enforce", "bogus"),
            ("audit", "restricted"),
            ("audit-version", "2"),
        ]);
        assert_eq!(p.enforce, lv(Level::Restricted, "latest"));
        assert_eq!(p.warn, lv(Level::Privileged, "latest"));
        assert_eq!(p.audit, lv(Level::Restricted, "latest"));
    }

    #[test]
    fn audit_records_annotation_without_rejecting_or_warning() {
        let policy = labels(&[("audit", "restricted")]);
        let d = evaluate_policy(&policy, &privileged_pod(), true);
        assert_eq!(d.denied, None);
        assert!(d.warnings.is_empty());
        let audit: Vec<&String> = d
            .audit_annotations
            .iter()
            .filter(|(k, _)| *k == AUDIT_VIOLATIONS_ANNOTATION)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(audit.len(), 1);
        assert!(
            audit[0].starts_with(
                "would violate PodSecurity \"restricted:latest\": privileged (container \"nginx\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false"
            ),
            "{}",
            audit[0]
        );
        assert!(
            d.audit_annotations
                .contains(&(ENFORCE_POLICY_ANNOTATION, "privileged:latest".to_string()))
        );
        assert_eq!(
            d.evaluations,
            vec![
                ("allow", Level::Privileged, "latest".to_string(), "enforce"),
                ("deny", Level::Restricted, "latest".to_string(), "audit"),
            ]
        );
        // A compliant pod leaves no audit-violations annotation.
        let ok = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}, "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
        let d = evaluate_policy(&policy, &ok, true);
        assert!(
            d.audit_annotations
                .iter()
                .all(|(k, _)| *k != AUDIT_VIOLATIONS_ANNOTATION)
        );
    }

    #[test]
    fn enforce_rejects_pods_audits_and_skips_warnings() {
        let policy = labels(&[
            ("enforce", "baseline"),
            ("audit", "restricted"),
            ("warn", "restricted"),
        ]);
        let d = evaluate_policy(&policy, &privileged_pod(), true);
        assert_eq!(
            d.denied.as_deref(),
            Some(
                "violates PodSecurity \"baseline:latest\": privileged (container \"nginx\" must not set securityContext.privileged=true)"
            )
        );
        // Audit is still recorded for rejected requests; warnings are not sent.
        assert!(
            d.audit_annotations
                .iter()
                .any(|(k, _)| *k == AUDIT_VIOLATIONS_ANNOTATION)
        );
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn templates_warn_and_audit_but_never_enforce() {
        let policy = labels(&[("enforce", "baseline"), ("audit", "restricted")]);
        let d = evaluate_policy(&policy, &privileged_pod(), false);
        assert_eq!(d.denied, None);
        // warn defaults to the enforce level.
        assert_eq!(
            d.warnings,
            vec![
                "would violate PodSecurity \"baseline:latest\": privileged (container \"nginx\" must not set securityContext.privileged=true)"
                    .to_string()
            ]
        );
        assert!(
            d.audit_annotations
                .iter()
                .all(|(k, _)| *k != ENFORCE_POLICY_ANNOTATION)
        );
        assert!(
            d.audit_annotations
                .iter()
                .any(|(k, v)| *k == AUDIT_VIOLATIONS_ANNOTATION
                    && v.starts_with("would violate PodSecurity \"restricted:latest\": "))
        );
        assert!(d.evaluations.iter().all(|e| e.3 != "enforce"));
    }

    #[test]
    fn exemptions_match_users_namespaces_and_runtime_classes() {
        let none = Exemptions::default();
        let spec = json!({"runtimeClassName": "gvisor", "containers": []});
        // Nothing is exempt by default, kube-system included.
        assert_eq!(
            none.reason("kube-system", Some("system:admin"), &spec),
            None
        );
        let ex = Exemptions {
            usernames: BTreeSet::from(["ci-bot".to_string()]),
            namespaces: BTreeSet::from(["kube-system".to_string()]),
            runtime_classes: BTreeSet::from(["gvisor".to_string()]),
        };
        assert_eq!(
            ex.reason("kube-system", None, &Value::Null),
            Some("namespace")
        );
        assert_eq!(
            ex.reason("team-a", Some("ci-bot"), &Value::Null),
            Some("user")
        );
        assert_eq!(
            ex.reason("team-a", Some("donald"), &spec),
            Some("runtimeClass")
        );
        assert_eq!(
            ex.reason(
                "team-a",
                Some("donald"),
                &json!({"runtimeClassName": "runc"})
            ),
            None
        );
        assert_eq!(ex.reason("team-a", None, &Value::Null), None);
        // Namespace exemption wins over the others, as in Kubernetes.
        assert_eq!(
            ex.reason("kube-system", Some("ci-bot"), &spec),
            Some("namespace")
        );
    }

    #[test]
    fn metrics_use_kubernetes_names_and_labels() {
        let psa = PodSecurity::new(Exemptions::default());
        let policy = labels(&[("enforce", "restricted")]);
        let d = evaluate_policy(&policy, &privileged_pod(), true);
        psa.record(&d, "create", "pod");
        psa.record(&d, "create", "pod");
        psa.record_exemption("update", "controller");
        let text = psa.render_metrics();
        assert!(text.contains("pod_security_evaluations_total{decision=\"deny\",mode=\"enforce\",policy_level=\"restricted\",policy_version=\"latest\",request_operation=\"create\",resource=\"pod\",subresource=\"\"} 2\n"), "{text}");
        assert!(text.contains("pod_security_exemptions_total{request_operation=\"update\",resource=\"controller\",subresource=\"\"} 1\n"), "{text}");
    }
}
