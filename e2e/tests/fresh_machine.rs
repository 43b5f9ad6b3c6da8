//! `lotse up` on a fresh Debian machine: a minimal Debian root filesystem (the `debian` image
//! that `lotse images build debian` makes, else `debootstrap --variant=minbase` from the host's
//! mirror) with only the host's apt sources, resolv.conf, the built `lotse` + `lotse-cni` and
//! the prebuilt busybox/pause archives added, entered with `unshare --mount --pid` + chroot.
//! `lotse up` (without --no-install) must install containerd, runc, … with apt-get itself
//! (fetching the package lists first: the image has none), print `export KUBECONFIG=…`, bring
//! the node Ready and run a pod that `kubectl exec` reaches; SIGTERM must stop it cleanly, and a
//! second `lotse up` in the same root must resume the cluster with the pod Running.
//!
//! The namespace shares the host's network (apt reaches the mirror, kubectl on the host reaches
//! the apiserver). Its pid 1 is a holder shell, so the pods' containerd shims live on between
//! the two `lotse up` runs as they do on a real machine; killing the holder (the drop guard)
//! ends every process in the namespace and with it every mount.
//!
//! Needs root, network access to the Debian mirror in /etc/apt/sources.list*, the built
//! binaries (`cargo build -p lotse -p kubelet -p cni-plugin --bins`) and
//! `target/lotse-images/{busybox,pause}.tar` (plus `debian.tar` to skip debootstrap:
//! `target/debug/lotse images build --output target/lotse-images busybox pause debian`).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::lotse::{images_dir, require_images, wait_for};
use e2e::{Kubectl, bin_dir, free_port};

/// Root PATH on Debian; the host's PATH (cargo, toolchains) means nothing inside the root.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Mounts the chroot needs, made by the namespace's pid 1 (so /proc is the new pid namespace's),
/// then waits; bash as pid 1 reaps the orphans (daemonized shims) it inherits. The root is bound
/// onto itself first: runc makes the root of its mount namespace a slave (`mount("/", MS_SLAVE |
/// MS_REC)`) and pivot_roots, and both fail with EINVAL when `/` is not a mount point, as in a
/// plain chroot ("error preparing rootfs: mount /, flags: 0x84000: invalid argument"); on a
/// real machine `/` always is one.
const HOLDER: &str = r#"set -e
R=$1
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
echo ready
while :; do sleep 1; done
"#;

fn step(what: &str, t0: Instant) {
    println!("[{:>7.1} s] {what}", t0.elapsed().as_secs_f64());
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Unpacks the OCI archive `archive` (index.json → manifest → layers) into `root`.
fn unpack_oci(archive: &Path, root: &Path, work: &Path) -> anyhow::Result<()> {
    let oci = work.join("oci");
    std::fs::create_dir_all(&oci)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&oci))?;
    let blob = |digest: &str| -> anyhow::Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("digest {digest}"))?;
        Ok(oci.join("blobs/sha256").join(hex))
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(oci.join("index.json"))?)?;
    let mdig = index
        .pointer("/manifests/0/digest")
        .and_then(|v| v.as_str())
        .context("index.json without a manifest")?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(mdig)?)?)?;
    let layers = manifest
        .get("layers")
        .and_then(|v| v.as_array())
        .context("manifest without layers")?;
    std::fs::create_dir_all(root)?;
    for l in layers {
        let d = l
            .get("digest")
            .and_then(|v| v.as_str())
            .context("layer digest")?;
        // GNU tar detects the gzip compression itself.
        run(Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(blob(d)?)
            .arg("-C")
            .arg(root))?;
    }
    std::fs::remove_dir_all(&oci)?;
    Ok(())
}

