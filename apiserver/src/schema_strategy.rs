//! Kubernetes' list and patch semantics per field, from the Go struct tags of k8s.io/api
//! (`patchStrategy`, `patchMergeKey`, `+listType`, `+listMapKey`, `+structType`), and a navigator
//! over the served kinds' OpenAPI schemas that tells, at any field path of an object, which rule
//! applies.
//!
//! One table serves strategic merge patch ([`crate::write::strategic`]), server-side apply
//! ([`crate::write::managed`]) and the published OpenAPI documents (`x-kubernetes-patch-strategy`,
//! `x-kubernetes-patch-merge-key`, `x-kubernetes-list-type`, `x-kubernetes-list-map-keys`).
//! Rules are keyed by OpenAPI type name and property, so `ports` of a `Container` (merged by
//! `containerPort`) differs from `ports` of a `ServiceSpec` (merged by `port`). Lists not in the
//! table are atomic, as Kubernetes treats untagged lists.

use std::collections::HashMap;
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use crate::registry::{self, ResourceDef};

/// How server-side apply treats a list (`+listType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListType {
    /// Owned and replaced as a whole.
    Atomic,
    /// Primitive values, each owned on its own (`v:<value>`).
    Set,
    /// Objects identified by the map keys (`k:{...}`).
    Map(&'static [&'static str]),
}

/// The patch and list rules of one property of one OpenAPI type.
#[derive(Debug, Clone, Copy)]
pub struct FieldRule {
    /// OpenAPI type name, e.g. `io.k8s.api.core.v1.PodSpec`.
    pub type_name: &'static str,
    /// JSON property name.
    pub property: &'static str,
    /// `patchStrategy` (`merge`, `retainKeys`, `merge,retainKeys`; empty = replace).
    pub patch_strategy: &'static str,
    /// `patchMergeKey` (empty for primitive lists and for maps).
    pub merge_key: &'static str,
    /// `+listType` (None for properties that are not lists).
    pub list_type: Option<ListType>,
}

macro_rules! rule {
    ($t:expr, $p:expr, $s:expr, $k:expr, $l:expr) => {
        FieldRule {
            type_name: $t,
            property: $p,
            patch_strategy: $s,
            merge_key: $k,
            list_type: $l,
        }
    };
}

const NAME: &[&str] = &["name"];
const TYPE: &[&str] = &["type"];
const IP: &[&str] = &["ip"];
const MAP_NAME: Option<ListType> = Some(ListType::Map(NAME));
const MAP_TYPE: Option<ListType> = Some(ListType::Map(TYPE));
const ATOMIC: Option<ListType> = Some(ListType::Atomic);
const SET: Option<ListType> = Some(ListType::Set);

