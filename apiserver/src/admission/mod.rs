//! Admission: the plugins Kubernetes runs between decoding and storage, in Kubernetes' order.
//! NamespaceLifecycle is `handlers::admit_namespace`; the rest run from [`admit`]:
//! mutating LimitRanger, ServiceAccount, Priority, DefaultTolerationSeconds,
//! DefaultStorageClass, StorageObjectInUseProtection and RuntimeClass, then validating
//! LimitRanger, NodeRestriction, PodSecurity, RuntimeClass, CertificateSubjectRestriction, RBAC
//! escalation prevention and ResourceQuota.
//! A rejection returns before anything is written.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use crate::error::ApiResult;
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::writer::ObjectWriter;

pub mod default_storage_class;
pub mod default_toleration_seconds;
pub mod limit_ranger;
pub mod node_restriction;
pub mod pod_security;
pub mod priority;
pub mod quantity;
pub mod rbac_escalation;
pub mod resource_quota;
pub mod runtime_class;
pub mod service_account;

/// The write being admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// POST.
    Create,
    /// PUT / PATCH (including subresources).
    Update,
}

/// Runs every admission plugin on `obj` (mutating it in place). `old` is the stored object on
/// update. With `dry_run` nothing is charged to quotas; quota charges are written through
/// `writer`, the handle the write pipeline gives.
///
/// Boxed because admission can write (quota charges) through the write pipeline that calls it.
pub fn admit<'a>(
    state: &'a AppState,
    writer: &'a dyn ObjectWriter,
    def: &'static ResourceDef,
    op: Operation,
    obj: &'a mut Value,
    old: Option<&'a Value>,
    dry_run: bool,
) -> Pin<Box<dyn Future<Output = ApiResult<()>> + Send + 'a>> {
    Box::pin(admit_inner(state, writer, def, op, obj, old, dry_run))
}

async fn admit_inner(
    state: &AppState,
    writer: &dyn ObjectWriter,
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
        limit_ranger::default_pod(state, obj).await?;
        service_account::admit_pod(&state.reader, obj).await?;
    }
    priority::admit(state, def, op, obj).await?;
    if is_pod && op == Operation::Create {
        default_toleration_seconds::admit_pod(obj);
    }
    if op == Operation::Create {
        default_storage_class::admit(state, def, obj).await?;
    }
    runtime_class::admit(state, def, op, obj).await?;
    // Validating.
    limit_ranger::validate(state, def, op, obj).await?;
    if let Some(u) = &user {
        node_restriction::admit(state, u, def, op, obj, old).await?;
        rbac_escalation::admit(state, u, def, obj).await?;
    }
    pod_security::admit(state, def, op, obj, old).await?;
    runtime_class::validate(state, def, op, obj).await?;
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
    resource_quota::admit(state, writer, def, op, obj, old, dry_run).await?;
    Ok(())
}
