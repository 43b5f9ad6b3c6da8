//! SPDY/3.1 framing and a server-side session, as Kubernetes' streaming protocols use them
//! (`kubectl exec`/`attach` up to 1.29, `kubectl port-forward` up to 1.30 over an HTTP upgrade
//! to `SPDY/3.1`, and from 1.31 tunnelled inside WebSocket binary messages under the
//! subprotocol `SPDY/3.1+portforward.k8s.io`).
//!
//! Only what client-go's spdystream speaks is implemented: SYN_STREAM, SYN_REPLY, RST_STREAM,
//! SETTINGS (read and ignored), PING (echoed), GOAWAY, HEADERS, WINDOW_UPDATE (read and ignored:
//! spdystream does no flow control, so neither side ever waits for a window) and DATA.
//! Header blocks are zlib streams with the SPDY/3 dictionary, one compression context per
//! direction for the whole connection, each block ended with a sync flush (draft-mbelshe
//! SPDY/3 §2.6.10). No maintained SPDY crate exists on crates.io (SPDY was retired in 2016), so
//! the framing is written here on `flate2` (zlib-rs backend, which supports preset
//! dictionaries).
use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// SPDY version in control frames.
pub const VERSION: u16 = 3;
/// FLAG_FIN on SYN_STREAM, SYN_REPLY, HEADERS and DATA.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// Largest frame payload accepted (spdystream's limit is the 24-bit length; this bounds memory).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest DATA payload written at once.
pub const MAX_DATA: usize = 32 * 1024;

/// RST_STREAM status: PROTOCOL_ERROR.
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status: INVALID_STREAM.
pub const RST_INVALID_STREAM: u32 = 2;
/// RST_STREAM status: CANCEL.
pub const RST_CANCEL: u32 = 5;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// The SPDY/3 header-compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1): the
/// length-prefixed names below, then a tail of common values.
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
});

/// Header name/value pairs; names are lower case on the wire and compared case-insensitively.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (case-insensitive).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A SPDY/3 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// Stream ID (odd from the client).
        stream_id: u32,
        /// Associated stream (server push; 0).
        associated_to: u32,
        /// Priority 0–7.
        priority: u8,
        /// FLAG_FIN / FLAG_UNIDIRECTIONAL.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream ID.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream ID.
        stream_id: u32,
        /// Status code.
        status: u32,
    },
    /// Settings (payload kept raw; not interpreted).
    Settings(Bytes),
    /// Liveness check, echoed.
    Ping(u32),
    /// The sender ends the session.
    GoAway {
        /// Last stream the sender handled.
        last_good_stream_id: u32,
        /// Status code.
        status: u32,
    },
    /// More headers on a stream.
    Headers {
        /// Stream ID.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Flow-control credit.
    WindowUpdate {
        /// Stream ID (0: the session).
        stream_id: u32,
        /// Credit in bytes.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// Stream ID.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Payload.
        data: Bytes,
    },
    /// A control frame of a type not listed above (skipped).
    Unknown(u16),
}

/// A framing or compression failure: the session cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not SPDY/3 or malformed.
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    /// zlib failed on a header block.
    #[error("SPDY header compression: {0}")]
    Compression(String),
    /// The connection failed.
    #[error("SPDY connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes frames; owns the connection's outbound header-compression context.
