//! Garbage collector: follows `ownerReferences` across every resource the apiserver serves.
//! Dependents whose owners are gone are deleted (Background); owners marked
//! `foregroundDeletion` lose that finalizer once their blocking dependents are gone; owners
//! marked `orphan` have their dependents released first.
//!
//! Each listable, watchable resource gets a watcher feeding a reflector store; any change
//! triggers a pass over the stores. Before deleting a dependent, its owner's absence is
//! confirmed with a live GET, so a store that lags never causes a wrong deletion.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::Error;

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

struct Watched {
    ar: ApiResource,
    namespaced: bool,
    store: Store<DynamicObject>,
}

/// Runs the garbage collector forever.
pub async fn run(client: Client) -> Result<(), Error> {
    let notify = Arc::new(Notify::new());
    let mut watched: HashMap<String, Arc<Watched>> = HashMap::new();
    let mut last_discovery = None::<tokio::time::Instant>;
    loop {
        if last_discovery.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            match Discovery::new(client.clone()).run().await {
                Ok(d) => {
                    for group in d.groups() {
                        for (ar, caps) in group.recommended_resources() {
                            let key = format!("{}/{}", ar.api_version, ar.plural);
                            if watched.contains_key(&key)
                                || !caps.supports_operation(verbs::LIST)
                                || !caps.supports_operation(verbs::WATCH)
                            {
                                continue;
                            }
                            watched.insert(
                                key,
                                start_watch(
                                    client.clone(),
                                    ar,
                                    caps.scope == Scope::Namespaced,
                                    notify.clone(),
                                ),
                            );
                        }
                    }
                    last_discovery = Some(tokio::time::Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "garbage collector discovery"),
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), notify.notified()).await;
        // Let a burst of changes settle into one pass.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resources: Vec<Arc<Watched>> = watched.values().cloned().collect();
        if let Err(e) = pass(&client, &resources).await {
            tracing::warn!(error = %e, "garbage collection pass");
            notify.notify_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn start_watch(
    client: Client,
    ar: ApiResource,
    namespaced: bool,
    notify: Arc<Notify>,
) -> Arc<Watched> {
    let writer = reflector::store::Writer::new(ar.clone());
    let store = writer.as_reader();
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        stream
            .for_each(|_| {
                notify.notify_one();
                futures::future::ready(())
            })
            .await;
    });
    Arc::new(Watched {
        ar,
        namespaced,
        store,
    })
}

struct Node {
    res: Arc<Watched>,
    obj: Arc<DynamicObject>,
}

impl Node {
    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match self.obj.namespace() {
            Some(ns) if self.res.namespaced => {
                Api::namespaced_with(client.clone(), &ns, &self.res.ar)
            }
            _ => Api::all_with(client.clone(), &self.res.ar),
        }
    }
    fn uid(&self) -> String {
        self.obj.uid().unwrap_or_default()
    }
    fn has_finalizer(&self, f: &str) -> bool {
        self.obj.finalizers().iter().any(|x| x == f)
    }
}

