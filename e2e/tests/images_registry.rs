//! Images from registries on a one-node `lotse up`: two local registries on loopback (Debian's
//! `docker-registry`, TLS from a CA made here, htpasswd auth), filled from the locally built
//! archives with Debian's `skopeo`. One is reached directly with pull secrets; the other is the
//! node's mirror for `docker.io`, configured through `<data-dir>/registries.yaml` (TLS and
//! credentials there). Covered: pull by tag and by digest, the pull policies, pull secrets (good,
//! wrong, missing, and from the pod's ServiceAccount), the docker.io mirror serving `nginx:1.25`, a name that does not parse, a tag
//! that does not exist, a hanging registry (Lotse's pull timeout), the offline fallback with the
//! registry stopped, and the airgap archives imported once per content (not again on restart,
//! again only for an image removed from containerd).
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::Kubectl;
use e2e::lotse::{Node, require_images, wait_for};

/// A `docker-registry` process with TLS and htpasswd auth on a free loopback port; killed on drop.
struct Registry {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

/// A test CA and a serving certificate for 127.0.0.1 signed by it, written to `dir`
/// (`ca.crt`, `server.crt`, `server.key`).
fn make_pki(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "lotse-e2e-registry-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), &ca_key)?;
    let cert = leaf.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("server.crt"), cert.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}

impl Registry {
    /// Starts a registry under `dir` (which holds the PKI) accepting `user`/`password`.
    fn start(dir: &Path, pki: &Path, user: &str, password: &str) -> anyhow::Result<Registry> {
        std::fs::create_dir_all(dir.join("data"))?;
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .context("htpasswd (Debian package apache2-utils)")?;
        anyhow::ensure!(htpasswd.status.success(), "htpasswd failed");
        std::fs::write(dir.join("htpasswd"), &htpasswd.stdout)?;
        let port = e2e::free_port()?;
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {pki}/server.crt\n    key: {pki}/server.key\nauth:\n  htpasswd:\n    realm: lotse-e2e\n    path: {dir}/htpasswd\n",
            data = dir.join("data").display(),
            pki = pki.display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let mut r = Registry {
            child: None,
            port,
            dir: dir.to_path_buf(),
        };
        r.run()?;
        Ok(r)
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("docker-registry (Debian package docker-registry)")?;
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if t0.elapsed() > Duration::from_secs(15) {
                bail!(
                    "registry did not listen: {}",
                    std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of an OCI archive to `repo:tag` here; the manifest digest.
    fn push(
        &self,
        archive: &Path,
        repo_tag: &str,
        creds: &str,
        pki: &Path,
    ) -> anyhow::Result<String> {
        let certs = self.dir.join("skopeo-certs");
        std::fs::create_dir_all(&certs)?;
        std::fs::copy(pki.join("ca.crt"), certs.join("ca.crt"))?;
        let digest_file = self.dir.join("digest");
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-creds", creds])
            .arg("--dest-cert-dir")
            .arg(&certs)
            .arg("--digestfile")
            .arg(&digest_file)
            .arg(oci_source(archive))
            .arg(format!("docker://{}/{repo_tag}", self.host()))
            .output()
            .context("skopeo (Debian package skopeo)")?;
        anyhow::ensure!(
            out.status.success(),
            "skopeo copy {repo_tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(std::fs::read_to_string(digest_file)?.trim().to_string())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `oci-archive:PATH:REF` for skopeo, naming the archive's first image (the archives built by
/// `lotse images build` carry several tags of one image).
fn oci_source(archive: &Path) -> String {
    let index = Command::new("tar")
        .args(["-xOf"])
        .arg(archive)
        .arg("index.json")
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
    let name = index
        .as_ref()
        .and_then(|i| i.pointer("/manifests/0/annotations/org.opencontainers.image.ref.name"))
        .and_then(|v| v.as_str())
        .map(|r| format!(":{r}"))
        .unwrap_or_default();
    format!("oci-archive:{}{name}", archive.display())
}

/// A TCP server on loopback that accepts connections and never answers (a hanging registry).
fn hanging_registry() -> anyhow::Result<(u16, std::thread::JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    l.set_nonblocking(true)?;
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        let t0 = Instant::now();
        // Bounded: the test is over long before this.
        while t0.elapsed() < Duration::from_secs(600) {
            match l.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    Ok((port, h))
}

fn pod(name: &str, image: &str, policy: Option<&str>, secret: Option<&str>) -> String {
    let policy = policy
        .map(|p| format!("\n    imagePullPolicy: {p}"))
        .unwrap_or_default();
    let secret = secret
        .map(|s| format!("\n  imagePullSecrets:\n  - name: {s}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  automountServiceAccountToken: false{secret}\n  containers:\n  - name: c\n    image: {image:?}{policy}\n    command: [\"sleep\", \"3600\"]\n---\n"
    )
}

fn running(k: &Kubectl, name: &str, lotse: &e2e::lotse::Lotse) -> anyhow::Result<()> {
    wait_for(
        k,
        &["get", "pod", name, "-o", "jsonpath={.status.phase}"],
        &format!("pod {name} Running"),
        Duration::from_secs(90),
        |s| s == "Running",
    )
    .with_context(|| format!("{}\n{}", describe(k, name), tail(&lotse.log())))?;
    Ok(())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn describe(k: &Kubectl, name: &str) -> String {
    k.run(&["describe", "pod", name])
        .map(|o| o.stdout)
        .unwrap_or_default()
}

/// Waits until container `c` of `name` waits with one of `reasons`; its message.
fn waiting(k: &Kubectl, name: &str, reasons: &[&str]) -> anyhow::Result<String> {
    let out = wait_for(
        k,
        &[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}",
        ],
        &format!("pod {name} waiting with {reasons:?}"),
        Duration::from_secs(60),
        |s| reasons.iter().any(|r| s.starts_with(&format!("{r}|"))),
    )
    .with_context(|| describe(k, name))?;
    Ok(out
        .split_once('|')
        .map(|(_, m)| m.to_string())
        .unwrap_or_default())
}

/// The messages of the pod's events with `reason`.
fn events(k: &Kubectl, pod: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    let out = k
        .run(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={pod},reason={reason}"),
            "-o",
            "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
        ])?
        .success()?
        .stdout;
    Ok(out.lines().map(str::to_string).collect())
}

fn wait_event(
    k: &Kubectl,
    pod: &str,
    reason: &str,
    what: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let t0 = Instant::now();
    loop {
        let evs = events(k, pod, reason)?;
        if let Some(e) = evs.iter().find(|e| what(e)) {
            return Ok(e.clone());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "no {reason} event for {pod} as expected; have {evs:?}\n{}",
                describe(k, pod)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn ctr(data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(data.join("kubelet/containerd/containerd.sock"))
        .args(["-n", "k8s.io"])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
#[ignore = "needs containerd and runc (root), docker-registry, skopeo, apache2-utils, built binaries and images (lotse images build)"]
fn registry_pulls_policies_secrets_mirror_timeout_and_offline_fallback() -> anyhow::Result<()> {
    let images = require_images(&["busybox.tar", "pause.tar", "nginx.tar"])?;
    let tmp = tempfile::tempdir()?;
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki)?;
    make_pki(&pki)?;

    // Registry A: reached directly, credentials only through pull secrets.
    let mut secure = Registry::start(&tmp.path().join("reg-a"), &pki, "alice", "s3cret")?;
    let digest = secure.push(
        &images.join("busybox.tar"),
        "lotse/busybox:1.0",
        "alice:s3cret",
        &pki,
    )?;
    // Registry B: the node's mirror for docker.io (TLS and credentials from registries.yaml).
    let mirror = Registry::start(&tmp.path().join("reg-b"), &pki, "mirror", "m1rr0r")?;
    mirror.push(
        &images.join("nginx.tar"),
        "library/nginx:1.25",
        "mirror:m1rr0r",
        &pki,
    )?;
    let (hang_port, _hang) = hanging_registry()?;

    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    let ca = pki.join("ca.crt");
    std::fs::write(
        data.join("registries.yaml"),
        format!(
            "mirrors:\n  docker.io:\n    endpoint:\n      - \"https://{m}\"\nconfigs:\n  \"{m}\":\n    auth:\n      username: mirror\n      password: m1rr0r\n    tls:\n      ca_file: {ca}\n  \"{a}\":\n    tls:\n      ca_file: {ca}\n",
            m = mirror.host(),
            a = secure.host(),
            ca = ca.display()
        ),
    )?;
    // Lotse's own knobs, read by `lotse up` from the environment (the kubelet binary has flags):
    // a short pull timeout for the hanging registry, and parallel pulls so that the hanging pull
    // does not hold the others up.
    // SAFETY: set before any thread of this test starts a process; the only test in this binary
    // that starts `lotse up`.
    unsafe {
        std::env::set_var("LOTSE_IMAGE_PULL_TIMEOUT", "5s");
        std::env::set_var("LOTSE_SERIALIZE_IMAGE_PULLS", "false");
    }
    let node = Node::start(
        tmp.path(),
        "img-node",
        "10.244.233.0/24",
        &["busybox.tar", "pause.tar"],
    )?;
    let k = &node.kubectl;
    let a = secure.host();
    for (name, password) in [("regcred", "s3cret"), ("badcred", "wrong")] {
        k.run(&[
            "create",
            "secret",
            "docker-registry",
            name,
            &format!("--docker-server={a}"),
            "--docker-username=alice",
            &format!("--docker-password={password}"),
        ])?
        .success()?;
    }
    // The dockercfg form of the same good credential.
    let dockercfg = format!("{{\"{a}\":{{\"username\":\"alice\",\"password\":\"s3cret\"}}}}");
    k.run(&[
        "create",
        "secret",
        "generic",
        "oldcred",
        "--type=kubernetes.io/dockercfg",
        &format!("--from-literal=.dockercfg={dockercfg}"),
    ])?
    .success()?;

    // A ServiceAccount's imagePullSecrets are copied into pods that name none (admission).
    k.run(&["create", "serviceaccount", "puller"])?.success()?;
    k.run(&[
        "patch",
        "serviceaccount",
        "puller",
        "-p",
        r#"{"imagePullSecrets":[{"name":"regcred"}]}"#,
    ])?
    .success()?;

    let t0 = Instant::now();
    // `by-tag` (IfNotPresent) goes first and alone: with parallel pulls, a pod of the same image
    // created beside it (via-sa, Always) may finish its pull first, and by-tag would then rightly
    // find the image present instead of pulling it.
    k.run_stdin(
        &["apply", "-f", "-"],
        &pod(
            "by-tag",
            &format!("{a}/lotse/busybox:1.0"),
            None,
            Some("regcred"),
        ),
    )?
    .success()?;
    running(k, "by-tag", &node.lotse)?;
    let mut manifest = pod(
        "via-sa",
        &format!("{a}/lotse/busybox:1.0"),
        Some("Always"),
        None,
    )
    .replace("spec:\n", "spec:\n  serviceAccountName: puller\n");
    for (name, image, policy, secret) in [
        (
            "by-digest",
            format!("{a}/lotse/busybox@{digest}"),
            None,
            Some("oldcred"),
        ),
        (
            "wrong-secret",
            format!("{a}/lotse/busybox:1.0"),
            Some("Always"),
            Some("badcred"),
        ),
        (
            "no-secret",
            format!("{a}/lotse/busybox:1.0"),
            Some("Always"),
            None,
        ),
        (
            "absent-secret",
            format!("{a}/lotse/busybox:1.0"),
            Some("Always"),
            Some("nosuch"),
        ),
        (
            "missing-tag",
            format!("{a}/lotse/busybox:9.9"),
            None,
            Some("regcred"),
        ),
        ("bad-name", "nginx:bad:tag".to_string(), None, None),
        (
            "never-missing",
            format!("{a}/lotse/busybox:2.0"),
            Some("Never"),
            None,
        ),
        ("never-present", "busybox".to_string(), Some("Never"), None),
        ("mirror", "nginx:1.25".to_string(), None, None),
        (
            "hang",
            format!("127.0.0.1:{hang_port}/lotse/app:1"),
            None,
            None,
        ),
        ("airgap-latest", "busybox".to_string(), None, None),
    ] {
        manifest += &pod(name, &image, policy, secret);
    }
    k.run_stdin(&["apply", "-f", "-"], &manifest)?.success()?;

    // Pull by tag and by digest, with a dockerconfigjson and a dockercfg secret.
    running(k, "by-digest", &node.lotse)?;
    running(k, "via-sa", &node.lotse)?;
    let secrets = k
        .run(&[
            "get",
            "pod",
            "via-sa",
            "-o",
            "jsonpath={.spec.imagePullSecrets[*].name}",
        ])?
        .success()?
        .stdout;
    assert_eq!(secrets, "regcred");
    let pulled = wait_event(k, "by-tag", "Pulled", |m| {
        m.starts_with("Successfully pulled")
    })?;
    assert!(
        pulled.starts_with(&format!(
            "Successfully pulled image \"{a}/lotse/busybox:1.0\" in "
        )) && pulled.contains(" including waiting). Image size: ")
            && pulled.ends_with(" bytes."),
        "{pulled}"
    );
    wait_event(k, "by-tag", "Pulling", |m| {
        m == format!("Pulling image \"{a}/lotse/busybox:1.0\"")
    })?;
    // The docker.io mirror serves nginx:1.25 (credentials and CA from registries.yaml).
    running(k, "mirror", &node.lotse)?;
    wait_event(k, "mirror", "Pulled", |m| {
        m.starts_with("Successfully pulled image \"nginx:1.25\"")
    })?;
    // `busybox` (latest → Always): docker.io is unreachable from this machine (the mirror has
    // no busybox, the registry itself no network), so the airgap image runs, with a warning.
    running(k, "airgap-latest", &node.lotse)?;
    let fb = wait_event(k, "airgap-latest", "OfflineFallback", |_| true)?;
    assert!(fb.contains("offline fallback"), "{fb}");
    running(k, "never-present", &node.lotse)?;
    wait_event(k, "never-present", "Pulled", |m| {
        m == "Container image \"busybox\" already present on machine"
    })?;
    println!("pulls done {:?} after the pods were created", t0.elapsed());

    // Refused credentials: wrong secret and no secret.
    for name in ["wrong-secret", "no-secret", "absent-secret"] {
        let msg = waiting(k, name, &["ErrImagePull", "ImagePullBackOff"])?;
        assert!(msg.contains("401 Unauthorized"), "{name}: {msg}");
        let failed = wait_event(k, name, "Failed", |m| m.starts_with("Failed to pull image"))?;
        assert!(failed.contains("401 Unauthorized"), "{failed}");
        wait_event(k, name, "Failed", |m| m == "Error: ErrImagePull")?;
    }
    wait_event(k, "absent-secret", "FailedToRetrieveImagePullSecret", |m| {
        m == "Unable to retrieve some image pull secrets (nosuch); attempting to pull the image may not succeed."
    })?;
    // Back-off after the failure.
    let msg = waiting(k, "no-secret", &["ImagePullBackOff"])?;
    assert!(
        msg.starts_with(&format!(
            "Back-off pulling image \"{a}/lotse/busybox:1.0\": ErrImagePull: "
        )),
        "{msg}"
    );
    wait_event(k, "no-secret", "BackOff", |m| {
        m == format!("Back-off pulling image \"{a}/lotse/busybox:1.0\"")
    })?;
    // A tag the registry does not have.
    let msg = waiting(k, "missing-tag", &["ErrImagePull", "ImagePullBackOff"])?;
    assert!(msg.contains("not found"), "{msg}");
    // A name that does not parse.
    let msg = waiting(k, "bad-name", &["InvalidImageName"])?;
    assert_eq!(
        msg,
        "Failed to apply default image tag \"nginx:bad:tag\": couldn't parse image name \"nginx:bad:tag\": invalid reference format"
    );
    wait_event(k, "bad-name", "InspectFailed", |_| true)?;
    // Never, and not on the node.
    let msg = waiting(k, "never-missing", &["ErrImageNeverPull"])?;
    assert_eq!(
        msg,
        format!(
            "Container image \"{a}/lotse/busybox:2.0\" is not present with pull policy of Never"
        )
    );
    // The hanging registry: Lotse's pull timeout, and nothing else waited for it.
    let msg = waiting(k, "hang", &["ErrImagePull", "ImagePullBackOff"])?;
    assert!(msg.contains("--image-pull-timeout"), "{msg}");

    // Offline fallback: registry A stopped; a pod that must pull (Always) an image the node has
    // runs with a warning; one with IfNotPresent just runs.
    secure.stop();
    let manifest = pod(
        "always-offline",
        &format!("{a}/lotse/busybox:1.0"),
        Some("Always"),
        Some("regcred"),
    ) + &pod(
        "ifnotpresent-offline",
        &format!("{a}/lotse/busybox:1.0"),
        Some("IfNotPresent"),
        None,
    );
    k.run_stdin(&["apply", "-f", "-"], &manifest)?.success()?;
    running(k, "always-offline", &node.lotse)?;
    let fb = wait_event(k, "always-offline", "OfflineFallback", |_| true)?;
    assert!(fb.contains("connection refused"), "{fb}");
    running(k, "ifnotpresent-offline", &node.lotse)?;
    wait_event(k, "ifnotpresent-offline", "Pulled", |m| {
        m.ends_with("already present on machine")
    })?;

    // Airgap archives: imported once each at the first start.
    let imports = |log: &str| log.matches("imported image archive").count();
    let log = node.lotse.log();
    assert_eq!(
        imports(&log),
        2,
        "busybox.tar and pause.tar once:\n{}",
        log.lines()
            .filter(|l| l.contains("kubelet::images") || l.contains("containerd"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(node.data.join("kubelet/image-archives.json").is_file());
    k.run(&["delete", "pod", "--all", "--grace-period=0", "--force"])?;
    let Node {
        mut lotse,
        kubectl,
        data,
        args,
        ..
    } = node;
    lotse.stop()?;
    // A restart imports nothing again ...
    let lotse = e2e::lotse::Lotse::start(&data, &args)?;
    wait_for(
        &kubectl,
        &e2e::lotse::node_ready_args("img-node"),
        "node Ready after restart",
        Duration::from_secs(60),
        |s| s.trim() == "True",
    )
    .with_context(|| lotse.log())?;
    assert_eq!(imports(&lotse.log()), 2, "no re-import on restart");
    // ... and an image removed from containerd comes back from its archive alone.
    ctr(&data, &["images", "rm", "docker.io/library/busybox:latest"])?;
    kubectl
        .run_stdin(
            &["apply", "-f", "-"],
            &pod("reimport", "busybox", Some("IfNotPresent"), None),
        )?
        .success()?;
    running(&kubectl, "reimport", &lotse)?;
    let log = lotse.log();
    assert_eq!(
        imports(&log),
        3,
        "busybox.tar imported again, pause.tar not"
    );
    assert!(
        log.lines()
            .rfind(|l| l.contains("imported image archive"))
            .is_some_and(|l| l.contains("busybox.tar")),
        "{}",
        tail(&log)
    );
    Ok(())
}