/// The host's Debian mirror (first `URIs:` of a deb822 source, else the first `deb` line).
fn host_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(d) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(d.filter_map(|e| e.ok().map(|e| e.path())));
    }
    for f in files {
        let name = f.to_string_lossy().to_string();
        if !(name.ends_with(".sources") || name.ends_with(".list")) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["URIs:", uri, ..] if uri.contains("debian") => return uri.to_string(),
                ["deb", rest @ ..] => {
                    if let Some(uri) = rest.iter().find(|s| s.contains("://")) {
                        return uri.to_string();
                    }
                }
                _ => {}
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// The fresh root, the namespace holding its mounts, and the `lotse up` runs in it; on drop
/// every process in the namespace is killed (so its mounts go with it) and the root removed.
struct Machine {
    dir: tempfile::TempDir,
    holder: Child,
    /// Host pid of the namespace's pid 1.
    init: u32,
    lotse: Option<Child>,
    log: PathBuf,
}

impl Machine {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn data(&self) -> PathBuf {
        self.root().join("var/lib/lotse")
    }

    /// Starts `lotse up <args>` inside the namespace and the root, appending to the log.
    fn start(&mut self, args: &[String]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("nsenter")
            .arg(format!("--target={}", self.init))
            .args(["--mount", "--pid", "--", "chroot"])
            .arg(self.root())
            .args(["/usr/local/bin/lotse", "up"])
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("nsenter")?;
        self.lotse = Some(child);
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Host pid of `lotse` (nsenter's child, which chroot exec'd into).
    fn lotse_pid(&self) -> anyhow::Result<u32> {
        let nsenter = self.lotse.as_ref().context("lotse not started")?.id();
        let children = std::fs::read_to_string(format!("/proc/{nsenter}/task/{nsenter}/children"))?;
        children
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .context("nsenter has no child")
    }

    /// SIGTERM to `lotse up`; its exit status (nsenter passes it on).
    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.lotse_pid()?;
        run(Command::new("kill").arg("-TERM").arg(pid.to_string()))?;
        let child = self.lotse.as_mut().context("lotse not started")?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(40) {
            if let Some(st) = child.try_wait()? {
                self.lotse = None;
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("lotse up did not exit within 40 s of SIGTERM")
    }

    /// The live processes in the namespace besides its pid 1 and that one's sleep, as
    /// `comm (command line)`.
    fn processes(&self) -> anyhow::Result<Vec<String>> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.init))?;
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc")?.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            let Ok(pid) = name.parse::<u32>() else {
                continue;
            };
            if pid == self.init
                || std::fs::read_link(e.path().join("ns/pid")).ok() != Some(ns.clone())
            {
                continue;
            }
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let comm = comm.trim().to_string();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or_default();
            // Zombies have ended; pid 1 reaps the ones it inherits within a second.
            if (comm == "sleep" && ppid == Some(self.init)) || state == "Z" {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push(format!("{comm} ({})", cmdline.trim()));
        }
        Ok(out)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // SIGKILL to the namespace's pid 1 kills every process in it (lotse, containerd, the
        // shims, the containers in their nested namespaces); the mounts die with the namespace.
        let _ = Command::new("kill")
            .args(["-KILL", &self.init.to_string()])
            .status();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        if let Some(mut c) = self.lotse.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let t0 = Instant::now();
        while Path::new(&format!("/proc/{}", self.init)).exists()
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("namespace gone after {:.1?}", t0.elapsed());
        let t0 = Instant::now();
        let root = self.root();
        let _ = std::fs::remove_dir_all(&root);
        println!("root removed in {:.1?}", t0.elapsed());
    }
}

/// Makes the fresh root in `dir/root` and the namespace around it.
fn fresh_machine(t0: Instant) -> anyhow::Result<Machine> {
    let images = require_images(&["busybox.tar", "pause.tar"])?;
    let dir = tempfile::Builder::new()
        .prefix("lotse-fresh-")
        .tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))?;
    let root = dir.path().join("root");
    let debian = images_dir().join("debian.tar");
    if debian.is_file() {
        unpack_oci(&debian, &root, dir.path())?;
        step("unpacked the debian image (debootstrap minbase)", t0);
    } else {
        let mirror = host_mirror();
        println!(
            "{} missing: debootstrap --variant=minbase from {mirror}",
            debian.display()
        );
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&root)
            .arg(&mirror))?;
        let _ = std::fs::remove_dir_all(root.join("var/lib/apt/lists"));
        std::fs::create_dir_all(root.join("var/lib/apt/lists/partial"))?;
        step("debootstrapped a minbase root", t0);
    }
    // A fresh machine has none of the node's packages.
    for p in [
        "usr/bin/containerd",
        "usr/sbin/runc",
        "usr/bin/ctr",
        "usr/lib/cni/loopback",
    ] {
        if root.join(p).exists() {
            bail!("the fresh root already has /{p}");
        }
    }
    // The machine's own configuration: apt sources (+ apt.conf.d), DNS, hosts.
    let etc = root.join("etc");
    for f in ["apt/sources.list", "resolv.conf", "hosts"] {
        let src = Path::new("/etc").join(f);
        let _ = std::fs::remove_file(etc.join(f));
        if src.is_file() {
            std::fs::copy(&src, etc.join(f))?;
        }
    }
    for d in ["apt/sources.list.d", "apt/apt.conf.d"] {
        std::fs::create_dir_all(etc.join(d))?;
        for e in std::fs::read_dir(Path::new("/etc").join(d))?.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_lowercase();
            // Desktop hooks (AppStream metadata, PackageKit) only slow `apt-get update` down.
            if e.path().is_file() && !name.contains("appstream") && !name.contains("packagekit") {
                std::fs::copy(e.path(), etc.join(d).join(e.file_name()))?;
            }
        }
    }
    for b in ["lotse", "lotse-cni"] {
        let src = bin_dir().join(b);
        std::fs::copy(&src, root.join("usr/local/bin").join(b)).with_context(|| {
            format!(
                "{} (cargo build -p lotse -p kubelet -p cni-plugin --bins)",
                src.display()
            )
        })?;
    }
    let imgs = root.join("var/lib/lotse/kubelet/images");
    std::fs::create_dir_all(&imgs)?;
    for img in ["busybox.tar", "pause.tar"] {
        std::fs::copy(images.join(img), imgs.join(img))?;
    }
    step("copied apt sources, lotse, lotse-cni, busybox + pause", t0);

    let mut holder = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
        ])
        .args(["bash", "-c", HOLDER, "holder"])
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("unshare")?;
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = holder.stdout.take().context("holder stdout")?;
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let init = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", holder.id()))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()));
    let (Some(init), "ready") = (init, line.trim()) else {
        let _ = holder.kill();
        let _ = holder.wait();
        bail!("the namespace did not come up (holder said {line:?})");
    };
    let log = dir.path().join("lotse.log");
    Ok(Machine {
        dir,
        holder,
        init,
        lotse: None,
        log,
    })
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers:
  - {name: c, image: busybox, imagePullPolicy: IfNotPresent, command: ["sleep", "3600"]}
