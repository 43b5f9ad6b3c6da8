//! REST handlers for resources: get, list, watch, create, update, patch, delete and the
//! status/scale/binding subresources. Every write goes through one pipeline: decode → metadata
//! → defaults → validation → admission → guarded storage write.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use lotse_core::names;
use serde_json::{Value, json};

use super::table;
use crate::error::{ApiError, ApiResult};
use crate::registry::fields::set_rv;
use crate::registry::{FieldError, NameRule, ResourceDef, Subresource, fields, object_key};
use crate::request::{self, FieldValidation, Query, ResourcePath, ResponseFormat};
use crate::state::AppState;
use crate::storage::{Revision, StorageError};
use crate::validation;
use crate::write::patch;
use crate::write::{ObjectWriter, UpdateScope};

/// A JSON response with the given status.
pub fn json_response(code: StatusCode, mut body: Vec<u8>) -> Response {
    // Kubernetes' JSON serializer ends every document with a newline; clients compare bytes.
    if body.last().is_some_and(|b| *b != b'\n') {
        body.push(b'\n');
    }
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn value_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut ordered = v.clone();
    crate::protobuf::go_field_order(&mut ordered);
    let mut r = json_response(code, serde_json::to_vec(&ordered).unwrap_or_default());
    add_warnings(&mut r, warnings);
    r
}

/// Adds `Warning: 299 - "..."` headers.
pub fn add_warnings(r: &mut Response, warnings: &[String]) {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(h) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
}

/// Reads the current object from storage with its resourceVersion set.
pub async fn get_current(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<(Value, Revision)> {
    state.reader.stored(def, ns, name).await
}

fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// The request context every handler gets.
pub struct Ctx<'a> {
    /// Shared server state.
    pub state: &'a Arc<AppState>,
    /// The resource path.
    pub rp: &'a ResourcePath,
    /// Query parameters.
    pub query: &'a Query,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The authenticated user.
    pub user: &'a crate::auth::UserInfo,
}

/// The field manager a write is recorded under: `?fieldManager=`, else the first word of the
/// User-Agent (`kubectl/v1.33.0 (linux/amd64) ...` → `kubectl`), as Kubernetes derives it.
pub fn field_manager<'a>(query: &'a Query, headers: &'a HeaderMap) -> Option<&'a str> {
    query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .or_else(|| {
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .map(str::trim)
                .filter(|m| !m.is_empty())
        })
}

pub(crate) async fn get(ctx: &Ctx<'_>, name: &str) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let (obj, _) = get_current(ctx.state, def, ctx.rp.namespace.as_deref(), name).await?;
    match request::response_format(header_str(ctx.headers, header::ACCEPT)) {
        ResponseFormat::Table => {
            let t = table::build(def, std::slice::from_ref(&obj), ctx.query, None, None, true);
            Ok(value_response(StatusCode::OK, &t, &[]))
        }
        ResponseFormat::Metadata => Ok(value_response(
            StatusCode::OK,
            &table::partial_metadata(&obj),
            &[],
        )),
        ResponseFormat::Json => Ok(value_response(StatusCode::OK, &obj, &[])),
    }
}

/// A header as &str.
pub fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Decodes a body into the resource's typed schema, applying `fieldValidation`.
pub fn decode_typed(
    def: &ResourceDef,
    mut obj: Value,
    fv: FieldValidation,
    warnings: &mut Vec<String>,
) -> ApiResult<Value> {
    // apiVersion/kind: fill when absent, reject a mismatch.
    let want_av = def.api_version();
    let av = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if (!av.is_empty() && av != want_av) || (!kind.is_empty() && kind != def.kind) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({want_av})"
        ))
        .with_kind_mismatch(&kind, def));
    }
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), Value::String(want_av));
        m.insert("kind".into(), Value::String(def.kind.to_string()));
    }
    let prefix = format!(
        "{} in version \"{}\" cannot be handled as a {}",
        def.kind, def.version, def.kind
    );
    let n = (def.normalize)(&obj).map_err(|e| ApiError::bad_request(format!("{prefix}: {e}")))?;
    if !n.unknown_fields.is_empty() {
        let msgs: Vec<String> = n
            .unknown_fields
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match fv {
            FieldValidation::Strict => {
                return Err(ApiError::bad_request(format!(
                    "{prefix}: strict decoding error: {}",
                    msgs.join(", ")
                )));
            }
            FieldValidation::Warn => warnings.extend(msgs),
            FieldValidation::Ignore => {}
        }
    }
    Ok(n.object)
}

