//! The etcd backend: the storage trait mapped one-to-one onto etcd v3 (as kube-apiserver's
//! `etcd3` store does).
//!
//! - `create` is a transaction "if `mod_revision(key) == 0` then put"; `update`/`delete` are
//!   "if `mod_revision(key) == expected` then put/delete, else get" so a refused guard reports the
//!   current value in the same round trip.
//! - `list` is a linearizable range read at a revision, with the limit and `more` from etcd.
//! - `watch` is an etcd watch from `after + 1` with previous values; a watch cancelled because
//!   its start revision was compacted ends with [`StorageError::Compacted`].
//!
//! etcd does not report its compacted revision directly. [`EtcdStorage`] remembers the highest
//! one it has seen (its own compactions, watch cancellations, "required revision has been
//! compacted" errors) and [`Storage::compacted_revision`] confirms it with range probes, so it
//! also notices compactions done by other clients.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions,
    EventType as EtcdEventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use tracing::{debug, info};

use super::{
    Event, EventType, KeyValue, ListOptions, ListResult, Result, Revision, Storage, StorageError,
    WatchStream,
};

/// etcd's message for a read or watch below the compacted revision.
const ERR_COMPACTED: &str = "required revision has been compacted";
/// etcd's message for a read above the current revision.
const ERR_FUTURE: &str = "required revision is a future revision";

/// A [`Storage`] backed by an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStorage {
    client: Client,
    /// Highest compacted revision seen so far (a lower bound of etcd's real one).
    compacted: Arc<AtomicI64>,
}

impl std::fmt::Debug for EtcdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStorage")
            .field("compacted", &self.compacted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl EtcdStorage {
    /// Connects to the cluster at `endpoints` (e.g. `http://127.0.0.1:2379`) and checks that it
    /// answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| StorageError::Backend(format!("connecting to etcd {endpoints:?}: {e}")))?;
        let store = Self {
            client,
            compacted: Arc::new(AtomicI64::new(0)),
        };
        let revision = store.current_revision().await?;
        info!(?endpoints, revision, "connected to etcd");
        Ok(store)
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client.kv_client()
    }

    fn note_compacted(&self, revision: Revision) {
        self.compacted.fetch_max(revision, Ordering::AcqRel);
    }

    /// Maps an etcd error from a read at `requested` (0 = latest).
    async fn read_error(&self, e: etcd_client::Error, requested: Revision) -> StorageError {
        let message = e.to_string();
        if message.contains(ERR_COMPACTED) {
            let compacted = match self.compacted_revision().await {
                Ok(c) => c,
                Err(_) => self.compacted.load(Ordering::Acquire),
            };
            return StorageError::Compacted {
                requested,
                compacted,
            };
        }
        if message.contains(ERR_FUTURE) {
            let current = self.current_revision().await.unwrap_or(0);
            return StorageError::FutureRevision { requested, current };
        }
        backend(e)
    }

    /// Whether a read at `revision` is refused as compacted.
    async fn is_compacted(&self, revision: Revision) -> Result<bool> {
        let options = GetOptions::new().with_revision(revision).with_count_only();
        match self.kv().get("/", Some(options)).await {
            Ok(_) => Ok(false),
            Err(e) if e.to_string().contains(ERR_COMPACTED) => Ok(true),
            Err(e) => Err(backend(e)),
        }
    }

    /// Reads the newest value of `key` (for a refused guard).
    async fn get_latest(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.kv().get(key, None).await.map_err(backend)?;
        resp.kvs().first().map(convert_kv).transpose()
    }

    /// NotFound or Conflict for a refused guarded write, given the key's current value.
    fn refused(key: &str, expected: Revision, current: Option<KeyValue>) -> StorageError {
        match current {
            None => StorageError::NotFound {
                key: key.to_owned(),
            },
            Some(kv) => StorageError::Conflict {
                key: key.to_owned(),
                expected,
                current: Some(kv),
            },
        }
    }
}

