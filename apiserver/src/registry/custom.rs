//! Registry entries that come and go at run time: the custom resources of established CRDs
//! (`apiextensions.k8s.io/v1`), and the CRD controller that keeps them in step with the stored
//! CRDs (status conditions, served entries, deleting a CRD's objects before the CRD).
//!
//! Entries are process-wide like the built-in registry. Each served CRD version becomes a
//! leaked `&'static ResourceDef` (the generic handlers, caches and requests hold plain
//! references); a new one is leaked only when a CRD's served shape changes (names, scope,
//! columns, subresources, schema), so the memory kept is bounded by CRD edits, not requests.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextv1;
use serde_json::{Value, json};

use super::{
    Column, FieldError, NAME_COLUMN, NameRule, Normalized, ResourceDef, Subresource, fields,
    no_fields, normalize_as, schema_of,
};
use crate::crd::{self, Served};
use crate::writer::{ObjectWriter, UpdateScope};

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
    let builtin: Vec<&str> = super::all().iter().map(|d| d.group).collect();
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

/// `obj` with `apiVersion` set to `<group>/<version>` (CRD conversion `None`).
pub fn with_api_version(mut obj: Value, group: &str, version: &str) -> Value {
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(format!("{group}/{version}")));
    }
    obj
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
    }))
}

/// Makes `owner`'s served set exactly `wanted` (the served versions of its established CRDs),
/// keeping entries whose shape did not change.
fn install(owner: u64, wanted: Vec<Served>) {
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

/// Starts the CRD controller of a server: it follows the stored CRDs (through their watch
/// cache), writes their status, serves their resources and, when a CRD is deleted, deletes its
/// objects before removing the cleanup finalizer.
pub fn spawn(state: &Arc<crate::state::AppState>) {
    let weak = Arc::downgrade(state);
    let owner = OWNERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::spawn(async move {
        run(weak, owner).await;
        install(owner, Vec::new());
    });
}

async fn run(state: Weak<crate::state::AppState>, owner: u64) {
    loop {
        let Some(s) = state.upgrade() else { return };
        let Ok(cacher) = s.cacher(&CUSTOMRESOURCEDEFINITIONS).map(Arc::clone) else {
            return;
        };
        drop(s);
        // The cache's first list does not wake watchers: start from a cache that has it.
        if cacher.wait_fresh().await.is_err() {
            continue;
        }
        let mut rx = match cacher.watch_from(None).await {
            Ok(crate::cacher::WatchStart::Snapshot(_, _, rx))
            | Ok(crate::cacher::WatchStart::Replay(_, rx)) => rx,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Level-triggered: every wake-up reconciles every CRD; a failed write retries soon.
        loop {
            let Some(s) = state.upgrade() else { return };
            let settled = reconcile_all(&s, &cacher, owner).await;
            drop(s);
            // Lagged still means "something changed"; only a closed channel ends the watch.
            let wake = async {
                !matches!(
                    rx.recv().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed)
                )
            };
            let open = if settled {
                wake.await
            } else {
                tokio::time::timeout(Duration::from_millis(300), wake)
                    .await
                    .unwrap_or(true)
            };
            if !open {
                break;
            }
            // Coalesce bursts of events.
            while rx.try_recv().is_ok() {}
        }
    }
}

/// One pass over all CRDs; false when something must be retried.
async fn reconcile_all(
    state: &Arc<crate::state::AppState>,
    cacher: &Arc<crate::cacher::Cacher>,
    owner: u64,
) -> bool {
    let listed = cacher.list("", None, 0, &|_| true).await;
    let mut crds: Vec<(Value, crate::storage::Revision)> = listed
        .items
        .iter()
        .filter_map(|o| {
            serde_json::from_slice::<Value>(&o.raw)
                .ok()
                .map(|v| (v, o.rv))
        })
        .collect();
    // CRDs whose names were accepted first, then the oldest: names once accepted are kept,
    // and among new claimants the first created wins.
    crds.sort_by_key(|(v, _)| {
        (
            !crd::definition::is_established(v),
            fields::str_at(v, &["metadata", "creationTimestamp"])
                .unwrap_or("")
                .to_string(),
            fields::name(v).to_string(),
        )
    });
    let mut settled = true;
    let mut accepted: Vec<Value> = Vec::new();
    let mut wanted = Vec::new();
    let now = now_rfc3339();
    let mut deleting = Vec::new();
    // The routes of every established CRD are installed before its `Established` condition is
    // written: a client that waits for the condition (kubectl wait, kube-rs await_condition)
    // must find the resource served.
    let mut computed = Vec::new();
    for (crd_obj, rv) in &crds {
        let status = crd::definition::status(crd_obj, &accepted, &now);
        let mut with_status = crd_obj.clone();
        if let Value::Object(m) = &mut with_status {
            m.insert("status".into(), status.clone());
        }
        if crd::definition::is_established(&with_status) {
            accepted.push(with_status.clone());
            wanted.extend(Served::all_from(&with_status));
        }
        computed.push((crd_obj, *rv, status, with_status));
    }
    install(owner, wanted);
    for (crd_obj, rv, status, new) in computed {
        let mut current = crd_obj.clone();
        let mut current_rv = rv;
        if crd_obj.get("status") != Some(&status) {
            match ObjectWriter::update_object(
                state.as_ref(),
                &CUSTOMRESOURCEDEFINITIONS,
                None,
                fields::name(crd_obj),
                crd_obj.clone(),
                rv,
                new,
                UpdateScope::Status,
            )
            .await
            {
                Ok(obj) => {
                    current_rv = fields::str_at(&obj, &["metadata", "resourceVersion"])
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(current_rv);
                    current = obj;
                }
                Err(e) => {
                    tracing::debug!(crd = fields::name(crd_obj), error = %e, "CRD status update; retrying");
                    settled = false;
                }
            }
        }
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            deleting.push((current, current_rv));
        }
    }
    for (crd_obj, rv) in &deleting {
        if !finish_deletion(state, crd_obj, *rv).await {
            settled = false;
        }
    }
    settled
}

fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// Deletes the objects of a CRD being deleted, then removes its cleanup finalizer (storage then
/// removes the CRD, and the next pass stops serving it). False when something must be retried.
async fn finish_deletion(
    state: &Arc<crate::state::AppState>,
    crd_obj: &Value,
    rv: crate::storage::Revision,
) -> bool {
    let finalizers: Vec<Value> = crd_obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == crd::CLEANUP_FINALIZER) {
        return true;
    }
    let group = fields::str_at(crd_obj, &["spec", "group"]).unwrap_or("");
    let plural = fields::str_at(crd_obj, &["spec", "names", "plural"]).unwrap_or("");
    if !group.is_empty() && !plural.is_empty() {
        let def = lookup_storage_def(group, plural);
        let prefix = format!("/registry/{group}/{plural}/");
        let page = match state
            .storage
            .list(&prefix, crate::storage::ListOptions::default())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "listing custom resources to delete");
                return false;
            }
        };
        if !page.items.is_empty() {
            for kv in page.items {
                let obj: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                let deleted = match def {
                    Some(def) => {
                        let ns = fields::namespace(&obj);
                        let ns = (!ns.is_empty()).then_some(ns);
                        let writer: &dyn ObjectWriter = state.as_ref();
                        writer
                            .delete_in_background(def, ns, fields::name(&obj))
                            .await
                            .map_err(|e| e.to_string())
                    }
                    None => state
                        .storage
                        .delete(&kv.key, kv.mod_revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = deleted {
                    tracing::debug!(key = %kv.key, error = %e, "deleting custom resource");
                }
            }
            // Objects with finalizers of their own stay until those are removed.
            return false;
        }
    }
    let mut new = crd_obj.clone();
    let remaining: Vec<Value> = finalizers
        .into_iter()
        .filter(|f| f != crd::CLEANUP_FINALIZER)
        .collect();
    fields::ensure_object(&mut new, &["metadata"]).insert("finalizers".into(), json!(remaining));
    ObjectWriter::update_object(
        state.as_ref(),
        &CUSTOMRESOURCEDEFINITIONS,
        None,
        fields::name(crd_obj),
        crd_obj.clone(),
        rv,
        new,
        UpdateScope::Main,
    )
    .await
    .is_ok()
}

/// The served entry of a CRD's storage version (objects are deleted through it).
fn lookup_storage_def(group: &str, plural: &str) -> Option<&'static ResourceDef> {
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
