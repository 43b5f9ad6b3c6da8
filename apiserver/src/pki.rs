//! The cluster's PKI: a cluster CA, the apiserver's serving certificate, the service-account
//! signing key, client certificates and kubeconfigs, kept in `<data-dir>/pki/`.
//!
//! Layout (as kubeadm names them where it has a name):
//! - `ca.crt`, `ca.key`: the cluster CA (ECDSA P-256, 10 years). Client certificates are verified
//!   against it; kubeconfigs carry it as `certificate-authority-data`.
//! - `apiserver.crt`, `apiserver.key`: the serving certificate, signed by the CA, regenerated when
//!   the wanted SANs change, the CA changed, or it expires within 30 days.
//! - `sa.key`, `sa.pub`: the service-account token signing key pair, ECDSA P-256 (tokens are
//!   ES256; Kubernetes accepts ECDSA signing keys). PKCS#8 / SPKI PEM, directly usable by
//!   `jsonwebtoken`'s `EncodingKey::from_ec_pem` / `DecodingKey::from_ec_pem`.
//!
//! Private keys are written with mode 0600, certificates and public keys with 0644.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tracing::{debug, info};

/// The first IP of the default service CIDR (10.96.0.0/12): the `kubernetes` Service's ClusterIP.
pub const DEFAULT_KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// The user name of the admin kubeconfig.
pub const ADMIN_USER: &str = "lotse-admin";

/// The group of the admin kubeconfig's user (bound to `cluster-admin` by Kubernetes' defaults).
pub const ADMIN_GROUP: &str = "system:masters";

/// The JWS algorithm of service-account tokens signed with [`Pki::sa_private_key_pem`].
pub const SERVICE_ACCOUNT_JWT_ALGORITHM: &str = "ES256";

/// id-at-organizationName (2.5.4.10).
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 365;
/// A serving certificate expiring sooner than this is renewed at start.
const RENEW_BEFORE_DAYS: i64 = 30;

/// Errors creating, loading or using the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted ("read", "write", "create directory", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating or parsing a key or certificate failed.
    #[error("{what}: {source}")]
    Certificate {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A stored file is not what it should be.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Only one of `ca.crt` / `ca.key` exists; refusing to replace the cluster CA silently.
    #[error("incomplete cluster CA in {0}: ca.crt and ca.key must both exist or both be absent")]
    IncompleteCa(PathBuf),
    /// A client certificate was asked for with more organizations than supported.
    #[error("client certificates carry at most two organizations, got {0}")]
    TooManyOrganizations(usize),
    /// Building the rustls configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Serializing the kubeconfig failed.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] serde_yaml::Error),
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Certificate { what, source }
}

/// The loaded PKI. Cheap to share behind an `Arc`; all material is held in memory.
pub struct Pki {
    dir: PathBuf,
    data_dir: PathBuf,
    ca_cert_pem: String,
    ca_cert_der: CertificateDer<'static>,
    ca_key: KeyPair,
    serving_cert_pem: String,
    serving_key_pem: String,
    sa_private_key_pem: String,
    sa_public_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the PKI from `<data_dir>/pki/`, creating whatever is missing. The serving certificate
    /// covers localhost, 127.0.0.1, the hostname, the `kubernetes.default.svc…` names, 10.96.0.1
    /// and `sans` (DNS names or IP addresses); it is regenerated when that set changes.
    pub fn load_or_create(data_dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
        let dir = data_dir.join("pki");
        create_private_dir(&dir)?;

        let (ca_cert_pem, ca_key) = load_or_create_ca(&dir)?;
        let ca_cert_der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes()).map_err(|e| {
            PkiError::Invalid {
                path: dir.join("ca.crt"),
                reason: format!("not a PEM certificate: {e}"),
            }
        })?;

        let wanted = serving_sans(sans);
        let (serving_cert_pem, serving_key_pem) =
            load_or_create_serving(&dir, &ca_cert_der, &ca_key, &wanted)?;
        let (sa_private_key_pem, sa_public_key_pem) = load_or_create_sa_key(&dir)?;

