//! CertificateSigningRequest checks that need the authorizer: who may approve a request or
//! sign it with a given signer (Kubernetes' `IsAuthorizedForSignerName`), and the status update
//! strategy that enforces it.

use serde_json::Value;

use crate::error::ApiResult;
use crate::registry::{ResourceDef, fields};

/// A CertificateSigningRequest's `/status` write (PUT or PATCH), as Kubernetes' status strategy
/// and CertificateSigning admission: Approved/Denied conditions stay as stored (only
/// `/approval` changes them), and issuing a certificate needs `sign` on the signer.
pub async fn csr_status_update(
    authz: crate::authorization::chain::Authz<'_>,
    def: &ResourceDef,
    name: &str,
    old: &Value,
    new: &mut Value,
) -> ApiResult<()> {
    crate::registry::resources::certificates::preserve_approval_conditions(old, new);
    let cert = |o: &Value| fields::str_at(o, &["status", "certificate"]).map(str::to_string);
    let signer = fields::str_at(old, &["spec", "signerName"]).unwrap_or_default();
    if cert(old) != cert(new)
        && let Some(user) = crate::auth::request_user()
        && !may_use_signer(authz, &user, "sign", signer).await?
    {
        return Err(crate::authorization::forbidden_error(
            def.group,
            def.plural,
            name,
            &format!("user not permitted to sign requests with signerName {signer:?}"),
        ));
    }
    Ok(())
}

/// Kubernetes' `IsAuthorizedForSignerName`: `verb` on `certificates.k8s.io` `signers` named
/// the signer, or its domain wildcard `<domain>/*`.
pub async fn may_use_signer(
    authz: crate::authorization::chain::Authz<'_>,
    user: &crate::auth::UserInfo,
    verb: &str,
    signer: &str,
) -> ApiResult<bool> {
    let mut names = vec![signer.to_string()];
    if let Some((domain, _)) = signer.split_once('/') {
        names.push(format!("{domain}/*"));
    }
    for n in names {
        let a = crate::authorization::Attributes::resource(
            user,
            verb,
            "certificates.k8s.io",
            "signers",
            "",
            "",
            &n,
        );
        if matches!(
            authz.authorize(&a).await?,
            crate::authorization::Decision::Allow(_)
        ) {
            return Ok(true);
        }
    }
    Ok(false)
}
