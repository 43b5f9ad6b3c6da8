//! The built-in ingress controller on a one-node `lotse up` (issue 14, point 4), running as the
//! host-network pod of the `kube-system/lotse-ingress` DaemonSet, driven by the real kubectl
//! and checked with real HTTP and TLS from the test process: two hosts and two
//! paths to two Services, Exact before Prefix, a backend without endpoints answering 503, an
//! unknown host 404 until a default backend is added, TLS by SNI from a `kubernetes.io/tls`
//! Secret signed by a test CA, the node address in `kubectl get ingress`, and route changes
//! taking effect on a keep-alive connection that stays open.
//!
//! Needs root, containerd, runc, containernetworking-plugins, nftables, the built binaries
//! (`cargo build --workspace --bins`) and the busybox and pause images. Takes about 20 s.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::lotse::{Node, random_pod_cidr, wait_for};

const APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: alpha}
spec:
  selector: {matchLabels: {app: alpha}}
  template:
    metadata: {labels: {app: alpha}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "mkdir -p /www/api && echo alpha > /www/index.html && echo alpha-api > /www/api/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: beta}
spec:
  selector: {matchLabels: {app: beta}}
  template:
    metadata: {labels: {app: beta}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "mkdir -p /www/api && echo beta > /www/index.html && echo beta-api > /www/api/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: alpha}
spec:
  selector: {app: alpha}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: beta}
spec:
  selector: {app: beta}
  ports: [{name: web, port: 8000, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
"#;

/// No ingressClassName: the DefaultIngressClass admission gives it `lotse`.
const INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  tls: [{hosts: [secure.test], secretName: secure-tls}]
  rules:
  - host: a.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: alpha, port: {number: 80}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: beta, port: {name: web}}}}
  - host: b.test
    http:
      paths:
      - {path: /, pathType: ImplementationSpecific, backend: {service: {name: beta, port: {number: 8000}}}}
      - {path: /down, pathType: Exact, backend: {service: {name: nobody, port: {number: 80}}}}
  - host: secure.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: alpha, port: {name: http}}}}
"#;

const FALLBACK: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: fallback}
spec:
  ingressClassName: lotse
  defaultBackend: {service: {name: beta, port: {number: 8000}}}
"#;

const BAD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bad}
spec:
  rules:
  - host: 10.0.0.1
    http:
      paths:
      - {path: api, backend: {service: {name: alpha, port: {number: 80}}}}
"#;

/// One HTTP/1.1 response read from a keep-alive connection: (status, body).
fn read_response(r: &mut impl BufRead) -> anyhow::Result<(u16, String)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("status line {line:?}"))?
        .parse()?;
    let (mut len, mut chunked) = (None, false);
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = Some(v.trim().parse::<usize>()?),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16)?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok((status, String::from_utf8_lossy(&body).trim().to_string()))
}

/// A keep-alive HTTP/1.1 connection.
struct Conn<S: Read + Write> {
    r: BufReader<S>,
}

impl<S: Read + Write> Conn<S> {
    fn get(&mut self, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: e2e\r\n\r\n");
        self.r.get_mut().write_all(req.as_bytes())?;
        self.r.get_mut().flush()?;
        read_response(&mut self.r)
    }
}

fn connect(addr: &str) -> anyhow::Result<Conn<TcpStream>> {
    let s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(Conn {
        r: BufReader::new(s),
    })
}

/// A fresh connection's answer to one request.
fn get(addr: &str, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    connect(addr)?.get(host, path)
}

