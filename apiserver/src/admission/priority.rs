//! Priority admission: a new pod's `spec.priorityClassName` is resolved into `spec.priority` and
//! `spec.preemptionPolicy` (a pod without a class gets the global default class, or priority 0
//! and `PreemptLowerPriority` when there is none); an unknown class is refused. A PriorityClass
//! marked `globalDefault` is refused while another class is the default.

use serde_json::{Value, json};

use super::Operation;
use super::{Admit, Handles, Request};
use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::resources::PRIORITYCLASSES;
use crate::registry::{ResourceDef, fields};
use async_trait::async_trait;

/// Priority of pods when no class is the global default
/// (`DefaultPriorityWhenNoDefaultClassExists`).
pub const DEFAULT_PRIORITY_WHEN_NO_DEFAULT_CLASS_EXISTS: i64 = 0;

/// Every PriorityClass, read from the watch cache once it holds this apiserver's own writes.
async fn priority_classes(reader: &CacheReader) -> ApiResult<Vec<Value>> {
    let cacher = reader.cacher(&PRIORITYCLASSES)?;
    cacher.wait_local().await?;
    let prefix = format!("/registry/{}/", PRIORITYCLASSES.storage_prefix);
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    Ok(list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
        .collect())
}

/// The default class (`getDefaultPriorityClass`): among the classes marked `globalDefault`, the
/// one with the lowest value.
pub fn default_class(classes: &[Value]) -> Option<&Value> {
    classes
        .iter()
        .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
        .min_by_key(|c| fields::i64_at(c, &["value"]).unwrap_or(0))
}

/// `admission.NewForbidden` for an object that may have no name yet (generateName).
fn forbidden(def: &ResourceDef, name: &str, why: &str) -> ApiError {
    if name.is_empty() {
        let mut e = ApiError::forbidden(def, name, why);
        e.message = format!("{} is forbidden: {why}", def.group_resource());
        e
    } else {
        ApiError::forbidden(def, name, why)
    }
}

/// Runs the plugin on pods (create) and PriorityClasses (create and update).
pub async fn admit(
    reader: &CacheReader,
    def: &'static ResourceDef,
    op: Operation,
    obj: &mut Value,
) -> ApiResult<()> {
    if def.group.is_empty() && def.plural == "pods" && op == Operation::Create {
        let classes = priority_classes(reader).await?;
        return resolve_pod_priority(def, obj, &classes);
    }
    if def.group == PRIORITYCLASSES.group && def.plural == PRIORITYCLASSES.plural {
        let classes = priority_classes(reader).await?;
        return check_single_default(def, op, obj, &classes);
    }
    Ok(())
}

/// `admitPod` on create: sets `spec.priorityClassName` (default class), `spec.priority` and
/// `spec.preemptionPolicy`, refusing an unknown class or values that contradict the class.
pub fn resolve_pod_priority(
    def: &ResourceDef,
    pod: &mut Value,
    classes: &[Value],
) -> ApiResult<()> {
    let name = fields::name(pod).to_string();
    let class_name = fields::str_at(pod, &["spec", "priorityClassName"])
        .unwrap_or("")
        .to_string();
    let (class_name, priority, policy) = if class_name.is_empty() {
        match default_class(classes) {
            Some(c) => (
                fields::name(c).to_string(),
                fields::i64_at(c, &["value"]).unwrap_or(0),
                fields::str_at(c, &["preemptionPolicy"]).map(str::to_string),
            ),
            None => (
                String::new(),
                DEFAULT_PRIORITY_WHEN_NO_DEFAULT_CLASS_EXISTS,
                Some("PreemptLowerPriority".to_string()),
            ),
        }
    } else {
        let Some(c) = classes.iter().find(|c| fields::name(c) == class_name) else {
            return Err(forbidden(
                def,
                &name,
                &format!("no PriorityClass with name {class_name} was found"),
            ));
        };
        (
            class_name,
            fields::i64_at(c, &["value"]).unwrap_or(0),
            fields::str_at(c, &["preemptionPolicy"]).map(str::to_string),
        )
    };
    if let Some(given) = fields::i64_at(pod, &["spec", "priority"])
        && given != priority
    {
        return Err(forbidden(
            def,
            &name,
            &format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
            ),
        ));
    }
    if let Some(policy) = &policy
        && let Some(given) = fields::str_at(pod, &["spec", "preemptionPolicy"])
        && given != policy
    {
        return Err(forbidden(
            def,
            &name,
            &format!(
                "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
            ),
        ));
    }
    let spec = fields::ensure_object(pod, &["spec"]);
    if !class_name.is_empty() {
        spec.insert("priorityClassName".into(), json!(class_name));
    }
    spec.insert("priority".into(), json!(priority));
    if let Some(policy) = policy {
        spec.insert("preemptionPolicy".into(), json!(policy));
    }
    Ok(())
}

