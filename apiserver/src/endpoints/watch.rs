//! WATCH: a chunked stream of `{"type":..,"object":..}` lines served from the watch cache.
//!
//! The protocol per watcher is a small state machine: `Initial` (synthetic ADDED events or a
//! replay from the requested revision) → optional initial-events-end BOOKMARK → `Live`
//! (broadcast events, periodic BOOKMARKs) → `Done` (timeout, client gone, or the watcher fell
//! behind / the cache re-listed, after which the client re-watches from its last revision).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::cache::cacher::{Broadcast, Cacher, WatchFromError, WatchStart};
use crate::cache::object::{CacheEvent, CacheEventType, CachedObject};
use crate::endpoints::handlers::{Ctx, header_str};
use crate::endpoints::list::Selection;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::registry::ResourceDef;
use crate::request::{Query, ResponseFormat, response_format};
use crate::storage::Revision;

/// How often a live watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// How the watcher encodes objects.
#[derive(Clone)]
struct Encoder {
    def: &'static ResourceDef,
    table: bool,
    /// `as=PartialObjectMetadata`: objects as `meta.k8s.io/v1` PartialObjectMetadata.
    metadata: bool,
    query: Query,
    sent_columns: bool,
}

impl Encoder {
    fn line(
        &mut self,
        event_type: &str,
        obj: &CachedObject,
        rv_override: Option<Revision>,
    ) -> Bytes {
        if !self.table && !self.metadata {
            match rv_override {
                None => return crate::cache::object::watch_line(event_type, &obj.raw),
                // The previous object with the event's revision (an object leaving a selector):
                // the revision is replaced in the bytes, not by decoding and re-encoding.
                Some(rv) => {
                    if let Some(raw) = crate::cache::object::replace_resource_version(&obj.raw, rv)
                    {
                        return crate::cache::object::watch_line(event_type, &raw);
                    }
                }
            }
        }
        let mut v: Value = serde_json::from_slice(&obj.raw).unwrap_or(Value::Null);
        if let Some(rv) = rv_override {
            crate::registry::fields::set_rv(&mut v, rv);
        }
        let object = if self.metadata {
            crate::endpoints::table::partial_metadata(&v)
        } else if self.table {
            let with_cols = !self.sent_columns;
            self.sent_columns = true;
            crate::endpoints::table::build(
                self.def,
                std::slice::from_ref(&v),
                &self.query,
                None,
                None,
                with_cols,
            )
        } else {
            v
        };
        encode_event(event_type, &object)
    }

    fn bookmark(&self, rv: Revision, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_end && let Value::Object(m) = &mut meta {
            m.insert(
                "annotations".into(),
                json!({"k8s.io/initial-events-end": "true"}),
            );
        }
        let obj = if self.table {
            json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}, "columnDefinitions": [], "rows": []})
        } else if self.metadata {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
        } else {
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta})
        };
        encode_event("BOOKMARK", &obj)
    }
}

fn encode_event(event_type: &str, object: &Value) -> Bytes {
    let mut out =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

fn error_event(e: &ApiError) -> Bytes {
    encode_event("ERROR", &e.status())
}

/// Converts a cache event for a watcher with selectors (ADDED/MODIFIED/DELETED transitions as
/// Kubernetes' cacheWatcher does).
fn convert<'a>(
    ev: &'a CacheEvent,
    sel: &Selection,
) -> Option<(&'static str, &'a CachedObject, Option<Revision>)> {
    let cur = sel.matches(&ev.object);
    let prev = ev.prev.as_deref().map(|p| sel.matches(p)).unwrap_or(false);
    match ev.event_type {
        CacheEventType::Added if cur => Some(("ADDED", &ev.object, None)),
        CacheEventType::Modified if cur && prev => Some(("MODIFIED", &ev.object, None)),
        CacheEventType::Modified if cur => Some(("ADDED", &ev.object, None)),
        CacheEventType::Modified if prev => {
            ev.prev.as_deref().map(|p| ("DELETED", p, Some(ev.rv())))
        }
        CacheEventType::Deleted if cur => Some(("DELETED", &ev.object, None)),
        _ => None,
    }
}

/// The line to send for an event, reusing the event's shared line when the watcher sees the
/// event unchanged (JSON output, same event type, same object).
fn encode(enc: &mut Encoder, ev: &CacheEvent, sel: &Selection) -> Option<Bytes> {
    let (t, o, rvo) = convert(ev, sel)?;
    let unchanged = !enc.table
        && !enc.metadata
        && rvo.is_none()
        && std::ptr::eq(o, &*ev.object)
        && matches!(
            (t, ev.event_type),
            ("ADDED", CacheEventType::Added)
                | ("MODIFIED", CacheEventType::Modified)
                | ("DELETED", CacheEventType::Deleted)
        );
    if unchanged {
        Some(ev.line.clone())
    } else {
        Some(enc.line(t, o, rvo))
    }
}