impl ApiError {
    fn with_kind_mismatch(self, kind: &str, def: &ResourceDef) -> Self {
        if !kind.is_empty() && kind != def.kind {
            ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                def.kind
            ))
        } else {
            self
        }
    }
}

/// Custom resources have no protobuf encoding: Kubernetes answers such a body with 415.
pub fn reject_protobuf_for_custom(def: &ResourceDef, headers: &HeaderMap) -> ApiResult<()> {
    let mt = request::media_type(header_str(headers, header::CONTENT_TYPE));
    if def.custom.is_some() && mt == "application/vnd.kubernetes.protobuf" {
        return Err(ApiError::unsupported_media_type(
            &mt,
            &["application/json", "application/yaml"],
        ));
    }
    Ok(())
}

const GENERATE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| GENERATE_ALPHABET[rng.random_range(0..GENERATE_ALPHABET.len())] as char)
        .collect()
}

/// Validates `metadata` (name rule, namespace, labels, annotations) for create or update.
pub fn validate_metadata(def: &ResourceDef, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = fields::name(obj);
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let problems = match def.name_rule {
            NameRule::Subdomain => names::dns1123_subdomain(name),
            NameRule::Label => names::dns1123_label(name),
            NameRule::Label1035 => names::dns1035_label(name),
            NameRule::PathSegment => validation::path_segment(name),
        };
        for p in problems {
            errs.push(FieldError::invalid(
                "metadata.name",
                &Value::String(name.to_string()),
                &p,
            ));
        }
    }
    if def.namespaced {
        let ns = fields::namespace(obj);
        if ns.is_empty() {
            errs.push(FieldError::required("metadata.namespace", ""));
        }
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for p in validation::qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    &Value::String(k.clone()),
                    &p,
                ));
            }
            let s = v.as_str().unwrap_or_default();
            for p in validation::label_value(s) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    &Value::String(s.to_string()),
                    &p,
                ));
            }
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map(str::len).unwrap_or(0))
            .sum();
        if total > 256 * 1024 {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "metadata.annotations: Too long: may not be more than 262144 bytes"
                    .to_string(),
            });
        }
        for k in ann.keys() {
            for p in validation::qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    &Value::String(k.clone()),
                    &p,
                ));
            }
        }
    }
    errs
}

/// Checks that a namespaced object's namespace exists and is not terminating.
pub async fn admit_namespace(
    state: &AppState,
    def: &ResourceDef,
    ns: &str,
    name: &str,
) -> ApiResult<()> {
    let ns_def = &crate::registry::resources::NAMESPACES;
    // The namespace cache answers almost always; a miss (e.g. a namespace created a moment ago)
    // falls back to a live read, as Kubernetes' lifecycle admission does.
    let cached = match state.cacher(ns_def) {
        Ok(c) => c.get(&object_key(ns_def, None, ns)).await,
        Err(_) => None,
    };
    let lookup = match cached.and_then(|o| serde_json::from_slice::<Value>(&o.raw).ok()) {
        Some(v) => Ok((v, 0)),
        None => get_current(state, ns_def, None, ns).await,
    };
    match lookup {
        Ok((nsobj, _)) => {
            let terminating = nsobj.pointer("/metadata/deletionTimestamp").is_some()
                || nsobj.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating");
            if terminating {
                let why = format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                );
                let mut e = ApiError::forbidden(def, name, &why);
                if let Some(Value::Object(d)) = &mut e.details {
                    d.insert(
                        "causes".into(),
                        json!([{"reason": "NamespaceTerminating", "message": why, "field": "metadata.namespace"}]),
                    );
                }
                return Err(e);
            }
            Ok(())
        }
        Err(e) if e.code == 404 => Err(ApiError::not_found_gr("", "namespaces", ns)),
        Err(e) => Err(e),
    }
}

