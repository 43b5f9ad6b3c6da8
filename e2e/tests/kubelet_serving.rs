//! Kubelet serving certificates from the cluster CA, driven through `lotse up` and the real
//! kubectl (issue 13: "kubelet serving certificates through the kubernetes.io/kubelet-serving
//! signer, so the apiserver verifies every node's kubelet"): the kubelet asks with a
//! CertificateSigningRequest as `system:node:<name>`, the controllers approve it (the names are
//! the Node's own) and sign it; the kubelet's port then presents a certificate that verifies
//! against the cluster CA for the node's InternalIP (checked with `openssl s_client`, which
//! fails on the self-signed one served before); `kubectl logs` and `exec` go through the
//! apiserver's verifying kubelet client; after a restart the stored certificate is served again
//! without a new request.
//!
//! Needs root, Debian's `containerd`, `runc`, `containernetworking-plugins` and `openssl`, the
//! built binaries and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause`.
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use e2e::lotse::{Lotse, Node, node_ready_args, wait_for};

const NODE: &str = "serving-node";

/// `system:node:<node> <condition> <has certificate>` per kubelet-serving request.
const SERVING_CSRS: &str = "jsonpath={range .items[?(@.spec.signerName==\"kubernetes.io/kubelet-serving\")]}{.spec.username} {.status.conditions[0].type} {.status.certificate}{\"\\n\"}{end}";

/// What `openssl s_client` says about the certificate served at `ip:port`, verified against
/// the cluster CA for the IP address.
fn verify_served(ca: &std::path::Path, ip: &str, port: u16) -> anyhow::Result<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("{ip}:{port}")])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_ip", ip, "-verify_return_error"])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running openssl s_client")?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// [`verify_served`] until it verifies (the kubelet's port opens and its certificate arrives),
/// at most ~10 s; the last answer either way.
fn await_verified(ca: &std::path::Path, ip: &str, port: u16) -> anyhow::Result<String> {
    let mut last = String::new();
    for _ in 0..50 {
        last = verify_served(ca, ip, port)?;
        if last.contains("Verify return code: 0 (ok)") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(last)
}

#[test]
#[ignore = "needs root, containerd, openssl, built binaries and images"]
fn kubelet_serves_a_ca_signed_certificate_the_apiserver_verifies() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut node = Node::start_with_root_ca(tmp.path(), NODE)?;
    let k = node.kubectl.clone();
    let ca = node.data.join("pki/ca.crt");

    // The request: made by the node itself, approved for its own names, signed.
    let csrs = wait_for(
        &k,
        &["get", "csr", "-o", SERVING_CSRS],
        "the kubelet's serving certificate request approved and signed",
        Duration::from_secs(30),
        |s| {
            s.lines().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() == 3
                    && f[0] == format!("system:node:{NODE}")
                    && f[1] == "Approved"
                    && !f[2].is_empty()
            })
        },
    )
    .with_context(|| node.lotse.log())?;
    let requests = csrs.lines().count();
    let described = k.ok(&["get", "csr"])?;
    ensure!(
        described.contains("kubernetes.io/kubelet-serving")
            && described.contains("Approved,Issued"),
        "kubectl get csr: {described}"
    );

    // What the kubelet's port presents verifies against the cluster CA for the InternalIP.
    let ip = k.ok(&[
        "get",
        "node",
        NODE,
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ])?;
    let ip = ip.trim().to_string();
    let last = await_verified(&ca, &ip, node.kubelet_port)?;
    ensure!(
        last.contains("Verify return code: 0 (ok)"),
        "the kubelet's certificate does not verify against the cluster CA: {last}"
    );
    ensure!(
        last.contains(&format!("CN = system:node:{NODE}"))
            || last.contains(&format!("CN=system:node:{NODE}")),
        "subject: {last}"
    );

    // The apiserver talks to the kubelet through its verifying client: logs and exec work.
    k.ok(&[
        "run",
        "hello",
        "--image=busybox",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo served-through-a-verified-kubelet; sleep 3600",
    ])?;
    wait_for(
        &k,
        &["logs", "hello"],
        "kubectl logs through the verified kubelet",
        Duration::from_secs(60),
        |s| s.contains("served-through-a-verified-kubelet"),
    )?;
    let out = k.ok(&["exec", "hello", "--", "echo", "exec-ok"])?;
    ensure!(out.trim() == "exec-ok", "exec: {out}");

    // Restart: the stored certificate is served again, no new request.
    node.lotse.stop()?;
    node.lotse = Lotse::start(&node.data, &node.args)?;
    wait_for(
        &k,
        &node_ready_args(NODE),
        "node Ready after restart",
        Duration::from_secs(60),
        |s| s.trim() == "True",
    )?;
    let served = await_verified(&ca, &ip, node.kubelet_port)?;
    ensure!(
        served.contains("Verify return code: 0 (ok)"),
        "after restart: {served}"
    );
    let after = k.ok(&["get", "csr", "-o", SERVING_CSRS])?;
    ensure!(
        after.lines().count() == requests,
        "a restart asked again: before {csrs}, after {after}"
    );
    let out = k.ok(&["exec", "hello", "--", "echo", "exec-ok"])?;
    ensure!(out.trim() == "exec-ok", "exec after restart: {out}");
    Ok(())
}
