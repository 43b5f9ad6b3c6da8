//! The kubelet's serving certificate from the cluster CA (`--rotate-server-certificates`, as
//! Kubernetes' `serverTLSBootstrap`): the kubelet asks for it with a CertificateSigningRequest
//! to the `kubernetes.io/kubelet-serving` signer (subject `system:node:<name>`, organization
//! `system:nodes`, the node's name and InternalIP as subjectAltNames, usages `digital signature`
//! and `server auth`), keeps it with its key in `<root-dir>/pki/kubelet-server-current.pem`
//! (mode 0600) and renews it at 70–90 % of its lifetime, as the kubelet's certificate manager.
//! Until the first one is signed, and whenever none can be had, it serves a self-signed
//! certificate, so an apiserver that verifies kubelets (`--kubelet-certificate-authority`)
//! refuses to talk to it rather than trust it.
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::Error;

/// The signer kubelets ask for serving certificates.
pub const SIGNER: &str = "kubernetes.io/kubelet-serving";

/// The certificate file under the root dir (certificate then key, PEM).
pub fn current_path(root_dir: &Path) -> PathBuf {
    root_dir.join("pki").join("kubelet-server-current.pem")
}

/// What the kubelet serves with; swapped in place when a new certificate arrives.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    /// Validity of the CA-signed certificate in use (None: self-signed).
    validity: RwLock<Option<(SystemTime, SystemTime)>>,
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, Error> {
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::Runtime(format!("kubelet serving key: {e}")))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// A self-signed certificate for the node's names (served until the CA's arrives).
pub fn self_signed(sans: &[String]) -> Result<CertifiedKey, Error> {
    let cert = rcgen::generate_simple_self_signed(sans.to_vec())
        .map_err(|e| Error::Runtime(format!("kubelet serving certificate: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    certified(vec![cert.cert.der().clone()], key)
}

/// A certificate's validity and whether its subjectAltNames cover `ip`.
fn inspect(der: &[u8], ip: &str) -> Option<(SystemTime, SystemTime, bool)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    let t = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    let covers = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(|n| match n {
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => <[u8; 4]>::try_from(*b)
                        .map(|a| std::net::IpAddr::from(a).to_string() == ip)
                        .unwrap_or(false),
                    16 => <[u8; 16]>::try_from(*b)
                        .map(|a| std::net::IpAddr::from(a).to_string() == ip)
                        .unwrap_or(false),
                    _ => false,
                },
                _ => false,
            })
        });
    Some((t(v.not_before), t(v.not_after), covers))
}

/// A stored certificate still valid for `ip`: (certified key, not before, not after).
fn load(path: &Path, ip: &str) -> Option<(CertifiedKey, SystemTime, SystemTime)> {
    let pem = std::fs::read(path).ok()?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(&pem).ok()?;
    let (nb, na, covers) = inspect(chain.first()?, ip)?;
    if !covers || na <= SystemTime::now() {
        return None;
    }
    Some((certified(chain, key).ok()?, nb, na))
}

impl ServingCert {
    /// The stored CA-signed certificate when it is still good for the node, else a self-signed
    /// one.
    pub fn new(root_dir: &Path, sans: &[String], ip: &str) -> Result<Arc<ServingCert>, Error> {
        let (key, validity) = match load(&current_path(root_dir), ip) {
            Some((k, nb, na)) => (k, Some((nb, na))),
            None => (self_signed(sans)?, None),
        };
        Ok(Arc::new(ServingCert {
            current: RwLock::new(Arc::new(key)),
            validity: RwLock::new(validity),
        }))
    }

    /// Whether a CA-signed certificate is in use.
    pub fn is_signed(&self) -> bool {
        self.validity.read().is_ok_and(|v| v.is_some())
    }

    /// When to ask for the next certificate: now without a signed one, else at a random
    /// point between 70 % and 90 % of the current one's lifetime (client-go's certificate
    /// manager's jitter).
    fn renewal_due(&self) -> SystemTime {
        let Some((nb, na)) = self.validity.read().ok().and_then(|v| *v) else {
            return SystemTime::now();
        };
        let life = na.duration_since(nb).unwrap_or_default();
        let frac = 0.7 + 0.2 * (rand_unit());
        nb + life.mul_f64(frac)
    }