pub struct Encoder {
    z: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// A fresh compression context primed with [`DICTIONARY`].
    pub fn new() -> Encoder {
        let mut z = Compress::new(Compression::best(), true);
        // Setting a dictionary on a fresh zlib stream cannot fail.
        let _ = z.set_dictionary(&DICTIONARY);
        Encoder { z }
    }

    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, Error> {
        let mut raw = Vec::new();
        raw.put_u32(headers.len() as u32);
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.put_u32(k.len() as u32);
            raw.extend_from_slice(k.as_bytes());
            raw.put_u32(v.len() as u32);
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start_in = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.z
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Compression(e.to_string()))?;
            let consumed = (self.z.total_in() - start_in) as usize;
            // Done once all input is in and the flush left spare room in the output.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// Appends `f` to `out`.
    pub fn encode(&mut self, f: &Frame, out: &mut BytesMut) -> Result<(), Error> {
        let control = |out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]| {
            out.put_u16(0x8000 | VERSION);
            out.put_u16(kind);
            out.put_u32(((flags as u32) << 24) | payload.len() as u32);
            out.extend_from_slice(payload);
        };
        match f {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(associated_to & 0x7fff_ffff);
                p.put_u8((priority & 0x7) << 5);
                p.put_u8(0);
                p.extend(self.header_block(headers)?);
                control(out, SYN_STREAM, *flags, &p);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(stream_id & 0x7fff_ffff);
                p.extend(self.header_block(headers)?);
                control(out, SYN_REPLY, *flags, &p);
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(stream_id & 0x7fff_ffff);
                p.extend(self.header_block(headers)?);
                control(out, HEADERS, *flags, &p);
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(out, RST_STREAM, 0, &p);
            }
            Frame::Settings(raw) => control(out, SETTINGS, 0, raw),
            Frame::Ping(id) => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&(last_good_stream_id & 0x7fff_ffff).to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(out, GOAWAY, 0, &p);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p[4..].copy_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, WINDOW_UPDATE, 0, &p);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > 0xff_ffff {
                    return Err(Error::Protocol(format!(
                        "DATA frame of {} bytes",
                        data.len()
                    )));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(((*flags as u32) << 24) | data.len() as u32);
                out.extend_from_slice(data);
            }
            Frame::Unknown(kind) => {
                return Err(Error::Protocol(format!("cannot write frame type {kind}")));
            }
        }
        Ok(())
    }
}

/// Reads frames; owns the connection's inbound header-decompression context.
pub struct Decoder {
    z: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A fresh decompression context (the dictionary is supplied when zlib asks for it).
    pub fn new() -> Decoder {
        Decoder {
            z: Decompress::new(true),
        }
    }

    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let start_in = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            let before_out = out.len();
            match self
                .z
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => return Ok(out),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| Error::Compression(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(Error::Compression(e.to_string())),
            }
            let consumed_now = (self.z.total_in() - start_in) as usize;
            if consumed_now == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed_now == consumed && out.len() == before_out && out.len() < out.capacity() {
                return Err(Error::Compression("truncated header block".into()));
            }
        }
    }

    fn header_block(&mut self, block: &[u8]) -> Result<Headers, Error> {
        let raw = self.inflate(block)?;
        let mut b = &raw[..];
        let bad = || Error::Protocol("malformed header block".into());
        let take = |b: &mut &[u8]| -> Result<String, Error> {
            if b.remaining() < 4 {
                return Err(bad());
            }
            let n = b.get_u32() as usize;
            if b.remaining() < n {
                return Err(bad());
            }
            let s = String::from_utf8_lossy(&b[..n]).into_owned();
            b.advance(n);
            Ok(s)
        };
        if b.remaining() < 4 {
            return Err(bad());
        }
        let count = b.get_u32() as usize;
        let mut h = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let k = take(&mut b)?;
            let v = take(&mut b)?;
            // Several values of one name are joined with NUL bytes.
            for v in v.split('\0') {
                h.push((k.clone(), v.to_string()));
            }
        }
        Ok(h)
    }

    /// The next complete frame in `buf` (consumed from it), or None when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        if len > MAX_FRAME {
            return Err(Error::Protocol(format!("frame of {len} bytes")));
        }
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        let mut head = buf.split_to(8);
        let payload = buf.split_to(len).freeze();
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let stream_id = head.get_u32() & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let version = head.get_u16() & 0x7fff;
        let kind = head.get_u16();
        if version != VERSION {
            return Err(Error::Protocol(format!(
                "unsupported SPDY version {version}"
            )));
        }
        let short = || Error::Protocol(format!("short control frame of type {kind}"));
        let u32_at = |i: usize| -> Result<u32, Error> {
            payload
                .get(i..i + 4)
                .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
                .ok_or_else(short)
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                if payload.len() < 10 {
                    return Err(short());
                }
                Frame::SynStream {
                    stream_id: u32_at(0)? & 0x7fff_ffff,
                    associated_to: u32_at(4)? & 0x7fff_ffff,
                    priority: payload[8] >> 5,
                    flags,
                    headers: self.header_block(&payload[10..])?,
                }
            }
            SYN_REPLY | HEADERS => {
                let stream_id = u32_at(0)? & 0x7fff_ffff;
                let headers = self.header_block(&payload[4..])?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            RST_STREAM => Frame::RstStream {
                stream_id: u32_at(0)? & 0x7fff_ffff,
                status: u32_at(4)?,
            },
            SETTINGS => Frame::Settings(payload),
            PING => Frame::Ping(u32_at(0)?),
            GOAWAY => Frame::GoAway {
                last_good_stream_id: u32_at(0)? & 0x7fff_ffff,
                status: u32_at(4).unwrap_or(0),
            },
            WINDOW_UPDATE => Frame::WindowUpdate {
                stream_id: u32_at(0)? & 0x7fff_ffff,
                delta: u32_at(4)? & 0x7fff_ffff,
            },
            other => Frame::Unknown(other),
        }))
    }
}