/// `validatePriorityClass`: only one class may be the global default.
pub fn check_single_default(
    def: &ResourceDef,
    op: Operation,
    pc: &Value,
    classes: &[Value],
) -> ApiResult<()> {
    if pc.get("globalDefault").and_then(Value::as_bool) != Some(true) {
        return Ok(());
    }
    let name = fields::name(pc);
    if let Some(d) = default_class(classes)
        && (op == Operation::Create || fields::name(d) != name)
    {
        return Err(forbidden(
            def,
            name,
            &format!(
                "PriorityClass {} is already marked as default. Only one default can exist",
                fields::name(d)
            ),
        ));
    }
    Ok(())
}

/// The Priority plugin: pods get their PriorityClass's value and preemption policy.
pub struct Priority;

#[async_trait]
impl Admit for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    async fn admit(&self, h: Handles<'_>, r: &Request<'_>, obj: &mut Value) -> ApiResult<()> {
        admit(h.reader, r.def, r.op, obj).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::resources::PODS;

    fn class(name: &str, value: i64, default: bool, policy: &str) -> Value {
        json!({"metadata": {"name": name}, "value": value, "globalDefault": default,
            "preemptionPolicy": policy})
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn class_name_resolves_to_priority_and_policy() {
        let classes = [class("low", 10, false, "Never")];
        let mut p = pod(json!({"priorityClassName": "low"}));
        resolve_pod_priority(&PODS, &mut p, &classes).unwrap();
        assert_eq!(p["spec"]["priority"], json!(10));
        assert_eq!(p["spec"]["preemptionPolicy"], json!("Never"));
    }

    #[test]
    fn no_class_and_no_default_is_priority_zero() {
        let mut p = pod(json!({}));
        resolve_pod_priority(&PODS, &mut p, &[]).unwrap();
        assert_eq!(p["spec"]["priority"], json!(0));
        assert_eq!(p["spec"]["preemptionPolicy"], json!("PreemptLowerPriority"));
        assert!(p["spec"].get("priorityClassName").is_none());
    }

    #[test]
    fn global_default_applies_lowest_first() {
        let classes = [
            class("a", 100, true, "PreemptLowerPriority"),
            class("b", 50, true, "PreemptLowerPriority"),
        ];
        let mut p = pod(json!({}));
        resolve_pod_priority(&PODS, &mut p, &classes).unwrap();
        assert_eq!(p["spec"]["priorityClassName"], json!("b"));
        assert_eq!(p["spec"]["priority"], json!(50));
    }

    #[test]
    fn unknown_class_and_contradicting_values_are_refused() {
        let e = resolve_pod_priority(&PODS, &mut pod(json!({"priorityClassName": "nope"})), &[])
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: no PriorityClass with name nope was found"
        );
        let classes = [class("low", 10, false, "PreemptLowerPriority")];
        let e = resolve_pod_priority(
            &PODS,
            &mut pod(json!({"priorityClassName": "low", "priority": 5})),
            &classes,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 10 from the given PriorityClass name"
        );
    }

    #[test]
    fn only_one_global_default() {
        let classes = [class("a", 100, true, "PreemptLowerPriority")];
        let b = class("b", 1, true, "PreemptLowerPriority");
        let e =
            check_single_default(&PRIORITYCLASSES, Operation::Create, &b, &classes).unwrap_err();
        assert_eq!(
            e.message,
            "priorityclasses.scheduling.k8s.io \"b\" is forbidden: PriorityClass a is already marked as default. Only one default can exist"
        );
        let a = class("a", 100, true, "PreemptLowerPriority");
        check_single_default(&PRIORITYCLASSES, Operation::Update, &a, &classes).unwrap();
    }
}
