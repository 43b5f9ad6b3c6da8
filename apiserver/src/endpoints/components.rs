//! Identities of Lotse's own components: client-certificate kubeconfigs for the controllers
//! (`system:kube-controller-manager`), the scheduler (`system:kube-scheduler`), the node network
//! agent (`system:kube-proxy`) and each
//! kubelet (`system:node:<name>` in group `system:nodes`), written into the data dir, plus the
//! background loops the apiserver runs for access control (RBAC snapshot, ClusterRole
//! aggregation, quota usage).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ApiResult};
use crate::pki::{Pki, PkiError};
use crate::state::AppState;

/// File name of the controllers' kubeconfig in the data dir.
pub const CONTROLLERS_KUBECONFIG: &str = "controllers.kubeconfig";
/// File name of the scheduler's kubeconfig in the data dir.
pub const SCHEDULER_KUBECONFIG: &str = "scheduler.kubeconfig";
/// File name of the node network agent's kubeconfig in the data dir (user `system:kube-proxy`,
/// bound to `system:node-proxier`).
pub const KUBE_PROXY_KUBECONFIG: &str = "kube-proxy.kubeconfig";

/// Path of the kubeconfig of kubelet `node` (`<data-dir>/kubelet-<node>.kubeconfig`).
pub fn node_kubeconfig_path(data_dir: &Path, node: &str) -> PathBuf {
    data_dir.join(format!("kubelet-{node}.kubeconfig"))
}

/// Whether `node` is a valid node name (RFC 1123 subdomain).
fn valid_node_name(node: &str) -> bool {
    lotse_core::names::dns1123_subdomain(node).is_empty()
}

/// Issues a kubelet certificate (`system:node:<node>`, group `system:nodes`) and writes its
/// kubeconfig to `<data-dir>/kubelet-<node>.kubeconfig`. Returns the path.
pub fn write_node_kubeconfig(
    pki: &Pki,
    server_url: &str,
    data_dir: &Path,
    node: &str,
) -> Result<PathBuf, PkiError> {
    let user = format!("system:node:{node}");
    let (cert, key) = pki.issue_client_cert(&user, &["system:nodes"])?;
    let path = node_kubeconfig_path(data_dir, node);
    pki.write_kubeconfig(&path, server_url, &user, &cert, &key)?;
    Ok(path)
}

/// Writes the controllers' and scheduler's kubeconfigs and starts the access-control loops.
pub fn start(
    state: &Arc<AppState>,
    pki: &Arc<Pki>,
    server_url: &str,
    data_dir: &Path,
) -> Result<(), PkiError> {
    for (file, user) in [
        (CONTROLLERS_KUBECONFIG, "system:kube-controller-manager"),
        (SCHEDULER_KUBECONFIG, "system:kube-scheduler"),
        (
            KUBE_PROXY_KUBECONFIG,
            crate::loops::bootstrap_rbac::KUBE_PROXY_USER,
        ),
    ] {
        let (cert, key) = pki.issue_client_cert(user, &[])?;
        let path = data_dir.join(file);
        pki.write_kubeconfig(&path, server_url, user, &cert, &key)?;
        tracing::info!(path = %path.display(), user, "wrote component kubeconfig");
    }
    let _ =
        state
            .security
            .issuer
            .set((pki.clone(), server_url.to_string(), data_dir.to_path_buf()));
    state.start_loops();
    Ok(())
}

/// `GET /lotse/node-kubeconfig/<node>` (authorized like any non-resource URL; cluster-admin
/// holds it): writes `<data-dir>/kubelet-<node>.kubeconfig` and returns it as YAML.
pub fn node_kubeconfig_response(state: &AppState, node: &str) -> ApiResult<Response> {
    if !valid_node_name(node) {
        return Err(ApiError::bad_request(format!("invalid node name {node:?}")));
    }
    let (pki, url, dir) = state
        .security
        .issuer
        .get()
        .ok_or_else(|| ApiError::internal("PKI not loaded"))?;
    let path = write_node_kubeconfig(pki, url, dir, node)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let body = std::fs::read(&path)
        .map_err(|e| ApiError::internal(format!("read {}: {e}", path.display())))?;
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(valid_node_name("node-1"));
        assert!(valid_node_name("n1.example"));
        assert!(!valid_node_name("../etc"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("-a"));
    }
}
