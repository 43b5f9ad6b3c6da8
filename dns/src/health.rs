//! The liveness and readiness endpoints of a DNS pod, as CoreDNS's `health` (`:8080/health`)
//! and `ready` (`:8181/ready`) plugins serve them: `200 OK` with body `OK`; `/ready` answers
//! `503` until the first lists of Services, EndpointSlices and Namespaces are in.
use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `path` on `listener`: `200 OK` while `ready` holds true, else `503` naming what is
/// not ready yet (CoreDNS lists the plugins that are not ready).
pub async fn serve(listener: TcpListener, path: &'static str, ready: watch::Receiver<bool>) {
    let app = Router::new().route(
        path,
        get(move || {
            let ready = *ready.borrow();
            async move {
                if ready {
                    (StatusCode::OK, "OK")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "kubernetes")
                }
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(path, error = %e, "health endpoint stopped");
    }
}

/// Binds the TCP listener of a health endpoint.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Bind(addr, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn ready_answers_503_until_the_view_is_in() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = watch::channel(false);
        tokio::spawn(serve(listener, "/ready", rx));
        let r = get(addr, "/ready").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        tx.send(true).expect("send");
        let r = get(addr, "/ready").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("OK"), "{r}");
        let r = get(addr, "/health").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    }
}
