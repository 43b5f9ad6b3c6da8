//! LIST: from the watch cache (consistent or `resourceVersion=0`) or from storage at a revision,
//! with selectors, `limit`/`continue`, and JSON, Table or metadata-only output; DELETE on a
//! collection.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine;
use lotse_core::selectors::{FieldSelector, LabelSelector};
use serde_json::{Value, json};

use bytes::Bytes;

use crate::cache::object::CachedObject;
use crate::endpoints::handlers::{Ctx, header_str, json_response};
use crate::error::{ApiError, ApiResult};
use crate::registry::{ResourceDef, fields};
use crate::request::{ResponseFormat, response_format};
use crate::storage::{ListOptions, Revision, StorageError};

/// Parsed selectors and the key prefix of a list or watch.
pub struct Selection {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Storage key prefix (namespace-scoped when the URL names a namespace).
    pub key_prefix: String,
}

impl Selection {
    /// Parses `labelSelector`/`fieldSelector` (400 when malformed or unsupported).
    pub fn from_ctx(ctx: &Ctx<'_>) -> ApiResult<Self> {
        let def = ctx.rp.def;
        let labels =
            LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or("")).map_err(|e| {
                ApiError::bad_request(format!("unable to parse requirement: {e}").replace(
                    "unable to parse requirement: unable to parse requirement:",
                    "unable to parse requirement:",
                ))
            })?;
        let fields = FieldSelector::parse(ctx.query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.0))?;
        for r in &fields.0 {
            let f = r.field.as_str();
            if f != "metadata.name"
                && f != "metadata.namespace"
                && !def.selectable_fields.contains(&f)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        let mut key_prefix = match &ctx.rp.namespace {
            Some(ns) => format!("/registry/{}/{}/", def.storage_prefix, ns),
            None => format!("/registry/{}/", def.storage_prefix),
        };
        // A metadata.namespace field selector narrows an all-namespaces list.
        if ctx.rp.namespace.is_none()
            && def.namespaced
            && let Some(ns) = fields.required_value("metadata.namespace")
        {
            key_prefix = format!("/registry/{}/{}/", def.storage_prefix, ns);
        }
        Ok(Selection {
            labels,
            fields,
            key_prefix,
        })
    }

    /// Whether an object passes the selectors.
    pub fn matches(&self, o: &CachedObject) -> bool {
        self.labels.matches(&o.labels) && self.fields.matches(|f| o.field(f))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

fn encode_continue(rv: Revision, last_key: &str) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: last_key.to_string(),
    };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(s: &str, key_prefix: &str) -> ApiResult<ContinueToken> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(s))
        .map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" || t.rv <= 0 || !t.start.starts_with(key_prefix) {
        return Err(bad());
    }
    Ok(t)
}

/// One page of a list.
pub struct Page {
    /// Objects.
    pub items: Vec<Arc<CachedObject>>,
    /// The list's resourceVersion.
    pub revision: Revision,
    /// Continue token, when more items exist.
    pub cont: Option<String>,
}

/// Reads a page from storage at `rev`, filtering until `limit` matches are found.
async fn storage_page(
    ctx: &Ctx<'_>,
    sel: &Selection,
    rev: Option<Revision>,
    start_after: Option<String>,
    limit: usize,
) -> ApiResult<Page> {
    let def = ctx.rp.def;
    let mut items = Vec::new();
    let mut opts = ListOptions {
        revision: rev,
        start_after,
        limit: if limit > 0 { Some(limit.max(1)) } else { None },
    };
    loop {
        let res = ctx.state.storage.list(&sel.key_prefix, opts.clone()).await.map_err(|e| match e {
            StorageError::Compacted { .. } if opts.start_after.is_some() => ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ),
            other => ApiError::from_storage(other, def, ""),
        })?;
        let revision = res.revision;
        let last_key = res.items.last().map(|kv| kv.key.clone());
        for kv in res.items {
            let o = CachedObject::decode(def, &kv.key, &kv.value, kv.mod_revision)
                .map_err(ApiError::internal)?;
            if sel.matches(&o) {
                items.push(Arc::new(o));
            }
        }
        let full = limit > 0 && items.len() >= limit;
        if !res.more || last_key.is_none() {
            return Ok(Page {
                items,
                revision,
                cont: None,
            });
        }
        if full {
            let last = items
                .last()
                .map(|o| o.key.clone())
                .or(last_key)
                .unwrap_or_default();
            return Ok(Page {
                items,
                revision,
                cont: Some(encode_continue(revision, &last)),
            });
        }
        opts = ListOptions {
            revision: Some(revision),
            start_after: last_key,
            limit: opts.limit,
        };
    }
}