"#;

fn pod_running(k: &Kubectl, timeout: Duration) -> anyhow::Result<()> {
    wait_for(
        k,
        &["get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"],
        "pod sleeper Running",
        timeout,
        |s| s == "Running",
    )?;
    Ok(())
}

fn exec_works(k: &Kubectl) -> anyhow::Result<()> {
    let out = k
        .run(&[
            "exec",
            "sleeper",
            "--",
            "sh",
            "-c",
            "echo hello from $(hostname)",
        ])?
        .success()?;
    if out.stdout.trim() != "hello from sleeper" {
        bail!("kubectl exec printed {:?}", out.stdout);
    }
    Ok(())
}

/// Waits until the node's Ready condition is True with a heartbeat from `since` on (a node that
/// was Ready before a restart stays so in the API until the kubelet reports again).
fn wait_node_ready(
    k: &Kubectl,
    node: &str,
    since: std::time::SystemTime,
    timeout: Duration,
) -> anyhow::Result<()> {
    let since = k8s_openapi::jiff::Timestamp::try_from(since)?.as_second();
    let ready = "{.status.conditions[?(@.type==\"Ready\")]}";
    wait_for(
        k,
        &["get", "node", node, "-o", &format!("jsonpath={ready}")],
        "node Ready with a fresh heartbeat",
        timeout,
        |s| {
            let Ok(c) = serde_json::from_str::<serde_json::Value>(s) else {
                return false;
            };
            let beat = c
                .get("lastHeartbeatTime")
                .and_then(|v| v.as_str())
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
            c.get("status").and_then(|v| v.as_str()) == Some("True")
                && beat.is_some_and(|b| b.as_second() >= since)
        },
    )?;
    Ok(())
}

