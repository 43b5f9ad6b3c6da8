//! Pod subresources served by the node's kubelet (`log`, `exec`, `portforward`).
//!
//! `pods/log` is proxied to the kubelet's `GET /containerLogs/{ns}/{pod}/{container}` on the
//! node's InternalIP and `status.daemonEndpoints.kubeletEndpoint.Port` (HTTPS; the kubelet's
//! certificate is not verified, as in Kubernetes without `--kubelet-certificate-authority`).
//! The response body is streamed through, so `follow=true` works.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, header};
use axum::response::Response;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;

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
    if sub != "log" {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            format!(
                "pods/{sub} is served by the kubelet of node {node:?}, and proxying it is not available in this build"
            ),
        ));
    }
    let ns = ctx.rp.namespace.as_deref().unwrap_or("default");
    let container = match ctx.query.get("container").filter(|c| !c.is_empty()) {
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
    };
    let nodes = crate::registry::lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes resource missing"))?;
    let (node_obj, _) = get_current(ctx.state, nodes, None, node).await?;
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
    kubelet_get(&addr, port as u16, &path, node).await
}

/// GET `path` from a kubelet over HTTPS and stream its answer back.
async fn kubelet_get(host: &str, port: u16, path: &str, node: &str) -> ApiResult<Response> {
    let unavailable = |e: String| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("error talking to the kubelet of node {node:?} at {host}:{port}: {e}"),
        )
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| unavailable(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(conn);
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
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = String::from_utf8_lossy(&bytes).trim().to_string();
        return Err(match parts.status.as_u16() {
            404 => ApiError::new(404, "NotFound", msg),
            _ => ApiError::bad_request(msg),
        });
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
