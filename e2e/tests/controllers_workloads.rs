//! Whole-process tests of the `controllers` binary against the real `apiserver`, driven with
//! the real kubectl and kube-rs. There is no kubelet yet: where a test needs Ready pods, a
//! task in the test plays the kubelet's part and marks pods Running/Ready through the API
//! (`fake_kubelet`); everything else is the real apiserver and the real controllers.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::{
    ApiServer, Backend, Component, Kubectl, mark_pod_ready, pod_ready, wait_true, wait_until,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

/// A real apiserver (fresh data dir, free port) plus any number of `controllers` processes,
/// driven with kubectl 1.33.
struct Cluster {
    /// Dropped (killed) before the apiserver.
    controllers: Vec<Component>,
    api: ApiServer,
    k: Kubectl,
    client: Client,
}

impl Cluster {
    /// The apiserver and one non-electing controllers process.
    async fn start() -> Result<Cluster> {
        Self::start_with(&[]).await
    }

    /// [`start`](Self::start), the controllers with `extra` flags.
    async fn start_with(extra: &[&str]) -> Result<Cluster> {
        let api = ApiServer::start(Backend::Sqlite).await?;
        let mut c = Cluster {
            controllers: vec![],
            client: api.client().await?,
            k: api.kubectl(33),
            api,
        };
        c.start_controllers(false, extra)?;
        Ok(c)
    }

    /// [`start`](Self::start), then creates the namespace `ns`.
    async fn start_in(ns: &str) -> Result<Cluster> {
        let c = Self::start().await?;
        c.create_ns(ns).await?;
        Ok(c)
    }

    /// Starts one more `controllers` process under its own identity
    /// (system:kube-controller-manager), so a missing RBAC rule shows up as a 403 in its log.
    fn start_controllers(&mut self, leader_elect: bool, extra: &[&str]) -> Result<()> {
        let elect = format!("--leader-elect={leader_elect}");
        let args: Vec<&str> = std::iter::once(elect.as_str())
            .chain(extra.iter().copied())
            .collect();
        self.controllers.push(Component::start(
            &self.api,
            "controllers",
            "info,controllers=debug",
            &args,
        )?);
        Ok(())
    }

    /// SIGKILLs every running `controllers` process.
    fn kill_controllers(&mut self) {
        self.controllers.clear();
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.k.ok(args)
    }

    /// `kubectl apply -f -` with `manifest` on stdin.
    fn apply(&self, manifest: &str) -> Result<String> {
        self.k.ok_stdin(&["apply", "-f", "-"], manifest)
    }

    /// `kubectl -n <ns> rollout status <what> --timeout=<secs>s`.
    fn rollout_status(&self, ns: &str, what: &str, secs: u32) -> Result<String> {
        self.kubectl(&[
            "-n",
            ns,
            "rollout",
            "status",
            what,
            &format!("--timeout={secs}s"),
        ])
    }

    /// Creates a namespace through kube-rs (kubectl 1.32+ would send a protobuf body, which
    /// is the apiserver issue's concern, not this test's).
    async fn create_ns(&self, name: &str) -> Result<()> {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(self.client.clone())
            .create(&Default::default(), &ns)
            .await?;
        Ok(())
    }
}

/// Stand-in for a kubelet (none exists yet): marks every pod in `ns` Running and Ready, and
/// finishes graceful deletions.
fn fake_kubelet(client: Client, ns: &str) -> tokio::task::JoinHandle<()> {
    let api: Api<Pod> = Api::namespaced(client, ns);
    let next_ip = std::sync::atomic::AtomicU32::new(0);
    tokio::spawn(async move {
        let stream = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let pod = match item {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("fake kubelet watch: {e}");
                    continue;
                }
            };
            if pod.metadata.deletion_timestamp.is_some() {
                // A kubelet confirms graceful deletion once the containers are stopped.
                let _ = api
                    .delete(
                        &pod.name_any(),
                        &kube::api::DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
                continue;
            }
            if pod_ready(&pod) {
                continue;
            }
            let n = next_ip.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ip = format!("10.244.{}.{}", n / 250, n % 250 + 2);
            let _ = mark_pod_ready(&api, &pod.name_any(), Some(&ip)).await;
        }
    })
}

fn deployment_yaml(ns: &str, image: &str, replicas: i32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {image}
"#
    )
}

