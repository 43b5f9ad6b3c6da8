//! The apiserver's shared state: the handles a running apiserver is made of — storage, the
//! watch caches, the Service allocators, the authenticators and authorizer, admission's
//! configuration, metrics and flow control. Built once by the server assembly (`server.rs`),
//! which routes requests; the modules that serve them receive it.

use std::sync::{Arc, OnceLock};

use ipnet::Ipv4Net;

use crate::alloc::ServiceAllocator;
use crate::cache::cacher::Cacher;
use crate::cache::reader::CacheReader;
use crate::error::ApiResult;
use crate::metrics::Metrics;
use crate::registry::ResourceDef;
use crate::storage::Storage;

/// Shared state of a running apiserver.
pub struct AppState {
    /// The storage backend.
    pub storage: Arc<dyn Storage>,
    /// The read handle on the watch caches (and storage for live lookups).
    pub reader: Arc<CacheReader>,
    /// Service IP / node port allocator.
    pub alloc: ServiceAllocator,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Address advertised in `/api` discovery.
    pub server_address: String,
    /// Authentication and authorization state (token authority, RBAC authorizer).
    pub security: Security,
    /// Pod Security admission: exemptions (none by default) and its metrics.
    pub pod_security: Arc<crate::admission::pod_security::PodSecurity>,
    /// The admission chain (its PodSecurity plugin shares `pod_security`).
    pub admission: crate::admission::chain::Chain,
    /// The built-in `metrics.k8s.io` API's last kubelet scrapes.
    pub resource_metrics: Arc<crate::metrics_api::Store>,
    /// Overload protection (`--max-requests-inflight`, per-user fair queuing) and the request
    /// timeout.
    pub flow_control: crate::flowcontrol::FlowControl,
}

impl AppState {
    /// Builds the state and starts one watch cache per resource.
    pub fn new(
        storage: Arc<dyn Storage>,
        service_cidr: Ipv4Net,
        server_address: String,
    ) -> Arc<Self> {
        // Every write is marked, so admission reads its own writes from the caches.
        let marks = Arc::new(crate::storage::marks::WriteMarks::default());
        let storage: Arc<dyn Storage> =
            Arc::new(crate::storage::marks::Marking::new(storage, marks.clone()));
        let pod_security: Arc<crate::admission::pod_security::PodSecurity> = Arc::default();
        Arc::new(AppState {
            reader: Arc::new(CacheReader::start(storage.clone(), marks)),
            storage,
            alloc: ServiceAllocator::new(service_cidr),
            metrics: Arc::new(Metrics::default()),
            server_address,
            security: Security::default(),
            admission: crate::admission::chain::Chain::new(pod_security.clone()),
            pod_security,
            resource_metrics: Default::default(),
            flow_control: Default::default(),
        })
    }

    /// The watch cache of a resource.
    pub fn cacher(&self, def: &ResourceDef) -> ApiResult<&Arc<Cacher>> {
        self.reader.cacher(def)
    }

    /// The watch cache of any served resource, custom resources included (their caches start
    /// on first use).
    pub async fn cacher_for(&self, def: &'static ResourceDef) -> ApiResult<Arc<Cacher>> {
        self.reader.cacher_for(def).await
    }

    /// What authentication reads.
    pub fn authenticator(&self) -> crate::authn::Authenticator<'_> {
        crate::authn::Authenticator {
            reader: &self.reader,
            tokens: self.security.tokens(),
        }
    }

    /// The authorizer chain (Node, RBAC) over this server's caches.
    pub fn authz(&self) -> crate::authorization::chain::Authz<'_> {
        crate::authorization::chain::Authz {
            reader: &self.reader,
            rbac: &self.security.rbac,
        }
    }

    /// Admission's handles, with quota charges written through `writer`.
    pub fn admission_handles<'a>(
        &'a self,
        writer: &'a dyn crate::write::ObjectWriter,
    ) -> crate::admission::Handles<'a> {
        crate::admission::Handles {
            reader: &self.reader,
            writer,
            authz: self.authz(),
        }
    }

    /// Starts the background loops that keep derived state current: the RBAC snapshot, the
    /// ClusterRole aggregation controller and quota usage (`status.used`).
    pub fn start_loops(self: &Arc<Self>) {
        self.security.rbac.start(&self.reader);
        if let Ok(cacher) = self.cacher(&crate::registry::resources::CLUSTERROLES) {
            crate::authorization::rbac::spawn_aggregation(cacher.clone(), self.clone());
        }
        crate::admission::resource_quota::spawn_usage_loop(self.reader.clone(), self.clone());
    }

    /// All watch caches (for compaction notices).
    pub fn caches(&self) -> impl Iterator<Item = &Arc<Cacher>> {
        self.reader.all()
    }
}

/// Security state of a running apiserver: the service-account token authority (set once the
/// PKI is loaded) and the RBAC authorizer.
#[derive(Default)]
pub struct Security {
    tokens: OnceLock<Arc<crate::authn::TokenAuthority>>,
    /// Where component kubeconfigs are issued from: the PKI, the server URL and the data dir.
    pub issuer: OnceLock<(Arc<crate::pki::Pki>, String, std::path::PathBuf)>,
    /// The RBAC authorizer over the apiserver's own watch caches.
    pub rbac: crate::authorization::rbac::Authorizer,
    /// `--kubelet-certificate-authority`: the CA certificates (PEM) that must have signed each
    /// kubelet's serving certificate for the proxy to talk to it; unset, kubelets are not
    /// verified (Kubernetes' default).
    pub kubelet_ca: OnceLock<String>,
}

impl Security {
    /// Installs the token authority (once; later calls are ignored).
    pub fn set_tokens(&self, t: Arc<crate::authn::TokenAuthority>) {
        let _ = self.tokens.set(t);
    }

    /// The token authority, if installed.
    pub fn tokens(&self) -> Option<&Arc<crate::authn::TokenAuthority>> {
        self.tokens.get()
    }
}
