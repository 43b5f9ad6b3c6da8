//! The storage conformance suite: every [`Storage`] backend must pass these cases.
//!
//! Modelled on kube-apiserver's `storage/testing/store_tests.go`. Each case writes under its own
//! fresh key prefix, so cases can share one store (and one etcd) without interfering; only
//! [`compaction`] affects the whole store, which is why [`run_all`] runs it last.
#![cfg(test)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::{
    Event, EventType, KeyValue, ListOptions, Revision, Storage, StorageError, WatchStream,
};

/// How long a watch may take to deliver an event that is due.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before concluding that no (unwanted) event is coming.
const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Runs every case against `store`.
pub async fn run_all(store: Arc<dyn Storage>) {
    create_if_absent(&*store).await;
    get_returns_latest(&*store).await;
    guarded_update(&*store).await;
    guarded_delete(&*store).await;
    revisions_strictly_increase(&*store).await;
    list_prefix_isolation(&*store).await;
    list_at_older_revision(&*store).await;
    list_paging_is_consistent_at_fixed_revision(&*store).await;
    watch_replays_history_in_order(&*store).await;
    watch_streams_live_events(&*store).await;
    watch_prefix_isolation(&*store).await;
    future_revision_is_refused(&*store).await;
    compaction(&*store).await;
}

/// A unique prefix (ending in `/`) for one case run.
fn base(case: &str) -> String {
    format!("/conformance/{}/{case}/", uuid::Uuid::new_v4().simple())
}

fn list_all() -> ListOptions {
    ListOptions::default()
}

fn at(revision: Revision) -> ListOptions {
    ListOptions {
        revision: Some(revision),
        ..Default::default()
    }
}

/// Creates `key` with `v1`, updates it to `v2` and returns both revisions.
async fn create_then_update(store: &dyn Storage, key: &str) -> (Revision, Revision) {
    let r1 = store.create(key, b"v1".to_vec()).await.expect("create");
    let r2 = store.update(key, r1, b"v2".to_vec()).await.expect("update");
    (r1, r2)
}

async fn next_event(watch: &mut WatchStream) -> Event {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended unexpectedly"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(QUIET_PERIOD, watch.next()).await {
        panic!("expected no watch event, got {item:?}");
    }
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

/// `create` stores a new key and refuses an existing one with `AlreadyExists`.
pub async fn create_if_absent(store: &dyn Storage) {
    let key = format!("{}a", base("create"));
    let rev = store.create(&key, b"v1".to_vec()).await.expect("create");
    assert!(rev > 0);
    match store.create(&key, b"v2".to_vec()).await {
        Err(StorageError::AlreadyExists { key: k }) => assert_eq!(k, key),
        other => panic!("second create: expected AlreadyExists, got {other:?}"),
    }
    let kv = store.get(&key).await.expect("get").expect("present");
    assert_eq!(
        kv.value, b"v1",
        "a refused create must not change the value"
    );
    assert_eq!(kv.mod_revision, rev);
}

/// `get` returns the latest value with its revisions, and `None` for a missing key.
pub async fn get_returns_latest(store: &dyn Storage) {
    let base = base("get");
    let key = format!("{base}a");
    assert_eq!(store.get(&key).await.expect("get missing"), None);
    let (r1, r2) = create_then_update(store, &key).await;
    let kv = store.get(&key).await.expect("get").expect("present");
    assert_eq!(
        kv,
        KeyValue {
            key: key.clone(),
            value: b"v2".to_vec(),
            create_revision: r1,
            mod_revision: r2,
        }
    );
    // A key that merely shares a prefix is a different key.
    assert_eq!(store.get(&base).await.expect("get"), None);
}

/// `update` succeeds at the current revision, reports `Conflict` (with the current value) at a
/// stale one and `NotFound` for a missing key.
pub async fn guarded_update(store: &dyn Storage) {
    let base = base("update");
    let key = format!("{base}a");
    let (r1, r2) = create_then_update(store, &key).await;
    assert!(r2 > r1);

    match store.update(&key, r1, b"stale".to_vec()).await {
        Err(StorageError::Conflict {
            key: k,
            expected,
            current,
        }) => {
            assert_eq!(k, key);
            assert_eq!(expected, r1);
            let current = current.expect("conflict carries the current value");
            assert_eq!(current.value, b"v2");
            assert_eq!(current.mod_revision, r2);
            assert_eq!(current.create_revision, r1);
        }
        other => panic!("stale update: expected Conflict, got {other:?}"),
    }
    let kv = store.get(&key).await.expect("get").expect("present");
    assert_eq!(
        kv.value, b"v2",
        "a refused update must not change the value"
    );

    let missing = format!("{base}missing");
    match store.update(&missing, 1, b"x".to_vec()).await {
        Err(StorageError::NotFound { key: k }) => assert_eq!(k, missing),
        other => panic!("update of missing key: expected NotFound, got {other:?}"),
    }
    assert_eq!(store.get(&missing).await.expect("get"), None);
}

