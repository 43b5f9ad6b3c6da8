//! The CSR approving controller (Kubernetes' `pkg/controller/certificates/approver`,
//! `sarApprover`): approves kubelet client certificate requests (signer
//! `kubernetes.io/kube-apiserver-client-kubelet`, subject `system:node:<name>` in
//! `system:nodes`, usages digital signature + client auth, key encipherment optional) when a
//! SubjectAccessReview says the requester may `create` `certificatesigningrequests/selfnodeclient`
//! (a node renewing its own certificate) or `certificatesigningrequests/nodeclient` (a bootstrap
//! token asking for a node's first one). Everything else is left to a human (`kubectl
//! certificate approve|deny`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::Error;
use crate::csrsigning::{KUBELET_CLIENT_SIGNER, parse_request, validate_kubelet_client};

/// Message of an approval for a node's first client certificate.
pub const NODE_CLIENT_MESSAGE: &str =
    "Auto approving kubelet client certificate after SubjectAccessReview.";
/// Message of an approval for a node renewing its own client certificate.
pub const SELF_NODE_CLIENT_MESSAGE: &str =
    "Auto approving self kubelet client certificate after SubjectAccessReview.";

/// The permissions to check for a request, in Kubernetes' order: `(subresource, message)`.
/// Empty when the request is not a kubelet client certificate request.
pub fn recognize(csr: &CertificateSigningRequest) -> Vec<(&'static str, &'static str)> {
    if csr.spec.signer_name != KUBELET_CLIENT_SIGNER {
        return Vec::new();
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let Ok((_, info)) = parse_request(&csr.spec.request.0) else {
        return Vec::new();
    };
    if validate_kubelet_client(&info, &usages).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if csr.spec.username.as_deref() == Some(info.common_name.as_str()) {
        out.push(("selfnodeclient", SELF_NODE_CLIENT_MESSAGE));
    }
    out.push(("nodeclient", NODE_CLIENT_MESSAGE));
    out
}

fn decided(csr: &CertificateSigningRequest) -> bool {
    let status = csr.status.as_ref();
    status
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
        || status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Approved" || c.type_ == "Denied")
            })
}

/// The SubjectAccessReview asking whether the requester may create the subresource.
pub fn review(csr: &CertificateSigningRequest, subresource: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

struct Ctx {
    client: Client,
}

/// Runs the approving controller until its watch ends.
pub async fn run(client: Client) -> Result<(), Error> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    Controller::new(
        Api::<CertificateSigningRequest>::all(client),
        watcher::Config::default(),
    )
    .run(
        reconcile,
        |_, err: &Error, _| {
            tracing::warn!(error = %err, "csrapproving sync failed; retrying");
            Action::requeue(Duration::from_secs(5))
        },
        ctx,
    )
    .for_each(|_| futures::future::ready(()))
    .await;
    Err(Error::Stopped("csrapproving"))
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if decided(&csr) {
        return Ok(Action::await_change());
    }
    let tried = recognize(&csr);
    if tried.is_empty() {
        return Ok(Action::await_change());
    }
    let sars: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    for (subresource, message) in &tried {
        let answer = sars
            .create(&PostParams::default(), &review(&csr, subresource))
            .await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            continue;
        }
        let mut new = (*csr).clone();
        new.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some("AutoApproved".into()),
                message: Some((*message).into()),
                last_update_time: Some(crate::util::now()),
                ..Default::default()
            });
        let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
        return match api
            .replace_subresource("approval", &csr.name_any(), &PostParams::default(), &new)
            .await
        {
            Ok(_) => {
                tracing::info!(csr = %csr.name_any(), requester = ?csr.spec.username, "auto-approved");
                Ok(Action::await_change())
            }
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                Ok(Action::await_change())
            }
            Err(e) => Err(e.into()),
        };
    }
    // Kubernetes' IgnorableError: recognized, but the requester may not; a human decides.
    tracing::debug!(
        csr = %csr.name_any(),
        "recognized csr as {:?} but subject access review was not approved",
        tried.iter().map(|t| t.0).collect::<Vec<_>>()
    );
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec;

    fn request(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    fn csr(cn: &str, username: &str, usages: &[&str]) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: ByteString(request(cn)),
                signer_name: KUBELET_CLIENT_SIGNER.into(),
                usages: Some(usages.iter().map(|u| u.to_string()).collect()),
                username: Some(username.into()),
                groups: Some(vec!["system:bootstrappers".into()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn recognizes_node_client_requests() {
        let c = csr(
            "system:node:n1",
            "system:bootstrap:abcdef",
            &["digital signature", "client auth"],
        );
        assert_eq!(recognize(&c), vec![("nodeclient", NODE_CLIENT_MESSAGE)]);
        let c = csr(
            "system:node:n1",
            "system:node:n1",
            &["key encipherment", "digital signature", "client auth"],
        );
        assert_eq!(
            recognize(&c).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec!["selfnodeclient", "nodeclient"]
        );
        // Server auth, wrong name or wrong signer: not ours to approve.
        let c = csr(
            "system:node:n1",
            "system:bootstrap:abcdef",
            &["digital signature", "server auth"],
        );
        assert!(recognize(&c).is_empty());
        let c = csr(
            "admin",
            "system:bootstrap:abcdef",
            &["digital signature", "client auth"],
        );
        assert!(recognize(&c).is_empty());
        let mut c = csr(
            "system:node:n1",
            "system:bootstrap:abcdef",
            &["digital signature", "client auth"],
        );
        c.spec.signer_name = "kubernetes.io/kube-apiserver-client".into();
        assert!(recognize(&c).is_empty());
    }

    #[test]
    fn review_asks_for_the_requester() {
        let c = csr(
            "system:node:n1",
            "system:bootstrap:abcdef",
            &["digital signature", "client auth"],
        );
        let r = review(&c, "nodeclient");
        assert_eq!(r.spec.user.as_deref(), Some("system:bootstrap:abcdef"));
        assert_eq!(r.spec.groups, Some(vec!["system:bootstrappers".into()]));
        let a = r.spec.resource_attributes.unwrap();
        assert_eq!(a.subresource.as_deref(), Some("nodeclient"));
        assert_eq!(a.verb.as_deref(), Some("create"));
    }
}