/// Polls `f` until it returns `want` (30 s).
fn until(
    what: &str,
    want: (u16, &str),
    mut f: impl FnMut() -> anyhow::Result<(u16, String)>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match f() {
            Ok((s, b)) if s == want.0 && b == want.1 => return Ok(()),
            Ok(got) => last = format!("{got:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{what}: want {want:?}, last {last}")
}

/// The test CA and a certificate for `secure.test` it signed: (CA DER, cert PEM, key PEM).
fn test_pki() -> anyhow::Result<(rustls::pki_types::CertificateDer<'static>, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "lotse-e2e-ingress-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), &ca_key)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["secure.test".to_string()])?.signed_by(&key, &issuer)?;
    Ok((ca_cert.der().clone(), leaf.pem(), key.serialize_pem()))
}

#[test]
#[ignore = "needs containerd, nftables, root"]
fn ingress_routes_by_host_and_path() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let (http_port, https_port) = (e2e::free_port()?, e2e::free_port()?);
    // SAFETY: the only test of this binary; set before any thread reads the environment.
    unsafe {
        std::env::set_var("LOTSE_INGRESS_HTTP_PORT", http_port.to_string());
        std::env::set_var("LOTSE_INGRESS_HTTPS_PORT", https_port.to_string());
        // The harness disables the ingress controller for the other node tests.
        std::env::set_var("LOTSE_DISABLE_INGRESS", "false");
    }
    let tmp = tempfile::tempdir()?;
    let node = Node::start(
        tmp.path(),
        "ingress-node",
        &random_pod_cidr()?,
        &["busybox.tar", "pause.tar"],
    )?;
    let k = &node.kubectl;
    let log = || node.lotse.log();
    k.ok_stdin(&["apply", "-f", "-"], APPS)?;
    // Kubernetes' validation messages.
    let bad = k.run_stdin(&["apply", "-f", "-"], BAD)?.failure()?.stderr;
    for msg in [
        "spec.rules[0].host: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address",
        "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
    ] {
        assert!(bad.contains(msg), "{bad}");
    }
    let (ca, crt, key) = test_pki()?;
    std::fs::write(tmp.path().join("tls.crt"), &crt)?;
    std::fs::write(tmp.path().join("tls.key"), &key)?;
    let cert_arg = format!("--cert={}", tmp.path().join("tls.crt").display());
    let key_arg = format!("--key={}", tmp.path().join("tls.key").display());
    k.ok(&["create", "secret", "tls", "secure-tls", &cert_arg, &key_arg])?;
    k.ok_stdin(&["apply", "-f", "-"], INGRESS)?;
    let class = k.ok(&[
        "get",
        "ingress",
        "web",
        "-o",
        "jsonpath={.spec.ingressClassName}",
    ])?;
    assert_eq!(class.trim(), "lotse");
    let classes = k.ok(&["get", "ingressclass"])?;
    assert!(classes.contains("lotse.dev/ingress"), "{classes}");
    let ip = k.ok(&[
        "get",
        "node",
        "ingress-node",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ])?;
    let ip = ip.trim().to_string();
    wait_for(
        k,
        &["get", "ingress", "web"],
        "ADDRESS in kubectl get ingress",
        Duration::from_secs(30),
        |out| {
            out.lines()
                .any(|l| l.contains(&ip) && l.contains("80, 443"))
        },
    )
    .with_context(log)?;
    let table = k.ok(&["get", "ing"])?;
    assert!(table.starts_with("NAME"), "{table}");
    for col in ["CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"] {
        assert!(table.contains(col), "{table}");
    }
    // The controller runs as a host-network pod of the lotse-ingress DaemonSet, one per node.
    wait_for(
        k,
        &[
            "get",
            "daemonset",
            "-n",
            "kube-system",
            "lotse-ingress",
            "-o",
            "jsonpath={.status.numberReady}/{.status.desiredNumberScheduled}",
        ],
        "the lotse-ingress DaemonSet's pod ready",
        Duration::from_secs(60),
        |out| out.trim() == "1/1",
    )
    .with_context(log)?;
    let pod = k.ok(&[
        "get",
        "pod",
        "-n",
        "kube-system",
        "-l",
        "app.kubernetes.io/name=lotse-ingress",
        "-o",
        "jsonpath={.items[0].spec.hostNetwork} {.items[0].status.podIP} {.items[0].spec.containers[0].image}",
    ])?;
    assert_eq!(
        pod.trim(),
        format!(
            "true {ip} docker.io/lotse/ingress:{}",
            env!("CARGO_PKG_VERSION")
        ),
        "{pod}"
    );
    let addr = format!("{ip}:{http_port}");
    // Host and path routing, once the pods are ready.
    until("a.test /", (200, "alpha"), || get(&addr, "a.test", "/")).with_context(log)?;
    until("a.test /api/", (200, "beta-api"), || {
        get(&addr, "a.test", "/api/")
    })?;
    assert_eq!(
        get(&addr, "a.test", "/apix")?.0,
        404,
        "/apix is not under /api"
    );
    assert_eq!(get(&addr, "b.test:80", "/")?, (200, "beta".into()));
    assert_eq!(get(&addr, "b.test", "/api/")?, (200, "beta-api".into()));
    // Exact /down goes to a Service without endpoints; /down/ does not match it.
    assert_eq!(get(&addr, "b.test", "/down")?.0, 503);
    assert_eq!(get(&addr, "b.test", "/down/")?.0, 404);
    // TLS with SNI and the test CA.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls_get = || -> anyhow::Result<(u16, String)> {
        let tcp = TcpStream::connect_timeout(
            &format!("{ip}:{https_port}").parse()?,
            Duration::from_secs(3),
        )?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let conn = rustls::ClientConnection::new(Arc::new(cfg.clone()), "secure.test".try_into()?)?;
        let mut c = Conn {
            r: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        };
        c.get("secure.test", "/")
    };
    until("https secure.test", (200, "alpha"), tls_get).with_context(log)?;
    // Route changes on an open keep-alive connection: no default backend yet (404), then one.
    let mut c = connect(&addr)?;
    assert_eq!(c.get("a.test", "/")?, (200, "alpha".into()));
    assert_eq!(c.get("unknown.test", "/")?.0, 404);
    k.ok_stdin(&["apply", "-f", "-"], FALLBACK)?;
    until(
        "default backend on the open connection",
        (200, "beta"),
        || c.get("unknown.test", "/"),
    )?;
    k.ok(&[
        "patch",
        "ingress",
        "web",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/rules/0/http/paths/0/backend", "value": {"service": {"name": "beta", "port": {"number": 8000}}}}]"#,
    ])?;
    until(
        "a.test / moved on the open connection",
        (200, "beta"),
        || c.get("a.test", "/"),
    )?;
    println!("ingress e2e: {:?}", t0.elapsed());
    Ok(())
}
