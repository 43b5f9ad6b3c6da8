//! The registry entries, one per served resource, grouped by API group.

use super::*;
use k8s_openapi::api::core::v1 as corev1;

pub mod apiregistration;
mod apps;
mod autoscaling;
mod batch;
pub mod certificates;
mod coordination;
mod core;
mod core_extra;
mod discovery;
mod events;
mod networking;
mod node;
pub(crate) mod pod;
mod policy;
mod quota;
mod rbac;
mod scheduling;
mod secrets;
mod services;
mod storage;
mod util;

pub use self::apiregistration::APISERVICES;
pub use self::apps::{CONTROLLERREVISIONS, DAEMONSETS, DEPLOYMENTS, REPLICASETS, STATEFULSETS};
pub use self::autoscaling::{HPA_V1, HPA_V2};
pub use self::batch::{CRONJOBS, JOBS};
pub use self::certificates::CERTIFICATESIGNINGREQUESTS;
pub use self::coordination::LEASES;
pub use self::core::{NODES, PODS};
pub use self::core_extra::{COMPONENTSTATUSES, PODTEMPLATES, REPLICATIONCONTROLLERS};
pub use self::discovery::ENDPOINTSLICES;
pub use self::events::{EVENTS, EVENTS_V1, from_core_event, to_core_event};
pub use self::networking::{
    DEFAULT_INGRESS_CLASS_ANNOTATION, INGRESSCLASSES, INGRESSES, NETWORKPOLICIES,
    is_default_ingress_class,
};
pub use self::node::RUNTIMECLASSES;
pub use self::policy::PODDISRUPTIONBUDGETS;
pub use self::quota::{LIMITRANGES, RESOURCEQUOTAS};
pub use self::rbac::{CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES};
pub use self::scheduling::{PRIORITYCLASSES, SYSTEM_PRIORITY_CLASSES, system_priority_class};
pub use self::secrets::{SECRETS, SERVICEACCOUNTS};
pub use self::services::{ENDPOINTS, SERVICES};
pub use self::storage::{
    BETA_CLASS_ANNOTATION, DEFAULT_CLASS_ANNOTATION, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES,
    STORAGECLASSES, is_default_class,
};

/// Every served resource.
pub static ALL: &[ResourceDef] = &[
    NAMESPACES,
    PODS,
    NODES,
    SERVICES,
    ENDPOINTS,
    SERVICEACCOUNTS,
    CONFIGMAPS,
    SECRETS,
    EVENTS,
    RESOURCEQUOTAS,
    LIMITRANGES,
    REPLICATIONCONTROLLERS,
    PODTEMPLATES,
    PERSISTENTVOLUMES,
    PERSISTENTVOLUMECLAIMS,
    APISERVICES,
    DEPLOYMENTS,
    REPLICASETS,
    STATEFULSETS,
    DAEMONSETS,
    CONTROLLERREVISIONS,
    HPA_V2,
    HPA_V1,
    JOBS,
    CRONJOBS,
    NETWORKPOLICIES,
    INGRESSES,
    INGRESSCLASSES,
    ROLES,
    ROLEBINDINGS,
    CLUSTERROLES,
    CLUSTERROLEBINDINGS,
    LEASES,
    ENDPOINTSLICES,
    EVENTS_V1,
    STORAGECLASSES,
    CERTIFICATESIGNINGREQUESTS,
    PODDISRUPTIONBUDGETS,
    PRIORITYCLASSES,
    RUNTIMECLASSES,
];

