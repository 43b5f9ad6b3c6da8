//! Kubelet benchmark on real containers (prints figures, asserts nothing). Needs root,
//! containerd, runc and the busybox and pause images (`lotse images build busybox pause`).
//!
//! 1. Pod startup latency: `lotse up` (apiserver, controllers, scheduler, kubelet on containerd);
//!    `--pods` busybox pods are created at `--rate` per second and the time from each create
//!    request to the watch event that shows it `Running` is collected: p50, p99, max (Kubernetes'
//!    SLO: p99 ≤ 5 s).
//! 2. Kubelet memory: the `kubelet` binary alone (with its containerd) against an apiserver,
//!    running `--rss-pods` pods (bound by `spec.nodeName`): VmRSS of the kubelet process and of
//!    its containerd.
//!
//! `cargo build --release -p lotse -p kubelet -p cni-plugin -p apiserver -p e2e && LOTSE_BIN_DIR=target/release target/release/kubelet-bench`
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use e2e::report::{figure, ms};
use e2e::{ApiServer, Backend, bin_dir, free_port, rss_kib};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

/// Kubelet pod-startup latency and memory on containerd.
#[derive(Parser)]
struct Args {
    /// Directory with busybox.tar and pause.tar.
    #[arg(long, env = "LOTSE_IMAGES_DIR", default_value = "target/lotse-images")]
    images: PathBuf,
    /// Pods for the startup-latency run.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pod creations per second in the latency run.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Pods running while the kubelet's memory is measured.
    #[arg(long, default_value_t = 50)]
    rss_pods: usize,
}

fn pod(name: &str, node: Option<&str>) -> Pod {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "kubelet"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
        },
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    serde_json::from_value(p).unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn copy_images(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for img in ["busybox.tar", "pause.tar"] {
        let src = from.join(img);
        if !src.is_file() {
            bail!(
                "{} missing: lotse images build --output {} busybox pause",
                src.display(),
                from.display()
            );
        }
        std::fs::copy(&src, to.join(img))?;
    }
    Ok(())
}

async fn client_from(path: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Waits until `f` returns true (polling), or fails after `timeout`.
async fn until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("timed out waiting for {what}")
}

async fn node_ready(client: &kube::Client, node: &str) -> bool {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .get_opt(node)
        .await
        .ok()
        .flatten()
        .and_then(|n| n.status?.conditions)
        .map(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        .unwrap_or(false)
}

/// Deletes the bench pods and waits until they are gone.
async fn delete_pods(pods: &Api<Pod>) -> Result<()> {
    let lp = ListParams::default().labels("bench=kubelet");
    let _ = pods.delete_collection(&DeleteParams::default(), &lp).await;
    until("bench pods deleted", Duration::from_secs(180), || async {
        pods.list(&lp)
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(false)
    })
    .await
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
}

/// Waits (bounded) until containerd at `socket` runs no container: the kubelet tears deleted
/// pods down asynchronously, and stopping it earlier would leave them running.
async fn wait_no_containers(socket: &Path) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        match Command::new("ctr")
            .arg("-a")
            .arg(socket)
            .args(["-n", "k8s.io", "containers", "ls", "-q"])
            .output()
        {
            Ok(out) if out.status.success() && out.stdout.is_empty() => return,
            Ok(_) => {}
            Err(_) => return,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "containers still present in {} after 120 s",
        socket.display()
    );
}

