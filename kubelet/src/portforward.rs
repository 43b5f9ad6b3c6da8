//! `port-forward` on the kubelet API: `GET|POST /portForward/{namespace}/{pod}`, which the
//! apiserver proxies `pods/portforward` to.
//!
//! Two transports carry the same SPDY/3.1 session ([`crate::spdy`]): an HTTP upgrade to
//! `SPDY/3.1` with `X-Stream-Protocol-Version: portforward.k8s.io` (kubectl ≤ 1.30), and a
//! WebSocket with subprotocol `SPDY/3.1+portforward.k8s.io` whose binary messages carry the SPDY
//! bytes (kubectl 1.31+, Kubernetes' tunnelling of SPDY through WebSocket).
//!
//! For every forwarded connection the client opens two streams with the same `requestID` and
//! `port` headers: `streamType: error` and `streamType: data`. Once both are there, the kubelet
//! connects to `localhost:<port>` inside the pod's network namespace (IPv4, then IPv6, as
//! containerd's CRI streaming server does) and copies bytes both ways on the data stream. A
//! failure is written as text on the error stream, with the wording of the kubelet and
//! containerd, and the session stays up for the client's other connections.
//!
//! The connection is opened on a short-lived thread that enters the sandbox's network namespace
//! with `setns(2)` (the namespace path comes from CRI `PodSandboxStatus`'s verbose info, or
//! `/proc/<sandbox pid>/ns/net`); the socket keeps its namespace after the thread ends and is
//! handed to tokio.
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Kubelet;
use crate::channels::{self, text};
use crate::spdy;

/// The SPDY subprotocol of port forwarding.
pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// The WebSocket subprotocol tunnelling it (kubectl 1.31+).
pub const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// How long to wait for a stream's partner (Kubernetes' default stream creation timeout).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the pod's network lives.
#[derive(Clone, Debug)]
pub struct Target {
    /// The pod sandbox ID (containerd names the namespace by it in messages).
    pub sandbox_id: String,
    /// Path of the network namespace; None for a host-network pod.
    pub netns: Option<PathBuf>,
}

/// The handler: checks the request, answers `101 Switching Protocols` and serves the SPDY
/// session on the upgraded connection.
pub async fn port_forward(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod)): Path<(String, String)>,
    mut req: Request,
) -> Response {
    let transport = match negotiate(req.headers()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let target = match target(&k, &ns, &pod).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = transport.switching_protocols();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let io = TokioIo::new(up);
                match transport {
                    channels::Transport::Spdy { .. } => serve(spdy::serve(io), target).await,
                    channels::Transport::WebSocket { .. } => {
                        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                            io,
                            tokio_tungstenite::tungstenite::protocol::Role::Server,
                            None,
                        )
                        .await;
                        serve(spdy::serve(channels::websocket_bytes(ws)), target).await
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    response
}

/// SPDY upgrade (`X-Stream-Protocol-Version: portforward.k8s.io`) or the WebSocket tunnel.
#[allow(clippy::result_large_err)]
fn negotiate(headers: &HeaderMap) -> Result<channels::Transport, Response> {
    if channels::is_websocket(headers) {
        let offered = channels::offered_protocols(headers);
        if !offered.iter().any(|p| p == WEBSOCKET_PROTOCOL) {
            return Err(text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {}, server accepts [{WEBSOCKET_PROTOCOL}]",
                    channels::go_list(&offered)
                ),
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "missing Sec-WebSocket-Key".into(),
            ));
        };
        return Ok(channels::Transport::WebSocket {
            protocol: WEBSOCKET_PROTOCOL,
            key,
        });
    }
    channels::spdy_handshake(headers, &[PROTOCOL_V1])
}

