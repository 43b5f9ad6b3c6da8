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
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions,
    EventType as EtcdEventType, GetOptions, Identity, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::StreamExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    Event, EventType, KeyValue, ListOptions, ListResult, Result, Revision, Storage, StorageError,
    WatchStream,
};

/// etcd's message for a read or watch below the compacted revision.
const ERR_COMPACTED: &str = "required revision has been compacted";
/// etcd's message for a read above the current revision.
const ERR_FUTURE: &str = "required revision is a future revision";
/// etcd's answer, before it touches the request, when the member has no leader and the client
/// asked for one (`hasleader` metadata, which every request here carries).
const ERR_NO_LEADER: &str = "etcdserver: no leader";

/// How long one call to one member may take before the next member is tried (reads) or the
/// write is reported as timed out (its outcome is unknown, as with etcd's own
/// "request timed out").
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request keeps failing over between members (the time an election may take, with
/// a wide margin) before the error goes back to the caller; well inside Kubernetes' 60 s
/// request timeout.
const FAILOVER_BUDGET: Duration = Duration::from_secs(20);
/// First pause between failover rounds (doubling up to [`MAX_BACKOFF`]).
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Largest response accepted from etcd (clientv3's default, `math.MaxInt32`, which
/// kube-apiserver keeps; gRPC's own default of 4 MiB would fail a list page of large objects).
const MAX_RECV_BYTES: usize = i32::MAX as usize;
/// A watch stream that lasted this long counts as having worked, even without events.
const HEALTHY_WATCH: Duration = Duration::from_secs(5);

/// TLS to etcd, kube-apiserver's `--etcd-cafile`, `--etcd-certfile` and `--etcd-keyfile`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA bundle that verifies the members' serving certificates (else the system roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl EtcdTls {
    /// Whether any TLS option is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    fn options(&self) -> Result<TlsOptions> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                StorageError::Backend(format!("reading etcd TLS file {}: {e}", path.display()))
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(StorageError::Backend(
                    "--etcd-certfile and --etcd-keyfile must be given together".into(),
                ));
            }
        }
        Ok(tls)
    }
}

/// How a failed call may be retried on another member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, and writes that are idempotent (compaction): any unavailability.
    Idempotent,
    /// Guarded writes: only when the member certainly did not process the request (no
    /// connection, or refused for want of a leader) — etcd's clientv3 rule for mutations. A
    /// write cut off in flight may have been applied, so its error goes back to the caller.
    Mutation,
}

/// One client per member, so a dead member is skipped instead of being balanced onto (a
/// single tonic balanced channel keeps routing to an endpoint whose connection failed), and a
/// preferred member that the next request starts from.
struct Members {
    clients: Vec<(String, Client)>,
    preferred: AtomicUsize,
}

impl Members {
    /// Runs `call` against the preferred member, failing over to the others (round after round,
    /// with backoff) while the error allows it and [`FAILOVER_BUDGET`] lasts.
    async fn run<T, F, Fut>(
        &self,
        retry: Retry,
        call: F,
    ) -> std::result::Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + FAILOVER_BUDGET;
        let n = self.clients.len();
        let mut backoff = MIN_BACKOFF;
        loop {
            let first = self.preferred.load(Ordering::Acquire) % n;
            let mut last = None;
            for i in 0..n {
                let idx = (first + i) % n;
                let (endpoint, client) = &self.clients[idx];
                let outcome = tokio::time::timeout(CALL_TIMEOUT, call(client.clone())).await;
                let error = match outcome {
                    Ok(Ok(value)) => {
                        if idx != first {
                            self.prefer(first, idx);
                        }
                        return Ok(value);
                    }
                    Ok(Err(e)) => e,
                    Err(_) => etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(
                        format!("etcd member {endpoint} did not answer within {CALL_TIMEOUT:?}"),
                    )),
                };
                let timed_out = outcome_timed_out(&error);
                if !retryable(&error, retry) || (timed_out && retry == Retry::Mutation) {
                    if is_unavailable(&error) {
                        // Start the next request elsewhere.
                        self.prefer(idx, (idx + 1) % n);
                    }
                    return Err(error);
                }
                debug!(endpoint, error = %error, "etcd member unavailable, trying the next");
                last = Some(error);
            }
            let error =
                last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd members".into()));
            if Instant::now() + backoff > deadline {
                warn!(error = %error, "no etcd member answered within {FAILOVER_BUDGET:?}");
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Moves the preferred member from `from` to `to` (unless another request already moved it).
    fn prefer(&self, from: usize, to: usize) {
        if self
            .preferred
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            info!(endpoint = %self.clients[to].0, "using etcd member");
        }
    }
}

