//! Subresources: `/status`, `/scale`, `pods/binding`, `pods/eviction` (in `eviction`),
//! `pods/ephemeralcontainers`, `namespaces/finalize`.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::endpoints::eviction;
use crate::endpoints::handlers::DeleteOpts;
use crate::endpoints::handlers::{Ctx, get_current, header_str, json_response, write_update};
use crate::error::{ApiError, ApiResult};
use crate::registry::fields::set_rv;
use crate::registry::resources::PODDISRUPTIONBUDGETS;
use crate::registry::{ResourceDef, Subresource, fields, object_key};
use crate::request;
use crate::state::AppState;
use crate::write::UpdateScope;

fn respond(code: StatusCode, v: &Value) -> Response {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// Dispatches `/<resource>/<name>/<sub>`.
pub async fn handle(
    ctx: &Ctx<'_>,
    method: &Method,
    name: &str,
    sub: &str,
    body: Bytes,
) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let Some(s) = def.subresources.iter().copied().find(|s| s.name() == sub) else {
        return Err(ApiError::no_such_resource());
    };
    match (s, method.clone()) {
        (Subresource::Status, Method::GET) => {
            let (obj, _) = get_current(ctx.state, def, ctx.rp.namespace.as_deref(), name).await?;
            Ok(respond(StatusCode::OK, &obj))
        }
        (Subresource::Status, Method::PUT) => {
            scoped_put(ctx, name, body, UpdateScope::Status).await
        }
        (Subresource::Status, Method::PATCH) => {
            crate::endpoints::handlers::patch(ctx, name, body, Some(UpdateScope::Status)).await
        }
        (Subresource::Scale, Method::GET) => {
            let (obj, _) = get_current(ctx.state, def, ctx.rp.namespace.as_deref(), name).await?;
            Ok(respond(StatusCode::OK, &scale_of(def, &obj)))
        }
        (Subresource::Scale, Method::PUT) | (Subresource::Scale, Method::PATCH) => {
            scale_write(ctx, method, name, body).await
        }
        // `pods/ephemeralcontainers` reads and writes the whole Pod; a write changes only
        // `spec.ephemeralContainers` (Kubernetes' EphemeralContainersREST).
        (Subresource::EphemeralContainers, Method::GET) => {
            let (obj, _) = get_current(ctx.state, def, ctx.rp.namespace.as_deref(), name).await?;
            Ok(respond(StatusCode::OK, &obj))
        }
        (Subresource::EphemeralContainers, Method::PUT) => {
            scoped_put(ctx, name, body, UpdateScope::EphemeralContainers).await
        }
        (Subresource::EphemeralContainers, Method::PATCH) => {
            crate::endpoints::handlers::patch(
                ctx,
                name,
                body,
                Some(UpdateScope::EphemeralContainers),
            )
            .await
        }
        (Subresource::Binding, Method::POST) => bind(ctx, name, body).await,
        (Subresource::Eviction, Method::POST) => evict(ctx, name, body).await,
        (Subresource::Finalize, Method::PUT) => finalize(ctx, name, body).await,
        (Subresource::Token, Method::POST) => {
            crate::endpoints::tokenrequest::create(ctx, name, body).await
        }
        (Subresource::Approval, Method::GET) => {
            let (obj, _) = get_current(ctx.state, def, ctx.rp.namespace.as_deref(), name).await?;
            Ok(respond(StatusCode::OK, &obj))
        }
        (Subresource::Approval, Method::PUT) => approval_put(ctx, name, body).await,
        (Subresource::Approval, Method::PATCH) => approval_patch(ctx, name, body).await,
        (Subresource::Log | Subresource::Exec | Subresource::PortForward, _) => {
            crate::endpoints::proxy::pod_proxy(ctx, method, name, sub).await
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// PUT on a subresource that writes part of the object (`/status`,
/// `pods/ephemeralcontainers`).
async fn scoped_put(
    ctx: &Ctx<'_>,
    name: &str,
    body: Bytes,
    scope: UpdateScope,
) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let raw = request::decode_object(
        header_str(ctx.headers, axum::http::header::CONTENT_TYPE),
        &body,
    )?;
    let mut warnings = Vec::new();
    let fv = request::FieldValidation::from_query(ctx.query)?;
    let new = crate::endpoints::handlers::decode_typed(def, raw, fv, &mut warnings)?;
    let (old, old_rv) = get_current(ctx.state, def, ctx.rp.namespace.as_deref(), name).await?;
    if let Some(p) =
        fields::str_at(&new, &["metadata", "resourceVersion"]).filter(|s| !s.is_empty())
        && p != old_rv.to_string()
    {
        return Err(ApiError::conflict(def, name));
    }
    let (obj, code) = write_update(
        ctx.state,
        def,
        ctx.rp.namespace.as_deref(),
        name,
        old,
        old_rv,
        new,
        scope,
        ctx.query.dry_run()?,
        crate::endpoints::handlers::field_manager(ctx.query, ctx.headers),
        "Update",
    )
    .await?;
    let mut r = respond(code, &obj);
    crate::endpoints::handlers::add_warnings(&mut r, &warnings);
    Ok(r)
}

/// `certificatesigningrequests/<name>/approval` (what `kubectl certificate approve|deny`
/// sends): only the conditions change; spec and certificate stay as stored.
async fn approval_put(ctx: &Ctx<'_>, name: &str, body: Bytes) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let raw = request::decode_object(
        header_str(ctx.headers, axum::http::header::CONTENT_TYPE),
        &body,
    )?;
    let mut warnings = Vec::new();
    let fv = request::FieldValidation::from_query(ctx.query)?;
    let sent = crate::endpoints::handlers::decode_typed(def, raw, fv, &mut warnings)?;
    let (old, old_rv) = get_current(ctx.state, def, ctx.rp.namespace.as_deref(), name).await?;
    let (obj, code) = approval_write(ctx, name, sent, old, old_rv).await?;
    let mut r = respond(code, &obj);
    crate::endpoints::handlers::add_warnings(&mut r, &warnings);
    Ok(r)
}

/// PATCH on `certificatesigningrequests/<name>/approval` (what client libraries send): a JSON,
/// merge or strategic merge patch applied to the stored request, then the checks and write of
/// a PUT. A write that lost a race is retried unless the patch names a resourceVersion.
async fn approval_patch(ctx: &Ctx<'_>, name: &str, body: Bytes) -> ApiResult<Response> {
    use crate::write::patch::{self, PatchType};
    let def = ctx.rp.def;
    let pt =
        PatchType::from_content_type(header_str(ctx.headers, axum::http::header::CONTENT_TYPE))?;
    if pt == PatchType::Apply {
        return Err(ApiError::unsupported_media_type(
            "application/apply-patch+yaml",
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ],
        ));
    }
    let fv = request::FieldValidation::from_query(ctx.query)?;
    let patch_doc = patch::parse_patch(pt, &body)?;
    let pinned = fields::str_at(&patch_doc, &["metadata", "resourceVersion"]).is_some();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (old, old_rv) = get_current(ctx.state, def, ctx.rp.namespace.as_deref(), name).await?;
        let patched = patch::apply(pt, def, &old, &patch_doc)?;
        let mut warnings = Vec::new();
        let sent = crate::endpoints::handlers::decode_typed(def, patched, fv, &mut warnings)?;
        match approval_write(ctx, name, sent, old, old_rv).await {
            Ok((obj, code)) => {
                let mut r = respond(code, &obj);
                crate::endpoints::handlers::add_warnings(&mut r, &warnings);
                return Ok(r);
            }
            Err(e) if e.code == 409 && e.reason == "Conflict" && !pinned && attempts < 10 => {}
            Err(e) => return Err(e),
        }
    }
}