/// `delete` refuses a stale revision with `Conflict`, a missing key with `NotFound`, and on
/// success returns its revision and the deleted value.
pub async fn guarded_delete(store: &dyn Storage) {
    let base = base("delete");
    let key = format!("{base}a");
    let (r1, r2) = create_then_update(store, &key).await;

    match store.delete(&key, r1).await {
        Err(StorageError::Conflict {
            expected, current, ..
        }) => {
            assert_eq!(expected, r1);
            assert_eq!(current.expect("current value").mod_revision, r2);
        }
        other => panic!("stale delete: expected Conflict, got {other:?}"),
    }
    assert!(store.get(&key).await.expect("get").is_some());

    let (r3, deleted) = store.delete(&key, r2).await.expect("delete");
    assert!(r3 > r2);
    assert_eq!(deleted.key, key);
    assert_eq!(deleted.value, b"v2");
    assert_eq!(deleted.create_revision, r1);
    assert_eq!(deleted.mod_revision, r2);
    assert_eq!(store.get(&key).await.expect("get"), None);
    assert!(store.current_revision().await.expect("current") >= r3);

    match store.delete(&key, r2).await {
        Err(StorageError::NotFound { key: k }) => assert_eq!(k, key),
        other => panic!("delete of deleted key: expected NotFound, got {other:?}"),
    }
    // The key can be created again and starts a new lifecycle.
    let r4 = store.create(&key, b"v3".to_vec()).await.expect("recreate");
    let kv = store.get(&key).await.expect("get").expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4));
}

/// Every successful write gets a new revision greater than all before it, and the store's
/// current revision follows.
pub async fn revisions_strictly_increase(store: &dyn Storage) {
    let base = base("revisions");
    let start = store.current_revision().await.expect("current");
    let mut last = start;
    for i in 0..5 {
        let key = format!("{base}{i}");
        let c = store.create(&key, vec![i]).await.expect("create");
        let u = store.update(&key, c, vec![i, i]).await.expect("update");
        let (d, _) = store.delete(&key, u).await.expect("delete");
        for rev in [c, u, d] {
            assert!(rev > last, "revision {rev} not greater than {last}");
            last = rev;
        }
        assert!(store.current_revision().await.expect("current") >= last);
    }
    // A refused write in between does not disturb the sequence.
    let key = format!("{base}x");
    let c = store.create(&key, vec![]).await.expect("create");
    assert!(store.create(&key, vec![]).await.is_err());
    let u = store.update(&key, c, vec![1]).await.expect("update");
    assert!(u > c);
}

/// A list returns exactly the keys under its prefix, sorted: `/registry/pods/` must not return
/// `/registry/podsx/...`.
pub async fn list_prefix_isolation(store: &dyn Storage) {
    let base = base("list-prefix");
    let pods = format!("{base}registry/pods/");
    let podsx = format!("{base}registry/podsx/");
    for name in ["ns2/b", "ns1/a", "ns1/c"] {
        store
            .create(&format!("{pods}{name}"), name.as_bytes().to_vec())
            .await
            .expect("create");
    }
    store
        .create(&format!("{podsx}ns1/z"), vec![])
        .await
        .expect("create");
    store
        .create(&format!("{base}registry/pods"), vec![])
        .await
        .expect("create");
    let listed = store.list(&pods, list_all()).await.expect("list");
    assert_eq!(
        keys(&listed.items),
        vec![
            format!("{pods}ns1/a"),
            format!("{pods}ns1/c"),
            format!("{pods}ns2/b")
        ]
    );
    assert!(!listed.more);
    assert_eq!(listed.items[0].value, b"ns1/a");
    assert!(
        listed.revision
            >= listed
                .items
                .iter()
                .map(|kv| kv.mod_revision)
                .max()
                .unwrap_or(0)
    );

    let ns1 = store
        .list(&format!("{pods}ns1/"), list_all())
        .await
        .expect("list ns1");
    assert_eq!(ns1.items.len(), 2);
    let empty = store
        .list(&format!("{base}registry/nothing/"), list_all())
        .await
        .expect("list empty");
    assert!(empty.items.is_empty());
    assert!(!empty.more);
}