/// Whether `e` says the member (or the way to it) is unavailable rather than that the request
/// was wrong.
fn is_unavailable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
            ) || (s.code() == Code::Unknown && !s.message().starts_with("etcdserver:"))
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn outcome_timed_out(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::DeadlineExceeded)
}

/// Whether a call that failed with `e` may be sent to another member.
fn retryable(e: &etcd_client::Error, retry: Retry) -> bool {
    if !is_unavailable(e) {
        return false;
    }
    match retry {
        Retry::Idempotent => true,
        Retry::Mutation => not_sent(e),
    }
}

/// Whether the member certainly did not process the request: it was never connected, or it
/// refused the request because it has no leader.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            let chain = error_chain(s);
            s.message().contains(ERR_NO_LEADER)
                || chain.contains("error trying to connect")
                || chain.contains("tcp connect error")
                || chain.contains("Connection refused")
                || chain.contains("client error (Connect)")
        }
        _ => false,
    }
}

/// The status message with its sources (tonic keeps the transport error as the source).
fn error_chain(s: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = s.message().to_owned();
    let mut last = text.clone();
    let mut source = s.source();
    while let Some(e) = source {
        let part = e.to_string();
        // Wrappers often repeat their source's or their own text ("transport error").
        if part != last && !last.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        last = part;
        source = e.source();
    }
    text
}

/// A [`Storage`] backed by an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStorage {
    members: Arc<Members>,
    /// Highest compacted revision seen so far (a lower bound of etcd's real one).
    compacted: Arc<AtomicI64>,
}