fn pid_of(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

async fn startup_latency(args: &Args, tmp: &Path) -> Result<()> {
    let data = tmp.join("up");
    copy_images(&args.images, &data.join("kubelet/images"))?;
    let node = "bench-node";
    let log = std::fs::File::create(tmp.join("lotse.log"))?;
    let mut lotse = Command::new(bin_dir().join("lotse"))
        .arg("up")
        .arg("--data-dir")
        .arg(&data)
        .args(["--secure-port", &free_port()?.to_string()])
        .args(["--kubelet-port", &free_port()?.to_string()])
        .args(["--node-name", node, "--pod-cidr", "10.244.234.0/24"])
        .args(["--images=", "--no-install", "--disable-cluster-dns"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting lotse")?;
    let result = async {
        let kc = data.join("admin.kubeconfig");
        until("admin.kubeconfig", Duration::from_secs(30), || async {
            kc.is_file()
        })
        .await?;
        let client = client_from(&kc).await?;
        until("node Ready", Duration::from_secs(60), || node_ready(&client, node)).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        until("default ServiceAccount", Duration::from_secs(30), || async {
            sas.get_opt("default").await.ok().flatten().is_some()
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let created: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
        let running: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
        let rv = pods.list_metadata(&ListParams::default()).await?.metadata.resource_version.unwrap_or_default();
        let mut stream = pods
            .watch(&WatchParams::default().labels("bench=kubelet"), &rv)
            .await?
            .boxed();
        let seen = running.clone();
        let total = args.pods;
        let watch = tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                if let Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) = ev
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                {
                    let mut r = seen.lock().unwrap_or_else(|e| e.into_inner());
                    r.entry(p.metadata.name.unwrap_or_default())
                        .or_insert_with(Instant::now);
                    if r.len() >= total {
                        return;
                    }
                }
            }
        });
        let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.01));
        let t0 = Instant::now();
        for i in 0..args.pods {
            let at = t0 + gap * i as u32;
            tokio::time::sleep_until(at.into()).await;
            let name = format!("lat-{i:03}");
            let pods = pods.clone();
            let created = created.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                match pods.create(&PostParams::default(), &pod(&name, None)).await {
                    Ok(_) => {
                        created
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name, start);
                    }
                    Err(e) => eprintln!("create {name}: {e}"),
                }
            });
        }
        let done = tokio::time::timeout(Duration::from_secs(300), watch).await;
        let wall = t0.elapsed();
        let created = created.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let running = running.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut lat: Vec<Duration> = created
            .iter()
            .filter_map(|(n, c)| running.get(n).map(|r| r.saturating_duration_since(*c)))
            .collect();
        lat.sort();
        println!(
            "pod startup (create -> Running via watch), {} pods at {}/s, lotse up on containerd:",
            args.pods, args.rate
        );
        println!(
            "  running {}/{} in {:.1} s{}",
            lat.len(),
            args.pods,
            wall.as_secs_f64(),
            if done.is_err() { " (timed out)" } else { "" }
        );
        println!(
            "  p50 {:>6} ms   p99 {:>6} ms   max {:>6} ms",
            percentile(&lat, 50.0).as_millis(),
            percentile(&lat, 99.0).as_millis(),
            lat.last().copied().unwrap_or_default().as_millis()
        );
        let what = format!("pod create -> Running, {} pods at {}/s", args.pods, args.rate);
        figure(format!("{what}, p50"), ms(percentile(&lat, 50.0)), "ms").record()?;
        figure(format!("{what}, p99"), ms(percentile(&lat, 99.0)), "ms")
            .goal("p99 <= 1.5 s")
            .record()?;
        figure(format!("{what}: pods Running"), lat.len() as f64, "pods")
            .vs("pods created", args.pods as f64)
            .record()?;
        let ctrd = pid_of(&data.join("kubelet/containerd/containerd.pid"));
        println!(
            "  with {} pods: lotse (apiserver+controllers+scheduler+kubelet) RSS {} MiB, containerd RSS {} MiB",
            lat.len(),
            rss_kib(lotse.id()).unwrap_or(0) / 1024,
            ctrd.and_then(|p| rss_kib(p).ok()).unwrap_or(0) / 1024
        );
        let t = Instant::now();
        delete_pods(&pods).await?;
        wait_no_containers(&data.join("kubelet/containerd/containerd.sock")).await;
        println!(
            "  deleting {} pods (API and containers) took {:.1} s",
            lat.len(),
            t.elapsed().as_secs_f64()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err()
        && let Ok(c) = client_from(&data.join("admin.kubeconfig")).await
    {
        let _ = delete_pods(&Api::namespaced(c, "default")).await;
        wait_no_containers(&data.join("kubelet/containerd/containerd.sock")).await;
    }
    stop(&mut lotse);
    result
}

async fn kubelet_memory(args: &Args, tmp: &Path) -> Result<()> {
    let api = ApiServer::start(Backend::Sqlite).await?;
    let client = api.client().await?;
    let ns = "default";
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let _ = sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}}))?,
        )
        .await;
    let ca = std::fs::read_to_string(api.data_dir().join("pki/ca.crt"))?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let _ = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": ca}}),
            )?,
        )
        .await;
    let root = tmp.join("kubelet");
    copy_images(&args.images, &root.join("images"))?;
    let node = "bench-rss";
    let log = std::fs::File::create(tmp.join("kubelet.log"))?;
    let mut kubelet = Command::new(bin_dir().join("kubelet"))
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args(["--node-name", node, "--pod-cidr", "10.244.235.0/24"])
        .arg("--root-dir")
        .arg(&root)
        .args(["--port", &free_port()?.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting kubelet")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let result = async {
        until("node Ready", Duration::from_secs(60), || node_ready(&client, node)).await?;
        let idle = rss_kib(kubelet.id()).unwrap_or(0);
        for i in 0..args.rss_pods {
            pods.create(&PostParams::default(), &pod(&format!("rss-{i:03}"), Some(node)))
                .await?;
        }
        let lp = ListParams::default().labels("bench=kubelet");
        until("pods Running", Duration::from_secs(300), || async {
            pods.list(&lp)
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| {
                            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                        })
                        .count()
                        >= args.rss_pods
                })
                .unwrap_or(false)
        })
        .await?;
        // Let probes, status updates and the first heartbeat settle.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let ctrd = pid_of(&root.join("containerd/containerd.pid"));
        let busy = rss_kib(kubelet.id()).unwrap_or(0);
        let ctrd_rss = ctrd.and_then(|p| rss_kib(p).ok()).unwrap_or(0);
        println!("kubelet memory (kubelet binary with its own containerd):");
        println!(
            "  kubelet RSS idle {} MiB, with {} running pods {} MiB (peak {} MiB); containerd {} MiB",
            idle / 1024,
            args.rss_pods,
            busy / 1024,
            std::fs::read_to_string(format!("/proc/{}/status", kubelet.id()))
                .ok()
                .and_then(|s| s
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
                .unwrap_or(0)
                / 1024,
            ctrd_rss / 1024
        );
        let mib = |kib: u64| kib as f64 / 1024.0;
        figure(
            format!("kubelet RSS with {} running pods", args.rss_pods),
            mib(busy),
            "MiB",
        )
        .vs("kubelet RSS idle", mib(idle))
        .goal("<= 30 MiB")
        .record()?;
        figure(
            format!("its containerd's RSS with {} running pods", args.rss_pods),
            mib(ctrd_rss),
            "MiB",
        )
        .record()?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = delete_pods(&pods).await;
    wait_no_containers(&root.join("containerd/containerd.sock")).await;
    stop(&mut kubelet);
    result
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    println!("binaries: {}", bin_dir().display());
    startup_latency(&args, tmp.path()).await?;
    kubelet_memory(&args, tmp.path()).await?;
    Ok(())
}
