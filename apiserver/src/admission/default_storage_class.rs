//! DefaultStorageClass, DefaultIngressClass and StorageObjectInUseProtection admission.
//!
//! DefaultStorageClass: a PersistentVolumeClaim created without a class (no
//! `spec.storageClassName` and no beta class annotation; an explicit `""` is a class) gets the
//! default StorageClass, the one annotated `storageclass.kubernetes.io/is-default-class: "true"`
//! — the newest when several are (Kubernetes 1.28+; equal timestamps: the first by name).
//!
//! StorageObjectInUseProtection: new claims get the `kubernetes.io/pvc-protection` finalizer and
//! new volumes `kubernetes.io/pv-protection`; the controllers remove them once no pod uses the
//! claim / no claim is bound to the volume.

use serde_json::{Value, json};

use super::{Admit, Handles, Operation, Request};
use crate::cache::reader::CacheReader;
use crate::error::ApiResult;
use crate::registry::resources::{
    BETA_CLASS_ANNOTATION, INGRESSCLASSES, STORAGECLASSES, is_default_class,
    is_default_ingress_class,
};
use crate::registry::{ResourceDef, fields};
use async_trait::async_trait;

/// Finalizer keeping a claim while a pod uses it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Finalizer keeping a volume while a claim is bound to it.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

fn is_core(def: &ResourceDef, plural: &str) -> bool {
    def.group.is_empty() && def.plural == plural
}

/// Whether the claim names a class (`PersistentVolumeClaimHasClass`).
fn claim_has_class(pvc: &Value) -> bool {
    pvc.pointer("/spec/storageClassName")
        .is_some_and(|v| !v.is_null())
        || fields::at(pvc, &["metadata", "annotations", BETA_CLASS_ANNOTATION]).is_some()
}

/// The default class among `classes` (`GetDefaultClass`): newest first, then by name.
pub fn default_class(classes: &[Value]) -> Option<&Value> {
    newest(classes.iter().filter(|c| is_default_class(c)))
}

/// The newest of `classes`, then the first by name.
fn newest<'a>(classes: impl IntoIterator<Item = &'a Value>) -> Option<&'a Value> {
    let ts = |c: &Value| {
        fields::str_at(c, &["metadata", "creationTimestamp"])
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    classes.into_iter().min_by(|a, b| {
        ts(b)
            .cmp(&ts(a))
            .then_with(|| fields::name(a).cmp(fields::name(b)))
    })
}

/// Sets the default class on a new claim without one.
pub async fn admit_claim(reader: &CacheReader, pvc: &mut Value) -> ApiResult<()> {
    if claim_has_class(pvc) {
        return Ok(());
    }
    let cacher = reader.cacher(&STORAGECLASSES)?;
    cacher.wait_local().await?;
    let prefix = format!("/registry/{}/", STORAGECLASSES.storage_prefix);
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    let classes: Vec<Value> = list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
        .collect();
    if let Some(class) = default_class(&classes) {
        let name = fields::name(class).to_string();
        tracing::debug!(class = %name, "defaulting storage class of claim");
        fields::ensure_object(pvc, &["spec"]).insert("storageClassName".into(), json!(name));
    }
    Ok(())
}

/// Adds the protection finalizer to a new claim or volume.
pub fn protect(def: &ResourceDef, obj: &mut Value) {
    let finalizer = if is_core(def, "persistentvolumeclaims") {
        PVC_PROTECTION
    } else if is_core(def, "persistentvolumes") {
        PV_PROTECTION
    } else {
        return;
    };
    let meta = fields::ensure_object(obj, &["metadata"]);
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    if let Value::Array(a) = list
        && !a.iter().any(|f| f.as_str() == Some(finalizer))
    {
        a.push(json!(finalizer));
    }
}

