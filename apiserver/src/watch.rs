//! WATCH: a chunked stream of `{"type":..,"object":..}` lines served from the watch cache.
//!
//! The protocol per watcher is a small state machine: `Initial` (synthetic ADDED events or a
//! replay from the requested revision) → optional initial-events-end BOOKMARK → `Live`
//! (broadcast events, periodic BOOKMARKs) → `Done` (timeout, client gone, or the watcher fell
//! behind / the cache re-listed, after which the client re-watches from its last revision).

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::cacher::{
    Broadcast, CacheEvent, CacheEventType, CachedObject, WatchFromError, WatchStart,
};
use crate::error::{ApiError, ApiResult};
use crate::handlers::{Ctx, header_str};
use crate::list::Selection;
use crate::registry::ResourceDef;
use crate::request::{Query, ResponseFormat, response_format};
use crate::storage::Revision;

/// How the watcher encodes objects.
#[derive(Clone)]
struct Encoder {
    def: &'static ResourceDef,
    table: bool,
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
        if !self.table && rv_override.is_none() {
            return crate::cacher::watch_line(event_type, &obj.raw);
        }
        let mut v: Value = serde_json::from_slice(&obj.raw).unwrap_or(Value::Null);
        if let Some(rv) = rv_override {
            crate::handlers::set_rv(&mut v, rv);
        }
        let object = if self.table {
            let with_cols = !self.sent_columns;
            self.sent_columns = true;
            crate::table::build(
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
    let cacher = ctx.state.cacher(def)?;
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
    let table = response_format(header_str(ctx.headers, header::ACCEPT)) == ResponseFormat::Table;
    let mut enc = Encoder {
        def,
        table,
        query: q.clone(),
        sent_columns: false,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let start = match start {
        Ok(s) => s,
        Err(WatchFromError::TooOld { requested, oldest }) => {
            let e = ApiError::expired(format!("too old resource version: {requested} ({oldest})"));
            let _ = tx.send(Ok(error_event(&e))).await;
            drop(tx);
            return Ok(stream_response(rx));
        }
        Err(WatchFromError::TooLarge { requested, current }) => {
            return Err(ApiError::too_large_resource_version(requested, current));
        }
    };
    let metrics = ctx.state.metrics.clone();
    tokio::spawn(async move {
        metrics.watchers_inc(def.plural, 1);
        run(
            start,
            sel,
            &mut enc,
            tx,
            timeout,
            bookmarks,
            send_initial == Some(true),
        )
        .await;
        metrics.watchers_inc(def.plural, -1);
    });
    Ok(stream_response(rx))
}

fn stream_response(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Response {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
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

async fn run(
    start: WatchStart,
    sel: Selection,
    enc: &mut Encoder,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    timeout: Duration,
    bookmarks: bool,
    initial_end_bookmark: bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut rx, mut last_rv) = match start {
        WatchStart::Snapshot(objects, rev, rx) => {
            for o in objects
                .iter()
                .filter(|o| in_prefix(o, &sel) && sel.matches(o))
            {
                if tx.send(Ok(enc.line("ADDED", o, None))).await.is_err() {
                    return;
                }
            }
            if initial_end_bookmark && tx.send(Ok(enc.bookmark(rev, true))).await.is_err() {
                return;
            }
            (rx, rev)
        }
        WatchStart::Replay(events, rx) => {
            let mut last = 0;
            for ev in &events {
                last = ev.rv();
                if !in_prefix(&ev.object, &sel) {
                    continue;
                }
                if let Some(line) = encode(enc, ev, &sel)
                    && tx.send(Ok(line)).await.is_err()
                {
                    return;
                }
            }
            (rx, last)
        }
    };
    let mut bookmark_timer = tokio::time::interval(Duration::from_secs(60));
    bookmark_timer.tick().await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
            _ = bookmark_timer.tick(), if bookmarks => {
                if last_rv > 0 && tx.send(Ok(enc.bookmark(last_rv, false))).await.is_err() {
                    return;
                }
            }
            msg = rx.recv() => match msg {
                Ok(Broadcast::Event(ev)) => {
                    if ev.rv() <= last_rv {
                        continue;
                    }
                    last_rv = ev.rv();
                    if !in_prefix(&ev.object, &sel) {
                        continue;
                    }
                    if let Some(line) = encode(enc, &ev, &sel)
                        && tx.send(Ok(line)).await.is_err()
                    {
                        return;
                    }
                }
                // Fell behind or the cache re-listed: end the watch; the client re-watches from
                // its last resourceVersion (and re-lists on 410 if that is too old).
                Ok(Broadcast::Reset) | Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