    /// Asks for certificates for ever: at start when none is signed, then before each expires.
    pub async fn rotate(
        self: Arc<Self>,
        client: kube::Client,
        root_dir: PathBuf,
        node: String,
        sans: Vec<String>,
        ip: String,
    ) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = self
                .renewal_due()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
            match request(&client, &node, &sans).await {
                Ok((cert_pem, key_pem)) => {
                    let path = current_path(&root_dir);
                    if let Err(e) = store(&path, &cert_pem, &key_pem) {
                        tracing::warn!(error = %e, path = %path.display(), "storing the kubelet serving certificate");
                    }
                    let pem = format!("{cert_pem}{key_pem}");
                    let chain: Vec<CertificateDer<'static>> =
                        CertificateDer::pem_slice_iter(pem.as_bytes())
                            .filter_map(Result::ok)
                            .collect();
                    let parsed = chain.first().and_then(|c| inspect(c, &ip));
                    match (PrivateKeyDer::from_pem_slice(pem.as_bytes()), parsed) {
                        (Ok(key), Some((nb, na, _))) => match certified(chain, key) {
                            Ok(k) => {
                                if let Ok(mut c) = self.current.write() {
                                    *c = Arc::new(k);
                                }
                                if let Ok(mut v) = self.validity.write() {
                                    *v = Some((nb, na));
                                }
                                tracing::info!(node = %node, "kubelet serving certificate signed by the cluster CA");
                                backoff = Duration::from_secs(1);
                                continue;
                            }
                            Err(e) => tracing::warn!(error = %e, "kubelet serving certificate"),
                        },
                        _ => {
                            tracing::warn!("the signed kubelet serving certificate does not parse")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "requesting a kubelet serving certificate"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(300));
        }
    }
}

/// A number in [0, 1) from the OS's randomness (jitter only).
fn rand_unit() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

fn store(path: &Path, cert_pem: &str, key_pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(cert_pem.as_bytes())?;
    if !cert_pem.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    f.write_all(key_pem.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The PEM certificate signing request for `node` with `sans` (IPs and DNS names), and its key.
pub fn signing_request(node: &str, sans: &[String]) -> Result<(String, String), Error> {
    let fail = |e: rcgen::Error| Error::Runtime(format!("kubelet serving request: {e}"));
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec()).map_err(fail)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok((csr.pem().map_err(fail)?, key.serialize_pem()))
}

/// Creates a serving CertificateSigningRequest and waits until it is signed (the certificate
/// and key, PEM), denied or failed (an error naming the condition's reason and message).
async fn request(
    client: &kube::Client,
    node: &str,
    sans: &[String],
) -> Result<(String, String), Error> {
    let (csr_pem, key_pem) = signing_request(node, sans)?;
    let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-"},
        "spec": {
            "request": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, csr_pem),
            "signerName": SIGNER,
            "usages": ["digital signature", "server auth"],
        }
    }))
    .map_err(|e| Error::Runtime(e.to_string()))?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api.create(&PostParams::default(), &csr).await?;
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, "asked for a kubelet serving certificate");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = api.get(&name).await?;
        let status = got.status.unwrap_or_default();
        if let Some(c) = status.certificate.filter(|c| !c.0.is_empty()) {
            return Ok((String::from_utf8_lossy(&c.0).into_owned(), key_pem));
        }
        if let Some(c) = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            return Err(Error::Runtime(format!(
                "certificate signing request {name} is {}: {} {}",
                c.type_.to_lowercase(),
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_requests_name_the_node_and_its_addresses() {
        let sans = vec!["node-a".to_string(), "10.0.0.5".to_string()];
        let (pem, key) = signing_request("node-a", &sans).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(key.contains("PRIVATE KEY"));
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap();
        let (_, req) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<x509_parser::error::X509Error>>::from_der(der.as_ref()).unwrap();
        let subject = req.certification_request_info.subject.to_string();
        assert!(subject.contains("CN=system:node:node-a"), "{subject}");
        assert!(subject.contains("O=system:nodes"), "{subject}");
    }

    #[test]
    fn a_stored_certificate_is_used_only_while_it_names_the_node_ip() {
        let dir = tempfile::tempdir().unwrap();
        let path = current_path(dir.path());
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["n".to_string(), "10.0.0.5".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        store(&path, &cert.pem(), &key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(load(&path, "10.0.0.5").is_some());
        assert!(load(&path, "10.0.0.6").is_none());
        let s = ServingCert::new(dir.path(), &["n".into(), "10.0.0.5".into()], "10.0.0.5").unwrap();
        assert!(s.is_signed());
        let due = s.renewal_due();
        let (nb, na) = s.validity.read().unwrap().unwrap();
        let life = na.duration_since(nb).unwrap();
        assert!(due >= nb + life.mul_f64(0.69) && due <= nb + life.mul_f64(0.91));
        let s = ServingCert::new(dir.path(), &["n".into(), "10.0.0.6".into()], "10.0.0.6").unwrap();
        assert!(!s.is_signed());
    }
}
