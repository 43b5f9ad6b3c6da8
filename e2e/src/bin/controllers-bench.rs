//! Controllers benchmark (prints figures, asserts nothing): an N-replica Deployment applied to
//! a real apiserver, reconciled by the real `controllers` binary under its own identity
//! (`<data-dir>/controllers.kubeconfig`, user `system:kube-controller-manager`). Reports the
//! time until N pods exist, and until the rollout is complete with this program playing the
//! kubelet (marking pods Running/Ready through the status subresource).
//!
//! `cargo build --release -p apiserver -p controllers -p e2e && LOTSE_BIN_DIR=target/release target/release/controllers-bench`
use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use e2e::report::figure;
use e2e::{ApiServer, Backend, Component, bin_dir, mark_pod_ready, pod_ready, wait_until_every};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Deployment/ReplicaSet controller throughput against a real apiserver (embedded SQLite).
#[derive(Parser)]
struct Args {
    /// Replicas of the benchmark Deployment.
    #[arg(long, env = "LOTSE_BENCH_REPLICAS", default_value_t = 1000)]
    replicas: usize,
    /// Concurrent status writes of the simulated kubelet.
    #[arg(long, default_value_t = 32)]
    status_concurrency: usize,
    /// Give up after this many seconds per phase.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

fn deployment(replicas: usize) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }))?)
}

/// Waits until the namespace's pod watch has shown `n` distinct pods; returns the time taken
/// until the first and until the last.
async fn wait_for_pods(
    pods: &Api<Pod>,
    n: usize,
    start: Instant,
    timeout: Duration,
) -> Result<(Duration, Duration)> {
    let stream = watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    let mut seen = HashSet::new();
    let mut first = None;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while seen.len() < n {
        tokio::select! {
            item = stream.try_next() => match item? {
                Some(p) => {
                    seen.insert(p.name_any());
                    first.get_or_insert_with(|| start.elapsed());
                }
                None => bail!("pod watch ended"),
            },
            _ = &mut deadline => bail!("only {} of {n} pods after {timeout:?}", seen.len()),
        }
    }
    Ok((first.unwrap_or_default(), start.elapsed()))
}

/// The same pods created straight by this client (64 at a time) in namespace `ns`: the
/// apiserver's pod create rate for one client, the limit the ReplicaSet controller's creates
/// meet. Returns pods/s.
async fn direct_creates(client: &Client, ns: &str, n: usize) -> Result<f64> {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "direct-", "labels": {"app": "direct"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }))?;
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|_| {
            let (pods, pod) = (pods.clone(), pod.clone());
            async move { pods.create(&PostParams::default(), &pod).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Plays the kubelet: marks every pod of the namespace Running and Ready.
fn simulated_kubelet(pods: Api<Pod>, concurrency: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stream = watcher(pods.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .filter_map(|p| async move { p.ok() })
            .filter(|p| {
                futures::future::ready(!pod_ready(p) && p.metadata.deletion_timestamp.is_none())
            })
            .map(|p| {
                let pods = pods.clone();
                async move {
                    let _ = mark_pod_ready(&pods, &p.name_any(), None).await;
                }
            })
            .buffer_unordered(concurrency);
        stream.for_each(|_| futures::future::ready(())).await;
    })
}

async fn wait_for_rollout(
    deploys: &Api<Deployment>,
    n: usize,
    start: Instant,
    timeout: Duration,
) -> Result<Duration> {
    let n = n as i32;
    wait_until_every(
        "rollout complete",
        timeout,
        Duration::from_millis(50),
        || async {
            let d = deploys.get("bench").await?;
            let s = d.status.unwrap_or_default();
            if s.updated_replicas == Some(n)
                && s.available_replicas == Some(n)
                && s.replicas == Some(n)
                && s.observed_generation == d.metadata.generation
            {
                return Ok(Some(start.elapsed()));
            }
            bail!("rollout incomplete: {s:?}")
        },
    )
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout_secs);
    let api = ApiServer::start(Backend::Sqlite).await?;
    let client: Client = api.client().await?;
    // Killed on every exit path.
    let _controllers = Component::start(&api, "controllers", "warn", &["--leader-elect=false"])?;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "bench"}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "bench");

    let start = Instant::now();
    let watching = {
        let pods = pods.clone();
        let n = args.replicas;
        tokio::spawn(async move { wait_for_pods(&pods, n, start, timeout).await })
    };
    deploys
        .create(&PostParams::default(), &deployment(args.replicas)?)
        .await?;
    let (first, created) = watching.await??;
    let kubelet = simulated_kubelet(pods.clone(), args.status_concurrency);
    let complete = wait_for_rollout(&deploys, args.replicas, start, timeout).await?;
    kubelet.abort();
    let total = pods.list(&ListParams::default()).await?.items.len();
    let direct = direct_creates(&client, "bench-direct", args.replicas).await?;

    let n = args.replicas as f64;
    println!(
        "controllers-bench: {}-replica Deployment (apiserver {}, controllers {})",
        args.replicas,
        bin_dir().join("apiserver").display(),
        bin_dir().join("controllers").display()
    );
    println!(
        "  pods created:      {:>8.2} s  ({:.0} pods/s)",
        created.as_secs_f64(),
        n / created.as_secs_f64()
    );
    println!(
        "  first pod:         {:>8.2} s  (Deployment -> ReplicaSet -> pod); then {:.0} pods/s",
        first.as_secs_f64(),
        (n - 1.0) / (created - first).as_secs_f64().max(1e-3)
    );
    println!(
        "  limit:             the same client creating the pods itself, 64 at a time: {direct:.0} pods/s"
    );
    println!(
        "  rollout complete:  {:>8.2} s  (status writer: {} concurrent)",
        complete.as_secs_f64(),
        args.status_concurrency
    );
    println!(
        "  pods in namespace: {total:>8}  (duplicates: {})",
        total.saturating_sub(args.replicas)
    );
    let what = format!("{}-replica Deployment", args.replicas);
    figure(
        format!("{what}: pods created"),
        n / created.as_secs_f64(),
        "pods/s",
    )
    .vs("pods created by one client directly (64 at a time)", direct)
    .goal(">= 2000 pods/s (issue 19)")
    .record()?;
    figure(
        format!("{what}: rollout complete"),
        complete.as_secs_f64(),
        "s",
    )
    .record()?;
    Ok(())
}