/// The approval write shared by PUT and PATCH: `sent` is the request as the client wants it;
/// only its conditions (and metadata) are kept.
async fn approval_write(
    ctx: &Ctx<'_>,
    name: &str,
    sent: Value,
    old: Value,
    old_rv: crate::storage::Revision,
) -> ApiResult<(Value, StatusCode)> {
    let def = ctx.rp.def;
    if let Some(p) =
        fields::str_at(&sent, &["metadata", "resourceVersion"]).filter(|s| !s.is_empty())
        && p != old_rv.to_string()
    {
        return Err(ApiError::conflict(def, name));
    }
    // Kubernetes' CertificateApproval admission: approving or denying needs `approve` on the
    // request's signer (`signers/<signerName>` or `signers/<domain>/*`).
    let signer = fields::str_at(&old, &["spec", "signerName"]).unwrap_or_default();
    if let Some(user) = crate::auth::request_user()
        && !crate::endpoints::csr::may_use_signer(ctx.state.authz(), &user, "approve", signer)
            .await?
    {
        return Err(crate::authorization::forbidden_error(
            def.group,
            def.plural,
            name,
            &format!("user not permitted to approve requests with signerName {signer:?}"),
        ));
    }
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let new = crate::registry::resources::certificates::approval_update(&old, &sent, &now);
    write_update(
        ctx.state,
        def,
        ctx.rp.namespace.as_deref(),
        name,
        old,
        old_rv,
        new,
        UpdateScope::Approval,
        ctx.query.dry_run()?,
        crate::endpoints::handlers::field_manager(ctx.query, ctx.headers),
        "Update",
    )
    .await
}