/// A list at an older revision shows the state as of that revision.
pub async fn list_at_older_revision(store: &dyn Storage) {
    let base = base("list-old");
    let a = format!("{base}a");
    let b = format!("{base}b");
    let ra = store.create(&a, b"a1".to_vec()).await.expect("create a");
    let rb = store.create(&b, b"b1".to_vec()).await.expect("create b");
    let snapshot = store.list(&base, list_all()).await.expect("list").revision;
    assert!(snapshot >= rb);
    let ra2 = store
        .update(&a, ra, b"a2".to_vec())
        .await
        .expect("update a");
    store.delete(&b, rb).await.expect("delete b");
    store
        .create(&format!("{base}c"), b"c1".to_vec())
        .await
        .expect("create c");

    let old = store.list(&base, at(snapshot)).await.expect("list old");
    assert_eq!(old.revision, snapshot);
    assert_eq!(keys(&old.items), vec![a.as_str(), b.as_str()]);
    assert_eq!(old.items[0].value, b"a1");
    assert_eq!(old.items[0].mod_revision, ra);

    let only_a = store.list(&base, at(ra)).await.expect("list at ra");
    assert_eq!(keys(&only_a.items), vec![a.as_str()]);

    let now = store.list(&base, list_all()).await.expect("list now");
    assert_eq!(keys(&now.items), vec![a.clone(), format!("{base}c")]);
    assert_eq!(now.items[0].value, b"a2");
    assert_eq!(now.items[0].mod_revision, ra2);
}

