//! The CSR signing controller (Kubernetes' `pkg/controller/certificates/signer`): issues
//! certificates from the cluster CA for approved CertificateSigningRequests of the built-in
//! signers `kubernetes.io/kube-apiserver-client-kubelet`, `kubernetes.io/kube-apiserver-client`
//! and `kubernetes.io/kubelet-serving`. A request its signer refuses gets a `Failed` condition
//! (reason `SignerValidationFailure`). The certificate keeps the request's subject, names and
//! key, carries the usages of `spec.usages`, and is valid for `spec.expirationSeconds` (at most
//! `--cluster-signing-duration`, never past the CA), backdated five minutes for clock skew.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::Error;
use crate::util;

/// Signer of kubelet client certificates (`system:node:<name>` in `system:nodes`).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Signer of any client certificate the apiserver accepts.
pub const API_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// Signer of kubelet serving certificates.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// kube-controller-manager's default `--cluster-signing-duration` (8760h).
pub const DEFAULT_SIGNING_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Issued certificates start this much before now.
const BACKDATE: i64 = 5 * 60;

/// What the signer reads from a PKCS#10 request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// Subject common name.
    pub common_name: String,
    /// Subject organizations.
    pub organizations: Vec<String>,
    /// DNS subjectAltNames.
    pub dns_names: Vec<String>,
    /// IP subjectAltNames.
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// Email subjectAltNames.
    pub emails: usize,
    /// URI subjectAltNames.
    pub uris: usize,
}

/// Parses a PEM `CERTIFICATE REQUEST` (checking its signature); returns its DER and what the
/// signers look at.
pub fn parse_request(pem: &[u8]) -> Result<(Vec<u8>, RequestInfo), String> {
    let mut reader = pem;
    let der = match rustls_pemfile::read_one(&mut reader) {
        Ok(Some(rustls_pemfile::Item::Csr(der))) => der.as_ref().to_vec(),
        _ => return Err("PEM block type must be CERTIFICATE REQUEST".into()),
    };
    let (_, req) = X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("unable to parse csr: {e}"))?;
    req.verify_signature()
        .map_err(|_| "x509: signature verification failure".to_string())?;
    let subject = &req.certification_request_info.subject;
    let mut info = RequestInfo {
        common_name: subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string(),
        organizations: subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(String::from))
            .collect(),
        ..Default::default()
    };
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(d) => info.dns_names.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            info.ip_addresses.push(v4.into());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            info.ip_addresses.push(v6.into());
                        }
                    }
                    GeneralName::RFC822Name(_) => info.emails += 1,
                    GeneralName::URI(_) => info.uris += 1,
                    _ => {}
                }
            }
        }
    }
    Ok((der, info))
}

fn usages_equal(usages: &[String], want: &[&str]) -> bool {
    let mut a: Vec<&str> = usages.iter().map(String::as_str).collect();
    a.sort_unstable();
    a.dedup();
    let mut b = want.to_vec();
    b.sort_unstable();
    a == b
}

/// Kubernetes' `ValidateKubeletClientCSR`, with its error wording.
pub fn validate_kubelet_client(req: &RequestInfo, usages: &[String]) -> Result<(), String> {
    if req.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if !req.dns_names.is_empty() {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if req.emails > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if !req.ip_addresses.is_empty() {
        return Err("IP subjectAltNames are not allowed".into());
    }
    if req.uris > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !req.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with 'system:node:'".into());
    }
    if !usages_equal(
        usages,
        &["digital signature", "key encipherment", "client auth"],
    ) && !usages_equal(usages, &["digital signature", "client auth"])
    {
        return Err("usages did not match [client auth digital signature key encipherment]".into());
    }
    Ok(())
}

/// Kubernetes' `ValidateKubeletServingCSR`, with its error wording.
pub fn validate_kubelet_serving(req: &RequestInfo, usages: &[String]) -> Result<(), String> {
    if req.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if req.dns_names.is_empty() && req.ip_addresses.is_empty() {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if req.emails > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if req.uris > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !usages_equal(
        usages,
        &["digital signature", "key encipherment", "server auth"],
    ) && !usages_equal(usages, &["digital signature", "server auth"])
    {
        return Err("usages did not match [digital signature key encipherment server auth]".into());
    }
    if !req.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with 'system:node:'".into());
    }
    Ok(())
}

/// The `kubernetes.io/kube-apiserver-client` signer's check: client usages only.
pub fn validate_api_client(usages: &[String]) -> Result<(), String> {
    for u in usages {
        if !["client auth", "digital signature", "key encipherment"].contains(&u.as_str()) {
            return Err(format!("invalid usage for client certificate: {u}"));
        }
    }
    Ok(())
}

