//! The reverse proxy: HTTP/1.1 on hyper, TLS with rustls and SNI from the route table.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use crate::Error;
use crate::routes::{Decision, Table};

type Body = BoxBody<Bytes, hyper::Error>;

/// Proxies requests by the current route table.
#[derive(Clone)]
pub struct Proxy {
    table: Arc<ArcSwap<Table>>,
    client: Client<HttpConnector, Incoming>,
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The request's host, without port, lower-cased.
fn host_of(req: &Request<Incoming>) -> String {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    let h = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => raw.split(':').next().unwrap_or(""),
    };
    h.to_ascii_lowercase()
}

/// Removes the hop-by-hop headers (RFC 9110 7.6.1) and those the Connection header names.
fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    let named: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        h.remove(n);
    }
}

impl Proxy {
    /// A proxy reading `table`.
    pub fn new(table: Arc<ArcSwap<Table>>) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        Proxy {
            table,
            client: Client::builder(TokioExecutor::new()).build(conn),
        }
    }

    /// Answers one request.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Result<Response<Body>, hyper::Error> {
        let host = host_of(&req);
        let decision = self.table.load().route(&host, req.uri().path());
        let backend = match decision {
            Decision::NotFound => return Ok(text(StatusCode::NOT_FOUND, "404 page not found")),
            Decision::Backend(b) => b,
        };
        let Some(addr) = backend.pick() else {
            return Ok(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Temporarily Unavailable",
            ));
        };
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let uri: Uri = match format!("http://{addr}{pq}").parse() {
            Ok(u) => u,
            Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "400 bad request")),
        };
        if !req.headers().contains_key(HOST)
            && let Ok(v) = HeaderValue::from_str(&host)
        {
            req.headers_mut().insert(HOST, v);
        }
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        h.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        if let Ok(v) = HeaderValue::from_str(&host) {
            h.insert("x-forwarded-host", v);
        }
        strip_hop_by_hop(req.headers_mut());
        match self.client.request(req).await {
            Ok(mut resp) => {
                // The backend's `Connection: close` ends its own connection, not the client's.
                strip_hop_by_hop(resp.headers_mut());
                Ok(resp.map(|b| b.boxed()))
            }
            Err(e) => {
                tracing::debug!(backend = %backend.name, %addr, error = %e, "backend request failed");
                Ok(text(StatusCode::BAD_GATEWAY, "502 Bad Gateway"))
            }
        }
    }

    async fn serve_conn<S>(self, io: S, peer: SocketAddr, tls: bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = service_fn(move |req| {
            let p = self.clone();
            async move { p.handle(req, peer, tls).await }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await
        {
            tracing::debug!(%peer, error = %e, "connection ended");
        }
    }

    /// Serves plain HTTP on `listener`.
    pub async fn serve_http(self, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(self.clone().serve_conn(stream, peer, false));
        }
    }

    /// Serves HTTPS on `listener`.
    pub async fn serve_https(self, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, p) = (acceptor.clone(), self.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(s) => p.serve_conn(s, peer, true).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake"),
                }
            });
        }
    }
}

/// Picks the certificate by SNI from the current table; a self-signed fallback otherwise (as
/// ingress-nginx's "Kubernetes Ingress Controller Fake Certificate").
#[derive(Debug)]
struct Resolver {
    table: Arc<ArcSwap<Table>>,
    fallback: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("hosts", &self.hosts.keys().collect::<Vec<_>>())
            .field("certs", &self.certs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|n| self.table.load().cert(n))
            .or_else(|| Some(self.fallback.clone()))
    }
}

/// The rustls server configuration resolving certificates from `table`.
pub fn tls_config(table: Arc<ArcSwap<Table>>) -> Result<Arc<rustls::ServerConfig>, Error> {
    let fake = rcgen::generate_simple_self_signed(vec!["ingress.local".to_string()])
        .map_err(|e| Error::Tls(e.to_string()))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(fake.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let fallback = CertifiedKey::from_der(vec![fake.cert.der().clone()], key, &provider)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver {
            table,
            fallback: Arc::new(fallback),
        }));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    #[test]
    fn fallback_tls_config_builds() {
        let t = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(crate::Table::default()));
        assert!(super::tls_config(t).is_ok());
    }
}
