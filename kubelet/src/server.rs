//! The kubelet's HTTPS API on port 10250, which the apiserver proxies `pods/log` to:
//! `GET /containerLogs/{namespace}/{pod}/{container}?follow=&tailLines=&previous=&timestamps=&limitBytes=`
//! (as the Kubernetes kubelet serves it), `GET|POST /exec/{namespace}/{pod}/{container}`
//! (WebSocket or SPDY, see [`crate::exec`] and [`crate::channels`]),
//! `GET|POST /attach/{namespace}/{pod}/{container}` (see [`crate::attach`]),
//! `GET|POST /portForward/{namespace}/{pod}` (SPDY, or SPDY tunnelled in WebSocket, see
//! [`crate::portforward`]), `GET /stats/summary` and `GET /metrics/resource` (see
//! [`crate::stats`]) and `GET /healthz`.
//!
//! Only the apiserver is served: every request but `/healthz` needs a client certificate signed
//! by the cluster CA ([`crate::Config::client_ca_der`], Kubernetes' `--client-ca-file`) naming
//! an authorized identity — group `system:masters` or user `kube-apiserver-kubelet-client`, which
//! the apiserver presents. Without a certificate the answer is 401, with another identity 403.
//! The serving certificate is the cluster CA's with `--rotate-server-certificates`
//! ([`crate::serving_cert`]; what `lotse up` and `lotse join` run), else self-signed (an
//! apiserver without `--kubelet-certificate-authority` does not verify it, as Kubernetes').
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_cri::v1 as cri;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};

use crate::channels::text;
use crate::{Error, Kubelet};

/// Serves the kubelet API on `addr` until the task is aborted.
pub async fn serve(k: Arc<Kubelet>, addr: std::net::SocketAddr) -> Result<(), Error> {
    let sans = vec![
        k.config.node_name.clone(),
        k.config.node_ip.clone(),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    let serving =
        crate::serving_cert::ServingCert::new(&k.config.root_dir, &sans, &k.config.node_ip)?;
    if k.config.rotate_server_certificates {
        // The CA-signed certificate names only the node's own addresses (the csrapproving
        // controller checks them against the Node).
        tokio::spawn(serving.clone().rotate(
            k.client.clone(),
            k.config.root_dir.clone(),
            k.config.node_name.clone(),
            sans[..2].to_vec(),
            k.config.node_ip.clone(),
        ));
    }
    let tls = tls_config(serving, &k.config.client_ca_der)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Runtime(format!("listen on {addr}: {e}")))?;
    tracing::info!(%addr, "kubelet API listening");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/stats/summary", get(crate::stats::summary))
        .route("/metrics/resource", get(crate::stats::resource_metrics))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route(
            "/exec/{ns}/{pod}/{container}",
            get(crate::exec::exec).post(crate::exec::exec),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            get(crate::attach::attach).post(crate::attach::attach),
        )
        .route(
            "/portForward/{ns}/{pod}",
            get(crate::portforward::port_forward).post(crate::portforward::port_forward),
        )
        .with_state(k);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        // Small streaming frames (exec, port-forward) must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| identity(c.as_ref()));
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    let denied = if req.uri().path() == "/healthz" {
                        None
                    } else {
                        authorize(identity.as_ref(), req.method(), req.uri().path())
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(match denied {
                            Some(r) => r,
                            None => tower::ServiceExt::oneshot(app, req)
                                .await
                                .unwrap_or_else(|never| match never {}),
                        })
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// A client certificate's user (CN) and groups (O).
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// Common name.
    pub user: String,
    /// Organizations.
    pub groups: Vec<String>,
}

/// The user the apiserver's kubelet client certificate names (as kubeadm issues it).
pub const APISERVER_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

fn identity(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(Identity { user, groups })
}

/// The `nodes` subresource and verb a kubelet API request is authorized as (Kubernetes'
/// kubelet authorizer: `/stats/*` → `nodes/stats`, `/metrics/*` → `nodes/metrics`, `/logs/*` →
/// `nodes/log`, `/spec/*` → `nodes/spec`, everything else `nodes/proxy`).
pub fn node_subresource(method: &axum::http::Method, path: &str) -> (&'static str, &'static str) {
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let sub = if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else if under("/spec") {
        "spec"
    } else {
        "proxy"
    };
    let verb = match *method {
        axum::http::Method::POST => "create",
        axum::http::Method::PUT => "update",
        axum::http::Method::PATCH => "patch",
        axum::http::Method::DELETE => "delete",
        _ => "get",
    };
    (verb, sub)
}

/// `None` when `id` may use the kubelet API, else the 401/403 answer.
pub fn authorize(
    id: Option<&Identity>,
    method: &axum::http::Method,
    path: &str,
) -> Option<Response> {
    match id {
        None => Some(text(StatusCode::UNAUTHORIZED, "Unauthorized".into())),
        Some(i)
            if i.user == APISERVER_CLIENT_USER
                || i.groups.iter().any(|g| g == "system:masters") =>
        {
            None
        }
        Some(i) => {
            let (verb, sub) = node_subresource(method, path);
            Some(text(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})",
                    i.user
                ),
            ))
        }
    }
}