/// Waits until the log, from byte `from` on, has `export KUBECONFIG=`; the time it took.
fn wait_export(m: &mut Machine, from: usize, timeout: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if m.log()
            .get(from..)
            .unwrap_or_default()
            .contains("export KUBECONFIG=")
        {
            return Ok(t0.elapsed());
        }
        if let Some(st) = m.lotse.as_mut().context("not started")?.try_wait()? {
            bail!("lotse up exited with {st}:\n{}", m.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no `export KUBECONFIG=` within {timeout:?}:\n{}", m.log())
}

#[test]
#[ignore = "needs root, network access to the Debian mirror, and built binaries/images"]
fn lotse_up_on_a_fresh_debian_machine() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut m = fresh_machine(t0)?;
    step("namespace + chroot mounts ready", t0);
    let net = rand_octet();
    let node = format!("fresh-{net}");
    let args: Vec<String> = vec![
        "--secure-port".into(),
        free_port()?.to_string(),
        "--kubelet-port".into(),
        free_port()?.to_string(),
        "--pod-cidr".into(),
        format!("10.244.{net}.0/24"),
        "--node-name".into(),
        node.clone(),
        // The machine gets lotse and lotse-cni only (no lotse-dns or lotse-ingress for the DNS
        // and ingress pods' images).
        "--disable-cluster-dns".into(),
        "--disable-ingress".into(),
    ];
    let k = Kubectl::new(
        33,
        m.data().join("admin.kubeconfig"),
        m.dir.path().join("kubectl-cache"),
    );

    // 1. First start: installs the packages, then runs the cluster.
    let (t1, wall1) = (Instant::now(), std::time::SystemTime::now());
    m.start(&args)?;
    let until_export = wait_export(&mut m, 0, Duration::from_secs(300))?;
    step(
        &format!(
            "first `lotse up`: `export KUBECONFIG=` after {until_export:.1?} (apt-get update + install included)"
        ),
        t0,
    );
    let log = m.log();
    for want in [
        "apt has no package lists yet: running apt-get update",
        "installing missing Debian packages with apt-get:",
        "lotse: installed ",
    ] {
        if !log.contains(want) {
            bail!("the log lacks {want:?}:\n{log}");
        }
    }
    let line = log
        .lines()
        .find(|l| l.contains("installing missing Debian packages"))
        .unwrap_or_default();
    println!("{line}");
    for p in [
        "containerd",
        "runc",
        "containernetworking-plugins",
        "iproute2",
        "procps",
    ] {
        if !line.contains(p) {
            bail!("{p} not among the installed packages: {line}");
        }
    }
    // The image build tools are not needed: the images are there.
    for p in ["gcc", "debootstrap", "busybox-static"] {
        if line.contains(p) {
            bail!("{p} installed although no image is built: {line}");
        }
    }
    let status = run(Command::new("chroot").arg(m.root()).args([
        "dpkg-query",
        "-W",
        "-f=${Package} ${Status}\\n",
        "containerd",
        "runc",
        "containernetworking-plugins",
        "iproute2",
        "procps",
    ]))?;
    if status.lines().count() != 5 || !status.lines().all(|l| l.ends_with("install ok installed")) {
        bail!("packages in the root after lotse up:\n{status}");
    }
    for p in [
        "usr/bin/containerd",
        "usr/sbin/runc",
        "usr/lib/cni/loopback",
    ] {
        if !m.root().join(p).exists() {
            bail!("/{p} missing in the root after lotse up");
        }
    }
    wait_node_ready(&k, &node, wall1, Duration::from_secs(60)).with_context(|| m.log())?;
    step(
        &format!(
            "node Ready {:.1?} after start, {:.1?} after `export KUBECONFIG=`",
            t1.elapsed(),
            t1.elapsed().saturating_sub(until_export)
        ),
        t0,
    );
    k.run_stdin(&["apply", "-f", "-"], POD)?.success()?;
    pod_running(&k, Duration::from_secs(60)).with_context(|| m.log())?;
    exec_works(&k)?;
    step("busybox pod Running, kubectl exec works", t0);

    // 2. SIGTERM: a clean exit; containerd stops with it, the pod's shim lives on (by design:
    // pods survive a kubelet restart).
    let st = m.stop()?;
    if !st.success() {
        bail!("lotse up exited with {st} after SIGTERM:\n{}", m.log());
    }
    if !m.log().contains("lotse: stopping") {
        bail!("no `lotse: stopping` in the log:\n{}", m.log());
    }
    std::thread::sleep(Duration::from_millis(500));
    let left = m.processes()?;
    if left
        .iter()
        .any(|p| p.starts_with("containerd (") || p.starts_with("lotse ("))
    {
        bail!("left running after SIGTERM: {left:?}");
    }
    step(
        &format!("SIGTERM: {st}; left in the namespace: {left:?}"),
        t0,
    );

    // 3. Second start: no installation, the same cluster, the pod Running again.
    let (t2, wall2) = (Instant::now(), std::time::SystemTime::now());
    let before = m.log().len();
    m.start(&args)?;
    let until_export = wait_export(&mut m, before, Duration::from_secs(60))?;
    let second = m.log()[before..].to_string();
    if second.contains("installing missing Debian packages") {
        bail!("the second start installed packages again:\n{second}");
    }
    wait_node_ready(&k, &node, wall2, Duration::from_secs(60)).with_context(|| m.log())?;
    step(
        &format!(
            "second `lotse up`: `export KUBECONFIG=` after {until_export:.1?}, node Ready {:.1?} after start",
            t2.elapsed()
        ),
        t0,
    );
    pod_running(&k, Duration::from_secs(60)).with_context(|| m.log())?;
    exec_works(&k)?;
    let restarts = k
        .run(&[
            "get",
            "pod",
            "sleeper",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])?
        .stdout;
    step(
        &format!("pod still there, Running, exec works (restartCount {restarts})"),
        t0,
    );

    // 4. With the pod deleted, SIGTERM leaves nothing running in the namespace.
    k.run(&["delete", "pod", "sleeper", "--grace-period=1"])?
        .success()?;
    let st = m.stop()?;
    if !st.success() {
        bail!(
            "second lotse up exited with {st} after SIGTERM:\n{}",
            m.log()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let left = m.processes()?;
    if !left.is_empty() {
        bail!("left running after the pod's deletion and SIGTERM: {left:?}");
    }
    step("pod deleted, SIGTERM: nothing left running", t0);
    Ok(())
}

/// A pod-network octet unlikely to collide with the other tests' (they use fixed ones).
fn rand_octet() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    100 + (nanos ^ std::process::id()) % 100
}
