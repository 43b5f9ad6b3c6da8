//! certificates.k8s.io/v1 entries: CertificateSigningRequests (cluster-scoped, with the
//! `/status` subresource the signers write and `/approval`, which `kubectl certificate
//! approve|deny` writes), validated as `pkg/apis/certificates/validation`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::certificates::v1 as certv1;
use lotse_core::names::{dns1123_label, dns1123_subdomain};
use serde_json::{Map, Value, json};

use super::util::*;
use crate::auth::UserInfo;
use crate::registry::*;

/// Condition type set by approvers.
pub const APPROVED: &str = "Approved";
/// Condition type set by approvers.
pub const DENIED: &str = "Denied";
/// Condition type set by signers.
pub const FAILED: &str = "Failed";

/// Every key usage Kubernetes accepts (`allValidUsages`), sorted as Go's `sets.List`.
pub const KNOWN_USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];

/// certificates.k8s.io/v1 certificatesigningrequests.
pub const CERTIFICATESIGNINGREQUESTS: ResourceDef = ResourceDef {
    namespaced: false,
    short_names: &["csr"],
    name_rule: NameRule::PathSegment,
    subresources: &[Subresource::Status, Subresource::Approval],
    has_status: true,
    validate: validate_csr,
    columns: &[
        NAME_COLUMN,
        AGE_COLUMN,
        col(
            "SignerName",
            "string",
            0,
            "signerName indicates the requested signer, and is a qualified name.",
        ),
        col(
            "Requestor",
            "string",
            0,
            "username contains the name of the user that created the CertificateSigningRequest. Populated by the API server on creation and immutable.",
        ),
        col(
            "RequestedDuration",
            "string",
            0,
            "expirationSeconds is the requested duration of validity of the issued certificate.",
        ),
        col(
            "Condition",
            "string",
            0,
            "conditions applied to the request. Known conditions are \"Approved\", \"Denied\", and \"Failed\".",
        ),
    ],
    cells: |o| {
        let none = |v: &str| {
            if v.is_empty() {
                "<none>".to_string()
            } else {
                v.to_string()
            }
        };
        let duration = fields::i64_at(o, &["spec", "expirationSeconds"])
            .map(fields::human_duration)
            .unwrap_or_else(|| "<none>".into());
        vec![
            name_cell(o),
            age_cell(o),
            cell(none(s(o, &["spec", "signerName"]))),
            cell(none(s(o, &["spec", "username"]))),
            cell(duration),
            cell(condition_summary(o)),
        ]
    },
    field: |o, f| match f {
        "spec.signerName" => Some(s(o, &["spec", "signerName"]).to_string()),
        _ => None,
    },
    selectable_fields: &["spec.signerName"],
    strategy: Strategy {
        prepare_for_create: |o| prepare_for_create(o, crate::auth::request_user().as_ref()),
        prepare_for_update,
        ..Strategy::DEFAULT
    },
    ..def_of::<certv1::CertificateSigningRequest>(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
    )
};

/// The CONDITION column: `Pending`, `Approved`, `Denied`, plus `,Failed` and `,Issued`
/// (kubectl's `extractCSRStatus`).
pub fn condition_summary(o: &Value) -> String {
    let types: Vec<&str> = arr(o, &["status", "conditions"])
        .iter()
        .filter_map(|c| c.get("type").and_then(Value::as_str))
        .collect();
    let mut out = if types.contains(&DENIED) {
        "Denied".to_string()
    } else if types.contains(&APPROVED) {
        "Approved".to_string()
    } else {
        "Pending".to_string()
    };
    if types.contains(&FAILED) {
        out.push_str(",Failed");
    }
    if !s(o, &["status", "certificate"]).is_empty() {
        out.push_str(",Issued");
    }
    out
}

