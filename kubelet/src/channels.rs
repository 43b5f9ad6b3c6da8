//! The transports of Kubernetes' streaming subresources (exec, attach, port-forward), brought
//! to one shape: a sink and a stream of channel messages (`[channel byte] + payload`, channel 0
//! stdin, 1 stdout, 2 stderr, 3 error, 4 resize, 255 close), whatever the client spoke:
//!
//! - WebSocket `v5.channel.k8s.io` (close signals), `v4.channel.k8s.io` (JSON status on the
//!   error channel), `v3.channel.k8s.io`, `v2.channel.k8s.io`, `channel.k8s.io` (text errors),
//!   and the base64 variants `v4.base64.channel.k8s.io` and `base64.channel.k8s.io` (text
//!   messages: an ASCII channel digit, then base64). Text messages on the binary protocols are
//!   read like binary ones, as Kubernetes does (the python client sends `str` stdin as text).
//! - SPDY/3.1 (kubectl ≤ 1.29), `X-Stream-Protocol-Version` `v4.channel.k8s.io` …
//!   `channel.k8s.io`: one SPDY stream per channel, named by its `streamType` header; the
//!   client's FIN on stdin is the close signal.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::spdy;

/// `X-Stream-Protocol-Version`, the SPDY subprotocol negotiation header.
pub const STREAM_PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
/// Sent with a failed negotiation.
pub const ACCEPTED_STREAM_PROTOCOL_VERSIONS: &str = "X-Accepted-Stream-Protocol-Versions";

/// WebSocket subprotocols of exec and attach, best first.
pub const WEBSOCKET_PROTOCOLS: [&str; 7] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// SPDY subprotocols of exec and attach, best first (the kubelet's list).
pub const SPDY_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// Channel 0: the client's stdin.
pub const STDIN: u8 = 0;
/// Channel 1: stdout.
pub const STDOUT: u8 = 1;
/// Channel 2: stderr.
pub const STDERR: u8 = 2;
/// Channel 3: the error channel (the final status).
pub const ERROR: u8 = 3;
/// Channel 4: terminal resizes.
pub const RESIZE: u8 = 4;
/// Channel 255 (v5): close signal, `[255, <channel>]` ends that channel.
pub const CLOSE: u8 = 255;

/// A plain-text answer.
pub fn text(code: StatusCode, msg: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], msg).into_response()
}

/// True for `Upgrade: websocket`.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// True for `Upgrade: SPDY/3.1`.
pub fn is_spdy(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"))
}

/// The WebSocket subprotocols the client offers, in its order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    list_header(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str())
}

fn list_header(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// A list as Go's `%v` prints a `[]string`.
pub fn go_list<S: AsRef<str>>(v: &[S]) -> String {
    let parts: Vec<&str> = v.iter().map(AsRef::as_ref).collect();
    format!("[{}]", parts.join(" "))
}

/// How the client connects, as negotiated.
#[derive(Clone, Debug)]
pub enum Transport {
    /// WebSocket with this subprotocol and the client's key.
    WebSocket {
        /// Chosen subprotocol.
        protocol: &'static str,
        /// `Sec-WebSocket-Key`.
        key: HeaderValue,
    },
    /// SPDY/3.1 with this `X-Stream-Protocol-Version`.
    Spdy {
        /// Chosen subprotocol.
        protocol: &'static str,
    },
}

impl Transport {
    /// The `101 Switching Protocols` answer.
    pub fn switching_protocols(&self) -> Response {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        match self {
            Transport::WebSocket { protocol, key } => {
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(protocol),
                );
                if let Ok(v) = HeaderValue::from_str(&accept) {
                    h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
                }
            }
            Transport::Spdy { protocol } => {
                h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
                h.insert(STREAM_PROTOCOL_VERSION, HeaderValue::from_static(protocol));
            }
        }
        r
    }
}