/// The cluster CA the controller signs with (`--cluster-signing-cert-file` /
/// `--cluster-signing-key-file`).
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    not_after: i64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads a PEM certificate and its PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("CA key: {e}"))?;
        let mut reader = cert_pem.as_bytes();
        let der = match rustls_pemfile::read_one(&mut reader) {
            Ok(Some(rustls_pemfile::Item::X509Certificate(der))) => der,
            _ => return Err("CA certificate: no PEM CERTIFICATE block".into()),
        };
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("CA certificate: {e}"))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key,
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Reads the two files.
    pub fn from_files(cert: &PathBuf, key: &PathBuf) -> Result<Ca, String> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|e| format!("read {}: {e}", p.display()))
        };
        Ca::from_pem(&read(cert)?, &read(key)?)
    }

    /// Issues a certificate for the request `der` with `usages`, valid from `now - 5m` for
    /// `duration` (capped at the CA's own expiry). Returns PEM.
    pub fn sign(
        &self,
        der: &[u8],
        usages: &[String],
        duration: Duration,
        now: i64,
    ) -> Result<String, String> {
        let mut csr = CertificateSigningRequestParams::from_der(&der.to_vec().into())
            .map_err(|e| format!("unable to parse csr: {e}"))?;
        let p = &mut csr.params;
        let secs = i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 2);
        let not_after = now.saturating_add(secs).min(self.not_after);
        p.not_before =
            time::OffsetDateTime::from_unix_timestamp(now - BACKDATE).map_err(|e| e.to_string())?;
        p.not_after =
            time::OffsetDateTime::from_unix_timestamp(not_after).map_err(|e| e.to_string())?;
        let mut serial: [u8; 16] = rand::random();
        serial[0] = (serial[0] & 0x7f) | 0x01;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.is_ca = IsCa::ExplicitNoCa;
        p.use_authority_key_identifier_extension = true;
        p.key_usages = Vec::new();
        p.extended_key_usages = Vec::new();
        for u in usages {
            match u.as_str() {
                "digital signature" => p.key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => p.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "content commitment" => p.key_usages.push(KeyUsagePurpose::ContentCommitment),
                "data encipherment" => p.key_usages.push(KeyUsagePurpose::DataEncipherment),
                "key agreement" => p.key_usages.push(KeyUsagePurpose::KeyAgreement),
                "client auth" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                "code signing" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::CodeSigning),
                "email protection" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::EmailProtection),
                "timestamping" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::TimeStamping),
                "ocsp signing" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::OcspSigning),
                _ => {}
            }
        }
        let issuer =
            Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(|e| format!("CA: {e}"))?;
        let cert = csr.signed_by(&issuer).map_err(|e| format!("sign: {e}"))?;
        Ok(cert.pem())
    }
}

/// What the signing controller needs.
#[derive(Debug)]
pub struct Settings {
    /// The CA.
    pub ca: Ca,
    /// `--cluster-signing-duration`: the longest validity issued.
    pub duration: Duration,
}

fn condition(csr: &CertificateSigningRequest, t: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
}