        Ok(Pki {
            dir,
            data_dir: data_dir.to_path_buf(),
            ca_cert_pem,
            ca_cert_der,
            ca_key,
            serving_cert_pem,
            serving_key_pem,
            sa_private_key_pem,
            sa_public_key_pem,
        })
    }

    /// The directory holding the PKI files (`<data-dir>/pki`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster CA certificate (PEM), also the `ca.crt` of service-account token secrets.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// kubeadm's discovery hash of the cluster CA (see [`ca_public_key_hash`]).
    pub fn ca_public_key_hash(&self) -> Result<String, PkiError> {
        ca_public_key_hash(&self.ca_cert_pem)
    }

    /// The apiserver serving certificate (PEM).
    pub fn serving_cert_pem(&self) -> &str {
        &self.serving_cert_pem
    }

    /// The service-account signing key: PKCS#8 PEM of an ECDSA P-256 key (sign with ES256).
    pub fn sa_private_key_pem(&self) -> &str {
        &self.sa_private_key_pem
    }

    /// The service-account verification key: SPKI PEM of the ECDSA P-256 public key.
    pub fn sa_public_key_pem(&self) -> &str {
        &self.sa_public_key_pem
    }

    /// Issues a client certificate (client-auth EKU, 1 year) signed by the cluster CA: the
    /// certificate's CN is the user name, each organization a group. Returns `(cert_pem, key_pem)`.
    ///
    /// At most two organizations are supported: rcgen keeps one value per attribute type, so the
    /// second O is written under its OID as a custom attribute (same encoding on the wire).
    pub fn issue_client_cert(
        &self,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<(String, String), PkiError> {
        if organizations.len() > 2 {
            return Err(PkiError::TooManyOrganizations(organizations.len()));
        }
        let key = KeyPair::generate().map_err(cert_err("generate client key"))?;
        let mut params = leaf_params(LEAF_VALIDITY_DAYS);
        params.distinguished_name = DistinguishedName::new();
        let org_types = [
            DnType::OrganizationName,
            DnType::CustomDnType(ORGANIZATION_OID.to_vec()),
        ];
        for (org, ty) in organizations.iter().zip(org_types) {
            params.distinguished_name.push(ty, *org);
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::from_ca_cert_der(&self.ca_cert_der, &self.ca_key)
            .map_err(cert_err("load CA issuer"))?;
        let cert = params.signed_by(&key, &issuer).map_err(cert_err(format!(
            "sign client certificate for {common_name}"
        )))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes a kubeconfig for `user` with cluster and context `lotse`, embedding the CA and the
    /// client certificate and key as base64 data. The file gets mode 0600.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        server_url: &str,
        user: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), PkiError> {
        let config = kubeconfig(server_url, user, &self.ca_cert_pem, cert_pem, key_pem);
        let yaml = serde_yaml::to_string(&config)?;
        write_file(path, yaml.as_bytes(), 0o600)
    }

    /// Writes `<data-dir>/admin.kubeconfig` for user `lotse-admin` in group `system:masters`
    /// with a freshly issued client certificate, and returns its path.
    pub fn write_admin_kubeconfig(&self, server_url: &str) -> Result<PathBuf, PkiError> {
        let path = self.data_dir.join("admin.kubeconfig");
        let (cert, key) = self.issue_client_cert(ADMIN_USER, &[ADMIN_GROUP])?;
        self.write_kubeconfig(&path, server_url, ADMIN_USER, &cert, &key)?;
        info!(path = %path.display(), "wrote admin kubeconfig");
        Ok(path)
    }

    /// A rustls server configuration serving the apiserver certificate, verifying client
    /// certificates against the cluster CA while still admitting clients without one (they are
    /// authenticated by token or are anonymous), with ALPN `h2` and `http/1.1`.
    pub fn rustls_server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_cert_der.clone())
            .map_err(|e| PkiError::Tls(format!("cluster CA as trust anchor: {e}")))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| PkiError::Tls(format!("client verifier: {e}")))?;
        let chain = vec![
            CertificateDer::from_pem_slice(self.serving_cert_pem.as_bytes())
                .map_err(|e| PkiError::Tls(format!("serving certificate: {e}")))?,
        ];
        let key = PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes())
            .map_err(|e| PkiError::Tls(format!("serving key: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| PkiError::Tls(format!("serving certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// kubeadm's `--discovery-token-ca-cert-hash` of a CA certificate (PEM): `sha256:` and the hex
/// SHA-256 of the certificate's DER-encoded SubjectPublicKeyInfo. A joining node pins the CA it
/// is offered to this value before it trusts anything the server says.
pub fn ca_public_key_hash(ca_cert_pem: &str) -> Result<String, PkiError> {
    let invalid = |reason: String| PkiError::Invalid {
        path: PathBuf::from("<CA certificate>"),
        reason,
    };
    let der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| invalid(format!("not a PEM certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// The kubeconfig document (clusters, contexts, users all named as Kubernetes tools expect).
pub fn kubeconfig(
    server_url: &str,
    user: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "lotse",
            "cluster": {
                "certificate-authority-data": BASE64.encode(ca_pem),
                "server": server_url,
            },
        }],
        "contexts": [{
            "name": "lotse",
            "context": { "cluster": "lotse", "user": user },
        }],
        "current-context": "lotse",
        "preferences": {},
        "users": [{
            "name": user,
            "user": {
                "client-certificate-data": BASE64.encode(cert_pem),
                "client-key-data": BASE64.encode(key_pem),
            },
        }],
    })
}

/// The SANs the serving certificate must carry, de-duplicated, in a stable order.
fn serving_sans(extra: &[String]) -> BTreeSet<String> {
    let mut sans: BTreeSet<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    sans.insert(Ipv4Addr::LOCALHOST.to_string());
    sans.insert(DEFAULT_KUBERNETES_SERVICE_IP.to_string());
    if let Some(host) = hostname() {
        sans.insert(host);
    }
    sans.extend(
        extra
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
    );
    // IP addresses in canonical form so that "::1" and "0:0::1" compare equal to what we read back.
    sans.into_iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map(|ip| ip.to_string())
                .unwrap_or(s.to_ascii_lowercase())
        })
        .collect()
}

fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

/// The UTC calendar day `days` from today as (year, month, day); certificate validity has day
/// granularity here (midnight UTC).
fn days_from_now(days: i64) -> (i32, u8, u8) {
    let date = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(days * 24))
        .unwrap_or(jiff::Timestamp::MAX)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    (
        i32::from(date.year()),
        date.month().unsigned_abs(),
        date.day().unsigned_abs(),
    )
}

/// Parameters for a certificate valid from yesterday (clock skew) for `days`.
fn leaf_params(days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let (y, m, d) = days_from_now(-1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = days_from_now(days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, non-zero leading byte: a DER INTEGER of exactly 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), PkiError> {
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert_pem = read_string(&cert_path)?;
            let key = KeyPair::from_pem(&read_string(&key_path)?)
                .map_err(cert_err(format!("parse {}", key_path.display())))?;
            debug!(path = %cert_path.display(), "loaded cluster CA");
            Ok((cert_pem, key))
        }
        (false, false) => {
            let key = KeyPair::generate().map_err(cert_err("generate CA key"))?;
            let mut params = leaf_params(CA_VALIDITY_DAYS);
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, "lotse-ca");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.use_authority_key_identifier_extension = false;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
            let cert = params.self_signed(&key).map_err(cert_err("self-sign CA"))?;
            write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
            info!(path = %cert_path.display(), "created cluster CA");
            Ok((cert.pem(), key))
        }
        _ => Err(PkiError::IncompleteCa(dir.to_path_buf())),
    }
}

