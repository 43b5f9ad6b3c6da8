//! Lotse's built-in ingress controller: serves the Ingresses of its class (`lotse` by default,
//! and those without a class while `lotse` is the default IngressClass) as an HTTP/1.1 reverse
//! proxy on hyper, straight to the Services' ready endpoints, with TLS (rustls, SNI) from
//! `kubernetes.io/tls` Secrets. Every change of an IngressClass, Ingress, Service, EndpointSlice
//! or TLS Secret rebuilds the route table, which is swapped whole: open connections keep
//! going and their next request sees the new routes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod proxy;
pub mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;

pub use routes::Table;

/// The controller name of Lotse's IngressClass (`spec.controller`).
pub const CONTROLLER: &str = "lotse.dev/ingress";
/// The annotation marking the default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Errors of the ingress controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listen address could not be bound.
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// An API call failed.
    #[error("API: {0}")]
    Kube(#[from] kube::Error),
}

/// What the controller serves and where.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTP listen address.
    pub http: SocketAddr,
    /// HTTPS listen address.
    pub https: SocketAddr,
    /// The IngressClass name served.
    pub class: String,
    /// Addresses written to `status.loadBalancer.ingress` of served Ingresses; empty: the
    /// InternalIP of every Node (the controller runs on every node, as k3s's Traefik behind
    /// ServiceLB, whose load-balancer status lists the nodes' addresses).
    pub addresses: Vec<String>,
}

fn spawn_reflector<K>(
    api: Api<K>,
    cfg: watcher::Config,
    what: &'static str,
    changed: Arc<Notify>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(what, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

/// Whether the controller serves this Ingress: its class is ours, or it has none and ours is
/// the default class.
pub fn handles(ing: &Ingress, class: &str, classes: &[Arc<IngressClass>]) -> bool {
    let named = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/ingress.class").cloned())
        });
    match named {
        Some(n) => n == class,
        None => classes.iter().any(|c| {
            c.metadata.name.as_deref() == Some(class)
                && c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true")
        }),
    }
}

/// Parses a `kubernetes.io/tls` Secret's `tls.crt`/`tls.key` into a signing certificate.
pub fn certified_key(secret: &Secret) -> Option<Arc<CertifiedKey>> {
    let data = secret.data.as_ref()?;
    let mut crt = &data.get("tls.crt")?.0[..];
    let mut key = &data.get("tls.key")?.0[..];
    let chain: Vec<_> = rustls_pemfile::certs(&mut crt)
        .collect::<Result<_, _>>()
        .ok()?;
    let key = rustls_pemfile::private_key(&mut key).ok()??;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .ok()
        .map(Arc::new)
}

/// Serves the Ingresses of `cfg.class` until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    client: kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let http = tokio::net::TcpListener::bind(cfg.http)
        .await
        .map_err(|e| Error::Bind(cfg.http, e))?;
    let https = tokio::net::TcpListener::bind(cfg.https)
        .await
        .map_err(|e| Error::Bind(cfg.https, e))?;
    let table = Arc::new(ArcSwap::from_pointee(Table::default()));
    let tls = proxy::tls_config(table.clone())?;
    tracing::info!(http = %cfg.http, https = %cfg.https, class = %cfg.class, "ingress controller starting");
    let p = proxy::Proxy::new(table.clone());
    let h1 = tokio::spawn(p.clone().serve_http(http));
    let h2 = tokio::spawn(p.serve_https(https, tls));
    let w = tokio::spawn(watch(cfg, client, table));
    shutdown.await;
    h1.abort();
    h2.abort();
    w.abort();
    Ok(())
}