/// Waits up to 30 s until `pods` lists exactly `n` pods.
async fn wait_pods(pods: &Api<Pod>, n: usize) -> Result<()> {
    wait_true(&format!("{n} pods"), Duration::from_secs(30), || async {
        Ok(pods.list(&ListParams::default()).await?.items.len() == n)
    })
    .await
}

/// The pods in `pods` that are not being deleted.
async fn live_pods(pods: &Api<Pod>) -> Result<Vec<Pod>> {
    let mut l = pods.list(&ListParams::default()).await?.items;
    l.retain(|p| p.metadata.deletion_timestamp.is_none());
    Ok(l)
}

/// The image of a pod's first container.
fn first_image(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
}

async fn pods_owned_by(client: &Client, ns: &str, rs: &ReplicaSet) -> Result<Vec<Pod>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    Ok(pods
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|r| Some(&r.uid) == rs.uid().as_ref() && r.controller == Some(true))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn controllers_deployment_rolls_scales_and_undoes() -> Result<()> {
    let ns = "rollout";
    let cluster = Cluster::start_in(ns).await?;
    let client = cluster.client.clone();
    let _kubelet = fake_kubelet(client.clone(), ns);
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);

    cluster.apply(&deployment_yaml(ns, "nginx:1", 5))?;
    cluster.rollout_status(ns, "deployment/web", 60)?;
    let d = deploys.get("web").await?;
    let rs_list = rss.list(&ListParams::default()).await?.items;
    assert_eq!(rs_list.len(), 1);
    let rs1 = &rs_list[0];
    let hash = rs1
        .labels()
        .get("pod-template-hash")
        .cloned()
        .context("pod-template-hash label")?;
    assert_eq!(rs1.name_any(), format!("web-{hash}"));
    assert_eq!(rs1.owner_references()[0].uid, d.uid().unwrap_or_default());
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(pods_owned_by(&client, ns, rs1).await?.len(), 5);
    let st = d.status.clone().unwrap_or_default();
    assert_eq!(
        (
            st.replicas,
            st.updated_replicas,
            st.ready_replicas,
            st.available_replicas
        ),
        (Some(5), Some(5), Some(5), Some(5))
    );
    assert_eq!(st.observed_generation, d.metadata.generation);
    let events = cluster.kubectl(&[
        "-n",
        ns,
        "get",
        "events",
        "-o",
        "custom-columns=R:.reason,M:.message",
        "--no-headers",
    ])?;
    assert!(
        events.contains(&format!("Scaled up replica set web-{hash} from 0 to 5")),
        "{events}"
    );
    assert!(
        events.contains("SuccessfulCreate")
            && events.contains(&format!("Created pod: web-{hash}-")),
        "{events}"
    );

    // Watch availability during the image change: maxUnavailable=0 must never drop below 5.
    let seen = Arc::new(Mutex::new(Vec::<i32>::new()));
    let seen_w = seen.clone();
    let watch_api = deploys.clone();
    let watch_task = tokio::spawn(async move {
        let s = watcher(watch_api, watcher::Config::default()).applied_objects();
        futures::pin_mut!(s);
        while let Ok(Some(d)) = s.try_next().await {
            let avail = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            if let Ok(mut v) = seen_w.lock() {
                v.push(avail);
            }
        }
    });
    cluster.kubectl(&["-n", ns, "set", "image", "deployment/web", "web=nginx:2"])?;
    cluster.rollout_status(ns, "deployment/web", 60)?;
    watch_task.abort();
    let observed = seen.lock().map(|v| v.clone()).unwrap_or_default();
    assert!(observed.len() > 2, "watched statuses: {observed:?}");
    assert!(
        observed.iter().all(|a| *a >= 5),
        "availability dropped below 5 during the rollout: {observed:?}"
    );
    let rs_list = rss.list(&ListParams::default()).await?.items;
    assert_eq!(rs_list.len(), 2);
    let new_rs = rs_list
        .iter()
        .find(|r| r.name_any() != rs1.name_any())
        .context("new replica set")?;
    assert_eq!(new_rs.spec.as_ref().and_then(|s| s.replicas), Some(5));
    assert_eq!(
        new_rs
            .annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("2")
    );
    let old_rs = rss.get(&rs1.name_any()).await?;
    assert_eq!(old_rs.spec.as_ref().and_then(|s| s.replicas), Some(0));
    wait_true("old pods gone", Duration::from_secs(20), || async {
        Ok(pods_owned_by(&client, ns, &old_rs).await?.is_empty())
    })
    .await?;
    let history = cluster.kubectl(&["-n", ns, "rollout", "history", "deployment/web"])?;
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo goes back to the first template; its ReplicaSet becomes revision 3.
    cluster.kubectl(&["-n", ns, "rollout", "undo", "deployment/web"])?;
    cluster.rollout_status(ns, "deployment/web", 60)?;
    let d = deploys.get("web").await?;
    let image = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers[0].image.clone().unwrap_or_default());
    assert_eq!(image.as_deref(), Some("nginx:1"));
    let back = rss.get(&rs1.name_any()).await?;
    assert_eq!(back.spec.as_ref().and_then(|s| s.replicas), Some(5));
    assert_eq!(
        back.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(
        rss.list(&ListParams::default()).await?.items.len(),
        2,
        "undo must reuse the old replica set"
    );

    // Scale down: the ReplicaSet follows and deletes pods.
    cluster.kubectl(&["-n", ns, "scale", "deployment/web", "--replicas=2"])?;
    wait_true("2 pods", Duration::from_secs(30), || async {
        Ok(pods_owned_by(&client, ns, &back).await?.len() == 2)
    })
    .await?;
    cluster.rollout_status(ns, "deployment/web", 30)?;

    // Pause / resume / restart.
    cluster.kubectl(&["-n", ns, "rollout", "pause", "deployment/web"])?;
    cluster.kubectl(&["-n", ns, "set", "image", "deployment/web", "web=nginx:3"])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rss.list(&ListParams::default()).await?.items.len(),
        2,
        "a paused deployment must not roll"
    );
    cluster.kubectl(&["-n", ns, "rollout", "resume", "deployment/web"])?;
    cluster.rollout_status(ns, "deployment/web", 60)?;
    cluster.kubectl(&["-n", ns, "rollout", "restart", "deployment/web"])?;
    cluster.rollout_status(ns, "deployment/web", 60)?;
    assert_eq!(rss.list(&ListParams::default()).await?.items.len(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn controllers_replicaset_adopts_releases_and_replaces() -> Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.client.clone();
    let ns = "default";
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    // An orphan pod matching the selector is adopted and counts toward replicas.
    cluster.kubectl(&["run", "stray", "--image=nginx", "--labels=app=rs"])?;
    let rs_yaml = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec: {containers: [{name: c, image: nginx}]}
"#;
    cluster.apply(rs_yaml)?;
    wait_true(
        "3 pods including the adopted one",
        Duration::from_secs(30),
        || async {
            let all = pods
                .list(&ListParams::default().labels("app=rs"))
                .await?
                .items;
            let stray_owned = pods
                .get("stray")
                .await?
                .owner_references()
                .iter()
                .any(|r| r.name == "rs" && r.controller == Some(true));
            Ok(all.len() == 3 && stray_owned)
        },
    )
    .await?;
    // Relabelled pods are released and replaced.
    cluster.kubectl(&["label", "pod", "stray", "app=other", "--overwrite"])?;
    wait_true(
        "stray released and replaced",
        Duration::from_secs(30),
        || async {
            let released = pods.get("stray").await?.owner_references().is_empty();
            Ok(released
                && pods
                    .list(&ListParams::default().labels("app=rs"))
                    .await?
                    .items
                    .len()
                    == 3)
        },
    )
    .await?;
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    wait_true("status", Duration::from_secs(20), || async {
        let s = rs.get("rs").await?.status.unwrap_or_default();
        Ok(s.replicas == 3
            && s.fully_labeled_replicas == Some(3)
            && s.observed_generation == Some(1))
    })
    .await?;
    // A deleted pod is replaced.
    let victim = pods
        .list(&ListParams::default().labels("app=rs"))
        .await?
        .items[0]
        .name_any();
    cluster.kubectl(&["delete", "pod", &victim])?;
    wait_true("replacement", Duration::from_secs(20), || async {
        let l = pods
            .list(&ListParams::default().labels("app=rs"))
            .await?
            .items;
        Ok(l.len() == 3 && l.iter().all(|p| p.name_any() != victim))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn controllers_namespace_and_cascading_deletion() -> Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.client.clone();
    // Every namespace gets a default ServiceAccount and the root CA ConfigMap.
    cluster.create_ns("doomed").await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "doomed");
    wait_true(
        "default SA and kube-root-ca.crt",
        Duration::from_secs(20),
        || async {
            let cm = cms.get_opt("kube-root-ca.crt").await?;
            Ok(sas.get_opt("default").await?.is_some()
                && cm.and_then(|c| c.data).is_some_and(|d| {
                    d.get("ca.crt")
                        .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
                }))
        },
    )
    .await?;

    // Deleting a namespace removes everything in it, then the namespace.
    cluster.apply(&deployment_yaml("doomed", "nginx", 2))?;
    cluster.apply(
        "{apiVersion: v1, kind: ConfigMap, metadata: {name: cfg, namespace: doomed}, data: {a: b}}",
    )?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    wait_pods(&pods, 2).await?;
    cluster.kubectl(&["delete", "namespace", "doomed", "--timeout=60s"])?;
    let nss: Api<Namespace> = Api::all(client.clone());
    assert!(nss.get_opt("doomed").await?.is_none());
    // Re-creating it starts empty.
    cluster.create_ns("doomed").await?;
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());
    assert!(
        Api::<Deployment>::namespaced(client.clone(), "doomed")
            .get_opt("web")
            .await?
            .is_none()
    );

    // --cascade=orphan keeps the ReplicaSet and its pods, without the owner reference.
    let ns = "cascade";
    cluster.create_ns(ns).await?;
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    cluster.apply(&deployment_yaml(ns, "nginx", 2))?;
    wait_pods(&pods, 2).await?;
    cluster.kubectl(&[
        "-n",
        ns,
        "delete",
        "deployment",
        "web",
        "--cascade=orphan",
        "--timeout=30s",
    ])?;
    let orphaned = rss.list(&ListParams::default()).await?.items;
    assert_eq!(orphaned.len(), 1);
    assert!(
        orphaned[0].owner_references().is_empty(),
        "{:?}",
        orphaned[0].owner_references()
    );
    assert_eq!(pods.list(&ListParams::default()).await?.items.len(), 2);

    // Background (default): deleting the ReplicaSet deletes its pods.
    cluster.kubectl(&["-n", ns, "delete", "replicaset", &orphaned[0].name_any()])?;
    wait_true("pods collected", Duration::from_secs(30), || async {
        Ok(pods.list(&ListParams::default()).await?.items.is_empty())
    })
    .await?;

    // --cascade=foreground: kubectl returns once the deployment is gone, and by then its
    // ReplicaSet and pods are gone too (blockOwnerDeletion).
    cluster.apply(&deployment_yaml(ns, "nginx", 2))?;
    wait_pods(&pods, 2).await?;
    cluster.kubectl(&[
        "-n",
        ns,
        "delete",
        "deployment",
        "web",
        "--cascade=foreground",
        "--timeout=60s",
    ])?;
    assert!(rss.list(&ListParams::default()).await?.items.is_empty());
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn controllers_leader_failover() -> Result<()> {
    let mut cluster = Cluster::start().await?;
    // Replace the non-electing instance with two candidates, on short leases to keep the test
    // fast (the protocol is the one the 15 s defaults run).
    cluster.kill_controllers();
    let fast_lease = [
        "--leader-elect-lease-duration=4s",
        "--leader-elect-renew-deadline=3s",
        "--leader-elect-retry-period=500ms",
    ];
    cluster.start_controllers(true, &fast_lease)?;
    cluster.start_controllers(true, &fast_lease)?;
    let client = cluster.client.clone();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let holder = || async {
        Ok::<_, anyhow::Error>(
            leases
                .get_opt("kube-controller-manager")
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .unwrap_or_default(),
        )
    };
    wait_true("a leader", Duration::from_secs(20), || async {
        Ok(!holder().await?.is_empty())
    })
    .await?;
    let first = holder().await?;
    // Exactly one acts: find which process logged leadership.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let leaders: Vec<usize> = (0..cluster.controllers.len())
        .filter(|&i| cluster.controllers[i].log().contains("became leader"))
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "exactly one leader ({first}): {}\n---\n{}",
        cluster.controllers[0].log(),
        cluster.controllers[1].log()
    );
    cluster.controllers[leaders[0]].kill();
    let killed = Instant::now();
    wait_true("takeover", Duration::from_secs(20), || async {
        Ok(holder().await? != first && !holder().await?.is_empty())
    })
    .await?;
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "takeover took {:?}",
        killed.elapsed()
    );
    // The new leader acts.
    cluster.apply(&deployment_yaml("default", "nginx", 2))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_true(
        "pods from the new leader",
        Duration::from_secs(20),
        || async {
            Ok(pods
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .len()
                == 2)
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn controllers_endpoints_follow_ready_pods() -> Result<()> {
    let ns = "svc";
    let cluster = Cluster::start_in(ns).await?;
    let client = cluster.client.clone();
    let manifest = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: nginx, ports: [{{name: http, containerPort: 8080}}]}}]}}
