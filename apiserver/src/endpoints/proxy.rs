//! Pod subresources served by the node's kubelet (`log`, `exec`, `portforward`).
//!
//! `pods/log` is proxied to the kubelet's `GET /containerLogs/{ns}/{pod}/{container}` on the
//! node's InternalIP and `status.daemonEndpoints.kubeletEndpoint.Port` (HTTPS; the kubelet's
//! certificate is not verified, as in Kubernetes without `--kubelet-certificate-authority`).
//! The response body is streamed through, so `follow=true` works.
//!
//! `pods/exec`, `pods/attach` and `pods/portforward` arrive as HTTP upgrades (WebSocket, or
//! SPDY/3.1 from kubectl ≤ 1.30): [`pod_upgrade`] forwards the upgrade request to the kubelet's
//! `/exec/{ns}/{pod}/{container}` (`/attach/…`, `/portForward/{ns}/{pod}`) with its method and
//! negotiation headers and, once the kubelet answers `101 Switching Protocols`, splices the two
//! connections byte for byte (client and kubelet speak the streaming protocol end to end).
//!
//! Towards kubelets the apiserver authenticates with a client certificate issued by the cluster
//! CA for `kube-apiserver-kubelet-client` in group `system:masters` (Kubernetes'
//! `--kubelet-client-certificate`); the kubelet serves no one else.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, header};
use axum::response::Response;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;

use crate::endpoints::handlers::{Ctx, get_current};
use crate::error::{ApiError, ApiResult};
use crate::request::ResourcePath;
use crate::state::AppState;

/// The user of the apiserver's kubelet client certificate.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

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
    if sub != "log" {
        // exec, attach and portforward are served only as upgrades (see `pod_upgrade`).
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let ns = ctx.rp.namespace.as_deref().unwrap_or("default");
    let container = container_of(&pod, name, ctx.query.get("container"))?;
    let (addr, port) = kubelet_address(ctx.state, node).await?;
    let mut q: Vec<String> = Vec::new();
    for k in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "limitBytes",
        "sinceSeconds",
        "sinceTime",
    ] {
        if let Some(v) = ctx.query.get(k) {
            q.push(format!("{k}={v}"));
        }
    }
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", q.join("&"));
    kubelet_get(ctx.state, &addr, port, &path, node).await
}

/// The container a request names (`?container=`), or the pod's only container.
fn container_of(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    Ok(match asked.filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => {
            let names: Vec<&str> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.get("name").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            match names.as_slice() {
                [one] => one.to_string(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        names.join(" ")
                    )));
                }
            }
        }
    })
}

/// The kubelet endpoint of `node`: its InternalIP and `daemonEndpoints.kubeletEndpoint.Port`.
pub(crate) async fn kubelet_address(state: &Arc<AppState>, node: &str) -> ApiResult<(String, u16)> {
    let nodes = crate::registry::catalog::lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes resource missing"))?;
    let (node_obj, _) = get_current(state, nodes, None, node).await?;
    let addr = node_obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))
                .and_then(|x| x.get("address").and_then(Value::as_str))
        })
        .unwrap_or("127.0.0.1")
        .to_string();
    let port = node_obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        // The field really is spelled `Port` in the Kubernetes API.
        .or_else(|| node_obj.pointer("/status/daemonEndpoints/kubeletEndpoint/port"))
        .and_then(Value::as_i64)
        .unwrap_or(10250);
    Ok((addr, port as u16))
}

/// The TLS client configuration towards kubelets, with the apiserver's kubelet client
/// certificate (issued once per cluster CA and cached).
fn kubelet_tls(state: &AppState) -> ApiResult<Arc<rustls::ClientConfig>> {
    static CACHE: Mutex<Option<(String, Arc<rustls::ClientConfig>)>> = Mutex::new(None);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let kubelet_ca = state.security.kubelet_ca.get();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let builder = match kubelet_ca {
        // --kubelet-certificate-authority: each kubelet's serving certificate must chain to
        // it and name the address dialed.
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok) {
                roots.add(der).map_err(|e| {
                    ApiError::internal(format!("--kubelet-certificate-authority: {e}"))
                })?;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| ApiError::internal(format!("--kubelet-certificate-authority: {e}")))?;
            builder.with_webpki_verifier(verifier)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider))),
    };
    let Some((pki, _, _)) = state.security.issuer.get() else {
        let mut cfg = builder.with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        return Ok(Arc::new(cfg));
    };
    let ca = format!(
        "{}{}",
        pki.ca_cert_pem(),
        kubelet_ca.map_or("", |s| s.as_str())
    );
    if let Ok(c) = CACHE.lock()
        && let Some((cached_ca, cfg)) = c.as_ref()
        && *cached_ca == ca
    {
        return Ok(cfg.clone());
    }
    let (cert, key) = pki
        .issue_client_cert(KUBELET_CLIENT_USER, &["system:masters"])
        .map_err(|e| ApiError::internal(format!("kubelet client certificate: {e}")))?;
    use rustls::pki_types::pem::PemObject;
    let chain = vec![
        CertificateDer::from_pem_slice(cert.as_bytes())
            .map_err(|e| ApiError::internal(format!("kubelet client certificate: {e}")))?,
    ];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| ApiError::internal(format!("kubelet client key: {e}")))?;
    let mut cfg = builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| ApiError::internal(format!("kubelet client TLS: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    if let Ok(mut c) = CACHE.lock() {
        *c = Some((ca, cfg.clone()));
    }
    Ok(cfg)
}