/// DefaultIngressClass: an Ingress created without `spec.ingressClassName` (and without the
/// legacy `kubernetes.io/ingress.class` annotation) gets the IngressClass annotated
/// `ingressclass.kubernetes.io/is-default-class: "true"` (the newest; equal timestamps: the
/// first by name).
pub async fn admit_ingress(reader: &CacheReader, ing: &mut Value) -> ApiResult<()> {
    if ing
        .pointer("/spec/ingressClassName")
        .is_some_and(|v| !v.is_null())
        || fields::at(
            ing,
            &["metadata", "annotations", "kubernetes.io/ingress.class"],
        )
        .is_some()
    {
        return Ok(());
    }
    let cacher = reader.cacher(&INGRESSCLASSES)?;
    cacher.wait_local().await?;
    let prefix = format!("/registry/{}/", INGRESSCLASSES.storage_prefix);
    let list = cacher.list(&prefix, None, 0, &|_| true).await;
    let classes: Vec<Value> = list
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
        .filter(is_default_ingress_class)
        .collect();
    if let Some(class) = newest(classes.iter()) {
        let name = fields::name(class).to_string();
        fields::ensure_object(ing, &["spec"]).insert("ingressClassName".into(), json!(name));
    }
    Ok(())
}

/// The mutating storage plugins (and DefaultIngressClass) for a create of `def`.
pub async fn admit(reader: &CacheReader, def: &ResourceDef, obj: &mut Value) -> ApiResult<()> {
    if is_core(def, "persistentvolumeclaims") {
        admit_claim(reader, obj).await?;
    }
    if def.group == "networking.k8s.io" && def.plural == "ingresses" {
        admit_ingress(reader, obj).await?;
    }
    protect(def, obj);
    Ok(())
}

/// The DefaultStorageClass plugin: new claims (and ingresses, their class) get the default class.
pub struct DefaultStorageClass;

#[async_trait]
impl Admit for DefaultStorageClass {
    fn name(&self) -> &'static str {
        "DefaultStorageClass"
    }

    async fn admit(&self, h: Handles<'_>, r: &Request<'_>, obj: &mut Value) -> ApiResult<()> {
        if r.op == Operation::Create {
            admit(h.reader, r.def, obj).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, created: &str, default: bool) -> Value {
        let mut c =
            json!({"metadata": {"name": name, "creationTimestamp": created}, "provisioner": "p"});
        if default {
            c["metadata"]["annotations"] =
                json!({"storageclass.kubernetes.io/is-default-class": "true"});
        }
        c
    }

    #[test]
    fn newest_default_class_wins_then_name() {
        let classes = [
            class("old", "2024-01-01T00:00:00Z", true),
            class("new", "2024-06-01T00:00:00Z", true),
            class("newest-not-default", "2025-01-01T00:00:00Z", false),
        ];
        assert_eq!(default_class(&classes).map(fields::name), Some("new"));
        let tie = [
            class("b", "2024-01-01T00:00:00Z", true),
            class("a", "2024-01-01T00:00:00Z", true),
        ];
        assert_eq!(default_class(&tie).map(fields::name), Some("a"));
        assert!(default_class(&classes[2..]).is_none());
    }

    #[test]
    fn explicit_empty_class_is_a_class() {
        assert!(claim_has_class(&json!({"spec": {"storageClassName": ""}})));
        assert!(!claim_has_class(&json!({"spec": {}})));
        assert!(claim_has_class(
            &json!({"metadata": {"annotations": {BETA_CLASS_ANNOTATION: "x"}}, "spec": {}})
        ));
    }

    #[test]
    fn protection_finalizers_are_added_once() {
        use crate::registry::resources::{PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES};
        let mut c = json!({"metadata": {"finalizers": ["x"]}});
        protect(&PERSISTENTVOLUMECLAIMS, &mut c);
        protect(&PERSISTENTVOLUMECLAIMS, &mut c);
        assert_eq!(c["metadata"]["finalizers"], json!(["x", PVC_PROTECTION]));
        let mut v = json!({});
        protect(&PERSISTENTVOLUMES, &mut v);
        assert_eq!(v["metadata"]["finalizers"], json!([PV_PROTECTION]));
    }
}