/// Negotiates a SPDY upgrade with the client's `X-Stream-Protocol-Version`s (Kubernetes'
/// `httpstream.Handshake`: the first one the client lists that the server speaks).
#[allow(clippy::result_large_err)]
pub fn spdy_handshake(headers: &HeaderMap, server: &[&'static str]) -> Result<Transport, Response> {
    if !is_spdy(headers) {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request".into(),
        ));
    }
    let client = list_header(headers, STREAM_PROTOCOL_VERSION);
    if client.is_empty() {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: {STREAM_PROTOCOL_VERSION} is required"),
        ));
    }
    match client
        .iter()
        .find_map(|c| server.iter().find(|s| **s == c.as_str()))
    {
        Some(p) => Ok(Transport::Spdy { protocol: p }),
        None => {
            let mut r = text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {}, server accepts {}",
                    go_list(&client),
                    go_list(server)
                ),
            );
            for s in server {
                r.headers_mut().append(
                    ACCEPTED_STREAM_PROTOCOL_VERSIONS,
                    HeaderValue::from_static(s),
                );
            }
            Err(r)
        }
    }
}

/// Negotiates an exec/attach upgrade: WebSocket with a channel subprotocol, or SPDY.
#[allow(clippy::result_large_err)]
pub fn negotiate(headers: &HeaderMap) -> Result<Transport, Response> {
    if is_websocket(headers) {
        let offered = offered_protocols(headers);
        let Some(protocol) = offered
            .iter()
            .find_map(|p| WEBSOCKET_PROTOCOLS.iter().find(|s| **s == p.as_str()))
        else {
            return Err(text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {}, server accepts {}",
                    go_list(&offered),
                    go_list(&WEBSOCKET_PROTOCOLS)
                ),
            ));
        };
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "missing Sec-WebSocket-Key".into(),
            ));
        };
        return Ok(Transport::WebSocket { protocol, key });
    }
    if is_spdy(headers) {
        return spdy_handshake(headers, &SPDY_PROTOCOLS);
    }
    Err(text(
        StatusCode::BAD_REQUEST,
        "Upgrade request required".into(),
    ))
}

/// Channel messages to the client.
pub type ChannelSink = Pin<Box<dyn Sink<Message, Error = ()> + Send>>;
/// Channel messages from the client; ends (or yields a Close) when the client goes away.
pub type ChannelStream = Pin<Box<dyn Stream<Item = Result<Message, ()>> + Send>>;

/// A connected exec/attach session.
pub struct Channels {
    /// To the client.
    pub sink: ChannelSink,
    /// From the client.
    pub incoming: ChannelStream,
    /// The client signals the end of stdin (v5 close message, SPDY FIN).
    pub close_signal: bool,
    /// The error channel carries a JSON `v1.Status` (v4 and later); else plain text.
    pub json_status: bool,
}

/// The streams a request asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    /// stdin.
    pub stdin: bool,
    /// stdout.
    pub stdout: bool,
    /// stderr.
    pub stderr: bool,
    /// tty.
    pub tty: bool,
}

/// Starts the negotiated protocol on the upgraded connection `io`.
pub async fn open<IO>(io: IO, transport: Transport, expect: Expect) -> Option<Channels>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match transport {
        Transport::WebSocket { protocol, .. } => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            Some(websocket(ws, protocol))
        }
        Transport::Spdy { protocol } => spdy_channels(io, protocol, expect).await,
    }
}

