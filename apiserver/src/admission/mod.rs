//! Admission: the plugins Kubernetes runs between decoding and storage, in Kubernetes' order.
//! NamespaceLifecycle is `handlers::admit_namespace`; the rest are plugins ([`Admit`]) that
//! [`chain::Chain`] runs in order:
//! mutating LimitRanger, ServiceAccount, Priority, DefaultTolerationSeconds,
//! DefaultStorageClass, StorageObjectInUseProtection and RuntimeClass, then validating
//! LimitRanger, NodeRestriction, PodSecurity, RuntimeClass, CertificateSubjectRestriction, RBAC
//! escalation prevention and ResourceQuota.
//! A rejection returns before anything is written.

use async_trait::async_trait;
use serde_json::Value;

use crate::auth::UserInfo;
use crate::authorization::chain::Authz;
use crate::cache::reader::CacheReader;
use crate::error::ApiResult;
use crate::registry::ResourceDef;
use crate::write::ObjectWriter;

pub mod certificate_subject_restriction;
pub mod chain;
pub mod default_storage_class;
pub mod default_toleration_seconds;
pub mod limit_ranger;
pub mod node_restriction;
pub mod pod_security;
pub mod priority;
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

/// The write being admitted, as admission plugins see it (Kubernetes' `admission.Attributes`).
pub struct Request<'a> {
    /// The resource written.
    pub def: &'static ResourceDef,
    /// Create or update.
    pub op: Operation,
    /// The stored object, on update.
    pub old: Option<&'a Value>,
    /// The requesting user (None for the apiserver's own writes).
    pub user: Option<&'a UserInfo>,
    /// `dryRun=All`: nothing may be charged or written.
    pub dry_run: bool,
}

impl Request<'_> {
    /// Whether this is a core/v1 Pod.
    pub fn is_pod(&self) -> bool {
        self.def.group.is_empty() && self.def.plural == "pods"
    }

    /// Whether this is a create of a core/v1 Pod.
    pub fn is_pod_create(&self) -> bool {
        self.is_pod() && self.op == Operation::Create
    }
}

/// What admission reads and writes through: the handles the write pipeline gives it.
#[derive(Clone, Copy)]
pub struct Handles<'a> {
    /// The read handle on the watch caches (limit ranges, quotas, classes, namespaces).
    pub reader: &'a CacheReader,
    /// Where quota charges are written (the write pipeline that called admission).
    pub writer: &'a dyn ObjectWriter,
    /// The authorizer chain (RBAC escalation checks).
    pub authz: Authz<'a>,
}

/// An admission plugin (Kubernetes' `admission.MutationInterface` and `ValidationInterface`):
/// every plugin's [`Admit::admit`] runs first, in the chain's order, then every plugin's
/// [`Admit::validate`]. A rejection returns the error the client sees.
#[async_trait]
pub trait Admit: Send + Sync {
    /// The plugin's Kubernetes name, e.g. `LimitRanger`.
    fn name(&self) -> &'static str;

    /// The mutating phase: may change `obj`.
    async fn admit(&self, _h: Handles<'_>, _r: &Request<'_>, _obj: &mut Value) -> ApiResult<()> {
        Ok(())
    }

    /// The validating phase: accepts or rejects the final `obj`.
    async fn validate(&self, _h: Handles<'_>, _r: &Request<'_>, _obj: &Value) -> ApiResult<()> {
        Ok(())
    }
}
