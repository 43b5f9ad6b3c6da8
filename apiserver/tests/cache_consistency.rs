//! Stress test of the watch cache's list/watch contract: concurrent writers (PUT with
//! resourceVersion preconditions, merge PATCHes, `/status` and `/scale` writes) on a few dozen
//! ReplicaSets, while readers run consistent lists, `resourceVersion=0` lists, GETs and
//! list-then-watch cycles. Every successful write's revision and generation is recorded, so
//! once the writers stop each observation can be checked exactly against the write history:
//!
//! - a list at revision R holds, for every object, exactly its newest write at or below R (no
//!   item newer than R, none older than a write R covers);
//! - a consistent list or GET started after a write returned reflects that write or a newer one;
//! - a watch from a list's R delivers exactly the writes after R, each once, in order, and the
//!   list plus the watch ends in the final state (compared with consistent GETs).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiserver::server;
use apiserver::state::AppState;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const OBJECTS: usize = 30;
const WRITERS: usize = 4;
const WRITE_PHASE: Duration = Duration::from_secs(3);
const NS_URI: &str = "/apis/apps/v1/namespaces/default/replicasets";

mod common;

fn request(method: &str, uri: &str, content_type: &str, body: Vec<u8>) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .expect("request");
    req.extensions_mut().insert(common::admin());
    req
}

async fn call(
    state: &Arc<AppState>,
    method: &str,
    uri: &str,
    content_type: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body
        .map(|b| serde_json::to_vec(&b).expect("encode"))
        .unwrap_or_default();
    let resp = server::router(state.clone())
        .oneshot(request(method, uri, content_type, body))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A merge PATCH of `uri` as the admin.
async fn merge_patch(state: &Arc<AppState>, uri: &str, patch: Value) -> (StatusCode, Value) {
    call(
        state,
        "PATCH",
        uri,
        "application/merge-patch+json",
        Some(patch),
    )
    .await
}

fn rv_of(v: &Value) -> i64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {v}"))
}

fn name_of(v: &Value) -> String {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn generation_of(v: &Value) -> i64 {
    v.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn replicaset(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}
            }
        }
    })
}

/// Tiny deterministic PRNG per task (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a successful write produced.
#[derive(Clone, Debug)]
struct Write {
    name: String,
    rv: i64,
    generation: i64,
}

#[derive(Default)]
struct History {
    /// Every successful write.
    writes: Vec<Write>,
    /// Newest acknowledged revision per object.
    acked: HashMap<String, i64>,
}

impl History {
    fn record(&mut self, obj: &Value) {
        let w = Write {
            name: name_of(obj),
            rv: rv_of(obj),
            generation: generation_of(obj),
        };
        let e = self.acked.entry(w.name.clone()).or_insert(0);
        *e = (*e).max(w.rv);
        self.writes.push(w);
    }
}

/// A list as observed: its revision and (rv, generation) per name.
#[derive(Debug)]
struct ListSeen {
    what: &'static str,
    revision: i64,
    items: BTreeMap<String, (i64, i64)>,
}

/// A watch as observed: from which revision, and the events in arrival order.
#[derive(Debug)]
struct WatchSeen {
    from: i64,
    events: Vec<(String, String, i64, i64)>,
}