/// Keeps `table` current from the API and the served Ingresses' status.
async fn watch(cfg: Config, client: kube::Client, table: Arc<ArcSwap<Table>>) {
    let changed = Arc::new(Notify::new());
    let all = watcher::Config::default();
    let classes = spawn_reflector(
        Api::<IngressClass>::all(client.clone()),
        all.clone(),
        "ingressclasses",
        changed.clone(),
    );
    let ingresses = spawn_reflector(
        Api::<Ingress>::all(client.clone()),
        all.clone(),
        "ingresses",
        changed.clone(),
    );
    let services = spawn_reflector(
        Api::<Service>::all(client.clone()),
        all.clone(),
        "services",
        changed.clone(),
    );
    let slices = spawn_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        all.clone(),
        "endpointslices",
        changed.clone(),
    );
    let secrets = spawn_reflector(
        Api::<Secret>::all(client.clone()),
        all.fields("type=kubernetes.io/tls"),
        "secrets",
        changed.clone(),
    );
    for s in [
        classes.wait_until_ready().await.is_ok(),
        ingresses.wait_until_ready().await.is_ok(),
        services.wait_until_ready().await.is_ok(),
        slices.wait_until_ready().await.is_ok(),
        secrets.wait_until_ready().await.is_ok(),
    ] {
        if !s {
            tracing::warn!("a reflector stopped before its first list");
        }
    }
    let published = if cfg.addresses.is_empty() {
        Published::Nodes(spawn_node_addresses(client.clone(), changed.clone()))
    } else {
        Published::Fixed(cfg.addresses.clone())
    };
    // Parsed certificates by `<namespace>/<name>@<resourceVersion>`, so unchanged Secrets are
    // not parsed again.
    let mut parsed: HashMap<String, Option<Arc<CertifiedKey>>> = HashMap::new();
    loop {
        let addresses = published.current();
        let cls = classes.state();
        let ings: Vec<Arc<Ingress>> = ingresses
            .state()
            .into_iter()
            .filter(|i| handles(i, &cfg.class, &cls))
            .collect();
        let mut certs = HashMap::new();
        let mut seen = HashMap::new();
        for s in secrets.state() {
            let id = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            );
            let key = format!(
                "{id}@{}",
                s.metadata.resource_version.as_deref().unwrap_or_default()
            );
            let c = match parsed.get(&key) {
                Some(c) => c.clone(),
                None => certified_key(&s),
            };
            if let Some(c) = &c {
                certs.insert(id, c.clone());
            }
            seen.insert(key, c);
        }
        parsed = seen;
        let (svcs, sls) = (services.state(), slices.state());
        let snap = routes::Snapshot {
            ingresses: ings.iter().map(|i| i.as_ref()).collect(),
            services: svcs.iter().map(|s| s.as_ref()).collect(),
            slices: sls.iter().map(|s| s.as_ref()).collect(),
            secrets: &certs,
        };
        table.store(Arc::new(snap.build()));
        // Before the first list of the Nodes, the served Ingresses' status is left as it is.
        for ing in ings.iter().filter(|_| !addresses.is_empty()) {
            if let Err(e) = set_status(&client, ing, &addresses).await {
                tracing::warn!(ingress = ?ing.metadata.name, error = %e, "updating ingress status");
            }
        }
        changed.notified().await;
        // Coalesce bursts (a rollout changes several objects at once).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the addresses of `status.loadBalancer.ingress` come from.
enum Published {
    /// `--publish-address`.
    Fixed(Vec<String>),
    /// The nodes' InternalIPs, kept current by [`spawn_node_addresses`].
    Nodes(Arc<ArcSwap<Vec<String>>>),
}

impl Published {
    fn current(&self) -> Vec<String> {
        match self {
            Published::Fixed(a) => a.clone(),
            Published::Nodes(a) => a.load().as_ref().clone(),
        }
    }
}

/// The first InternalIP of each Node, sorted and without repeats (the same list on every node,
/// so the controllers of several nodes never undo each other's status).
pub fn node_addresses<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .into_iter()
        .filter_map(|n| {
            n.status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Watches the Nodes and keeps their [`node_addresses`] in the returned cell, notifying
/// `changed` only when that list changes (not at every node heartbeat).
fn spawn_node_addresses(client: kube::Client, changed: Arc<Notify>) -> Arc<ArcSwap<Vec<String>>> {
    let cell = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let out = cell.clone();
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client), watcher::Config::default()),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(what = "nodes", error = %e, "watch failed; retrying");
                    continue;
                }
            }
            let now = node_addresses(reader.state().iter().map(|n| n.as_ref()));
            if *cell.load().as_ref() != now {
                tracing::info!(addresses = ?now, "published node addresses");
                cell.store(Arc::new(now));
                changed.notify_one();
            }
        }
    });
    out
}

/// Sets `status.loadBalancer.ingress` to the node addresses unless it already is.
async fn set_status(client: &kube::Client, ing: &Ingress, addrs: &[String]) -> Result<(), Error> {
    let want: Vec<serde_json::Value> = addrs.iter().map(|a| serde_json::json!({"ip": a})).collect();
    let have: Vec<serde_json::Value> = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|v| {
            v.iter()
                .filter_map(|i| serde_json::to_value(i).ok())
                .collect()
        })
        .unwrap_or_default();
    if have == want {
        return Ok(());
    }
    let (Some(ns), Some(name)) = (&ing.metadata.namespace, &ing.metadata.name) else {
        return Ok(());
    };
    let api = Api::<Ingress>::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": want}}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addresses: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {"addresses": addresses.iter()
                .map(|(t, a)| serde_json::json!({"type": t, "address": a}))
                .collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    #[test]
    fn node_addresses_are_the_sorted_internal_ips() {
        let nodes = [
            node(&[("Hostname", "b"), ("InternalIP", "10.213.0.3")]),
            node(&[("InternalIP", "10.213.0.2"), ("InternalIP", "10.213.0.9")]),
            node(&[("Hostname", "c")]),
            node(&[("InternalIP", "10.213.0.2")]),
        ];
        assert_eq!(node_addresses(&nodes), ["10.213.0.2", "10.213.0.3"]);
        assert!(node_addresses(&[]).is_empty());
    }
}
