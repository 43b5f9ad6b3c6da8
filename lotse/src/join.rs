//! `lotse join`: makes this machine a node of a running cluster, as `kubeadm join` does it.
//!
//! 1. **Discovery** (trust nothing yet): the `cluster-info` ConfigMap in `kube-public` is read
//!    anonymously over TLS without verifying the server. Its kubeconfig is trusted only when its
//!    detached JWS `jws-kubeconfig-<token-id>` (HS256, keyed with the token's secret, kept by the
//!    bootstrap signer) verifies, and the CA it carries matches a pinned
//!    `--discovery-token-ca-cert-hash` (SHA-256 of the CA's SubjectPublicKeyInfo).
//! 2. **TLS bootstrap**: with that CA and the bootstrap token the node asks for its client
//!    certificate through a `CertificateSigningRequest` (signer
//!    `kubernetes.io/kube-apiserver-client-kubelet`, subject `system:node:<name>` in
//!    `system:nodes`), which the csrapproving controller approves and the signer signs.
//! 3. **Run**: the kubelet (with its own containerd) and the node network agent run with that
//!    identity until the process is stopped; running `lotse join` again resumes the node with the
//!    credentials it already has. The cluster DNS and the ingress controller are no business of
//!    the node's beyond their images: `docker.io/lotse/dns:<version>` and
//!    `docker.io/lotse/ingress:<version>` are built into the node's image dir from the
//!    `lotse-dns` and `lotse-ingress` beside `lotse`, for the `coredns` pods the scheduler may
//!    place here and the `lotse-ingress` DaemonSet's pod.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use apiserver::authn::bootstrap_token::BootstrapToken;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::Parser;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::images::build_images;
use crate::install::install_missing;

/// The credentials a joined node keeps in its data dir.
pub const KUBECONFIG: &str = "kubelet.kubeconfig";

#[derive(Parser, Clone)]
pub struct JoinArgs {
    /// The cluster's apiserver, `<host>:<port>` (as `lotse token create --print-join-command`
    /// prints it on the server).
    pub server: String,
    /// Bootstrap token `<id>.<secret>` (`lotse token create` on the server); not needed by a
    /// node that has joined before.
    #[arg(long, env = "LOTSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Pin of the cluster CA, `sha256:<hex>` (repeatable): the joining node trusts the server
    /// only if its CA's public key has this hash.
    #[arg(
        long = "discovery-token-ca-cert-hash",
        env = "LOTSE_CA_CERT_HASH",
        value_delimiter = ','
    )]
    pub ca_cert_hashes: Vec<String>,
    /// Join without pinning the CA (anyone who can answer at the address could pose as the
    /// cluster).
    #[arg(long)]
    pub discovery_token_unsafe_skip_ca_verification: bool,
    /// This node's data: its credentials, kubelet root dir (containerd, pods, images) and log.
    #[arg(long, env = "LOTSE_DATA_DIR", default_value = "/var/lib/lotse")]
    pub data_dir: PathBuf,
    /// Name of the node (default: the host name).
    #[arg(long, env = "LOTSE_NODE_NAME")]
    pub node_name: Option<String>,
    /// The cluster's pod network (the server's --cluster-cidr).
    #[arg(long, env = "LOTSE_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Address of the cluster DNS Service (pods' nameserver).
    #[arg(long, env = "LOTSE_CLUSTER_DNS", default_value = "10.96.0.10")]
    pub cluster_dns: IpAddr,
    /// The cluster's DNS domain.
    #[arg(long, env = "LOTSE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Cgroup under which the pods' `kubepods/` cgroups go (nodes sharing one machine need one
    /// each).
    #[arg(long, env = "LOTSE_CGROUP_ROOT", default_value = "/")]
    pub cgroup_root: String,
    /// HTTPS port of the kubelet API.
    #[arg(long, env = "LOTSE_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Image archives to import (default: <data-dir>/kubelet/images, built when empty).
    #[arg(long, env = "LOTSE_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// Images built when the image dir has none (empty: build nothing).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "busybox,pause,debian,nginx"
    )]
    pub images: Vec<String>,
    /// nftables table of the node network agent.
    #[arg(long, env = "LOTSE_NFTABLES_TABLE", default_value = "lotse")]
    pub nftables_table: String,
    /// How pods reach the other nodes' pods (k3s's flag): `host-gw` (routes through the nodes'
    /// addresses, one L2 segment) or `vxlan` (encapsulated, VNI 1, UDP 8472). Every node of a
    /// cluster must use the same.
    #[arg(
        long,
        env = "LOTSE_FLANNEL_BACKEND",
        value_enum,
        default_value = "host-gw"
    )]
    pub flannel_backend: cni_plugin::agent::routes::Backend,
    /// Don't install missing Debian packages (see `lotse up --help`).
    #[arg(long, env = "LOTSE_NO_INSTALL")]
    pub no_install: bool,
    /// How long to wait for the node's certificate to be approved and signed.
    #[arg(long, default_value = "300", value_name = "SECONDS")]
    pub csr_timeout: u64,
}

