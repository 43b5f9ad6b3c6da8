//! The authorizer chain, as kube-apiserver's union authorizer with
//! `--authorization-mode=Node,RBAC`: `system:masters` is allowed, then the [`node`] authorizer
//! decides a kubelet's requests for objects the node graph guards, then [`super::rbac`] decides the rest.
//! The one place that knows the order; every request, review and admission check asks here.

use super::rbac::Authorizer;
use super::{Attributes, Decision, node};
use crate::auth::MASTERS;
use crate::cache::reader::CacheReader;
use crate::error::ApiResult;

/// The chain's handles: the watch caches (the node graph's objects) and RBAC's authorizer.
#[derive(Clone, Copy)]
pub struct Authz<'a> {
    /// The read handle on the watch caches.
    pub reader: &'a CacheReader,
    /// The RBAC authorizer.
    pub rbac: &'a Authorizer,
}

impl Authz<'_> {
    /// Decides a request: `system:masters` is always allowed, a kubelet's request for a
    /// guarded object is the Node authorizer's, otherwise some bound RBAC rule must allow it.
    pub async fn authorize(&self, a: &Attributes) -> ApiResult<Decision> {
        if a.user.in_group(MASTERS) {
            return Ok(Decision::Allow(String::new()));
        }
        if let Some(d) = node::decide(self.reader, a).await? {
            return Ok(match d {
                Ok(reason) => Decision::Allow(reason),
                Err(_) => Decision::Deny,
            });
        }
        self.rbac.authorize(self.reader, a).await
    }

    /// Authorizes or returns the Kubernetes 403 for `a` (with the Node authorizer's reason
    /// when it denied a kubelet), then confines kubelets' pod deletes and evictions to their
    /// node.
    pub async fn require(&self, a: &Attributes) -> ApiResult<()> {
        if !a.user.in_group(MASTERS)
            && let Some(Err(reason)) = node::decide(self.reader, a).await?
        {
            return Err(node::forbidden(a, &reason));
        }
        match self.authorize(a).await? {
            Decision::Allow(_) => node::restrict(self.reader, a).await,
            Decision::Deny => Err(a.forbidden()),
        }
    }
}
