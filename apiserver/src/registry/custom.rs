//! Registry entries that come and go at run time: the custom resources of established CRDs
//! (`apiextensions.k8s.io/v1`); the CRD controller (`crate::loops::crd_controller`) keeps them in step
//! with the stored CRDs.
//!
//! Entries are process-wide like the built-in registry. Each served CRD version becomes a
//! leaked `&'static ResourceDef` (the generic handlers, caches and requests hold plain
//! references); a new one is leaked only when a CRD's served shape changes (names, scope,
//! columns, subresources, schema), so the memory kept is bounded by CRD edits, not requests.

use std::sync::RwLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextv1;
use serde_json::{Value, json};

use super::{
    Column, FieldError, NAME_COLUMN, NameRule, Normalized, ResourceDef, Strategy, Subresource,
    fields, no_fields, normalize_as, schema_of,
};
use crate::crd::{self, Served};

/// `apiextensions.k8s.io/v1` customresourcedefinitions.
pub const CUSTOMRESOURCEDEFINITIONS: ResourceDef = ResourceDef {
    group: crd::GROUP,
    version: "v1",
    kind: "CustomResourceDefinition",
    plural: "customresourcedefinitions",
    singular: "customresourcedefinition",
    namespaced: false,
    short_names: &["crd", "crds"],
    categories: &["api-extensions"],
    storage_prefix: "apiextensions.k8s.io/customresourcedefinitions",
    name_rule: NameRule::Subdomain,
    subresources: &[Subresource::Status],
    has_status: true,
    normalize: normalize_as::<apiextv1::CustomResourceDefinition>,
    defaults: crd::definition::defaults,
    validate: validate_crd,
    columns: &[NAME_COLUMN, CREATED_AT],
    cells: name_created_cells,
    field: no_fields,
    selectable_fields: &[],
    schema: schema_of::<apiextv1::CustomResourceDefinition>,
    storage_view: None,
    return_deleted_object: false,
    custom: None,
    strategy: Strategy::DEFAULT,
};

const CREATED_AT: Column = Column {
    name: "Created At",
    type_: "date",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
};

fn name_created_cells(o: &Value) -> Vec<Value> {
    vec![
        json!(fields::name(o)),
        json!(fields::str_at(o, &["metadata", "creationTimestamp"]).unwrap_or("")),
    ]
}

fn to_field_errors(causes: Vec<crd::Cause>) -> Vec<FieldError> {
    causes
        .into_iter()
        .map(|c| FieldError {
            reason: c.reason,
            field: c.field,
            message: c.message,
        })
        .collect()
}

fn validate_crd(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let builtin: Vec<&str> = super::resources::ALL
        .iter()
        .map(|d| d.group)
        .chain([CUSTOMRESOURCEDEFINITIONS.group])
        .collect();
    to_field_errors(crd::definition::validate(obj, old, &builtin))
}

/// One served custom resource version.
struct Entry {
    /// The server (CRD controller) that serves it: a process normally runs one, tests several.
    owner: u64,
    def: &'static ResourceDef,
    shape: String,
}

static OWNERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new owner id for a server's set of served entries (one per running CRD controller).
pub(crate) fn new_owner() -> u64 {
    OWNERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

static TABLE: RwLock<Vec<Entry>> = RwLock::new(Vec::new());
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Changes whenever the set of served custom resources changes (for caches of derived
/// documents such as OpenAPI).
pub fn generation() -> u64 {
    GENERATION.load(std::sync::atomic::Ordering::SeqCst)
}

/// The custom resources served now.
pub fn defs() -> Vec<&'static ResourceDef> {
    TABLE
        .read()
        .map(|t| t.iter().map(|e| e.def).collect())
        .unwrap_or_default()
}

/// A served custom resource by group, version and plural.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    TABLE
        .read()
        .ok()?
        .iter()
        .map(|e| e.def)
        .find(|d| d.group == group && d.version == version && d.plural == plural)
}

/// A served custom resource by group and kind (its first served version).
pub fn lookup_kind(group: &str, kind: &str) -> Option<&'static ResourceDef> {
    TABLE
        .read()
        .ok()?
        .iter()
        .map(|e| e.def)
        .find(|d| d.group == group && d.kind == kind)
}

/// The served version an object belongs to, by its `apiVersion` and `kind`.
fn served_of(obj: &Value) -> Option<&'static Served> {
    let av = obj.get("apiVersion")?.as_str()?;
    let kind = obj.get("kind")?.as_str()?;
    let (group, version) = av.split_once('/')?;
    TABLE
        .read()
        .ok()?
        .iter()
        .filter_map(|e| e.def.custom)
        .find(|s| s.group == group && s.version == version && s.kind == kind)
}

