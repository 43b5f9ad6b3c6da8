//! The read handle on the watch caches: one [`Cacher`] per resource (get/list/watch), single
//! objects from the cache, and the live lookup in storage for an object the cache has not seen
//! yet (created a moment ago), as Kubernetes' live-lookup fallback does. Modules that only read
//! objects (the Node authorizer, token authentication, ServiceAccount and PodSecurity
//! admission) take this handle instead of the whole server state.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::cache::cacher::Cacher;
use crate::cache::hub::CacheHub;
use crate::error::{ApiError, ApiResult};
use crate::registry::{self, ResourceDef, fields, object_key};
use crate::storage::{Revision, Storage};

/// Reads from the watch caches, falling back to storage where a read must be current.
pub struct CacheReader {
    storage: Arc<dyn Storage>,
    caches: HashMap<(&'static str, &'static str, &'static str), Arc<Cacher>>,
    hub: Arc<CacheHub>,
}

impl CacheReader {
    /// Starts one watch cache per built-in resource over `storage`.
    pub fn start(storage: Arc<dyn Storage>, marks: Arc<crate::storage::marks::WriteMarks>) -> Self {
        let hub = CacheHub::start(registry::catalog::all(), storage.clone(), marks);
        let mut caches = HashMap::new();
        for c in hub.caches() {
            caches.insert((c.def().group, c.def().version, c.def().plural), c.clone());
        }
        CacheReader {
            storage,
            caches,
            hub,
        }
    }

    /// The watch cache of a resource.
    pub fn cacher(&self, def: &ResourceDef) -> ApiResult<&Arc<Cacher>> {
        self.caches
            .get(&(def.group, def.version, def.plural))
            .ok_or_else(|| {
                ApiError::internal(format!("no watch cache for {}", def.group_resource()))
            })
    }

    /// The watch cache of any served resource, custom resources included (their caches start
    /// on first use).
    pub async fn cacher_for(&self, def: &'static ResourceDef) -> ApiResult<Arc<Cacher>> {
        if def.custom.is_none() {
            return self.cacher(def).cloned();
        }
        self.hub
            .add(def)
            .await
            .map_err(|e| ApiError::internal(format!("watch cache: {e}")))
    }

    /// All watch caches of built-in resources.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Cacher>> {
        self.caches.values()
    }

    /// An object from the watch cache, if present.
    pub async fn cached(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        let key = object_key(def, Some(namespace), name);
        let cacher = self.cacher(def)?;
        let list = cacher.list(&key, None, 0, &|o| o.key == key).await;
        Ok(list
            .items
            .first()
            .and_then(|o| serde_json::from_slice(&o.raw).ok()))
    }

    /// An object from the watch cache, or from storage when the cache does not have it (yet):
    /// an object created a moment ago is found.
    pub async fn cached_or_stored(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        if let Some(o) = self.cached(def, namespace, name).await? {
            return Ok(Some(o));
        }
        let ns = def.namespaced.then_some(namespace);
        match self.stored(def, ns, name).await {
            Ok((o, _)) => Ok(Some(o)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The object as the watch cache holds it, with its `resourceVersion`, or from storage when
    /// the cache does not have it (yet): the starting point of a guarded update, as
    /// kube-apiserver's cacher hands its copy to `GuaranteedUpdate`. A copy that lags storage
    /// makes the write's resourceVersion precondition fail; the caller then reads
    /// [`Self::stored`] and tries again.
    pub async fn cached_then_stored(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, Revision)> {
        let key = object_key(def, ns, name);
        if let Some(o) = self.cacher(def)?.get(&key).await
            && let Ok(obj) = serde_json::from_slice(&o.raw)
        {
            return Ok((obj, o.rv));
        }
        self.stored(def, ns, name).await
    }

    /// The current object from storage with its `resourceVersion` set; 404 when absent.
    pub async fn stored(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, Revision)> {
        let key = object_key(def, ns, name);
        let kv = self
            .storage
            .get(&key)
            .await
            .map_err(|e| ApiError::from_storage(e, def, name))?
            .ok_or_else(|| ApiError::not_found(def, name))?;
        let obj: Value = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("corrupt object {key}: {e}")))?;
        let mut obj = def.from_storage(obj);
        fields::set_rv(&mut obj, kv.mod_revision);
        Ok((obj, kv.mod_revision))
    }
}
