//! The admission chain: the plugins in Kubernetes' order over the handles the write pipeline
//! gives ([`Handles`]). The one place that knows the order.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use super::{
    Operation, default_storage_class, default_toleration_seconds, limit_ranger, node_restriction,
    pod_security, priority, rbac_escalation, resource_quota, runtime_class, service_account,
};
use crate::authorization::chain::Authz;
use crate::cache::reader::CacheReader;
use crate::error::ApiResult;
use crate::registry::ResourceDef;
use crate::write::ObjectWriter;

/// What admission reads and writes through: the handles the write pipeline gives it.
#[derive(Clone, Copy)]
pub struct Handles<'a> {
    /// The read handle on the watch caches (limit ranges, quotas, classes, namespaces).
    pub reader: &'a CacheReader,
    /// Where quota charges are written (the write pipeline that called admission).
    pub writer: &'a dyn ObjectWriter,
    /// The authorizer chain (RBAC escalation checks).
    pub authz: Authz<'a>,
    /// Pod Security admission's configuration and counters.
    pub pod_security: &'a pod_security::PodSecurity,
}

/// Runs every admission plugin on `obj` (mutating it in place). `old` is the stored object on
/// update. With `dry_run` nothing is charged to quotas; quota charges are written through
/// `h.writer`, the handle the write pipeline gives.
///
/// Boxed because admission can write (quota charges) through the write pipeline that calls it.
pub fn admit<'a>(
    h: Handles<'a>,
    def: &'static ResourceDef,
    op: Operation,
    obj: &'a mut Value,
    old: Option<&'a Value>,
    dry_run: bool,
) -> Pin<Box<dyn Future<Output = ApiResult<()>> + Send + 'a>> {
    Box::pin(admit_inner(h, def, op, obj, old, dry_run))
}

async fn admit_inner(
    h: Handles<'_>,
    def: &'static ResourceDef,
    op: Operation,
    obj: &mut Value,
    old: Option<&Value>,
    dry_run: bool,
) -> ApiResult<()> {
    let user = crate::auth::request_user();
    let is_pod = def.group.is_empty() && def.plural == "pods";
    // Mutating.
    if is_pod && op == Operation::Create {
        limit_ranger::default_pod(h.reader, obj).await?;
        service_account::admit_pod(h.reader, obj).await?;
    }
    priority::admit(h.reader, def, op, obj).await?;
    if is_pod && op == Operation::Create {
        default_toleration_seconds::admit_pod(obj);
    }
    if op == Operation::Create {
        default_storage_class::admit(h.reader, def, obj).await?;
    }
    runtime_class::admit(h.reader, def, op, obj).await?;
    // Validating.
    limit_ranger::validate(h.reader, def, op, obj).await?;
    if let Some(u) = &user {
        node_restriction::admit(u, def, op, obj, old).await?;
        rbac_escalation::admit(h.authz, u, def, obj).await?;
    }
    pod_security::admit(h.reader, h.pod_security, def, op, obj, old).await?;
    runtime_class::validate(h.reader, def, op, obj).await?;
    if op == Operation::Create
        && def.group == "certificates.k8s.io"
        && def.plural == "certificatesigningrequests"
    {
        crate::registry::resources::certificates::subject_restriction(obj).map_err(|why| {
            crate::authorization::forbidden_error(
                def.group,
                def.plural,
                crate::registry::fields::name(obj),
                &why,
            )
        })?;
    }
    resource_quota::admit(h.reader, h.writer, def, op, obj, old, dry_run).await?;
    Ok(())
}
