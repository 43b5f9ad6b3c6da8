//! The CRD controllers of a server (apiextensions-apiserver's establishing, naming and
//! finalizer controllers in one loop): they follow the stored CRDs through their watch cache,
//! write their status, install their served entries in the registry
//! ([`crate::registry::custom`]) and, when a CRD is deleted, delete its objects before removing
//! the cleanup finalizer. Started by the server assembly.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cache::reader::CacheReader;
use crate::crd::{self, Served};
use crate::registry::custom;
use crate::registry::fields;
use crate::storage::Storage;
use crate::write::{ObjectWriter, UpdateScope};

/// Starts the CRD controller of a server: it follows the stored CRDs (through their watch
/// cache), writes their status, serves their resources and, when a CRD is deleted, deletes its
/// objects before removing the cleanup finalizer.
pub fn spawn(reader: &Arc<CacheReader>, storage: &Arc<dyn Storage>, writer: Arc<dyn ObjectWriter>) {
    let weak = Handles {
        reader: Arc::downgrade(reader),
        storage: Arc::downgrade(storage),
        writer: Arc::downgrade(&writer),
    };
    let owner = custom::new_owner();
    tokio::spawn(async move {
        run(weak, owner).await;
        custom::install(owner, Vec::new());
    });
}

/// The server's handles, held weakly so the controllers end with their server.
struct Handles {
    reader: Weak<CacheReader>,
    storage: Weak<dyn Storage>,
    writer: Weak<dyn ObjectWriter>,
}

/// The handles of a running server.
struct Live {
    storage: Arc<dyn Storage>,
    writer: Arc<dyn ObjectWriter>,
}

impl Handles {
    fn live(&self) -> Option<Live> {
        Some(Live {
            storage: self.storage.upgrade()?,
            writer: self.writer.upgrade()?,
        })
    }
}

async fn run(server: Handles, owner: u64) {
    loop {
        let Some(s) = server.reader.upgrade() else {
            return;
        };
        let Ok(cacher) = s.cacher(&custom::CUSTOMRESOURCEDEFINITIONS).map(Arc::clone) else {
            return;
        };
        drop(s);
        // The cache's first list does not wake watchers: start from a cache that has it.
        if cacher.wait_fresh().await.is_err() {
            continue;
        }
        let mut rx = match cacher.watch_from(None).await {
            Ok(crate::cache::cacher::WatchStart::Snapshot(_, _, rx))
            | Ok(crate::cache::cacher::WatchStart::Replay(_, rx)) => rx,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Level-triggered: every wake-up reconciles every CRD; a failed write retries soon.
        loop {
            let Some(s) = server.live() else { return };
            let settled = reconcile_all(&s, &cacher, owner).await;
            drop(s);
            // Lagged still means "something changed"; only a closed channel ends the watch.
            let wake = async {
                !matches!(
                    rx.recv().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed)
                )
            };
            let open = if settled {
                wake.await
            } else {
                tokio::time::timeout(Duration::from_millis(300), wake)
                    .await
                    .unwrap_or(true)
            };
            if !open {
                break;
            }
            // Coalesce bursts of events.
            while rx.try_recv().is_ok() {}
        }
    }
}

