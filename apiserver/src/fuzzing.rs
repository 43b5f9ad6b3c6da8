//! Entry points shared by the cargo-fuzz targets (`apiserver/fuzz/`) and the stable bounded fuzz
//! test (`tests/patch_fuzz.rs`): each feeds arbitrary bytes to a decoder or patch engine the way a
//! request would, and returns the API error it produced, if any. Callers assert that nothing
//! panics and that every error is a 4xx.

use bytes::Bytes;
use lotse_core::selectors::{FieldSelector, LabelSelector};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::registry;
use crate::write::patch::{self, PatchType};

/// The live object patches are applied to.
pub fn sample_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}, "finalizers": ["f"],
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "apps/v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "a", "image": "nginx", "env": [{"name": "X", "value": "1"}], "ports": [{"containerPort": 80}]},
                {"name": "b", "image": "busybox", "command": ["sh"]}]}}}
    })
}

/// Applies `body` as every patch type to [`sample_deployment`]; returns the errors.
pub fn patch_bytes(body: &[u8]) -> Vec<ApiError> {
    let Some(def) = registry::catalog::lookup_kind("apps", "Deployment") else {
        return Vec::new();
    };
    let current = sample_deployment();
    let bytes = Bytes::copy_from_slice(body);
    let mut errors = Vec::new();
    for pt in [
        PatchType::Json,
        PatchType::Merge,
        PatchType::StrategicMerge,
        PatchType::Apply,
    ] {
        let result = patch::parse_patch(pt, &bytes).and_then(|doc| match pt {
            PatchType::Apply => {
                crate::write::managed::apply(def, &current, &doc, "fuzz", false)?;
                crate::write::managed::apply(def, &current, &doc, "fuzz", true)
            }
            _ => patch::apply(pt, def, &current, &doc),
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    errors
}

/// Applies a JSON value as a strategic merge patch and as an apply configuration.
pub fn patch_value(doc: &Value) -> Vec<ApiError> {
    let Some(def) = registry::catalog::lookup_kind("apps", "Deployment") else {
        return Vec::new();
    };
    let current = sample_deployment();
    let mut errors = Vec::new();
    for r in [
        crate::write::strategic::apply(def, &current, doc),
        crate::write::managed::apply(def, &current, doc, "fuzz", false),
        crate::write::managed::apply(def, &current, doc, "fuzz", true),
    ] {
        if let Err(e) = r {
            errors.push(e);
        }
    }
    errors
}

/// Decodes `body` as a protobuf object; returns the error, if any.
pub fn protobuf_bytes(body: &[u8]) -> Option<ApiError> {
    crate::protobuf::decode_object(body).err()
}

/// Decodes `body` as a request body of every accepted media type and parses it (as text) as a
/// label and a field selector; returns the API errors (selector errors are 400s).
pub fn request_bytes(body: &[u8]) -> Vec<ApiError> {
    let bytes = Bytes::copy_from_slice(body);
    let mut errors = Vec::new();
    for ct in [
        "application/json",
        "application/yaml",
        "application/vnd.kubernetes.protobuf",
        "text/plain",
    ] {
        if let Err(e) = crate::request::decode_object(Some(ct), &bytes) {
            errors.push(e);
        }
    }
    let text = String::from_utf8_lossy(body);
    if let Err(e) = LabelSelector::parse(&text) {
        errors.push(ApiError::bad_request(e.to_string()));
    }
    if let Err(e) = FieldSelector::parse(&text) {
        errors.push(ApiError::bad_request(e.to_string()));
    }
    errors
}