/// The sandbox of pod `ns/name` and its network namespace.
#[allow(clippy::result_large_err)]
async fn target(k: &Kubelet, ns: &str, name: &str) -> Result<Target, Response> {
    let pod = crate::stream::get_pod(k, ns, name).await?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let filter = cri::PodSandboxFilter {
        label_selector: [("io.kubernetes.pod.uid".to_string(), uid)].into(),
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    let mut rt = k.cri.rt.clone();
    let sandbox = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .map_err(|e| text(StatusCode::SERVICE_UNAVAILABLE, e.message().to_string()))?
        .into_inner()
        .items
        .into_iter()
        .max_by_key(|s| s.created_at)
        .ok_or_else(|| {
            // The kubelet's wording when the pod has no running sandbox.
            text(
                StatusCode::BAD_REQUEST,
                format!("pod {name} does not have a running sandbox"),
            )
        })?;
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.id.clone(),
            verbose: true,
        })
        .await
        .map_err(|e| text(StatusCode::SERVICE_UNAVAILABLE, e.message().to_string()))?
        .into_inner();
    let host_network = status
        .status
        .as_ref()
        .and_then(|s| s.linux.as_ref())
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .is_some_and(|o| o.network == cri::NamespaceMode::Node as i32);
    let netns = if host_network {
        None
    } else {
        let netns = status.info.get("info").and_then(|i| netns_from_info(i));
        match netns {
            Some(p) => Some(p),
            None => {
                return Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "failed to find network namespace of pod sandbox {:?}",
                        sandbox.id
                    ),
                ));
            }
        }
    };
    Ok(Target {
        sandbox_id: sandbox.id,
        netns,
    })
}

/// The network namespace path in containerd's verbose sandbox info: the runtime spec's network
/// namespace, else the sandbox process's.
pub fn netns_from_info(info: &str) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    let from_spec = v
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(|n| n.as_array())
        .and_then(|a| {
            a.iter()
                .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
                .and_then(|n| n.get("path").and_then(|p| p.as_str()))
                .filter(|p| !p.is_empty())
        })
        .map(PathBuf::from);
    from_spec.or_else(|| {
        v.get("pid")
            .and_then(|p| p.as_u64())
            .filter(|p| *p > 0)
            .map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
    })
}

/// One forwarded connection being assembled from its two streams.
#[derive(Default)]
struct Pair {
    error: Option<spdy::Stream>,
    data: Option<spdy::Stream>,
    since: Option<tokio::time::Instant>,
}