fn unavailable(node: &str, host: &str, port: u16) -> impl Fn(String) -> ApiError {
    let (node, host) = (node.to_string(), host.to_string());
    move |e: String| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("error talking to the kubelet of node {node:?} at {host}:{port}: {e}"),
        )
    }
}

/// An HTTP/1.1 connection to a kubelet (TLS, client certificate), with upgrades enabled.
async fn kubelet_conn(
    state: &AppState,
    host: &str,
    port: u16,
    node: &str,
) -> ApiResult<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>> {
    let unavailable = unavailable(node, host, port);
    let cfg = kubelet_tls(state)?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    // Streaming sessions send small frames both ways (a port-forward's SYN_STREAM waits for its
    // SYN_REPLY): without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms each.
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string()).map_err(|e| unavailable(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(conn.with_upgrades());
    Ok(send)
}

/// The kubelet's non-success answer as a Status error.
async fn kubelet_error(status: http::StatusCode, body: hyper::body::Incoming) -> ApiError {
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg = String::from_utf8_lossy(&bytes).trim().to_string();
    match status.as_u16() {
        404 => ApiError::new(404, "NotFound", msg),
        401 | 403 => ApiError::new(
            500,
            "InternalError",
            format!("the kubelet refused the apiserver ({status}): {msg}"),
        ),
        _ => ApiError::bad_request(msg),
    }
}

/// Request headers an upgrade carries to the kubelet: the upgrade itself, WebSocket's
/// handshake and SPDY's subprotocol negotiation.
const UPGRADE_REQUEST_HEADERS: [&str; 7] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// Response headers of the kubelet's answer handed back to the client.
const UPGRADE_RESPONSE_HEADERS: [&str; 7] = [
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
    "x-accepted-stream-protocol-versions",
    "content-type",
];

/// The pod checks Kubernetes' pod strategy makes before streaming (`streamLocation`): the pod is
/// bound, not finished, and the container exists.
fn check_stream_target(pod: &Value, name: &str, container: &str) -> ApiResult<()> {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if phase == "Succeeded" || phase == "Failed" {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let known = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| pod.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .any(|c| c.get("name").and_then(Value::as_str) == Some(container));
    if !known {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    Ok(())
}

/// Proxies an upgrading `pods/exec`, `pods/attach` or `pods/portforward` request (WebSocket, or
/// SPDY/3.1 from kubectl ≤ 1.30) to the kubelet of the pod's node and splices the upgraded
/// connections byte for byte, as Kubernetes' upgrade-aware proxy does. Called before the body is
/// read, with the request's parts (their extensions carry the client connection's pending
/// upgrade).
///
/// A WebSocket upgrade arrives as `GET`, which RBAC checked as `get`; as Kubernetes 1.31+
/// (`AuthorizePodWebsocketUpgradeCreatePermission`) it must also be allowed to `create` the
/// subresource, the verb of the SPDY `POST`.
pub async fn pod_upgrade(
    state: &Arc<AppState>,
    rp: &ResourcePath,
    user: &crate::auth::UserInfo,
    parts: http::request::Parts,
) -> ApiResult<Response> {
    let name = rp.name.as_deref().unwrap_or("");
    let sub = rp.subresource.as_deref().unwrap_or("");
    let upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let websocket = upgrade.eq_ignore_ascii_case("websocket");
    if !websocket && !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade: upgrade {upgrade:?} is not supported (SPDY/3.1 or websocket)"
        )));
    }
    if !matches!(sub, "exec" | "attach" | "portforward") {
        return Err(ApiError::bad_request(format!(
            "pods/{sub} cannot be upgraded (exec, attach and portforward can)"
        )));
    }
    if parts.method == Method::GET {
        let query = crate::request::Query::parse(parts.uri.query());
        let attrs =
            crate::authorization::request_attributes(user, &Method::POST, parts.uri.path(), &query);
        state.authz().require(&attrs).await?;
    }
    let (pod, _) = get_current(state, rp.def, rp.namespace.as_deref(), name).await?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let ns = rp.namespace.as_deref().unwrap_or("default");
    let query = parts.uri.query().unwrap_or("");
    let path = if sub == "portforward" {
        format!("/portForward/{ns}/{name}?{query}")
    } else {
        let asked = crate::request::Query::parse(parts.uri.query());
        let container = container_of(&pod, name, asked.get("container"))?;
        check_stream_target(&pod, name, &container)?;
        format!("/{sub}/{ns}/{name}/{container}?{query}")
    };
    splice_upgrade(state, &node, &path, parts).await
}

