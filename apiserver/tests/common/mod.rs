//! In-process API shared by the apiserver integration tests: an `AppState` over a temporary
//! SQLite store, bootstrapped, and the admin identity requests carry.

use std::sync::Arc;

use apiserver::auth::{ClientCertIdentity, UserInfo};
use apiserver::server;
use apiserver::state::AppState;
use apiserver::storage::Storage;
use apiserver::storage::sqlite::SqliteStorage;

/// A bootstrapped `AppState` over a temporary SQLite store (kept alive by the returned handle).
#[allow(dead_code)]
pub async fn state() -> (Arc<AppState>, Arc<dyn Storage>) {
    let store: Arc<dyn Storage> = Arc::new(SqliteStorage::open_temporary().expect("sqlite"));
    let state = AppState::new(
        store.clone(),
        "10.96.0.0/12".parse().expect("cidr"),
        "127.0.0.1:6443".into(),
    );
    apiserver::loops::crd_controller::spawn(&state.reader, &state.storage, state.clone());
    server::bootstrap(&state).await;
    (state, store)
}

/// The client-certificate identity of the cluster admin (`system:masters`).
#[allow(dead_code)]
pub fn admin() -> ClientCertIdentity {
    ClientCertIdentity(UserInfo::from_cert(
        "lotse-admin".into(),
        vec!["system:masters".into()],
    ))
}

/// Sends `req` through a fresh `server::router` over `state`: status, headers and body bytes.
#[allow(dead_code)]
pub async fn send(
    state: &Arc<AppState>,
    req: axum::http::Request<axum::body::Body>,
) -> (axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>) {
    use tower::ServiceExt;
    let resp = server::router(state.clone())
        .oneshot(req)
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .expect("body");
    (status, headers, bytes.to_vec())
}
