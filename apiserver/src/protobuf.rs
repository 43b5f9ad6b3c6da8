//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// Decodes a protobuf-encoded object (`k8s\0` + `runtime.Unknown`) into JSON.
///
/// Not yet supported (the kubectl apply round-trip issue adds it): answers 415 so clients see
/// exactly which media types are accepted.
pub fn decode_object(_body: &[u8]) -> ApiResult<Value> {
    Err(ApiError::unsupported_media_type(
        "application/vnd.kubernetes.protobuf",
        &["application/json", "application/yaml"],
    ))
}