/// The table: every tagged list (and retainKeys struct) of the types Lotse serves.
pub const RULES: &[FieldRule] = &[
    // meta/v1
    rule!(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "merge",
        "",
        SET
    ),
    rule!(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "merge",
        "uid",
        Some(ListType::Map(&["uid"]))
    ),
    rule!(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "managedFields",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
        "matchExpressions",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement",
        "values",
        "",
        "",
        ATOMIC
    ),
    // core/v1 PodSpec
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "merge,retainKeys",
        "name",
        MAP_NAME
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "merge",
        "name",
        MAP_NAME
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        "merge",
        "name",
        MAP_NAME
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "merge",
        "name",
        MAP_NAME
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "merge",
        "name",
        MAP_NAME
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        "merge",
        "ip",
        Some(ListType::Map(IP))
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "merge",
        "topologyKey",
        Some(ListType::Map(&["topologyKey", "whenUnsatisfiable"]))
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        "merge",
        "name",
        MAP_NAME
    ),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "merge,retainKeys",
        "name",
        MAP_NAME
    ),
    rule!("io.k8s.api.core.v1.PodSpec", "tolerations", "", "", ATOMIC),
    rule!(
        "io.k8s.api.core.v1.PodSpec",
        "readinessGates",
        "",
        "",
        ATOMIC
    ),
    // Container and EphemeralContainer
    rule!(
        "io.k8s.api.core.v1.Container",
        "ports",
        "merge",
        "containerPort",
        Some(ListType::Map(&["containerPort", "protocol"]))
    ),
    rule!(
        "io.k8s.api.core.v1.Container",
        "env",
        "merge",
        "name",
        MAP_NAME
    ),
    rule!(
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "merge",
        "mountPath",
        Some(ListType::Map(&["mountPath"]))
    ),
    rule!(
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "merge",
        "devicePath",
        Some(ListType::Map(&["devicePath"]))
    ),
    rule!("io.k8s.api.core.v1.Container", "envFrom", "", "", ATOMIC),
    rule!("io.k8s.api.core.v1.Container", "command", "", "", ATOMIC),
    rule!("io.k8s.api.core.v1.Container", "args", "", "", ATOMIC),
    rule!(
        "io.k8s.api.core.v1.Container",
        "resizePolicy",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "merge",
        "containerPort",
        Some(ListType::Map(&["containerPort", "protocol"]))
    ),
    rule!(
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        "merge",
        "name",
        MAP_NAME
    ),
    rule!(
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "merge",
        "mountPath",
        Some(ListType::Map(&["mountPath"]))
    ),
    rule!(
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        "merge",
        "devicePath",
        Some(ListType::Map(&["devicePath"]))
    ),
    // core/v1 status and other kinds
    rule!(
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.core.v1.PodStatus",
        "podIPs",
        "merge",
        "ip",
        Some(ListType::Map(IP))
    ),
    rule!(
        "io.k8s.api.core.v1.PodStatus",
        "hostIPs",
        "merge",
        "ip",
        Some(ListType::Map(IP))
    ),
    rule!(
        "io.k8s.api.core.v1.PodStatus",
        "containerStatuses",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.core.v1.PodStatus",
        "initContainerStatuses",
        "",
        "",
        ATOMIC
    ),
    rule!("io.k8s.api.core.v1.NodeSpec", "podCIDRs", "merge", "", SET),
    rule!("io.k8s.api.core.v1.NodeSpec", "taints", "", "", ATOMIC),
    rule!(
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        "merge",
        "port",
        Some(ListType::Map(&["port", "protocol"]))
    ),
    rule!(
        "io.k8s.api.core.v1.ServiceSpec",
        "clusterIPs",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.core.v1.ServiceSpec",
        "externalIPs",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.core.v1.ServiceSpec",
        "ipFamilies",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.core.v1.ServiceAccount",
        "secrets",
        "merge",
        "name",
        MAP_NAME
    ),
    rule!(
        "io.k8s.api.core.v1.ServiceAccount",
        "imagePullSecrets",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.core.v1.ReplicationControllerStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.core.v1.NodeSelectorTerm",
        "matchExpressions",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.core.v1.NodeSelectorTerm",
        "matchFields",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.core.v1.EndpointSubset",
        "addresses",
        "",
        "",
        ATOMIC
    ),
    rule!("io.k8s.api.core.v1.EndpointSubset", "ports", "", "", ATOMIC),
    // apps/v1
    rule!(
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        "retainKeys",
        "",
        None
    ),
    rule!(
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    rule!(
        "io.k8s.api.apps.v1.StatefulSetSpec",
        "volumeClaimTemplates",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    // batch/v1
    rule!(
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        "merge",
        "type",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.batch.v1.CronJobStatus",
        "active",
        "",
        "",
        ATOMIC
    ),
    // policy/v1
    rule!(
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        "merge",
        "type",
        MAP_TYPE
    ),
    // networking/v1
    rule!(
        "io.k8s.api.networking.v1.NetworkPolicySpec",
        "ingress",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.networking.v1.NetworkPolicySpec",
        "egress",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.networking.v1.NetworkPolicySpec",
        "policyTypes",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.networking.v1.IngressSpec",
        "rules",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.networking.v1.IngressSpec",
        "tls",
        "",
        "",
        ATOMIC
    ),
    // discovery/v1
    rule!(
        "io.k8s.api.discovery.v1.EndpointSlice",
        "endpoints",
        "",
        "",
        ATOMIC
    ),
    rule!(
        "io.k8s.api.discovery.v1.EndpointSlice",
        "ports",
        "",
        "",
        ATOMIC
    ),
    rule!("io.k8s.api.discovery.v1.Endpoint", "addresses", "", "", SET),
    // rbac/v1
    rule!("io.k8s.api.rbac.v1.Role", "rules", "", "", ATOMIC),
    rule!("io.k8s.api.rbac.v1.ClusterRole", "rules", "", "", ATOMIC),
    rule!("io.k8s.api.rbac.v1.RoleBinding", "subjects", "", "", ATOMIC),
    rule!(
        "io.k8s.api.rbac.v1.ClusterRoleBinding",
        "subjects",
        "",
        "",
        ATOMIC
    ),
];

/// Types whose objects are owned and replaced as a whole (`+structType=atomic`).
pub const ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.api.core.v1.NodeSelector",
];