async fn writer(
    state: Arc<AppState>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let name = format!("rs-{}", rng.below(OBJECTS as u64));
        let uri = format!("{NS_URI}/{name}");
        let (status, obj) = match rng.below(5) {
            // GET then PUT guarded by the read resourceVersion (bumps generation).
            0 => {
                let (s, mut cur) = call(&state, "GET", &uri, "application/json", None).await;
                assert_eq!(s, StatusCode::OK, "{cur}");
                cur["spec"]["replicas"] = json!(rng.below(5));
                cur["metadata"]["annotations"] = json!({"put": rng.next().to_string()});
                call(&state, "PUT", &uri, "application/json", Some(cur)).await
            }
            // Merge PATCH of an annotation (no generation bump).
            1 => {
                let p = json!({"metadata": {"annotations": {"patch": rng.next().to_string()}}});
                merge_patch(&state, &uri, p).await
            }
            // Merge PATCH of the spec (generation bump).
            2 => {
                let p = json!({"spec": {"minReadySeconds": rng.below(100)}});
                merge_patch(&state, &uri, p).await
            }
            // GET then PUT /status guarded by resourceVersion.
            3 => {
                let (s, mut cur) = call(&state, "GET", &uri, "application/json", None).await;
                assert_eq!(s, StatusCode::OK, "{cur}");
                let gen_ = generation_of(&cur);
                cur["status"] = json!({"replicas": rng.below(3), "observedGeneration": gen_});
                call(
                    &state,
                    "PUT",
                    &format!("{uri}/status"),
                    "application/json",
                    Some(cur),
                )
                .await
            }
            // Merge PATCH of /scale.
            _ => {
                let p = json!({"spec": {"replicas": rng.below(7)}});
                call(
                    &state,
                    "PATCH",
                    &format!("{uri}/scale"),
                    "application/merge-patch+json",
                    Some(p),
                )
                .await
            }
        };
        match status {
            StatusCode::OK => {
                if obj["kind"] == "Scale" {
                    // A Scale carries the ReplicaSet's name and resourceVersion, not its
                    // generation: record it with generation 0 (not checked).
                    let w = Write {
                        name: name_of(&obj),
                        rv: rv_of(&obj),
                        generation: 0,
                    };
                    let mut h = history.lock().expect("history");
                    let e = h.acked.entry(w.name.clone()).or_insert(0);
                    *e = (*e).max(w.rv);
                    h.writes.push(w);
                } else {
                    history.lock().expect("history").record(&obj);
                }
            }
            StatusCode::CONFLICT => {}
            other => panic!("write failed: {other} {obj}"),
        }
    }
}

/// Lists (consistent when `rv0` is false) and checks what can be checked at once.
async fn list(
    state: &Arc<AppState>,
    history: &Mutex<History>,
    rv0: bool,
) -> (ListSeen, Vec<Value>) {
    let before = history.lock().expect("history").acked.clone();
    let uri = if rv0 {
        format!("{NS_URI}?resourceVersion=0")
    } else {
        NS_URI.to_string()
    };
    let (s, l) = call(state, "GET", &uri, "application/json", None).await;
    assert_eq!(s, StatusCode::OK, "{l}");
    let revision = rv_of(&l);
    let items = l["items"].as_array().cloned().unwrap_or_default();
    let mut seen = BTreeMap::new();
    for it in &items {
        let (name, rv) = (name_of(it), rv_of(it));
        assert!(
            rv <= revision,
            "list at {revision} holds {name} at newer rv {rv}"
        );
        if !rv0 {
            let acked = before.get(&name).copied().unwrap_or(0);
            assert!(
                rv >= acked,
                "consistent list at {revision} holds {name} at rv {rv}, but rv {acked} was acknowledged before the list started"
            );
        }
        seen.insert(name, (rv, generation_of(it)));
    }
    (
        ListSeen {
            what: if rv0 { "rv=0 list" } else { "consistent list" },
            revision,
            items: seen,
        },
        items,
    )
}

/// Lists, then watches from the list's revision until `stop` and a quiet period, returning the
/// list, the events and the state the two reconstruct.
async fn list_then_watch(
    state: Arc<AppState>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    rv0: bool,
    watch_for: Option<Duration>,
) -> (ListSeen, WatchSeen, BTreeMap<String, Value>) {
    let (l, items) = list(&state, &history, rv0).await;
    let mut objects: BTreeMap<String, Value> =
        items.into_iter().map(|o| (name_of(&o), o)).collect();
    let uri = format!(
        "{NS_URI}?watch=true&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds=60",
        l.revision
    );
    let resp = server::router(state.clone())
        .oneshot(request("GET", &uri, "application/json", vec![]))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let deadline = watch_for.map(|d| tokio::time::Instant::now() + d);
    loop {
        let quiet = stop.load(Ordering::Relaxed);
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let wait = if quiet {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(100)
        };
        match tokio::time::timeout(wait, body.frame()).await {
            Err(_) if quiet => break,
            Err(_) => continue,
            Ok(None) => panic!("watch from {} ended early", l.revision),
            Ok(Some(f)) => {
                let f = f.expect("frame");
                if let Ok(data) = f.into_data() {
                    buf.extend_from_slice(&data);
                }
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let ev: Value = serde_json::from_slice(&line).expect("event json");
                    let t = ev["type"].as_str().unwrap_or_default().to_string();
                    if t == "BOOKMARK" {
                        continue;
                    }
                    assert!(t == "MODIFIED" || t == "ADDED", "unexpected event {ev}");
                    let o = ev["object"].clone();
                    let (name, rv) = (name_of(&o), rv_of(&o));
                    events.push((t, name.clone(), rv, generation_of(&o)));
                    objects.insert(name, o);
                }
            }
        }
    }
    let from = l.revision;
    (l, WatchSeen { from, events }, objects)
}

