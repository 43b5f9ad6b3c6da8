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
                async move {
                    Ok::<_, Infallible>(
                        app.oneshot(req)
                            .await
                            .unwrap_or_else(|never| match never {}),
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
        let app = axum::Router::new().route("/whoami", get(whoami));
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
