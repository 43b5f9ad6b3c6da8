//! The apiserver's shared state: the handles a running apiserver is made of — storage, the
//! watch caches, the Service allocators, the authenticators and authorizer, admission's
//! configuration, metrics and flow control. Built once by the server assembly (`server.rs`),
//! which routes requests; the modules that serve them receive it.

use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::alloc::ServiceAllocator;
use crate::cache_reader::CacheReader;
use crate::cacher::Cacher;
use crate::error::ApiResult;
use crate::metrics::Metrics;
use crate::registry::{self, ResourceDef};
use crate::storage::Storage;

/// Shared state of a running apiserver.
pub struct AppState {
    /// The storage backend.
    pub storage: Arc<dyn Storage>,
    /// The read handle on the watch caches (and storage for live lookups).
    pub reader: CacheReader,
    /// Service IP / node port allocator.
    pub alloc: ServiceAllocator,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Address advertised in `/api` discovery.
    pub server_address: String,
    /// Authentication and authorization state (token authority, RBAC authorizer).
    pub security: crate::auth::Security,
    /// Pod Security admission: exemptions (none by default) and its metrics.
    pub pod_security: crate::admission::pod_security::PodSecurity,
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
        let state = Arc::new(AppState {
            reader: CacheReader::start(storage.clone(), marks),
            storage,
            alloc: ServiceAllocator::new(service_cidr),
            metrics: Arc::new(Metrics::default()),
            server_address,
            security: crate::auth::Security::default(),
            pod_security: Default::default(),
            resource_metrics: Default::default(),
            flow_control: Default::default(),
        });
        registry::custom::spawn(&state);
        state
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

    /// All watch caches (for compaction notices).
    pub fn caches(&self) -> impl Iterator<Item = &Arc<Cacher>> {
        self.reader.all()
    }
}