fn load_or_create_serving(
    dir: &Path,
    ca_der: &CertificateDer<'static>,
    ca_key: &KeyPair,
    wanted: &BTreeSet<String>,
) -> Result<(String, String), PkiError> {
    let cert_path = dir.join("apiserver.crt");
    let key_path = dir.join("apiserver.key");
    if cert_path.exists() && key_path.exists() {
        let cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        match serving_cert_problem(&cert_pem, &key_pem, ca_der, wanted) {
            None => {
                debug!(path = %cert_path.display(), "loaded serving certificate");
                return Ok((cert_pem, key_pem));
            }
            Some(reason) => info!(%reason, "regenerating serving certificate"),
        }
    }
    let key = KeyPair::generate().map_err(cert_err("generate serving key"))?;
    let mut params = CertificateParams::new(wanted.iter().cloned().collect::<Vec<_>>())
        .map_err(cert_err("serving certificate SANs"))?;
    let base = leaf_params(LEAF_VALIDITY_DAYS);
    params.not_before = base.not_before;
    params.not_after = base.not_after;
    params.serial_number = base.serial_number;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = base.key_usages;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::from_ca_cert_der(ca_der, ca_key).map_err(cert_err("load CA issuer"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_err("sign serving certificate"))?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    write_file(&cert_path, cert_pem.as_bytes(), 0o644)?;
    info!(path = %cert_path.display(), sans = ?wanted, "created serving certificate");
    Ok((cert_pem, key_pem))
}

/// Why a stored serving certificate cannot be reused, or None if it can.
fn serving_cert_problem(
    cert_pem: &str,
    key_pem: &str,
    ca_der: &CertificateDer<'static>,
    wanted: &BTreeSet<String>,
) -> Option<String> {
    use rcgen::PublicKeyData;
    use x509_parser::extensions::GeneralName;

    let der = match CertificateDer::from_pem_slice(cert_pem.as_bytes()) {
        Ok(der) => der,
        Err(e) => return Some(format!("unreadable certificate: {e}")),
    };
    let cert = match x509_parser::parse_x509_certificate(&der) {
        Ok((_, cert)) => cert,
        Err(e) => return Some(format!("unparsable certificate: {e}")),
    };
    let ca = match x509_parser::parse_x509_certificate(ca_der) {
        Ok((_, ca)) => ca,
        Err(e) => return Some(format!("unparsable CA: {e}")),
    };
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Some("issued by another CA".into());
    }
    let key = match KeyPair::from_pem(key_pem) {
        Ok(key) => key,
        Err(e) => return Some(format!("unreadable key: {e}")),
    };
    if key.subject_public_key_info() != cert.public_key().raw {
        return Some("key does not match certificate".into());
    }
    let renew_at = jiff::Timestamp::now().as_second() + RENEW_BEFORE_DAYS * 86_400;
    if cert.validity().not_after.timestamp() < renew_at {
        return Some("expires soon".into());
    }
    let mut have = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    have.insert(dns.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        have.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    (&have != wanted).then(|| format!("SANs changed: have {have:?}, want {wanted:?}"))
}

fn load_or_create_sa_key(dir: &Path) -> Result<(String, String), PkiError> {
    let key_path = dir.join("sa.key");
    let pub_path = dir.join("sa.pub");
    let key = if key_path.exists() {
        KeyPair::from_pem(&read_string(&key_path)?)
            .map_err(cert_err(format!("parse {}", key_path.display())))?
    } else {
        let key = KeyPair::generate().map_err(cert_err("generate service-account key"))?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        info!(path = %key_path.display(), "created service-account signing key (ES256)");
        key
    };
    let public_pem = key.public_key_pem();
    if read_string(&pub_path).ok().as_deref() != Some(public_pem.as_str()) {
        write_file(&pub_path, public_pem.as_bytes(), 0o644)?;
    }
    Ok((key.serialize_pem(), public_pem))
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let io = |op| {
        move |source| PkiError::Io {
            op,
            path: dir.to_path_buf(),
            source,
        }
    };
    fs::create_dir_all(dir).map_err(io("create directory"))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("chmod"))
}