/// Status a resource gets on create (Kubernetes' PrepareForCreate).
pub(crate) async fn create(ctx: &Ctx<'_>, body: Bytes) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let fv = FieldValidation::from_query(ctx.query)?;
    let dry_run = ctx.query.dry_run()?;
    reject_protobuf_for_custom(def, ctx.headers)?;
    let raw = request::decode_object(header_str(ctx.headers, header::CONTENT_TYPE), &body)?;
    let mut warnings = Vec::new();
    let obj = decode_typed(def, raw, fv, &mut warnings)?;
    let (obj, _) = create_object(
        ctx.state,
        def,
        ctx.rp.namespace.as_deref(),
        obj,
        dry_run,
        field_manager(ctx.query, ctx.headers),
        "Update",
    )
    .await?;
    Ok(value_response(StatusCode::CREATED, &obj, &warnings))
}

/// Creates a decoded object: metadata, defaults, validation, admission, storage.
pub async fn create_object(
    state: &AppState,
    def: &'static ResourceDef,
    url_ns: Option<&str>,
    mut obj: Value,
    dry_run: bool,
    field_manager: Option<&str>,
    operation: &str,
) -> ApiResult<(Value, Revision)> {
    let meta = fields::ensure_object(&mut obj, &["metadata"]);
    // namespace
    if def.namespaced {
        let body_ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match url_ns {
            Some(ns) => {
                if !body_ns.is_empty() && body_ns != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                meta.insert("namespace".into(), Value::String(ns.to_string()));
            }
            None => return Err(ApiError::method_not_allowed()),
        }
    } else {
        meta.remove("namespace");
    }
    // name / generateName
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty()
        && let Some(gen_name) = meta.get("generateName").and_then(Value::as_str)
        && !gen_name.is_empty()
    {
        let base: String = gen_name.chars().take(58).collect();
        meta.insert(
            "name".into(),
            Value::String(format!("{base}{}", generate_suffix())),
        );
    }
    // server-set metadata
    meta.insert(
        "uid".into(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(k);
    }
    if def.strategy.tracks_generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    meta.remove("managedFields");
    // An applier owns what it applied; any other creator owns the defaulted object.
    let apply_entry = field_manager
        .filter(|_| operation == "Apply")
        .map(|mgr| crate::write::managed::entry(mgr, operation, def, &obj));
    if def.has_status {
        (def.strategy.prepare_for_create)(&mut obj);
    }
    (def.defaults)(&mut obj);
    if let Some(mgr) = field_manager {
        let fm =
            apply_entry.unwrap_or_else(|| crate::write::managed::entry(mgr, operation, def, &obj));
        fields::ensure_object(&mut obj, &["metadata"]).insert("managedFields".into(), json!([fm]));
    }
    let name = fields::name(&obj).to_string();
    let mut errs = validate_metadata(def, &obj);
    errs.extend((def.validate)(&obj, None));
    if !errs.is_empty() {
        return Err(ApiError::invalid(def, &name, &errs));
    }
    if def.namespaced {
        admit_namespace(state, def, fields::namespace(&obj), &name).await?;
    }
    state
        .admission
        .admit(
            state.admission_handles(state),
            def,
            crate::admission::Operation::Create,
            &mut obj,
            None,
            dry_run,
        )
        .await?;
    let _alloc_guard = if def.strategy.allocates_service_addresses {
        Some(
            state
                .alloc
                .allocate(&state.reader, def, &mut obj, None)
                .await?,
        )
    } else {
        None
    };
    let key = object_key(def, url_ns, &name);
    if dry_run {
        if state
            .storage
            .get(&key)
            .await
            .map_err(|e| ApiError::from_storage(e, def, &name))?
            .is_some()
        {
            return Err(ApiError::already_exists(def, &name));
        }
        return Ok((obj, 0));
    }
    let bytes = crate::protobuf::encode_for_storage(def, &obj)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let rev = state
        .storage
        .create(&key, bytes)
        .await
        .map_err(|e| ApiError::from_storage(e, def, &name))?;
    set_rv(&mut obj, rev);
    Ok((obj, rev))
}

pub(crate) async fn update(
    ctx: &Ctx<'_>,
    name: &str,
    body: Bytes,
    scope: Option<UpdateScope>,
) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let fv = FieldValidation::from_query(ctx.query)?;
    let dry_run = ctx.query.dry_run()?;
    reject_protobuf_for_custom(def, ctx.headers)?;
    let raw = request::decode_object(header_str(ctx.headers, header::CONTENT_TYPE), &body)?;
    let mut warnings = Vec::new();
    let new = decode_typed(def, raw, fv, &mut warnings)?;
    let body_name = fields::name(&new);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if def.namespaced {
        let body_ns = fields::namespace(&new);
        if !body_ns.is_empty() && Some(body_ns) != ctx.rp.namespace.as_deref() {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let precondition = fields::str_at(&new, &["metadata", "resourceVersion"])
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Revision>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))
        })
        .transpose()?;
    let (old, old_rv) = get_current(ctx.state, def, ctx.rp.namespace.as_deref(), name).await?;
    if let Some(p) = precondition
        && p != old_rv
    {
        return Err(ApiError::conflict(def, name));
    }
    let scope = scope.unwrap_or(UpdateScope::Main);
    let (obj, code) = write_update(
        ctx.state,
        def,
        ctx.rp.namespace.as_deref(),
        name,
        old,
        old_rv,
        new,
        scope,
        dry_run,
        field_manager(ctx.query, ctx.headers),
        "Update",
    )
    .await?;
    Ok(value_response(code, &obj, &warnings))
}