fn websocket<S>(ws: WebSocketStream<S>, protocol: &'static str) -> Channels
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, incoming) = ws.split();
    let b64 = protocol.contains("base64");
    let sink = sink.sink_map_err(|_| ()).with(move |m: Message| {
        futures::future::ready(Ok::<_, ()>(match m {
            Message::Binary(b) if b64 && !b.is_empty() => Message::Text(
                format!(
                    "{}{}",
                    (b'0' + b[0] % 10) as char,
                    base64::engine::general_purpose::STANDARD.encode(&b[1..])
                )
                .into(),
            ),
            other => other,
        }))
    });
    let incoming = incoming.map(move |m| match m {
        Ok(Message::Text(t)) if b64 => {
            let t = t.as_bytes();
            let Some((&ch, rest)) = t.split_first() else {
                return Ok(Message::Binary(Bytes::new()));
            };
            let mut b = vec![ch.wrapping_sub(b'0')];
            match base64::engine::general_purpose::STANDARD.decode(rest) {
                Ok(d) => b.extend(d),
                Err(_) => return Err(()),
            }
            Ok(Message::Binary(b.into()))
        }
        // Binary protocols: a text message carries the same bytes.
        Ok(Message::Text(t)) => Ok(Message::Binary(Bytes::copy_from_slice(t.as_bytes()))),
        Ok(m) => Ok(m),
        Err(_) => Err(()),
    });
    Channels {
        sink: Box::pin(sink),
        incoming: Box::pin(incoming),
        close_signal: protocol == "v5.channel.k8s.io",
        json_status: protocol.starts_with("v4.") || protocol.starts_with("v5."),
    }
}

fn channel_of(stream_type: &str) -> Option<u8> {
    Some(match stream_type {
        "stdin" => STDIN,
        "stdout" => STDOUT,
        "stderr" => STDERR,
        "error" => ERROR,
        "resize" => RESIZE,
        _ => return None,
    })
}

/// How long the client has to open the streams it asked for (Kubernetes' stream creation
/// timeout).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

async fn spdy_channels<IO>(io: IO, protocol: &'static str, expect: Expect) -> Option<Channels>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (sender, mut streams) = spdy::serve(io);
    let ids: Arc<Mutex<HashMap<u8, u32>>> = Arc::default();
    let (in_tx, in_rx) = mpsc::channel::<Result<Message, ()>>(64);
    let mut required = vec![ERROR];
    if expect.stdin {
        required.push(STDIN);
    }
    if expect.stdout {
        required.push(STDOUT);
    }
    if expect.stderr && !expect.tty {
        required.push(STDERR);
    }
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    let take = |s: spdy::Stream, ids: &Arc<Mutex<HashMap<u8, u32>>>, in_tx: &mpsc::Sender<_>| {
        let ch = spdy::header(&s.headers, "streamType").and_then(channel_of)?;
        if let Ok(mut m) = ids.lock() {
            m.insert(ch, s.id);
        }
        read_stream(ch, s.data, in_tx.clone());
        Some(ch)
    };
    while !required.is_empty() {
        match tokio::time::timeout_at(deadline, streams.recv()).await {
            Ok(Some(s)) => {
                if let Some(ch) = take(s, &ids, &in_tx) {
                    required.retain(|c| *c != ch);
                }
            }
            Ok(None) => return None,
            Err(_) => {
                tracing::debug!(missing = ?required, "SPDY streams not created in time");
                sender.go_away().await;
                return None;
            }
        }
    }
    // Later streams (resize, an unrequested stderr) join as they come; the end of the session
    // is a Close.
    let late_ids = ids.clone();
    tokio::spawn(async move {
        while let Some(s) = streams.recv().await {
            take(s, &late_ids, &in_tx);
        }
        let _ = in_tx.send(Ok(Message::Close(None))).await;
    });
    let sink = futures::sink::unfold((sender, ids), |(sender, ids), m: Message| async move {
        match m {
            Message::Binary(b) if !b.is_empty() => {
                let id = ids.lock().ok().and_then(|m| m.get(&b[0]).copied());
                if let Some(id) = id
                    && !sender.data(id, b.slice(1..)).await
                {
                    return Err(());
                }
            }
            Message::Close(_) => {
                let all: Vec<u32> = ids
                    .lock()
                    .map(|m| m.values().copied().collect())
                    .unwrap_or_default();
                for id in all {
                    sender.fin(id).await;
                }
                sender.go_away().await;
            }
            _ => {}
        }
        Ok((sender, ids))
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(in_rx);
    Some(Channels {
        sink: Box::pin(sink),
        incoming: Box::pin(incoming),
        close_signal: true,
        json_status: protocol == "v4.channel.k8s.io",
    })
}

/// Relays one client stream as channel messages: stdin chunks (then a close signal at its
/// FIN), resize JSON objects one per message; other streams are drained.
fn read_stream(ch: u8, mut data: mpsc::Receiver<Bytes>, tx: mpsc::Sender<Result<Message, ()>>) {
    tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        while let Some(b) = data.recv().await {
            match ch {
                STDIN => {
                    let mut m = Vec::with_capacity(b.len() + 1);
                    m.push(STDIN);
                    m.extend_from_slice(&b);
                    if tx.send(Ok(Message::Binary(m.into()))).await.is_err() {
                        return;
                    }
                }
                RESIZE => {
                    // client-go writes one JSON object per size (json.Encoder: newline-ended).
                    pending.extend_from_slice(&b);
                    let mut it = serde_json::Deserializer::from_slice(&pending)
                        .into_iter::<serde_json::Value>();
                    let mut sizes = Vec::new();
                    for v in it.by_ref() {
                        match v {
                            Ok(v) => sizes.push(v),
                            Err(_) => break,
                        }
                    }
                    let used = it.byte_offset();
                    pending.drain(..used);
                    for v in sizes {
                        let mut m = vec![RESIZE];
                        m.extend(serde_json::to_vec(&v).unwrap_or_default());
                        if tx.send(Ok(Message::Binary(m.into()))).await.is_err() {
                            return;
                        }
                    }
                }
                _ => {}
            }
        }
        if ch == STDIN {
            let _ = tx
                .send(Ok(Message::Binary(Bytes::from_static(&[CLOSE, STDIN]))))
                .await;
        }
    });
}