/// A stream the client opened.
#[derive(Debug)]
pub struct Stream {
    /// Its ID.
    pub id: u32,
    /// Its SYN_STREAM headers (`streamType`, `port`, `requestID`, …).
    pub headers: Headers,
    /// The client's payload; ends at the client's FIN or RST_STREAM, or when the session ends.
    pub data: mpsc::Receiver<Bytes>,
}

/// Writes to the session's streams (cheap to clone; the session's writer ends when every
/// handle is gone).
#[derive(Clone, Debug)]
pub struct Sender {
    tx: mpsc::Sender<Frame>,
}

impl Sender {
    /// Sends `data` on stream `id` (in frames of at most [`MAX_DATA`] bytes). False once the
    /// session is gone.
    pub async fn data(&self, id: u32, data: Bytes) -> bool {
        let mut data = data;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA));
            let f = Frame::Data {
                stream_id: id,
                flags: 0,
                data: chunk,
            };
            if self.tx.send(f).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes stream `id` (an empty DATA frame with FLAG_FIN).
    pub async fn fin(&self, id: u32) -> bool {
        let f = Frame::Data {
            stream_id: id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        };
        self.tx.send(f).await.is_ok()
    }

    /// Aborts stream `id`.
    pub async fn reset(&self, id: u32, status: u32) -> bool {
        let f = Frame::RstStream {
            stream_id: id,
            status,
        };
        self.tx.send(f).await.is_ok()
    }

    /// Ends the session (GOAWAY); the writer then closes the connection once idle.
    pub async fn go_away(&self) {
        let _ = self
            .tx
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await;
    }

    /// True when the session's writer has stopped (connection gone).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Runs the server side of a SPDY session on `io`: every stream the client opens is accepted