/// Writes `contents` to `path` atomically (temporary file + rename) with the given mode.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| PkiError::Io {
            op,
            path: p,
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io("create directory", parent))?;
    }
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    // The mode given to open() is filtered by the umask and ignored for an existing file.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("chmod", &tmp))?;
    file.write_all(contents).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn sans_of(cert_pem: &str) -> Vec<String> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::IPAddress(b) if b.len() == 4 => {
                    format!("IPAddress({})", Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
                other => other.to_string(),
            })
            .collect()
    }

    #[test]
    fn creates_then_reloads_and_regenerates_on_san_change() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let pki_dir = dir.path().join("pki");
        for key in ["ca.key", "apiserver.key", "sa.key"] {
            assert_eq!(mode(&pki_dir.join(key)), 0o600, "{key}");
        }
        assert_eq!(mode(&pki_dir), 0o700);
        let sans = sans_of(pki.serving_cert_pem()).join(" ");
        for want in [
            "DNSName(localhost)",
            "DNSName(kubernetes.default.svc.cluster.local)",
            "IPAddress(127.0.0.1)",
            "IPAddress(10.96.0.1)",
        ] {
            assert!(sans.contains(want), "{want} missing in {sans}");
        }

        let again = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(again.ca_cert_pem(), pki.ca_cert_pem());
        assert_eq!(again.serving_cert_pem(), pki.serving_cert_pem());
        assert_eq!(again.sa_private_key_pem(), pki.sa_private_key_pem());

        let extra =
            Pki::load_or_create(dir.path(), &["lotse.example".into(), "192.0.2.7".into()]).unwrap();
        assert_eq!(extra.ca_cert_pem(), pki.ca_cert_pem());
        assert_ne!(extra.serving_cert_pem(), pki.serving_cert_pem());
        let sans = sans_of(extra.serving_cert_pem()).join(" ");
        assert!(
            sans.contains("DNSName(lotse.example)") && sans.contains("IPAddress(192.0.2.7)"),
            "{sans}"
        );
        assert!(extra.rustls_server_config().is_ok());
    }

    #[test]
    fn ca_hash_is_sha256_of_the_public_key_info() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let hash = pki.ca_public_key_hash().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&pki.ca_key);
        let want = ring::digest::digest(&ring::digest::SHA256, &spki);
        let hex: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash, format!("sha256:{hex}"));
        assert_eq!(hash.len(), "sha256:".len() + 64);
        assert!(ca_public_key_hash("not a certificate").is_err());
    }

    #[test]
    fn too_many_organizations() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert!(matches!(
            pki.issue_client_cert("bob", &["a", "b", "c"]),
            Err(PkiError::TooManyOrganizations(3))
        ));
    }

    #[test]
    fn incomplete_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        Pki::load_or_create(dir.path(), &[]).unwrap();
        fs::remove_file(dir.path().join("pki/ca.key")).unwrap();
        assert!(matches!(
            Pki::load_or_create(dir.path(), &[]),
            Err(PkiError::IncompleteCa(_))
        ));
    }

    #[test]
    fn client_cert_and_admin_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let (cert_pem, _) = pki.issue_client_cert("alice", &["dev", "ops"]).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        let orgs: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["alice"]);
        assert_eq!(orgs, ["dev", "ops"]);
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .client_auth
        );

        let path = pki
            .write_admin_kubeconfig("https://127.0.0.1:6443")
            .unwrap();
        assert_eq!(path, dir.path().join("admin.kubeconfig"));
        assert_eq!(mode(&path), 0o600);
        let config: serde_json::Value =
            serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config["current-context"], "lotse");
        assert_eq!(config["contexts"][0]["context"]["user"], ADMIN_USER);
        assert_eq!(
            config["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        let ca = config["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .unwrap();
        assert_eq!(BASE64.decode(ca).unwrap(), pki.ca_cert_pem().as_bytes());
        let user_cert = config["users"][0]["user"]["client-certificate-data"]
            .as_str()
            .unwrap();
        let user_cert = String::from_utf8(BASE64.decode(user_cert).unwrap()).unwrap();
        let der = CertificateDer::from_pem_slice(user_cert.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let orgs: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(orgs, [ADMIN_GROUP]);
    }
}
