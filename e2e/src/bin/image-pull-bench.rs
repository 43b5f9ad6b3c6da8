//! Image pull benchmark (prints figures, asserts nothing). Needs root, containerd, runc,
//! Debian's `docker-registry` and `skopeo`, and the built archives (`lotse images build`).
//!
//! A loopback registry (`docker-registry`, plain HTTP) gets the nginx archive (~60 MB) pushed
//! with skopeo. On one `lotse up` node whose `registries.yaml` points at it, the same image is
//! pulled `--rounds` times each way, with the image and its content removed from containerd
//! before every pull:
//! - **Lotse**: a pod with `imagePullPolicy: Always`; time from the create request to the
//!   `Pulled` event (and the pull time the event itself reports), i.e. CRI `PullImage` through
//!   the kubelet;
//! - **ctr**: `ctr images pull` of the same reference on the same containerd, with the same
//!   hosts dir.
//!
//! `cargo build -p lotse -p cni-plugin -p e2e --bins && target/debug/image-pull-bench`
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use e2e::lotse::{Node, wait_for};
use e2e::report::figure;

/// Lotse (CRI PullImage through the kubelet) vs `ctr images pull`.
#[derive(Parser)]
struct Args {
    /// Pulls of each kind.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Archive to push and pull (in the images dir).
    #[arg(long, default_value = "nginx.tar")]
    archive: String,
}

struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> Result<(Registry, u16)> {
    std::fs::create_dir_all(dir.join("data"))?;
    let port = e2e::free_port()?;
    std::fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("docker-registry (Debian package docker-registry)")?;
    let reg = Registry(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(15) {
            bail!("registry did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((reg, port))
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

fn ctr(data: &Path, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new("ctr")
        .arg("-a")
        .arg(data.join("kubelet/containerd/containerd.sock"))
        .args(["-n", "k8s.io"])
        .args(args)
        .output()?)
}

/// Removes the image and (synchronously) its content, so the next pull downloads everything.
/// CRI keeps three references to a pulled image (tag, repo digest, image id): all of them go.
fn forget(data: &Path, image: &str) -> Result<()> {
    let out = ctr(data, &["images", "ls"])?;
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .filter(|r: &Vec<&str>| r.len() >= 3)
        .collect();
    let Some(target) = rows.iter().find(|r| r[0] == image).map(|r| r[2]) else {
        return Ok(());
    };
    let refs: Vec<&str> = rows
        .iter()
        .filter(|r| r[2] == target)
        .map(|r| r[0])
        .collect();
    let mut args = vec!["images", "rm", "--sync"];
    args.extend(refs);
    ctr(data, &args)?;
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let images = e2e::lotse::require_images(&["busybox.tar", "pause.tar", &a.archive])?;
    let tmp = tempfile::tempdir()?;
    let (_reg, port) = start_registry(&tmp.path().join("registry"))?;
    let host = format!("127.0.0.1:{port}");
    let image = format!("{host}/bench/image:1");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(oci_source(&images.join(&a.archive)))
        .arg(format!("docker://{image}"))
        .output()
        .context("skopeo (Debian package skopeo)")?;
    anyhow::ensure!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(images.join(&a.archive))?.len();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(
        data.join("registries.yaml"),
        format!("mirrors:\n  \"{host}\":\n    endpoint:\n      - \"http://{host}\"\n"),
    )?;
    let node = Node::start(
        tmp.path(),
        "bench-node",
        "10.244.236.0/24",
        &["busybox.tar", "pause.tar"],
    )?;
    let k = &node.kubectl;
    let hosts_dir: PathBuf = data.join("kubelet/containerd/certs.d");
    let mut lotse_times = Vec::new();
    let mut lotse_reported = Vec::new();
    let mut ctr_times = Vec::new();
    for round in 0..a.rounds {
        // Lotse: a pod that must pull.
        forget(&data, &image)?;
        let name = format!("pull-{round}");
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Always\n    command: [\"sleep\", \"3600\"]\n"
        );
        let t0 = Instant::now();
        k.run_stdin(&["apply", "-f", "-"], &manifest)?.success()?;
        let msg = wait_for(
            k,
            &[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={name},reason=Pulled"),
                "-o",
                "jsonpath={.items[0].message}",
            ],
            "Pulled event",
            Duration::from_secs(300),
            |s| !s.is_empty(),
        )?;
        lotse_times.push(t0.elapsed());
        lotse_reported.push(msg.clone());
        k.run(&["delete", "pod", &name, "--grace-period=0", "--force"])?;
        // Wait for the container to go so the image is unused.
        let t = Instant::now();
        while !e2e::lotse::containers_in(&data)?.is_empty() && t.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        // ctr on the same containerd and hosts dir.
        forget(&data, &image)?;
        let t0 = Instant::now();
        let out = ctr(
            &data,
            &[
                "images",
                "pull",
                "--hosts-dir",
                &hosts_dir.to_string_lossy(),
                &image,
            ],
        )?;
        let took = t0.elapsed();
        anyhow::ensure!(
            out.status.success(),
            "ctr pull: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ctr_times.push(took);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "image {image} ({} MB archive), {} rounds, content removed before every pull",
        size / 1_000_000,
        a.rounds
    );
    for (i, m) in lotse_reported.iter().enumerate() {
        println!(
            "  lotse round {i}: {:.2}s to Pulled; event: {m}",
            secs(lotse_times[i])
        );
    }
    for (i, t) in ctr_times.iter().enumerate() {
        println!("  ctr   round {i}: {:.2}s", secs(*t));
    }
    let l = median(&mut lotse_times);
    let c = median(&mut ctr_times);
    println!(
        "median: lotse (pod create → Pulled) {:.2}s, ctr images pull {:.2}s, ratio {:.2} (limit: none; printed only)",
        secs(l),
        secs(c),
        secs(l) / secs(c).max(1e-9)
    );
    figure(
        format!(
            "image pull, {} MB archive: pod create -> Pulled, median of {}",
            size / 1_000_000,
            a.rounds
        ),
        secs(l),
        "s",
    )
    .vs("ctr images pull on the same containerd, median", secs(c))
    .record()?;
    Ok(())
}
