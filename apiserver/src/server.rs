//! Server assembly: configuration, routing, authentication gate, metrics, and
//! start-up (PKI, storage backend, watch caches, bootstrap objects).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::alloc::ServiceAllocator;
use crate::auth::{ClientCertIdentity, UserInfo};
use crate::endpoints::handlers::{self, Ctx, json_response};
use crate::endpoints::{discovery, openapi};
use crate::error::{ApiError, ApiResult};
use crate::metrics::RequestLabels;
use crate::registry::{self, ResourceDef};
use crate::request::{self, Query};
use crate::state::AppState;
use crate::storage::Storage;

/// The Kubernetes version Lotse reports (the minor of the k8s-openapi feature it is built with).
pub const KUBERNETES_MINOR: &str = "33";
/// `gitVersion` reported by `/version`.
pub const GIT_VERSION: &str = "v1.33.0-lotse";

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// PKI could not be created or loaded.
    #[error("PKI: {0}")]
    Pki(#[from] crate::pki::PkiError),
    /// Storage could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// Listening failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
}

/// The HTTP router: everything goes through [`dispatch`].
pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

fn verb_for(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match (method.clone(), has_name) {
        (Method::GET, true) => "get",
        (Method::GET, false) if watch => "watch",
        (Method::GET, false) => "list",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// The single entry point: authentication, routing, body limits, metrics, and — for all but
/// long-running requests — flow control and the request timeout.
pub async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let query = Query::parse(req.uri().query());
    let long_running = crate::flowcontrol::is_long_running(req.uri().path(), query.flag("watch"));
    let (resp, labels) = if long_running {
        let mut labels = RequestLabels::default();
        let resp = match dispatch_inner(&state, req, &mut labels, true).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        (resp, labels)
    } else {
        // As Go's handlers, the request runs on when its caller stops waiting: a write that
        // was under way completes (the client got 504 and may find it done).
        let timeout = request_timeout(&state, &query);
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            let mut labels = RequestLabels::default();
            let resp = match dispatch_inner(&task_state, req, &mut labels, false).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            };
            (resp, labels)
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => (
                ApiError::internal(format!("request handler failed: {e}")).into_response(),
                RequestLabels::default(),
            ),
            Err(_) => (
                ApiError {
                    code: 504,
                    reason: "Timeout",
                    message: "Timeout: request did not complete within requested timeout - context deadline exceeded".into(),
                    details: Some(json!({})),
                }
                .into_response(),
                RequestLabels::default(),
            ),
        }
    };
    let mut labels = labels;
    if labels.verb.is_empty() {
        labels.verb = "other";
    }
    state
        .metrics
        .observe(&labels, resp.status().as_u16(), started.elapsed());
    resp
}

/// `--request-timeout`, or the client's shorter `?timeout=` (Go duration, e.g. `32s`).
fn request_timeout(state: &AppState, query: &Query) -> std::time::Duration {
    let limit = state.flow_control.request_timeout();
    match query
        .get("timeout")
        .and_then(crate::flowcontrol::parse_go_duration)
    {
        Some(t) if !t.is_zero() && t < limit => t,
        _ => limit,
    }
}

/// The seats a request takes in flow control: a LIST one per hundred objects of its resource
/// (or of its `limit`), as Kubernetes' list work estimator counts them; any other request one.
fn request_width(state: &AppState, method: &Method, path: &str, query: &Query) -> usize {
    if method != Method::GET {
        return 1;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return 1,
    };
    let Ok(rp) = request::parse_resource_path(group, version, rest) else {
        return 1;
    };
    if rp.name.is_some() {
        return 1;
    }
    let Ok(cacher) = state.cacher(rp.def) else {
        return 1;
    };
    let objects = match query.int("limit") {
        Ok(Some(limit)) if limit > 0 => cacher.len().min(limit as usize),
        _ => cacher.len(),
    };
    crate::flowcontrol::list_width(objects)
}

