//! The registry entries, one per served resource, grouped by API group.

use super::*;
use k8s_openapi::api::core::v1 as corev1;

mod apps;
mod batch;
mod coordination;
mod core;
mod discovery;
mod events;
mod networking;
mod rbac;
mod pod;
mod util;

pub use self::apps::{DAEMONSETS, DEPLOYMENTS, REPLICASETS, STATEFULSETS};
pub use self::batch::JOBS;
pub use self::coordination::LEASES;
pub use self::discovery::ENDPOINTSLICES;
pub use self::events::{EVENTS_V1, from_core_event, to_core_event};
pub use self::networking::NETWORKPOLICIES;
pub use self::rbac::{CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES};
pub use self::core::{ENDPOINTS, EVENTS, LIMITRANGES, NODES, PODS, RESOURCEQUOTAS, SECRETS, SERVICEACCOUNTS, SERVICES};

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
    DEPLOYMENTS,
    REPLICASETS,
    STATEFULSETS,
    DAEMONSETS,
    JOBS,
    NETWORKPOLICIES,
    ROLES,
    ROLEBINDINGS,
    CLUSTERROLES,
    CLUSTERROLEBINDINGS,
    LEASES,
    ENDPOINTSLICES,
    EVENTS_V1,
];

/// core/v1 namespaces.
pub const NAMESPACES: ResourceDef = ResourceDef {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    storage_prefix: "namespaces",
    name_rule: NameRule::Label,
    subresources: &[Subresource::Status, Subresource::Finalize],
    has_status: true,
    normalize: normalize_as::<corev1::Namespace>,
    defaults: namespace_defaults,
    validate: no_validation,
    columns: &[
        NAME_COLUMN,
        Column { name: "Status", type_: "string", format: "", priority: 0, description: "The status of the namespace" },
        AGE_COLUMN,
    ],
    cells: |o| {
        vec![
            Value::String(fields::name(o).to_string()),
            Value::String(fields::str_at(o, &["status", "phase"]).unwrap_or("").to_string()),
            Value::String(fields::age(o)),
        ]
    },
    field: |o, f| match f {
        "status.phase" => Some(fields::str_at(o, &["status", "phase"]).unwrap_or("").to_string()),
        _ => None,
    },
    selectable_fields: &["status.phase"],
    schema: schema_of::<corev1::Namespace>,
};

fn namespace_defaults(o: &mut Value) {
    fields::default_at(o, &["spec"], "finalizers", serde_json::json!(["kubernetes"]));
    fields::default_at(o, &["status"], "phase", Value::String("Active".into()));
    // Kubernetes labels every namespace with its own name.
    let name = fields::name(o).to_string();
    if !name.is_empty() {
        fields::ensure_object(o, &["metadata", "labels"])
            .insert("kubernetes.io/metadata.name".into(), Value::String(name));
    }
}

/// core/v1 configmaps.
pub const CONFIGMAPS: ResourceDef = ResourceDef {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    storage_prefix: "configmaps",
    name_rule: NameRule::Subdomain,
    subresources: &[],
    has_status: false,
    normalize: normalize_as::<corev1::ConfigMap>,
    defaults: no_defaults,
    validate: no_validation,
    columns: &[
        NAME_COLUMN,
        Column { name: "Data", type_: "string", format: "", priority: 0, description: "Number of data entries" },
        AGE_COLUMN,
    ],
    cells: |o| {
        let n = o.get("data").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0)
            + o.get("binaryData").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0);
        vec![Value::String(fields::name(o).to_string()), Value::from(n), Value::String(fields::age(o))]
    },
    field: no_fields,
    selectable_fields: &[],
    schema: schema_of::<corev1::ConfigMap>,
};