/// For every name: the sorted revisions of its writes and their generations.
fn per_object(writes: &[Write]) -> HashMap<String, Vec<(i64, i64)>> {
    let mut m: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for w in writes {
        m.entry(w.name.clone())
            .or_default()
            .push((w.rv, w.generation));
    }
    for v in m.values_mut() {
        v.sort();
        // A no-op write (nothing changed) answers with the unchanged object at its old rv.
        v.dedup_by_key(|(rv, _)| *rv);
    }
    m
}

/// The newest write of `name` at or below `rev`.
fn at(per: &HashMap<String, Vec<(i64, i64)>>, name: &str, rev: i64) -> Option<(i64, i64)> {
    per.get(name)
        .and_then(|v| v.iter().take_while(|(rv, _)| *rv <= rev).last().copied())
}

fn check_list(per: &HashMap<String, Vec<(i64, i64)>>, l: &ListSeen) {
    for name in per.keys() {
        let want = at(per, name, l.revision);
        let got = l.items.get(name).copied();
        match (want, got) {
            (Some((wrv, wgen)), Some((grv, ggen))) => {
                assert_eq!(
                    grv, wrv,
                    "{} at {} holds {name} at rv {grv}, but its newest write at or below {} is rv {wrv}",
                    l.what, l.revision, l.revision
                );
                if wgen != 0 {
                    assert_eq!(
                        ggen, wgen,
                        "{} at {}: {name} generation",
                        l.what, l.revision
                    );
                }
            }
            (None, None) => {}
            (w, g) => panic!(
                "{} at {}: {name}: expected {w:?}, got {g:?}",
                l.what, l.revision
            ),
        }
    }
}