/// Paging with `limit`/`start_after` at the first page's revision returns one consistent
/// snapshot even when writes land between pages; `more` says whether another page exists.
pub async fn list_paging_is_consistent_at_fixed_revision(store: &dyn Storage) {
    let base = base("paging");
    let mut revs = Vec::new();
    for i in 0..7 {
        let key = format!("{base}k{i}");
        revs.push(store.create(&key, vec![i]).await.expect("create"));
    }
    let page = |revision: Option<Revision>, after: Option<String>| ListOptions {
        revision,
        start_after: after,
        limit: Some(3),
    };
    let first = store.list(&base, page(None, None)).await.expect("page 1");
    assert_eq!(first.items.len(), 3);
    assert!(first.more);
    if let Some(remaining) = first.remaining {
        assert_eq!(remaining, 4);
    }
    let revision = first.revision;

    // Writes between pages: a new key in the middle, a delete and an update of later keys.
    store
        .create(&format!("{base}k3a"), vec![])
        .await
        .expect("insert");
    store
        .delete(&format!("{base}k5"), revs[5])
        .await
        .expect("delete");
    store
        .update(&format!("{base}k6"), revs[6], b"new".to_vec())
        .await
        .expect("update");

    let mut all = first.items.clone();
    let mut more = first.more;
    let mut pages = 1;
    while more {
        let after = all.last().map(|kv| kv.key.clone());
        let next = store
            .list(&base, page(Some(revision), after))
            .await
            .expect("next page");
        assert_eq!(
            next.revision, revision,
            "pages must be read at the first page's revision"
        );
        more = next.more;
        all.extend(next.items);
        pages += 1;
        assert!(pages < 10, "paging does not terminate");
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..7).map(|i| format!("{base}k{i}")).collect();
    assert_eq!(
        keys(&all),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for (i, kv) in all.iter().enumerate() {
        assert_eq!(kv.value, vec![i as u8]);
        assert_eq!(kv.mod_revision, revs[i]);
    }

    // A limit equal to the number of keys: everything, and no more.
    let exact = store
        .list(
            &base,
            ListOptions {
                revision: Some(revision),
                start_after: None,
                limit: Some(7),
            },
        )
        .await
        .expect("exact");
    assert_eq!(exact.items.len(), 7);
    assert!(!exact.more);
    // start_after the last key: nothing.
    let past = store
        .list(&base, page(Some(revision), Some(format!("{base}k6"))))
        .await
        .expect("past end");
    assert!(past.items.is_empty());
    assert!(!past.more);
}

/// A watch from revision R replays every later event under the prefix in order, with the
/// right types and previous values; a delete event carries the delete's revision.
pub async fn watch_replays_history_in_order(store: &dyn Storage) {
    let base = base("watch-replay");
    let a = format!("{base}a");
    let b = format!("{base}b");
    let start = store.current_revision().await.expect("current");
    let r1 = store.create(&a, b"a1".to_vec()).await.expect("create a");
    let r2 = store
        .update(&a, r1, b"a2".to_vec())
        .await
        .expect("update a");
    let r3 = store.create(&b, b"b1".to_vec()).await.expect("create b");
    let (r4, _) = store.delete(&a, r2).await.expect("delete a");

    let mut watch = store.watch(&base, start).await.expect("watch");
    let e1 = next_event(&mut watch).await;
    assert_eq!(e1.event_type, EventType::Create);
    assert_eq!(
        e1.kv,
        KeyValue {
            key: a.clone(),
            value: b"a1".to_vec(),
            create_revision: r1,
            mod_revision: r1,
        }
    );
    assert_eq!(e1.prev_kv, None);

    let e2 = next_event(&mut watch).await;
    assert_eq!(e2.event_type, EventType::Update);
    assert_eq!(e2.revision(), r2);
    assert_eq!(e2.kv.value, b"a2");
    assert_eq!(e2.kv.create_revision, r1);
    let prev = e2.prev_kv.expect("update carries prev_kv");
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"a1"[..], r1));

    let e3 = next_event(&mut watch).await;
    assert_eq!((e3.event_type, e3.revision()), (EventType::Create, r3));
    assert_eq!(e3.kv.key, b);

    let e4 = next_event(&mut watch).await;
    assert_eq!(e4.event_type, EventType::Delete);
    assert_eq!(e4.kv.key, a);
    assert_eq!(
        e4.revision(),
        r4,
        "a delete event has the delete's revision"
    );
    assert_eq!(e4.kv.value, b"a2", "a delete event carries the last value");
    let prev = e4.prev_kv.expect("delete carries prev_kv");
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"a2"[..], r2));
    assert_quiet(&mut watch).await;

    // From the middle of the history: only later events.
    let mut watch = store.watch(&base, r2).await.expect("watch from r2");
    assert_eq!(next_event(&mut watch).await.revision(), r3);
    assert_eq!(next_event(&mut watch).await.revision(), r4);
    assert_quiet(&mut watch).await;
}

/// A watch delivers events written after it started, once each, in order, after its replay.
pub async fn watch_streams_live_events(store: &dyn Storage) {
    let base = base("watch-live");
    let a = format!("{base}a");
    let r1 = store.create(&a, b"1".to_vec()).await.expect("create");
    let mut watch = store.watch(&base, 0.max(r1 - 1)).await.expect("watch");
    assert_eq!(next_event(&mut watch).await.revision(), r1);

    let mut expected = Vec::new();
    let mut rev = r1;
    for i in 0..20u8 {
        rev = store.update(&a, rev, vec![i]).await.expect("update");
        expected.push(rev);
    }
    let (rd, _) = store.delete(&a, rev).await.expect("delete");
    expected.push(rd);
    for want in expected {
        let event = next_event(&mut watch).await;
        assert_eq!(event.revision(), want);
    }
    assert_quiet(&mut watch).await;

    // A watch from the current revision sees only new events.
    let now = store.current_revision().await.expect("current");
    let mut fresh = store.watch(&base, now).await.expect("watch now");
    assert_quiet(&mut fresh).await;
    let r = store.create(&a, b"again".to_vec()).await.expect("recreate");
    let event = next_event(&mut fresh).await;
    assert_eq!((event.event_type, event.revision()), (EventType::Create, r));
}

