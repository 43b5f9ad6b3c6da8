//! `attach` on the kubelet API: `GET|POST /attach/{namespace}/{pod}/{container}?stdin=&stdout=&stderr=&tty=`
//! upgraded to a WebSocket speaking the same channel protocol as [`crate::exec`]
//! (`v5.channel.k8s.io` or `v4.channel.k8s.io`), connected to the container's main process.
//!
//! Output: the container's stdout and stderr are what containerd writes to the CRI log file
//! (`<root-dir>/logs/<ns>_<pod>_<uid>/<container>/<attempt>.log`, one `<time> <stream> <P|F>
//! <text>` line per chunk). The session follows that file from its current end and sends every
//! new chunk on channel 1 (stdout) or 2 (stderr), so an attach sees exactly what `kubectl logs -f`
//! sees from that moment on, and any number of attaches can run side by side.
//! (`ctr tasks attach` would open the task's stdout fifo as a second reader next to containerd's
//! own, splitting the output between the two; CRI `Attach` in containerd 1.6 speaks only SPDY
//! and WebSocket up to v4, the same reason exec does not use CRI.)
//!
//! Input: a container with `stdin: true` gets a stdin fifo from containerd
//! (`<containerd state>/io.containerd.grpc.v1.cri/containers/<id>/io/<n>/<id>-stdin`); channel 0
//! is written into it. containerd keeps its own end open, so the client's stdin closing does not
//! close the container's stdin. A container without `stdin: true` ignores channel 0.
//!
//! The session ends when the client goes away (the container keeps running) or when the
//! container exits (a `Success` status on channel 3, then a normal close).
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::Kubelet;
use crate::exec::{
    ExecOptions, PROTOCOLS, choose_protocol, is_websocket, normal_close, running_container,
    switching_protocols, text,
};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;

/// One line of a CRI log file: `(is_stderr, complete, text)`.
pub fn parse_log_line(line: &str) -> Option<(bool, bool, &str)> {
    let line = line.strip_suffix('\n')?;
    let mut it = line.splitn(4, ' ');
    let _ts = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    let msg = it.next().unwrap_or("");
    Some((stream == "stderr", tag.starts_with('F'), msg))
}

/// The latest log file (highest attempt) in a container's log directory.
fn latest_log(dir: &FsPath) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".log")?
                .parse::<u32>()
                .ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// The stdin fifo containerd created for container `cid`, if it has one.
fn stdin_fifo(k: &Kubelet, cid: &str) -> Option<PathBuf> {
    let states = [
        k.config.root_dir.join("containerd/state"),
        PathBuf::from("/run/containerd"),
    ];
    let name = format!("{cid}-stdin");
    states.iter().find_map(|state| {
        let io = state
            .join("io.containerd.grpc.v1.cri/containers")
            .join(cid)
            .join("io");
        std::fs::read_dir(io)
            .ok()?
            .flatten()
            .map(|d| d.path().join(&name))
            .find(|p| p.exists())
    })
}

async fn still_running(k: &Kubelet, cid: &str) -> bool {
    let mut rt = k.cri.rt.clone();
    rt.container_status(cri::ContainerStatusRequest {
        container_id: cid.to_string(),
        verbose: false,
    })
    .await
    .ok()
    .and_then(|r| r.into_inner().status)
    .map(|s| s.state == cri::ContainerState::ContainerRunning as i32)
    .unwrap_or(false)
}

