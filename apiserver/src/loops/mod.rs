//! The apiserver's own background work (Kubernetes' post-start hooks and controlplane
//! controllers): the `kubernetes` Service's endpoints, the CRD controllers, APIService
//! registration, bootstrap RBAC and cluster-info. They write through [`crate::write`]'s handle.

pub mod autoregister;
pub mod bootstrap_rbac;
pub mod crd_controller;
pub mod endpoint_reconciler;
