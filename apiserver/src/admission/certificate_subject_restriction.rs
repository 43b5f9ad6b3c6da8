//! The CertificateSubjectRestriction plugin: no CertificateSigningRequest for the
//! `kubernetes.io/kube-apiserver-client` signer may ask for `system:masters`.

use async_trait::async_trait;
use serde_json::Value;

use super::{Admit, Handles, Operation, Request};
use crate::error::ApiResult;

/// The plugin.
pub struct CertificateSubjectRestriction;

#[async_trait]
impl Admit for CertificateSubjectRestriction {
    fn name(&self) -> &'static str {
        "CertificateSubjectRestriction"
    }

    async fn validate(&self, _h: Handles<'_>, r: &Request<'_>, obj: &Value) -> ApiResult<()> {
        if r.op != Operation::Create
            || r.def.group != "certificates.k8s.io"
            || r.def.plural != "certificatesigningrequests"
        {
            return Ok(());
        }
        crate::registry::resources::certificates::subject_restriction(obj).map_err(|why| {
            crate::authorization::forbidden_error(
                r.def.group,
                r.def.plural,
                crate::registry::fields::name(obj),
                &why,
            )
        })
    }
}