/// Merges what the caller may change into the old object, bumps generation, defaults,
/// validates, and writes guarded by `old_rv`. Returns the stored object.
#[allow(clippy::too_many_arguments)]
pub async fn write_update(
    state: &AppState,
    def: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    old: Value,
    old_rv: Revision,
    mut new: Value,
    scope: UpdateScope,
    dry_run: bool,
    field_manager: Option<&str>,
    operation: &str,
) -> ApiResult<(Value, StatusCode)> {
    // Fields the caller cannot change.
    {
        let old_meta = old.get("metadata").cloned().unwrap_or(Value::Null);
        let meta = fields::ensure_object(&mut new, &["metadata"]);
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(k) {
                Some(v) => {
                    meta.insert(k.into(), v.clone());
                }
                None => {
                    meta.remove(k);
                }
            }
        }
        meta.remove("resourceVersion");
        if scope != UpdateScope::Main {
            for k in ["labels", "annotations", "finalizers", "ownerReferences"] {
                match old_meta.get(k) {
                    Some(v) => {
                        meta.insert(k.into(), v.clone());
                    }
                    None => {
                        meta.remove(k);
                    }
                }
            }
        }
    }
    if let Value::Object(m) = &mut new {
        m.insert("apiVersion".into(), Value::String(def.api_version()));
        m.insert("kind".into(), Value::String(def.kind.to_string()));
    }
    if def.has_status {
        match scope {
            UpdateScope::Main => {
                // The main resource never changes status (except nodes/namespaces? no: Kubernetes
                // resets status for every resource with a status subresource).
                if let Value::Object(m) = &mut new {
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
            }
            UpdateScope::Status | UpdateScope::Approval => {
                // Everything but status (and the few metadata fields above) comes from the old object.
                let status = new.get("status").cloned();
                let meta = new.get("metadata").cloned();
                new = old.clone();
                if let Value::Object(m) = &mut new {
                    match status {
                        Some(s) => m.insert("status".into(), s),
                        None => m.remove("status"),
                    };
                    if let Some(meta) = meta {
                        m.insert("metadata".into(), meta);
                    }
                }
                fields::ensure_object(&mut new, &["metadata"]).remove("resourceVersion");
            }
            // The resource's strategy keeps everything but the ephemeral containers.
            UpdateScope::EphemeralContainers => {}
        }
    }
    (def.strategy.prepare_for_update)(&old, &mut new, scope);
    if def.has_subresource(Subresource::Approval) && scope == UpdateScope::Status {
        crate::endpoints::csr::csr_status_update(state.authz(), def, name, &old, &mut new).await?
    }
    (def.defaults)(&mut new);
    if def.strategy.tracks_generation
        && scope == UpdateScope::Main
        && new.get("spec") != old.get("spec")
    {
        let g = fields::i64_at(&old, &["metadata", "generation"]).unwrap_or(0) + 1;
        fields::ensure_object(&mut new, &["metadata"]).insert("generation".into(), json!(g));
    }
    let mut errs = validate_metadata(def, &new);
    errs.extend((def.validate)(&new, Some(&old)));
    if !errs.is_empty() {
        return Err(ApiError::invalid(def, name, &errs));
    }
    state
        .admission
        .admit(
            state.admission_handles(state),
            def,
            crate::admission::Operation::Update,
            &mut new,
            Some(&old),
            dry_run,
        )
        .await?;
    let _alloc_guard = if def.strategy.allocates_service_addresses {
        Some(
            state
                .alloc
                .allocate(&state.reader, def, &mut new, Some(&old))
                .await?,
        )
    } else {
        None
    };
    if let Some(mgr) = field_manager {
        let subresource = match scope {
            UpdateScope::Main => None,
            UpdateScope::Status => Some("status"),
            UpdateScope::Approval => Some("approval"),
            UpdateScope::EphemeralContainers => Some("ephemeralcontainers"),
        };
        crate::write::managed::record_for(&mut new, &old, mgr, operation, subresource, def);
    } else if let Some(mf) = old.pointer("/metadata/managedFields").cloned()
        && new.pointer("/metadata/managedFields").is_none()
    {
        fields::ensure_object(&mut new, &["metadata"]).insert("managedFields".into(), mf);
    }
    let mut old_cmp = old.clone();
    fields::ensure_object(&mut old_cmp, &["metadata"]).remove("resourceVersion");
    let key = object_key(def, ns, name);
    // No-op update: nothing is written and no watch event is produced — unless the stored form
    // is stale (encrypted with an older key), which a rewrite re-encrypts.
    if strip_managed_time(&new) == strip_managed_time(&old_cmp)
        && !state.storage.stale(&key).await.unwrap_or(false)
    {
        return Ok((old, StatusCode::OK));
    }
    // An object being deleted whose last finalizer is gone is removed now.
    let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
    let finalizers_empty = new
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
        && !(def.strategy.finalizers_pending)(&new);
    if dry_run {
        set_rv(&mut new, old_rv);
        return Ok((new, StatusCode::OK));
    }
    if deleting && finalizers_empty && !is_graceful_pending(def, &new) {
        let (rev, _) = state
            .storage
            .delete(&key, old_rv)
            .await
            .map_err(|e| ApiError::from_storage(e, def, name))?;
        set_rv(&mut new, rev);
        return Ok((new, StatusCode::OK));
    }
    let bytes = crate::protobuf::encode_for_storage(def, &new)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let rev = state
        .storage
        .update(&key, old_rv, bytes)
        .await
        .map_err(|e| ApiError::from_storage(e, def, name))?;
    set_rv(&mut new, rev);
    Ok((new, StatusCode::OK))
}