/// (SYN_REPLY) and handed out on the returned receiver; PINGs are answered. The receiver ends
/// when the client goes away or says GOAWAY.
pub fn serve<IO>(io: IO) -> (Sender, mpsc::Receiver<Stream>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    let (streams_tx, streams_rx) = mpsc::channel::<Stream>(64);
    tokio::spawn(async move {
        let mut enc = Encoder::new();
        let mut out = BytesMut::with_capacity(64 * 1024);
        while let Some(f) = rx.recv().await {
            let go_away = matches!(f, Frame::GoAway { .. });
            if let Err(e) = enc.encode(&f, &mut out) {
                tracing::debug!(error = %e, "spdy: encoding");
                break;
            }
            // Gather what is queued into one write.
            while out.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(f) => {
                        if enc.encode(&f, &mut out).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            out.clear();
            if go_away {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let sender = Sender { tx: tx.clone() };
    tokio::spawn(async move {
        let mut dec = Decoder::new();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
        'read: loop {
            loop {
                let f = match dec.decode(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "spdy: decoding");
                        let _ = tx
                            .send(Frame::GoAway {
                                last_good_stream_id: 0,
                                status: 1,
                            })
                            .await;
                        break 'read;
                    }
                };
                match f {
                    Frame::SynStream {
                        stream_id,
                        flags,
                        headers,
                        ..
                    } => {
                        let (dtx, drx) = mpsc::channel(64);
                        if flags & FLAG_FIN == 0 {
                            open.insert(stream_id, dtx);
                        }
                        let reply = Frame::SynReply {
                            stream_id,
                            flags: 0,
                            headers: Vec::new(),
                        };
                        if tx.send(reply).await.is_err() {
                            break 'read;
                        }
                        let s = Stream {
                            id: stream_id,
                            headers,
                            data: drx,
                        };
                        if streams_tx.send(s).await.is_err() {
                            let _ = tx
                                .send(Frame::RstStream {
                                    stream_id,
                                    status: RST_CANCEL,
                                })
                                .await;
                        }
                    }
                    Frame::Data {
                        stream_id,
                        flags,
                        data,
                    } => {
                        if let Some(d) = open.get(&stream_id)
                            && !data.is_empty()
                            && d.send(data).await.is_err()
                        {
                            // The handler no longer reads this stream.
                            open.remove(&stream_id);
                        }
                        if flags & FLAG_FIN != 0 {
                            open.remove(&stream_id);
                        }
                    }
                    Frame::RstStream { stream_id, .. } => {
                        open.remove(&stream_id);
                    }
                    Frame::Headers {
                        stream_id, flags, ..
                    } => {
                        if flags & FLAG_FIN != 0 {
                            open.remove(&stream_id);
                        }
                    }
                    Frame::Ping(id) => {
                        if tx.send(Frame::Ping(id)).await.is_err() {
                            break 'read;
                        }
                    }
                    Frame::GoAway { .. } => break 'read,
                    Frame::SynReply { .. }
                    | Frame::Settings(_)
                    | Frame::WindowUpdate { .. }
                    | Frame::Unknown(_) => {}
                }
            }
            // BytesMut only grows by 64 bytes when full: keep room for large reads.
            buf.reserve(64 * 1024);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Dropping `open` ends every stream's data; dropping `streams_tx` ends the session.
    });
    (sender, streams_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: &Frame) -> Vec<u8> {
        let mut out = BytesMut::new();
        Encoder::new().encode(f, &mut out).unwrap();
        out.to_vec()
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b",*,enq=0."));
    }

    #[test]
    fn data_frames_byte_exact() {
        let f = Frame::Data {
            stream_id: 3,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"hi"),
        };
        assert_eq!(enc(&f), [0, 0, 0, 3, 1, 0, 0, 2, b'h', b'i']);
        let mut buf = BytesMut::from(&enc(&f)[..]);
        assert_eq!(Decoder::new().decode(&mut buf).unwrap(), Some(f));
        assert!(buf.is_empty());
    }

    #[test]
    fn control_frames_byte_exact() {
        let cases: Vec<(Frame, Vec<u8>)> = vec![
            (
                Frame::RstStream {
                    stream_id: 5,
                    status: RST_CANCEL,
                },
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5],
            ),
            (Frame::Ping(7), vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]),
            (
                Frame::GoAway {
                    last_good_stream_id: 9,
                    status: 0,
                },
                vec![0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 0],
            ),
            (
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta: 65536,
                },
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 1, 0, 0],
            ),
        ];
        for (f, bytes) in cases {
            assert_eq!(enc(&f), bytes, "{f:?}");
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(Decoder::new().decode(&mut buf).unwrap(), Some(f));
        }
    }

    #[test]
    fn header_blocks_round_trip_across_frames() {
        let mut e = Encoder::new();
        let mut d = Decoder::new();
        let mut wire = BytesMut::new();
        let h1: Headers = vec![
            ("streamtype".into(), "error".into()),
            ("port".into(), "5432".into()),
            ("requestid".into(), "0".into()),
        ];
        let syn = Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: h1.clone(),
        };
        e.encode(&syn, &mut wire).unwrap();
        // Frame header: control, version 3, type 1, flags 0, then stream 1, assoc 0, prio, slot.
        assert_eq!(&wire[..4], &[0x80, 3, 0, 1]);
        assert_eq!(wire[4], 0);
        assert_eq!(&wire[8..18], &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        // The header block is a zlib stream (CM 8) with a preset dictionary (FDICT) whose
        // Adler-32 follows the two header bytes.
        assert_eq!(wire[18] & 0x0f, 8);
        assert_eq!(wire[19] & 0x20, 0x20);
        assert_eq!(((wire[18] as u16) << 8 | wire[19] as u16) % 31, 0);
        let dict_id = u32::from_be_bytes([wire[20], wire[21], wire[22], wire[23]]);
        let (mut s1, mut s2) = (1u32, 0u32);
        for b in DICTIONARY.iter() {
            s1 = (s1 + *b as u32) % 65521;
            s2 = (s2 + s1) % 65521;
        }
        assert_eq!(dict_id, (s2 << 16) | s1);
        // A second frame continues the same zlib stream (no new zlib header).
        let h2: Headers = vec![
            ("streamtype".into(), "data".into()),
            ("port".into(), "5432".into()),
            ("requestid".into(), "0".into()),
        ];
        let syn2 = Frame::SynStream {
            stream_id: 3,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: h2.clone(),
        };
        let first_len = wire.len();
        e.encode(&syn2, &mut wire).unwrap();
        assert_ne!(wire[first_len + 18], 0x78);
        let reply = Frame::SynReply {
            stream_id: 3,
            flags: 0,
            headers: vec![],
        };
        e.encode(&reply, &mut wire).unwrap();
        assert_eq!(d.decode(&mut wire).unwrap(), Some(syn));
        assert_eq!(d.decode(&mut wire).unwrap(), Some(syn2));
        assert_eq!(d.decode(&mut wire).unwrap(), Some(reply));
        assert_eq!(d.decode(&mut wire).unwrap(), None);
        assert_eq!(header(&h2, "streamType"), Some("data"));
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let bytes = enc(&Frame::Ping(1));
        let mut buf = BytesMut::from(&bytes[..5]);
        let mut d = Decoder::new();
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&bytes[5..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::Ping(1)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut buf = BytesMut::from(&[0x80, 2, 0, 1, 0, 0, 0, 0][..]);
        assert!(Decoder::new().decode(&mut buf).is_err());
        let mut buf = BytesMut::from(
            &[
                0x80, 3, 0, 1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2,
            ][..],
        );
        assert!(Decoder::new().decode(&mut buf).is_err());
    }

    #[tokio::test]
    async fn session_demultiplexes_streams() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (sender, mut streams) = serve(server);
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut e = Encoder::new();
        let mut wire = BytesMut::new();
        for (id, ty) in [(1u32, "error"), (3, "data")] {
            e.encode(
                &Frame::SynStream {
                    stream_id: id,
                    associated_to: 0,
                    priority: 0,
                    flags: 0,
                    headers: vec![("streamtype".into(), ty.into())],
                },
                &mut wire,
            )
            .unwrap();
        }
        e.encode(
            &Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"ping"),
            },
            &mut wire,
        )
        .unwrap();
        e.encode(&Frame::Ping(42), &mut wire).unwrap();
        cwr.write_all(&wire).await.unwrap();
        let s1 = streams.recv().await.unwrap();
        assert_eq!(
            (s1.id, header(&s1.headers, "streamType")),
            (1, Some("error"))
        );
        let mut s3 = streams.recv().await.unwrap();
        assert_eq!(s3.id, 3);
        assert_eq!(s3.data.recv().await.unwrap(), Bytes::from_static(b"ping"));
        assert_eq!(s3.data.recv().await, None, "FIN ends the stream's data");
        assert!(sender.data(3, Bytes::from_static(b"pong")).await);
        assert!(sender.fin(3).await);
        // Read back: two SYN_REPLYs, the PING echo, DATA, DATA+FIN.
        let mut d = Decoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        while got.len() < 5 {
            crd.read_buf(&mut buf).await.unwrap();
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert!(matches!(got[0], Frame::SynReply { stream_id: 1, .. }));
        assert!(matches!(got[1], Frame::SynReply { stream_id: 3, .. }));
        assert!(got.contains(&Frame::Ping(42)));
        assert!(got.contains(&Frame::Data {
            stream_id: 3,
            flags: 0,
            data: Bytes::from_static(b"pong")
        }));
        assert!(got.contains(&Frame::Data {
            stream_id: 3,
            flags: FLAG_FIN,
            data: Bytes::new()
        }));
    }
}