async fn dispatch_inner(
    state: &Arc<AppState>,
    req: Request,
    labels: &mut RequestLabels,
    long_running: bool,
) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = Query::parse(parts.uri.query());
    let cert = parts.extensions.get::<ClientCertIdentity>();
    let user = match crate::authn::authenticate(state.authenticator(), &parts.headers, cert).await?
    {
        Some(u) => u,
        // Anonymous requests are authorized like any other (kube-apiserver's default
        // `--anonymous-auth=true`): RBAC grants `system:unauthenticated` little beyond the public
        // paths and `kube-public/cluster-info`, which joining nodes read before they have
        // credentials.
        None => UserInfo::anonymous(),
    };
    let user =
        crate::endpoints::impersonation::impersonate(state.authz(), &parts.headers, user).await?;
    // API Priority and Fairness comes after impersonation, before authorization.
    let _seat = if long_running || matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        None
    } else {
        let width = request_width(state, &parts.method, &path, &query);
        match state
            .flow_control
            .acquire(&user.name, &user.groups, width)
            .await
        {
            Ok(seat) => seat,
            Err(_) => return Ok(crate::flowcontrol::too_many_requests()),
        }
    };
    state
        .authz()
        .require(&crate::authorization::request_attributes(
            &user,
            &parts.method,
            &path,
            &query,
        ))
        .await?;
    crate::endpoints::componentstatus::observe_user(&user.name);
    if let Some(node) = path.strip_prefix("/lotse/node-kubeconfig/") {
        return crate::endpoints::components::node_kubeconfig_response(state, node);
    }
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return Ok(text(StatusCode::OK, "ok")),
        "/version" => {
            return Ok(value(&json!({
                "major": "1", "minor": KUBERNETES_MINOR, "gitVersion": GIT_VERSION,
                "gitCommit": "lotse", "gitTreeState": "clean", "buildDate": "2026-11-23T00:00:00Z",
                "goVersion": "rust", "compiler": "rustc", "platform": "linux/amd64",
            })));
        }
        "/metrics" => {
            let body = state.metrics.render()
                + &state.pod_security.render_metrics()
                + &state.flow_control.render_metrics();
            let mut r = text(StatusCode::OK, &body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return Ok(r);
        }
        "/api" => {
            return Ok(discovery_response(&accept, true, || {
                discovery::api_versions(&state.server_address)
            }));
        }
        "/apis" => {
            return Ok(discovery_response(
                &accept,
                false,
                discovery::api_group_list,
            ));
        }
        "/openapi/v3" => return Ok(value(&openapi::v3_index())),
        "/openapi/v2" => {
            let proto = accept.contains("protobuf");
            let (body, ct) = if proto {
                (
                    crate::endpoints::openapi_v2::protobuf(),
                    crate::endpoints::openapi_v2::PROTOBUF_MEDIA_TYPE,
                )
            } else {
                (crate::endpoints::openapi_v2::json(), "application/json")
            };
            return Ok(body.response(&parts.headers, ct));
        }
        "/swagger-2.0.0.pb-v1" | "/swagger.json" => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
        _ => {}
    }
    if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        return match openapi::v3_document(gv) {
            Some((doc, etag)) => {
                let mut r = doc.response(&parts.headers, "application/json");
                if let Ok(h) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                    r.headers_mut().insert(header::ETAG, h);
                }
                if query.get("hash").is_some() {
                    r.headers_mut().insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("public, immutable"),
                    );
                }
                Ok(r)
            }
            None => Err(ApiError::no_such_resource()),
        };
    }
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        ["apis", g] => {
            return discovery::api_group(g)
                .map(|v| value(&v))
                .ok_or_else(ApiError::no_such_resource);
        }
        _ => return Err(ApiError::no_such_resource()),
    };
    if group == crate::metrics_api::GROUP {
        return resource_metrics(state, &parts.method, version, rest, &query, &accept).await;
    }
    if crate::endpoints::componentstatus::is_path(group, version, rest) {
        return component_statuses(state, &parts.method, &parts.headers, rest, &query).await;
    }
    if crate::endpoints::reviews::is_review_path(group, version, rest) {
        let body = body_bytes(body).await?;
        return crate::endpoints::reviews::handle(
            state,
            &user,
            &parts.method,
            &parts.headers,
            group,
            rest,
            body,
        )
        .await;
    }
    if rest.is_empty() {
        return discovery::resource_list(group, version)
            .map(|v| value(&v))
            .ok_or_else(ApiError::no_such_resource);
    }
    if let ("", ["nodes", node, "proxy", tail @ ..]) = (group, rest) {
        // The node's kubelet API, proxied (crate::endpoints::proxy).
        return crate::endpoints::proxy::node_proxy(state, node, tail, parts).await;
    }
    let rp = request::parse_resource_path(group, version, rest)?;
    labels.verb = verb_for(&parts.method, rp.name.is_some(), query.flag("watch"));
    labels.group = group.to_string();
    labels.version = version.to_string();
    labels.resource = rp.def.plural.to_string();
    labels.subresource = rp.subresource.clone().unwrap_or_default();
    if matches!(
        rp.subresource.as_deref(),
        Some("exec" | "attach" | "portforward")
    ) && parts.headers.contains_key(header::UPGRADE)
    {
        // Streaming subresources are spliced through to the kubelet (crate::endpoints::proxy).
        return crate::endpoints::proxy::pod_upgrade(state, &rp, &user, parts).await;
    }
    let body = body_bytes(body).await?;
    let scope = Arc::new(crate::auth::RequestScope {
        user: user.clone(),
        warnings: Default::default(),
    });
    let ctx = Ctx {
        state,
        rp: &rp,
        query: &query,
        headers: &parts.headers,
        user: &user,
    };
    let mut resp = crate::auth::with_request(
        scope.clone(),
        crate::endpoints::handle(ctx, &parts.method, body),
    )
    .await?;
    if let Ok(ws) = scope.warnings.lock() {
        handlers::add_warnings(&mut resp, &ws);
    }
    // A deprecated custom resource version warns on every request, as Kubernetes does.
    if let Some(w) = rp.def.custom.and_then(|c| c.deprecation_warning.clone()) {
        handlers::add_warnings(&mut resp, &[w]);
    }
    Ok(resp)
}