/// The write pipeline as the handle admission and background loops write through.
#[async_trait::async_trait]
impl ObjectWriter for AppState {
    async fn get_stored(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, Revision)> {
        get_current(self, def, namespace, name).await
    }

    async fn create_object(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        obj: Value,
    ) -> ApiResult<Value> {
        let (obj, _) = create_object(self, def, namespace, obj, false, None, "Update").await?;
        Ok(obj)
    }

    async fn update_object(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        name: &str,
        old: Value,
        old_rv: Revision,
        new: Value,
        scope: UpdateScope,
    ) -> ApiResult<Value> {
        let (obj, _) = write_update(
            self, def, namespace, name, old, old_rv, new, scope, false, None, "Update",
        )
        .await?;
        Ok(obj)
    }

    async fn delete_in_background(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<()> {
        let opts = DeleteOpts {
            propagation: Some("Background".into()),
            ..Default::default()
        };
        delete_object(self, def, namespace, name, &opts).await?;
        Ok(())
    }
}

fn strip_managed_time(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(Value::Array(a)) = v.pointer_mut("/metadata/managedFields") {
        for e in a {
            if let Value::Object(m) = e {
                m.remove("time");
            }
        }
    }
    v
}

/// Objects with a pending graceful deletion (pods) stay until the kubelet confirms (grace 0).
fn is_graceful_pending(def: &ResourceDef, obj: &Value) -> bool {
    def.strategy.graceful_delete.is_some()
        && fields::i64_at(obj, &["metadata", "deletionGracePeriodSeconds"]).unwrap_or(0) > 0
}

/// PATCH on the main resource or a subresource scope; retries on conflicts unless the patch
/// carries a resourceVersion precondition (Kubernetes' GuaranteedUpdate).
pub async fn patch(
    ctx: &Ctx<'_>,
    name: &str,
    body: Bytes,
    scope: Option<UpdateScope>,
) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let pt = patch::PatchType::from_content_type(header_str(ctx.headers, header::CONTENT_TYPE))?;
    if def.custom.is_some() && pt == patch::PatchType::StrategicMerge {
        // Custom resources have no strategic merge keys; kubectl falls back to a merge patch.
        return Err(ApiError::unsupported_media_type(
            "application/strategic-merge-patch+json",
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
            ],
        ));
    }
    let fv = FieldValidation::from_query(ctx.query)?;
    let dry_run = ctx.query.dry_run()?;
    let patch_doc = patch::parse_patch(pt, &body)?;
    let ns = ctx.rp.namespace.as_deref();
    let scope = scope.unwrap_or(UpdateScope::Main);
    let field_manager = ctx.query.get("fieldManager");
    let recorded_manager = self::field_manager(ctx.query, ctx.headers);
    if pt == patch::PatchType::Apply && field_manager.is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = get_current(ctx.state, def, ns, name).await;
        let mut warnings = Vec::new();
        let (old, old_rv) = match current {
            Ok(c) => c,
            Err(e)
                if e.code == 404 && pt == patch::PatchType::Apply && scope == UpdateScope::Main =>
            {
                // Server-side apply creates missing objects.
                let obj = decode_typed(def, patch_doc.clone(), fv, &mut warnings)?;
                let (obj, _) = create_object(
                    ctx.state,
                    def,
                    ns,
                    with_name(obj, name),
                    dry_run,
                    field_manager,
                    "Apply",
                )
                .await?;
                return Ok(value_response(StatusCode::CREATED, &obj, &warnings));
            }
            Err(e) => return Err(e),
        };
        let precondition =
            fields::str_at(&patch_doc, &["metadata", "resourceVersion"]).map(str::to_string);
        if let Some(p) = &precondition
            && p != &old_rv.to_string()
        {
            return Err(ApiError::conflict(def, name));
        }
        let patched = if pt == patch::PatchType::Apply && scope == UpdateScope::Status {
            // Server-side apply through `/status` (controllers reporting status): the applied
            // status is merged into the live one; the write records it under the status
            // subresource. (Per-field status conflicts between managers are not detected.)
            let mut out = old.clone();
            if let (Value::Object(o), Some(status)) = (&mut out, patch_doc.get("status")) {
                let mut merged = o.get("status").cloned().unwrap_or_else(|| json!({}));
                json_patch::merge(&mut merged, status);
                o.insert("status".into(), merged);
            }
            out
        } else if pt == patch::PatchType::Apply {
            crate::write::managed::apply(
                def,
                &old,
                &patch_doc,
                field_manager.unwrap_or_default(),
                ctx.query.flag("force"),
            )?
        } else {
            patch::apply(pt, def, &old, &patch_doc)?
        };
        let new = decode_typed(def, patched, fv, &mut warnings)?;
        let op = if pt == patch::PatchType::Apply {
            "Apply"
        } else {
            "Update"
        };
        match write_update(
            ctx.state,
            def,
            ns,
            name,
            old,
            old_rv,
            new,
            scope,
            dry_run,
            recorded_manager,
            op,
        )
        .await
        {
            Ok((obj, code)) => return Ok(value_response(code, &obj, &warnings)),
            Err(e)
                if e.code == 409
                    && e.reason == "Conflict"
                    && precondition.is_none()
                    && attempts < 10 =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

fn with_name(mut obj: Value, name: &str) -> Value {
    let meta = fields::ensure_object(&mut obj, &["metadata"]);
    if meta
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        meta.insert("name".into(), Value::String(name.to_string()));
    }
    obj
}