impl std::fmt::Debug for EtcdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStorage")
            .field(
                "endpoints",
                &self
                    .members
                    .clients
                    .iter()
                    .map(|(e, _)| e)
                    .collect::<Vec<_>>(),
            )
            .field("compacted", &self.compacted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl EtcdStorage {
    /// Connects to the cluster at `endpoints` (e.g. `http://127.0.0.1:2379`) and checks that it
    /// answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, &EtcdTls::default()).await
    }

    /// Connects to the cluster at `endpoints` (`https://` ones with `tls`) and checks that one
    /// member answers. Requests go to one member at a time and fail over to the next when it
    /// is unavailable or has lost its leader.
    pub async fn connect_with(endpoints: &[String], tls: &EtcdTls) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(StorageError::Backend("no etcd endpoints".into()));
        }
        let tls_options = if tls.is_set() {
            Some(tls.options()?)
        } else {
            None
        };
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let options = with_tls(
                endpoint,
                tls_options.as_ref(),
                ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
                    .with_keep_alive_while_idle(true)
                    // A member cut off from the others refuses requests (and ends watches) at
                    // once instead of stalling them; the request then goes to another member.
                    .with_require_leader(true),
            );
            // Connecting is lazy: a member that is down now is dialled again on use.
            let client = Client::connect([endpoint.as_str()], Some(options))
                .await
                .map_err(|e| {
                    StorageError::Backend(format!("connecting to etcd {endpoint}: {e}"))
                })?;
            clients.push((endpoint.clone(), client));
        }
        let store = Self {
            members: Arc::new(Members {
                clients,
                preferred: AtomicUsize::new(0),
            }),
            compacted: Arc::new(AtomicI64::new(0)),
        };
        let revision = store.current_revision().await?;
        info!(?endpoints, revision, "connected to etcd");
        Ok(store)
    }

    /// Runs a KV call with failover (see [`Members::run`]).
    async fn kv<T, F, Fut>(
        &self,
        retry: Retry,
        call: F,
    ) -> std::result::Result<T, etcd_client::Error>
    where
        F: Fn(etcd_client::KvClient) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.members
            .run(retry, |client| {
                call(client.kv_client().max_decoding_message_size(MAX_RECV_BYTES))
            })
            .await
    }

    /// Runs a guarded write transaction (retried on another member only when not sent).
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.kv(Retry::Mutation, |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(backend)
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
        let read = self
            .kv(Retry::Idempotent, |mut kv| {
                let options = options.clone();
                async move { kv.get("/", Some(options)).await }
            })
            .await;
        match read {
            Ok(_) => Ok(false),
            Err(e) if e.to_string().contains(ERR_COMPACTED) => Ok(true),
            Err(e) => Err(backend(e)),
        }
    }

    /// Reads the newest value of `key` (for a refused guard).
    async fn get_latest(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .kv(Retry::Idempotent, |mut kv| async move {
                kv.get(key, None).await
            })
            .await
            .map_err(backend)?;
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
        let resp = self.txn(txn).await?;
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
        let resp = self.txn(txn).await?;
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
        let resp = self.txn(txn).await?;
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
        let read = self
            .kv(Retry::Idempotent, |mut kv| {
                let (start, options) = (start.clone(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await;
        let resp = match read {
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

    /// The watch survives the loss of the member serving it: it is re-established on another
    /// member from the revision after the last event delivered, so its consumer sees neither a
    /// gap nor a duplicate (or `Compacted` when that revision is gone meanwhile, and re-lists).
    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        let start = after_revision.max(0) + 1;
        let known = self.compacted.load(Ordering::Acquire);
        if start < known {
            return Err(StorageError::Compacted {
                requested: start,
                compacted: known,
            });
        }
        let mut watch = EtcdWatch {
            members: self.members.clone(),
            prefix: prefix.to_owned(),
            stream: None,
            member: None,
            buffered: VecDeque::new(),
            start,
            next: start,
            failing_since: None,
            opened_at: Instant::now(),
            compacted: self.compacted.clone(),
            done: false,
        };
        watch.open().await?;
        debug!(prefix, start, "etcd watch started");
        Ok(futures::stream::unfold(watch, |mut w| async move {
            let item = w.next_event().await?;
            Some((item, w))
        })
        .boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        let resp = self
            .kv(Retry::Idempotent, |mut kv| async move {
                kv.get("/", Some(GetOptions::new().with_count_only())).await
            })
            .await
            .map_err(backend)?;
        header_revision(resp.header())
    }

    /// Compacting at or below the already compacted revision is a no-op. Waits until etcd has
    /// applied the compaction physically.
    async fn compact(&self, revision: Revision) -> Result<()> {
        // Compacting twice is harmless (the second one reports "compacted"), so a compaction
        // cut off in flight may be sent to another member.
        let compacted = self
            .kv(Retry::Idempotent, |mut kv| async move {
                kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await;
        match compacted {
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

/// One etcd watch turned into a stream of [`Event`]s, re-established on another member when
/// the one serving it goes away.
struct EtcdWatch {
    members: Arc<Members>,
    prefix: String,
    stream: Option<etcd_client::WatchStream>,
    /// Index of the member serving `stream`.
    member: Option<usize>,
    /// Events of the last response not yet handed out.
    buffered: VecDeque<Event>,
    /// The revision the watch was asked to start from.
    start: Revision,
    /// The revision to resume from: one past the last event received.
    next: Revision,
    /// Since when re-establishing has not produced a working stream.
    failing_since: Option<Instant>,
    /// When `stream` was opened.
    opened_at: Instant,
    compacted: Arc<AtomicI64>,
    done: bool,
}

impl EtcdWatch {
    /// Opens the watch from `next` on the member after the one that failed (or the preferred
    /// one), cycling through the members with backoff until [`FAILOVER_BUDGET`] is spent.
    async fn open(&mut self) -> Result<()> {
        let n = self.members.clients.len();
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let mut idx = match self.member.take() {
            Some(failed) => (failed + 1) % n,
            None => self.members.preferred.load(Ordering::Acquire) % n,
        };
        let mut backoff = MIN_BACKOFF;
        let mut last_error = String::new();
        loop {
            for _ in 0..n {
                let (endpoint, client) = &self.members.clients[idx];
                let options = WatchOptions::new()
                    .with_range(prefix_end(&self.prefix))
                    .with_start_revision(self.next)
                    .with_prev_key();
                let mut watch_client = client
                    .watch_client()
                    .max_decoding_message_size(MAX_RECV_BYTES);
                let opened = tokio::time::timeout(
                    CALL_TIMEOUT,
                    watch_client.watch(self.prefix.as_str(), Some(options)),
                )
                .await;
                match opened {
                    Ok(Ok(stream)) => {
                        if self.next != self.start {
                            info!(endpoint, prefix = %self.prefix, from = self.next, "etcd watch re-established");
                        }
                        self.stream = Some(stream);
                        self.member = Some(idx);
                        self.opened_at = Instant::now();
                        return Ok(());
                    }
                    Ok(Err(e)) if !is_unavailable(&e) => return Err(backend(e)),
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(_) => last_error = format!("{endpoint} did not answer"),
                }
                idx = (idx + 1) % n;
            }
            if since.elapsed() + backoff > FAILOVER_BUDGET {
                return Err(StorageError::Backend(format!(
                    "etcd: no member accepted the watch within {FAILOVER_BUDGET:?}: {last_error}"
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Drops the broken stream and opens it again elsewhere (after a pause when the last
    /// attempts failed too).
    async fn reopen(&mut self, reason: &str) -> Result<()> {
        self.stream = None;
        let endpoint = self
            .member
            .map(|m| self.members.clients[m].0.as_str())
            .unwrap_or_default();
        warn!(endpoint, prefix = %self.prefix, from = self.next, reason, "etcd watch broken, re-establishing");
        if self.opened_at.elapsed() > HEALTHY_WATCH {
            // The stream worked for a while: this is a new failure, not the last one going on.
            self.failing_since = None;
        }
        if let Some(since) = self.failing_since {
            if since.elapsed() > FAILOVER_BUDGET {
                return Err(StorageError::Backend(format!("etcd watch: {reason}")));
            }
            tokio::time::sleep(MIN_BACKOFF * 4).await;
        }
        self.open().await
    }

    async fn next_event(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let message = match self.stream.as_mut() {
                Some(stream) => stream.message().await,
                None => Ok(None),
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    if let Err(e) = self.reopen("etcd closed the watch").await {
                        self.done = true;
                        return Some(Err(e));
                    }
                    continue;
                }
                Err(e) if is_unavailable(&e) => {
                    if let Err(e) = self.reopen(&e.to_string()).await {
                        self.done = true;
                        return Some(Err(e));
                    }
                    continue;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(backend(e)));
                }
            };
            if resp.canceled() {
                let compacted = resp.compact_revision();
                if compacted > 0 {
                    self.done = true;
                    self.compacted.fetch_max(compacted, Ordering::AcqRel);
                    return Some(Err(StorageError::Compacted {
                        requested: self.next,
                        compacted,
                    }));
                }
                let reason = format!("etcd cancelled the watch: {}", resp.cancel_reason());
                if resp.cancel_reason().contains(ERR_NO_LEADER) {
                    if let Err(e) = self.reopen(&reason).await {
                        self.done = true;
                        return Some(Err(e));
                    }
                    continue;
                }
                self.done = true;
                return Some(Err(StorageError::Backend(reason)));
            }
            if !resp.created() {
                // A working stream again (created responses come before any failure shows).
                self.failing_since = None;
            }
            // Created and progress responses carry no events.
            for event in resp.events() {
                match convert_event(event) {
                    Ok(event) => {
                        self.next = self.next.max(event.kv.mod_revision + 1);
                        self.buffered.push_back(event);
                    }
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

/// etcd's own error text as kube-apiserver passes it on: etcd's message
/// (`etcdserver: request is too large`, `etcdserver: request timed out`, …) as is, other gRPC
/// failures as grpc-go words them (`rpc error: code = Unavailable desc = …`).
fn backend(e: etcd_client::Error) -> StorageError {
    StorageError::Backend(match &e {
        etcd_client::Error::GRpcStatus(s) if s.message().starts_with("etcdserver:") => {
            s.message().to_owned()
        }
        etcd_client::Error::GRpcStatus(s) => {
            format!("rpc error: code = {:?} desc = {}", s.code(), error_chain(s))
        }
        _ => format!("etcd: {e}"),
    })
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

/// `options` with `tls` for an endpoint that is not plain `http://`.
fn with_tls(endpoint: &str, tls: Option<&TlsOptions>, options: ConnectOptions) -> ConnectOptions {
    match tls {
        Some(tls) if !endpoint.starts_with("http://") => options.with_tls(tls.clone()),
        _ => options,
    }
}

/// Streams a snapshot of the whole etcd keyspace — the maintenance API's `Snapshot`, exactly
/// what `etcdctl snapshot save` writes, etcd's trailing sha256 included, so `etcdctl snapshot
/// restore` accepts it — from the first member of `endpoints` that delivers one, into `out`
/// (truncated first, and again before trying the next member). Returns the bytes written.
pub async fn save_snapshot(
    endpoints: &[String],
    tls: &EtcdTls,
    out: &mut std::fs::File,
) -> Result<u64> {
    use std::io::{Seek, Write};
    if endpoints.is_empty() {
        return Err(StorageError::Backend("no etcd endpoints".into()));
    }
    let tls_options = if tls.is_set() {
        Some(tls.options()?)
    } else {
        None
    };
    let io = |e: std::io::Error| StorageError::Backend(format!("writing the snapshot: {e}"));
    let mut errors = Vec::new();
    for endpoint in endpoints {
        out.set_len(0).map_err(io)?;
        out.rewind().map_err(io)?;
        let options = with_tls(
            endpoint,
            tls_options.as_ref(),
            ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)),
        );
        let streamed: std::result::Result<u64, String> = async {
            let mut client = Client::connect([endpoint.as_str()], Some(options))
                .await
                .map_err(|e| e.to_string())?;
            let mut stream = client.snapshot().await.map_err(|e| e.to_string())?;
            let mut n = 0u64;
            while let Some(msg) = stream.message().await.map_err(|e| e.to_string())? {
                out.write_all(msg.blob())
                    .map_err(|e| format!("writing the snapshot: {e}"))?;
                n += msg.blob().len() as u64;
            }
            Ok(n)
        }
        .await;
        match streamed {
            Ok(n) if n > 0 => {
                out.sync_all().map_err(io)?;
                return Ok(n);
            }
            Ok(_) => errors.push(format!("{endpoint}: empty snapshot")),
            Err(e) => errors.push(format!("{endpoint}: {e}")),
        }
    }
    Err(StorageError::Backend(format!(
        "no etcd member delivered a snapshot: {}",
        errors.join("; ")
    )))
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

    #[tokio::test]
    #[ignore = "needs etcd (Debian etcd-server); .ci/run provides it"]
    async fn etcd_large_values_get_etcds_error_and_large_lists_are_read() {
        let (_etcd, store) = EtcdProcess::start().await;
        // etcd's default --max-request-bytes is 1.5 MiB; its gRPC server takes 512 KiB more
        // and refuses larger messages before etcd sees them.
        match store.create("/t/big", vec![b'x'; 1700 << 10]).await {
            Err(StorageError::Backend(msg)) => {
                assert_eq!(msg, "etcdserver: request is too large")
            }
            res => panic!("expected etcd's request-too-large error, got {res:?}"),
        }
        match store.create("/t/bigger", vec![b'x'; 2500 << 10]).await {
            Err(StorageError::Backend(msg)) => assert!(
                msg.starts_with(
                    "rpc error: code = ResourceExhausted desc = grpc: received message larger than max"
                ),
                "{msg}"
            ),
            res => panic!("expected gRPC's message-too-large error, got {res:?}"),
        }
        // Six values of 1 MiB: one list response beyond gRPC's default 4 MiB limit.
        for i in 0..6 {
            store
                .create(&format!("/t/mib-{i}"), vec![b'y'; 1 << 20])
                .await
                .expect("create 1 MiB");
        }
        let list = store
            .list("/t/mib-", ListOptions::default())
            .await
            .expect("list 6 MiB");
        assert_eq!(list.items.len(), 6);
    }

    #[tokio::test]
    #[ignore = "needs etcd (Debian etcd-server); .ci/run provides it"]
    async fn etcd_first_endpoint_down_fails_over() {
        let (etcd, _) = EtcdProcess::start().await;
        // The first named member refuses connections: requests go to the next one.
        let dead = format!("http://127.0.0.1:{}", free_port());
        let store = EtcdStorage::connect(&[dead, etcd.endpoint.clone()])
            .await
            .expect("connect past a dead first endpoint");
        let rev = store.create("/t/a", b"1".to_vec()).await.expect("create");
        assert_eq!(
            store
                .get("/t/a")
                .await
                .expect("get")
                .map(|kv| kv.mod_revision),
            Some(rev)
        );
    }

    #[test]
    fn prefix_end_follows_etcd_conventions() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
