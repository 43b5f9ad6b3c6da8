//! Image garbage collection on a one-node `lotse up` whose image filesystem (containerd's root)
//! is a small loop-mounted ext4, so the shared disk's free space cannot decide the result: past
//! the high threshold (85 %) the unused nginx image goes, the image a pod runs and the sandbox
//! image stay; with nothing left to remove the Node gets `FreeDiskSpaceFailed` (Kubernetes'
//! wording) and then `ImageGCFailed`.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::lotse::{Node, wait_for};

/// A loop-mounted ext4 file system; unmounted (lazily) on drop.
struct LoopFs(PathBuf);

impl LoopFs {
    fn mount(image: &Path, at: &Path, size_mb: u64) -> anyhow::Result<LoopFs> {
        let f = std::fs::File::create(image)?;
        f.set_len(size_mb << 20)?;
        drop(f);
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(image)
            .status()
            .context("mkfs.ext4 (Debian package e2fsprogs)")?;
        anyhow::ensure!(ok.success(), "mkfs.ext4 failed");
        std::fs::create_dir_all(at)?;
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at)
            .status()?;
        anyhow::ensure!(
            ok.success(),
            "mount -o loop failed (needs root and loop devices)"
        );
        Ok(LoopFs(at.to_path_buf()))
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// (capacity, available) bytes of the file system at `p`.
fn usage(p: &Path) -> anyhow::Result<(u64, u64)> {
    let out = Command::new("stat")
        .args(["-f", "-c", "%b %a %S"])
        .arg(p)
        .output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [blocks, avail, bsize] => Ok((blocks * bsize, avail * bsize)),
        _ => bail!("stat -f {}: {s}", p.display()),
    }
}

/// Grows `ballast` (really allocated) until the file system is `percent` % used.
fn fill_to(root: &Path, ballast: &Path, percent: u64) -> anyhow::Result<()> {
    let (cap, avail) = usage(root)?;
    let used = cap - avail;
    let want = cap * percent / 100;
    if want <= used {
        return Ok(());
    }
    let current = std::fs::metadata(ballast).map(|m| m.len()).unwrap_or(0);
    let ok = Command::new("fallocate")
        .arg("-l")
        .arg((current + want - used).to_string())
        .arg(ballast)
        .status()?;
    anyhow::ensure!(ok.success(), "fallocate failed");
    Ok(())
}

fn image_names(data: &Path) -> anyhow::Result<String> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(data.join("kubelet/containerd/containerd.sock"))
        .args(["-n", "k8s.io", "images", "ls", "-q"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
#[ignore = "needs root (loop mount), containerd and runc, built binaries and images (lotse images build)"]
fn image_gc_frees_the_image_filesystem_oldest_unused_first() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let root = data.join("kubelet/containerd/root");
    let _fs = LoopFs::mount(&tmp.path().join("imagefs.img"), &root, 400)?;
    // SAFETY: set before this test starts any process; the only test in this binary.
    unsafe {
        std::env::set_var("LOTSE_IMAGE_GC_PERIOD", "2s");
        // Kubernetes' default; the e2e harness disables GC unless a test sets it.
        std::env::set_var("LOTSE_IMAGE_GC_HIGH_THRESHOLD", "85");
    }
    let node = Node::start(
        tmp.path(),
        "gc-node",
        "10.244.237.0/24",
        &["busybox.tar", "pause.tar", "nginx.tar"],
    )?;
    let k = &node.kubectl;
    let names = image_names(&data)?;
    assert!(names.contains("docker.io/library/nginx:latest"), "{names}");
    k.run_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: user\nspec:\n  terminationGracePeriodSeconds: 0\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: IfNotPresent\n    command: [\"sleep\", \"3600\"]\n",
    )?
    .success()?;
    wait_for(
        k,
        &["get", "pod", "user", "-o", "jsonpath={.status.phase}"],
        "pod user Running",
        Duration::from_secs(60),
        |s| s == "Running",
    )
    .with_context(|| node.lotse.log())?;

    // Past the high threshold: nginx (unused) is removed, busybox (used) and pause (the sandbox
    // image) stay, and usage falls.
    let ballast = root.join("ballast");
    fill_to(&root, &ballast, 90)?;
    let t0 = Instant::now();
    loop {
        let names = image_names(&data)?;
        if !names.contains("docker.io/library/nginx:latest") {
            assert!(
                names.contains("docker.io/library/busybox:latest"),
                "{names}"
            );
            assert!(names.contains("registry.k8s.io/pause:3.6"), "{names}");
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("nginx not collected: {names}\n{}", node.lotse.log());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // containerd removes the unpacked snapshot asynchronously: wait for the usage to reach the
    // low threshold before filling again.
    let percent = |root: &Path| usage(root).map(|(cap, avail)| (cap - avail) * 100 / cap);
    let t1 = Instant::now();
    while percent(&root)? > 80 && t1.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(300));
    }
    let (cap, avail) = usage(&root)?;
    assert!((cap - avail) * 100 / cap <= 80, "usage after GC");
    println!(
        "image GC after {:?}: usage {} %",
        t0.elapsed(),
        (cap - avail) * 100 / cap
    );

    // Nothing left to remove: FreeDiskSpaceFailed, then ImageGCFailed, on the Node.
    // Just past the high threshold, with room left for containerd's own metadata writes. The
    // removed image's content goes asynchronously (containerd's own GC), so the ballast is
    // topped up while waiting: the file system must stay past the threshold.
    let jp = |reason: &str| {
        [
            "get".to_string(),
            "events".into(),
            "-n".into(),
            "default".into(),
            "--field-selector".into(),
            format!("involvedObject.kind=Node,involvedObject.name=gc-node,reason={reason}"),
            "-o".into(),
            "jsonpath={.items[*].message}".into(),
        ]
    };
    let a = jp("FreeDiskSpaceFailed");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let t2 = Instant::now();
    let msg = loop {
        fill_to(&root, &ballast, 88)?;
        let out = k.run(&a)?;
        if out.code == 0 && !out.stdout.is_empty() {
            break out.stdout;
        }
        if t2.elapsed() > Duration::from_secs(150) {
            let log = node.lotse.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("image") || l.contains("node event"))
                .collect();
            bail!(
                "no FreeDiskSpaceFailed event within 150 s:\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        msg.starts_with("Failed to garbage collect required amount of images. Attempted to free ")
            && msg.contains(" bytes, but only found 0 bytes eligible to free."),
        "{msg}"
    );
    let b = jp("ImageGCFailed");
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    wait_for(k, &b, "ImageGCFailed", Duration::from_secs(60), |s| {
        !s.is_empty()
    })?;
    let _ = std::fs::remove_file(&ballast);
    Ok(())
}