async fn pass(client: &Client, resources: &[Arc<Watched>]) -> Result<(), Error> {
    let mut nodes: Vec<Node> = Vec::new();
    for res in resources {
        for obj in res.store.state() {
            nodes.push(Node {
                res: res.clone(),
                obj,
            });
        }
    }
    let by_uid: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.uid(), i))
        .collect();
    let mut dependents: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for r in n.obj.owner_references() {
            dependents.entry(r.uid.clone()).or_default().push(i);
        }
    }
    let kinds: HashMap<(String, String), Arc<Watched>> = resources
        .iter()
        .map(|r| ((r.ar.api_version.clone(), r.ar.kind.clone()), r.clone()))
        .collect();

    for n in &nodes {
        let uid = n.uid();
        let deps = dependents.get(&uid).map(Vec::as_slice).unwrap_or_default();
        if n.obj.metadata.deletion_timestamp.is_some() {
            if n.has_finalizer(ORPHAN) {
                orphan_dependents(client, &nodes, deps, &uid).await?;
                remove_finalizer(client, n, ORPHAN).await?;
            } else if n.has_finalizer(FOREGROUND) {
                let mut blocking = false;
                for &d in deps {
                    let dep = &nodes[d];
                    if dep
                        .obj
                        .owner_references()
                        .iter()
                        .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
                    {
                        blocking = true;
                    }
                    if dep.obj.metadata.deletion_timestamp.is_none() {
                        let policy = if dependents.get(&dep.uid()).is_some_and(|v| !v.is_empty()) {
                            DeleteParams::foreground()
                        } else {
                            DeleteParams::background()
                        };
                        delete(client, dep, policy).await?;
                    }
                }
                if !blocking {
                    remove_finalizer(client, n, FOREGROUND).await?;
                }
            }
            continue;
        }
        let refs = n.obj.owner_references();
        if refs.is_empty() {
            continue;
        }
        let mut solid = 0;
        let mut dangling = Vec::new();
        let mut waiting = Vec::new();
        for r in refs {
            match by_uid.get(&r.uid).map(|&i| &nodes[i]) {
                Some(o)
                    if o.obj.metadata.deletion_timestamp.is_some()
                        && o.has_finalizer(FOREGROUND) =>
                {
                    waiting.push(r.uid.clone())
                }
                Some(_) => solid += 1,
                None => {
                    // Confirm with the apiserver: the store may not have seen a new owner yet.
                    if owner_absent(client, &kinds, n, r).await? {
                        dangling.push(r.uid.clone());
                    } else {
                        solid += 1;
                    }
                }
            }
        }
        if solid > 0 {
            if !dangling.is_empty() || !waiting.is_empty() {
                let keep: Vec<_> = refs
                    .iter()
                    .filter(|r| !dangling.contains(&r.uid) && !waiting.contains(&r.uid))
                    .cloned()
                    .collect();
                patch_owner_refs(client, n, keep).await?;
            }
            continue;
        }
        let policy = if !waiting.is_empty() && dependents.get(&uid).is_some_and(|v| !v.is_empty()) {
            DeleteParams::foreground()
        } else if n.has_finalizer(ORPHAN) {
            DeleteParams::orphan()
        } else if n.has_finalizer(FOREGROUND) {
            DeleteParams::foreground()
        } else {
            DeleteParams::background()
        };
        delete(client, n, policy).await?;
    }
    Ok(())
}

async fn owner_absent(
    client: &Client,
    kinds: &HashMap<(String, String), Arc<Watched>>,
    n: &Node,
    r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<bool, Error> {
    let (ar, namespaced) = match kinds.get(&(r.api_version.clone(), r.kind.clone())) {
        Some(res) => (res.ar.clone(), res.namespaced),
        None => {
            // A kind discovered after the last discovery pass (a new CRD): ask the apiserver.
            // As Kubernetes' GC, an owner whose kind cannot be resolved is never taken as gone.
            let (group, version) = r
                .api_version
                .split_once('/')
                .unwrap_or(("", &r.api_version));
            let gvk = kube::api::GroupVersionKind::gvk(group, version, &r.kind);
            match kube::discovery::pinned_kind(client, &gvk).await {
                Ok((ar, caps)) => (ar, caps.scope == Scope::Namespaced),
                Err(e) => {
                    tracing::debug!(owner = %r.kind, error = %e, "owner kind not resolvable; keeping the dependent");
                    return Ok(false);
                }
            }
        }
    };
    let api: Api<DynamicObject> = match n.obj.namespace() {
        Some(ns) if namespaced => Api::namespaced_with(client.clone(), &ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    };
    Ok(match api.get_opt(&r.name).await? {
        None => true,
        Some(o) => o.uid().as_deref() != Some(r.uid.as_str()),
    })
}

async fn orphan_dependents(
    client: &Client,
    nodes: &[Node],
    deps: &[usize],
    owner_uid: &str,
) -> Result<(), Error> {
    for &d in deps {
        let dep = &nodes[d];
        let keep: Vec<_> = dep
            .obj
            .owner_references()
            .iter()
            .filter(|r| r.uid != owner_uid)
            .cloned()
            .collect();
        patch_owner_refs(client, dep, keep).await?;
    }
    Ok(())
}

fn tolerate_gone<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn patch_owner_refs(
    client: &Client,
    n: &Node,
    refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<(), Error> {
    let patch = json!({"metadata": {"ownerReferences": refs, "uid": n.uid()}});
    tolerate_gone(
        n.api(client)
            .patch(
                &n.obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await,
    )
}

async fn remove_finalizer(client: &Client, n: &Node, f: &str) -> Result<(), Error> {
    let rest: Vec<&String> = n.obj.finalizers().iter().filter(|x| *x != f).collect();
    let patch =
        json!({"metadata": {"finalizers": rest, "resourceVersion": n.obj.resource_version()}});
    tolerate_gone(
        n.api(client)
            .patch(
                &n.obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await,
    )
}

async fn delete(client: &Client, n: &Node, mut params: DeleteParams) -> Result<(), Error> {
    params.preconditions = Some(Preconditions {
        uid: n.obj.uid(),
        resource_version: None,
    });
    tracing::debug!(kind = %n.res.ar.kind, name = %n.obj.name_any(), "garbage collecting");
    tolerate_gone(n.api(client).delete(&n.obj.name_any(), &params).await)
}