/// Reads a request body, enforcing Kubernetes' 3 MiB limit (413 beyond it).
pub async fn body_bytes(body: Body) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, request::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large(request::MAX_BODY_BYTES))
}

fn text(code: StatusCode, s: &str) -> Response {
    let mut r = (code, s.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn value(v: &Value) -> Response {
    json_response(StatusCode::OK, serde_json::to_vec(v).unwrap_or_default())
}

fn discovery_response(accept: &str, core: bool, plain: impl FnOnce() -> Value) -> Response {
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=APIGroupDiscoveryList") && p.contains("g=apidiscovery.k8s.io") {
            let version = if p.contains("v=v2beta1") {
                "v2beta1"
            } else if p.contains("v=v2") {
                "v2"
            } else {
                continue;
            };
            let doc = discovery::aggregated(core, &format!("apidiscovery.k8s.io/{version}"));
            let mut r = json_response(StatusCode::OK, serde_json::to_vec(&doc).unwrap_or_default());
            let ct = format!(
                "application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
            );
            if let Ok(h) = HeaderValue::from_str(&ct) {
                r.headers_mut().insert(header::CONTENT_TYPE, h);
            }
            r.headers_mut()
                .insert("Vary", HeaderValue::from_static("Accept"));
            return r;
        }
    }
    let mut r = value(&plain());
    r.headers_mut()
        .insert("Vary", HeaderValue::from_static("Accept"));
    r
}

/// Apiserver configuration (flags of the `apiserver` binary).
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory (PKI, SQLite database, kubeconfigs).
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub bind_address: std::net::IpAddr,
    /// HTTPS port.
    pub secure_port: u16,
    /// etcd endpoints; empty means the embedded SQLite store.
    pub etcd_servers: Vec<String>,
    /// Service ClusterIP range.
    pub service_cluster_ip_range: Ipv4Net,
    /// Extra SANs for the serving certificate.
    pub extra_sans: Vec<String>,
    /// The address the `kubernetes` Service's endpoints carry (`--advertise-address`; default:
    /// see [`crate::loops::endpoint_reconciler::advertise_address`]). The serving certificate names it.
    pub advertise_address: Option<std::net::IpAddr>,
    /// How often storage is compacted.
    pub compaction_interval: Duration,
}