/// Options of a DELETE, from the body (`DeleteOptions`) and the query.
#[derive(Debug, Default)]
pub struct DeleteOpts {
    /// `propagationPolicy`.
    pub propagation: Option<String>,
    /// `gracePeriodSeconds`.
    pub grace: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub rv: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// Parses `DeleteOptions` from a DELETE body (or an eviction's `deleteOptions`) and the query.
pub fn delete_opts(query: &Query, body: &Bytes) -> ApiResult<DeleteOpts> {
    let mut o = DeleteOpts {
        propagation: query.get("propagationPolicy").map(str::to_string),
        grace: query.int("gracePeriodSeconds")?,
        dry_run: query.dry_run()?,
        ..Default::default()
    };
    if query.get("orphanDependents") == Some("true") {
        o.propagation = Some("Orphan".into());
    }
    if !body.is_empty() {
        let b: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        if let Some(p) = b.get("propagationPolicy").and_then(Value::as_str) {
            o.propagation = Some(p.to_string());
        }
        if b.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            o.propagation = Some("Orphan".into());
        }
        if let Some(g) = b.get("gracePeriodSeconds").and_then(Value::as_i64) {
            o.grace = Some(g);
        }
        o.uid = b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        o.rv = b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(Value::Array(dr)) = b.get("dryRun") {
            o.dry_run |= dr.iter().any(|v| v == "All");
        }
    }
    if let Some(p) = &o.propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            ),
        ));
    }
    if let Some(g) = o.grace
        && g < 0
    {
        o.grace = Some(0);
    }
    Ok(o)
}

