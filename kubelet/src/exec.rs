//! `exec` on the kubelet API: `GET|POST /exec/{namespace}/{pod}/{container}?command=..&stdin=&stdout=&stderr=&tty=`
//! upgraded to WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`, the older and base64
//! variants) or SPDY/3.1 (`v4.channel.k8s.io` …, kubectl ≤ 1.29), which the apiserver splices
//! through to the client; [`crate::channels`] brings every transport to the same channel
//! messages, and [`crate::stream`] holds the session plumbing exec shares with attach.
//!
//! Channel protocol: every binary message starts with a stream byte — 0 stdin, 1 stdout,
//! 2 stderr, 3 error (one JSON `v1.Status` when the command ends: `Success`, or `Failure` with
//! reason `NonZeroExitCode` and the exit code in `details.causes[reason=ExitCode]`), 4 resize;
//! v5 adds 255 "close stream" (`[255, 0]`: the client's stdin reached EOF).
//!
//! The process runs through containerd's task exec API (`ctr tasks exec`), which starts it in
//! the container's namespaces and cgroup with the container's process spec (env, user, working
//! dir), exactly what CRI `Exec` does inside containerd. CRI `Exec` itself is not used because
//! containerd 1.6's streaming server speaks only SPDY and WebSocket up to v4, neither of which
//! can close stdin alone (so `echo x | kubectl exec -i p -- cat` would never end). With `tty`
//! the process gets a terminal (`script` provides the outer one `ctr --tty` needs).
//!
//! Resize (channel 4, `{"Width":..,"Height":..}`, sent by `kubectl exec -it` first thing and on
//! every SIGWINCH): the size is applied to the exec process's terminal with containerd's
//! `Tasks.ResizePty` (container ID + exec ID, see [`crate::containerd_tasks`]), as containerd's CRI does.
//! The shim gets that terminal from runc only once `runc exec` has started the process (a resize
//! before is silently dropped), so sizes are applied as soon as containerd reports the process
//! running: a command that reads its size in its first milliseconds can still see 0x0, as with
//! containerd 1.6's CRI exec, which also resizes only after `Start`. The first size, if it
//! arrives within [`FIRST_RESIZE_WAIT`], is also set on `script`'s terminal before `ctr` starts,
//! so the resize `ctr` itself sends from that terminal agrees with it. `ctr`'s own messages go
//! to a file, not the terminal, and reach the client when the command ends (without the error
//! `ctr` logs when its first resize comes after a short command has already exited).
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::Kubelet;
use crate::channels::{CLOSE, Channels, RESIZE, STDERR, STDIN, STDOUT, text};
use crate::containerd_tasks;
use crate::stream::{self, running_container};
pub use crate::stream::{ExecOptions, TerminalSize, parse_resize};

/// How long a `tty` exec waits for the client's first resize before starting the process.
pub const FIRST_RESIZE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The exit status of a finished command as the `v1.Status` sent on the error channel.
pub fn exit_status(code: Option<i32>, command: &[String]) -> serde_json::Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(c) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {c}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
        }),
        None => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("error executing command {command:?}: terminated by a signal"),
            "reason": "InternalError",
        }),
    }
}