/// A watch on `/registry/pods/` sees nothing written under `/registry/podsx/`.
pub async fn watch_prefix_isolation(store: &dyn Storage) {
    let base = base("watch-prefix");
    let pods = format!("{base}registry/pods/");
    let start = store.current_revision().await.expect("current");
    store
        .create(&format!("{base}registry/podsx/replayed"), vec![])
        .await
        .expect("create");
    let r_pod = store
        .create(&format!("{pods}p1"), vec![])
        .await
        .expect("create");
    let mut watch = store.watch(&pods, start).await.expect("watch");
    assert_eq!(next_event(&mut watch).await.revision(), r_pod);
    store
        .create(&format!("{base}registry/podsx/live"), vec![])
        .await
        .expect("create");
    store
        .create(&format!("{base}registry/pods"), vec![])
        .await
        .expect("create");
    let r_pod2 = store
        .create(&format!("{pods}p2"), vec![])
        .await
        .expect("create");
    assert_eq!(next_event(&mut watch).await.revision(), r_pod2);
    assert_quiet(&mut watch).await;
}

/// Reading at a revision newer than the store's current revision fails with `FutureRevision`.
pub async fn future_revision_is_refused(store: &dyn Storage) {
    let base = base("future");
    store
        .create(&format!("{base}a"), vec![])
        .await
        .expect("create");
    let current = store.current_revision().await.expect("current");
    match store.list(&base, at(current + 1000)).await {
        Err(StorageError::FutureRevision {
            requested,
            current: c,
        }) => {
            assert_eq!(requested, current + 1000);
            assert!(c >= current);
        }
        other => panic!("list in the future: expected FutureRevision, got {other:?}"),
    }
    // The current revision itself is readable.
    let now = store
        .list(&base, at(current))
        .await
        .expect("list at current");
    assert_eq!(now.items.len(), 1);
}

/// After compaction, lists and watches before the compacted revision fail with `Compacted`;
/// current values, and history from the compacted revision on, survive.
pub async fn compaction(store: &dyn Storage) {
    let base = base("compaction");
    let a = format!("{base}a");
    let b = format!("{base}b");
    let r1 = store.create(&a, b"a1".to_vec()).await.expect("create a");
    let r2 = store
        .update(&a, r1, b"a2".to_vec())
        .await
        .expect("update a");
    let r3 = store.create(&b, b"b1".to_vec()).await.expect("create b");
    let (r4, _) = store.delete(&b, r3).await.expect("delete b");
    let r5 = store
        .update(&a, r2, b"a3".to_vec())
        .await
        .expect("update a");

    store.compact(r4).await.expect("compact");
    assert!(store.compacted_revision().await.expect("compacted") >= r4);
    // Compacting again at or below is harmless.
    store.compact(r4).await.expect("compact again");

    for old in [r1, r3] {
        match store.list(&base, at(old)).await {
            Err(StorageError::Compacted {
                requested,
                compacted,
            }) => {
                assert_eq!(requested, old);
                assert!(compacted >= r4);
            }
            other => panic!("list at compacted revision {old}: expected Compacted, got {other:?}"),
        }
    }
    match store.watch(&base, r1).await {
        Err(StorageError::Compacted { .. }) => {}
        Err(e) => panic!("watch from compacted revision: expected Compacted, got {e}"),
        Ok(mut watch) => match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
            Ok(Some(Err(StorageError::Compacted { .. }))) => {}
            other => panic!("watch from compacted revision: expected Compacted, got {other:?}"),
        },
    }

    // The compacted revision itself is still readable and watchable from.
    let at_r4 = store
        .list(&base, at(r4))
        .await
        .expect("list at compacted revision");
    assert_eq!(keys(&at_r4.items), vec![a.as_str()]);
    assert_eq!(at_r4.items[0].value, b"a2");
    assert_eq!(at_r4.items[0].mod_revision, r2);
    // Watching from the compacted revision works. (From `compacted - 1` is allowed too, but
    // etcd cannot attach the previous value to the event at the compacted revision itself.)
    let mut watch = store
        .watch(&base, r4)
        .await
        .expect("watch from compacted revision");
    let updated = next_event(&mut watch).await;
    assert_eq!(
        (updated.event_type, updated.revision()),
        (EventType::Update, r5)
    );
    assert_eq!(updated.prev_kv.expect("prev_kv").value, b"a2");

    let kv = store.get(&a).await.expect("get").expect("a survives");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"a3"[..], r1, r5)
    );
    assert_eq!(store.get(&b).await.expect("get"), None);
    let now = store.list(&base, list_all()).await.expect("list now");
    assert_eq!(keys(&now.items), vec![a.as_str()]);
    // Writes keep working after compaction.
    let r6 = store
        .update(&a, r5, b"a4".to_vec())
        .await
        .expect("update after compaction");
    assert!(r6 > r5);
}
