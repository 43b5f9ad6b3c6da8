//! API errors as Kubernetes `Status` objects: one type, one conversion to an HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::registry::{FieldError, ResourceDef};
use crate::storage::StorageError;

/// A failed API request, rendered as a `Status` with Kubernetes' code, reason and wording.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes `StatusReason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// Human-readable message, worded as Kubernetes words it.
    pub message: String,
    /// `details`, if any.
    pub details: Option<Value>,
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = serde_json::Map::new();
    if !name.is_empty() {
        d.insert("name".into(), name.into());
    }
    if !group.is_empty() {
        d.insert("group".into(), group.into());
    }
    if !kind.is_empty() {
        d.insert("kind".into(), kind.into());
    }
    Value::Object(d)
}

impl ApiError {
    /// A generic error with the given code and reason.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 `pods "x" not found`.
    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::not_found_gr(def.group, def.plural, name)
    }

    /// 404 for a group/resource and name.
    pub fn not_found_gr(group: &str, resource: &str, name: &str) -> Self {
        let gr = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{gr} \"{name}\" not found"),
            details: Some(details(name, group, resource)),
        }
    }

    /// 404 for an unknown path or resource.
    pub fn no_such_resource() -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: Some(json!({})),
        }
    }

    /// 409 `pods "x" already exists`.
    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", def.group_resource()),
            details: Some(details(name, def.group, def.plural)),
        }
    }

    /// 409 Conflict for a stale resourceVersion.
    pub fn conflict(def: &ResourceDef, name: &str) -> Self {
        Self::conflict_msg(
            def,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 Conflict with a custom explanation.
    pub fn conflict_msg(def: &ResourceDef, name: &str, why: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                def.group_resource()
            ),
            details: Some(details(name, def.group, def.plural)),
        }
    }

    /// 422 Invalid with field causes: `Deployment.apps "web" is invalid: spec.replicas: ...`.
    pub fn invalid(def: &ResourceDef, name: &str, errs: &[FieldError]) -> Self {
        let qualified_kind = if def.group.is_empty() {
            def.kind.to_string()
        } else {
            format!("{}.{}", def.kind, def.group)
        };
        // Like Kubernetes' `ErrorList.ToAggregate`, the message lists each distinct error once
        // (the causes keep every one).
        let mut messages: Vec<&str> = Vec::new();
        for e in errs {
            if !messages.contains(&e.message.as_str()) {
                messages.push(&e.message);
            }
        }
        let joined = if messages.len() == 1 {
            messages[0].to_string()
        } else {
            format!("[{}]", messages.join(", "))
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| {
                let prefix = format!("{}: ", e.field);
                let msg = e.message.strip_prefix(&prefix).unwrap_or(&e.message);
                json!({"reason": e.reason, "message": msg, "field": e.field})
            })
            .collect();
        let mut d = details(name, def.group, def.kind);
        if let Value::Object(m) = &mut d {
            m.insert("causes".into(), Value::Array(causes));
        }
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{qualified_kind} \"{name}\" is invalid: {joined}"),
            details: Some(d),
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 403 Forbidden `pods "x" is forbidden: why`.
    pub fn forbidden(def: &ResourceDef, name: &str, why: &str) -> Self {
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("{} \"{name}\" is forbidden: {why}", def.group_resource()),
            details: Some(details(name, def.group, def.plural)),
        }
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 410 Expired (too old resourceVersion).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                if accepted.is_empty() {
                    content_type.to_string()
                } else {
                    accepted.join(", ")
                }
            ),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// 504 Timeout for a resourceVersion newer than the server has.
    pub fn too_large_resource_version(requested: i64, current: i64) -> Self {
        ApiError {
            code: 504,
            reason: "Timeout",
            message: format!("Too large resource version: {requested}, current: {current}"),
            details: Some(
                json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
            ),
        }
    }

    /// Maps a storage error for a given object to the Kubernetes error.
    pub fn from_storage(err: StorageError, def: &ResourceDef, name: &str) -> Self {
        match err {
            StorageError::AlreadyExists { .. } => Self::already_exists(def, name),
            StorageError::NotFound { .. } => Self::not_found(def, name),
            StorageError::Conflict { .. } => Self::conflict(def, name),
            StorageError::Compacted {
                requested,
                compacted,
            } => Self::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StorageError::FutureRevision { requested, current } => {
                Self::too_large_resource_version(requested, current)
            }
            StorageError::Backend(msg) => Self::internal(msg),
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        // Go's field order of metav1.Status: TypeMeta, metadata, status, message, reason,
        // details, code (clients compare the bytes).
        let mut m = serde_json::Map::new();
        m.insert("kind".into(), "Status".into());
        m.insert("apiVersion".into(), "v1".into());
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), "Failure".into());
        m.insert("message".into(), self.message.clone().into());
        // `reason` is omitempty in Go (a Status built without one, e.g. eviction's 500).
        if !self.reason.is_empty() {
            m.insert("reason".into(), self.reason.into());
        }
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        m.insert("code".into(), self.code.into());
        Value::Object(m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = serde_json::to_vec(&self.status()).unwrap_or_default();
        // Kubernetes' JSON serializer ends every document with a newline.
        body.push(b'\n');
        let mut resp = (code, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Kubernetes sends `Retry-After` whenever the Status suggests a delay.
        if let Some(secs) = self
            .details
            .as_ref()
            .and_then(|d| d.get("retryAfterSeconds"))
            .and_then(Value::as_i64)
            .filter(|s| *s > 0)
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