/// Kubernetes' CSR update strategy: the request itself (`spec`) never changes.
fn prepare_for_update(old: &Value, new: &mut Value, scope: UpdateScope) {
    if scope == UpdateScope::Main
        && let (Value::Object(m), Some(spec)) = (new, old.get("spec"))
    {
        m.insert("spec".into(), spec.clone());
    }
}

/// Kubernetes' create strategy: the requester fields come from the authenticated user, never
/// from the client, and a new request carries no conditions or certificate.
pub fn prepare_for_create(obj: &mut Value, user: Option<&UserInfo>) {
    let spec = fields::ensure_object(obj, &["spec"]);
    for k in ["username", "uid", "groups", "extra"] {
        spec.remove(k);
    }
    if let Some(u) = user {
        spec.insert("username".into(), json!(u.name));
        if !u.uid.is_empty() {
            spec.insert("uid".into(), json!(u.uid));
        }
        if !u.groups.is_empty() {
            spec.insert("groups".into(), json!(u.groups));
        }
        if !u.extra.is_empty() {
            spec.insert("extra".into(), json!(u.extra));
        }
    }
    if let Value::Object(m) = obj {
        m.insert("status".into(), json!({}));
    }
}

/// The object an `/approval` update stores: the old spec and certificate with the caller's
/// conditions (timestamps filled as `populateConditionTimestamps`).
pub fn approval_update(old: &Value, new: &Value, now: &str) -> Value {
    let mut out = old.clone();
    let mut conditions: Vec<Value> = arr(new, &["status", "conditions"]).to_vec();
    populate_condition_timestamps(&mut conditions, arr(old, &["status", "conditions"]), now);
    let status = fields::ensure_object(&mut out, &["status"]);
    status.insert("conditions".into(), Value::Array(conditions));
    if let Some(meta) = new.get("metadata")
        && let Value::Object(m) = &mut out
    {
        m.insert("metadata".into(), meta.clone());
    }
    out
}

/// Kubernetes' status strategy: a `/status` write keeps the stored Approved and Denied
/// conditions (in place of whatever it sent for them).
pub fn preserve_approval_conditions(old: &Value, new: &mut Value) {
    let is_approval = |c: &Value| {
        matches!(
            c.get("type").and_then(Value::as_str),
            Some(APPROVED | DENIED)
        )
    };
    let mut conditions: Vec<Value> = arr(new, &["status", "conditions"])
        .iter()
        .filter(|c| !is_approval(c))
        .cloned()
        .collect();
    let kept: Vec<Value> = arr(old, &["status", "conditions"])
        .iter()
        .filter(|c| is_approval(c))
        .cloned()
        .collect();
    if kept.is_empty() && conditions.len() == arr(new, &["status", "conditions"]).len() {
        return;
    }
    conditions.splice(0..0, kept);
    fields::ensure_object(new, &["status"]).insert("conditions".into(), Value::Array(conditions));
}

fn populate_condition_timestamps(conditions: &mut [Value], old: &[Value], now: &str) {
    for c in conditions.iter_mut() {
        let Value::Object(m) = c else { continue };
        if m.get("lastUpdateTime").is_none_or(Value::is_null) {
            m.insert("lastUpdateTime".into(), json!(now));
        }
        if m.get("lastTransitionTime").is_none_or(Value::is_null) {
            let same = old.iter().find(|o| {
                o.get("type") == m.get("type")
                    && o.get("status") == m.get("status")
                    && o.get("lastTransitionTime").is_some_and(|t| !t.is_null())
            });
            let t = same
                .and_then(|o| o.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(now));
            m.insert("lastTransitionTime".into(), t);
        }
    }
}