/// The rule of `property` of OpenAPI type `type_name`, if Kubernetes tags it.
pub fn rule(type_name: &str, property: &str) -> Option<&'static FieldRule> {
    static INDEX: OnceLock<HashMap<(&'static str, &'static str), &'static FieldRule>> =
        OnceLock::new();
    INDEX
        .get_or_init(|| {
            RULES
                .iter()
                .map(|r| ((r.type_name, r.property), r))
                .collect()
        })
        .get(&(type_name, property))
        .copied()
}

/// Adds a rule's OpenAPI extensions (`x-kubernetes-patch-strategy`,
/// `x-kubernetes-patch-merge-key`, `x-kubernetes-list-type`, `x-kubernetes-list-map-keys`) to a
/// property schema.
pub fn annotate(prop: &mut Map<String, Value>, rule: &FieldRule) {
    if !rule.patch_strategy.is_empty() {
        prop.insert(
            "x-kubernetes-patch-strategy".into(),
            Value::from(rule.patch_strategy),
        );
    }
    if !rule.merge_key.is_empty() {
        prop.insert(
            "x-kubernetes-patch-merge-key".into(),
            Value::from(rule.merge_key),
        );
    }
    match rule.list_type {
        Some(ListType::Atomic) => {
            prop.insert("x-kubernetes-list-type".into(), Value::from("atomic"));
        }
        Some(ListType::Set) => {
            prop.insert("x-kubernetes-list-type".into(), Value::from("set"));
        }
        Some(ListType::Map(keys)) => {
            prop.insert("x-kubernetes-list-type".into(), Value::from("map"));
            prop.insert(
                "x-kubernetes-list-map-keys".into(),
                Value::from(keys.to_vec()),
            );
        }
        None => {}
    }
}

/// All OpenAPI definitions of the served kinds, and the root type name of each kind.
struct Schemas {
    definitions: Map<String, Value>,
    roots: HashMap<(String, String), Value>,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut generator = SchemaSettings::openapi3().into_generator();
        let mut roots = HashMap::new();
        for def in registry::catalog::all() {
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (def.schema)(&mut generator)
            }));
            if let Ok(schema) = built {
                roots.insert(
                    (def.group.to_string(), def.kind.to_string()),
                    schema.to_value(),
                );
            }
        }
        Schemas {
            definitions: generator.take_definitions(true),
            roots,
        }
    })
}

/// The JSON property names of an OpenAPI type (empty when the type is not part of a served
/// kind's schema).
pub fn property_names(type_name: &str) -> Vec<&'static str> {
    schemas()
        .definitions
        .get(type_name)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// The map keys of a `&'static` schema as a `&'static` slice, allocated once per schema node.
fn interned_keys(keys: &'static Value) -> &'static [&'static str] {
    static INTERNED: std::sync::Mutex<Vec<(usize, &'static [&'static str])>> =
        std::sync::Mutex::new(Vec::new());
    let id = keys as *const Value as usize;
    let Ok(mut table) = INTERNED.lock() else {
        return &[];
    };
    if let Some((_, k)) = table.iter().find(|(i, _)| *i == id) {
        return k;
    }
    let list: Vec<&'static str> = keys
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let leaked: &'static [&'static str] = Box::leak(list.into_boxed_slice());
    table.push((id, leaked));
    leaked
}

/// A position in a kind's schema: the schema there (None where it is unknown) and its OpenAPI
/// type name (None for inline schemas).
#[derive(Debug, Clone, Copy)]
pub struct Node {
    schema: Option<&'static Value>,
    type_name: Option<&'static str>,
}

impl Node {
    /// The root of a served kind's schema.
    pub fn root(def: &ResourceDef) -> Node {
        if let Some(custom) = def.custom {
            // A custom resource's schema is its CRD's, with list types as extensions.
            return Node {
                schema: Some(&custom.openapi_schema),
                type_name: None,
            };
        }
        let s = schemas();
        Node::resolve(s.roots.get(&(def.group.to_string(), def.kind.to_string())))
    }

    /// A node that knows nothing (every list atomic, every map merged).
    pub fn unknown() -> Node {
        Node {
            schema: None,
            type_name: None,
        }
    }