/// Serves one port-forward session: pairs streams by `requestID` and forwards each pair.
pub async fn serve(
    session: (spdy::Sender, tokio::sync::mpsc::Receiver<spdy::Stream>),
    target: Target,
) {
    let (sender, mut streams) = session;
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(s) = streams.recv().await {
        let Some(port) = spdy::header(&s.headers, "port") else {
            tracing::debug!(stream = s.id, "port-forward: stream without a port header");
            sender.reset(s.id, spdy::RST_PROTOCOL_ERROR).await;
            continue;
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                tracing::debug!(stream = s.id, port, "port-forward: invalid port");
                sender.reset(s.id, spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
        };
        // Clients before requestID paired streams by ID (error = data - 2).
        let request_id = spdy::header(&s.headers, "requestID")
            .map(str::to_string)
            .unwrap_or_else(|| {
                let id = if spdy::header(&s.headers, "streamType") == Some("data") {
                    s.id.saturating_sub(2)
                } else {
                    s.id
                };
                format!("stream-{id}")
            });
        let kind = spdy::header(&s.headers, "streamType").unwrap_or("");
        let pair = pairs.entry(request_id.clone()).or_default();
        pair.since.get_or_insert_with(tokio::time::Instant::now);
        match kind {
            "error" => pair.error = Some(s),
            "data" => pair.data = Some(s),
            other => {
                tracing::debug!(
                    stream = s.id,
                    kind = other,
                    "port-forward: unknown stream type"
                );
                sender.reset(s.id, spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
        }
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair {
                error: Some(error),
                data: Some(data),
                ..
            }) = pairs.remove(&request_id)
        {
            tokio::spawn(forward(sender.clone(), target.clone(), port, error, data));
        }
        // Streams whose partner never came are reset, as the kubelet does after its timeout.
        let now = tokio::time::Instant::now();
        let stale: Vec<String> = pairs
            .iter()
            .filter(|(_, p)| p.since.is_some_and(|t| now - t > PAIR_TIMEOUT))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(p) = pairs.remove(&k) {
                for s in [p.error, p.data].into_iter().flatten() {
                    sender.reset(s.id, spdy::RST_CANCEL).await;
                }
            }
        }
    }
    sender.go_away().await;
}

/// Go's text for a failed dial (`dial tcp4 127.0.0.1:5432: connect: connection refused`).
fn dial_error(net: &str, addr: SocketAddr, e: &std::io::Error) -> String {
    let reason = match e.raw_os_error() {
        Some(n) => {
            let d = nix::errno::Errno::from_raw(n).desc();
            let mut c = d.chars();
            match c.next() {
                Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
                None => d.to_string(),
            }
        }
        None => e.to_string(),
    };
    let op = if e.kind() == std::io::ErrorKind::TimedOut {
        "i/o timeout".to_string()
    } else {
        format!("connect: {reason}")
    };
    format!("dial {net} {addr}: {op}")
}

/// Connects to `localhost:port` in `netns` (None: the host's), IPv4 first, then IPv6, on a
/// thread of its own (setns changes only the calling thread's namespace, which ends with it).
pub async fn connect(netns: Option<PathBuf>, port: u16) -> Result<tokio::net::TcpStream, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let id = netns.clone();
    let spawned = std::thread::Builder::new()
        .name("portforward-dial".into())
        .spawn(move || {
            let r = (|| {
                if let Some(path) = &id {
                    let f = std::fs::File::open(path)
                        .map_err(|e| format!("open {}: {e}", path.display()))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns {}: {e}", path.display()))?;
                }
                let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
                let timeout = Duration::from_secs(10);
                match std::net::TcpStream::connect_timeout(&v4, timeout) {
                    Ok(s) => Ok(s),
                    Err(e4) => std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|e6| {
                        format!(
                            "IPv4: {} IPv6 {} ",
                            dial_error("tcp4", v4, &e4),
                            dial_error("tcp6", v6, &e6)
                        )
                    }),
                }
            })();
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Err(format!("starting a thread: {e}"));
    }
    let std_stream = rx
        .await
        .map_err(|_| "the dialing thread died".to_string())??;
    std_stream
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())
}

