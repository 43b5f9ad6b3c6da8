//! The HTTPS listener: TLS handshakes, client-certificate identities, and HTTP/1.1 + HTTP/2
//! serving of the axum router with upgrades (exec, port-forward) and long-lived streams (watch).
//!
//! Every request gets two extensions: [`ConnectInfo<SocketAddr>`] with the peer address, and,
//! when the client presented a certificate (already verified against the cluster CA by rustls),
//! [`ClientCertIdentity`] with the user it names (CN = user, O = groups).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::auth::{ClientCertIdentity, UserInfo};

/// A client that has not completed the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After the shutdown signal, open connections (watches, exec streams) get this long to finish
/// before `serve` returns anyway.
const GRACEFUL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting, asks open
/// connections to finish (HTTP/2 GOAWAY, HTTP/1.1 close after the current response) and waits for
/// them at most a few seconds. Each connection runs in its own task; a failed handshake is logged
/// at debug level and does not affect other connections.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving HTTPS");
    }

    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Per-connection errors (e.g. ECONNABORTED) and fd exhaustion: back off briefly.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some((io, identity)) = handshake(&acceptor, tcp, peer).await else {
                return;
            };
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let app = app.clone();
                req.extensions_mut().insert(ConnectInfo(peer));
                if let Some(identity) = &identity {
                    req.extensions_mut().insert(identity.clone());
                }
                let (req, held) = hold_request_body(req);
                async move {
                    let resp = app
                        .oneshot(req)
                        .await
                        .unwrap_or_else(|never| match never {});
                    Ok::<_, Infallible>(
                        resp.map(|body| axum::body::Body::new(HeldUntilSent { body, held })),
                    )
                }
            });
            let conn = builder
                .serve_connection_with_upgrades(io, service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                debug!(%peer, error = %e, "connection ended with error");
            }
        });
    }

    drop(listener);
    info!("HTTPS server shutting down");
    if tokio::time::timeout(GRACEFUL_SHUTDOWN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        info!("open connections did not finish in time; closing them");
    }
    Ok(())
}

/// A request body that a handler dropped unread (an early 401, 403 or 413), kept until the
/// response has been sent. Over HTTP/2, dropping it first makes h2 reset the stream with CANCEL
/// before the response goes out, and the client sees no status at all. After the response it
/// is read to its end in the background (up to [`DRAIN_LIMIT`] bytes and [`DRAIN_TIMEOUT`]), so
/// the client finishes its upload and the stream ends cleanly; beyond those the stream ends with
/// RST_STREAM(NO_ERROR), as RFC 9113 §8.1 allows (some clients, e.g. curl 7.x, report that as
/// an error, hence the drain).
type HeldBody = Arc<std::sync::Mutex<Option<Incoming>>>;

/// How much of an unread request body is drained after an early response.
const DRAIN_LIMIT: usize = 16 << 20;
/// How long an unread request body is drained after an early response.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut read = 0usize;
    while read <= DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
}

/// Wraps the request body so that, when the router drops it, it moves into the returned slot.
fn hold_request_body(req: http::Request<Incoming>) -> (http::Request<KeepUnread>, HeldBody) {
    let held: HeldBody = Arc::default();
    let req = req.map(|body| KeepUnread {
        body: Some(body),
        slot: held.clone(),
    });
    (req, held)
}

/// The request body as the router sees it; on drop it parks the body in its slot.
struct KeepUnread {
    body: Option<Incoming>,
    slot: HeldBody,
}

impl Drop for KeepUnread {
    fn drop(&mut self) {
        if let (Some(body), Ok(mut slot)) = (self.body.take(), self.slot.lock()) {
            *slot = Some(body);
        }
    }
}