    fn resolve(mut schema: Option<&'static Value>) -> Node {
        let defs = &schemas().definitions;
        let mut type_name = None;
        for _ in 0..8 {
            let Some(s) = schema else { break };
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                let name = r.rsplit('/').next().unwrap_or(r);
                let Some((k, v)) = defs.get_key_value(name) else {
                    break;
                };
                type_name = Some(k.as_str());
                schema = Some(v);
                continue;
            }
            if let Some(first) = s
                .get("allOf")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                schema = Some(first);
                continue;
            }
            break;
        }
        Node { schema, type_name }
    }

    /// The OpenAPI type name here, e.g. `io.k8s.api.core.v1.PodSpec`.
    pub fn type_name(&self) -> Option<&'static str> {
        self.type_name
    }

    /// The node of a property of this object.
    pub fn child(&self, property: &str) -> Node {
        let Some(s) = self.schema else {
            return Node::unknown();
        };
        if let Some(p) = s.get("properties").and_then(|p| p.get(property)) {
            return Node::resolve(Some(p));
        }
        match s.get("additionalProperties") {
            Some(ap @ Value::Object(_)) => Node::resolve(Some(ap)),
            _ => Node::unknown(),
        }
    }

    /// The node of the elements of this list.
    pub fn items(&self) -> Node {
        Node::resolve(self.schema.and_then(|s| s.get("items")))
    }

    /// Kubernetes' rule for a property of this object.
    pub fn rule(&self, property: &str) -> Option<&'static FieldRule> {
        rule(self.type_name?, property)
    }

    /// The list type a property declares: Kubernetes' rule for built-in types, else the
    /// schema's `x-kubernetes-list-type` / `x-kubernetes-list-map-keys` (custom resources).
    pub fn declared_list_type(&self, property: &str) -> Option<ListType> {
        if let Some(lt) = self.rule(property).and_then(|r| r.list_type) {
            return Some(lt);
        }
        let prop = self.schema?.get("properties")?.get(property)?;
        match prop.get("x-kubernetes-list-type")?.as_str()? {
            "set" => Some(ListType::Set),
            "map" => Some(ListType::Map(interned_keys(
                prop.get("x-kubernetes-list-map-keys")?,
            ))),
            _ => Some(ListType::Atomic),
        }
    }

    /// The list type of a property of this object (untagged lists are atomic).
    pub fn list_type(&self, property: &str) -> ListType {
        self.declared_list_type(property)
            .unwrap_or(ListType::Atomic)
    }

    /// True when this is a map with arbitrary keys (`additionalProperties`), like labels.
    pub fn is_map(&self) -> bool {
        self.schema.is_some_and(|s| {
            s.get("properties").is_none()
                && s.get("additionalProperties").is_some_and(Value::is_object)
        })
    }

    /// True when this object is owned as a whole (`+structType=atomic`).
    pub fn is_atomic_struct(&self) -> bool {
        self.type_name.is_some_and(|t| ATOMIC_STRUCTS.contains(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(group: &str, kind: &str) -> &'static ResourceDef {
        registry::catalog::lookup_kind(group, kind).expect("served kind")
    }

    #[test]
    fn container_ports_and_service_ports_differ() {
        let deploy = Node::root(def("apps", "Deployment"));
        let pod_spec = deploy.child("spec").child("template").child("spec");
        assert_eq!(pod_spec.type_name(), Some("io.k8s.api.core.v1.PodSpec"));
        assert_eq!(
            pod_spec.rule("containers").map(|r| r.merge_key),
            Some("name")
        );
        let container = pod_spec.child("containers").items();
        assert_eq!(
            container.rule("ports").map(|r| r.merge_key),
            Some("containerPort")
        );
        assert_eq!(
            container.list_type("ports"),
            ListType::Map(&["containerPort", "protocol"])
        );
        let svc = Node::root(def("", "Service")).child("spec");
        assert_eq!(svc.rule("ports").map(|r| r.merge_key), Some("port"));
        assert_eq!(container.list_type("command"), ListType::Atomic);
    }

    #[test]
    fn metadata_rules_apply_to_every_kind() {
        let meta = Node::root(def("", "ConfigMap")).child("metadata");
        assert_eq!(meta.list_type("finalizers"), ListType::Set);
        assert!(meta.child("labels").rule("x").is_none());
    }

    #[test]
    fn every_rule_names_a_real_property() {
        let defs = &schemas().definitions;
        for r in RULES {
            if let Some(s) = defs.get(r.type_name) {
                assert!(
                    s.pointer(&format!("/properties/{}", r.property)).is_some(),
                    "{}.{}",
                    r.type_name,
                    r.property
                );
            }
        }
    }
}
