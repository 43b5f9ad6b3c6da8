//! Pod subresources served by the node's kubelet (`log`, `exec`, `portforward`).

use axum::http::Method;
use axum::response::Response;

use crate::error::{ApiError, ApiResult};
use crate::handlers::{Ctx, get_current};

/// Proxies a pod subresource to the kubelet of the pod's node.
pub async fn pod_proxy(
    ctx: &Ctx<'_>,
    _method: &Method,
    name: &str,
    sub: &str,
) -> ApiResult<Response> {
    let (pod, _) = get_current(ctx.state, ctx.rp.def, ctx.rp.namespace.as_deref(), name).await?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    Err(ApiError::new(
        503,
        "ServiceUnavailable",
        format!(
            "pods/{sub} is served by the kubelet of node {node:?}, and proxying to kubelets is not available in this build"
        ),
    ))
}