/// core/v1 namespaces.
pub const NAMESPACES: ResourceDef = ResourceDef {
    namespaced: false,
    short_names: &["ns"],
    name_rule: NameRule::Label,
    subresources: &[Subresource::Status, Subresource::Finalize],
    has_status: true,
    defaults: namespace_defaults,
    columns: &[
        NAME_COLUMN,
        Column {
            name: "Status",
            type_: "string",
            format: "",
            priority: 0,
            description: "The status of the namespace",
        },
        AGE_COLUMN,
    ],
    cells: |o| {
        vec![
            Value::String(fields::name(o).to_string()),
            Value::String(
                fields::str_at(o, &["status", "phase"])
                    .unwrap_or("")
                    .to_string(),
            ),
            Value::String(fields::age(o)),
        ]
    },
    field: |o, f| match f {
        "status.phase" => Some(
            fields::str_at(o, &["status", "phase"])
                .unwrap_or("")
                .to_string(),
        ),
        _ => None,
    },
    selectable_fields: &["status.phase"],
    strategy: Strategy {
        prepare_for_create: keep_status,
        finalizers_pending: namespace_finalizers_pending,
        prepare_for_delete: namespace_terminating,
        ..Strategy::DEFAULT
    },
    ..util::def_of::<corev1::Namespace>("", "v1", "Namespace", "namespaces", "namespace")
};

fn namespace_defaults(o: &mut Value) {
    fields::default_at(
        o,
        &["spec"],
        "finalizers",
        serde_json::json!(["kubernetes"]),
    );
    fields::default_at(o, &["status"], "phase", Value::String("Active".into()));
    // Kubernetes labels every namespace with its own name.
    let name = fields::name(o).to_string();
    if !name.is_empty() {
        fields::ensure_object(o, &["metadata", "labels"])
            .insert("kubernetes.io/metadata.name".into(), Value::String(name));
    }
}

/// A namespace is only removed once its `spec.finalizers` (the namespace controller's
/// `kubernetes` finalizer) are gone too.
fn namespace_finalizers_pending(obj: &Value) -> bool {
    obj.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// A namespace marked for deletion is `Terminating`.
fn namespace_terminating(obj: &mut Value) {
    if let Value::Object(m) = obj {
        let status = m.entry("status").or_insert_with(|| serde_json::json!({}));
        if let Value::Object(s) = status {
            s.insert("phase".into(), Value::String("Terminating".into()));
        }
    }
}

/// core/v1 configmaps.
pub const CONFIGMAPS: ResourceDef = ResourceDef {
    short_names: &["cm"],
    validate: validate_configmap,
    columns: &[
        NAME_COLUMN,
        Column {
            name: "Data",
            type_: "string",
            format: "",
            priority: 0,
            description: "Number of data entries",
        },
        AGE_COLUMN,
    ],
    cells: |o| {
        let n = o
            .get("data")
            .and_then(Value::as_object)
            .map(|m| m.len())
            .unwrap_or(0)
            + o.get("binaryData")
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0);
        vec![
            Value::String(fields::name(o).to_string()),
            Value::from(n),
            Value::String(fields::age(o)),
        ]
    },
    ..util::def_of::<corev1::ConfigMap>("", "v1", "ConfigMap", "configmaps", "configmap")
};

