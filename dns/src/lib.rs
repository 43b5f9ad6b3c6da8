//! Lotse's cluster DNS: serves the Kubernetes DNS specification for the cluster domain from the
//! API's Services, EndpointSlices and Namespaces (as CoreDNS's `kubernetes` plugin), and forwards
//! every other name to the upstream resolvers of its resolv.conf. It runs as the pods of the
//! `kube-system/coredns` Deployment behind the `kube-dns` Service (`lotse up` applies them), with
//! CoreDNS's health and readiness endpoints.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod forward;
pub mod handler;
pub mod health;
pub mod server;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};

pub use forward::Forwarder;
pub use handler::Zone;
pub use server::Server;
pub use view::ClusterView;

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--cluster-domain` is not a domain name.
    #[error("invalid cluster domain {0:?}: {1}")]
    ClusterDomain(String, String),
    /// The listen address could not be bound.
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// What the DNS server serves and where.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// UDP and TCP listen address.
    pub listen: SocketAddr,
    /// Upstream resolvers' file (`/etc/resolv.conf`).
    pub resolv_conf: std::path::PathBuf,
    /// Deadline of one forwarded query.
    pub forward_timeout: Duration,
    /// Liveness endpoint `/health` (CoreDNS's `health` plugin, `:8080`); None: not served.
    pub health: Option<SocketAddr>,
    /// Readiness endpoint `/ready` (CoreDNS's `ready` plugin, `:8181`), `200` once the first
    /// lists are in; None: not served.
    pub ready: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_domain: "cluster.local".into(),
            listen: ([0, 0, 0, 0], 53).into(),
            resolv_conf: "/etc/resolv.conf".into(),
            forward_timeout: Duration::from_secs(2),
            health: Some(([0, 0, 0, 0], 8080).into()),
            ready: Some(([0, 0, 0, 0], 8181).into()),
        }
    }
}

fn spawn_reflector<K>(api: Api<K>, what: &'static str, changed: Arc<Notify>) -> Store<K>
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
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
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

/// Keeps a [`ClusterView`] current from the API: rebuilt after every change of a Service,
/// EndpointSlice or Namespace. Returns once the first lists are in.
pub async fn watch_cluster(client: kube::Client) -> watch::Receiver<Arc<ClusterView>> {
    let changed = Arc::new(Notify::new());
    let services = spawn_reflector(
        Api::<Service>::all(client.clone()),
        "services",
        changed.clone(),
    );
    let slices = spawn_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        "endpointslices",
        changed.clone(),
    );
    let namespaces = spawn_reflector(Api::<Namespace>::all(client), "namespaces", changed.clone());
    for ready in [
        services.wait_until_ready().await.is_ok(),
        slices.wait_until_ready().await.is_ok(),
        namespaces.wait_until_ready().await.is_ok(),
    ] {
        if !ready {
            tracing::warn!("a reflector stopped before its first list");
        }
    }
    let build = move || {
        let (s, e, n) = (services.state(), slices.state(), namespaces.state());
        Arc::new(ClusterView::build(
            s.iter().map(|x| x.as_ref()),
            e.iter().map(|x| x.as_ref()),
            n.iter().map(|x| x.as_ref()),
        ))
    };
    let (tx, rx) = watch::channel(build());
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            if tx.send(build()).is_err() {
                return;
            }
        }
    });
    rx
}

/// Serves DNS on `cfg.listen` (UDP and TCP), and the health and readiness endpoints, until
/// `shutdown` resolves.
pub async fn run(
    cfg: Config,
    client: kube::Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let zone = Zone::new(&cfg.cluster_domain)?;
    let (udp, tcp) = server::bind(cfg.listen)
        .await
        .map_err(|e| Error::Bind(cfg.listen, e))?;
    let resolv = std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_else(|e| {
        tracing::warn!(path = %cfg.resolv_conf.display(), error = %e, "no upstream resolvers");
        String::new()
    });
    let forwarder = Forwarder::from_resolv_conf(&resolv, &[cfg.listen], cfg.forward_timeout);
    let (ready_tx, ready_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Alive as soon as the process serves; ready once the cluster's names are known.
    let (always, _) = watch::channel(true);
    for (addr, path, rx) in [
        (cfg.health, "/health", always.subscribe()),
        (cfg.ready, "/ready", ready_rx),
    ] {
        if let Some(addr) = addr {
            let listener = health::bind(addr).await?;
            tasks.push(tokio::spawn(health::serve(listener, path, rx)));
        }
    }
    tracing::info!(listen = %cfg.listen, zone = %cfg.cluster_domain, upstreams = ?forwarder.upstreams, "cluster DNS starting");
    let view = watch_cluster(client).await;
    let server = Arc::new(Server::new(view, zone, forwarder));
    tasks.push(tokio::spawn(server.clone().serve_udp(udp)));
    tasks.push(tokio::spawn(server.serve_tcp(tcp)));
    let _ = ready_tx.send(true);
    tracing::info!("cluster DNS ready");
    shutdown.await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}
