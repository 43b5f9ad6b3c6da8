//! The session plumbing exec and attach share: what the client asked for ([`ExecOptions`]),
//! the running container a session attaches to, the upgrade of the request into
//! [`Channels`], the writer task that owns the client's sink, the final status on the error
//! channel with a normal close, and terminal sizes from the resize channel.
//!
//! What runs on the channels differs ([`crate::exec`] runs a process through `ctr`,
//! [`crate::attach`] follows a container's log and writes its stdin fifo); how the channels are
//! reached and ended is the same, and lives here.
use std::future::Future;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use futures::SinkExt;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::Kubelet;
use crate::channels::{self, ChannelSink, Channels, ERROR, text};

/// What the client asked for (Kubernetes' `PodExecOptions`, and `PodAttachOptions`, which has
/// the same fields but `command`, as query parameters).
#[derive(Debug, Default, PartialEq)]
pub struct ExecOptions {
    /// argv; `command` is repeated once per argument.
    pub command: Vec<String>,
    /// Attach the client's stdin.
    pub stdin: bool,
    /// Send stdout.
    pub stdout: bool,
    /// Send stderr.
    pub stderr: bool,
    /// Allocate a terminal (stderr is merged into stdout).
    pub tty: bool,
}

impl ExecOptions {
    /// The streams the client will open (SPDY).
    pub fn expect(&self) -> channels::Expect {
        channels::Expect {
            stdin: self.stdin,
            stdout: self.stdout,
            stderr: self.stderr,
            tty: self.tty,
        }
    }

    /// Parses the query string (`command=sh&command=-c&command=exit%203&stdout=true`).
    pub fn parse(query: &str) -> ExecOptions {
        let mut o = ExecOptions::default();
        let truthy = |v: &str| matches!(v, "true" | "1" | "True" | "TRUE");
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "command" => o.command.push(v.into_owned()),
                "input" | "stdin" => o.stdin = truthy(&v),
                "output" | "stdout" => o.stdout = truthy(&v),
                "error" | "stderr" => o.stderr = truthy(&v),
                "tty" => o.tty = truthy(&v),
                _ => {}
            }
        }
        o
    }

    /// Kubernetes' check that at least one stream is asked for (400 otherwise).
    #[allow(clippy::result_large_err)]
    pub(crate) fn require_a_stream(&self) -> Result<(), Response> {
        if self.stdin || self.stdout || self.stderr {
            Ok(())
        } else {
            Err(text(
                StatusCode::BAD_REQUEST,
                "you must specify at least one of stdin, stdout, stderr".into(),
            ))
        }
    }
}

/// What the client asked for and how it connects: the options from the query, the transport
/// from the upgrade headers (or the kubelet's answer to a request it cannot upgrade).
#[allow(clippy::result_large_err)]
pub(crate) fn negotiate(req: &Request) -> Result<(ExecOptions, channels::Transport), Response> {
    let opts = ExecOptions::parse(req.uri().query().unwrap_or(""));
    let transport = channels::negotiate(req.headers())?;
    Ok((opts, transport))
}

/// A terminal size from the resize channel (Kubernetes' `remotecommand.TerminalSize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width", alias = "width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height", alias = "height")]
    pub height: u16,
}

/// The size in a resize message's payload (after the channel byte); None when it is not one or
/// either side is 0 (which the kubelet ignores too).
pub fn parse_resize(payload: &[u8]) -> Option<TerminalSize> {
    serde_json::from_slice::<TerminalSize>(payload)
        .ok()
        .filter(|s| s.width > 0 && s.height > 0)
}

