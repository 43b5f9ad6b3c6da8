//! The TokenRequest API: `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`
//! (`kubectl create token`), issuing a service-account JWT optionally bound to a pod or secret.

use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::authn::BoundObject;
use crate::endpoints::handlers::{Ctx, get_current, header_str, json_response};
use crate::error::{ApiError, ApiResult};
use crate::registry::FieldError;
use crate::registry::resources::{NODES, PODS, SECRETS, SERVICEACCOUNTS};

/// Kubernetes' minimum token lifetime (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Default lifetime when the request does not say (1 hour).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

fn invalid(name: &str, errs: &[FieldError]) -> ApiError {
    let msgs: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
        .collect();
    let message = if msgs.len() == 1 {
        format!(
            "TokenRequest.authentication.k8s.io {name:?} is invalid: {}",
            msgs[0]
        )
    } else {
        format!(
            "TokenRequest.authentication.k8s.io {name:?} is invalid: [{}]",
            msgs.join(", ")
        )
    };
    ApiError {
        code: 422,
        reason: "Invalid",
        message,
        details: Some(
            json!({"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest", "causes": causes}),
        ),
    }
}

/// NodeRestriction for a kubelet's TokenRequest: the token must be bound to a pod (by name and
/// UID) that is scheduled on the kubelet's node, with Kubernetes' messages.
async fn node_restriction(
    reader: &crate::cache::reader::CacheReader,
    ns: &str,
    sa: &str,
    node: &str,
    spec: &Value,
) -> ApiResult<()> {
    let forbid = |why: &str| crate::authorization::forbidden_error("", "serviceaccounts", sa, why);
    let r = spec.get("boundObjectRef").filter(|v| v.is_object());
    let field = |k: &str| {
        r.and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    if r.is_none()
        || field("apiVersion") != "v1"
        || field("kind") != "Pod"
        || field("name").is_empty()
    {
        return Err(forbid("node requested token not bound to a pod"));
    }
    if field("uid").is_empty() {
        return Err(forbid(
            "node requested token with a pod binding without a uid",
        ));
    }
    let (pod, _) = reader.stored(&PODS, Some(ns), field("name")).await?;
    if pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(field("uid")) {
        return Err(forbid(&format!(
            "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
            field("uid")
        )));
    }
    if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
        return Err(forbid(
            "node requested token bound to a pod scheduled on a different node",
        ));
    }
    Ok(())
}

/// Serves the token subresource.
pub async fn create(ctx: &Ctx<'_>, name: &str, body: Bytes) -> ApiResult<Response> {
    let state = ctx.state;
    let ns = ctx.rp.namespace.clone().unwrap_or_default();
    let req = crate::request::decode_object(header_str(ctx.headers, header::CONTENT_TYPE), &body)?;
    let (sa, _) = get_current(state, &SERVICEACCOUNTS, Some(&ns), name).await?;
    let sa_uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let spec = req.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    let mut errs = Vec::new();
    if expiration < MIN_EXPIRATION_SECONDS {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    } else if expiration > MAX_EXPIRATION_SECONDS {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    let mut bound = None;
    if let Some(r) = spec.get("boundObjectRef").filter(|v| v.is_object()) {
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
        let obj_name = r.get("name").and_then(Value::as_str).unwrap_or_default();
        let def = match kind {
            "Pod" => &PODS,
            "Secret" => &SECRETS,
            "Node" => &NODES,
            other => {
                errs.push(FieldError::not_supported(
                    "spec.boundObjectRef.kind",
                    &json!(other),
                    &["Pod", "Secret", "Node"],
                ));
                &PODS
            }
        };
        if errs.is_empty() {
            let obj_ns = if def.namespaced {
                Some(ns.as_str())
            } else {
                None
            };
            let (obj, _) = get_current(state, def, obj_ns, obj_name).await?;
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(want) = r
                .get("uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict_msg(
                    def,
                    obj_name,
                    &format!(
                        "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            bound = Some(BoundObject {
                kind: kind.to_string(),
                name: obj_name.to_string(),
                uid,
            });
        }
    }
    if !errs.is_empty() {
        return Err(invalid(name, &errs));
    }
    if let Some(user) = crate::auth::request_user()
        && let Some(node) = user.node_name()
    {
        node_restriction(&state.reader, &ns, name, node, &spec).await?;
    }
    let tokens = state
        .security
        .tokens()
        .ok_or_else(|| ApiError::internal("service-account token signing is not configured"))?;
    let now = jiff::Timestamp::now().as_second();
    let (token, exp) = tokens
        .issue_service_account_token(
            &ns,
            name,
            &sa_uid,
            &audiences,
            expiration,
            bound.as_ref(),
            now,
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let exp_ts = jiff::Timestamp::from_second(exp)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let aud = if audiences.is_empty() {
        vec![crate::authn::ISSUER.to_string()]
    } else {
        audiences
    };
    let mut out_spec = json!({"audiences": aud, "expirationSeconds": expiration});
    if let Some(r) = spec.get("boundObjectRef").filter(|v| v.is_object()) {
        out_spec["boundObjectRef"] = r.clone();
    }
    let resp = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": exp_ts},
    });
    Ok(json_response(
        StatusCode::CREATED,
        serde_json::to_vec(&resp).unwrap_or_default(),
    ))
}