/// A started apiserver.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Path of the admin kubeconfig.
    pub admin_kubeconfig: PathBuf,
    /// Shared state.
    pub state: Arc<AppState>,
    /// The PKI.
    pub pki: Arc<crate::pki::Pki>,
    /// Resolves when the server stops.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The address the `kubernetes` Service's endpoints carry.
    pub advertise_address: std::net::IpAddr,
}

/// The data dir holds the cluster's keys and every Secret: private to its owner (0700, as k3s
/// keeps its server dir), repaired with a warning when it is wider.
fn private_data_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir)
        .map_err(|e| ServerError::Config(format!("stat {}: {e}", dir.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(path = %dir.display(), mode = format!("{mode:o}"), "data dir readable by others: setting 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ServerError::Config(format!("chmod {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Opens storage, creates PKI and the admin kubeconfig, bootstraps system objects and serves.
pub async fn start(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, ServerError> {
    start_with(cfg, StorageOptions::default(), shutdown).await
}

/// How the apiserver reaches and protects its store, beyond [`Config`].
#[derive(Debug, Default)]
pub struct StorageOptions {
    /// TLS to etcd (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
    pub etcd_tls: crate::storage::etcd::EtcdTls,
    /// `--encryption-provider-config`: an `EncryptionConfiguration` file (encryption at rest).
    pub encryption_provider_config: Option<std::path::PathBuf>,
    /// `--sqlite-synchronous=full`: fsync every commit (survives power loss).
    pub sqlite_sync_full: bool,
}

/// [`start`], with TLS to etcd and encryption at rest.
pub async fn start_with(
    cfg: Config,
    opts: StorageOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, ServerError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| ServerError::Config(format!("create {}: {e}", cfg.data_dir.display())))?;
    private_data_dir(&cfg.data_dir)?;
    // Refuse a bad encryption configuration before anything is written.
    let encryption = match &opts.encryption_provider_config {
        Some(path) => Some(
            crate::storage::encryption::EncryptionConfig::load(path)
                .map_err(|e| ServerError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let mut storage: Arc<dyn Storage> = if cfg.etcd_servers.is_empty() {
        Arc::new(crate::storage::sqlite::SqliteStorage::open_with_sync(
            &cfg.data_dir.join("state.db"),
            opts.sqlite_sync_full,
        )?)
    } else {
        Arc::new(
            crate::storage::etcd::EtcdStorage::connect_with(&cfg.etcd_servers, &opts.etcd_tls)
                .await?,
        )
    };
    if let Some(config) = encryption {
        tracing::info!(
            encrypting = config.encrypts(),
            "encryption at rest configured (--encryption-provider-config)"
        );
        let resources = registry::catalog::all()
            .iter()
            .map(|d| (d.storage_prefix, (d.group, d.plural)));
        storage = Arc::new(crate::storage::encryption::EncryptedStorage::new(
            storage, config, resources,
        ));
    }
    let mut sans = cfg.extra_sans.clone();
    if !cfg.bind_address.is_unspecified() {
        sans.push(cfg.bind_address.to_string());
    }
    let advertise = crate::loops::endpoint_reconciler::advertise_address(
        cfg.advertise_address,
        cfg.bind_address,
    );
    sans.push(advertise.to_string());
    let first_ip = ServiceAllocator::new(cfg.service_cluster_ip_range).first_ip();
    sans.push(first_ip.to_string());
    let pki = Arc::new(crate::pki::Pki::load_or_create(&cfg.data_dir, &sans)?);
    let addr = SocketAddr::new(cfg.bind_address, cfg.secure_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen { addr, source })?;
    let host = if cfg.bind_address.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        cfg.bind_address.to_string()
    };
    let server_url = format!("https://{host}:{}", addr.port());
    let admin_kubeconfig = pki.write_admin_kubeconfig(&server_url)?;
    let state = AppState::new(
        storage.clone(),
        cfg.service_cluster_ip_range,
        format!("{host}:{}", addr.port()),
    );
    crate::loops::crd_controller::spawn(&state.reader, &state.storage, state.clone());
    // As kube-apiserver: each tick compacts to the revision of the previous tick.
    crate::storage::compactor::spawn_compactor(storage.clone(), cfg.compaction_interval, 0);
    crate::memory::spawn_trimmer();
    let tokens = crate::authn::authority(&pki)
        .map_err(|e| ServerError::Config(format!("service-account key: {e}")))?;
    state.security.set_tokens(Arc::new(tokens));
    crate::endpoints::components::start(&state, &pki, &server_url, &cfg.data_dir)
        .map_err(ServerError::Pki)?;
    bootstrap(&state).await;
    crate::loops::autoregister::start(Arc::new(ApiServiceStore(state.clone()))).await;
    // kubeadm's bootstrap-token phase: the public cluster-info joining nodes discover the
    // cluster from, and anonymous read access to it.
    crate::loops::bootstrap_rbac::ensure_cluster_info_access(state.as_ref()).await;
    crate::loops::bootstrap_rbac::ensure_cluster_info(
        state.as_ref(),
        pki.ca_cert_pem(),
        &format!("https://{}", SocketAddr::new(advertise, addr.port())),
    )
    .await;
    crate::loops::endpoint_reconciler::spawn(state.clone(), advertise, addr.port());
    crate::metrics_api::spawn(
        Arc::new(MetricsCluster(state.clone())),
        state.resource_metrics.clone(),
    );
    // Build the OpenAPI documents before the first client asks for them.
    let _ = tokio::task::spawn_blocking(openapi::v3_index).await;
    let tls = pki.rustls_server_config()?;
    let app = router(state.clone());
    let task = tokio::spawn(crate::tls::serve(listener, app, tls, shutdown));
    Ok(Running {
        addr,
        admin_kubeconfig,
        state,
        pki,
        task,
        advertise_address: advertise,
    })
}

/// Creates the system namespaces, the `kubernetes` service and the bootstrap RBAC policy if
/// missing.
pub async fn bootstrap(state: &Arc<AppState>) {
    crate::loops::bootstrap_rbac::ensure(state.as_ref()).await;
    let ns_def = &registry::resources::NAMESPACES;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match handlers::create_object(state, ns_def, None, obj, false, None, "Update").await {
            Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
            Err(e) if e.code == 409 => {}
            Err(e) => {
                tracing::warn!(namespace = ns, error = %e, "could not create system namespace")
            }
        }
    }
    // Kubernetes' "scheduling/bootstrap-system-priority-classes" post-start hook.
    let pc_def = &registry::resources::PRIORITYCLASSES;
    for c in registry::resources::SYSTEM_PRIORITY_CLASSES {
        let obj = registry::resources::system_priority_class(c);
        match handlers::create_object(state, pc_def, None, obj, false, None, "Update").await {
            Ok(_) => tracing::info!(class = c.name, "created system priority class"),
            Err(ApiError { code: 409, .. }) => {}
            Err(e) => tracing::warn!(class = c.name, error = %e, "could not create priority class"),
        }
    }
    let svc_def = &registry::resources::SERVICES;
    let ip = state.alloc.first_ip().to_string();
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}], "sessionAffinity": "None", "type": "ClusterIP"},
    });
    match handlers::create_object(state, svc_def, Some("default"), svc, false, None, "Update").await
    {
        Ok(_) | Err(ApiError { code: 409, .. }) => {}
        Err(e) => tracing::warn!(error = %e, "could not create the kubernetes service"),
    }
}

/// The autoregister controller's view of the apiserver: the served group versions and the
/// APIServices, written as API requests of the apiserver itself would be.
struct ApiServiceStore(Arc<AppState>);

#[async_trait::async_trait]
impl crate::loops::autoregister::ApiServiceStore for ApiServiceStore {
    fn served(&self) -> Vec<(String, String, bool)> {
        let served = registry::catalog::served();
        let mut out = vec![(String::new(), "v1".to_string(), false)];
        for (g, vs) in crate::endpoints::discovery::groups() {
            let custom = served.iter().any(|r| r.group == g && r.custom.is_some());
            out.extend(vs.iter().map(|v| (g.to_string(), v.to_string(), custom)));
        }
        out
    }

    async fn list(&self) -> Vec<Value> {
        let def = &registry::resources::APISERVICES;
        let Ok(cacher) = self.0.cacher(def) else {
            return Vec::new();
        };
        if cacher.wait_fresh().await.is_err() {
            return Vec::new();
        }
        let prefix = format!("/registry/{}/", def.storage_prefix);
        let list = cacher.list(&prefix, None, 0, &|_| true).await;
        list.items
            .iter()
            .filter_map(|o| serde_json::from_slice::<Value>(&o.raw).ok())
            .collect()
    }

    async fn create(&self, obj: Value) -> Result<(), String> {
        let def = &registry::resources::APISERVICES;
        match handlers::create_object(&self.0, def, None, obj, false, None, "Update").await {
            Ok(_) | Err(ApiError { code: 409, .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn update(&self, current: &Value, new: Value, status: bool) -> Result<(), String> {
        let def = &registry::resources::APISERVICES;
        let name = registry::fields::name(current).to_string();
        let rv = registry::fields::str_at(current, &["metadata", "resourceVersion"])
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let scope = if status {
            crate::write::UpdateScope::Status
        } else {
            crate::write::UpdateScope::Main
        };
        let r = handlers::write_update(
            &self.0,
            def,
            None,
            &name,
            current.clone(),
            rv,
            new,
            scope,
            false,
            None,
            "Update",
        )
        .await;
        match r {
            Ok(_)
            | Err(ApiError {
                code: 404 | 409, ..
            }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), String> {
        let def = &registry::resources::APISERVICES;
        let opts = handlers::DeleteOpts::default();
        match handlers::delete_object(&self.0, def, None, name, &opts).await {
            Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `componentstatus`'s view of the apiserver: Leases and the storage backend.
struct StatusProbe<'a>(&'a AppState);

#[async_trait::async_trait]
impl crate::endpoints::componentstatus::Probe for StatusProbe<'_> {
    async fn lease(&self, name: &str) -> Option<Value> {
        let key = registry::object_key(&registry::resources::LEASES, Some("kube-system"), name);
        let kv = self.0.storage.get(&key).await.ok()??;
        serde_json::from_slice(&kv.value).ok()
    }

    async fn storage(&self) -> Result<(), String> {
        self.0
            .storage
            .current_revision()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Serves `GET /api/v1/componentstatuses[/<name>]` (JSON or Table) from what
/// [`crate::endpoints::componentstatus`] decides; other verbs are refused.
async fn component_statuses(
    state: &AppState,
    method: &Method,
    headers: &axum::http::HeaderMap,
    rest: &[&str],
    query: &Query,
) -> ApiResult<Response> {
    use crate::endpoints::componentstatus::{self as cs, Refusal};
    if method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let answer = cs::get(&StatusProbe(state), rest)
        .await
        .map_err(|r| match r {
            Refusal::UnknownComponent(message) => ApiError::internal(message),
            Refusal::NoSuchResource => ApiError::no_such_resource(),
        })?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let body = match request::response_format(accept) {
        request::ResponseFormat::Table => crate::endpoints::table::build(
            &registry::resources::COMPONENTSTATUSES,
            answer.items(),
            query,
            None,
            None,
            true,
        ),
        _ => answer.into_json(),
    };
    let mut r = json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    // As Kubernetes since 1.19.
    handlers::add_warnings(&mut r, &[cs::DEPRECATION.to_string()]);
    Ok(r)
}

/// `metrics_api`'s view of the apiserver: Nodes and Pods from the watch caches, and the
/// kubelets' `/metrics/resource` through the kubelet client.
struct MetricsCluster(Arc<AppState>);

impl MetricsCluster {
    async fn list(
        &self,
        def: &ResourceDef,
        prefix: &str,
        keep: crate::metrics_api::Keep<'_>,
    ) -> ApiResult<Vec<crate::metrics_api::Object>> {
        let list = self
            .0
            .cacher(def)?
            .list(prefix, None, 0, &|o| keep(&o.name, &o.namespace, &o.labels))
            .await;
        Ok(list
            .items
            .iter()
            .map(|o| crate::metrics_api::Object {
                name: o.name.clone(),
                namespace: o.namespace.clone(),
                labels: o.labels.clone(),
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl crate::metrics_api::Cluster for MetricsCluster {
    type Error = ApiError;

    async fn nodes(
        &self,
        keep: crate::metrics_api::Keep<'_>,
    ) -> ApiResult<Vec<crate::metrics_api::Object>> {
        let nodes = &registry::resources::NODES;
        let prefix = format!("/registry/{}/", nodes.storage_prefix);
        self.list(nodes, &prefix, keep).await
    }

    async fn pods(
        &self,
        namespace: Option<&str>,
        keep: crate::metrics_api::Keep<'_>,
    ) -> ApiResult<Vec<crate::metrics_api::Object>> {
        let pods = &registry::resources::PODS;
        let prefix = match namespace {
            Some(ns) => format!("/registry/{}/{ns}/", pods.storage_prefix),
            None => format!("/registry/{}/", pods.storage_prefix),
        };
        self.list(pods, &prefix, keep).await
    }

    async fn scrape(&self, node: &str) -> ApiResult<String> {
        let (addr, port) = crate::endpoints::proxy::kubelet_address(&self.0, node).await?;
        let resp =
            crate::endpoints::proxy::kubelet_get(&self.0, &addr, port, "/metrics/resource", node)
                .await?;
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .map_err(|e| ApiError::internal(format!("reading /metrics/resource of {node}: {e}")))?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Serves `/apis/metrics.k8s.io/<version>/<rest>` from what [`crate::metrics_api`] answers.
async fn resource_metrics(
    state: &Arc<AppState>,
    method: &Method,
    version: &str,
    rest: &[&str],
    query: &Query,
    accept: &str,
) -> ApiResult<Response> {
    use crate::metrics_api::{self as metrics, Refusal};
    let ok = |v: &Value| json_response(StatusCode::OK, serde_json::to_vec(v).unwrap_or_default());
    if version != metrics::VERSION {
        return Err(ApiError::no_such_resource());
    }
    if rest.is_empty() {
        let list = discovery::resource_list(metrics::GROUP, metrics::VERSION)
            .ok_or_else(ApiError::no_such_resource)?;
        return Ok(ok(&list));
    }
    let req = metrics::Request {
        method: method.as_str(),
        rest,
        watch: query.flag("watch"),
        label_selector: query.get("labelSelector").unwrap_or(""),
        field_selector: query.get("fieldSelector").unwrap_or(""),
        as_table: matches!(
            request::response_format(Some(accept)),
            request::ResponseFormat::Table
        ),
        include_object: query.get("includeObject"),
    };
    let cluster = MetricsCluster(state.clone());
    let body = metrics::get(&cluster, &state.resource_metrics, req)
        .await
        .map_err(|r| match r {
            Refusal::Cluster(e) => e,
            Refusal::NoSuchResource => ApiError::no_such_resource(),
            Refusal::MethodNotAllowed(message) => ApiError::new(405, "MethodNotAllowed", message),
            Refusal::BadRequest(message) => ApiError::bad_request(message),
            Refusal::NotFound { resource, name } => {
                let def = if resource == "nodes" {
                    &registry::resources::NODES
                } else {
                    &registry::resources::PODS
                };
                ApiError::not_found(def, &name)
            }
            Refusal::NoMetrics { resource, name } => {
                ApiError::not_found_gr(metrics::GROUP, resource, &name)
            }
        })?;
    Ok(ok(&body))
}
