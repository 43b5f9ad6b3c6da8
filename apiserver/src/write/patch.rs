//! PATCH bodies: JSON patch, JSON merge patch, strategic merge patch and server-side apply.

use bytes::Bytes;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceDef;
use crate::request;

/// The patch types Kubernetes accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

/// Media types accepted for PATCH, in Kubernetes' order.
pub const PATCH_MEDIA_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

impl PatchType {
    /// From the request's Content-Type; unknown types are 415.
    pub fn from_content_type(ct: Option<&str>) -> ApiResult<Self> {
        match request::media_type(ct).as_str() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            other => Err(ApiError::unsupported_media_type(other, PATCH_MEDIA_TYPES)),
        }
    }
}

/// Parses the patch document itself (400 when malformed).
pub fn parse_patch(pt: PatchType, body: &Bytes) -> ApiResult<Value> {
    match pt {
        PatchType::Apply => {
            let v = request::decode_yaml(body)?;
            if !v.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding YAML: the apply configuration is not an object",
                ));
            }
            Ok(v)
        }
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies a parsed patch (other than Apply) to `current`.
pub fn apply(pt: PatchType, def: &ResourceDef, current: &Value, patch: &Value) -> ApiResult<Value> {
    match pt {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
            Ok(doc)
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding merge patch: the patch is not a JSON object",
                ));
            }
            let mut doc = current.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
        PatchType::StrategicMerge => crate::write::strategic::apply(def, current, patch),
        PatchType::Apply => {
            let mut doc = current.clone();
            json_patch::merge(&mut doc, patch);
            Ok(doc)
        }
    }
}