/// ConfigMap validation: data/binaryData keys (`IsConfigMapKey`), no key in both, and the
/// `immutable` rules on update.
fn validate_configmap(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let data = o.get("data").and_then(Value::as_object);
    let binary = o.get("binaryData").and_then(Value::as_object);
    for (field, m) in [("data", data), ("binaryData", binary)] {
        for k in m.into_iter().flat_map(|m| m.keys()) {
            for msg in self::secrets::config_key_errors(k) {
                errs.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    &Value::String(k.clone()),
                    &msg,
                ));
            }
        }
    }
    for k in data.into_iter().flat_map(|m| m.keys()) {
        if binary.is_some_and(|b| b.contains_key(k)) {
            errs.push(FieldError::invalid(
                format!("data[{k}]"),
                &Value::String(k.clone()),
                "duplicate of key present in binaryData",
            ));
        }
    }
    util::immutable_once_set(&mut errs, o, old, &["data", "binaryData"]);
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::catalog::lookup;
    use serde_json::json;

    #[test]
    fn strategies_carry_the_kind_specific_write_behaviour() {
        let generation: Vec<&str> = ALL
            .iter()
            .filter(|d| d.strategy.tracks_generation)
            .map(|d| d.kind)
            .collect();
        assert_eq!(
            generation,
            [
                "ResourceQuota",
                "Deployment",
                "ReplicaSet",
                "StatefulSet",
                "DaemonSet",
                "Job",
                "CronJob",
                "NetworkPolicy",
                "PodDisruptionBudget"
            ]
        );
        let graceful = (PODS.strategy.graceful_delete).expect("pods delete gracefully");
        let pod = |node: &str, phase: &str| json!({"spec": {"nodeName": node, "terminationGracePeriodSeconds": 5}, "status": {"phase": phase}});
        assert_eq!(graceful(&pod("n1", "Running")), Some(5));
        assert_eq!(graceful(&pod("", "Pending")), None);
        assert_eq!(graceful(&pod("n1", "Succeeded")), None);
        assert!(
            ALL.iter()
                .filter(|d| d.strategy.graceful_delete.is_some())
                .count()
                == 1
        );
        let mut ns = json!({"spec": {"finalizers": ["kubernetes"]}});
        assert!((NAMESPACES.strategy.finalizers_pending)(&ns));
        (NAMESPACES.strategy.prepare_for_delete)(&mut ns);
        assert_eq!(ns["status"]["phase"], "Terminating");
        let mut created = json!({"spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Running"}});
        (PODS.strategy.prepare_for_create)(&mut created);
        assert!(created.get("status").is_none());
        (PODS.defaults)(&mut created);
        assert_eq!(
            created["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
        let mut svc = json!({"status": {"loadBalancer": {}}});
        (SERVICES.strategy.prepare_for_create)(&mut svc);
        assert!(svc.get("status").is_none());
        let allocating: Vec<&str> = ALL
            .iter()
            .filter(|d| d.strategy.allocates_service_addresses)
            .map(|d| d.kind)
            .collect();
        assert_eq!(allocating, ["Service"]);
    }

    fn minimal(def: &ResourceDef) -> Value {
        let template = json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}
        });
        let mut o = json!({
            "apiVersion": def.api_version(),
            "kind": def.kind,
            "metadata": {"name": "x", "uid": "0000-1111", "creationTimestamp": "2024-01-01T00:00:00Z"},
        });
        if def.namespaced {
            o["metadata"]["namespace"] = json!("default");
        }
        let extra = match def.kind {
            "Pod" => json!({"spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
            "Service" => json!({"spec": {"ports": [{"port": 80}], "selector": {"app": "x"}}}),
            "ReplicationController" => {
                json!({"spec": {"selector": {"app": "x"}, "template": template}})
            }
            "PodTemplate" => json!({"template": template}),
            "Deployment" | "ReplicaSet" | "DaemonSet" => {
                json!({"spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}})
            }
            "StatefulSet" => {
                json!({"spec": {"serviceName": "x", "selector": {"matchLabels": {"app": "x"}}, "template": template}})
            }
            "Job" => {
                let mut t = template.clone();
                t["spec"]["restartPolicy"] = json!("Never");
                json!({"spec": {"template": t}})
            }
            "CronJob" => {
                let mut t = template.clone();
                t["spec"]["restartPolicy"] = json!("Never");
                json!({"spec": {"schedule": "@hourly", "jobTemplate": {"spec": {"template": t}}}})
            }
            "NetworkPolicy" => json!({"spec": {"podSelector": {}}}),
            "Ingress" => {
                json!({"spec": {"defaultBackend": {"service": {"name": "x", "port": {"number": 80}}}}})
            }
            "IngressClass" => json!({"spec": {"controller": "lotse.dev/ingress"}}),
            "RoleBinding" | "ClusterRoleBinding" => json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]
            }),
            "Role" | "ClusterRole" => {
                json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
            }
            "EndpointSlice" => {
                json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]})
            }
            "Event" if def.group.is_empty() => {
                json!({"involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}, "reason": "R", "message": "m", "type": "Normal"})
            }
            "Event" => json!({
                "eventTime": "2024-01-01T00:00:00.000000Z", "regarding": {"kind": "Pod", "name": "p"},
                "reason": "R", "note": "m", "type": "Normal", "action": "A",
                "reportingController": "c", "reportingInstance": "i"
            }),
            "LimitRange" => {
                json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}}]}})
            }
            "PersistentVolume" => json!({"spec": {"capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/data"}}}),
            "PersistentVolumeClaim" => json!({"spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}),
            "StorageClass" => json!({"provisioner": "rancher.io/local-path"}),
            "CertificateSigningRequest" => json!({"spec": certificates::tests::example_spec()}),
            "PriorityClass" => json!({"value": 1000}),
            "RuntimeClass" => json!({"handler": "runc"}),
            "APIService" => json!({"metadata": {"name": "v1.x", "uid": "0000-1111",
                "creationTimestamp": "2024-01-01T00:00:00Z"}, "spec": {"group": "x", "version": "v1",
                "groupPriorityMinimum": 1000, "versionPriority": 100}}),
            "HorizontalPodAutoscaler" => json!({"spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "maxReplicas": 3}}),
            _ => json!({}),
        };
        if let (Value::Object(m), Value::Object(e)) = (&mut o, extra) {
            m.extend(e);
        }
        o
    }

    fn defaulted(def: &ResourceDef) -> Value {
        let mut o = minimal(def);
        (def.defaults)(&mut o);
        o
    }

    #[test]
    fn every_entry_is_consistent() {
        for def in ALL {
            let o = defaulted(def);
            let cells = (def.cells)(&o);
            assert_eq!(cells.len(), def.columns.len(), "{} cells", def.plural);
            let n =
                (def.normalize)(&minimal(def)).unwrap_or_else(|e| panic!("{}: {e}", def.plural));
            assert!(
                n.unknown_fields.is_empty(),
                "{}: {:?}",
                def.plural,
                n.unknown_fields
            );
            let n = (def.normalize)(&o).unwrap_or_else(|e| panic!("{} defaulted: {e}", def.plural));
            assert!(
                n.unknown_fields.is_empty(),
                "{} defaulted: {:?}",
                def.plural,
                n.unknown_fields
            );
            let errs = (def.validate)(&o, None);
            assert!(errs.is_empty(), "{}: {errs:?}", def.plural);
            let errs = (def.validate)(&o, Some(&o));
            assert!(errs.is_empty(), "{} update: {errs:?}", def.plural);
            for f in def.selectable_fields {
                assert!((def.field)(&o, f).is_some(), "{} field {f}", def.plural);
            }
            assert!((def.field)(&o, "spec.nonexistent").is_none());
            assert_eq!(
                def.columns.iter().filter(|c| c.format == "name").count(),
                1,
                "{}",
                def.plural
            );
        }
    }

    #[test]
    fn defaults_are_idempotent() {
        for def in ALL {
            let once = defaulted(def);
            let mut twice = once.clone();
            (def.defaults)(&mut twice);
            assert_eq!(once, twice, "{}", def.plural);
        }
    }

    #[test]
    fn lookup_finds_entries_and_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for def in ALL {
            assert!(
                seen.insert((def.group, def.version, def.plural)),
                "duplicate {} {}",
                def.group_resource(),
                def.version
            );
        }
        assert!(lookup("apps", "v1", "deployments").is_some());
        assert_eq!(
            lookup("", "v1", "services").map(|d| d.storage_prefix),
            Some("services/specs")
        );
        assert_eq!(
            lookup("", "v1", "nodes").map(|d| d.storage_prefix),
            Some("minions")
        );
        // One name per resource: a resource served in two versions (HPA v2 and v1) is in the
        // category once for kubectl, which resolves the preferred version.
        let mut all_cat: Vec<&str> = ALL
            .iter()
            .filter(|d| d.categories.contains(&"all"))
            .map(|d| d.plural)
            .collect();
        all_cat.dedup();
        assert_eq!(
            all_cat,
            [
                "pods",
                "services",
                "replicationcontrollers",
                "deployments",
                "replicasets",
                "statefulsets",
                "daemonsets",
                "horizontalpodautoscalers",
                "jobs",
                "cronjobs"
            ]
        );
    }
}
