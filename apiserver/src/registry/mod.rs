//! The resource registry: one entry per served resource with its Kubernetes behaviour
//! (type, scope, defaulting, validation, spec/status split, table columns, field selectors).
//!
//! This module holds the types every part of the apiserver names (it imports none of them);
//! the served set is [`catalog`]. Adding a resource is adding one [`ResourceDef`] to
//! `resources::ALL` (entries live in `resources/`).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod catalog;
pub mod custom;
pub mod fields;
pub mod resources;

/// A subresource a resource serves besides the main object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: writes only `.status` (main resource writes ignore `.status`).
    Status,
    /// `/scale`: `autoscaling/v1` Scale over `.spec.replicas`.
    Scale,
    /// `pods/binding`: binds a pod to a node.
    Binding,
    /// `pods/log` (served by the kubelet; proxied).
    Log,
    /// `pods/exec` (served by the kubelet; proxied).
    Exec,
    /// `pods/portforward` (served by the kubelet; proxied).
    PortForward,
    /// `pods/eviction`.
    Eviction,
    /// `serviceaccounts/token`: the TokenRequest API.
    Token,
    /// `namespaces/finalize`.
    Finalize,
    /// `pods/ephemeralcontainers`.
    EphemeralContainers,
    /// `certificatesigningrequests/approval`: writes only the Approved/Denied conditions.
    Approval,
}

impl Subresource {
    /// The URL segment of this subresource.
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::PortForward => "portforward",
            Subresource::Eviction => "eviction",
            Subresource::Token => "token",
            Subresource::Finalize => "finalize",
            Subresource::EphemeralContainers => "ephemeralcontainers",
            Subresource::Approval => "approval",
        }
    }
}

/// A column of the Table output (`kubectl get`), as Kubernetes prints it.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// Header, e.g. "Ready".
    pub name: &'static str,
    /// OpenAPI type: "string", "integer", "date", ...
    pub type_: &'static str,
    /// OpenAPI format: "name" for the NAME column, "" otherwise.
    pub format: &'static str,
    /// 0 = always shown; 1 = only with `-o wide`.
    pub priority: i32,
    /// Human description.
    pub description: &'static str,
}

/// One field-level validation error, reported as a cause of a 422 `Invalid` Status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Kubernetes' cause type: "FieldValueRequired", "FieldValueInvalid", "FieldValueNotSupported",
    /// "FieldValueDuplicate", "FieldValueForbidden", "FieldValueTooLong".
    pub reason: &'static str,
    /// JSON-path-like field, e.g. `metadata.name` or `spec.template.spec.containers[0].image`.
    pub field: String,
    /// Full message as Kubernetes formats it, e.g.
    /// `spec.replicas: Invalid value: -1: must be greater than or equal to 0`.
    pub message: String,
}

impl FieldError {
    /// `Required value` error.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let field = field.into();
        let message = if detail.is_empty() {
            format!("{field}: Required value")
        } else {
            format!("{field}: Required value: {detail}")
        };
        FieldError {
            reason: "FieldValueRequired",
            field,
            message,
        }
    }

    /// `Invalid value` error; `value` is rendered as Kubernetes does (strings quoted).
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let field = field.into();
        let message = format!("{field}: Invalid value: {}: {detail}", render_value(value));
        FieldError {
            reason: "FieldValueInvalid",
            field,
            message,
        }
    }

    /// `Unsupported value` error listing the supported values.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let field = field.into();
        let list = supported
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!(
            "{field}: Unsupported value: {}: supported values: {list}",
            render_value(value)
        );
        FieldError {
            reason: "FieldValueNotSupported",
            field,
            message,
        }
    }

    /// `Duplicate value` error.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        let field = field.into();
        let message = format!("{field}: Duplicate value: {}", render_value(value));
        FieldError {
            reason: "FieldValueDuplicate",
            field,
            message,
        }
    }

    /// `Forbidden` error.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        let field = field.into();
        let message = format!("{field}: Forbidden: {detail}");
        FieldError {
            reason: "FieldValueForbidden",
            field,
            message,
        }
    }
}

/// Renders a value the way Kubernetes' field errors print it (`"abc"`, `-1`, `{...}`).
pub fn render_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{s}\""),
        Value::Null => "null".to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// The result of decoding a request body into the resource's typed schema.
#[derive(Debug)]
pub struct Normalized {
    /// The object re-encoded from the typed struct (unknown fields dropped).
    pub object: Value,
    /// Paths of fields that are not in the schema, e.g. `spec.replicaz`.
    pub unknown_fields: Vec<String>,
}

/// How `metadata.name` is validated (Kubernetes' per-resource name rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most resources): lowercase alphanumerics, '-', '.', at most 253.
    Subdomain,
    /// RFC 1123 label (namespaces): lowercase alphanumerics and '-', at most 63.
    Label,
    /// RFC 1035 label (services): like Label but must start with a letter.
    Label1035,
    /// Path segment (RBAC objects): anything but "." / ".." and without '/' or '%'.
    PathSegment,
}