fn in_prefix(o: &CachedObject, sel: &Selection) -> bool {
    o.key.starts_with(&sel.key_prefix)
}

/// Serves a WATCH request.
pub async fn serve(ctx: &Ctx<'_>) -> ApiResult<Response> {
    let def = ctx.rp.def;
    let sel = Selection::from_ctx(ctx)?;
    let q = ctx.query;
    let bookmarks = q.flag("allowWatchBookmarks");
    let send_initial = q.get("sendInitialEvents").map(|v| v == "true");
    let rv = q.get("resourceVersion").filter(|s| !s.is_empty());
    let rv_num = match rv {
        None => None,
        Some(s) => Some(
            s.parse::<Revision>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
        ),
    };
    if send_initial.is_some()
        && (!bookmarks || q.get("resourceVersionMatch") != Some("NotOlderThan"))
        && send_initial == Some(true)
    {
        return Err(ApiError::new(
            422,
            "Invalid",
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
        ));
    }
    let timeout = match q.int("timeoutSeconds")? {
        Some(t) if t > 0 => Duration::from_secs(t as u64),
        _ => Duration::from_secs(1800 + rand::random::<u64>() % 1800),
    };
    let cacher = ctx.state.cacher_for(def).await?;
    // rv unset or 0: start with the current state (synthetic ADDED events), unless the client
    // explicitly asked for no initial events.
    let initial_snapshot = match (rv_num, send_initial) {
        (_, Some(true)) => true,
        (_, Some(false)) => false,
        (None, None) | (Some(0), None) => true,
        _ => false,
    };
    if rv_num.is_none() && initial_snapshot {
        // Consistent start: the snapshot must include everything written before this request.
        cacher.wait_fresh().await?;
    }
    let start = if initial_snapshot {
        cacher.watch_from(None).await
    } else {
        cacher.watch_from(Some(rv_num.unwrap_or(0).max(0))).await
    };
    let format = response_format(header_str(ctx.headers, header::ACCEPT));
    let enc = Encoder {
        def,
        table: format == ResponseFormat::Table,
        metadata: format == ResponseFormat::Metadata,
        query: q.clone(),
        sent_columns: false,
    };
    let start = match start {
        Ok(s) => s,
        Err(WatchFromError::TooOld { requested, oldest }) => {
            let e = ApiError::expired(format!("too old resource version: {requested} ({oldest})"));
            return Ok(stream_response(futures::stream::iter([Ok::<
                _,
                std::io::Error,
            >(
                error_event(&e)
            )])));
        }
        Err(WatchFromError::TooLarge { requested, current }) => {
            return Err(ApiError::too_large_resource_version(requested, current));
        }
    };
    let (phase, rx) = match start {
        WatchStart::Snapshot(objects, revision, rx) => (
            Phase::Snapshot {
                objects,
                next: 0,
                revision,
                end_bookmark: send_initial == Some(true),
            },
            rx,
        ),
        WatchStart::Replay(events, rx) => (Phase::Replay { events, next: 0 }, rx),
    };
    // Where a catch-up after falling behind starts (the snapshot's revision once it is sent).
    let last_rv = if initial_snapshot {
        0
    } else {
        rv_num.unwrap_or(0).max(0)
    };
    ctx.state.metrics.watchers_inc(def.plural, 1);
    let watcher = Watcher {
        phase,
        rx,
        cacher,
        sel,
        enc,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        bookmarks,
        bookmark_timer: None,
        last_rv,
        _open: OpenWatch {
            metrics: ctx.state.metrics.clone(),
            resource: def.plural,
        },
    };
    // The body polls the watcher directly (no task and channel per watcher): an event wakes
    // only the connection's task, and a closed connection drops the watcher.
    let stream = futures::stream::unfold(watcher, |mut w| async move {
        let line = w.next_line().await?;
        Some((Ok::<_, std::io::Error>(line), w))
    });
    Ok(stream_response(stream))
}

fn stream_response<S>(stream: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut r = (StatusCode::OK, Body::from_stream(stream)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r
}

/// Counts an open watch in the metrics for as long as it lives.
struct OpenWatch {
    metrics: Arc<Metrics>,
    resource: &'static str,
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.metrics.watchers_inc(self.resource, -1);
    }
}

