//! `attach` on the kubelet API: `GET|POST /attach/{namespace}/{pod}/{container}?stdin=&stdout=&stderr=&tty=`
//! upgraded to a WebSocket speaking the same channel protocol as [`crate::exec`] (the session
//! plumbing shared with it is [`crate::stream`])
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
//! `stdinOnce: true` (without `tty`): when the first attach session with stdin ends, the
//! container's stdin is closed and its process reads EOF, as in Kubernetes. The writers of the
//! fifo that must go are containerd's CRI plugin's (which only closes it at the end of a CRI
//! `Attach` stream of a `stdinOnce` container) and the shim's (which CRI then closes through the
//! task's CloseIO). So the kubelet opens a CRI `Attach` with stdin only on containerd's
//! streaming server (WebSocket `v4.channel.k8s.io`, which containerd 1.6 speaks) and ends it at
//! once; later attaches find no reader on the fifo and get no stdin.
//!
//! Resize (channel 4) on a `tty` container sets the size of the task's terminal with
//! containerd's `Tasks.ResizePty` ([`crate::containerd_tasks`]), as CRI does.
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
use futures::StreamExt;
use k8s_cri::v1 as cri;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::Kubelet;
use crate::channels::{CLOSE, Channels, RESIZE, STDERR, STDIN, STDOUT, text};
use crate::containerd_tasks;
use crate::stream::{self, ExecOptions, parse_resize, running_container};
/// Opening a FIFO for writing without a reader, non-blocking (Linux errno).
const ENXIO: i32 = 6;

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
    crate::server::log_files(dir).pop().map(|(_, p)| p)
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
    let (opts, transport) = match stream::negotiate(&req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if let Err(r) = opts.require_a_stream() {
        return r;
    }
    let (cid, uid, spec) = match running_container(&k, &ns, &pod, &container).await {
        Ok(c) => (c.id, c.pod_uid, c.spec),
        Err(r) => return r,
    };
    // Kubernetes closes stdin after the first session only without a tty (with one, the
    // terminal stays open for the next attach).
    let stdin_once = spec.as_ref().is_some_and(|c| {
        c.stdin.unwrap_or(false) && c.stdin_once.unwrap_or(false) && !c.tty.unwrap_or(false)
    });
    let dir = k.layout().pod_logs(&ns, &pod, &uid).join(&container);
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
    let expect = opts.expect();
    let close_stdin = stdin_once && opts.stdin;
    stream::upgrade(&mut req, transport, expect, "attach", move |ch| {
        session(ch, k, cid, log, fifo, opts, close_stdin)
    })
}