/// Forwards one connection: dials the pod, copies both ways, reports a failure on the error
/// stream (Kubernetes' wording) and closes both streams.
async fn forward(
    sender: spdy::Sender,
    target: Target,
    port: u16,
    error: spdy::Stream,
    data: spdy::Stream,
) {
    let ns_name = target
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "host".into());
    let tcp = match connect(target.netns.clone(), port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = if e.starts_with("IPv4: ") {
                format!(
                    "error forwarding port {port} to pod {id}, uid : failed to execute portforward in network namespace {ns_name:?}: failed to connect to localhost:{port} inside namespace {id:?}, {e}",
                    id = target.sandbox_id
                )
            } else {
                format!(
                    "error forwarding port {port} to pod {id}, uid : failed to execute portforward in network namespace {ns_name:?}: {e}",
                    id = target.sandbox_id
                )
            };
            tracing::info!(%msg, "port-forward");
            sender.data(error.id, Bytes::from(msg)).await;
            sender.fin(error.id).await;
            sender.fin(data.id).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let mut from_client = data.data;
    let data_id = data.id;
    // Client → pod; the client's FIN half-closes the pod connection.
    let up = async move {
        while let Some(b) = from_client.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    // Pod → client; the pod's EOF is a FIN on the data stream.
    let down_sender = sender.clone();
    let down = async move {
        let mut buf = vec![0u8; spdy::MAX_DATA];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !down_sender
                        .data(data_id, Bytes::copy_from_slice(&buf[..n]))
                        .await
                    {
                        return;
                    }
                }
            }
        }
        down_sender.fin(data_id).await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {
            // The pod closed: give the other direction a moment, as containerd does.
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut up).await;
        }
        _ = &mut up => {
            // The client finished sending: the answer may still be coming.
            down.await;
        }
    }
    sender.fin(error.id).await;
    drop(error);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_from_containerd_info() {
        let info = r#"{"pid":42,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1234"}]}}}"#;
        assert_eq!(
            netns_from_info(info),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        assert_eq!(
            netns_from_info(r#"{"pid":42,"runtimeSpec":{"linux":{"namespaces":[]}}}"#),
            Some(PathBuf::from("/proc/42/ns/net"))
        );
        assert_eq!(netns_from_info("not json"), None);
    }

    #[test]
    fn go_dial_errors() {
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(
            dial_error("tcp4", "127.0.0.1:5432".parse().unwrap(), &e),
            "dial tcp4 127.0.0.1:5432: connect: connection refused"
        );
        assert_eq!(
            dial_error("tcp6", "[::1]:5432".parse().unwrap(), &e),
            "dial tcp6 [::1]:5432: connect: connection refused"
        );
    }

    #[tokio::test]
    async fn forwards_bytes_and_reports_refused_ports() {
        // A listener in this (the host's) namespace stands in for the pod's.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf).await;
                    buf.reverse();
                    let _ = s.write_all(&buf).await;
                });
            }
        });
        let (client, server) = tokio::io::duplex(1 << 16);
        let target = Target {
            sandbox_id: "sb".into(),
            netns: None,
        };
        tokio::spawn(serve(spdy::serve(server), target));
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut e = spdy::Encoder::new();
        let mut wire = bytes::BytesMut::new();
        let syn = |id: u32, ty: &str, port: u16, req: &str| spdy::Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![
                ("streamType".into(), ty.into()),
                ("port".into(), port.to_string()),
                ("requestID".into(), req.into()),
            ],
        };
        // A refused port (nothing listens on port 1), then a working one.
        for f in [
            syn(1, "error", 1, "0"),
            syn(3, "data", 1, "0"),
            syn(5, "error", port, "1"),
            syn(7, "data", port, "1"),
            spdy::Frame::Data {
                stream_id: 7,
                flags: spdy::FLAG_FIN,
                data: Bytes::from_static(b"abc"),
            },
        ] {
            e.encode(&f, &mut wire).unwrap();
        }
        cwr.write_all(&wire).await.unwrap();
        let mut d = spdy::Decoder::new();
        let mut buf = bytes::BytesMut::new();
        let (mut err1, mut data7) = (Vec::new(), Vec::new());
        let mut fin7 = false;
        while !fin7 || err1.is_empty() {
            crd.read_buf(&mut buf).await.unwrap();
            while let Some(f) = d.decode(&mut buf).unwrap() {
                if let spdy::Frame::Data {
                    stream_id,
                    flags,
                    data,
                } = f
                {
                    match stream_id {
                        1 => err1.extend_from_slice(&data),
                        7 => {
                            data7.extend_from_slice(&data);
                            fin7 |= flags & spdy::FLAG_FIN != 0;
                        }
                        _ => {}
                    }
                }
            }
        }
        let err1 = String::from_utf8(err1).unwrap();
        assert!(
            err1.starts_with("error forwarding port 1 to pod sb, uid : failed to execute portforward in network namespace \"host\": failed to connect to localhost:1 inside namespace \"sb\", IPv4: dial tcp4 127.0.0.1:1: connect: connection refused IPv6 dial tcp6 [::1]:1: "),
            "{err1}"
        );
        assert_eq!(data7, b"cba");
    }
}