#[async_trait]
impl Storage for EtcdStorage {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self.kv().txn(txn).await.map_err(backend)?;
        if !resp.succeeded() {
            return Err(StorageError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        header_revision(resp.header())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.get_latest(key).await
    }

    async fn update(&self, key: &str, expected: Revision, value: Vec<u8>) -> Result<Revision> {
        if expected <= 0 {
            // `mod_revision == 0` would mean "absent" to etcd and turn this into a create.
            return Err(Self::refused(key, expected, self.get_latest(key).await?));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.kv().txn(txn).await.map_err(backend)?;
        if resp.succeeded() {
            return header_revision(resp.header());
        }
        Err(Self::refused(
            key,
            expected,
            else_get(&resp.op_responses())?,
        ))
    }

    /// The returned `KeyValue` is the deleted value as etcd reports it (`prev_kv`: its
    /// `mod_revision` is the last write before the delete).
    async fn delete(&self, key: &str, expected: Revision) -> Result<(Revision, KeyValue)> {
        if expected <= 0 {
            return Err(Self::refused(key, expected, self.get_latest(key).await?));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.kv().txn(txn).await.map_err(backend)?;
        if !resp.succeeded() {
            return Err(Self::refused(
                key,
                expected,
                else_get(&resp.op_responses())?,
            ));
        }
        let revision = header_revision(resp.header())?;
        let deleted = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Delete(d) => d.prev_kvs().first().map(convert_kv),
            _ => None,
        });
        match deleted {
            Some(kv) => Ok((revision, kv?)),
            None => Err(StorageError::Backend(format!(
                "etcd delete of {key} returned no previous value"
            ))),
        }
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let requested = opts.revision.unwrap_or(0).max(0);
        let mut start = prefix.as_bytes().to_vec();
        if let Some(after) = &opts.start_after
            && after.as_str() >= prefix
        {
            start = after.as_bytes().to_vec();
            start.push(0);
        }
        let mut options = GetOptions::new().with_range(prefix_end(prefix));
        if requested > 0 {
            options = options.with_revision(requested);
        }
        if let Some(limit) = opts.limit.filter(|l| *l > 0) {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let resp = match self.kv().get(start, Some(options)).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.read_error(e, requested).await),
        };
        // The header carries the store's current revision, not the one read at.
        let revision = if requested > 0 {
            requested
        } else {
            header_revision(resp.header())?
        };
        let items = resp
            .kvs()
            .iter()
            .map(convert_kv)
            .collect::<Result<Vec<_>>>()?;
        let returned = i64::try_from(items.len()).unwrap_or(i64::MAX);
        Ok(ListResult {
            more: resp.more(),
            remaining: Some((resp.count() - returned).max(0)),
            items,
            revision,
        })
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        let start = after_revision.max(0) + 1;
        let known = self.compacted.load(Ordering::Acquire);
        if start < known {
            return Err(StorageError::Compacted {
                requested: start,
                compacted: known,
            });
        }
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(start)
            .with_prev_key();
        let stream = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(backend)?;
        debug!(prefix, start, "etcd watch started");
        let watch = EtcdWatch {
            stream,
            buffered: VecDeque::new(),
            start,
            compacted: self.compacted.clone(),
            done: false,
        };
        Ok(futures::stream::unfold(watch, |mut w| async move {
            let item = w.next_event().await?;
            Some((item, w))
        })
        .boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        let resp = self
            .kv()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(backend)?;
        header_revision(resp.header())
    }

    /// Compacting at or below the already compacted revision is a no-op. Waits until etcd has
    /// applied the compaction physically.
    async fn compact(&self, revision: Revision) -> Result<()> {
        let options = CompactionOptions::new().with_physical();
        match self.kv().compact(revision, Some(options)).await {
            Ok(_) => {
                info!(revision, "compacted etcd");
                self.note_compacted(revision);
                Ok(())
            }
            Err(e) if e.to_string().contains(ERR_COMPACTED) => Ok(()),
            Err(e) if e.to_string().contains(ERR_FUTURE) => Err(StorageError::FutureRevision {
                requested: revision,
                current: self.current_revision().await.unwrap_or(0),
            }),
            Err(e) => Err(backend(e)),
        }
    }

    /// Exact for compactions this process did or observed; otherwise found by probing reads
    /// (one request when nothing changed, a binary search over the revisions when someone
    /// else compacted). 0 when etcd was never compacted.
    async fn compacted_revision(&self) -> Result<Revision> {
        let known = self.compacted.load(Ordering::Acquire);
        if !self.is_compacted(known.max(1)).await? {
            return Ok(known);
        }
        // The smallest readable revision lies in (known, current].
        let (mut lo, mut hi) = (known.max(1), self.current_revision().await?);
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if self.is_compacted(mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.note_compacted(hi);
        Ok(self.compacted.load(Ordering::Acquire))
    }
}

/// One etcd watch turned into a stream of [`Event`]s.
struct EtcdWatch {
    stream: etcd_client::WatchStream,
    /// Events of the last response not yet handed out.
    buffered: VecDeque<Event>,
    start: Revision,
    compacted: Arc<AtomicI64>,
    done: bool,
}

impl EtcdWatch {
    async fn next_event(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let resp = match self.stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    self.done = true;
                    return Some(Err(StorageError::Backend("etcd closed the watch".into())));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(backend(e)));
                }
            };
            if resp.canceled() {
                self.done = true;
                let compacted = resp.compact_revision();
                if compacted > 0 {
                    self.compacted.fetch_max(compacted, Ordering::AcqRel);
                    return Some(Err(StorageError::Compacted {
                        requested: self.start,
                        compacted,
                    }));
                }
                return Some(Err(StorageError::Backend(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                ))));
            }
            // Created and progress responses carry no events.
            for event in resp.events() {
                match convert_event(event) {
                    Ok(event) => self.buffered.push_back(event),
                    Err(e) => {
                        self.done = true;
                        self.buffered.clear();
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}

fn backend(e: etcd_client::Error) -> StorageError {
    StorageError::Backend(format!("etcd: {e}"))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StorageError::Backend("etcd response without header".into()))
}

/// The current value from a transaction's `else` get.
fn else_get(ops: &[TxnOpResponse]) -> Result<Option<KeyValue>> {
    for op in ops {
        if let TxnOpResponse::Get(get) = op {
            return get.kvs().first().map(convert_kv).transpose();
        }
    }
    Ok(None)
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = String::from_utf8(kv.key().to_vec())
        .map_err(|e| StorageError::Backend(format!("etcd key is not UTF-8: {e}")))?;
    Ok(KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

fn convert_event(event: &etcd_client::Event) -> Result<Event> {
    let kv = event
        .kv()
        .map(convert_kv)
        .transpose()?
        .ok_or_else(|| StorageError::Backend("etcd watch event without kv".into()))?;
    let prev_kv = event.prev_kv().map(convert_kv).transpose()?;
    Ok(match event.event_type() {
        EtcdEventType::Put if kv.create_revision == kv.mod_revision => Event {
            event_type: EventType::Create,
            kv,
            prev_kv: None,
        },
        EtcdEventType::Put => Event {
            event_type: EventType::Update,
            kv,
            prev_kv,
        },
        EtcdEventType::Delete => Event {
            event_type: EventType::Delete,
            // etcd's delete kv is a bare tombstone; report the last value at the delete's
            // revision. The previous value is missing only when its revision was compacted.
            kv: match &prev_kv {
                Some(prev) => KeyValue {
                    mod_revision: kv.mod_revision,
                    ..prev.clone()
                },
                None => kv,
            },
            prev_kv,
        },
    })
}

/// The range end covering every key with `prefix` (etcd's convention: `\0` = no end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::storage::conformance;

    const ETCD: &str = "/usr/bin/etcd";

    /// A throwaway single-member etcd on free loopback ports, killed on drop.
    struct EtcdProcess {
        child: Child,
        endpoint: String,
        dir: tempfile::TempDir,
    }

    impl Drop for EtcdProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    }

    impl EtcdProcess {
        async fn start() -> (Self, EtcdStorage) {
            assert!(
                Path::new(ETCD).exists(),
                "{ETCD} is missing: install Debian's etcd-server package (.ci/run does) to run the etcd conformance tests"
            );
            let dir = tempfile::tempdir().expect("tempdir");
            let (client_port, peer_port) = (free_port(), free_port());
            let endpoint = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
            let child = Command::new(ETCD)
                .args(["--name", "lotse-test"])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("lotse-test={peer}")])
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            let mut process = Self {
                child,
                endpoint,
                dir,
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = process.child.try_wait() {
                    panic!("etcd exited with {status}:\n{}", process.log());
                }
                if let Ok(Ok(store)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    EtcdStorage::connect(&[process.endpoint.clone()]),
                )
                .await
                {
                    return (process, store);
                }
                if std::time::Instant::now() > deadline {
                    let log = process.log();
                    let _ = process.child.kill();
                    panic!("etcd did not answer within 30s:\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs etcd (Debian etcd-server); .ci/run provides it"]
    async fn etcd_conformance_suite() {
        let (_etcd, store) = EtcdProcess::start().await;
        conformance::run_all(Arc::new(store)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs etcd (Debian etcd-server); .ci/run provides it"]
    async fn etcd_compacted_revision_is_found_by_other_clients() {
        let (etcd, store) = EtcdProcess::start().await;
        assert_eq!(store.compacted_revision().await.expect("compacted"), 0);
        let mut rev = store.create("/t/a", b"0".to_vec()).await.expect("create");
        for i in 1..40u8 {
            rev = store.update("/t/a", rev, vec![i]).await.expect("update");
        }
        let target = rev - 7;
        store.compact(target).await.expect("compact");
        // A second client never saw the compaction; it must find the exact revision.
        let other = EtcdStorage::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .expect("connect");
        assert_eq!(other.compacted_revision().await.expect("probe"), target);
        match other
            .list(
                "/t/",
                ListOptions {
                    revision: Some(target - 1),
                    ..Default::default()
                },
            )
            .await
        {
            Err(StorageError::Compacted { compacted, .. }) => assert_eq!(compacted, target),
            res => panic!("expected Compacted, got {res:?}"),
        }
    }

    #[tokio::test]
    #[ignore = "needs etcd (Debian etcd-server); .ci/run provides it"]
    async fn etcd_update_with_revision_zero_is_not_a_create() {
        let (_etcd, store) = EtcdProcess::start().await;
        assert!(matches!(
            store.update("/t/missing", 0, vec![]).await,
            Err(StorageError::NotFound { .. })
        ));
        assert!(matches!(
            store.delete("/t/missing", 0).await,
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(store.get("/t/missing").await.expect("get"), None);
    }

    #[test]
    fn prefix_end_follows_etcd_conventions() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