/// One pass over all CRDs; false when something must be retried.
async fn reconcile_all(
    server: &Live,
    cacher: &Arc<crate::cache::cacher::Cacher>,
    owner: u64,
) -> bool {
    let listed = cacher.list("", None, 0, &|_| true).await;
    let mut crds: Vec<(Value, crate::storage::Revision)> = listed
        .items
        .iter()
        .filter_map(|o| {
            serde_json::from_slice::<Value>(&o.raw)
                .ok()
                .map(|v| (v, o.rv))
        })
        .collect();
    // CRDs whose names were accepted first, then the oldest: names once accepted are kept,
    // and among new claimants the first created wins.
    crds.sort_by_key(|(v, _)| {
        (
            !crd::definition::is_established(v),
            fields::str_at(v, &["metadata", "creationTimestamp"])
                .unwrap_or("")
                .to_string(),
            fields::name(v).to_string(),
        )
    });
    let mut settled = true;
    let mut accepted: Vec<Value> = Vec::new();
    let mut wanted = Vec::new();
    let now = now_rfc3339();
    let mut deleting = Vec::new();
    // The routes of every established CRD are installed before its `Established` condition is
    // written: a client that waits for the condition (kubectl wait, kube-rs await_condition)
    // must find the resource served.
    let mut computed = Vec::new();
    for (crd_obj, rv) in &crds {
        let status = crd::definition::status(crd_obj, &accepted, &now);
        let mut with_status = crd_obj.clone();
        if let Value::Object(m) = &mut with_status {
            m.insert("status".into(), status.clone());
        }
        if crd::definition::is_established(&with_status) {
            accepted.push(with_status.clone());
            wanted.extend(Served::all_from(&with_status));
        }
        computed.push((crd_obj, *rv, status, with_status));
    }
    custom::install(owner, wanted);
    for (crd_obj, rv, status, new) in computed {
        let mut current = crd_obj.clone();
        let mut current_rv = rv;
        if crd_obj.get("status") != Some(&status) {
            match ObjectWriter::update_object(
                server.writer.as_ref(),
                &custom::CUSTOMRESOURCEDEFINITIONS,
                None,
                fields::name(crd_obj),
                crd_obj.clone(),
                rv,
                new,
                UpdateScope::Status,
            )
            .await
            {
                Ok(obj) => {
                    current_rv = fields::str_at(&obj, &["metadata", "resourceVersion"])
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(current_rv);
                    current = obj;
                }
                Err(e) => {
                    tracing::debug!(crd = fields::name(crd_obj), error = %e, "CRD status update; retrying");
                    settled = false;
                }
            }
        }
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            deleting.push((current, current_rv));
        }
    }
    for (crd_obj, rv) in &deleting {
        if !finish_deletion(server, crd_obj, *rv).await {
            settled = false;
        }
    }
    settled
}

fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// Deletes the objects of a CRD being deleted, then removes its cleanup finalizer (storage then
/// removes the CRD, and the next pass stops serving it). False when something must be retried.
async fn finish_deletion(server: &Live, crd_obj: &Value, rv: crate::storage::Revision) -> bool {
    let finalizers: Vec<Value> = crd_obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == crd::CLEANUP_FINALIZER) {
        return true;
    }
    let group = fields::str_at(crd_obj, &["spec", "group"]).unwrap_or("");
    let plural = fields::str_at(crd_obj, &["spec", "names", "plural"]).unwrap_or("");
    if !group.is_empty() && !plural.is_empty() {
        let def = custom::lookup_storage_def(group, plural);
        let prefix = format!("/registry/{group}/{plural}/");
        let page = match server
            .storage
            .list(&prefix, crate::storage::ListOptions::default())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "listing custom resources to delete");
                return false;
            }
        };
        if !page.items.is_empty() {
            for kv in page.items {
                let obj: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                let deleted = match def {
                    Some(def) => {
                        let ns = fields::namespace(&obj);
                        let ns = (!ns.is_empty()).then_some(ns);
                        server
                            .writer
                            .delete_in_background(def, ns, fields::name(&obj))
                            .await
                            .map_err(|e| e.to_string())
                    }
                    None => server
                        .storage
                        .delete(&kv.key, kv.mod_revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = deleted {
                    tracing::debug!(key = %kv.key, error = %e, "deleting custom resource");
                }
            }
            // Objects with finalizers of their own stay until those are removed.
            return false;
        }
    }
    let mut new = crd_obj.clone();
    let remaining: Vec<Value> = finalizers
        .into_iter()
        .filter(|f| f != crd::CLEANUP_FINALIZER)
        .collect();
    fields::ensure_object(&mut new, &["metadata"]).insert("finalizers".into(), json!(remaining));
    ObjectWriter::update_object(
        server.writer.as_ref(),
        &custom::CUSTOMRESOURCEDEFINITIONS,
        None,
        fields::name(crd_obj),
        crd_obj.clone(),
        rv,
        new,
        UpdateScope::Main,
    )
    .await
    .is_ok()
}