/// Parses a bootstrap token `<id>.<secret>`, or says which form it needs (kubeadm's words).
pub fn parse_token(s: &str) -> anyhow::Result<BootstrapToken> {
    BootstrapToken::parse(s).with_context(|| {
        format!(
            "the bootstrap token {s:?} was not of the form \"^([a-z0-9]{{6}})\\\\.([a-z0-9]{{16}})$\""
        )
    })
}

/// Checks a detached JWS (`<header>..<signature>`, RFC 7515 appendix F) over `content`, HS256
/// keyed with the token's secret, with `kid` the token id — what Kubernetes' bootstrap signer
/// writes as `jws-kubeconfig-<id>`.
pub fn verify_detached_jws(jws: &str, content: &str, token: &BootstrapToken) -> bool {
    let mut parts = jws.split('.');
    let (Some(header), Some(""), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(h) = URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    let Ok(h) = serde_json::from_slice::<serde_json::Value>(&h) else {
        return false;
    };
    if h["alg"] != "HS256" || h.get("kid").is_some_and(|k| *k != *token.id) {
        return false;
    }
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(content));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.secret.as_bytes());
    ring::hmac::verify(&key, signing_input.as_bytes(), &sig).is_ok()
}

/// A kube client for `server` from a kubeconfig document.
async fn client(doc: serde_json::Value) -> anyhow::Result<kube::Client> {
    let kc: kube::config::Kubeconfig = serde_json::from_value(doc)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

fn cluster_doc(server: &str, ca_pem: Option<&str>, token: Option<&str>) -> serde_json::Value {
    let mut cluster = json!({ "server": server });
    match ca_pem {
        Some(ca) => cluster["certificate-authority-data"] = json!(STANDARD.encode(ca)),
        None => cluster["insecure-skip-tls-verify"] = json!(true),
    }
    let user = match token {
        Some(t) => json!({ "token": t }),
        None => json!({}),
    };
    json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    })
}

/// How long discovery waits for `cluster-info` to carry the token's signature.
const SIGNATURE_WAIT: Duration = Duration::from_secs(5);

/// Discovery: the cluster CA (PEM) that `cluster-info` carries, once its signature and pin are
/// verified. Every refusal names which check failed.
pub async fn discover(
    server_url: &str,
    token: &BootstrapToken,
    pins: &[String],
    skip_ca_verification: bool,
) -> anyhow::Result<String> {
    if pins.is_empty() && !skip_ca_verification {
        bail!(
            "using token-based discovery without --discovery-token-ca-cert-hash can be unsafe; pass --discovery-token-unsafe-skip-ca-verification to continue"
        );
    }
    for p in pins {
        let hex = p.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("invalid --discovery-token-ca-cert-hash {p:?}: want sha256:<64 hex digits>");
        }
    }
    let insecure = client(cluster_doc(server_url, None, None)).await?;
    let cms: Api<ConfigMap> = Api::namespaced(insecure, "kube-public");
    // A token created a moment ago is signed by the controllers' bootstrap signer shortly
    // after: like kubeadm, look again for a while before calling the token unknown.
    let deadline = tokio::time::Instant::now() + SIGNATURE_WAIT;
    let (data, sig) = loop {
        let cm = match cms.get("cluster-info").await {
            Ok(cm) => cm,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                bail!("the cluster-info ConfigMap was not found in kube-public on {server_url}")
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading cluster-info from {server_url}"));
            }
        };
        let data = cm.data.unwrap_or_default();
        if let Some(sig) = data.get(&format!("jws-kubeconfig-{}", token.id)).cloned() {
            break (data, sig);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "token id {:?} is invalid for this cluster or it has expired. Use \"lotse token create\" on the server to create a new valid token",
                token.id
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let sig = &sig;
    let kubeconfig = data
        .get("kubeconfig")
        .context("cluster-info has no kubeconfig")?;
    if !verify_detached_jws(sig, kubeconfig, token) {
        bail!(
            "failed to verify JWS signature of received cluster info object, can't trust this API Server (wrong token secret)"
        );
    }
    let kc: kube::config::Kubeconfig =
        serde_yaml::from_str(kubeconfig).context("cluster-info's kubeconfig")?;
    let ca_b64 = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .context("cluster-info's kubeconfig has no certificate-authority-data")?;
    let ca_pem = String::from_utf8(STANDARD.decode(ca_b64.trim())?)
        .context("certificate-authority-data is not PEM")?;
    let hash = apiserver::pki::ca_public_key_hash(&ca_pem)?;
    if !skip_ca_verification && !pins.iter().any(|p| p.eq_ignore_ascii_case(&hash)) {
        bail!(
            "cluster CA found in cluster-info ConfigMap is invalid: none of the public keys {hash:?} are pinned (wrong --discovery-token-ca-cert-hash)"
        );
    }
    Ok(ca_pem)
}