/// Pod `ns/name` from the API, or the kubelet's answer when it is not there (404) or the API
/// failed (500).
#[allow(clippy::result_large_err)]
pub(crate) async fn get_pod(k: &Kubelet, ns: &str, name: &str) -> Result<Pod, Response> {
    let api: Api<Pod> = Api::namespaced(k.client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{name} not found"),
        )),
        Err(e) => Err(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The CRI filter for the containers named `container` of pod `uid`.
pub(crate) fn container_filter(uid: &str, container: &str) -> cri::ContainerFilter {
    cri::ContainerFilter {
        label_selector: [
            ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
            (
                "io.kubernetes.container.name".to_string(),
                container.to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    }
}

/// A running container found for exec or attach.
pub(crate) struct RunningContainer {
    /// Its CRI container ID (= containerd task ID).
    pub id: String,
    /// The pod's UID.
    pub pod_uid: String,
    /// Its spec in the pod, if it is a regular container.
    pub spec: Option<k8s_openapi::api::core::v1::Container>,
}

/// The running container `container` of pod `ns/pod`.
#[allow(clippy::result_large_err)]
pub(crate) async fn running_container(
    k: &Kubelet,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<RunningContainer, Response> {
    let p = get_pod(k, ns, pod).await?;
    let uid = p.metadata.uid.unwrap_or_default();
    let spec = p
        .spec
        .and_then(|s| s.containers.into_iter().find(|c| c.name == container));
    let filter = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..container_filter(&uid, container)
    };
    let mut rt = k.cri.rt.clone();
    let found = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(|e| text(StatusCode::SERVICE_UNAVAILABLE, e.message().to_string()))?
        .into_inner()
        .containers
        .into_iter()
        .max_by_key(|c| c.created_at);
    found
        .map(|c| RunningContainer {
            id: c.id,
            pod_uid: uid,
            spec,
        })
        .ok_or_else(|| {
            text(
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {pod:?} is not running"),
            )
        })
}

/// Answers `101 Switching Protocols` for `transport` and runs `session` on the upgraded
/// connection once the client's channels are open. `what` names the subresource in logs.
pub(crate) fn upgrade<F, Fut>(
    req: &mut Request,
    transport: channels::Transport,
    expect: channels::Expect,
    what: &'static str,
    session: F,
) -> Response
where
    F: FnOnce(Channels) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let on_upgrade = hyper::upgrade::on(req);
    let response = transport.switching_protocols();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                if let Some(ch) = channels::open(TokioIo::new(up), transport, expect).await {
                    session(ch).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "{what} upgrade failed"),
        }
    });
    response
}

/// The task that owns the client's sink: sends the queued messages in order and closes the
/// sink after a Close message or when every sender is gone. Await the handle to flush.
pub(crate) fn spawn_writer(mut sink: ChannelSink) -> (mpsc::Sender<Message>, JoinHandle<()>) {
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
    (tx, writer)
}

/// Ends a session: `status` on the error channel, then a normal close.
pub(crate) async fn finish(
    tx: &mpsc::Sender<Message>,
    status: &serde_json::Value,
    json_status: bool,
) {
    let _ = tx.send(error_message(status, json_status)).await;
    let _ = tx.send(normal_close()).await;
}

/// The error channel's message for `status`: the JSON `v1.Status` (v4 and later), or its
/// message as text (older protocols, which send nothing on success).
pub(crate) fn error_message(status: &serde_json::Value, json_status: bool) -> Message {
    let mut b = vec![ERROR];
    if json_status {
        b.extend(serde_json::to_vec(status).unwrap_or_default());
    } else if status["status"] != "Success" {
        b.extend_from_slice(status["message"].as_str().unwrap_or("").as_bytes());
    }
    Message::Binary(b.into())
}

/// A close with code 1000: client-go reads it as the end of every stream (1005 is an error).
pub(crate) fn normal_close() -> Message {
    Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_query() {
        let o = ExecOptions::parse(
            "command=sh&command=-c&command=exit%203&stdin=true&stdout=true&stderr=true&container=c",
        );
        assert_eq!(o.command, ["sh", "-c", "exit 3"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
    }

    #[test]
    fn resize_messages() {
        // What client-go sends on channel 4 (after the channel byte).
        assert_eq!(
            parse_resize(br#"{"Width":100,"Height":40}"#),
            Some(TerminalSize {
                width: 100,
                height: 40
            })
        );
        assert_eq!(
            parse_resize(br#"{"width":80,"height":24}"#),
            Some(TerminalSize {
                width: 80,
                height: 24
            })
        );
        assert_eq!(parse_resize(br#"{"Width":0,"Height":0}"#), None);
        assert_eq!(parse_resize(b"not json"), None);
        assert_eq!(parse_resize(br#"{"Width":-1,"Height":3}"#), None);
    }
}