/// The byte stream carried by a WebSocket's binary messages (Kubernetes' tunnelling of SPDY
/// through WebSocket for port-forward); ends at the WebSocket's close, and a close of the
/// returned stream's write side closes the WebSocket normally.
pub fn websocket_bytes<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut sink, mut incoming) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = incoming.next().await {
            let bytes: &[u8] = match &m {
                Message::Binary(b) => b,
                Message::Text(t) => t.as_bytes(),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(crate::stream::normal_close()).await;
        let _ = sink.close().await;
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn websocket_subprotocols_of_every_client() {
        for (offer, chosen) in [
            ("v5.channel.k8s.io, v4.channel.k8s.io", "v5.channel.k8s.io"),
            ("v4.channel.k8s.io", "v4.channel.k8s.io"),
            ("channel.k8s.io", "channel.k8s.io"),
            ("base64.channel.k8s.io", "base64.channel.k8s.io"),
            ("v4.base64.channel.k8s.io", "v4.base64.channel.k8s.io"),
        ] {
            let h = headers(&[
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-protocol", offer),
            ]);
            match negotiate(&h) {
                Ok(Transport::WebSocket { protocol, .. }) => assert_eq!(protocol, chosen),
                _ => panic!("{offer} refused"),
            }
        }
    }

    #[test]
    fn spdy_negotiation_and_refusal() {
        let h = headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
        ]);
        assert!(matches!(
            negotiate(&h),
            Ok(Transport::Spdy {
                protocol: "v4.channel.k8s.io"
            })
        ));
        let h = headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v9.channel.k8s.io"),
        ]);
        let Err(r) = negotiate(&h) else {
            panic!("bad version accepted")
        };
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let h = headers(&[("upgrade", "SPDY/3.1")]);
        let Err(r) = negotiate(&h) else {
            panic!("missing version accepted")
        };
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    async fn ws_pair(
        protocol: &'static str,
    ) -> (Channels, WebSocketStream<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let server = open(a, Transport::WebSocket { protocol, key }, Expect::default());
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None);
        let (server, client) = tokio::join!(server, client);
        (server.unwrap(), client)
    }

    #[tokio::test]
    async fn v4_text_stdin_is_read_like_binary() {
        // The python client writes str stdin as text messages on v4.channel.k8s.io.
        let (mut ch, mut client) = ws_pair("v4.channel.k8s.io").await;
        assert!(ch.json_status && !ch.close_signal);
        client
            .send(Message::Text("\u{0}echo hi\n".into()))
            .await
            .unwrap();
        let m = ch.incoming.next().await.unwrap().unwrap();
        assert_eq!(m, Message::Binary(Bytes::from_static(b"\0echo hi\n")));
        ch.sink
            .send(Message::Binary(Bytes::from_static(b"\x01hi\n")))
            .await
            .unwrap();
        let m = client.next().await.unwrap().unwrap();
        assert_eq!(m, Message::Binary(Bytes::from_static(b"\x01hi\n")));
    }

    #[tokio::test]
    async fn base64_channels_both_ways() {
        let (mut ch, mut client) = ws_pair("base64.channel.k8s.io").await;
        assert!(!ch.json_status);
        client
            .send(Message::Text("0aGVsbG8=".into()))
            .await
            .unwrap();
        let m = ch.incoming.next().await.unwrap().unwrap();
        assert_eq!(m, Message::Binary(Bytes::from_static(b"\0hello")));
        ch.sink
            .send(Message::Binary(Bytes::from_static(b"\x02err")))
            .await
            .unwrap();
        let m = client.next().await.unwrap().unwrap();
        assert_eq!(m, Message::Text("2ZXJy".into()));
    }

    #[tokio::test]
    async fn spdy_streams_become_channels() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let expect = Expect {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let server = tokio::spawn(open(
            a,
            Transport::Spdy {
                protocol: "v4.channel.k8s.io",
            },
            expect,
        ));
        let (mut crd, mut cwr) = tokio::io::split(b);
        let mut enc = spdy::Encoder::new();
        let mut wire = bytes::BytesMut::new();
        for (id, ty) in [(1u32, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
            let f = spdy::Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamType".into(), ty.into())],
            };
            enc.encode(&f, &mut wire).unwrap();
        }
        for (id, flags, data) in [
            (7u32, 0u8, &b"{\"Width\":80,\"Height\":24}\n{\"Wid"[..]),
            (7, 0, &b"th\":100,\"Height\":40}\n"[..]),
            (3, spdy::FLAG_FIN, &b"input"[..]),
        ] {
            let f = spdy::Frame::Data {
                stream_id: id,
                flags,
                data: Bytes::copy_from_slice(data),
            };
            enc.encode(&f, &mut wire).unwrap();
        }
        cwr.write_all(&wire).await.unwrap();
        let mut ch = server.await.unwrap().unwrap();
        assert!(ch.close_signal && ch.json_status);
        let mut got = Vec::new();
        while got.len() < 4 {
            match ch.incoming.next().await.unwrap().unwrap() {
                Message::Binary(b) => got.push(b.to_vec()),
                other => panic!("{other:?}"),
            }
        }
        assert!(got.contains(&b"\0input".to_vec()), "{got:?}");
        assert!(got.contains(&vec![CLOSE, STDIN]), "{got:?}");
        assert!(
            got.contains(&b"\x04{\"Width\":80,\"Height\":24}".to_vec()),
            "{got:?}"
        );
        assert!(
            got.contains(&b"\x04{\"Width\":100,\"Height\":40}".to_vec()),
            "{got:?}"
        );
        // stdout goes out on stream 5.
        ch.sink
            .send(Message::Binary(Bytes::from_static(b"\x01out")))
            .await
            .unwrap();
        let mut dec = spdy::Decoder::new();
        let mut buf = bytes::BytesMut::new();
        loop {
            crd.read_buf(&mut buf).await.unwrap();
            let mut found = false;
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                if let spdy::Frame::Data {
                    stream_id: 5, data, ..
                } = f
                {
                    assert_eq!(&data[..], b"out");
                    found = true;
                }
            }
            if found {
                break;
            }
        }
    }

    #[test]
    fn go_lists() {
        assert_eq!(go_list(&["a", "b"]), "[a b]");
    }
}