/// TLS bootstrap: asks for the node's client certificate with the bootstrap token and returns
/// (certificate PEM, key PEM) once it is approved and signed.
pub async fn request_client_certificate(
    server_url: &str,
    ca_pem: &str,
    token: &BootstrapToken,
    node_name: &str,
    timeout: Duration,
) -> anyhow::Result<(String, String)> {
    let boot = client(cluster_doc(
        server_url,
        Some(ca_pem),
        Some(&token.to_string()),
    ))
    .await?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        rcgen::DnValue::Utf8String("system:nodes".into()),
    );
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        rcgen::DnValue::Utf8String(format!("system:node:{node_name}")),
    );
    let request = params.serialize_request(&key)?.pem()?;
    // The kubelet names its request after a digest of what it asks for.
    let digest = ring::digest::digest(
        &ring::digest::SHA512,
        format!(
            "{}|system:node:{node_name}|system:nodes",
            key.public_key_pem()
        )
        .as_bytes(),
    );
    let name = format!(
        "node-csr-{}",
        &URL_SAFE_NO_PAD.encode(digest.as_ref())[..43]
    );
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": STANDARD.encode(&request),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        },
    }))?;
    let csrs: Api<CertificateSigningRequest> = Api::all(boot);
    match csrs.create(&PostParams::default(), &csr).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 401 => bail!(
            "the server refused the bootstrap token {:?}: unknown or expired (Unauthorized)",
            token.id
        ),
        Err(e) => return Err(e).context("creating the node's CertificateSigningRequest"),
    }
    eprintln!("lotse: waiting for CertificateSigningRequest {name} to be approved and signed");
    let t0 = Instant::now();
    loop {
        let got = csrs.get(&name).await?;
        let status = got.status.unwrap_or_default();
        for c in status.conditions.unwrap_or_default() {
            if (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True" {
                bail!(
                    "the certificate signing request {name} was {}: {} {}",
                    c.type_.to_lowercase(),
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default()
                );
            }
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert = String::from_utf8(cert.0).context("issued certificate is not PEM")?;
            return Ok((cert, key.serialize_pem()));
        }
        if t0.elapsed() > timeout {
            bail!(
                "timed out after {timeout:?} waiting for CertificateSigningRequest {name} (approve it on the server: kubectl certificate approve {name})"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn server_url(server: &str) -> String {
    if server.starts_with("https://") {
        server.trim_end_matches('/').to_string()
    } else {
        format!("https://{server}")
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "node".into())
}

/// The node's kubeconfig: the one it has, or a new one through discovery and TLS bootstrap.
pub async fn credentials(a: &JoinArgs, node_name: &str) -> anyhow::Result<PathBuf> {
    let path = a.data_dir.join(KUBECONFIG);
    if path.is_file() {
        eprintln!("lotse: node {node_name} resumes with {}", path.display());
        return Ok(path);
    }
    let Some(token) = a.token.as_deref() else {
        bail!(
            "--token is required: this node has not joined yet ({} is missing)",
            path.display()
        );
    };
    let token = parse_token(token)?;
    let url = server_url(&a.server);
    let ca = discover(
        &url,
        &token,
        &a.ca_cert_hashes,
        a.discovery_token_unsafe_skip_ca_verification,
    )
    .await?;
    eprintln!("lotse: cluster CA verified; requesting the node's client certificate");
    let (cert, key) = request_client_certificate(
        &url,
        &ca,
        &token,
        node_name,
        Duration::from_secs(a.csr_timeout),
    )
    .await?;
    std::fs::create_dir_all(&a.data_dir)?;
    let doc =
        apiserver::pki::kubeconfig(&url, &format!("system:node:{node_name}"), &ca, &cert, &key);
    write_private(&path, serde_yaml::to_string(&doc)?.as_bytes())?;
    write_private(&a.data_dir.join("ca.crt"), ca.as_bytes())?;
    Ok(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub async fn join(a: JoinArgs) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&a.data_dir)?;
    let a = JoinArgs {
        data_dir: data_dir.clone(),
        ..a
    };
    let node_name = a.node_name.clone().unwrap_or_else(host_name);
    // Discovery and the node's certificate first: a refused join installs and leaves nothing.
    let kubeconfig = credentials(&a, &node_name).await?;
    let root_dir = data_dir.join("kubelet");
    let images_dir = a
        .images_dir
        .clone()
        .unwrap_or_else(|| root_dir.join("images"));
    let has_images = std::fs::read_dir(&images_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    let images: Vec<String> = a.images.iter().filter(|i| !i.is_empty()).cloned().collect();
    let build = !has_images && !images.is_empty();
    if !a.no_install {
        let mut tools = if build { images.clone() } else { Vec::new() };
        tools.push("dns".into());
        tools.push("ingress".into());
        install_missing(true, &tools)?;
    }
    if build {
        build_images(&images_dir, false, &images)?;
    }
    // The cluster DNS pods may be scheduled here and the ingress controller's run on every
    // node: their images come from the lotse-dns and lotse-ingress beside this binary, as on
    // the server (no registry).
    for (image, what) in [
        (crate::images::DNS, "cluster DNS"),
        (crate::images::INGRESS, "ingress controller"),
    ] {
        if let Err(e) = image.ensure(&images_dir) {
            eprintln!(
                "lotse: warning: no {what} image on node {node_name}, its pods cannot start: {e:#}"
            );
        }
    }
    // The kubelet imports what is in <root>/images; a shared archive dir is linked there.
    if a.images_dir.is_some() {
        std::fs::create_dir_all(&root_dir)?;
        let link = root_dir.join("images");
        if std::fs::read_link(&link).ok().as_deref() != Some(images_dir.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&images_dir, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    let client = crate::up::client_from(&kubeconfig).await?;
    let ca_pem = std::fs::read_to_string(data_dir.join("ca.crt"))
        .with_context(|| format!("reading {}", data_dir.join("ca.crt").display()))?;

    let mut agent = cni_plugin::agent::AgentConfig::new(node_name.clone());
    agent.cluster_cidr = a.cluster_cidr;
    agent.table = a.nftables_table.clone();
    agent.flannel_backend = Some(a.flannel_backend);
    // The server's agent writes LoadBalancer status; one writer is enough.
    agent.service_lb = false;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let agent_client = client.clone();
    let agent_task = tokio::spawn(cni_plugin::agent::run(
        agent,
        agent_client,
        stopped(stop_rx.clone()),
    ));
    let kcfg = crate::up::kubelet_config(crate::up::NodeSettings {
        node_name: node_name.clone(),
        root_dir,
        pod_cidr: None,
        port: a.kubelet_port,
        ca_pem: &ca_pem,
        registry_config: Some(data_dir.join("registries.yaml")).filter(|p| p.is_file()),
        cluster_dns: vec![a.cluster_dns.to_string()],
        cluster_domain: a.cluster_domain.clone(),
        cgroup_root: a.cgroup_root.clone(),
    });
    let kubelet = tokio::spawn(kubelet::run(kcfg, client, stopped(stop_rx)));
    eprintln!("lotse: node {node_name} joined {}", a.server);
    tokio::select! {
        _ = crate::up::shutdown_signal() => eprintln!("lotse: stopping node {node_name}"),
        r = kubelet => {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e).context("kubelet"),
                Err(e) => bail!("kubelet: {e}"),
            }
            return Ok(());
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), agent_task).await;
    // The kubelet task stops its containerd; give it the time it takes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> BootstrapToken {
        parse_token("abcdef.0123456789abcdef").unwrap()
    }

    #[test]
    fn tokens_parse_or_say_what_form_they_need() {
        assert_eq!(token().id, "abcdef");
        for bad in [
            "abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123",
        ] {
            let e = parse_token(bad).unwrap_err().to_string();
            assert!(e.contains("was not of the form"), "{bad}: {e}");
        }
    }

    /// A signature made as Kubernetes' `ComputeDetachedSignature` makes it: protected header
    /// `{"alg":"HS256","kid":"<id>"}`, HS256 keyed with the secret, payload elided.
    fn sign(content: &str, t: &BootstrapToken) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, t.id));
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(content));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, t.secret.as_bytes());
        let sig = ring::hmac::sign(&key, input.as_bytes());
        format!("{header}..{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[test]
    fn detached_jws_verifies_only_with_the_right_secret_and_content() {
        let t = token();
        let sig = sign("kubeconfig", &t);
        assert!(verify_detached_jws(&sig, "kubeconfig", &t));
        assert!(!verify_detached_jws(&sig, "kubeconfig2", &t));
        let other = parse_token("abcdef.0123456789abcdee").unwrap();
        assert!(!verify_detached_jws(&sig, "kubeconfig", &other));
        // An attached (non-detached) form or garbage is not accepted.
        assert!(!verify_detached_jws(
            &sig.replace("..", ".x."),
            "kubeconfig",
            &t
        ));
        assert!(!verify_detached_jws("x", "kubeconfig", &t));
        // kid must name this token.
        let wrong_kid = parse_token("zzzzzz.0123456789abcdef").unwrap();
        assert!(!verify_detached_jws(&sig, "kubeconfig", &wrong_kid));
    }
}
