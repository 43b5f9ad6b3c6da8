//! Node bootstrap, server side, against real `apiserver`, `controllers` and `lotse` processes:
//! `lotse token create --print-join-command`, anonymous discovery through
//! `kube-public/cluster-info` and its JWS (checked with openssl's HMAC, not Lotse's code), the
//! CA hash (kubeadm's openssl recipe), bootstrap-token authentication (wrong and expired tokens
//! refused with 401), a kubelet client CSR auto-approved and signed (chain checked with
//! `openssl verify`), that certificate acting as `system:node:<name>`, the token cleaner, and
//! `kubectl certificate approve|deny`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use e2e::{ApiServer, Backend, Component, bin_dir, wait_until};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

const NODE: &str = "e2e-n1";

/// A client for the apiserver as `user` (a kubeconfig `user` entry; `{}` is anonymous).
async fn client_as(api: &ApiServer, user: Value) -> Result<kube::Client> {
    let ca = std::fs::read(api.data_dir().join("pki/ca.crt"))?;
    let doc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": format!("https://127.0.0.1:{}", api.port()),
            "certificate-authority-data": B64.encode(ca)}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    let kc: Kubeconfig = serde_json::from_value(doc)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

fn api_code<T>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(kube::Error::Api(e)) => e.code,
        Err(_) => 0,
    }
}

/// Runs a command, feeding `stdin`, and returns stdout (fails with stderr on error).
fn run(program: &str, args: &[&str], stdin: &[u8]) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// kubeadm's documented recipe for `--discovery-token-ca-cert-hash`.
fn openssl_ca_hash(ca_pem: &[u8]) -> Result<String> {
    let pubkey = run("openssl", &["x509", "-pubkey", "-noout"], ca_pem)?;
    let der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "der"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .map(|mut s| s.write_all(pubkey.as_bytes()))
                .transpose()?;
            c.wait_with_output()
        })?
        .stdout;
    let hex = run("openssl", &["dgst", "-sha256", "-hex"], &der)?;
    let hex = hex
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(format!("sha256:{hex}"))
}

/// A detached HS256 JWS recomputed with openssl: `<header>..<base64url(HMAC)>`.
fn openssl_detached_jws(header_b64: &str, content: &str, secret: &str) -> Result<String> {
    let input = format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(content));
    let mac = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-hmac", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .map(|mut s| s.write_all(input.as_bytes()))
                .transpose()?;
            c.wait_with_output()
        })?
        .stdout;
    ensure!(mac.len() == 32, "openssl HMAC gave {} bytes", mac.len());
    Ok(format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode(mac)))
}

/// A PKCS#10 request (PEM) and its key (PEM).
fn request(cn: &str, org: Option<&str>) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(o) = org {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, o);
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    Ok((params.serialize_request(&key)?.pem()?, key.serialize_pem()))
}

fn csr_object(
    name: &str,
    pem: &str,
    signer: &str,
    usages: &[&str],
) -> Result<CertificateSigningRequest> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": B64.encode(pem),
            "signerName": signer,
            "usages": usages,
            "expirationSeconds": 3600,
            // Ignored: the apiserver records who really asked.
            "username": "system:admin",
            "groups": ["system:masters"],
        },
    }))?)
}

