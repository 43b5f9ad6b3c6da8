//! The write handle for code that writes objects on the apiserver's own behalf — admission
//! (quota charges) and the background loops (quota usage, ClusterRole aggregation, the CRD
//! controllers, the `kubernetes` Service's endpoints, bootstrap RBAC and cluster-info): read an
//! object, create or update it through the write pipeline (defaulting, validation, admission,
//! the storage precondition). The pipeline (`handlers`) implements [`ObjectWriter`] and hands
//! it out, so these callers never import the HTTP handlers that call them.

pub mod managed;
pub mod patch;
pub mod strategic;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::ApiResult;
use crate::registry::ResourceDef;
pub use crate::registry::UpdateScope;
use crate::storage::Revision;

/// Reads and updates objects as the apiserver itself (no field manager, never a dry run).
#[async_trait]
pub trait ObjectWriter: Send + Sync {
    /// The stored object with its `resourceVersion` set; 404 when absent.
    async fn get_stored(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, Revision)>;

    /// Creates `obj` as a POST would (defaulting, validation, admission); 409 when it exists.
    /// Returns the stored object.
    async fn create_object(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        obj: Value,
    ) -> ApiResult<Value>;

    /// Updates `name` from `old` (read at `old_rv`) to `new` within `scope`, as a PUT would;
    /// 409 when the object changed since `old_rv`. Returns the stored object.
    #[allow(clippy::too_many_arguments)]
    async fn update_object(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        name: &str,
        old: Value,
        old_rv: Revision,
        new: Value,
        scope: UpdateScope,
    ) -> ApiResult<Value>;

    /// Deletes `name` as a DELETE with `propagationPolicy: Background` would (finalizers and
    /// graceful deletion apply).
    async fn delete_in_background(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<()>;
}