fn tls_config(
    serving: Arc<crate::serving_cert::ServingCert>,
    client_ca_der: &[Vec<u8>],
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in client_ca_der {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| Error::Runtime(format!("client CA: {e}")))?;
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    // Clients without a certificate still get through the handshake, to be answered 401.
    let builder = if roots.is_empty() {
        tracing::warn!("no client CA: every kubelet API request but /healthz is refused");
        builder.with_no_client_auth()
    } else {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Runtime(format!("client verifier: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut cfg = builder.with_cert_resolver(serving);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Query parameters of `containerLogs` (Kubernetes' PodLogOptions).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogOptions {
    follow: Option<bool>,
    tail_lines: Option<i64>,
    previous: Option<bool>,
    timestamps: Option<bool>,
    limit_bytes: Option<i64>,
}

/// One line of a CRI log file: `<RFC3339Nano> <stream> <P|F> <message>`.
fn parse_cri_line(line: &str) -> Option<(&str, bool, &str)> {
    let mut it = line.splitn(4, ' ');
    let ts = it.next()?;
    let _stream = it.next()?;
    let tag = it.next()?;
    let msg = it.next().unwrap_or("");
    Some((ts, tag.starts_with('F'), msg))
}

fn render(line: &str, timestamps: bool) -> Option<String> {
    let (ts, full, msg) = parse_cri_line(line.trim_end_matches('\n'))?;
    let nl = if full { "\n" } else { "" };
    Some(if timestamps {
        format!("{ts} {msg}{nl}")
    } else {
        format!("{msg}{nl}")
    })
}

/// The log files of a container, by attempt (ascending).
pub(crate) fn log_files(dir: &std::path::Path) -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e
                        .file_name()
                        .to_string_lossy()
                        .strip_suffix(".log")?
                        .parse::<u32>()
                        .ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn running(k: &Kubelet, uid: &str, container: &str) -> bool {
    let filter = crate::stream::container_filter(uid, container);
    let mut rt = k.cri.rt.clone();
    rt.list_containers(cri::ListContainersRequest {
        filter: Some(filter),
    })
    .await
    .map(|r| {
        r.into_inner()
            .containers
            .iter()
            .any(|c| c.state == cri::ContainerState::ContainerRunning as i32)
    })
    .unwrap_or(false)
}

async fn container_logs(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(o): Query<LogOptions>,
) -> Response {
    let p = match crate::stream::get_pod(&k, &ns, &pod).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let dir = k.layout().pod_logs(&ns, &pod, &uid).join(&container);
    let files = log_files(&dir);
    let chosen = if o.previous.unwrap_or(false) {
        files.len().checked_sub(2).and_then(|i| files.get(i))
    } else {
        files.last()
    };
    let Some((attempt, path)) = chosen.cloned() else {
        let msg = if o.previous.unwrap_or(false) {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return text(StatusCode::BAD_REQUEST, msg);
    };
    let ts = o.timestamps.unwrap_or(false);
    let content = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let lines: Vec<&str> = content.lines().collect();
    let skip = match o.tail_lines {
        Some(n) if n >= 0 => lines.len().saturating_sub(n as usize),
        _ => 0,
    };
    let mut head: String = lines[skip..].iter().filter_map(|l| render(l, ts)).collect();
    if let Some(limit) = o.limit_bytes.filter(|l| *l > 0) {
        head.truncate(limit as usize);
    }
    let follow = o.follow.unwrap_or(false) && !o.previous.unwrap_or(false);
    let pos = content.len() as u64;
    let ok = |body: Body| {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
            .unwrap_or_default()
    };
    if !follow {
        return ok(Body::from(head));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(head)).await.is_err() {
            return;
        }
        let Ok(mut f) = tokio::fs::File::open(&path).await else {
            return;
        };
        if f.seek(std::io::SeekFrom::Start(pos)).await.is_err() {
            return;
        }
        let mut r = tokio::io::BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) => {
                    // End of file: stop once the container has exited or been replaced.
                    let newer = log_files(&dir)
                        .last()
                        .map(|(n, _)| *n > attempt)
                        .unwrap_or(false);
                    if newer || !running(&k, &uid, &container).await {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(_) if line.ends_with('\n') => {
                    if let Some(out) = render(&line, ts)
                        && tx.send(Ok(out)).await.is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {
                    // A line still being written: wait for its end.
                    let mut rest = String::new();
                    while !rest.ends_with('\n') {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if r.read_line(&mut rest).await.unwrap_or(0) == 0
                            && !running(&k, &uid, &container).await
                        {
                            break;
                        }
                    }
                    line.push_str(&rest);
                    if let Some(out) = render(&line, ts)
                        && tx.send(Ok(out)).await.is_err()
                    {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    ok(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_authorized_as_kubernetes_node_subresources() {
        use axum::http::Method;
        assert_eq!(
            node_subresource(&Method::GET, "/stats/summary"),
            ("get", "stats")
        );
        assert_eq!(
            node_subresource(&Method::GET, "/metrics/resource"),
            ("get", "metrics")
        );
        assert_eq!(
            node_subresource(&Method::GET, "/metrics"),
            ("get", "metrics")
        );
        assert_eq!(
            node_subresource(&Method::POST, "/exec/ns/p/c"),
            ("create", "proxy")
        );
        assert_eq!(node_subresource(&Method::GET, "/statsx"), ("get", "proxy"));
        let other = Identity {
            user: "alice".into(),
            groups: vec![],
        };
        let r = authorize(Some(&other), &Method::GET, "/stats/summary").expect("refused");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let apiserver = Identity {
            user: APISERVER_CLIENT_USER.into(),
            groups: vec![],
        };
        assert!(authorize(Some(&apiserver), &Method::GET, "/metrics/resource").is_none());
        let r = authorize(None, &Method::GET, "/metrics/resource").expect("refused");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn cri_log_lines() {
        assert_eq!(
            render("2026-01-01T00:00:00.1Z stdout F hello world\n", false).as_deref(),
            Some("hello world\n")
        );
        assert_eq!(
            render("2026-01-01T00:00:00.1Z stderr P part", true).as_deref(),
            Some("2026-01-01T00:00:00.1Z part")
        );
    }
}