/// The PEM of `spec.request` (base64 in JSON), parsed and its signature checked; the error is
/// worded as Go's `ParseCSR` / `CheckSignature`.
pub fn parse_request(request_b64: &str) -> Result<Vec<u8>, String> {
    let pem = BASE64
        .decode(request_b64)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    let mut reader = pem.as_slice();
    let der = match rustls_pemfile::read_one(&mut reader) {
        Ok(Some(rustls_pemfile::Item::Csr(der))) => der.as_ref().to_vec(),
        _ => return Err("PEM block type must be CERTIFICATE REQUEST".into()),
    };
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("asn1: structure error: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "x509: signature verification failure".to_string())?;
    Ok(der)
}

/// Kubernetes' CertificateSubjectRestriction admission: nobody may ask the
/// `kubernetes.io/kube-apiserver-client` signer for a `system:masters` certificate. The error
/// is the reason of a 403.
pub fn subject_restriction(o: &Value) -> Result<(), String> {
    if s(o, &["spec", "signerName"]) != "kubernetes.io/kube-apiserver-client" {
        return Ok(());
    }
    // An unparsable request was refused by validation already.
    let Ok(der) = parse_request(s(o, &["spec", "request"])) else {
        return Ok(());
    };
    use x509_parser::prelude::FromDer;
    let masters = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .is_ok_and(|(_, csr)| {
            csr.certification_request_info
                .subject
                .iter_organization()
                .any(|o| o.as_str() == Ok("system:masters"))
        });
    if masters {
        return Err(
            "use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
                .into(),
        );
    }
    Ok(())
}

/// `ValidateSignerName`: `<domain>/<path>`.
fn signer_name_errors(errs: &mut Vec<FieldError>, name: &str) {
    let field = "spec.signerName";
    if name.is_empty() {
        errs.push(FieldError::required(field, ""));
        return;
    }
    let segments: Vec<&str> = name.split('/').collect();
    let [domain, path] = segments.as_slice() else {
        errs.push(FieldError::invalid(
            field,
            &json!(name),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
        return;
    };
    let labels: Vec<&str> = domain.split('.').collect();
    if let Some((lbl, e)) = labels
        .iter()
        .find_map(|l| dns1123_label(l).into_iter().next().map(|e| (l, e)))
    {
        errs.push(FieldError::invalid(
            field,
            &json!(domain),
            &format!("validating label \"{lbl}\": {e}"),
        ));
    }
    if labels.len() < 2 {
        errs.push(FieldError::invalid(
            field,
            &json!(domain),
            "should be a domain with at least two segments separated by dots",
        ));
    }
    if let Some((lbl, e)) = path
        .split('.')
        .find_map(|l| dns1123_subdomain(l).into_iter().next().map(|e| (l, e)))
    {
        errs.push(FieldError::invalid(
            field,
            &json!(path),
            &format!("validating label \"{lbl}\": {e}"),
        ));
    }
}

fn condition_types(o: &Value, t: &str) -> Vec<Value> {
    arr(o, &["status", "conditions"])
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some(t))
        .cloned()
        .collect()
}

/// `status.certificate` must be one or more PEM CERTIFICATE blocks that parse.
fn certificate_error(cert_b64: &str) -> Option<String> {
    if cert_b64.is_empty() {
        return None;
    }
    let Ok(pem) = BASE64.decode(cert_b64) else {
        return Some("must contain at least one CERTIFICATE PEM block".into());
    };
    let mut reader = pem.as_slice();
    let mut n = 0;
    loop {
        match rustls_pemfile::read_one(&mut reader) {
            Ok(Some(rustls_pemfile::Item::X509Certificate(der))) => {
                if x509_parser::parse_x509_certificate(&der).is_err() {
                    return Some(format!("error parsing certificate {n}"));
                }
                n += 1;
            }
            Ok(Some(_)) => return Some("only CERTIFICATE PEM blocks are allowed".into()),
            Ok(None) => break,
            Err(_) => return Some("must contain at least one CERTIFICATE PEM block".into()),
        }
    }
    (n == 0).then(|| "must contain at least one CERTIFICATE PEM block".into())
}

fn validate_csr(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let request = s(o, &["spec", "request"]);
    if let Err(e) = parse_request(request) {
        errs.push(FieldError::invalid("spec.request", &json!(request), &e));
    }
    let usages: Vec<&str> = arr(o, &["spec", "usages"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let old_usages: Vec<&str> = old
        .map(|o| arr(o, &["spec", "usages"]))
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if usages.is_empty() {
        errs.push(FieldError::required("spec.usages", ""));
    }
    if !old_usages.iter().any(|u| !KNOWN_USAGES.contains(u)) {
        for (i, u) in usages.iter().enumerate() {
            if !KNOWN_USAGES.contains(u) {
                errs.push(FieldError::not_supported(
                    format!("spec.usages[{i}]"),
                    &json!(u),
                    KNOWN_USAGES,
                ));
            }
        }
    }
    for (i, u) in usages.iter().enumerate() {
        if usages[..i].contains(u) {
            errs.push(FieldError::duplicate(
                format!("spec.usages[{i}]"),
                &json!(u),
            ));
        }
    }
    signer_name_errors(&mut errs, s(o, &["spec", "signerName"]));
    if let Some(e) = fields::i64_at(o, &["spec", "expirationSeconds"])
        && e < 600
    {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            &json!(e),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    validate_conditions(&mut errs, o);
    let cert = s(o, &["status", "certificate"]);
    let old_cert = old.map(|o| s(o, &["status", "certificate"])).unwrap_or("");
    if (old.is_none() || cert != old_cert)
        && let Some(e) = certificate_error(cert)
    {
        errs.push(invalid_raw(
            "status.certificate",
            "\"<certificate data>\"",
            &e,
        ));
    }
    if let Some(old) = old {
        if o.get("spec") != old.get("spec") {
            errs.push(FieldError::invalid(
                "spec",
                &json!("<spec>"),
                "field is immutable",
            ));
        }
        for t in [APPROVED, DENIED, FAILED] {
            if condition_types(o, t).len() < condition_types(old, t).len() {
                errs.push(FieldError::forbidden(
                    "status.conditions",
                    &format!("updates may not remove a condition of type \"{t}\""),
                ));
            }
        }
        if !old_cert.is_empty() && cert != old_cert {
            errs.push(FieldError::forbidden(
                "status.certificate",
                "updates may not modify existing certificate content",
            ));
        }
    }
    errs
}

fn validate_conditions(errs: &mut Vec<FieldError>, o: &Value) {
    let (mut approved, mut denied) = (false, false);
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in arr(o, &["status", "conditions"]).iter().enumerate() {
        let t = c.get("type").and_then(Value::as_str).unwrap_or("");
        let status = c.get("status").and_then(Value::as_str).unwrap_or("");
        if t.is_empty() {
            errs.push(FieldError::required(
                format!("status.conditions[{i}].type"),
                "",
            ));
        }
        let allowed: &[&str] = if [APPROVED, DENIED, FAILED].contains(&t) {
            &["True"]
        } else {
            &["False", "True", "Unknown"]
        };
        if status.is_empty() {
            errs.push(FieldError::required(
                format!("status.conditions[{i}].status"),
                "",
            ));
        } else if !allowed.contains(&status) {
            errs.push(FieldError::not_supported(
                format!("status.conditions[{i}].status"),
                &json!(status),
                allowed,
            ));
        }
        let exclusive = match t {
            APPROVED => {
                approved = true;
                denied
            }
            DENIED => {
                denied = true;
                approved
            }
            _ => false,
        };
        if exclusive {
            errs.push(FieldError::invalid(
                format!("status.conditions[{i}].type"),
                &json!(t),
                "Approved and Denied conditions are mutually exclusive",
            ));
        }
        if !t.is_empty() && seen.contains(&t) {
            errs.push(FieldError::duplicate(
                format!("status.conditions[{i}].type"),
                &json!(t),
            ));
        }
        seen.push(t);
    }
}

/// The requester's identity as the CSR records it (for SubjectAccessReviews by approvers).
pub fn requester(o: &Value) -> (String, String, Vec<String>, Map<String, Value>) {
    (
        s(o, &["spec", "username"]).to_string(),
        s(o, &["spec", "uid"]).to_string(),
        arr(o, &["spec", "groups"])
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        obj(o, &["spec", "extra"]).cloned().unwrap_or_default(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn csr_pem(cn: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn csr(request_pem: &str) -> Value {
        json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": "node-csr-1"},
            "spec": {
                "request": BASE64.encode(request_pem),
                "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                "usages": ["digital signature", "client auth"],
            },
        })
    }

    /// A valid kubelet client request's spec.
    pub(crate) fn example_spec() -> Value {
        csr(&csr_pem("system:node:n1"))["spec"].clone()
    }

    fn messages(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(|e| e.message.clone()).collect()
    }

    #[test]
    fn valid_request_passes() {
        let o = csr(&csr_pem("system:node:n1"));
        assert_eq!(validate_csr(&o, None), vec![]);
        assert_eq!(condition_summary(&o), "Pending");
    }

    #[test]
    fn kubernetes_messages() {
        let mut o = csr("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        o["spec"]["signerName"] = json!("");
        o["spec"]["usages"] = json!(["client auth", "flying", "client auth"]);
        o["spec"]["expirationSeconds"] = json!(60);
        let m = messages(&validate_csr(&o, None));
        assert!(
            m.iter()
                .any(|m| m.starts_with("spec.request: Invalid value: ")
                    && m.ends_with(": PEM block type must be CERTIFICATE REQUEST")),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.signerName: Required value".to_string()),
            "{m:?}"
        );
        assert!(
            m.iter().any(|m| m.starts_with(
                "spec.usages[1]: Unsupported value: \"flying\": supported values: \"any\", \"cert sign\""
            )),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.usages[2]: Duplicate value: \"client auth\"".to_string()),
            "{m:?}"
        );
        assert!(m.contains(&"spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 600 seconds (10 minutes)".to_string()), "{m:?}");
        let mut o = csr(&csr_pem("x"));
        o["spec"]["signerName"] = json!("example");
        assert_eq!(
            messages(&validate_csr(&o, None)),
            vec![
                "spec.signerName: Invalid value: \"example\": must be a fully qualified domain and path of the form 'example.com/signer-name'"
            ]
        );
        o["spec"]["usages"] = json!([]);
        o["spec"]["signerName"] = json!("example.com/x");
        assert_eq!(
            messages(&validate_csr(&o, None)),
            vec!["spec.usages: Required value"]
        );
    }

    #[test]
    fn tampered_request_is_rejected() {
        let pem = csr_pem("system:node:n1");
        let der = rustls::pki_types::CertificateSigningRequestDer::from(
            BASE64
                .decode(
                    pem.lines()
                        .filter(|l| !l.starts_with("-----"))
                        .collect::<String>(),
                )
                .unwrap(),
        );
        let mut bytes = der.as_ref().to_vec();
        // Flip a byte inside the subject's common name.
        let at = bytes.windows(4).position(|w| w == b"node").unwrap();
        bytes[at] = b'm';
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            BASE64.encode(&bytes)
        );
        let e = parse_request(&BASE64.encode(tampered)).unwrap_err();
        assert_eq!(e, "x509: signature verification failure");
    }

    #[test]
    fn approval_conditions_are_exclusive_and_kept() {
        let mut o = csr(&csr_pem("system:node:n1"));
        o["status"] = json!({"conditions": [
            {"type": "Approved", "status": "True"},
            {"type": "Denied", "status": "True"},
        ]});
        assert_eq!(
            messages(&validate_csr(&o, None)),
            vec![
                "status.conditions[1].type: Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive"
            ]
        );
        let old = {
            let mut o = csr(&csr_pem("system:node:n1"));
            o["status"] = json!({"conditions": [{"type": "Approved", "status": "True", "reason": "AutoApproved"}]});
            o
        };
        let mut new = old.clone();
        new["status"]["conditions"] = json!([]);
        assert_eq!(
            messages(&validate_csr(&new, Some(&old))),
            vec![
                "status.conditions: Forbidden: updates may not remove a condition of type \"Approved\""
            ]
        );
        // Spec is immutable.
        let mut new = old.clone();
        new["spec"]["usages"] = json!(["client auth"]);
        assert!(!validate_csr(&new, Some(&old)).is_empty());
        // Approval keeps the old spec and fills timestamps.
        let mut sent = old.clone();
        sent["spec"]["username"] = json!("mallory");
        sent["status"]["certificate"] = json!("Zm9v");
        sent["status"]["conditions"] =
            json!([{"type": "Approved", "status": "True", "reason": "KubectlApprove"}]);
        let stored = approval_update(&old, &sent, "2026-01-01T00:00:00Z");
        assert_eq!(stored["spec"], old["spec"]);
        assert!(stored["status"].get("certificate").is_none());
        assert_eq!(
            stored["status"]["conditions"][0]["reason"],
            "KubectlApprove"
        );
        assert_eq!(
            stored["status"]["conditions"][0]["lastUpdateTime"],
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn requester_comes_from_the_user() {
        let mut o = csr(&csr_pem("system:node:n1"));
        o["spec"]["username"] = json!("system:admin");
        o["spec"]["groups"] = json!(["system:masters"]);
        o["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        let user = UserInfo {
            name: "system:bootstrap:abcdef".into(),
            groups: vec!["system:bootstrappers".into(), "system:authenticated".into()],
            ..Default::default()
        };
        prepare_for_create(&mut o, Some(&user));
        assert_eq!(o["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(
            o["spec"]["groups"],
            json!(["system:bootstrappers", "system:authenticated"])
        );
        assert_eq!(o["status"], json!({}));
        assert!(o["spec"].get("uid").is_none());
    }

    #[test]
    fn no_system_masters_from_the_client_signer() {
        let mut o = csr(&csr_pem("x"));
        assert_eq!(
            subject_restriction(&o),
            Ok(()),
            "kubelet signer: not restricted"
        );
        o["spec"]["signerName"] = json!("kubernetes.io/kube-apiserver-client");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        o["spec"]["request"] = json!(BASE64.encode(pem));
        assert_eq!(
            subject_restriction(&o).unwrap_err(),
            "use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
        );
    }

    #[test]
    fn status_writes_keep_approval_conditions() {
        let old = json!({"status": {"conditions": [
            {"type": "Approved", "status": "True", "reason": "AutoApproved"}]}});
        let mut new = json!({"status": {"certificate": "Zm9v", "conditions": [
            {"type": "Denied", "status": "True"}, {"type": "Failed", "status": "True"}]}});
        preserve_approval_conditions(&old, &mut new);
        assert_eq!(
            new["status"]["conditions"],
            json!([{"type": "Approved", "status": "True", "reason": "AutoApproved"},
                   {"type": "Failed", "status": "True"}])
        );
        // A status write that drops the approval does not drop it.
        let mut new = json!({"status": {"certificate": "Zm9v"}});
        preserve_approval_conditions(&old, &mut new);
        assert_eq!(new["status"]["conditions"][0]["type"], "Approved");
        // Nothing to keep, nothing sent: untouched.
        let mut new = json!({"status": {}});
        preserve_approval_conditions(&json!({}), &mut new);
        assert_eq!(new, json!({"status": {}}));
    }

    #[test]
    fn condition_column() {
        let mut o = csr(&csr_pem("x"));
        o["status"] =
            json!({"conditions": [{"type": "Approved", "status": "True"}], "certificate": "Zm9v"});
        assert_eq!(condition_summary(&o), "Approved,Issued");
        o["status"] = json!({"conditions": [{"type": "Denied", "status": "True"}, {"type": "Failed", "status": "True"}]});
        assert_eq!(condition_summary(&o), "Denied,Failed");
    }
}