fn scale_of(def: &ResourceDef, obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    let (spec_replicas, status_replicas, selector) = match def.custom.and_then(|c| c.scale.as_ref())
    {
        Some(paths) => paths.read(obj),
        None => (
            fields::i64_at(obj, &["spec", "replicas"]).unwrap_or(0),
            fields::i64_at(obj, &["status", "replicas"]).unwrap_or(0),
            lotse_core::selectors::selector_string(obj.pointer("/spec/selector")),
        ),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": spec_replicas},
        "status": {"replicas": status_replicas, "selector": selector},
    })
}

async fn scale_write(
    ctx: &Ctx<'_>,
    method: &Method,
    name: &str,
    body: Bytes,
) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let ns = ctx.rp.namespace.as_deref();
    let (old, old_rv) = get_current(ctx.state, def, ns, name).await?;
    let current_scale = scale_of(def, &old);
    let new_scale = if *method == Method::PUT {
        request::decode_object(
            header_str(ctx.headers, axum::http::header::CONTENT_TYPE),
            &body,
        )?
    } else {
        let pt = crate::write::patch::PatchType::from_content_type(header_str(
            ctx.headers,
            axum::http::header::CONTENT_TYPE,
        ))?;
        let p = crate::write::patch::parse_patch(pt, &body)?;
        crate::write::patch::apply(pt, def, &current_scale, &p)?
    };
    if let Some(p) =
        fields::str_at(&new_scale, &["metadata", "resourceVersion"]).filter(|s| !s.is_empty())
        && p != old_rv.to_string()
    {
        return Err(ApiError::conflict(def, name));
    }
    let replicas = match new_scale.pointer("/spec/replicas") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|r| r >= 0) => n.as_i64().unwrap_or(0),
        Some(v) => {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {}: must be greater than or equal to 0",
                    crate::registry::render_value(v)
                ),
            ));
        }
        None => 0,
    };
    let mut new = old.clone();
    match def.custom.and_then(|c| c.scale.as_ref()) {
        Some(paths) => paths.set_spec_replicas(&mut new, replicas),
        None => {
            fields::ensure_object(&mut new, &["spec"]).insert("replicas".into(), json!(replicas));
        }
    }
    let (obj, _) = write_update(
        ctx.state,
        def,
        ns,
        name,
        old,
        old_rv,
        new,
        UpdateScope::Main,
        ctx.query.dry_run()?,
        crate::endpoints::handlers::field_manager(ctx.query, ctx.headers),
        "Update",
    )
    .await?;
    Ok(respond(StatusCode::OK, &scale_of(def, &obj)))
}

async fn bind(ctx: &Ctx<'_>, name: &str, body: Bytes) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let ns = ctx.rp.namespace.as_deref();
    let binding = request::decode_object(
        header_str(ctx.headers, axum::http::header::CONTENT_TYPE),
        &body,
    )?;
    let node = fields::str_at(&binding, &["target", "name"])
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("Binding \"{name}\" is invalid: target.name: Required value"),
        ));
    }
    let dry_run = ctx.query.dry_run()?;
    for attempt in 0..10 {
        // The first try starts from the watch cache's copy (the scheduler binds pods it has
        // just seen there); a conflict means the copy lagged, and the next try reads storage.
        let (mut pod, rv) = if attempt == 0 {
            ctx.state.reader.cached_then_stored(def, ns, name).await?
        } else {
            get_current(ctx.state, def, ns, name).await?
        };
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict_msg(
                def,
                name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(cur) = fields::str_at(&pod, &["spec", "nodeName"]).filter(|n| !n.is_empty()) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{cur}\""
                ),
            ));
        }
        fields::ensure_object(&mut pod, &["spec"])
            .insert("nodeName".into(), Value::String(node.clone()));
        let now = jiff::Timestamp::now();
        let ts = jiff::Timestamp::from_second(now.as_second())
            .unwrap_or(now)
            .to_string();
        let status = fields::ensure_object(&mut pod, &["status"]);
        let conds = status.entry("conditions").or_insert_with(|| json!([]));
        if let Value::Array(cs) = conds {
            cs.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            cs.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": ts}));
        }
        fields::ensure_object(&mut pod, &["metadata"]).remove("resourceVersion");
        if dry_run {
            break;
        }
        let key = object_key(def, ns, name);
        let bytes = serde_json::to_vec(&pod).map_err(|e| ApiError::internal(e.to_string()))?;
        match ctx.state.storage.update(&key, rv, bytes).await {
            Ok(nrv) => {
                set_rv(&mut pod, nrv);
                break;
            }
            Err(crate::storage::StorageError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_storage(e, def, name)),
        }
    }
    Ok(respond(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

async fn finalize(ctx: &Ctx<'_>, name: &str, body: Bytes) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let new = request::decode_object(
        header_str(ctx.headers, axum::http::header::CONTENT_TYPE),
        &body,
    )?;
    let (old, old_rv) = get_current(ctx.state, def, None, name).await?;
    let mut obj = old.clone();
    let fins = new
        .pointer("/spec/finalizers")
        .cloned()
        .unwrap_or_else(|| json!([]));
    fields::ensure_object(&mut obj, &["spec"]).insert("finalizers".into(), fins);
    let (obj, code) = write_update(
        ctx.state,
        def,
        None,
        name,
        old,
        old_rv,
        obj,
        UpdateScope::Main,
        ctx.query.dry_run()?,
        None,
        "Update",
    )
    .await?;
    Ok(respond(code, &obj))
}

/// The apiserver's side of `pods/eviction`: the pod, its budgets and guarded writes handed to
/// [`crate::endpoints::eviction`], which decides.
struct EvictionStore<'a> {
    state: &'a AppState,
    def: &'static ResourceDef,
    ns: Option<&'a str>,
    name: &'a str,
    opts: DeleteOpts,
}

