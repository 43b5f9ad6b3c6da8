//! Admission: the plugins Kubernetes runs between decoding and storage, in Kubernetes' order.
//! NamespaceLifecycle is `handlers::admit_namespace`; the rest run from [`chain::admit`]:
//! mutating LimitRanger, ServiceAccount, Priority, DefaultTolerationSeconds,
//! DefaultStorageClass, StorageObjectInUseProtection and RuntimeClass, then validating
//! LimitRanger, NodeRestriction, PodSecurity, RuntimeClass, CertificateSubjectRestriction, RBAC
//! escalation prevention and ResourceQuota.
//! A rejection returns before anything is written.

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