/// Resolves a list request to a page (cache or storage per resourceVersion semantics).
pub async fn select(ctx: &Ctx<'_>, sel: &Selection) -> ApiResult<Page> {
    let limit = ctx.query.int("limit")?.unwrap_or(0).max(0) as usize;
    let rv = ctx.query.get("resourceVersion").filter(|s| !s.is_empty());
    let rv_match = ctx
        .query
        .get("resourceVersionMatch")
        .filter(|s| !s.is_empty());
    if let Some(c) = ctx.query.get("continue").filter(|s| !s.is_empty()) {
        if rv.is_some() && rv != Some("0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let t = decode_continue(c, &sel.key_prefix)?;
        return storage_page(ctx, sel, Some(t.rv), Some(t.start), limit).await;
    }
    let rv_num = match rv {
        None => None,
        Some(s) => Some(
            s.parse::<Revision>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
        ),
    };
    match (rv_num, rv_match) {
        (None, Some(_)) => Err(ApiError::new(
            422,
            "Invalid",
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        (Some(0), Some("Exact")) => Err(ApiError::new(
            422,
            "Invalid",
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        )),
        (Some(n), Some("Exact")) => storage_page(ctx, sel, Some(n), None, limit).await,
        (_, Some(m)) if m != "NotOlderThan" => Err(ApiError::bad_request(format!(
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Unsupported value: \"{m}\": supported values: \"Exact\", \"NotOlderThan\", \"\""
        ))),
        (rv_num, _) => {
            let cacher = ctx.state.cacher_for(ctx.rp.def).await?;
            match rv_num {
                None => {
                    cacher.wait_fresh().await?;
                }
                Some(0) => {}
                Some(n) => {
                    if let Err(cur) = cacher.wait_for(n).await {
                        return Err(ApiError::too_large_resource_version(n, cur));
                    }
                }
            }
            let filter = |o: &CachedObject| sel.matches(o);
            let l = cacher.list(&sel.key_prefix, None, limit, &filter).await;
            let cont = if l.more {
                l.items.last().map(|o| encode_continue(l.revision, &o.key))
            } else {
                None
            };
            Ok(Page {
                items: l.items,
                revision: l.revision,
                cont,
            })
        }
    }
}

/// Every matching object (for deletecollection).
pub async fn select_all(ctx: &Ctx<'_>) -> ApiResult<Vec<Value>> {
    let sel = Selection::from_ctx(ctx)?;
    let page = select(ctx, &sel).await?;
    Ok(page
        .items
        .iter()
        .filter_map(|o| serde_json::from_slice(&o.raw).ok())
        .collect())
}

/// Serves a LIST.
pub async fn serve(ctx: &Ctx<'_>) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let sel = Selection::from_ctx(ctx)?;
    let page = select(ctx, &sel).await?;
    match response_format(header_str(ctx.headers, header::ACCEPT)) {
        ResponseFormat::Json => Ok(json_response(StatusCode::OK, list_bytes(def, &page))),
        ResponseFormat::Table => {
            let objs = page
                .items
                .iter()
                .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok());
            let t = crate::endpoints::table::build(
                def,
                objs,
                ctx.query,
                Some(page.revision.to_string()),
                page.cont.clone(),
                true,
            );
            Ok(json_response(
                StatusCode::OK,
                serde_json::to_vec(&t).unwrap_or_default(),
            ))
        }
        ResponseFormat::Metadata => {
            let items: Vec<Value> = page
                .items
                .iter()
                .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
                .map(|v| crate::endpoints::table::partial_metadata(&v))
                .collect();
            let mut meta = json!({"resourceVersion": page.revision.to_string()});
            if let (Some(c), Value::Object(m)) = (&page.cont, &mut meta) {
                m.insert("continue".into(), Value::String(c.clone()));
            }
            let l = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items});
            Ok(json_response(
                StatusCode::OK,
                serde_json::to_vec(&l).unwrap_or_default(),
            ))
        }
    }
}

/// The JSON bytes of a `<Kind>List`, assembled from the cached object bytes without re-encoding.
pub fn list_bytes(def: &ResourceDef, page: &Page) -> Vec<u8> {
    let total: usize = page.items.iter().map(|o| o.raw.len() + 1).sum();
    let mut out = Vec::with_capacity(total + 256);
    out.extend_from_slice(b"{\"kind\":\"");
    out.extend_from_slice(def.list_kind().as_bytes());
    out.extend_from_slice(b"\",\"apiVersion\":\"");
    out.extend_from_slice(def.api_version().as_bytes());
    out.extend_from_slice(b"\",\"metadata\":{\"resourceVersion\":\"");
    out.extend_from_slice(page.revision.to_string().as_bytes());
    out.push(b'"');
    if let Some(c) = &page.cont {
        out.extend_from_slice(b",\"continue\":");
        out.extend_from_slice(serde_json::to_string(c).unwrap_or_default().as_bytes());
    }
    out.extend_from_slice(b"},\"items\":[");
    for (i, o) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&o.raw);
    }
    out.extend_from_slice(b"]}");
    out
}

/// DELETE on a collection: deletes every selected object, answers with the deleted ones.
pub async fn delete_collection(ctx: &Ctx<'_>, body: Bytes) -> ApiResult<Response> {
    let def = ctx.rp.def;
    if def.namespaced && ctx.rp.namespace.is_none() {
        return Err(ApiError::method_not_allowed());
    }
    let opts = crate::endpoints::handlers::delete_opts(ctx.query, &body)?;
    let items = select_all(ctx).await?;
    let mut deleted = Vec::new();
    for obj in items {
        let name = fields::name(&obj).to_string();
        match crate::endpoints::handlers::delete_object(
            ctx.state,
            def,
            ctx.rp.namespace.as_deref(),
            &name,
            &opts,
        )
        .await
        {
            Ok((o, _)) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": def.list_kind(), "apiVersion": def.api_version(),
        "metadata": {}, "items": deleted,
    });
    Ok(crate::endpoints::handlers::value_response(
        StatusCode::OK,
        &list,
        &[],
    ))
}