/// The handler: checks the request, answers `101 Switching Protocols` and runs the session on
/// the upgraded connection.
pub async fn attach(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    mut req: Request,
) -> Response {
    let opts = ExecOptions::parse(req.uri().query().unwrap_or(""));
    if !is_websocket(req.headers()) {
        return text(
            StatusCode::BAD_REQUEST,
            "attach needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported by the Lotse kubelet".into(),
        );
    }
    let Some(proto) = choose_protocol(req.headers()) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("no supported WebSocket subprotocol offered; supported: {PROTOCOLS:?}"),
        );
    };
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key".into());
    };
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one of stdin, stdout, stderr".into(),
        );
    }
    let (cid, uid) = match running_container(&k, &ns, &pod, &container).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let dir = k
        .config
        .root_dir
        .join("logs")
        .join(format!("{ns}_{pod}_{uid}"))
        .join(&container);
    let Some(log) = latest_log(&dir) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} has no log file to attach to"),
        );
    };
    let fifo = if opts.stdin {
        stdin_fifo(&k, &cid)
    } else {
        None
    };
    if opts.stdin && fifo.is_none() {
        tracing::debug!(%ns, %pod, %container, "attach: the container has no stdin (stdin: true not set); input is ignored");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                session(ws, k, cid, log, fifo, opts).await;
            }
            Err(e) => tracing::debug!(error = %e, "attach upgrade failed"),
        }
    });
    switching_protocols(proto, &key)
}

/// Follows `log` from its current end and sends new chunks until the container stops running
/// (or a newer attempt's log appears). Returns when the container has exited.
async fn follow(
    k: Arc<Kubelet>,
    cid: String,
    log: PathBuf,
    opts: ExecOptions,
    tx: mpsc::Sender<Message>,
) {
    let Ok(mut f) = tokio::fs::File::open(&log).await else {
        return;
    };
    if f.seek(std::io::SeekFrom::End(0)).await.is_err() {
        return;
    }
    let mut r = tokio::io::BufReader::new(f);
    let mut line = String::new();
    let mut idle = 0u32;
    loop {
        match r.read_line(&mut line).await {
            Ok(0) => {
                // End of file (possibly inside a line still being written): poll.
                idle += 1;
                if idle.is_multiple_of(10) && !still_running(&k, &cid).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(_) if line.ends_with('\n') => {
                idle = 0;
                if let Some((err, full, msg)) = parse_log_line(&line) {
                    let (stream, wanted) = if err {
                        (STDERR, opts.stderr)
                    } else {
                        (STDOUT, opts.stdout || opts.tty)
                    };
                    if wanted {
                        let mut b = Vec::with_capacity(msg.len() + 2);
                        b.push(stream);
                        b.extend_from_slice(msg.as_bytes());
                        if full {
                            b.push(b'\n');
                        }
                        if tx.send(Message::Binary(Bytes::from(b))).await.is_err() {
                            return;
                        }
                    }
                }
                line.clear();
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn session<S>(
    ws: WebSocketStream<S>,
    k: Arc<Kubelet>,
    cid: String,
    log: PathBuf,
    fifo: Option<PathBuf>,
    opts: ExecOptions,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut stdin = match fifo {
        // containerd's shim holds the read end, so opening for writing does not block.
        Some(p) => match tokio::fs::OpenOptions::new().write(true).open(&p).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, path = %p.display(), "attach: opening the stdin fifo");
                None
            }
        },
        None => None,
    };
    let reader = async {
        while let Some(m) = incoming.next().await {
            match m {
                Ok(Message::Binary(b)) if b.first() == Some(&STDIN) => {
                    if let Some(w) = stdin.as_mut()
                        && (w.write_all(&b[1..]).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let out = follow(k, cid, log, opts, tx.clone());
    tokio::select! {
        _ = out => {
            let st = json!({"metadata": {}, "status": "Success"});
            let mut b = vec![ERROR];
            b.extend(serde_json::to_vec(&st).unwrap_or_default());
            let _ = tx.send(Message::Binary(b.into())).await;
            let _ = tx.send(normal_close()).await;
        }
        _ = reader => {}
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_by_stream() {
        assert_eq!(
            parse_log_line("2024-01-01T00:00:00.000000000Z stdout F tick 3\n"),
            Some((false, true, "tick 3"))
        );
        assert_eq!(
            parse_log_line("2024-01-01T00:00:00.000000000Z stderr P part\n"),
            Some((true, false, "part"))
        );
        assert_eq!(parse_log_line("2024-01-01T00:00:00Z stdout F"), None);
    }
}