/// Whether a budget selects the pod: a missing selector selects nothing, an empty one every
/// pod of the namespace (policy/v1), an invalid one nothing.
fn budget_selects(pdb: &Value, pod: &Value) -> bool {
    let Some(sel) = fields::at(pdb, &["spec", "selector"]).filter(|s| s.is_object()) else {
        return false;
    };
    lotse_core::selectors::selector_value_matches(
        sel,
        pod.pointer("/metadata/labels").and_then(Value::as_object),
    )
}

#[async_trait::async_trait]
impl eviction::Store for EvictionStore<'_> {
    type Error = ApiError;

    fn is_conflict(e: &ApiError) -> bool {
        e.code == 409
    }

    async fn pod(&self) -> ApiResult<Value> {
        Ok(get_current(self.state, self.def, self.ns, self.name)
            .await?
            .0)
    }

    async fn budgets_selecting(&self, pod: &Value) -> ApiResult<Vec<Value>> {
        let def = &PODDISRUPTIONBUDGETS;
        let cacher = self.state.cacher(def)?;
        cacher.wait_local().await?;
        let prefix = format!(
            "/registry/{}/{}/",
            def.storage_prefix,
            fields::namespace(pod)
        );
        let list = cacher.list(&prefix, None, 0, &|_| true).await;
        Ok(list
            .items
            .iter()
            .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
            .filter(|pdb| budget_selects(pdb, pod))
            .collect())
    }

    async fn budget(&self, name: &str) -> ApiResult<Value> {
        Ok(
            get_current(self.state, &PODDISRUPTIONBUDGETS, self.ns, name)
                .await?
                .0,
        )
    }

    async fn write_budget_status(&self, budget: Value) -> ApiResult<()> {
        let def = &PODDISRUPTIONBUDGETS;
        let name = fields::name(&budget).to_string();
        let (old, old_rv) = get_current(self.state, def, self.ns, &name).await?;
        if fields::str_at(&budget, &["metadata", "resourceVersion"]) != Some(&old_rv.to_string()) {
            return Err(ApiError::conflict(def, &name));
        }
        write_update(
            self.state,
            def,
            self.ns,
            &name,
            old,
            old_rv,
            budget,
            UpdateScope::Status,
            false,
            None,
            "Update",
        )
        .await?;
        Ok(())
    }

    async fn write_pod(&self, mut pod: Value) -> ApiResult<String> {
        let rv: crate::storage::Revision = fields::str_at(&pod, &["metadata", "resourceVersion"])
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        fields::ensure_object(&mut pod, &["metadata"]).remove("resourceVersion");
        let bytes = crate::protobuf::encode_for_storage(self.def, &pod)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let key = object_key(self.def, self.ns, self.name);
        let new_rv = self
            .state
            .storage
            .update(&key, rv, bytes)
            .await
            .map_err(|e| ApiError::from_storage(e, self.def, self.name))?;
        Ok(new_rv.to_string())
    }

    async fn delete_pod(&self, resource_version: Option<&str>) -> ApiResult<()> {
        let opts = DeleteOpts {
            propagation: self.opts.propagation.clone(),
            grace: self.opts.grace,
            uid: self.opts.uid.clone(),
            rv: resource_version.map(str::to_string),
            dry_run: self.opts.dry_run,
        };
        crate::endpoints::handlers::delete_object(self.state, self.def, self.ns, self.name, &opts)
            .await?;
        Ok(())
    }
}