fn check_watch(per: &HashMap<String, Vec<(i64, i64)>>, w: &WatchSeen) {
    let mut last = w.from;
    for (t, name, rv, _) in &w.events {
        assert!(
            *rv > last,
            "watch from {}: {t} {name} at rv {rv} after rv {last} (duplicate or out of order)",
            w.from
        );
        last = *rv;
    }
    // Exactly the writes in (from, last], per object.
    let upto = last;
    for (name, writes) in per {
        let want: Vec<i64> = writes
            .iter()
            .map(|(rv, _)| *rv)
            .filter(|rv| *rv > w.from && *rv <= upto)
            .collect();
        let got: Vec<i64> = w
            .events
            .iter()
            .filter(|(_, n, _, _)| n == name)
            .map(|(_, _, rv, _)| *rv)
            .collect();
        assert_eq!(
            got, want,
            "watch from {} (up to {upto}): events of {name}",
            w.from
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lists_and_watches_follow_concurrent_writes_exactly() {
    let (state, _store) = common::state().await;
    let history = Arc::new(Mutex::new(History::default()));
    for i in 0..OBJECTS {
        let (s, o) = call(
            &state,
            "POST",
            NS_URI,
            "application/json",
            Some(replicaset(&format!("rs-{i}"))),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{o}");
        history.lock().expect("history").record(&o);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        writers.push(tokio::spawn(writer(
            state.clone(),
            history.clone(),
            stop.clone(),
            0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1234_5677),
        )));
    }
    // Short list-then-watch cycles during the writes (reflector restarts), and two long ones
    // that follow the writes to the end.
    let mut cycles = Vec::new();
    for i in 0..2 {
        cycles.push(tokio::spawn({
            let (state, history, stop) = (state.clone(), history.clone(), stop.clone());
            async move {
                let mut out = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let rv0 = (n + i).is_multiple_of(2);
                    let d = Duration::from_millis(50 + 37 * (n % 7));
                    out.push(
                        list_then_watch(state.clone(), history.clone(), stop.clone(), rv0, Some(d))
                            .await,
                    );
                }
                out
            }
        }));
    }
    let long = [false, true].map(|rv0| {
        let (state, history, stop) = (state.clone(), history.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            list_then_watch(state, history, stop, rv0, None).await
        })
    });
    let lister = tokio::spawn({
        let (state, history, stop) = (state.clone(), history.clone(), stop.clone());
        async move {
            let mut out = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                out.push(list(&state, &history, n.is_multiple_of(3)).await.0);
                // A GET started after a write returned reflects it.
                let name = format!("rs-{}", n as usize % OBJECTS);
                let acked = history.lock().expect("history").acked.get(&name).copied();
                let (s, o) = call(
                    &state,
                    "GET",
                    &format!("{NS_URI}/{name}"),
                    "application/json",
                    None,
                )
                .await;
                assert_eq!(s, StatusCode::OK, "{o}");
                assert!(
                    rv_of(&o) >= acked.unwrap_or(0),
                    "GET {name} is older than an acknowledged write"
                );
            }
            out
        }
    });

    tokio::time::sleep(WRITE_PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let lists = lister.await.expect("lister");
    let cycles: Vec<_> = futures::future::join_all(cycles)
        .await
        .into_iter()
        .flat_map(|r| r.expect("cycle"))
        .collect();
    let mut longs = Vec::new();
    for l in long {
        longs.push(l.await.expect("long watch"));
    }

    let writes = std::mem::take(&mut history.lock().expect("history").writes);
    let per = per_object(&writes);
    let final_list = list(&state, &Mutex::new(History::default()), false).await.0;
    println!(
        "{} writes, {} lists, {} list-then-watch cycles, final revision {}",
        writes.len(),
        lists.len(),
        cycles.len(),
        final_list.revision
    );
    assert!(
        writes.len() > OBJECTS * 2,
        "too few writes to mean anything"
    );
    check_list(&per, &final_list);
    for l in &lists {
        check_list(&per, l);
    }
    for (l, w, _) in cycles.iter().chain(longs.iter()) {
        check_list(&per, l);
        check_watch(&per, w);
    }
    // The long watches end in the final state, object for object.
    for (_, _, objects) in &longs {
        for i in 0..OBJECTS {
            let name = format!("rs-{i}");
            let (s, cur) = call(
                &state,
                "GET",
                &format!("{NS_URI}/{name}"),
                "application/json",
                None,
            )
            .await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(
                objects.get(&name),
                Some(&cur),
                "{name}: list + watch vs GET"
            );
        }
    }
}

/// A watcher that falls further behind than the live broadcast holds (its client did not read
/// while many writes happened) catches up from the watch cache's event ring: every event
/// arrives once, in order, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_far_behind_catches_up_without_a_gap() {
    const WRITES: usize = 1500; // more than the broadcast's 1 024 slots
    let uri = "/api/v1/namespaces/default/configmaps";
    let (state, _store) = common::state().await;
    let (s, l) = call(&state, "GET", uri, "application/json", None).await;
    assert_eq!(s, StatusCode::OK, "{l}");
    let rv = l["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let resp = server::router(state.clone())
        .oneshot(request(
            "GET",
            &format!("{uri}?watch=true&resourceVersion={rv}&timeoutSeconds=60"),
            "application/json",
            vec![],
        ))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    // Nothing reads the watch while the writes happen.
    for i in 0..WRITES {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")}});
        let (s, o) = call(&state, "POST", uri, "application/json", Some(cm)).await;
        assert_eq!(s, StatusCode::CREATED, "{o}");
    }
    let mut body = resp.into_body();
    let (mut buf, mut seen, mut last_rv) = (Vec::new(), 0usize, 0i64);
    while seen < WRITES {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no event after {seen} of {WRITES}"))
            .unwrap_or_else(|| panic!("the watch ended after {seen} of {WRITES} events"))
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let ev: Value = serde_json::from_slice(&line).expect("event json");
            assert_eq!(ev["type"], "ADDED", "{ev}");
            assert_eq!(
                name_of(&ev["object"]),
                format!("cm-{seen}"),
                "events in order, once"
            );
            let rv = rv_of(&ev["object"]);
            assert!(
                rv > last_rv,
                "resourceVersions increase: {rv} after {last_rv}"
            );
            (seen, last_rv) = (seen + 1, rv);
        }
    }
}