/// The handler: checks the request, answers `101 Switching Protocols` and runs the session on
/// the upgraded connection.
pub async fn exec(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    mut req: Request,
) -> Response {
    let (opts, transport) = match stream::negotiate(&req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if opts.command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command".into(),
        );
    }
    if let Err(r) = opts.require_a_stream() {
        return r;
    }
    let cid = match running_container(&k, &ns, &pod, &container).await {
        Ok(c) => c.id,
        Err(r) => return r,
    };
    let socket = k.cri.socket.clone();
    let expect = opts.expect();
    stream::upgrade(&mut req, transport, expect, "exec", move |ch| {
        session(ch, socket, cid, opts)
    })
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `ctr tasks exec` command running `opts.command` in container `cid` as process
/// `exec_id`; with a tty under `script`, whose terminal gets `size` first, and with `ctr`'s own
/// messages going to `ctr_log` instead of the terminal.
///
/// A child process on purpose: `ctr` is containerd's own client (same package and version),
/// and its task exec relays the process's stdio through FIFOs it sets up with the shim, which
/// no Rust crate implements (see the module docs for why CRI `Exec` is not used).
fn command(
    socket: &std::path::Path,
    cid: &str,
    exec_id: &str,
    opts: &ExecOptions,
    size: Option<TerminalSize>,
    ctr_log: &std::path::Path,
) -> Option<tokio::process::Command> {
    let ctr = crate::runtime::find_binary("ctr", &["/usr/bin"])?;
    let mut argv: Vec<String> = vec![
        ctr.to_string_lossy().into_owned(),
        "-a".into(),
        socket.to_string_lossy().into_owned(),
        "-n".into(),
        "k8s.io".into(),
        "tasks".into(),
        "exec".into(),
        "--exec-id".into(),
        exec_id.into(),
    ];
    if opts.tty {
        argv.push("--tty".into());
    }
    argv.push("--".into());
    argv.push(cid.into());
    argv.extend(opts.command.iter().cloned());
    let mut cmd = if opts.tty {
        // `ctr --tty` needs a terminal on its own stdin: `script` runs it on a fresh pty and
        // relays our pipes to it (and returns the command's exit code with -e).
        let line: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        let line = format!(
            "exec {} 2>{}",
            line.join(" "),
            shell_quote(&ctr_log.to_string_lossy())
        );
        let line = match size {
            Some(s) => format!(
                "stty cols {} rows {} 2>/dev/null; {line}",
                s.width, s.height
            ),
            None => line,
        };
        let script = crate::runtime::find_binary("script", &["/usr/bin"])?;
        let mut c = tokio::process::Command::new(script);
        c.args(["-q", "-f", "-e", "-c"]).arg(line).arg("/dev/null");
        c
    } else {
        let mut c = tokio::process::Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    cmd.stdin(if opts.stdin || opts.tty {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    Some(cmd)
}

/// Pumps one output pipe into channel `stream`.
fn pump(
    mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    stream: u8,
    tx: mpsc::Sender<Message>,
    send: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf[1..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !send {
                        continue;
                    }
                    buf[0] = stream;
                    let msg = Message::Binary(Bytes::copy_from_slice(&buf[..=n]));
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// One exec session on an upgraded connection: runs the command, relays stdin/stdout/stderr,
/// sends the exit status on the error channel and closes.
async fn session(ch: Channels, socket: std::path::PathBuf, cid: String, opts: ExecOptions) {
    let Channels {
        sink,
        mut incoming,
        close_signal,
        json_status,
    } = ch;
    let (tx, writer) = stream::spawn_writer(sink);
    // kubectl sends the terminal size as soon as it is connected (possibly after some stdin):
    // wait for it briefly so the terminal has it from the start. What comes before it is
    // handled, in order, once the process runs.
    let mut early = Vec::new();
    let mut first_size = None;
    let mut gone = false;
    if opts.tty {
        let deadline = tokio::time::Instant::now() + FIRST_RESIZE_WAIT;
        while first_size.is_none() {
            match tokio::time::timeout_at(deadline, incoming.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&RESIZE) => {
                    first_size = parse_resize(&b[1..]);
                }
                Ok(Some(m)) => {
                    let last = matches!(m, Ok(Message::Close(_)) | Err(_));
                    early.push(m);
                    if last {
                        break;
                    }
                }
                Ok(None) => {
                    gone = true;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let exec_id = format!(
        "exec-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let (sizes, sizes_rx) = watch::channel(first_size);
    let resizer = opts.tty.then(|| {
        tokio::spawn(apply_resizes(
            socket.clone(),
            cid.clone(),
            exec_id.clone(),
            sizes_rx,
        ))
    });
    let ctr_log = std::env::temp_dir().join(format!("lotse-{exec_id}.log"));
    let child = command(&socket, &cid, &exec_id, &opts, first_size, &ctr_log)
        .ok_or_else(|| "ctr not found (Debian package containerd)".to_string())
        .and_then(|mut c| c.spawn().map_err(|e| format!("starting ctr: {e}")));
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "exec");
            let st = json!({"metadata": {}, "status": "Failure", "message": e, "reason": "InternalError"});
            stream::finish(&tx, &st, json_status).await;
            let _ = writer.await;
            return;
        }
    };
    let outs = [
        child
            .stdout
            .take()
            .map(|o| pump(o, STDOUT, tx.clone(), opts.stdout || opts.tty)),
        child
            .stderr
            .take()
            .map(|e| pump(e, STDERR, tx.clone(), opts.stderr)),
    ];
    let mut stdin = child.stdin.take();
    // With a tty but no stdin, the terminal's input stays open (EOF would end a shell).
    let _hold = if opts.stdin { None } else { stdin.take() };
    // Client → process. Ends when the client goes away (Some(true)) or its stdin closes.
    let reader = async {
        let rest = (!gone).then_some(incoming);
        let mut incoming =
            futures::stream::iter(early).chain(futures::stream::iter(rest).flatten());
        while let Some(m) = incoming.next().await {
            match m {
                Ok(Message::Binary(b)) if !b.is_empty() => match b[0] {
                    STDIN => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&b[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    RESIZE => {
                        if let Some(size) = parse_resize(&b[1..]) {
                            sizes.send_replace(Some(size));
                        }
                    }
                    CLOSE if close_signal && b.get(1) == Some(&STDIN) => stdin = None,
                    _ => {}
                },
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let pid = child.id();
    let done = async {
        for h in outs.into_iter().flatten() {
            let _ = h.await;
        }
        child.wait().await
    };
    tokio::pin!(done);
    let status = tokio::select! {
        st = &mut done => Some(st),
        _ = reader => {
            // The client's side ended; the process may still run (it only ended our
            // reading). A short command still being started by `ctr` on a loaded node gets
            // time to finish and report (seen: 200 ms lost a `kubectl exec … cat` under load).
            tokio::select! {
                st = &mut done => Some(st),
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => None,
            }
        }
    };
    match status {
        Some(st) => {
            let code = st.ok().and_then(|s| s.code());
            if let Some(msg) = ctr_messages(&ctr_log).await {
                let mut b = vec![STDOUT];
                b.extend_from_slice(msg.as_bytes());
                let _ = tx.send(Message::Binary(b.into())).await;
            }
            stream::finish(&tx, &exit_status(code, &opts.command), json_status).await;
        }
        None => {
            // SIGTERM to ctr is forwarded to the process in the container.
            if let Some(pid) = pid {
                crate::runtime::terminate(pid);
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut done).await;
        }
    }
    if let Some(r) = resizer {
        r.abort();
    }
    let _ = tokio::fs::remove_file(&ctr_log).await;
    drop(tx);
    let _ = writer.await;
}

/// What `ctr` wrote to `log` (with a tty), without its complaints about resizing a process that
/// already ended (its own first resize races with the process); the file is removed.
async fn ctr_messages(log: &std::path::Path) -> Option<String> {
    let text = tokio::fs::read_to_string(log).await.ok()?;
    let _ = tokio::fs::remove_file(log).await;
    let kept: String = text
        .lines()
        .filter(|l| !l.contains("resize pty"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// Applies the client's terminal sizes to process `exec_id` of container `cid`: the latest
/// one once the process runs (before, containerd has no terminal for it), then every change.
async fn apply_resizes(
    socket: std::path::PathBuf,
    cid: String,
    exec_id: String,
    mut sizes: watch::Receiver<Option<TerminalSize>>,
) {
    let t0 = std::time::Instant::now();
    loop {
        match containerd_tasks::process_status(&socket, &cid, &exec_id).await {
            Ok(containerd_tasks::RUNNING) => break,
            // Already stopped: nothing to resize.
            Ok(st) if st > containerd_tasks::RUNNING => return,
            _ if t0.elapsed() > std::time::Duration::from_secs(10) => {
                tracing::debug!(%cid, %exec_id, "exec process never ran; resizes dropped");
                return;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    loop {
        let size = *sizes.borrow_and_update();
        if let Some(size) = size
            && let Err(e) = containerd_tasks::resize_pty(&socket, &cid, &exec_id, size).await
        {
            tracing::debug!(%cid, %exec_id, error = %e.message(), "exec resize");
        }
        if sizes.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_as_status() {
        let st = exit_status(Some(3), &["sh".into()]);
        assert_eq!(st["status"], "Failure");
        assert_eq!(st["reason"], "NonZeroExitCode");
        assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(st["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(Some(0), &[])["status"], "Success");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn tty_command_sets_the_first_size() {
        let opts = ExecOptions {
            command: vec!["stty".into(), "size".into()],
            tty: true,
            ..Default::default()
        };
        let size = Some(TerminalSize {
            width: 100,
            height: 40,
        });
        let Some(cmd) = command(
            std::path::Path::new("/run/c.sock"),
            "cid",
            "e1",
            &opts,
            size,
            std::path::Path::new("/tmp/e1.log"),
        ) else {
            return; // no ctr or script on this machine
        };
        let argv: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = &argv[4];
        assert!(
            line.starts_with("stty cols 100 rows 40 2>/dev/null; exec "),
            "{line}"
        );
        assert!(
            line.ends_with("'--exec-id' 'e1' '--tty' '--' 'cid' 'stty' 'size' 2>'/tmp/e1.log'"),
            "{line}"
        );
    }
}