/// What part of the object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateScope {
    /// The main resource: everything except `.status` (when the resource has a status split).
    Main,
    /// The `/status` subresource: only `.status` (and not metadata that status may not touch).
    Status,
    /// `certificatesigningrequests/approval`: like `/status`, and the only way to change a
    /// request's Approved/Denied conditions.
    Approval,
    /// `pods/ephemeralcontainers`: only `spec.ephemeralContainers` (Kubernetes'
    /// `dropNonEphemeralContainerUpdates`).
    EphemeralContainers,
}

/// A resource's own behaviour on writes (Kubernetes' per-resource REST strategy:
/// `PrepareForCreate`, `PrepareForUpdate`, `CheckGracefulDelete`, …), so the generic handlers
/// hold no checks of the kind. Entries take [`Strategy::DEFAULT`] and state what differs.
#[derive(Clone, Copy)]
pub struct Strategy {
    /// `PrepareForCreate` for a resource with a status split, after the server has set
    /// metadata and before defaults: the status a new object starts with. Default: none.
    pub prepare_for_create: fn(&mut Value),
    /// `PrepareForUpdate`: what an update in `scope` may not change, after the generic
    /// spec/status split has been applied to `new` (old first, then new).
    pub prepare_for_update: fn(&Value, &mut Value, UpdateScope),
    /// `metadata.generation` starts at 1 and counts changes of `.spec`.
    pub tracks_generation: bool,
    /// `CheckGracefulDelete`: the grace period a delete waits by default (before the client's
    /// `gracePeriodSeconds`), or None when the object goes at once. Resources without it are
    /// never deleted gracefully.
    pub graceful_delete: Option<fn(&Value) -> Option<i64>>,
    /// Whether something besides `metadata.finalizers` still holds a marked object (namespaces:
    /// `spec.finalizers`).
    pub finalizers_pending: fn(&Value) -> bool,
    /// The status an object gets when it is marked for deletion (namespaces: `Terminating`).
    pub prepare_for_delete: fn(&mut Value),
    /// ClusterIPs and NodePorts are allocated on create and update (Services).
    pub allocates_service_addresses: bool,
}

impl Strategy {
    /// No behaviour beyond the generic handlers'.
    pub const DEFAULT: Strategy = Strategy {
        prepare_for_create: drop_status,
        prepare_for_update: no_update_rules,
        tracks_generation: false,
        graceful_delete: None,
        finalizers_pending: no_finalizers_pending,
        prepare_for_delete: no_defaults,
        allocates_service_addresses: false,
    };
}

/// A new object's status is the server's: the client's is dropped.
pub fn drop_status(obj: &mut Value) {
    if let Value::Object(m) = obj {
        m.remove("status");
    }
}

/// A new object keeps the status it was sent with (nodes; namespaces get theirs from defaults).
pub fn keep_status(_: &mut Value) {}

/// No update rules beyond the spec/status split.
pub fn no_update_rules(_: &Value, _: &mut Value, _: UpdateScope) {}

/// Nothing but `metadata.finalizers` holds a marked object.
pub fn no_finalizers_pending(_: &Value) -> bool {
    false
}

/// Everything the apiserver knows about one resource.
#[derive(Clone, Copy)]
pub struct ResourceDef {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version, e.g. "v1".
    pub version: &'static str,
    /// Kind, e.g. "Deployment".
    pub kind: &'static str,
    /// Plural resource name in URLs, e.g. "deployments".
    pub plural: &'static str,
    /// Singular name, e.g. "deployment".
    pub singular: &'static str,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
    /// kubectl short names, e.g. `["deploy"]`.
    pub short_names: &'static [&'static str],
    /// Categories, e.g. `["all"]`.
    pub categories: &'static [&'static str],
    /// Storage key segment: `/registry/<storage_prefix>/...` (Kubernetes' layout: `services/specs`,
    /// `minions`, ...).
    pub storage_prefix: &'static str,
    /// The rule for `metadata.name`.
    pub name_rule: NameRule,
    /// Subresources served.
    pub subresources: &'static [Subresource],
    /// True when `.status` is owned by the `/status` subresource (spec/status split).
    pub has_status: bool,
    /// Decodes a JSON object through the typed k8s-openapi struct: type errors are `Err`, unknown
    /// fields are reported.
    pub normalize: fn(&Value) -> Result<Normalized, String>,
    /// Applies Kubernetes' defaults in place (on create and update, after patches).
    pub defaults: fn(&mut Value),
    /// Validates the object (`old` is the current object on update). Metadata name/namespace
    /// checks are done by the caller; this checks the resource's own fields.
    pub validate: fn(&Value, Option<&Value>) -> Vec<FieldError>,
    /// Table columns (NAME first, AGE where Kubernetes has it).
    pub columns: &'static [Column],
    /// Table cells for one object, in the order of `columns`.
    pub cells: fn(&Value) -> Vec<Value>,
    /// Field selector support beyond `metadata.name`/`metadata.namespace`: returns the value of a
    /// selectable field, or None if the field is not supported for this resource.
    pub field: fn(&Value, &str) -> Option<String>,
    /// The list of selectable fields (for caching them in the watch cache).
    pub selectable_fields: &'static [&'static str],
    /// The OpenAPI (v3) schema name of the kind, e.g. `io.k8s.api.apps.v1.Deployment`, and a
    /// function adding its schema to a generator.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// Set when this resource is another group/version's view of objects stored in that
    /// resource's shape (events.k8s.io/v1 Events are core/v1 Events in storage).
    pub storage_view: Option<StorageView>,
    /// Kubernetes' `ReturnDeletedObject`: a DELETE that removes the object answers with the
    /// object (pods, services, ServiceAccounts, PVs, PVCs) instead of a `Success` Status.
    pub return_deleted_object: bool,
    /// Set for a custom resource: the served CRD version behind this entry (its schema,
    /// storage version, printer columns and scale paths).
    pub custom: Option<&'static crate::crd::Served>,
    /// The resource's behaviour on create, update and delete.
    pub strategy: Strategy,
}

