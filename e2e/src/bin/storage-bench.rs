//! `storage-bench`: claim created → Bound for local-path claims bound when their pod is
//! scheduled (WaitForFirstConsumer, the default `local-path` class) — issue 15's Benchmarks —
//! beside its floor in the same run: pod created → scheduled for the same pods without a claim
//! (a WaitForFirstConsumer claim can't bind before its pod is placed). On a one-node
//! `lotse up` with the real containerd; each claim's time runs from the return of its create
//! call to the first watch event that shows it Bound. Figures are printed, never asserted.
//! Needs root, containerd, runc, the built binaries and
//! `target/debug/lotse images build --output target/lotse-images busybox pause`:
//!
//!   cargo build --workspace --bins && target/debug/storage-bench --claims 100
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::lotse::{Node, delete_all_pods, random_pod_cidr};
use e2e::report::{figure, ms};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;

/// Claim created → Bound (WaitForFirstConsumer, with its pod) vs pod created → scheduled.
#[derive(Parser)]
struct Args {
    /// Claims (each with one pod), and as many claim-less pods for the floor.
    #[arg(long, default_value_t = 100)]
    claims: usize,
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Records when each object first satisfies `done`.
fn watch_for<K>(api: Api<K>, seen: Seen, done: fn(&K) -> bool) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(ev) = s.next().await {
            let objs = match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => vec![o],
                _ => continue,
            };
            let now = Instant::now();
            for o in objs {
                if done(&o)
                    && let Ok(mut m) = seen.lock()
                {
                    m.entry(o.meta().name.clone().unwrap_or_default())
                        .or_insert(now);
                }
            }
        }
    })
}

fn pod(name: &str, claim: Option<&str>) -> anyhow::Result<Pod> {
    let mut v = serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            // The image is on the node: no pull attempt (busybox is `:latest`, pulled Always).
            "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"]}]
        }
    });
    if let Some(c) = claim {
        v["spec"]["containers"][0]["volumeMounts"] =
            serde_json::json!([{"name": "data", "mountPath": "/data"}]);
        v["spec"]["volumes"] =
            serde_json::json!([{"name": "data", "persistentVolumeClaim": {"claimName": c}}]);
    }
    Ok(serde_json::from_value(v)?)
}

