//! The raw-CRI baseline: the kubelet's own sequence for a busybox pod (RunPodSandbox with the
//! kubelet's sandbox config, so the same pause image and CNI network; CreateContainer with the
//! kubelet's container config; StartContainer) sent straight to the kubelet's containerd,
//! through the kubelet's CRI client and config builders. Nothing of the API: no watch, no
//! volumes, no events, no status write.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// The label every raw sandbox carries (what [`RawCri::clean_up`] removes).
const LABEL: (&str, &str) = ("bench", "raw-cri");

/// The ID of image `name` in the runtime (None: not there).
async fn image_id(cri: &kubelet::runtime::Cri, name: &str) -> Result<Option<String>> {
    let mut img = cri.img.clone();
    Ok(img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: name.to_string(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .context("CRI ImageStatus")?
        .into_inner()
        .image
        .map(|i| i.id)
        .filter(|id| !id.is_empty()))
}

/// A client sending pod starts straight to one containerd.
#[derive(Clone)]
pub struct RawCri {
    cri: kubelet::runtime::Cri,
    /// The node the kubelet runs (root dir, DNS, cgroup root): the configs are built from it.
    node: Arc<kubelet::Config>,
    /// busybox's image ID, resolved once (the kubelet resolves it per start from its cache).
    image: String,
    /// Distinguishes the sandboxes of one run from another's.
    run: Arc<AtomicUsize>,
}

/// What one batch of starts measured.
pub struct Starts {
    /// Each pod's RunPodSandbox → StartContainer returned, sorted.
    pub latencies: Vec<Duration>,
    /// First start sent → last start returned.
    pub wall: Duration,
}

impl Starts {
    /// Pod starts per second over the batch.
    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

impl RawCri {
    /// Connects to the containerd at `socket` that the kubelet configured with `node`, and
    /// resolves busybox's image ID (imported by the kubelet from its archive).
    pub async fn connect(socket: &std::path::Path, node: kubelet::Config) -> Result<RawCri> {
        let cri = kubelet::runtime::connect(&socket.to_string_lossy())?;
        let name = kubelet::spec::normalize_image("busybox");
        // containerd's CRI image store learns of an import through an event, a moment later.
        let t0 = Instant::now();
        let image = loop {
            if let Some(id) = image_id(&cri, &name).await? {
                break id;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("{name} is not in the kubelet's containerd after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Ok(RawCri {
            cri,
            node: Arc::new(node),
            image,
            run: Default::default(),
        })
    }

    /// The busybox pod of start `i` (as the bench's API pods, without the API's defaults).
    fn pod(&self, run: usize, i: usize) -> Pod {
        let pid = std::process::id();
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": format!("raw-{run}-{i:03}"),
                "namespace": "default",
                "uid": format!("{pid:08x}-{run:04x}-4000-8000-{i:012x}"),
                "labels": {LABEL.0: LABEL.1},
            },
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
            },
        }))
        .unwrap_or_default()
    }

    /// One pod start, as the kubelet's first pass does it: RunPodSandbox, CreateContainer,
    /// StartContainer.
    async fn start(&self, pod: &Pod) -> Result<()> {
        let mut rt = self.cri.rt.clone();
        let sandbox = kubelet::pods::sandbox_config(&self.node, pod, 0);
        std::fs::create_dir_all(&sandbox.log_directory)?;
        let id = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        let Some(c) = pod.spec.as_ref().and_then(|s| s.containers.first()) else {
            bail!("pod without container");
        };
        let config = kubelet::pods::container_config(
            &self.node,
            pod,
            c,
            0,
            self.image.clone(),
            Vec::new(),
            kubelet::spec::security(pod, c),
        );
        let container = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: id,
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: container,
        })
        .await
        .context("StartContainer")?;
        Ok(())
    }

    /// Starts `pods` pods with `starters` concurrent starters, each taking the next pod as soon
    /// as its last one is started.
    pub async fn burst(&self, pods: usize, starters: usize) -> Result<Starts> {
        let run = self.run.fetch_add(1, Ordering::Relaxed);
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..starters.max(1))
            .map(|_| {
                let (me, next) = (self.clone(), next.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= pods {
                            return Ok::<_, anyhow::Error>(lat);
                        }
                        let t = Instant::now();
                        me.start(&me.pod(run, i)).await?;
                        lat.push(t.elapsed());
                    }
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        let wall = t0.elapsed();
        latencies.sort();
        Ok(Starts { latencies, wall })
    }

    /// Starts `pods` pods at `rate` per second, each in its own task (as pods reach the kubelet).
    pub async fn at_rate(&self, pods: usize, rate: f64) -> Result<Starts> {
        let run = self.run.fetch_add(1, Ordering::Relaxed);
        let gap = Duration::from_secs_f64(1.0 / rate.max(0.01));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..pods {
            tokio::time::sleep_until((t0 + gap * i as u32).into()).await;
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                me.start(&me.pod(run, i)).await.map(|()| t.elapsed())
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.push(t.await??);
        }
        let wall = t0.elapsed();
        latencies.sort();
        Ok(Starts { latencies, wall })
    }

    /// Stops and removes every raw sandbox (their containers with them; CNI DEL frees the
    /// addresses), a few at a time; the node is left as the kubelet had it.
    pub async fn clean_up(&self) -> Result<()> {
        let mut rt = self.cri.rt.clone();
        let filter = cri::PodSandboxFilter {
            label_selector: [(LABEL.0.to_string(), LABEL.1.to_string())].into(),
            ..Default::default()
        };
        let items = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await?
            .into_inner()
            .items;
        let removals = items.into_iter().map(|s| {
            let mut rt = self.cri.rt.clone();
            let node = self.node.clone();
            async move {
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: s.id.clone(),
                })
                .await?;
                rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: s.id,
                })
                .await?;
                if let Some(m) = s.metadata {
                    let logs = kubelet::runtime::Layout {
                        root: node.root_dir.clone(),
                    }
                    .pod_logs(&m.namespace, &m.name, &m.uid);
                    let _ = std::fs::remove_dir_all(logs);
                }
                Ok::<_, tonic::Status>(())
            }
        });
        let results: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
            futures::stream::iter(removals),
            8,
        ))
        .await;
        for r in results {
            r.context("removing a raw sandbox")?;
        }
        Ok(())
    }
}