/// The decision for one request: None when there is nothing to do, else the certificate PEM
/// or the validation error of a request the signer refuses.
pub fn decide(
    csr: &CertificateSigningRequest,
    settings: &Settings,
    now: i64,
) -> Option<Result<String, String>> {
    let signer = csr.spec.signer_name.as_str();
    if ![
        KUBELET_CLIENT_SIGNER,
        API_CLIENT_SIGNER,
        KUBELET_SERVING_SIGNER,
    ]
    .contains(&signer)
    {
        return None;
    }
    let issued = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if issued || !condition(csr, "Approved") || condition(csr, "Denied") || condition(csr, "Failed")
    {
        return None;
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let checked = parse_request(&csr.spec.request.0).and_then(|(der, info)| {
        match signer {
            KUBELET_CLIENT_SIGNER => validate_kubelet_client(&info, &usages)?,
            KUBELET_SERVING_SIGNER => validate_kubelet_serving(&info, &usages)?,
            _ => validate_api_client(&usages)?,
        }
        Ok(der)
    });
    let der = match checked {
        Ok(der) => der,
        Err(e) => return Some(Err(e)),
    };
    let mut duration = settings.duration;
    if let Some(s) = csr.spec.expiration_seconds
        && let Ok(s) = u64::try_from(s)
    {
        duration = duration.min(Duration::from_secs(s.max(600)));
    }
    Some(
        settings
            .ca
            .sign(&der, &usages, duration, now)
            .map_err(|e| format!("error auto signing csr: {e}")),
    )
}

struct Ctx {
    client: Client,
    settings: Settings,
}

/// Runs the signing controller until its watch ends.
pub async fn run(client: Client, settings: Settings) -> Result<(), Error> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        settings,
    });
    util::run_controller(
        Controller::new(
            Api::<CertificateSigningRequest>::all(client),
            watcher::Config::default(),
        ),
        reconcile,
        ctx,
        "csrsigning",
        Duration::from_secs(2),
    )
    .await
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let now = jiff::Timestamp::now().as_second();
    let Some(decision) = decide(&csr, &ctx.settings, now) else {
        return Ok(Action::await_change());
    };
    let mut new = (*csr).clone();
    let status = new.status.get_or_insert_with(Default::default);
    match decision {
        Ok(pem) => {
            status.certificate = Some(k8s_openapi::ByteString(pem.into_bytes()));
            tracing::info!(csr = %csr.name_any(), signer = %csr.spec.signer_name, "signed certificate");
        }
        Err(message) => {
            tracing::info!(csr = %csr.name_any(), %message, "refusing to sign");
            status.conditions.get_or_insert_with(Vec::new).push(
                CertificateSigningRequestCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    reason: Some("SignerValidationFailure".into()),
                    message: Some(message),
                    last_update_time: Some(Time(jiff::Timestamp::now())),
                    last_transition_time: Some(Time(jiff::Timestamp::now())),
                },
            );
        }
    }
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    match api
        .replace_status(&csr.name_any(), &PostParams::default(), &new)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        // Changed meanwhile: the newer version is reconciled.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestSpec, CertificateSigningRequestStatus,
    };

    fn request(cn: &str, org: &str, sans: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lotse-ca");
        let cert = params.self_signed(&key).unwrap();
        Ca::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    fn csr(pem: &str, signer: &str, usages: &[&str], approved: bool) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: ByteString(pem.as_bytes().to_vec()),
                signer_name: signer.into(),
                usages: Some(usages.iter().map(|u| u.to_string()).collect()),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            status: Some(CertificateSigningRequestStatus {
                conditions: approved.then(|| {
                    vec![CertificateSigningRequestCondition {
                        type_: "Approved".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn signs_kubelet_client_requests_with_the_requested_duration() {
        let settings = Settings {
            ca: ca(),
            duration: DEFAULT_SIGNING_DURATION,
        };
        let now = jiff::Timestamp::now().as_second();
        let pem = request("system:node:n1", "system:nodes", &[]);
        let c = csr(
            &pem,
            KUBELET_CLIENT_SIGNER,
            &["digital signature", "client auth"],
            true,
        );
        let cert = decide(&c, &settings, now).unwrap().unwrap();
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(x.subject().to_string(), "O=system:nodes, CN=system:node:n1");
        assert_eq!(x.issuer().to_string(), "CN=lotse-ca");
        assert_eq!(
            x.validity().not_after.timestamp() - x.validity().not_before.timestamp(),
            3600 + BACKDATE
        );
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        // Not approved, or already issued: nothing to do.
        assert!(
            decide(
                &csr(&pem, KUBELET_CLIENT_SIGNER, &["client auth"], false),
                &settings,
                now
            )
            .is_none()
        );
        // Other signers are not ours.
        assert!(
            decide(
                &csr(&pem, "example.com/x", &["client auth"], true),
                &settings,
                now
            )
            .is_none()
        );
    }

    #[test]
    fn refuses_what_the_signer_does_not_allow() {
        let settings = Settings {
            ca: ca(),
            duration: DEFAULT_SIGNING_DURATION,
        };
        let now = jiff::Timestamp::now().as_second();
        let pem = request("system:node:n1", "system:masters", &[]);
        let c = csr(
            &pem,
            KUBELET_CLIENT_SIGNER,
            &["digital signature", "client auth"],
            true,
        );
        assert_eq!(
            decide(&c, &settings, now).unwrap().unwrap_err(),
            "subject organization is not system:nodes"
        );
        let pem = request("system:node:n1", "system:nodes", &["n1.example"]);
        let c = csr(
            &pem,
            KUBELET_CLIENT_SIGNER,
            &["digital signature", "client auth"],
            true,
        );
        assert_eq!(
            decide(&c, &settings, now).unwrap().unwrap_err(),
            "DNS subjectAltNames are not allowed"
        );
        // Serving: needs a SAN and server auth.
        let pem = request("system:node:n1", "system:nodes", &[]);
        let c = csr(
            &pem,
            KUBELET_SERVING_SIGNER,
            &["digital signature", "server auth"],
            true,
        );
        assert_eq!(
            decide(&c, &settings, now).unwrap().unwrap_err(),
            "DNS or IP subjectAltName is required"
        );
        let pem = request("system:node:n1", "system:nodes", &["n1", "10.0.0.5"]);
        let c = csr(
            &pem,
            KUBELET_SERVING_SIGNER,
            &["digital signature", "client auth"],
            true,
        );
        assert_eq!(
            decide(&c, &settings, now).unwrap().unwrap_err(),
            "usages did not match [digital signature key encipherment server auth]"
        );
        let c = csr(
            &pem,
            KUBELET_SERVING_SIGNER,
            &["digital signature", "key encipherment", "server auth"],
            true,
        );
        assert!(decide(&c, &settings, now).unwrap().is_ok());
        // kube-apiserver-client: any subject, client usages.
        let pem = request("jane", "devs", &[]);
        let c = csr(&pem, API_CLIENT_SIGNER, &["server auth"], true);
        assert_eq!(
            decide(&c, &settings, now).unwrap().unwrap_err(),
            "invalid usage for client certificate: server auth"
        );
    }
}