fn percentiles(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    let at = |q: f64| d[((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1];
    (at(0.5), at(0.99))
}

/// Waits until `seen` holds every name of `started`; the delays from start.
async fn delays(
    what: &str,
    started: &HashMap<String, Instant>,
    seen: &Seen,
) -> anyhow::Result<Vec<Duration>> {
    let t0 = Instant::now();
    loop {
        if let Ok(m) = seen.lock()
            && started.keys().all(|n| m.contains_key(n))
        {
            return Ok(started
                .iter()
                .map(|(n, t)| m[n].saturating_duration_since(*t))
                .collect());
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("{what}: not all done after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.claims == 0 {
        bail!("--claims must be at least 1");
    }
    let tmp = tempfile::tempdir()?;
    let node = Node::start(
        tmp.path(),
        "storage-bench",
        &random_pod_cidr()?,
        &["busybox.tar", "pause.tar"],
    )?;
    let kc = kube::config::Kubeconfig::read_from(node.data.join("admin.kubeconfig"))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let scheduled: Seen = Arc::default();
    let bound: Seen = Arc::default();
    let selected: Seen = Arc::default();
    let w1 = watch_for(pods.clone(), scheduled.clone(), |p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
    });
    let w2 = watch_for(claims.clone(), bound.clone(), |c| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    });
    let w3 = watch_for(claims.clone(), selected.clone(), |c| {
        c.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("volume.kubernetes.io/selected-node"))
    });
    // The service account the pods need exists once the controllers have made it.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "default");
    let t0 = Instant::now();
    while sa.get_opt("default").await?.is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("no default ServiceAccount after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pp = PostParams::default();
    let mut plain = HashMap::new();
    for i in 0..args.claims {
        let name = format!("plain-{i}");
        pods.create(&pp, &pod(&name, None)?).await?;
        plain.insert(name, Instant::now());
    }
    let floor = delays("pods scheduled", &plain, &scheduled).await?;
    // A node holds 110 pods: each round's pods go before the next round's come.
    delete_all_pods(&node.kubectl)?;

    let claim = |name: &str| -> anyhow::Result<PersistentVolumeClaim> {
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Mi"}}}
        }))?)
    };
    // Each claim with its pod right after it: the pod often reaches the scheduler before its
    // claim does, is unschedulable ("persistentvolumeclaim ... not found") and waits out the
    // 1 s initial backoff once the claim arrives, as in Kubernetes.
    let mut made = HashMap::new();
    for i in 0..args.claims {
        let name = format!("data-{i}");
        claims
            .create(&pp, &claim(&name)?)
            .await
            .context("creating a claim")?;
        made.insert(name.clone(), Instant::now());
        pods.create(&pp, &pod(&format!("user-{i}"), Some(&name))?)
            .await?;
    }
    let to_bound = delays("claims Bound", &made, &bound).await?;
    let to_selected = delays("claims given a node", &made, &selected).await?;
    delete_all_pods(&node.kubectl)?;
    // Claims first, then their pods (as a StatefulSet's controller creates them): each time
    // runs from its pod's creation, when the WaitForFirstConsumer claim can start binding.
    let mut waiting = HashMap::new();
    for i in 0..args.claims {
        let name = format!("early-{i}");
        claims
            .create(&pp, &claim(&name)?)
            .await
            .context("creating a claim")?;
    }
    for i in 0..args.claims {
        let name = format!("early-{i}");
        pods.create(&pp, &pod(&format!("early-user-{i}"), Some(&name))?)
            .await?;
        waiting.insert(name, Instant::now());
    }
    let early_bound = delays("early claims Bound", &waiting, &bound).await?;
    let early_selected = delays("early claims given a node", &waiting, &selected).await?;
    // The controllers' part alone: selected-node seen → Bound seen, per claim.
    let controllers_part: Vec<Duration> = {
        let (s, b) = (
            selected.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
            bound.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        );
        waiting
            .keys()
            .chain(made.keys())
            .filter_map(|n| Some(b.get(n)?.saturating_duration_since(*s.get(n)?)))
            .collect()
    };
    w1.abort();
    w2.abort();
    w3.abort();

    let (f50, f99) = percentiles(floor);
    let n = args.claims;
    let (b50, b99) = percentiles(early_bound);
    for (q, claim_bound, floor) in [("p50", b50, f50), ("p99", b99, f99)] {
        figure(
            format!("claims first, then pods: pod created -> claim Bound {q}, {n} claims"),
            ms(claim_bound),
            "ms",
        )
        .vs(
            format!("pod created -> scheduled without a claim {q}"),
            ms(floor),
        )
        .goal_if(q == "p99", "p99 <= 1 s")
        .record()?;
    }
    let (s50, s99) = percentiles(early_selected);
    println!(
        "claims created first, then their pods: pod created -> claim Bound (local-path, WaitForFirstConsumer, {n} claims): p50 {b50:?}  p99 {b99:?}  (goal p99 <= 1 s)"
    );
    println!(
        "  of which pod created -> selected-node set by the scheduler: p50 {s50:?}  p99 {s99:?}"
    );
    let (b50, b99) = percentiles(to_bound);
    figure(
        format!("each claim with its pod: claim created -> Bound p99, {n} claims"),
        ms(b99),
        "ms",
    )
    .vs("pod created -> scheduled without a claim p99", ms(f99))
    .record()?;
    let (s50, s99) = percentiles(to_selected);
    println!(
        "each claim with its pod right after it: claim created -> Bound ({n} claims): p50 {b50:?}  p99 {b99:?}"
    );
    println!(
        "  of which claim created -> selected-node set by the scheduler: p50 {s50:?}  p99 {s99:?} (a pod that beats its claim into the scheduler's cache waits the 1 s initial backoff)"
    );
    println!("floor: pod created -> scheduled, no claim ({n} pods): p50 {f50:?}  p99 {f99:?}");
    let (c50, c99) = percentiles(controllers_part);
    println!(
        "controllers' part, both rounds: selected-node set -> claim Bound ({} claims): p50 {c50:?}  p99 {c99:?}",
        2 * n
    );
    // Where time goes: the binder's failed syncs are retried after 2 s.
    let log = node.lotse.log();
    println!(
        "binder: {} failed claim syncs, {} failed volume syncs (each retried after 2 s)",
        log.matches("claim sync failed").count(),
        log.matches("volume sync failed").count()
    );
    delete_all_pods(&node.kubectl)?;
    Ok(())
}