/// Follows the log file `f` (opened at its end before the client's stdin is read, so output
/// that stdin causes is never missed) and sends new chunks until the container stops running.
/// Returns when the container has exited.
async fn follow(
    k: Arc<Kubelet>,
    cid: String,
    f: tokio::fs::File,
    opts: ExecOptions,
    tx: mpsc::Sender<Message>,
) {
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

async fn session(
    ch: Channels,
    k: Arc<Kubelet>,
    cid: String,
    log: PathBuf,
    fifo: Option<PathBuf>,
    opts: ExecOptions,
    close_stdin: bool,
) {
    let Channels {
        sink,
        mut incoming,
        close_signal,
        json_status,
    } = ch;
    let (tx, writer) = stream::spawn_writer(sink);
    let mut stdin = match fifo {
        // Non-blocking: while the container's stdin is open the shim holds the read end; once
        // it was closed (stdinOnce) nobody reads, and the open fails with ENXIO.
        Some(p) => match tokio::net::unix::pipe::OpenOptions::new().open_sender(&p) {
            Ok(f) => Some(f),
            Err(e) if e.raw_os_error() == Some(ENXIO) => {
                tracing::debug!(%cid, "attach: the container's stdin is closed (stdinOnce)");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %p.display(), "attach: opening the stdin fifo");
                None
            }
        },
        None => None,
    };
    let had_stdin = stdin.is_some();
    // Positioned at the log's end before any stdin is written: what stdin provokes follows.
    let log_end = match tokio::fs::File::open(&log).await {
        Ok(mut f) => f.seek(std::io::SeekFrom::End(0)).await.ok().map(|_| f),
        Err(_) => None,
    };
    let (socket, tty) = (k.cri.socket.clone(), opts.tty);
    let resize_cid = cid.clone();
    // stdinOnce: the container's stdin is closed when this session's stdin ends (the client's
    // close signal) or, at the latest, when the session ends.
    let stdin_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let close_once = {
        let (k, cid, done) = (k.clone(), cid.clone(), stdin_closed.clone());
        move || {
            let (k, cid, done) = (k.clone(), cid.clone(), done.clone());
            async move {
                if !(close_stdin && had_stdin)
                    || done.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    return;
                }
                match close_container_stdin(&k, &cid).await {
                    Ok(()) => {
                        tracing::info!(%cid, "stdinOnce: closed the container's stdin after the first attach")
                    }
                    Err(e) => {
                        tracing::warn!(%cid, error = %e, "stdinOnce: closing the container's stdin")
                    }
                }
            }
        }
    };
    let on_stdin_end = close_once.clone();
    let reader = async move {
        while let Some(m) = incoming.next().await {
            match m {
                Ok(Message::Binary(b)) if b.first() == Some(&STDIN) => {
                    if let Some(w) = stdin.as_mut()
                        && (w.write_all(&b[1..]).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                Ok(Message::Binary(b)) if tty && b.first() == Some(&RESIZE) => {
                    if let Some(size) = parse_resize(&b[1..])
                        && let Err(e) =
                            containerd_tasks::resize_pty(&socket, &resize_cid, "", size).await
                    {
                        tracing::debug!(cid = %resize_cid, error = %e.message(), "attach resize");
                    }
                }
                // The end of the client's stdin (v5 close signal, SPDY FIN) closes the
                // kubelet's end of the fifo, and the container's stdin with stdinOnce.
                Ok(Message::Binary(b)) if close_signal && b[..] == [CLOSE, STDIN] => {
                    stdin = None;
                    tokio::spawn(on_stdin_end());
                }
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
        // Dropping `stdin` here closes the kubelet's end of the fifo.
    };
    let out = async {
        if let Some(f) = log_end {
            follow(k.clone(), cid.clone(), f, opts, tx.clone()).await;
        }
    };
    tokio::select! {
        _ = out => {
            let st = json!({"metadata": {}, "status": "Success"});
            stream::finish(&tx, &st, json_status).await;
        }
        _ = reader => close_once().await,
    }
    drop(tx);
    let _ = writer.await;
}

/// Closes the stdin of a `stdinOnce` container: a CRI `Attach` with stdin only, on containerd's
/// streaming server, ended at once (see the module docs).
async fn close_container_stdin(k: &Kubelet, cid: &str) -> Result<(), String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
    let mut rt = k.cri.rt.clone();
    let url = rt
        .attach(cri::AttachRequest {
            container_id: cid.to_string(),
            stdin: true,
            tty: false,
            stdout: false,
            stderr: false,
        })
        .await
        .map_err(|e| format!("CRI Attach: {}", e.message()))?
        .into_inner()
        .url;
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("CRI Attach URL {url:?}: {e}"))?;
    let host = uri.host().unwrap_or("127.0.0.1").to_string();
    let port = uri.port_u16().unwrap_or(80);
    let ws_url = match url.strip_prefix("http://") {
        Some(rest) => format!("ws://{rest}"),
        None => {
            return Err(format!(
                "CRI Attach URL {url:?} is not http:// (TLS streaming)"
            ));
        }
    };
    let mut req = ws_url
        .into_client_request()
        .map_err(|e| format!("CRI Attach URL {url:?}: {e}"))?;
    req.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("v4.channel.k8s.io"),
    );
    let run = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connecting to containerd's streaming server: {e}"))?;
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| format!("WebSocket to containerd's streaming server: {e}"))?;
        // The end of the stream is the end of stdin; containerd then closes the container's.
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "containerd's streaming server did not answer".to_string())?
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
