//! The admission chain: the plugins in Kubernetes' order, built once with their configuration,
//! run by the write pipeline over the handles it gives ([`Handles`]). The one place that knows
//! the order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use super::certificate_subject_restriction::CertificateSubjectRestriction;
use super::default_storage_class::DefaultStorageClass;
use super::default_toleration_seconds::DefaultTolerationSeconds;
use super::limit_ranger::LimitRanger;
use super::node_restriction::NodeRestriction;
use super::pod_security::{PodSecurity, PodSecurityAdmission};
use super::priority::Priority;
use super::rbac_escalation::RbacEscalation;
use super::resource_quota::ResourceQuota;
use super::runtime_class::RuntimeClass;
use super::service_account::ServiceAccount;
use super::{Admit, Handles, Operation, Request};
use crate::error::ApiResult;
use crate::registry::ResourceDef;

/// The enabled plugins, in order: mutating runs LimitRanger, ServiceAccount, Priority,
/// DefaultTolerationSeconds, DefaultStorageClass, RuntimeClass; validating runs LimitRanger,
/// NodeRestriction, RBAC escalation prevention, PodSecurity, RuntimeClass,
/// CertificateSubjectRestriction, ResourceQuota (last, so only admitted writes are charged).
pub struct Chain {
    plugins: Vec<Box<dyn Admit>>,
}

impl Chain {
    /// The default plugins; PodSecurity with `pod_security`'s exemptions and counters.
    pub fn new(pod_security: Arc<PodSecurity>) -> Chain {
        Chain {
            plugins: vec![
                Box::new(LimitRanger),
                Box::new(ServiceAccount),
                Box::new(Priority),
                Box::new(DefaultTolerationSeconds),
                Box::new(DefaultStorageClass),
                Box::new(NodeRestriction),
                Box::new(RbacEscalation),
                Box::new(PodSecurityAdmission(pod_security)),
                Box::new(RuntimeClass),
                Box::new(CertificateSubjectRestriction),
                Box::new(ResourceQuota),
            ],
        }
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Runs every plugin's mutating phase on `obj` (changing it in place), then every
    /// validating phase. `old` is the stored object on update. With `dry_run` nothing is
    /// charged to quotas; quota charges are written through `h.writer`, the handle the write
    /// pipeline gives.
    ///
    /// Boxed because admission can write (quota charges) through the write pipeline that calls
    /// it.
    pub fn admit<'a>(
        &'a self,
        h: Handles<'a>,
        def: &'static ResourceDef,
        op: Operation,
        obj: &'a mut Value,
        old: Option<&'a Value>,
        dry_run: bool,
    ) -> Pin<Box<dyn Future<Output = ApiResult<()>> + Send + 'a>> {
        Box::pin(async move {
            let user = crate::auth::request_user();
            let r = Request {
                def,
                op,
                old,
                user: user.as_ref(),
                dry_run,
            };
            for p in &self.plugins {
                p.admit(h, &r, obj).await?;
            }
            for p in &self.plugins {
                p.validate(h, &r, obj).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_run_in_kubernetes_order() {
        assert_eq!(
            Chain::new(Arc::default()).names(),
            [
                "LimitRanger",
                "ServiceAccount",
                "Priority",
                "DefaultTolerationSeconds",
                "DefaultStorageClass",
                "NodeRestriction",
                "RBACEscalation",
                "PodSecurity",
                "RuntimeClass",
                "CertificateSubjectRestriction",
                "ResourceQuota"
            ]
        );
    }
}