fn cr_normalize(obj: &Value) -> Result<Normalized, String> {
    let served = served_of(obj).ok_or("the resource is no longer served")?;
    let (object, unknown_fields) = served.normalize(obj)?;
    Ok(Normalized {
        object,
        unknown_fields,
    })
}

fn cr_defaults(obj: &mut Value) {
    if let Some(served) = served_of(obj) {
        served.defaults(obj);
    }
}

fn cr_validate(obj: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    match served_of(obj) {
        Some(served) => to_field_errors(served.validate(obj)),
        None => Vec::new(),
    }
}

fn cr_field(obj: &Value, name: &str) -> Option<String> {
    served_of(obj)?.field(obj, name)
}

fn cr_cells(obj: &Value) -> Vec<Value> {
    let mut cells = vec![json!(fields::name(obj))];
    if let Some(served) = served_of(obj) {
        cells.extend(served.cells(obj));
    }
    cells
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_strs(v: &[String]) -> &'static [&'static str] {
    Box::leak(
        v.iter()
            .map(|s| leak(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// The registry entry of a served CRD version.
fn entry_of(served: Served) -> &'static ResourceDef {
    let served: &'static Served = Box::leak(Box::new(served));
    let mut columns = vec![NAME_COLUMN];
    columns.extend(served.columns.iter().map(|c| Column {
        name: leak(&c.name),
        type_: leak(&c.type_),
        format: leak(&c.format),
        priority: c.priority,
        description: leak(&c.description),
    }));
    let mut subresources = Vec::new();
    if served.status {
        subresources.push(Subresource::Status);
    }
    if served.scale.is_some() {
        subresources.push(Subresource::Scale);
    }
    Box::leak(Box::new(ResourceDef {
        group: leak(&served.group),
        version: leak(&served.version),
        kind: leak(&served.kind),
        plural: leak(&served.plural),
        singular: leak(&served.singular),
        namespaced: served.namespaced,
        short_names: leak_strs(&served.short_names),
        categories: leak_strs(&served.categories),
        storage_prefix: leak(&format!("{}/{}", served.group, served.plural)),
        name_rule: NameRule::Subdomain,
        subresources: Box::leak(subresources.into_boxed_slice()),
        has_status: served.status,
        normalize: cr_normalize,
        defaults: cr_defaults,
        validate: cr_validate,
        columns: Box::leak(columns.into_boxed_slice()),
        cells: cr_cells,
        field: cr_field,
        selectable_fields: leak_strs(
            &served
                .selectable
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>(),
        ),
        schema: schema_of::<Value>,
        storage_view: None,
        return_deleted_object: false,
        custom: Some(served),
        strategy: Strategy {
            tracks_generation: true,
            ..Strategy::DEFAULT
        },
    }))
}

/// Makes `owner`'s served set exactly `wanted` (the served versions of its established CRDs),
/// keeping entries whose shape did not change.
pub(crate) fn install(owner: u64, wanted: Vec<Served>) {
    let Ok(mut all) = TABLE.write() else { return };
    let (mut table, others): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut *all)
        .into_iter()
        .partition(|e| e.owner == owner);
    let mut next = others;
    let mut changed = wanted.len() != table.len();
    for served in wanted {
        let shape = format!(
            "{}|{}",
            crd::definition::shape_key(&served),
            served.openapi_schema
        );
        match table.iter().position(|e| e.shape == shape) {
            Some(i) => next.push(table.swap_remove(i)),
            None => {
                changed = true;
                next.push(Entry {
                    owner,
                    def: entry_of(served),
                    shape,
                });
            }
        }
    }
    changed |= !table.is_empty();
    *all = next;
    if changed {
        GENERATION.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The served entry of a CRD's storage version (objects are deleted through it).
pub(crate) fn lookup_storage_def(group: &str, plural: &str) -> Option<&'static ResourceDef> {
    TABLE
        .read()
        .ok()?
        .iter()
        .map(|e| e.def)
        .find(|d| {
            d.group == group
                && d.plural == plural
                && d.custom.is_some_and(|c| c.version == c.storage_version)
        })
        .or_else(|| {
            TABLE
                .read()
                .ok()?
                .iter()
                .map(|e| e.def)
                .find(|d| d.group == group && d.plural == plural)
        })
}