/// Where a watcher is in the protocol.
enum Phase {
    /// Sending the current state as synthetic ADDED events, then (if asked) the
    /// initial-events-end BOOKMARK at `revision`.
    Snapshot {
        objects: Vec<Arc<CachedObject>>,
        next: usize,
        revision: Revision,
        end_bookmark: bool,
    },
    /// Replaying buffered events after the requested revision.
    Replay {
        events: Vec<Arc<CacheEvent>>,
        next: usize,
    },
    /// Forwarding broadcast events and periodic BOOKMARKs.
    Live,
    /// Timed out, fell behind, or the cache re-listed; the client re-watches.
    Done,
}

/// One serving watch: its protocol phase, subscription and encoder.
struct Watcher {
    phase: Phase,
    rx: broadcast::Receiver<Broadcast>,
    /// Where events missed by a lagging receiver are replayed from.
    cacher: Arc<Cacher>,
    sel: Selection,
    enc: Encoder,
    deadline: Pin<Box<tokio::time::Sleep>>,
    bookmarks: bool,
    /// Started when the watch goes live.
    bookmark_timer: Option<tokio::time::Interval>,
    last_rv: Revision,
    _open: OpenWatch,
}

impl Watcher {
    /// The next line to send, or `None` when the watch ends.
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            match &mut self.phase {
                Phase::Snapshot {
                    objects,
                    next,
                    revision,
                    end_bookmark,
                } => {
                    while let Some(o) = objects.get(*next) {
                        *next += 1;
                        if in_prefix(o, &self.sel) && self.sel.matches(o) {
                            return Some(self.enc.line("ADDED", o, None));
                        }
                    }
                    let (revision, end_bookmark) = (*revision, *end_bookmark);
                    self.last_rv = revision;
                    self.go_live();
                    if end_bookmark {
                        return Some(self.enc.bookmark(revision, true));
                    }
                }
                Phase::Replay { events, next } => {
                    while let Some(ev) = events.get(*next) {
                        *next += 1;
                        self.last_rv = ev.rv();
                        if !in_prefix(&ev.object, &self.sel) {
                            continue;
                        }
                        if let Some(line) = encode(&mut self.enc, ev, &self.sel) {
                            return Some(line);
                        }
                    }
                    self.go_live();
                }
                Phase::Live => {
                    if let Some(line) = self.live().await {
                        return Some(line);
                    }
                }
                Phase::Done => return None,
            }
        }
    }

    fn go_live(&mut self) {
        self.phase = Phase::Live;
        self.bookmark_timer = Some(tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_INTERVAL,
            BOOKMARK_INTERVAL,
        ));
    }

    /// Waits for the next live line; `None` with the phase still `Live` means "nothing to
    /// send for that event", with the phase `Done` that the watch ended.
    async fn live(&mut self) -> Option<Bytes> {
        let Some(timer) = self.bookmark_timer.as_mut() else {
            self.phase = Phase::Done;
            return None;
        };
        tokio::select! {
            _ = self.deadline.as_mut() => {
                self.phase = Phase::Done;
                None
            }
            _ = timer.tick(), if self.bookmarks => {
                (self.last_rv > 0).then(|| self.enc.bookmark(self.last_rv, false))
            }
            msg = self.rx.recv() => match msg {
                Ok(Broadcast::Event(ev)) => {
                    if ev.rv() <= self.last_rv {
                        return None;
                    }
                    self.last_rv = ev.rv();
                    if !in_prefix(&ev.object, &self.sel) {
                        return None;
                    }
                    encode(&mut self.enc, &ev, &self.sel)
                }
                // Fell behind the broadcast: catch up from the cache's event ring after the last
                // revision this watcher saw, as a client re-watching from it would, without
                // ending the stream. Only when the ring no longer reaches back that far does the
                // watch end (the client re-watches and gets 410 Gone).
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.phase = match self.cacher.watch_from(Some(self.last_rv)).await {
                        Ok(WatchStart::Replay(events, rx)) => {
                            self.rx = rx;
                            Phase::Replay { events, next: 0 }
                        }
                        _ => Phase::Done,
                    };
                    None
                }
                // The cache re-listed: end the watch; the client re-watches from its last
                // resourceVersion (and re-lists on 410 if that is too old).
                Ok(Broadcast::Reset) | Err(broadcast::error::RecvError::Closed) => {
                    self.phase = Phase::Done;
                    None
                }
            }
        }
    }
}
