//! The CSR approving controller (Kubernetes' `pkg/controller/certificates/approver`,
//! `sarApprover`): approves kubelet client certificate requests (signer
//! `kubernetes.io/kube-apiserver-client-kubelet`, subject `system:node:<name>` in
//! `system:nodes`, usages digital signature + client auth, key encipherment optional) when a
//! SubjectAccessReview says the requester may `create` `certificatesigningrequests/selfnodeclient`
//! (a node renewing its own certificate) or `certificatesigningrequests/nodeclient` (a bootstrap
//! token asking for a node's first one). Everything else is left to a human (`kubectl
//! certificate approve|deny`).
//!
//! Opt-in (`--approve-kubelet-serving`; Kubernetes itself approves no serving certificates, the
//! kubelet-csr-approver add-on does): kubelet serving requests (`kubernetes.io/kubelet-serving`)
//! that a node makes for itself and that name only the node's own name and the addresses of its
//! Node object.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::Error;
use crate::csrsigning::{
    KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER, parse_request, validate_kubelet_client,
    validate_kubelet_serving,
};
use crate::util;

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

/// Message of an approval of a node's serving certificate.
pub const SERVING_MESSAGE: &str = "Auto approving kubelet serving certificate: requested by the node for its own name and addresses.";

/// The node a kubelet serving request is for, when it is one this controller may judge: the
/// requester is the node itself (`system:node:<name>` in `system:nodes`, the subject's name).
pub fn serving_request_node(csr: &CertificateSigningRequest) -> Option<String> {
    if csr.spec.signer_name != KUBELET_SERVING_SIGNER {
        return None;
    }
    let (_, info) = parse_request(&csr.spec.request.0).ok()?;
    let usages = csr.spec.usages.clone().unwrap_or_default();
    validate_kubelet_serving(&info, &usages).ok()?;
    let in_nodes = csr
        .spec
        .groups
        .as_ref()
        .is_some_and(|g| g.iter().any(|g| g == "system:nodes"));
    if !in_nodes || csr.spec.username.as_deref() != Some(info.common_name.as_str()) {
        return None;
    }
    info.common_name
        .strip_prefix("system:node:")
        .map(String::from)
}

/// Whether every subjectAltName of a serving request is the node's name or one of its Node
/// object's addresses (Hostname/InternalDNS/ExternalDNS for names, InternalIP/ExternalIP for
/// addresses); the error says which one is not.
pub fn serving_names_match(csr: &CertificateSigningRequest, node: &Node) -> Result<(), String> {
    let (_, info) = parse_request(&csr.spec.request.0)?;
    let name = node.metadata.name.clone().unwrap_or_default();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    let dns_ok = |d: &str| {
        d == name
            || addresses.iter().any(|a| {
                matches!(a.type_.as_str(), "Hostname" | "InternalDNS" | "ExternalDNS")
                    && a.address == d
            })
    };
    let ip_ok = |ip: &std::net::IpAddr| {
        addresses.iter().any(|a| {
            matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")
                && a.address.parse::<std::net::IpAddr>().ok() == Some(*ip)
        })
    };
    if let Some(d) = info.dns_names.iter().find(|d| !dns_ok(d)) {
        return Err(format!("DNS name {d:?} is not an address of node {name:?}"));
    }
    if let Some(ip) = info.ip_addresses.iter().find(|ip| !ip_ok(ip)) {
        return Err(format!(
            "IP address {ip} is not an address of node {name:?}"
        ));
    }
    Ok(())
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
    approve_kubelet_serving: bool,
}

/// Runs the approving controller until its watch ends; with `approve_kubelet_serving` it also
/// approves nodes' own serving certificate requests.
pub async fn run(client: Client, approve_kubelet_serving: bool) -> Result<(), Error> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        approve_kubelet_serving,
    });
    util::run_controller(
        Controller::new(
            Api::<CertificateSigningRequest>::all(client),
            watcher::Config::default(),
        ),
        reconcile,
        ctx,
        "csrapproving",
        Duration::from_secs(5),
    )
    .await
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if decided(&csr) {
        return Ok(Action::await_change());
    }
    if ctx.approve_kubelet_serving
        && let Some(node_name) = serving_request_node(&csr)
    {
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let Some(node) = nodes.get_opt(&node_name).await? else {
            // The kubelet registers its Node before it asks; look again shortly.
            return Ok(Action::requeue(Duration::from_secs(10)));
        };
        return match serving_names_match(&csr, &node) {
            Ok(()) => approve(&ctx, &csr, SERVING_MESSAGE).await,
            Err(why) => {
                tracing::info!(csr = %csr.name_any(), %why, "not approving kubelet serving request");
                Ok(Action::await_change())
            }
        };
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
        return approve(&ctx, &csr, message).await;
    }
    // Kubernetes' IgnorableError: recognized, but the requester may not; a human decides.
    tracing::debug!(
        csr = %csr.name_any(),
        "recognized csr as {:?} but subject access review was not approved",
        tried.iter().map(|t| t.0).collect::<Vec<_>>()
    );
    Ok(Action::await_change())
}

/// Adds the `Approved` condition (reason `AutoApproved`) through `/approval`.
async fn approve(
    ctx: &Ctx,
    csr: &CertificateSigningRequest,
    message: &str,
) -> Result<Action, Error> {
    let mut new = csr.clone();
    new.status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some("AutoApproved".into()),
            message: Some(message.into()),
            last_update_time: Some(crate::util::now()),
            ..Default::default()
        });
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    match api
        .replace_subresource("approval", &csr.name_any(), &PostParams::default(), &new)
        .await
    {
        Ok(_) => {
            tracing::info!(csr = %csr.name_any(), requester = ?csr.spec.username, "auto-approved");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
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

    fn serving(cn: &str, sans: &[&str], username: &str) -> CertificateSigningRequest {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: ByteString(pem.into_bytes()),
                signer_name: KUBELET_SERVING_SIGNER.into(),
                usages: Some(vec!["digital signature".into(), "server auth".into()]),
                username: Some(username.into()),
                groups: Some(vec!["system:nodes".into(), "system:authenticated".into()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn serving_requests_name_only_the_nodes_addresses() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "Hostname", "address": "n1.example"},
            ]},
        }))
        .unwrap();
        let ok = serving(
            "system:node:n1",
            &["n1", "n1.example", "10.0.0.5"],
            "system:node:n1",
        );
        assert_eq!(serving_request_node(&ok).as_deref(), Some("n1"));
        assert_eq!(serving_names_match(&ok, &node), Ok(()));
        let other_ip = serving("system:node:n1", &["n1", "10.0.0.6"], "system:node:n1");
        assert_eq!(
            serving_names_match(&other_ip, &node).unwrap_err(),
            "IP address 10.0.0.6 is not an address of node \"n1\""
        );
        let other_name = serving("system:node:n1", &["apiserver.example"], "system:node:n1");
        assert!(serving_names_match(&other_name, &node).is_err());
        // Only the node itself asks for its serving certificate.
        let by_other = serving("system:node:n1", &["n1"], "system:node:n2");
        assert_eq!(serving_request_node(&by_other), None);
        let bootstrap = serving("system:node:n1", &["n1"], "system:bootstrap:abcdef");
        assert_eq!(serving_request_node(&bootstrap), None);
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