impl hyper::body::Body for KeepUnread {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.body.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

/// A response body that keeps the parked request body alive until it is dropped itself, which
/// hyper does once the response is complete; then the request body is drained.
struct HeldUntilSent {
    body: axum::body::Body,
    held: HeldBody,
}

impl Drop for HeldUntilSent {
    fn drop(&mut self) {
        let parked = self.held.lock().ok().and_then(|mut s| s.take());
        if let (Some(body), Ok(rt)) = (parked, tokio::runtime::Handle::try_current()) {
            rt.spawn(drain(body));
        }
    }
}

impl hyper::body::Body for HeldUntilSent {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Completes the TLS handshake and reads the verified client certificate's identity, if any.
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(
    TokioIo<tokio_rustls::server::TlsStream<TcpStream>>,
    Option<ClientCertIdentity>,
)> {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| identity_from_cert(leaf, peer));
    Some((TokioIo::new(stream), identity))
}

/// The user named by a (verified) client certificate: CN is the user, each O a group.
fn identity_from_cert(der: &[u8], peer: SocketAddr) -> Option<ClientCertIdentity> {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert,
        Err(e) => {
            debug!(%peer, error = %e, "cannot parse client certificate");
            return None;
        }
    };
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())?
        .to_string();
    let organizations = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(ClientCertIdentity(UserInfo::from_cert(
        common_name,
        organizations,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Pki;
    use axum::Extension;
    use axum::routing::get;
    use http_body_util::{BodyExt, Empty};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    async fn whoami(
        identity: Option<Extension<ClientCertIdentity>>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ) -> String {
        let user = match identity {
            Some(Extension(ClientCertIdentity(user))) => {
                format!("{} {}", user.name, user.groups.join(","))
            }
            None => "anonymous".to_string(),
        };
        format!("{user} from {}", peer.ip())
    }

    struct Server {
        addr: SocketAddr,
        pki: Pki,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
        _dir: tempfile::TempDir,
    }

    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/whoami", get(whoami)).route(
            "/reject",
            axum::routing::post(|| async { (http::StatusCode::UNAUTHORIZED, "no") }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let tls = pki.rustls_server_config().unwrap();
        let task = tokio::spawn(serve(listener, app, tls, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            pki,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    fn client_config(
        ca_pem: &str,
        client: Option<(&str, &str)>,
        alpn: &[u8],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// GET /whoami over a fresh TLS connection; returns the HTTP version and body.
    async fn get_whoami(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<(http::Version, String), Box<dyn std::error::Error + Send + Sync>> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let uri = format!("https://localhost:{}/whoami", addr.port());
        let response = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            let req = http::Request::get(uri).body(Empty::<bytes::Bytes>::new())?;
            sender.send_request(req).await?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let req = http::Request::get(uri)
                .header(http::header::HOST, "localhost")
                .body(Empty::<bytes::Bytes>::new())?;
            sender.send_request(req).await?
        };
        let version = response.version();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((version, String::from_utf8(body.to_vec())?))
    }

    /// An answer sent before the request body is read (401 to an anonymous POST, 413) reaches
    /// an HTTP/2 client intact, again and again on one connection.
    #[tokio::test]
    async fn early_answers_reach_http2_clients() {
        let mut server = start().await;
        let ca = server.pki.ca_cert_pem().to_string();
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_config(&ca, None, b"h2"))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let uri = format!("https://localhost:{}/reject", server.addr.port());
        for _ in 0..5 {
            let body = http_body_util::Full::new(bytes::Bytes::from(vec![b'a'; 2 << 20]));
            let req = http::Request::post(&uri).body(body).unwrap();
            let resp = sender
                .send_request(req)
                .await
                .expect("a response, not a reset");
            assert_eq!(resp.status(), http::StatusCode::UNAUTHORIZED);
            let text = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&text[..], b"no");
        }
        server.stop.take().map(|s| s.send(()));
        let _ = server.task.await;
    }

    #[tokio::test]
    async fn identities_over_http1_and_http2() {
        let mut server = start().await;
        let ca = server.pki.ca_cert_pem().to_string();
        let (cert, key) = server
            .pki
            .issue_client_cert("lotse-admin", &["system:masters"])
            .unwrap();

        let (version, body) = get_whoami(server.addr, client_config(&ca, None, b"http/1.1"))
            .await
            .unwrap();
        assert_eq!(version, http::Version::HTTP_11);
        assert_eq!(body, "anonymous from 127.0.0.1");

        let (version, body) = get_whoami(
            server.addr,
            client_config(&ca, Some((&cert, &key)), b"http/1.1"),
        )
        .await
        .unwrap();
        assert_eq!(version, http::Version::HTTP_11);
        assert_eq!(
            body,
            "lotse-admin system:masters,system:authenticated from 127.0.0.1"
        );

        let (version, body) =
            get_whoami(server.addr, client_config(&ca, Some((&cert, &key)), b"h2"))
                .await
                .unwrap();
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(
            body,
            "lotse-admin system:masters,system:authenticated from 127.0.0.1"
        );

        let (version, body) = get_whoami(server.addr, client_config(&ca, None, b"h2"))
            .await
            .unwrap();
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(body, "anonymous from 127.0.0.1");

        if let Some(stop) = server.stop.take() {
            let _ = stop.send(());
        }
        server.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn rejects_client_cert_from_another_ca() {
        let server = start().await;
        let other_dir = tempfile::tempdir().unwrap();
        let other = Pki::load_or_create(other_dir.path(), &[]).unwrap();
        let (cert, key) = other
            .issue_client_cert("mallory", &["system:masters"])
            .unwrap();
        let config = client_config(server.pki.ca_cert_pem(), Some((&cert, &key)), b"h2");
        assert!(get_whoami(server.addr, config).await.is_err());

        // The server keeps serving after a failed handshake.
        let config = client_config(server.pki.ca_cert_pem(), None, b"h2");
        let (_, body) = get_whoami(server.addr, config).await.unwrap();
        assert_eq!(body, "anonymous from 127.0.0.1");
    }
}