/// `nodes/{name}/proxy/{path}`: the request is proxied to the node's kubelet at `/{path}` (as
/// Kubernetes does; RBAC checked `nodes/proxy`): upgrades (exec, attach, portForward over
/// WebSocket or SPDY) are spliced through, other `GET`s answered with the kubelet's response.
pub async fn node_proxy(
    state: &Arc<AppState>,
    node: &str,
    tail: &[&str],
    parts: http::request::Parts,
) -> ApiResult<Response> {
    let nodes = crate::registry::catalog::lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes resource missing"))?;
    // 404 for a node that does not exist.
    get_current(state, nodes, None, node).await?;
    let mut path = format!("/{}", tail.join("/"));
    if let Some(q) = parts.uri.query() {
        path = format!("{path}?{q}");
    }
    if parts.headers.contains_key(header::UPGRADE) {
        return splice_upgrade(state, node, &path, parts).await;
    }
    if parts.method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let (host, port) = kubelet_address(state, node).await?;
    kubelet_get(state, &host, port, &path, node).await
}

/// Sends the upgrade request in `parts` to the kubelet of `node` at `path` and, on `101`,
/// splices the client's and the kubelet's connections; the kubelet's refusal is handed back
/// as it is.
async fn splice_upgrade(
    state: &Arc<AppState>,
    node: &str,
    path: &str,
    mut parts: http::request::Parts,
) -> ApiResult<Response> {
    let node = node.to_string();
    let (host, port) = kubelet_address(state, &node).await?;
    let mut send = kubelet_conn(state, &host, port, &node).await?;
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .header(header::HOST, format!("{host}:{port}"));
    for h in UPGRADE_REQUEST_HEADERS {
        for v in parts.headers.get_all(h) {
            req = req.header(h, v);
        }
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = send
        .send_request(req)
        .await
        .map_err(|e| unavailable(&node, &host, port)(e.to_string()))?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // The kubelet's refusal goes back as it is (its status, headers and text), as
        // Kubernetes' upgrade-aware proxy hands the backend's response through.
        let (p, body) = resp.into_parts();
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut out = Response::builder().status(p.status);
        for h in UPGRADE_RESPONSE_HEADERS.iter().skip(4) {
            for v in p.headers.get_all(*h) {
                out = out.header(*h, v);
            }
        }
        return out
            .body(Body::from(bytes))
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    let client_up = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("connection cannot be upgraded (HTTP/2?)"))?;
    let kubelet_up = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match (client_up.await, kubelet_up.await) {
            (Ok(c), Ok(k)) => {
                let mut c = hyper_util::rt::TokioIo::new(c);
                let mut k = hyper_util::rt::TokioIo::new(k);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut k).await;
            }
            (c, k) => {
                tracing::debug!(client = ?c.err(), kubelet = ?k.err(), "streaming upgrade failed")
            }
        }
    });
    let mut out = Response::builder().status(http::StatusCode::SWITCHING_PROTOCOLS);
    for h in UPGRADE_RESPONSE_HEADERS.iter().take(5) {
        for v in resp.headers().get_all(*h) {
            out = out.header(*h, v);
        }
    }
    out.body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// GET `path` from a kubelet over HTTPS and stream its answer back.
pub(crate) async fn kubelet_get(
    state: &AppState,
    host: &str,
    port: u16,
    path: &str,
    node: &str,
) -> ApiResult<Response> {
    let unavailable = unavailable(node, host, port);
    let mut send = kubelet_conn(state, host, port, node).await?;
    let req = http::Request::get(path)
        .header(header::HOST, format!("{host}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (parts, body) = resp.into_parts();
    if !parts.status.is_success() {
        return Err(kubelet_error(parts.status, body).await);
    }
    Response::builder()
        .status(parts.status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::new(body))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Accepts any kubelet serving certificate (Kubernetes' default without a kubelet CA).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