pub(crate) async fn delete(ctx: &Ctx<'_>, name: &str, body: Bytes) -> ApiResult<Response> {
    let opts = delete_opts(ctx.query, &body)?;
    let (obj, code) = delete_object(
        ctx.state,
        ctx.rp.def,
        ctx.rp.namespace.as_deref(),
        name,
        &opts,
    )
    .await?;
    Ok(value_response(code, &obj, &[]))
}

/// Deletes one object honouring finalizers, graceful deletion and propagation policy. Returns
/// the body to send (the object, or a Success Status) and the HTTP code.
pub async fn delete_object(
    state: &AppState,
    def: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> ApiResult<(Value, StatusCode)> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (mut obj, rv) = get_current(state, def, ns, name).await?;
        if let Some(uid) = &opts.uid
            && fields::str_at(&obj, &["metadata", "uid"]) != Some(uid.as_str())
        {
            return Err(ApiError::conflict_msg(
                def,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    fields::str_at(&obj, &["metadata", "uid"]).unwrap_or("")
                ),
            ));
        }
        if let Some(prv) = &opts.rv
            && prv != &rv.to_string()
        {
            return Err(ApiError::conflict_msg(
                def,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {rv}"
                ),
            ));
        }
        let mut finalizers: Vec<String> = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        match opts.propagation.as_deref() {
            Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                finalizers.retain(|f| f != "orphan");
                finalizers.push("foregroundDeletion".into());
            }
            Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
                finalizers.retain(|f| f != "foregroundDeletion");
                finalizers.push("orphan".into());
            }
            Some("Background") => finalizers.retain(|f| f != "orphan" && f != "foregroundDeletion"),
            _ => {}
        }
        // Graceful deletion (pods bound to a node: the kubelet finishes it).
        let default_grace = def.strategy.graceful_delete.and_then(|g| g(&obj));
        let graceful = default_grace.is_some();
        let grace = default_grace.map_or(0, |d| opts.grace.unwrap_or(d));
        let already_deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        if finalizers.is_empty() && grace == 0 && !(def.strategy.finalizers_pending)(&obj) {
            if opts.dry_run {
                return Ok((obj, StatusCode::OK));
            }
            let key = object_key(def, ns, name);
            match state.storage.delete(&key, rv).await {
                Ok((drev, _)) => {
                    set_rv(&mut obj, drev);
                    let uid = fields::str_at(&obj, &["metadata", "uid"])
                        .unwrap_or("")
                        .to_string();
                    if def.return_deleted_object {
                        return Ok((obj, StatusCode::OK));
                    }
                    // metav1.StatusDetails omits an empty group (core resources).
                    let mut details =
                        json!({"name": name, "group": def.group, "kind": def.plural, "uid": uid});
                    if def.group.is_empty()
                        && let Some(d) = details.as_object_mut()
                    {
                        d.shift_remove("group");
                    }
                    let status = json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "details": details,
                    });
                    return Ok((status, StatusCode::OK));
                }
                Err(StorageError::Conflict { .. }) if attempts < 10 => continue,
                Err(e) => return Err(ApiError::from_storage(e, def, name)),
            }
        }
        // Mark for deletion; finalizers (or the kubelet) finish it.
        let meta = fields::ensure_object(&mut obj, &["metadata"]);
        if !already_deleting {
            let ts = jiff::Timestamp::now().as_second() + grace;
            let ts = jiff::Timestamp::from_second(ts)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| now_rfc3339());
            meta.insert("deletionTimestamp".into(), Value::String(ts));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        } else if graceful {
            let cur = meta
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(grace);
            if grace < cur {
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
        }
        meta.insert("finalizers".into(), json!(finalizers));
        if finalizers.is_empty() {
            meta.remove("finalizers");
        }
        meta.remove("resourceVersion");
        (def.strategy.prepare_for_delete)(&mut obj);
        if opts.dry_run {
            set_rv(&mut obj, rv);
            return Ok((obj, StatusCode::OK));
        }
        let key = object_key(def, ns, name);
        let bytes = crate::protobuf::encode_for_storage(def, &obj)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        match state.storage.update(&key, rv, bytes).await {
            Ok(nrv) => {
                set_rv(&mut obj, nrv);
                return Ok((obj, StatusCode::OK));
            }
            Err(StorageError::Conflict { .. }) if attempts < 10 => continue,
            Err(e) => return Err(ApiError::from_storage(e, def, name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::resources::{LIMITRANGES, RESOURCEQUOTAS};
    use crate::storage::Storage;
    use crate::storage::sqlite::SqliteStorage;

    async fn state() -> Arc<AppState> {
        let store: Arc<dyn Storage> = Arc::new(SqliteStorage::open_temporary().expect("sqlite"));
        let state = AppState::new(
            store,
            "10.96.0.0/12".parse().expect("cidr"),
            "127.0.0.1:6443".into(),
        );
        crate::server::bootstrap(&state).await;
        state
    }

    #[tokio::test]
    async fn limitrange_defaults_are_stored_on_create_and_update() {
        let state = state().await;
        let lr = json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr"},
            "spec": {"limits": [{"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"},
                "default": {"memory": "256Mi"}}]}});
        create_object(
            &state,
            &LIMITRANGES,
            Some("default"),
            lr,
            false,
            None,
            "Update",
        )
        .await
        .expect("created");
        let (stored, rv) = get_current(&state, &LIMITRANGES, Some("default"), "lr")
            .await
            .expect("stored");
        let item = &stored["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"memory": "256Mi", "cpu": "2"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"memory": "256Mi", "cpu": "2"})
        );
        // An update that drops the defaults gets them back.
        let mut new = stored.clone();
        new["spec"]["limits"][0] = json!({"type": "Container", "max": {"memory": "1Gi"}});
        let (updated, _) = write_update(
            &state,
            &LIMITRANGES,
            Some("default"),
            "lr",
            stored,
            rv,
            new,
            UpdateScope::Main,
            false,
            None,
            "Update",
        )
        .await
        .expect("updated");
        assert_eq!(
            updated["spec"]["limits"][0]["defaultRequest"],
            json!({"memory": "1Gi"})
        );
    }

    #[tokio::test]
    async fn quota_scope_errors_are_one_message_per_distinct_error() {
        let state = state().await;
        let q = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
            "spec": {"hard": {"requests.cpu": "1", "limits.cpu": "2", "pods": "3"}, "scopes": ["BestEffort"]}});
        let err = create_object(
            &state,
            &RESOURCEQUOTAS,
            Some("default"),
            q,
            false,
            None,
            "Update",
        )
        .await
        .expect_err("invalid");
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "ResourceQuota \"q\" is invalid: spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\"}: unsupported scope applied to resource"
        );
        let causes = err
            .details
            .as_ref()
            .and_then(|d| d["causes"].as_array().cloned());
        assert_eq!(causes.map(|c| c.len()), Some(2));
    }
}