"#
    );
    cluster.apply(&manifest)?;
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), ns);
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), ns);
    // Pods exist but nothing is Ready yet: no addresses.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_pods(&pods, 2).await?;
    assert!(
        endpoints
            .get_opt("web")
            .await?
            .and_then(|e| e.subsets)
            .is_none()
    );
    let _kubelet = fake_kubelet(client.clone(), ns);
    wait_true(
        "2 ready addresses on port 8080",
        Duration::from_secs(30),
        || async {
            let Some(e) = endpoints.get_opt("web").await? else {
                return Ok(false);
            };
            let subsets = e.subsets.unwrap_or_default();
            Ok(subsets.len() == 1
                && subsets[0].addresses.as_ref().map(Vec::len) == Some(2)
                && subsets[0]
                    .ports
                    .as_ref()
                    .is_some_and(|p| p[0].port == 8080 && p[0].name.as_deref() == Some("http")))
        },
    )
    .await?;
    wait_true(
        "an EndpointSlice with 2 ready endpoints",
        Duration::from_secs(30),
        || async {
            let l = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await?
                .items;
            Ok(l.len() == 1
                && l[0].endpoints.len() == 2
                && l[0]
                    .endpoints
                    .iter()
                    .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                && l[0].ports.as_ref().is_some_and(|p| p[0].port == Some(8080)))
        },
    )
    .await?;
    let out = cluster.kubectl(&["-n", ns, "get", "endpoints", "web"])?;
    assert!(out.contains(":8080"), "{out}");
    Ok(())
}