/// A refused eviction as Kubernetes' `Status` (the one place the refusals get their codes).
fn refusal_error(r: eviction::Refusal) -> ApiError {
    use eviction::Refusal;
    match r {
        Refusal::TooManyRequests { cause, retry_after } => {
            let mut details = serde_json::Map::new();
            details.insert(
                "causes".into(),
                json!([{"reason": "DisruptionBudget", "message": cause}]),
            );
            // Kubernetes omits a zero retryAfterSeconds.
            if retry_after > 0 {
                details.insert("retryAfterSeconds".into(), json!(retry_after));
            }
            ApiError {
                code: 429,
                reason: "TooManyRequests",
                message: eviction::VIOLATION_MESSAGE.to_string(),
                details: Some(Value::Object(details)),
            }
        }
        Refusal::BudgetForbidden { budget, why } => ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("poddisruptionbudget.policy \"{budget}\" is forbidden: {why}"),
            details: Some(
                json!({"name": budget, "group": "policy", "kind": "poddisruptionbudget"}),
            ),
        },
        Refusal::PodConflict { pod, why } => ApiError {
            code: 409,
            reason: "Conflict",
            message: format!("Operation cannot be fulfilled on Pod \"{pod}\": {why}"),
            details: Some(json!({"name": pod, "kind": "Pod"})),
        },
        Refusal::MultipleBudgets => ApiError {
            code: 500,
            reason: "",
            message: eviction::MULTIPLE_BUDGETS_MESSAGE.to_string(),
            details: None,
        },
        Refusal::BudgetConflicts(budget) => ApiError {
            code: 504,
            reason: "Timeout",
            message: format!("couldn't update PodDisruptionBudget \"{budget}\" due to conflicts"),
            details: Some(json!({"retryAfterSeconds": 10})),
        },
    }
}

/// `POST pods/<name>/eviction`.
async fn evict(ctx: &Ctx<'_>, name: &str, body: Bytes) -> ApiResult<Response> {
    let eviction_obj = request::decode_object(
        header_str(ctx.headers, axum::http::header::CONTENT_TYPE),
        &body,
    )?;
    if fields::name(&eviction_obj) != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let options_body = match eviction_obj.get("deleteOptions").filter(|v| v.is_object()) {
        Some(o) => {
            Bytes::from(serde_json::to_vec(o).map_err(|e| ApiError::internal(e.to_string()))?)
        }
        None => Bytes::new(),
    };
    let opts = crate::endpoints::handlers::delete_opts(ctx.query, &options_body)?;
    let decision = eviction::Options {
        uid: opts.uid.clone(),
        resource_version: opts.rv.clone(),
        dry_run: opts.dry_run,
    };
    let store = EvictionStore {
        state: ctx.state,
        def: ctx.rp.def,
        ns: ctx.rp.namespace.as_deref(),
        name,
        opts,
    };
    match eviction::evict(&store, &decision).await {
        Ok(()) => Ok(respond(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )),
        Err(eviction::Error::Store(e)) => Err(e),
        Err(eviction::Error::Refused(r)) => Err(refusal_error(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_selection_follows_policy_v1() {
        let pod = json!({"metadata": {"labels": {"app": "web"}}});
        let mut b = json!({"spec": {"selector": {"matchLabels": {"app": "web"}}}});
        assert!(budget_selects(&b, &pod));
        b["spec"]["selector"] = json!({"matchLabels": {"app": "db"}});
        assert!(!budget_selects(&b, &pod));
        b["spec"]["selector"] = json!({});
        assert!(
            budget_selects(&b, &pod),
            "an empty selector selects every pod"
        );
        b["spec"] = json!({});
        assert!(!budget_selects(&b, &pod), "no selector selects nothing");
    }

    #[test]
    fn refusals_as_statuses() {
        let e = refusal_error(eviction::Refusal::MultipleBudgets);
        assert_eq!(e.code, 500);
        assert_eq!(
            e.status(),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": eviction::MULTIPLE_BUDGETS_MESSAGE, "code": 500})
        );
        let e = refusal_error(eviction::Refusal::BudgetForbidden {
            budget: "web".into(),
            why: "pdb disruptions allowed is negative".into(),
        });
        assert_eq!(
            e.message,
            "poddisruptionbudget.policy \"web\" is forbidden: pdb disruptions allowed is negative"
        );
    }
}