/// Conversion between a resource's served shape and the shape it is stored in, for resources
/// that share storage with another group/version (Kubernetes' "one object, several versions").
#[derive(Clone, Copy)]
pub struct StorageView {
    /// Served shape → stored shape.
    pub to_storage: fn(&Value) -> Value,
    /// Stored shape → served shape.
    pub from_storage: fn(&Value) -> Value,
}

impl ResourceDef {
    /// `apiVersion` string, e.g. `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The `List` kind, e.g. `DeploymentList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether the resource serves the given subresource.
    pub fn has_subresource(&self, s: Subresource) -> bool {
        self.subresources.contains(&s)
    }

    /// Converts a stored object to the served shape (a no-op for most resources).
    pub fn from_storage(&self, obj: Value) -> Value {
        match (&self.storage_view, self.custom) {
            (Some(view), _) => (view.from_storage)(&obj),
            (None, Some(c)) => with_api_version(obj, &c.group, &c.version),
            (None, None) => obj,
        }
    }

    /// True when stored objects are converted before they are served (custom resources: their
    /// `apiVersion` is the storage version's).
    pub fn converts(&self) -> bool {
        self.storage_view.is_some() || self.custom.is_some()
    }

    /// Group-resource for messages, e.g. `deployments.apps` or `pods`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Decodes `value` as `K` and re-encodes it, reporting fields `K` does not know.
pub fn normalize_as<K>(value: &Value) -> Result<Normalized, String>
where
    K: DeserializeOwned + Serialize,
{
    let typed = K::deserialize(value).map_err(|e| e.to_string())?;
    let object = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown_fields = Vec::new();
    fields::unknown_fields(value, &object, "", &mut unknown_fields);
    Ok(Normalized {
        object,
        unknown_fields,
    })
}

/// Schema function for a k8s-openapi type.
pub fn schema_of<K: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    generator.subschema_for::<K>()
}

/// No extra defaults.
pub fn no_defaults(_: &mut Value) {}

/// No extra validation.
pub fn no_validation(_: &Value, _: Option<&Value>) -> Vec<FieldError> {
    Vec::new()
}

/// No extra field selectors.
pub fn no_fields(_: &Value, _: &str) -> Option<String> {
    None
}

/// The NAME and AGE columns most resources print.
pub const NAME_AGE: &[Column] = &[NAME_COLUMN, AGE_COLUMN];

/// The NAME column.
pub const NAME_COLUMN: Column = Column {
    name: "Name",
    type_: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
};

/// The AGE column (cell = creationTimestamp rendered as a duration).
pub const AGE_COLUMN: Column = Column {
    name: "Age",
    type_: "string",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
};

/// Cells for [`NAME_AGE`].
pub fn name_age_cells(obj: &Value) -> Vec<Value> {
    vec![
        Value::String(fields::name(obj).to_string()),
        Value::String(fields::age(obj)),
    ]
}

/// Storage key of an object.
pub fn object_key(def: &ResourceDef, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if def.namespaced => format!("/registry/{}/{}/{}", def.storage_prefix, ns, name),
        _ => format!("/registry/{}/{}", def.storage_prefix, name),
    }
}

/// `obj` with `apiVersion` set to `group/version` (a custom resource's served or stored version).
pub fn with_api_version(mut obj: Value, group: &str, version: &str) -> Value {
    if let Value::Object(m) = &mut obj {
        m.insert(
            "apiVersion".into(),
            Value::String(format!("{group}/{version}")),
        );
    }
    obj
}