/// Test stand-in for a kubelet running job pods to completion: every active pod of `job`
/// gets `phase` (Succeeded or Failed). Returns how many pods were active.
async fn finish_job_pods(pods: &Api<Pod>, job: &str, phase: &str) -> Result<usize> {
    let active: Vec<Pod> = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded") | Some("Failed")
                )
        })
        .collect();
    for p in &active {
        pods.patch_status(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await?;
    }
    Ok(active.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn controllers_job_completes_fails_and_expires() -> Result<()> {
    let ns = "jobs";
    let cluster = Cluster::start_in(ns).await?;
    let client = cluster.client.clone();
    let job = |name: &str, extra: &str| {
        format!(
            r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}, namespace: {ns}}}
spec:
  {extra}
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: c, image: busybox}}]
"#
        )
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), ns);
    cluster.apply(&job("work", "completions: 3\n  parallelism: 2"))?;
    let max_active = std::sync::atomic::AtomicUsize::new(0);
    wait_true("job complete", Duration::from_secs(30), || async {
        let n = finish_job_pods(&pods, "work", "Succeeded").await?;
        max_active.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
        let st = jobs.get("work").await?.status.unwrap_or_default();
        Ok(st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Complete" && c.status == "True"))
    })
    .await?;
    let max_active = max_active.load(std::sync::atomic::Ordering::SeqCst);
    assert!(max_active <= 2, "parallelism 2 exceeded: {max_active}");
    cluster.kubectl(&[
        "-n",
        ns,
        "wait",
        "--for=condition=complete",
        "job/work",
        "--timeout=10s",
    ])?;
    let st = jobs.get("work").await?.status.unwrap_or_default();
    assert_eq!((st.succeeded, st.active), (Some(3), Some(0)));
    assert!(st.completion_time.is_some());

    // Indexed: one pod per index, at most two at a time, each with its index as annotation,
    // label, hostname and JOB_COMPLETION_INDEX; all succeeded completes with indexes 0-2.
    cluster.apply(&job(
        "indexed",
        "completions: 3\n  parallelism: 2\n  completionMode: Indexed",
    ))?;
    const INDEX: &str = "batch.kubernetes.io/job-completion-index";
    let first: Vec<Pod> = wait_until("two indexed pods", Duration::from_secs(20), || async {
        let items = pods
            .list(&ListParams::default().labels("job-name=indexed"))
            .await?
            .items;
        Ok((items.len() >= 2).then_some(items))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = pods
        .list(&ListParams::default().labels("job-name=indexed"))
        .await?
        .items;
    assert_eq!(again.len(), 2, "parallelism 2 exceeded: {again:?}");
    let mut seen: Vec<String> = vec![];
    for p in &first {
        let ix = p.annotations().get(INDEX).cloned().unwrap_or_default();
        assert_eq!(p.labels().get(INDEX), Some(&ix), "{p:?}");
        let spec = p.spec.clone().unwrap_or_default();
        assert_eq!(spec.hostname, Some(format!("indexed-{ix}")));
        assert!(
            p.name_any().starts_with(&format!("indexed-{ix}-")),
            "{}",
            p.name_any()
        );
        let env = spec.containers[0].env.clone().unwrap_or_default();
        assert!(
            env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.as_str())
                    == Some("metadata.labels['batch.kubernetes.io/job-completion-index']")),
            "{env:?}"
        );
        seen.push(ix);
    }
    seen.sort();
    assert_eq!(seen, ["0", "1"]);
    wait_true("indexed job complete", Duration::from_secs(30), || async {
        finish_job_pods(&pods, "indexed", "Succeeded").await?;
        let st = jobs.get("indexed").await?.status.unwrap_or_default();
        Ok(st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Complete" && c.status == "True"))
    })
    .await?;
    let st = jobs.get("indexed").await?.status.unwrap_or_default();
    assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!((st.succeeded, st.active), (Some(3), Some(0)));
    let mut all: Vec<String> = pods
        .list(&ListParams::default().labels("job-name=indexed"))
        .await?
        .items
        .iter()
        .filter_map(|p| p.annotations().get(INDEX).cloned())
        .collect();
    all.sort();
    assert_eq!(all, ["0", "1", "2"], "one pod per index");

    // podFailurePolicy: exit code 42 of container c fails the Job at once (backoffLimit 6).
    cluster.apply(&job(
        "policy",
        "podFailurePolicy: {rules: [{action: FailJob, onExitCodes: {containerName: c, operator: In, values: [42]}}]}",
    ))?;
    let failed = wait_until("policy job failed", Duration::from_secs(30), || async {
        for p in pods
            .list(&ListParams::default().labels("job-name=policy"))
            .await?
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed"))
        {
            let terminated = json!({"terminated": {"exitCode": 42, "reason": "Error"}});
            pods.patch_status(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Failed", "containerStatuses": [{
                    "name": "c", "image": "busybox", "imageID": "", "ready": false,
                    "restartCount": 0, "state": terminated,
                }]}})),
            )
            .await?;
        }
        let st = jobs.get("policy").await?.status.unwrap_or_default();
        Ok(st
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Failed" && c.status == "True"))
    })
    .await?;
    assert_eq!(failed.reason.as_deref(), Some("PodFailurePolicy"));
    let message = failed.message.unwrap_or_default();
    assert!(
        message.contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{message}"
    );

    // backoffLimit 1: the second failed pod fails the Job; ttl 2 s then deletes it and its pods.
    cluster.apply(&job(
        "flaky",
        "backoffLimit: 1\n  ttlSecondsAfterFinished: 2",
    ))?;
    let saw_failed = std::sync::atomic::AtomicBool::new(false);
    wait_true(
        "job failed and deleted",
        Duration::from_secs(30),
        || async {
            finish_job_pods(&pods, "flaky", "Failed").await?;
            match jobs.get_opt("flaky").await? {
                Some(j) => {
                    if j.status
                        .unwrap_or_default()
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| {
                            c.type_ == "Failed"
                                && c.reason.as_deref() == Some("BackoffLimitExceeded")
                        })
                    {
                        saw_failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(false)
                }
                None => Ok(true),
            }
        },
    )
    .await?;
    wait_true("flaky pods collected", Duration::from_secs(20), || async {
        Ok(pods
            .list(&ListParams::default().labels("job-name=flaky"))
            .await?
            .items
            .is_empty())
    })
    .await?;
    assert!(
        saw_failed.load(std::sync::atomic::Ordering::SeqCst),
        "the Failed condition was never observed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn controllers_node_ipam_lease_expiry_taint_and_eviction() -> Result<()> {
    let cluster = Cluster::start_with(&[
        "--node-monitor-grace-period=2s",
        "--pod-eviction-timeout=1s",
    ])
    .await?;
    let client = cluster.client.clone();
    cluster.apply("{apiVersion: v1, kind: Node, metadata: {name: n1}}")?;
    // Stand-in for the kubelet's heartbeat: renew the node Lease every 300 ms until stopped.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    // When the last renewal was sent: grace and tolerationSeconds count from the last renewal
    // the controllers saw, which may precede `beat.abort()` by a beat period.
    let last_renew = Arc::new(std::sync::Mutex::new(Instant::now()));
    let beat = {
        let leases = leases.clone();
        let last_renew = last_renew.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(mut t) = last_renew.lock() {
                    *t = Instant::now();
                }
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "n1"},
                    "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": now}});
                let _ = leases
                    .patch(
                        "n1",
                        &PatchParams::apply("test-kubelet").force(),
                        &Patch::Apply(lease),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    // Stand-in for the kubelet's first status post: Ready=True.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    nodes
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})))
        .await?;
    wait_true("podCIDR", Duration::from_secs(20), || async {
        Ok(nodes
            .get("n1")
            .await?
            .spec
            .and_then(|s| s.pod_cidr)
            .as_deref()
            == Some("10.244.0.0/24"))
    })
    .await?;
    let pod = |name: &str, secs: &str| {
        format!(
            "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: default}}, spec: {{nodeName: n1, containers: [{{name: c, image: nginx}}], tolerations: [{{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute{secs}}}]}}}}"
        )
    };
    cluster.apply(&pod("brief", ", tolerationSeconds: 2"))?;
    cluster.apply(&pod("steadfast", ""))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let taints = |n: &k8s_openapi::api::core::v1::Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
    };
    assert!(
        taints(&nodes.get("n1").await?).is_empty(),
        "a node renewing its Lease must not be tainted"
    );

    beat.abort();
    let stopped = Instant::now();
    wait_true(
        "unreachable taint and Ready=Unknown",
        Duration::from_secs(20),
        || async {
            let n = nodes.get("n1").await?;
            let unknown = n
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "Unknown");
            let tainted = taints(&nodes.get("n1").await?)
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
            Ok(unknown && tainted)
        },
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_true(
        "eviction after tolerationSeconds",
        Duration::from_secs(20),
        || async {
            Ok(pods
                .get_opt("brief")
                .await?
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some()))
        },
    )
    .await?;
    // grace (2 s) + tolerationSeconds (2 s) after the last renewal, less the second that the
    // taint's timeAdded (a whole-second metav1.Time, as in Kubernetes) may round away.
    let renewed = last_renew.lock().map(|t| *t).unwrap_or(stopped);
    assert!(
        renewed.elapsed() >= Duration::from_secs(3),
        "evicted before grace + tolerationSeconds: {:?} after the last Lease renewal",
        renewed.elapsed()
    );
    let steadfast = pods.get("steadfast").await?;
    assert!(
        steadfast.metadata.deletion_timestamp.is_none(),
        "a pod tolerating forever stays"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn controllers_daemonset_one_pod_per_eligible_node_and_rolls() -> Result<()> {
    let ns = "ds";
    let cluster = Cluster::start_in(ns).await?;
    let client = cluster.client.clone();
    cluster.apply(
            "{apiVersion: v1, kind: List, items: [
              {apiVersion: v1, kind: Node, metadata: {name: a}},
              {apiVersion: v1, kind: Node, metadata: {name: b}},
              {apiVersion: v1, kind: Node, metadata: {name: c}, spec: {taints: [{key: gpu, effect: NoSchedule}]}}]}",
        )?;
    let _kubelet = fake_kubelet(client.clone(), ns);
    let ds = |image: &str| {
        format!(
            "{{apiVersion: apps/v1, kind: DaemonSet, metadata: {{name: agent, namespace: {ns}}}, spec: {{selector: {{matchLabels: {{app: agent}}}}, template: {{metadata: {{labels: {{app: agent}}}}, spec: {{containers: [{{name: a, image: {image}}}]}}}}}}}}"
        )
    };
    cluster.apply(&ds("busybox:1"))?;
    cluster.rollout_status(ns, "daemonset/agent", 30)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let nodes_of = || async {
        let mut v: Vec<String> = live_pods(&pods)
            .await?
            .into_iter()
            .filter_map(|p| p.spec.and_then(|s| s.node_name))
            .collect();
        v.sort();
        Ok::<_, anyhow::Error>(v)
    };
    assert_eq!(
        nodes_of().await?,
        vec!["a", "b"],
        "one pod per untainted node"
    );
    cluster.kubectl(&["-n", ns, "set", "image", "daemonset/agent", "a=busybox:2"])?;
    cluster.rollout_status(ns, "daemonset/agent", 30)?;
    wait_true(
        "all pods on the new template",
        Duration::from_secs(20),
        || async {
            let l = pods.list(&ListParams::default()).await?.items;
            Ok(l.len() == 2 && l.iter().all(|p| first_image(p) == Some("busybox:2")))
        },
    )
    .await?;
    assert_eq!(nodes_of().await?, vec!["a", "b"]);
    // One ControllerRevision per template, numbered in order, as `rollout history` reads them.
    let history = cluster.kubectl(&["-n", ns, "rollout", "history", "daemonset/agent"])?;
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, vec!["1", "2"], "{history}");
    let second = cluster.kubectl(&[
        "-n",
        ns,
        "rollout",
        "history",
        "daemonset/agent",
        "--revision=2",
    ])?;
    assert!(second.contains("busybox:2"), "{second}");

    // Hash collision: in another namespace a foreign ControllerRevision already holds the name
    // the same template hashes to; the DaemonSet bumps status.collisionCount and names its
    // revision with the new hash.
    use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
    const HASH: &str = "controller-revision-hash";
    let current = Api::<DaemonSet>::namespaced(client.clone(), ns)
        .get("agent")
        .await?;
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let taken = revisions
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .max_by_key(|r| r.revision)
        .context("no revision")?;
    let hash = taken.labels().get(HASH).cloned().context("no hash label")?;
    assert_eq!(current.status.and_then(|s| s.collision_count), None);
    let other = "ds-collide";
    cluster.create_ns(other).await?;
    let foreign: ControllerRevision = serde_json::from_value(json!({
        "metadata": {"name": format!("agent-{hash}"), "labels": {"app": "agent", HASH: hash}},
        "data": {"spec": {"template": {"metadata": {"labels": {"app": "other"}}}}},
        "revision": 1,
    }))?;
    let other_revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), other);
    other_revisions
        .create(&Default::default(), &foreign)
        .await?;
    cluster.apply(&ds("busybox:2").replace(
        &format!("namespace: {ns}}}"),
        &format!("namespace: {other}}}"),
    ))?;
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), other);
    let own = wait_until("collision resolved", Duration::from_secs(20), || async {
        let d = dss.get("agent").await?;
        let count = d.status.as_ref().and_then(|s| s.collision_count);
        let uid = d.uid();
        let owned = other_revisions
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|r| {
                r.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref())
            });
        Ok(owned.filter(|_| count == Some(1)))
    })
    .await?;
    let own_hash = own.labels().get(HASH).cloned().unwrap_or_default();
    assert_ne!(own_hash, hash);
    assert_eq!(own.name_any(), format!("agent-{own_hash}"));
    let untouched = other_revisions.get(&format!("agent-{hash}")).await?;
    assert_eq!(
        untouched.data, foreign.data,
        "the foreign revision is left alone"
    );
    let other_pods: Api<Pod> = Api::namespaced(client.clone(), other);
    wait_true(
        "pods carry the new hash",
        Duration::from_secs(20),
        || async {
            let l = other_pods.list(&ListParams::default()).await?.items;
            Ok(l.len() == 2 && l.iter().all(|p| p.labels().get(HASH) == Some(&own_hash)))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver and controllers binaries"]
async fn controllers_kill_9_mid_rollout_converges_without_duplicates() -> Result<()> {
    let ns = "restart";
    let mut cluster = Cluster::start_in(ns).await?;
    let client = cluster.client.clone();
    let _kubelet = fake_kubelet(client.clone(), ns);
    cluster.apply(&deployment_yaml(ns, "nginx:1", 5))?;
    cluster.rollout_status(ns, "deployment/web", 60)?;
    cluster.kubectl(&["-n", ns, "set", "image", "deployment/web", "web=nginx:2"])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SIGKILL mid-rollout, then a fresh process picks up from whatever state the API holds.
    cluster.kill_controllers();
    cluster.start_controllers(false, &[])?;
    cluster.rollout_status(ns, "deployment/web", 60)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_true(
        "exactly 5 pods, all on the new template",
        Duration::from_secs(30),
        || async {
            let l = live_pods(&pods).await?;
            Ok(l.len() == 5 && l.iter().all(|p| first_image(p) == Some("nginx:2")))
        },
    )
    .await?;
    let rss = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    assert_eq!(rss.len(), 2, "no duplicate ReplicaSets");
    Ok(())
}