fn has_condition(csr: &CertificateSigningRequest, t: &str) -> Option<(String, String)> {
    csr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

fn issued(csr: &CertificateSigningRequest) -> Option<String> {
    let c = csr.status.as_ref()?.certificate.as_ref()?;
    (!c.0.is_empty()).then(|| String::from_utf8_lossy(&c.0).to_string())
}

#[tokio::test]
#[ignore = "needs built apiserver, controllers and lotse binaries, openssl and kubectl; run via .ci/test"]
async fn token_discovery_csr_approval_and_signing() -> Result<()> {
    let api = ApiServer::start(Backend::Sqlite).await?;
    let admin = api.client().await?;
    let data_dir = api.data_dir().to_string_lossy().to_string();
    let ca_path = api.data_dir().join("pki/ca.crt");
    let ca_pem = std::fs::read(&ca_path)?;

    // Anonymous: cluster-info is public, nothing else is.
    let anonymous = client_as(&api, json!({})).await?;
    let public: Api<ConfigMap> = Api::namespaced(anonymous.clone(), "kube-public");
    let info = public
        .get("cluster-info")
        .await
        .context("anonymous GET cluster-info")?;
    let kubeconfig = info
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .cloned()
        .context("cluster-info has a kubeconfig")?;
    let kc: serde_yaml::Value = serde_yaml::from_str(&kubeconfig)?;
    let cluster = &kc["clusters"][0]["cluster"];
    ensure!(
        cluster["certificate-authority-data"].as_str() == Some(&B64.encode(&ca_pem)),
        "cluster-info names the cluster CA: {kubeconfig}"
    );
    let server = cluster["server"].as_str().unwrap_or_default().to_string();
    ensure!(server.ends_with(&format!(":{}", api.port())), "{server}");
    let secrets_anon: Api<Secret> = Api::namespaced(anonymous.clone(), "kube-system");
    ensure!(api_code(secrets_anon.list(&Default::default()).await) == 403);
    ensure!(api_code(public.get("kube-root-ca.crt").await) == 403);

    // The token and the join command.
    let out = run(
        bin_dir().join("lotse").to_str().unwrap_or("lotse"),
        &[
            "token",
            "create",
            "--data-dir",
            &data_dir,
            "--ttl",
            "1h",
            "--print-join-command",
        ],
        b"",
    )?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let [lotse, join, host, flag_t, token, flag_h, hash] = words.as_slice() else {
        bail!("unexpected join command {out:?}");
    };
    ensure!(
        (*lotse, *join, *flag_t, *flag_h)
            == ("lotse", "join", "--token", "--discovery-token-ca-cert-hash")
    );
    ensure!(server == format!("https://{host}"), "{server} vs {host}");
    ensure!(*hash == openssl_ca_hash(&ca_pem)?, "CA hash {hash}");
    let (id, secret) = token.split_once('.').context("token id.secret")?;
    let listed = run(
        bin_dir().join("lotse").to_str().unwrap_or("lotse"),
        &["token", "list", "--data-dir", &data_dir],
        b"",
    )?;
    ensure!(
        listed.contains(token) && listed.contains("authentication,signing"),
        "{listed}"
    );

    // An expired token and a wrong secret are refused (before the token cleaner runs, so the
    // expired Secret is still there).
    let expired: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bootstrap-token-oldold", "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": {
            "token-id": B64.encode("oldold"), "token-secret": B64.encode("0123456789abcdef"),
            "expiration": B64.encode("2020-01-01T00:00:00Z"),
            "usage-bootstrap-authentication": B64.encode("true"),
        },
    }))?;
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), "kube-system");
    admin_secrets
        .create(&PostParams::default(), &expired)
        .await?;
    for bad in ["oldold.0123456789abcdef", &format!("{id}.0000000000000000")] {
        let c = client_as(&api, json!({"token": bad})).await?;
        let csrs: Api<CertificateSigningRequest> = Api::all(c);
        ensure!(
            api_code(csrs.list(&Default::default()).await) == 401,
            "{bad} must be 401"
        );
    }

    // The controllers: bootstrap signer, token cleaner, approver, signer.
    let ca_key = api.data_dir().join("pki/ca.key");
    let _controllers = Component::start(
        &api,
        "controllers",
        "info,controllers=debug",
        &[
            "--leader-elect=false",
            "--controllers=csrapproving,csrsigning,bootstrapsigner,tokencleaner",
            "--approve-kubelet-serving",
            "--cluster-signing-cert-file",
            ca_path.to_str().unwrap_or_default(),
            "--cluster-signing-key-file",
            ca_key.to_str().unwrap_or_default(),
        ],
    )?;
    let key = format!("jws-kubeconfig-{id}");
    let jws = wait_until(
        "cluster-info signed for the token",
        Duration::from_secs(30),
        || {
            let public = public.clone();
            let key = key.clone();
            async move {
                let cm = public.get("cluster-info").await?;
                anyhow::Ok(cm.data.and_then(|d| d.get(&key).cloned()))
            }
        },
    )
    .await?;
    let header = jws.split('.').next().unwrap_or_default();
    let header_json: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
    ensure!(
        header_json == json!({"alg": "HS256", "kid": id}),
        "{header_json}"
    );
    ensure!(
        jws == openssl_detached_jws(header, &kubeconfig, secret)?,
        "JWS {jws}"
    );
    wait_until("expired token deleted", Duration::from_secs(30), || {
        let s = admin_secrets.clone();
        async move {
            anyhow::Ok(
                s.get_opt("bootstrap-token-oldold")
                    .await?
                    .is_none()
                    .then_some(()),
            )
        }
    })
    .await?;

    // TLS bootstrap with the token: the request is the bootstrap user's whatever it claims.
    let boot = client_as(&api, json!({"token": token})).await?;
    let boot_csrs: Api<CertificateSigningRequest> = Api::all(boot.clone());
    ensure!(
        api_code(
            Api::<Secret>::namespaced(boot.clone(), "kube-system")
                .list(&Default::default())
                .await
        ) == 403
    );
    let (pem, key_pem) = request(&format!("system:node:{NODE}"), Some("system:nodes"))?;
    let csr = csr_object(
        "node-csr-e2e",
        &pem,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
    )?;
    let created = boot_csrs.create(&PostParams::default(), &csr).await?;
    ensure!(created.spec.username == Some(format!("system:bootstrap:{id}")));
    ensure!(
        created
            .spec
            .groups
            .as_ref()
            .is_some_and(|g| g.contains(&"system:bootstrappers".to_string())
                && !g.contains(&"system:masters".to_string())),
        "{:?}",
        created.spec.groups
    );
    let done = wait_until(
        "node CSR approved and issued",
        Duration::from_secs(30),
        || {
            let c = boot_csrs.clone();
            async move {
                let csr = c.get("node-csr-e2e").await?;
                anyhow::Ok(issued(&csr).is_some().then_some(csr))
            }
        },
    )
    .await?;
    ensure!(
        has_condition(&done, "Approved")
            == Some((
                "AutoApproved".into(),
                "Auto approving kubelet client certificate after SubjectAccessReview.".into()
            )),
        "{:?}",
        done.status
    );
    let cert_pem = issued(&done).context("certificate")?;
    let dir = tempfile::tempdir()?;
    let cert_path = dir.path().join("node.crt");
    std::fs::write(&cert_path, &cert_pem)?;
    let verified = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            ca_path.to_str().unwrap_or_default(),
            cert_path.to_str().unwrap_or_default(),
        ],
        b"",
    )?;
    ensure!(verified.trim().ends_with(": OK"), "{verified}");
    let subject = run(
        "openssl",
        &["x509", "-noout", "-subject", "-ext", "extendedKeyUsage"],
        cert_pem.as_bytes(),
    )?;
    ensure!(
        subject.contains("O = system:nodes, CN = system:node:e2e-n1")
            && subject.contains("TLS Web Client Authentication"),
        "{subject}"
    );

    // The certificate acts as the node: it may register itself, and only itself.
    let node_client = client_as(
        &api,
        json!({"client-certificate-data": B64.encode(&cert_pem), "client-key-data": B64.encode(&key_pem)}),
    )
    .await?;
    let nodes: Api<Node> = Api::all(node_client);
    let node = |name: &str| -> Result<Node> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"},
                                     {"type": "Hostname", "address": name}]},
        }))?)
    };
    nodes
        .create(&PostParams::default(), &node(NODE)?)
        .await
        .context("the node registers itself with its new certificate")?;
    ensure!(
        api_code(
            nodes
                .create(&PostParams::default(), &node("someone-else")?)
                .await
        ) == 403
    );

    // The node's serving certificate (opt-in approval): its own name and addresses only.
    let node_csrs: Api<CertificateSigningRequest> = Api::all(nodes.clone().into_client());
    for (name, sans) in [
        ("serving-ok", vec![NODE, "10.0.0.5"]),
        ("serving-foreign", vec![NODE, "10.9.9.9"]),
    ] {
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("system:node:{NODE}"));
        let pem = params.serialize_request(&key)?.pem()?;
        let csr = csr_object(
            name,
            &pem,
            "kubernetes.io/kubelet-serving",
            &["digital signature", "key encipherment", "server auth"],
        )?;
        node_csrs.create(&PostParams::default(), &csr).await?;
    }
    let serving = wait_until(
        "serving certificate issued",
        Duration::from_secs(30),
        || {
            let c = node_csrs.clone();
            async move {
                let csr = c.get("serving-ok").await?;
                anyhow::Ok(issued(&csr).is_some().then_some(csr))
            }
        },
    )
    .await?;
    let text = run(
        "openssl",
        &["x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage"],
        issued(&serving).unwrap_or_default().as_bytes(),
    )?;
    ensure!(
        text.contains("DNS:e2e-n1")
            && text.contains("IP Address:10.0.0.5")
            && text.contains("TLS Web Server Authentication"),
        "{text}"
    );
    let foreign = node_csrs.get("serving-foreign").await?;
    ensure!(
        has_condition(&foreign, "Approved").is_none() && issued(&foreign).is_none(),
        "a SAN not of the node is not approved"
    );

    // A human decides other requests: deny one, approve another (kubectl certificate …).
    let admin_csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    for name in ["jane-denied", "jane-approved"] {
        let (pem, _) = request("jane", Some("devs"))?;
        let csr = csr_object(
            name,
            &pem,
            "kubernetes.io/kube-apiserver-client",
            &["client auth"],
        )?;
        admin_csrs.create(&PostParams::default(), &csr).await?;
    }
    // Nobody gets a system:masters certificate from the client signer.
    let (pem, _) = request("eve", Some("system:masters"))?;
    let masters = csr_object(
        "eve",
        &pem,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
    )?;
    match admin_csrs.create(&PostParams::default(), &masters).await {
        Err(kube::Error::Api(e)) if e.code == 403 => ensure!(
            e.message.contains("use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"),
            "{}",
            e.message
        ),
        other => bail!("system:masters request must be forbidden: {other:?}"),
    }
    let k = api.kubectl(33);
    let out = k.ok(&["certificate", "deny", "jane-denied"])?;
    ensure!(out.contains("denied"), "{out}");
    // Approving needs `approve` on the signer besides the approval subresource
    // (CertificateApproval admission).
    let roles = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "csr-approver"},
         "rules": [{"apiGroups": ["certificates.k8s.io"], "verbs": ["get", "list", "update", "patch"],
                    "resources": ["certificatesigningrequests", "certificatesigningrequests/approval", "certificatesigningrequests/status"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "csr-approver"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-approver"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol"}]},
    ]});
    k.ok_stdin(&["create", "-f", "-"], &roles.to_string())?;
    let refused = k.run(&["--as=carol", "certificate", "approve", "jane-approved"])?;
    ensure!(
        refused.code != 0
            && refused.stderr.contains(
                "user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""
            ),
        "{refused:?}"
    );
    let signer_role = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "client-signer-approver"},
         "rules": [{"apiGroups": ["certificates.k8s.io"], "verbs": ["approve"], "resources": ["signers"],
                    "resourceNames": ["kubernetes.io/kube-apiserver-client"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "client-signer-approver"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "client-signer-approver"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol"}]},
    ]});
    k.ok_stdin(&["create", "-f", "-"], &signer_role.to_string())?;
    let out = wait_until("carol may approve", Duration::from_secs(10), || {
        let k = &k;
        async move {
            anyhow::Ok(
                k.ok(&["--as=carol", "certificate", "approve", "jane-approved"])
                    .ok(),
            )
        }
    })
    .await?;
    ensure!(out.contains("approved"), "{out}");
    let approved = wait_until("jane's certificate issued", Duration::from_secs(30), || {
        let c = admin_csrs.clone();
        async move {
            let csr = c.get("jane-approved").await?;
            anyhow::Ok(issued(&csr).is_some().then_some(csr))
        }
    })
    .await?;
    ensure!(has_condition(&approved, "Approved").is_some_and(|(r, _)| r == "KubectlApprove"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let denied = admin_csrs.get("jane-denied").await?;
    ensure!(has_condition(&denied, "Denied").is_some_and(|(r, _)| r == "KubectlDeny"));
    ensure!(
        issued(&denied).is_none(),
        "a denied request is never signed"
    );
    // Older kubectls approve and deny the same way.
    for minor in [27, 30] {
        let kv = api.kubectl(minor);
        for verb in ["approve", "deny"] {
            let name = format!("jane-{verb}-{minor}");
            let (pem, _) = request("jane", Some("devs"))?;
            let csr = csr_object(
                &name,
                &pem,
                "kubernetes.io/kube-apiserver-client",
                &["client auth"],
            )?;
            admin_csrs.create(&PostParams::default(), &csr).await?;
            kv.ok(&["certificate", verb, &name])?;
            let got = admin_csrs.get(&name).await?;
            let t = if verb == "approve" {
                "Approved"
            } else {
                "Denied"
            };
            ensure!(
                has_condition(&got, t).is_some(),
                "kubectl 1.{minor} {verb}: {:?}",
                got.status
            );
        }
    }

    // /status cannot approve, and issuing needs `sign` on the signer (CertificateSigning).
    k.ok(&[
        "patch", "csr", "jane-denied", "--subresource=status", "--type=json", "-p",
        r#"[{"op": "add", "path": "/status/conditions/-", "value": {"type": "Approved", "status": "True"}}]"#,
    ])?;
    let denied = admin_csrs.get("jane-denied").await?;
    ensure!(
        has_condition(&denied, "Approved").is_none() && has_condition(&denied, "Denied").is_some(),
        "{:?}",
        denied.status
    );
    let cert_patch = json!({"status": {"certificate": B64.encode(&cert_pem)}}).to_string();
    let refused = k.run(&[
        "--as=carol",
        "patch",
        "csr",
        "jane-denied",
        "--subresource=status",
        "--type=merge",
        "-p",
        &cert_patch,
    ])?;
    ensure!(
        refused.code != 0
            && refused.stderr.contains(
                "user not permitted to sign requests with signerName \"kubernetes.io/kube-apiserver-client\""
            ),
        "{refused:?}"
    );
    // The request itself never changes; metadata does.
    k.ok(&["label", "csr", "jane-approved", "team=devs"])?;
    let replaced = json!({"spec": {"signerName": "example.com/other"}}).to_string();
    k.ok(&[
        "patch",
        "csr",
        "jane-approved",
        "--type=merge",
        "-p",
        &replaced,
    ])?;
    let after = admin_csrs.get("jane-approved").await?;
    ensure!(
        after.spec.signer_name == "kubernetes.io/kube-apiserver-client"
            && after
                .metadata
                .labels
                .is_some_and(|l| l.get("team").is_some_and(|v| v == "devs")),
        "spec kept, label set"
    );
    let table = k.ok(&["get", "csr"])?;
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    ensure!(
        table.starts_with("NAME")
            && table
                .lines()
                .next()
                .unwrap_or_default()
                .contains("REQUESTEDDURATION"),
        "{table}"
    );
    ensure!(
        row("node-csr-e2e").contains(&format!("system:bootstrap:{id}"))
            && row("node-csr-e2e").contains("Approved,Issued"),
        "{table}"
    );
    ensure!(row("jane-denied").ends_with("Denied"), "{table}");

    // A deleted token's signature goes too.
    let out = run(
        bin_dir().join("lotse").to_str().unwrap_or("lotse"),
        &["token", "delete", "--data-dir", &data_dir, token],
        b"",
    )?;
    ensure!(
        out.trim() == format!("bootstrap token {id:?} deleted"),
        "{out}"
    );
    wait_until(
        "signature of the deleted token removed",
        Duration::from_secs(30),
        || {
            let public = public.clone();
            let key = key.clone();
            async move {
                let cm = public.get("cluster-info").await?;
                anyhow::Ok(cm.data.is_some_and(|d| !d.contains_key(&key)).then_some(()))
            }
        },
    )
    .await?;

    // Kubernetes' validation messages reach kubectl.
    let bad = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "bad"},
        "spec": {"request": B64.encode("not a request"), "signerName": "example.com/x", "usages": ["client auth"]},
    });
    let err = k.run_stdin(&["create", "-f", "-"], &bad.to_string())?;
    ensure!(
        err.code != 0
            && err.stderr.contains("spec.request: Invalid value:")
            && err
                .stderr
                .contains("PEM block type must be CERTIFICATE REQUEST"),
        "{err:?}"
    );
    Ok(())
}
