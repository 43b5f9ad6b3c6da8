//! The pod worker: one task per pod bound to this node drives it through its lifecycle against
//! the CRI and reports its status, level-triggered (every pass re-reads the runtime's state, so
//! a restarted kubelet adopts what is running).
//!
//! Lifecycle per pass: `Sandbox` (volumes, RunPodSandbox) → `InitContainers` (one at a time, in
//! order) → `Containers` (start and postStart hook, restart with back-off per restartPolicy,
//! probes: startup first, then readiness and liveness) → status; a pod with a
//! deletionTimestamp goes `Terminating` (preStop hooks, StopContainer with what is left of the
//! grace period, StopPodSandbox, RemovePodSandbox, volumes removed) and is then deleted with
//! grace 0.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::watch;

use crate::events::Recorder;
use crate::hooks::{self, pod_ref};
use crate::probe::Tracker;
use crate::spec::{self, EnvSources};
use crate::{Kubelet, images, volumes};

const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
const LABEL_POD_NS: &str = "io.kubernetes.pod.namespace";
const LABEL_CONTAINER: &str = "io.kubernetes.container.name";

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

fn ts(nanos: i64) -> Option<Time> {
    if nanos <= 0 {
        return None;
    }
    jiff::Timestamp::from_nanosecond(nanos as i128)
        .ok()
        .map(|t| Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)))
}

fn now() -> Time {
    Time(
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .unwrap_or_else(|_| jiff::Timestamp::now()),
    )
}

/// Per-container memory of the worker: back-off and probe results.
#[derive(Default)]
struct ContainerMemo {
    backoff: Option<Duration>,
    next_start: Option<Instant>,
    /// Waiting reason and message of the image (`ErrImagePull`, `ImagePullBackOff`, …).
    image_error: Option<(String, String)>,
    /// Pull in flight and pull back-off ([`images`]).
    image: images::ContainerImage,
    config_error: Option<String>,
    /// Why the last StartContainer failed (reported once as `RunContainerError`).
    start_error: Option<String>,
    /// `containerStatuses[].ready`: started and the readiness probe (if any) passes.
    ready: bool,
    /// `containerStatuses[].started`: running and the startup probe (if any) has succeeded.
    started: bool,
    /// Probe state of the running container `probes.0` (reset when another container runs).
    probes: Option<(String, Probes)>,
    /// Why the postStart hook of the container just started failed (`PostStartHookError`).
    post_start_error: Option<String>,
    last_started_id: String,
    wait: Option<Duration>,
}

impl ContainerMemo {
    /// Why a container that did not start is waiting, in Kubernetes' order: the image
    /// (`ErrImagePull`, …), its configuration (`CreateContainerConfigError`), the start
    /// (`RunContainerError`).
    fn waiting_reason(&self) -> Option<(String, String)> {
        self.image_error
            .clone()
            .or(self
                .config_error
                .clone()
                .map(|e| ("CreateContainerConfigError".into(), e)))
            .or(self
                .start_error
                .clone()
                .map(|e| ("RunContainerError".into(), e)))
    }
}

/// The probe workers' results for one running container.
struct Probes {
    startup: Tracker,
    readiness: Tracker,
    liveness: Tracker,
}

impl Default for Probes {
    /// Kubernetes' initial results: startup unknown, readiness failure, liveness success.
    fn default() -> Probes {
        Probes {
            startup: Tracker::new(None),
            readiness: Tracker::new(Some(false)),
            liveness: Tracker::new(Some(true)),
        }
    }
}

/// What a pass decided about the pod.
enum Phase {
    /// Keep going.
    Live,
    /// The pod is gone from the node: stop the worker.
    Done,
}

/// Runs one pod until it is deleted. `rx` carries the latest Pod object (None: gone from the API).
pub async fn worker(k: Arc<Kubelet>, uid: String, mut rx: watch::Receiver<Option<Pod>>) {
    let mut memo: HashMap<String, ContainerMemo> = HashMap::new();
    let mut last_status = serde_json::Value::Null;
    let mut sandbox_error: Option<String> = None;
    loop {
        let pod = rx.borrow_and_update().clone();
        let mut interval = Duration::from_secs(1);
        let phase = match pod {
            None => {
                if terminate(&k, &uid, None, 0).await {
                    Phase::Done
                } else {
                    // The runtime did not answer (containerd restarting): try again, so no
                    // container outlives its pod.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
                // As Kubernetes, the pod object goes only once its containers and sandbox are
                // gone; until then the next pass tries again.
                if !terminate(&k, &uid, Some(&pod), grace).await {
                    tracing::warn!(uid = %uid, "pod not yet torn down in the runtime; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let api: Api<Pod> = Api::namespaced(
                    k.client.clone(),
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                );
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api
                    .delete(pod.metadata.name.as_deref().unwrap_or(""), &dp)
                    .await
                {
                    Ok(_) => Phase::Done,
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Phase::Done,
                    Err(e) => {
                        tracing::warn!(error = %e, "delete terminated pod");
                        Phase::Live
                    }
                }
            }
            Some(pod) => {
                match sync(&k, &pod, &mut memo, &mut sandbox_error).await {
                    Ok(status) => {
                        interval = resync_interval(&pod, &status);
                        let v = serde_json::to_value(&status).unwrap_or_default();
                        if v != last_status {
                            let api: Api<Pod> = Api::namespaced(
                                k.client.clone(),
                                pod.metadata.namespace.as_deref().unwrap_or("default"),
                            );
                            let name = pod.metadata.name.clone().unwrap_or_default();
                            match api
                                .patch_status(
                                    &name,
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({ "status": v })),
                                )
                                .await
                            {
                                Ok(_) => last_status = v,
                                Err(e) => tracing::warn!(pod = %name, error = %e, "status update"),
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "pod sync"),
                }
                Phase::Live
            }
        };
        if matches!(phase, Phase::Done) {
            return;
        }
        let _ = tokio::time::timeout(interval, rx.changed()).await;
        if rx.has_changed().is_err() && rx.borrow().is_none() {
            // Sender dropped and last value says gone: one more pass tears down.
            continue;
        }
    }
}

/// How soon the worker looks at a pod again: every second while anything is in motion; a pod
/// Running with every container ready is re-checked every 5 s (or its shortest probe period),
/// which keeps a node with many steady pods cheap.
fn resync_interval(pod: &Pod, status: &PodStatus) -> Duration {
    let fast = Duration::from_secs(1);
    let steady = status.phase.as_deref() == Some("Running")
        && status
            .container_statuses
            .as_ref()
            .map(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
            .unwrap_or(false);
    if !steady {
        return fast;
    }
    let shortest_probe = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| [&c.liveness_probe, &c.readiness_probe, &c.startup_probe])
        .flatten()
        .map(|p| p.period_seconds.unwrap_or(10).max(1) as u64)
        .min()
        .unwrap_or(5);
    Duration::from_secs(shortest_probe.min(5))
}

/// UIDs of every pod the runtime has a sandbox for (adoption and orphan cleanup at start).
pub async fn runtime_pod_uids(k: &Kubelet) -> std::collections::HashSet<String> {
    let mut rt = k.cri.rt.clone();
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .map(|r| r.into_inner().items)
        .unwrap_or_default();
    items
        .into_iter()
        .filter_map(|s| s.labels.get(LABEL_POD_UID).cloned())
        .collect()
}

async fn sandboxes(k: &Kubelet, uid: &str) -> Vec<cri::PodSandbox> {
    list_sandboxes(k, uid).await.unwrap_or_default()
}

/// The runtime's sandboxes of pod `uid`, or the runtime's error.
async fn list_sandboxes(k: &Kubelet, uid: &str) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
    let filter = cri::PodSandboxFilter {
        label_selector: [(LABEL_POD_UID.to_string(), uid.to_string())].into(),
        ..Default::default()
    };
    let mut rt = k.cri.rt.clone();
    rt.list_pod_sandbox(cri::ListPodSandboxRequest {
        filter: Some(filter),
    })
    .await
    .map(|r| r.into_inner().items)
}

async fn containers(k: &Kubelet, sandbox: &str) -> Vec<cri::Container> {
    let filter = cri::ContainerFilter {
        pod_sandbox_id: sandbox.into(),
        ..Default::default()
    };
    let mut rt = k.cri.rt.clone();
    rt.list_containers(cri::ListContainersRequest {
        filter: Some(filter),
    })
    .await
    .map(|r| r.into_inner().containers)
    .unwrap_or_default()
}

async fn container_status(k: &Kubelet, id: &str) -> Option<cri::ContainerStatus> {
    let mut st = fetch_container_status(k, id).await?;
    // containerd 1.6 delivers the task's OOM event independently of its exit event, so right
    // after a SIGKILL (exit 137) the reason may still be empty and only become "OOMKilled" a
    // moment later. Give a just-killed container up to 2 s to settle before reporting "Error".
    for _ in 0..8 {
        let just_killed = st.state == cri::ContainerState::ContainerExited as i32
            && st.exit_code == 137
            && st.reason.is_empty()
            && now_nanos().saturating_sub(st.finished_at) < 2_000_000_000;
        if !just_killed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        st = fetch_container_status(k, id).await?;
    }
    Some(st)
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

async fn fetch_container_status(k: &Kubelet, id: &str) -> Option<cri::ContainerStatus> {
    let mut rt = k.cri.rt.clone();
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .ok()?
    .into_inner()
    .status
}

/// Stops and removes everything the runtime has for pod `uid`: its running containers are
/// killed in parallel as [`kill_container`] does (preStop hooks first), with `grace` seconds.
/// Returns whether the runtime then holds no sandbox of the pod (false also when it could not
/// be asked, e.g. while containerd restarts).
pub async fn terminate(k: &Kubelet, uid: &str, pod: Option<&Pod>, grace: i64) -> bool {
    let rec = pod.map(|p| Recorder::new(k.client.clone(), p, &k.config.node_name));
    let mut rt = k.cri.rt.clone();
    let Ok(found) = list_sandboxes(k, uid).await else {
        return false;
    };
    for sb in found {
        let pod_ip = sandbox_ip(k, &sb.id).await;
        let ctrs = containers(k, &sb.id).await;
        let kills = ctrs
            .iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .map(|c| {
                let name = c
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let spec = pod
                    .and_then(|p| p.spec.as_ref())
                    .and_then(|s| s.containers.iter().find(|x| x.name == name));
                let (rec, pod_ip) = (rec.as_ref(), pod_ip.as_str());
                async move {
                    let message = format!("Stopping container {name}");
                    kill_container(k, pod, spec, &c.id, pod_ip, grace, rec, &message).await
                }
            });
        futures::future::join_all(kills).await;
        for c in &ctrs {
            let _ = rt
                .remove_container(cri::RemoveContainerRequest {
                    container_id: c.id.clone(),
                })
                .await;
        }
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sb.id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: sb.id.clone(),
            })
            .await;
    }
    let gone = matches!(list_sandboxes(k, uid).await, Ok(left) if left.is_empty());
    if gone {
        volumes::teardown(&k.config.root_dir, uid);
    }
    gone
}

/// Kubernetes' killContainer: the `Killing` event with `message`, the preStop hook (bounded by
/// the grace period, its duration deducted from it, leaving at least 2 s; a failure is a
/// `FailedPreStopHook` event and the kill goes on), then StopContainer with what is left.
#[allow(clippy::too_many_arguments)]
async fn kill_container(
    k: &Kubelet,
    pod: Option<&Pod>,
    c: Option<&Container>,
    container_id: &str,
    pod_ip: &str,
    grace: i64,
    rec: Option<&Recorder>,
    message: &str,
) {
    if let Some(r) = rec {
        r.normal("Killing", message).await;
    }
    let mut timeout = grace;
    if let (Some(pod), Some(c)) = (pod, c)
        && let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
        && grace > 0
    {
        let t0 = Instant::now();
        let hook = hooks::run(k, pod, c, container_id, pod_ip, h);
        match tokio::time::timeout(Duration::from_secs(grace as u64), hook).await {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                tracing::warn!(container = %c.name, error = %msg, "PreStop hook failed");
                // As Kubernetes: the message stays out of the event (it may carry secrets).
                if let Some(r) = rec {
                    r.warning("FailedPreStopHook", "PreStopHook failed").await;
                }
            }
            Err(_) => {
                tracing::info!(container = %c.name, grace, "PreStop hook not completed in grace period")
            }
        }
        timeout = hooks::grace_after_pre_stop(grace, t0.elapsed());
    }
    let mut rt = k.cri.rt.clone();
    if let Err(e) = rt
        .stop_container(cri::StopContainerRequest {
            container_id: container_id.into(),
            timeout,
        })
        .await
    {
        tracing::warn!(container_id, error = %e.message(), "stop container");
    }
}

/// A container created but never started (its start was cut off, e.g. by a containerd or
/// kubelet restart), or in an unknown state: Kubernetes' `ShouldContainerBeRestarted` always
/// replaces such a container, whatever the restart policy.
fn never_started(st: &cri::ContainerStatus) -> bool {
    st.state == cri::ContainerState::ContainerCreated as i32
        || st.state == cri::ContainerState::ContainerUnknown as i32
}

/// Stops (an unknown one might run: never two instances) and removes a [`never_started`]
/// container; returns the attempt number of its replacement.
async fn discard_unstarted(k: &Kubelet, ctr: &cri::Container) -> u32 {
    let mut rt = k.cri.rt.clone();
    let _ = rt
        .stop_container(cri::StopContainerRequest {
            container_id: ctr.id.clone(),
            timeout: 0,
        })
        .await;
    if let Err(e) = rt
        .remove_container(cri::RemoveContainerRequest {
            container_id: ctr.id.clone(),
        })
        .await
    {
        tracing::warn!(container_id = %ctr.id, error = %e.message(), "removing a container that never started");
    }
    ctr.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(1)
}

/// The IP of a pod sandbox (empty: none, e.g. host network).
async fn sandbox_ip(k: &Kubelet, sandbox_id: &str) -> String {
    let mut rt = k.cri.rt.clone();
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: sandbox_id.into(),
        verbose: false,
    })
    .await
    .ok()
    .and_then(|r| r.into_inner().status)
    .and_then(|s| s.network)
    .map(|n| n.ip)
    .unwrap_or_default()
}

/// The grace period of a kill that is not a deletion: the deletion's if one is under way,
/// else the pod's `terminationGracePeriodSeconds` (30), or `probe_override` for a probe that
/// sets its own.
fn kill_grace(pod: &Pod, probe_override: Option<i64>) -> i64 {
    if let Some(g) = pod.metadata.deletion_grace_period_seconds {
        return g;
    }
    probe_override
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
}

/// The CRI runtime handler of a pod's RuntimeClass (`LookupRuntimeHandler`): "" (the default
/// handler) without a class.
async fn runtime_handler(k: &Kubelet, class: Option<&str>) -> Result<String, String> {
    let Some(class) = class.filter(|c| !c.is_empty()) else {
        return Ok(String::new());
    };
    let api: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(k.client.clone());
    match api.get(class).await {
        Ok(rc) => Ok(rc.handler),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            Err(format!("runtimeclasses.node.k8s.io \"{class}\" not found"))
        }
        Err(e) => Err(format!("failed to lookup RuntimeClass {class}: {e}")),
    }
}

fn sandbox_config(k: &Kubelet, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
    let m = &pod.metadata;
    let uid = m.uid.clone().unwrap_or_default();
    let name = m.name.clone().unwrap_or_default();
    let ns = m.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = pod.spec.clone().unwrap_or_default();
    let mut labels: HashMap<String, String> =
        m.labels.clone().unwrap_or_default().into_iter().collect();
    labels.insert(LABEL_POD_UID.into(), uid.clone());
    labels.insert(LABEL_POD_NAME.into(), name.clone());
    labels.insert(LABEL_POD_NS.into(), ns.clone());
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some())
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => 1,
                Some("SCTP") => 2,
                _ => 0,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let host_network = spec.host_network == Some(true);
    let host_resolv = (!k.config.resolv_conf.is_empty())
        .then(|| std::fs::read_to_string(&k.config.resolv_conf).unwrap_or_default());
    let dns_config = spec::pod_dns_config(
        pod,
        spec::NodeDns {
            cluster_dns: &k.config.cluster_dns,
            cluster_domain: &k.config.cluster_domain,
            host_resolv_conf: host_resolv.as_deref(),
        },
    );
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: ns.clone(),
            attempt,
        }),
        // As Kubernetes' generatePodSandboxConfig: a pod on the node's network keeps the node's
        // UTS namespace, so no hostname is set (runc refuses one without a private UTS).
        hostname: if host_network {
            String::new()
        } else {
            spec::pod_hostname(pod, &k.config.cluster_domain)
        },
        log_directory: k
            .config
            .root_dir
            .join("logs")
            .join(format!("{ns}_{name}_{uid}"))
            .to_string_lossy()
            .into_owned(),
        labels,
        annotations: m
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        port_mappings,
        dns_config: Some(dns_config),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: k.config.pod_cgroup(&uid),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(spec::namespace_options(pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_container(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    sandbox_id: &str,
    sb_cfg: &cri::PodSandboxConfig,
    attempt: u32,
    src: &EnvSources,
    rec: &Recorder,
    memo: &mut ContainerMemo,
    pod_ip: &str,
    target_id: Option<&str>,
) -> bool {
    let image_id = match k.images.ensure(pod, c, &mut memo.image, rec).await {
        images::Ensure::Ready(id) => {
            memo.image_error = None;
            id
        }
        images::Ensure::Pulling => {
            // Waits in ContainerCreating; the next pass looks at the pull again.
            memo.image_error = None;
            return false;
        }
        images::Ensure::Failed(reason, msg) => {
            memo.image_error = Some((reason, msg));
            return false;
        }
    };
    let env = match spec::environment(pod, c, src, &k.config.node_ip) {
        Ok(e) => e,
        Err(msg) => {
            if memo.config_error.as_deref() != Some(&msg) {
                rec.warning("Failed", &format!("Error: {msg}")).await;
            }
            memo.config_error = Some(msg);
            return false;
        }
    };
    memo.config_error = None;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let mut security = spec::security(pod, c);
    // An ephemeral container with a target joins that container's PID namespace (unless the
    // pod shares one PID namespace anyway), as Kubernetes' kuberuntime does.
    if let (Some(target), Some(ns)) = (target_id, security.namespace_options.as_mut())
        && ns.pid == spec::ns_mode::CONTAINER
    {
        ns.pid = spec::ns_mode::TARGET;
        ns.target_id = target.to_string();
    }
    let cfg = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: image_id,
            ..Default::default()
        }),
        command: c
            .command
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|s| spec::expand(s, &vars))
            .collect(),
        args: c
            .args
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|s| spec::expand(s, &vars))
            .collect(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env
            .into_iter()
            .map(|(key, value)| cri::KeyValue { key, value })
            .collect(),
        mounts: volumes::mounts(&k.config.root_dir, pod, c),
        labels: [
            (LABEL_POD_UID.to_string(), uid),
            (LABEL_CONTAINER.to_string(), c.name.clone()),
        ]
        .into(),
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(spec::resources(c)),
            security_context: Some(security),
        }),
        ..Default::default()
    };
    let mut rt = k.cri.rt.clone();
    let created = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(cfg),
            sandbox_config: Some(sb_cfg.clone()),
        })
        .await;
    let id = match created {
        Ok(r) => r.into_inner().container_id,
        Err(e) => {
            rec.warning("Failed", &format!("Error: {}", e.message()))
                .await;
            memo.config_error = Some(e.message().to_string());
            bump(memo);
            return false;
        }
    };
    rec.normal("Created", &format!("Created container: {}", c.name))
        .await;
    if let Err(e) = rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
    {
        let msg = format!("failed to start container \"{}\": {}", c.name, e.message());
        rec.warning("Failed", &format!("Error: {msg}")).await;
        memo.start_error = Some(msg);
        bump(memo);
        return false;
    }
    memo.start_error = None;
    rec.normal("Started", &format!("Started container {}", c.name))
        .await;
    memo.last_started_id = id.clone();
    memo.ready = false;
    memo.started = c.startup_probe.is_none();
    memo.probes = None;
    memo.post_start_error = None;
    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
        && let Err(msg) = hooks::run(k, pod, c, &id, pod_ip, h).await
    {
        tracing::warn!(pod = %pod_ref(pod), container = %c.name, error = %msg, "Failed to execute PostStartHook");
        // As Kubernetes: the message stays out of the event (it may carry secrets); the
        // container status carries it (`PostStartHookError`).
        rec.warning("FailedPostStartHook", "PostStartHook failed")
            .await;
        let grace = kill_grace(pod, None);
        kill_container(
            k,
            Some(pod),
            Some(c),
            &id,
            pod_ip,
            grace,
            Some(rec),
            "FailedPostStartHook",
        )
        .await;
        memo.ready = false;
        memo.started = false;
        memo.post_start_error = Some(msg);
    }
    true
}

/// Doubles the back-off (10 s → 5 min) and schedules the next attempt.
fn bump(memo: &mut ContainerMemo) -> Duration {
    let b = match memo.backoff {
        None => BACKOFF_START,
        Some(b) => (b * 2).min(BACKOFF_MAX),
    };
    memo.backoff = Some(b);
    memo.next_start = Some(Instant::now() + b);
    b
}

struct Seen {
    latest: Option<(cri::Container, cri::ContainerStatus)>,
    previous: Option<cri::ContainerStatus>,
}

async fn seen(k: &Kubelet, all: &[cri::Container], name: &str) -> Seen {
    let mut mine: Vec<&cri::Container> = all
        .iter()
        .filter(|c| c.metadata.as_ref().map(|m| m.name.as_str()) == Some(name))
        .collect();
    mine.sort_by_key(|c| std::cmp::Reverse(c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)));
    let latest = match mine.first() {
        Some(c) => container_status(k, &c.id).await.map(|s| ((*c).clone(), s)),
        None => None,
    };
    let previous = match mine.get(1) {
        Some(c) => container_status(k, &c.id).await,
        None => None,
    };
    // Keep only the last two attempts (the previous one serves lastState and `logs --previous`).
    let mut rt = k.cri.rt.clone();
    for old in mine.iter().skip(2) {
        let _ = rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: old.id.clone(),
            })
            .await;
    }
    Seen { latest, previous }
}

fn terminated(s: &cri::ContainerStatus, id_prefix: &str) -> ContainerStateTerminated {
    let reason = if !s.reason.is_empty() {
        s.reason.clone()
    } else if s.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        exit_code: s.exit_code,
        reason: Some(reason),
        message: Some(s.message.clone()).filter(|m| !m.is_empty()),
        started_at: ts(s.started_at),
        finished_at: ts(s.finished_at),
        container_id: Some(format!("{id_prefix}{}", s.id)),
        signal: None,
    }
}

async fn sync(
    k: &Kubelet,
    pod: &Pod,
    memo: &mut HashMap<String, ContainerMemo>,
    sandbox_error: &mut Option<String>,
) -> Result<PodStatus, crate::Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let rec = Recorder::new(k.client.clone(), pod, &k.config.node_name);
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let mut rt = k.cri.rt.clone();
    let old = pod.status.clone().unwrap_or_default();
    let start_time = old.start_time.clone().unwrap_or_else(now);

    // Sandbox
    let all_sb = sandboxes(k, &uid).await;
    let ready_sb = all_sb
        .iter()
        .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        .max_by_key(|s| s.created_at)
        .cloned();
    let attempt = all_sb
        .iter()
        .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
        .max()
        .unwrap_or(0);
    let src = EnvSources::fetch(&k.client, pod).await?;
    if let Err(msg) = volumes::setup(&k.config.root_dir, &k.client, pod, &src, &k.ca_pem).await {
        if sandbox_error.as_deref() != Some(&msg) {
            rec.warning("FailedMount", &format!("MountVolume.SetUp failed: {msg}"))
                .await;
        }
        *sandbox_error = Some(msg);
        return Ok(pending_status(
            pod,
            &start_time,
            k,
            "ContainerCreating",
            None,
        ));
    }
    let all_done =
        |phase: &Option<String>| matches!(phase.as_deref(), Some("Succeeded") | Some("Failed"));
    let sb = match ready_sb {
        Some(s) => s,
        None if all_done(&old.phase) => return Ok(old),
        None => {
            // Remove NOTREADY leftovers: a failed RunPodSandbox keeps its name reserved.
            for s in &all_sb {
                let _ = rt
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await;
                let _ = rt
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await;
            }
            let cfg = sandbox_config(k, pod, attempt);
            let _ = std::fs::create_dir_all(&cfg.log_directory);
            let created = match runtime_handler(k, spec.runtime_class_name.as_deref()).await {
                Ok(runtime_handler) => rt
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(cfg),
                        runtime_handler,
                    })
                    .await
                    .map_err(|e| e.message().to_string()),
                Err(e) => Err(e),
            };
            match created {
                Ok(_) => {
                    *sandbox_error = None;
                    let s = sandboxes(k, &uid).await;
                    match s
                        .into_iter()
                        .find(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
                    {
                        Some(s) => s,
                        None => {
                            return Ok(pending_status(
                                pod,
                                &start_time,
                                k,
                                "ContainerCreating",
                                None,
                            ));
                        }
                    }
                }
                Err(e) => {
                    let msg = format!("Failed to create pod sandbox: {e}");
                    if sandbox_error.as_deref() != Some(&msg) {
                        rec.warning("FailedCreatePodSandBox", &msg).await;
                    }
                    *sandbox_error = Some(msg);
                    return Ok(pending_status(
                        pod,
                        &start_time,
                        k,
                        "ContainerCreating",
                        None,
                    ));
                }
            }
        }
    };
    let sb_cfg = sandbox_config(k, pod, sb.metadata.as_ref().map(|m| m.attempt).unwrap_or(0));
    let pod_ip = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sb.id.clone(),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().status)
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| {
            if spec.host_network == Some(true) {
                k.config.node_ip.clone()
            } else {
                String::new()
            }
        });
    let ctrs = containers(k, &sb.id).await;

    // Init containers, in order.
    let mut init_statuses = Vec::new();
    let mut initialized = true;
    for c in spec.init_containers.iter().flatten() {
        let m = memo.entry(format!("init:{}", c.name)).or_default();
        let s = seen(k, &ctrs, &c.name).await;
        let (status, done) = match &s.latest {
            Some((ctr, st))
                if st.state == cri::ContainerState::ContainerExited as i32 && st.exit_code == 0 =>
            {
                (
                    container_status_of(c, Some((ctr, st)), s.previous.as_ref(), false, true, None),
                    true,
                )
            }
            Some((ctr, st)) if st.state == cri::ContainerState::ContainerRunning as i32 => (
                container_status_of(c, Some((ctr, st)), s.previous.as_ref(), false, true, None),
                false,
            ),
            Some((ctr, st)) if never_started(st) => {
                let next = discard_unstarted(k, ctr).await;
                let waiting = if start_container(
                    k, pod, c, &sb.id, &sb_cfg, next, &src, &rec, m, &pod_ip, None,
                )
                .await
                {
                    None
                } else {
                    m.waiting_reason()
                };
                (
                    container_status_of(c, None, None, false, true, waiting),
                    false,
                )
            }
            latest => {
                let failed = latest.is_some();
                let attempt_next = latest
                    .as_ref()
                    .map(|(c, _)| c.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(1))
                    .unwrap_or(0);
                let waiting = if failed && restart_policy == "Never" {
                    None
                } else if m.next_start.map(|t| Instant::now() < t).unwrap_or(false) {
                    Some(("CrashLoopBackOff".to_string(), backoff_msg(m, c, pod)))
                } else {
                    if failed {
                        rec.warning(
                            "BackOff",
                            &format!(
                                "Back-off restarting failed container {} in pod {}",
                                c.name,
                                pod_ref(pod)
                            ),
                        )
                        .await;
                    }
                    if start_container(
                        k,
                        pod,
                        c,
                        &sb.id,
                        &sb_cfg,
                        attempt_next,
                        &src,
                        &rec,
                        m,
                        &pod_ip,
                        None,
                    )
                    .await
                    {
                        if failed {
                            bump(m);
                        }
                        None
                    } else {
                        m.image_error.clone().or(m
                            .config_error
                            .clone()
                            .map(|e| ("CreateContainerConfigError".into(), e)))
                    }
                };
                (
                    container_status_of(
                        c,
                        latest.as_ref().map(|(a, b)| (a, b)),
                        s.previous.as_ref(),
                        false,
                        true,
                        waiting,
                    ),
                    false,
                )
            }
        };
        init_statuses.push(status);
        if !done {
            initialized = false;
            break;
        }
    }
    // Pad statuses of init containers not reached yet.
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .skip(init_statuses.len())
    {
        init_statuses.push(container_status_of(
            c,
            None,
            None,
            false,
            false,
            Some(("PodInitializing".into(), String::new())),
        ));
    }

    let mut statuses = Vec::new();
    for c in &spec.containers {
        if !initialized {
            statuses.push(container_status_of(
                c,
                None,
                None,
                false,
                false,
                Some(("PodInitializing".into(), String::new())),
            ));
            continue;
        }
        let m = memo.entry(c.name.clone()).or_default();
        let s = seen(k, &ctrs, &c.name).await;
        let mut waiting = None;
        match &s.latest {
            None => {
                if m.config_error.is_some()
                    && m.next_start.map(|t| Instant::now() < t).unwrap_or(false)
                {
                    waiting = Some((
                        "CreateContainerConfigError".to_string(),
                        m.config_error.clone().unwrap_or_default(),
                    ));
                } else if !start_container(
                    k, pod, c, &sb.id, &sb_cfg, 0, &src, &rec, m, &pod_ip, None,
                )
                .await
                {
                    waiting = m.waiting_reason();
                }
            }
            Some((ctr, st)) if st.state == cri::ContainerState::ContainerExited as i32 => {
                let restart = match restart_policy.as_str() {
                    "Always" => true,
                    "OnFailure" => st.exit_code != 0,
                    _ => false,
                };
                if restart {
                    let next = ctr.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(1);
                    let exit_key = format!("exited:{}", ctr.id);
                    if m.last_started_id != exit_key
                        && m.last_started_id != format!("reported:{}", ctr.id)
                    {
                        // First time this exit is seen. As in Kubernetes, the first restart is
                        // immediate, then the back-off waits 10 s, doubling up to 5 min.
                        match m.backoff {
                            None => {
                                m.backoff = Some(BACKOFF_START);
                                m.next_start = None;
                            }
                            Some(b) => {
                                m.next_start = Some(Instant::now() + b);
                                m.wait = Some(b);
                                m.backoff = Some((b * 2).min(BACKOFF_MAX));
                            }
                        }
                        m.last_started_id = exit_key;
                    }
                    if m.next_start.map(|t| Instant::now() < t).unwrap_or(false) {
                        waiting = Some(("CrashLoopBackOff".to_string(), backoff_msg(m, c, pod)));
                        if m.last_started_id == format!("exited:{}", ctr.id) {
                            rec.warning(
                                "BackOff",
                                &format!(
                                    "Back-off restarting failed container {} in pod {}",
                                    c.name,
                                    pod_ref(pod)
                                ),
                            )
                            .await;
                            m.last_started_id = format!("reported:{}", ctr.id);
                        }
                    } else if !start_container(
                        k, pod, c, &sb.id, &sb_cfg, next, &src, &rec, m, &pod_ip, None,
                    )
                    .await
                    {
                        // As Kubernetes: RunContainerError for the failed attempt, then
                        // CrashLoopBackOff while backing off; an image that can't be had says so.
                        waiting = m.image_error.clone().or(m
                            .start_error
                            .clone()
                            .map(|e| ("RunContainerError".to_string(), e)));
                    }
                }
            }
            Some((ctr, st)) if st.state == cri::ContainerState::ContainerRunning as i32 => {
                if m.last_started_id.is_empty() {
                    m.last_started_id = ctr.id.clone();
                }
                // A container that ran 10 minutes resets its back-off, as Kubernetes does.
                if st.started_at > 0
                    && (jiff::Timestamp::now().as_nanosecond() as i64 - st.started_at)
                        > 600_000_000_000
                {
                    m.backoff = None;
                }
                probes(k, pod, c, ctr, st, m, &rec, &pod_ip).await;
            }
            Some((ctr, st)) if never_started(st) => {
                let next = discard_unstarted(k, ctr).await;
                if !start_container(
                    k, pod, c, &sb.id, &sb_cfg, next, &src, &rec, m, &pod_ip, None,
                )
                .await
                {
                    waiting = m.waiting_reason();
                }
            }
            _ => {}
        }
        // Re-read after any start so the status reflects what runs now.
        let s = if waiting.is_none()
            && !matches!(&s.latest, Some((_, st)) if st.state == cri::ContainerState::ContainerRunning as i32)
        {
            let ctrs = containers(k, &sb.id).await;
            seen(k, &ctrs, &c.name).await
        } else {
            s
        };
        if waiting.is_none()
            && let Some(e) = m.post_start_error.take()
        {
            waiting = Some(("PostStartHookError".to_string(), e));
        }
        statuses.push(container_status_of(
            c,
            s.latest.as_ref().map(|(a, b)| (a, b)),
            s.previous.as_ref(),
            m.ready,
            m.started,
            waiting,
        ));
    }

    let ephemeral = ephemeral_containers(k, pod, &sb.id, &sb_cfg, &src, &rec, memo, &pod_ip).await;
    let mut status = build_status(
        pod,
        &start_time,
        k,
        initialized,
        init_statuses,
        statuses,
        &pod_ip,
        &restart_policy,
    );
    status.ephemeral_container_statuses = Some(ephemeral).filter(|v| !v.is_empty());
    Ok(status)
}

/// Ephemeral containers (`kubectl debug`): each is started once in the running sandbox (in its
/// target's PID namespace if it names one) and never restarted; a failed creation is retried
/// after the back-off, as Kubernetes does for a container that never ran.
#[allow(clippy::too_many_arguments)]
async fn ephemeral_containers(
    k: &Kubelet,
    pod: &Pod,
    sandbox_id: &str,
    sb_cfg: &cri::PodSandboxConfig,
    src: &EnvSources,
    rec: &Recorder,
    memo: &mut HashMap<String, ContainerMemo>,
    pod_ip: &str,
) -> Vec<ContainerStatus> {
    let list = pod
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.clone())
        .unwrap_or_default();
    if list.is_empty() {
        return Vec::new();
    }
    let mut ctrs = containers(k, sandbox_id).await;
    let mut out = Vec::new();
    for ec in &list {
        let c = spec::ephemeral_container(ec);
        let m = memo.entry(format!("ephemeral:{}", c.name)).or_default();
        let mut s = seen(k, &ctrs, &c.name).await;
        let mut waiting = None;
        // Started once already (in an earlier sandbox): never again, as Kubernetes.
        let reported = pod
            .status
            .as_ref()
            .and_then(|st| st.ephemeral_container_statuses.as_ref())
            .and_then(|l| l.iter().find(|st| st.name == c.name))
            .filter(|st| st.container_id.is_some());
        if s.latest.is_none()
            && let Some(old) = reported
        {
            out.push(old.clone());
            continue;
        }
        if s.latest.is_none() {
            let retry_later = m.next_start.is_some_and(|t| Instant::now() < t);
            let target_id = ec
                .target_container_name
                .as_deref()
                .and_then(|t| latest_container_id(&ctrs, t));
            if !retry_later
                && start_container(
                    k,
                    pod,
                    &c,
                    sandbox_id,
                    sb_cfg,
                    0,
                    src,
                    rec,
                    m,
                    pod_ip,
                    target_id.as_deref(),
                )
                .await
            {
                ctrs = containers(k, sandbox_id).await;
                s = seen(k, &ctrs, &c.name).await;
            } else {
                if !retry_later && m.config_error.is_some() {
                    bump(m);
                }
                waiting = m.waiting_reason();
            }
        }
        let mut status = container_status_of(
            &c,
            s.latest.as_ref().map(|(a, b)| (a, b)),
            None,
            false,
            false,
            waiting,
        );
        // Ephemeral containers have no startup probe: Kubernetes leaves `started` unset.
        status.started = None;
        out.push(status);
    }
    out
}

/// The ID of the newest container named `name` (the target of an ephemeral container).
fn latest_container_id(all: &[cri::Container], name: &str) -> Option<String> {
    all.iter()
        .filter(|c| c.metadata.as_ref().map(|m| m.name.as_str()) == Some(name))
        .max_by_key(|c| c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0))
        .map(|c| c.id.clone())
}

fn backoff_msg(m: &ContainerMemo, c: &Container, pod: &Pod) -> String {
    let secs = m.wait.or(m.backoff).unwrap_or(BACKOFF_START).as_secs();
    let b = if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    };
    format!(
        "back-off {b} restarting failed container={} pod={}",
        c.name,
        pod_ref(pod)
    )
}

/// One pass of the probe workers for running container `ctr`, as Kubernetes runs them: the
/// startup probe until it succeeds (liveness and readiness wait for it), then readiness and
/// liveness; a startup or liveness result of failure kills the container (restarted per
/// restartPolicy by the next pass).
#[allow(clippy::too_many_arguments)]
async fn probes(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    ctr: &cri::Container,
    st: &cri::ContainerStatus,
    m: &mut ContainerMemo,
    rec: &Recorder,
    pod_ip: &str,
) {
    let running_for = Duration::from_nanos(
        (jiff::Timestamp::now().as_nanosecond() as i64 - st.started_at).max(0) as u64,
    );
    if m.probes
        .as_ref()
        .map(|(id, _)| id != &ctr.id)
        .unwrap_or(true)
    {
        // A new container (or one adopted after a kubelet restart): the probes start over.
        m.probes = Some((ctr.id.clone(), Probes::default()));
    }
    let Some((_, pr)) = m.probes.as_mut() else {
        return;
    };
    let mut kill: Option<(&str, &k8s_openapi::api::core::v1::Probe)> = None;
    match &c.startup_probe {
        None => m.started = true,
        Some(p) => {
            if pr.startup.result != Some(true) && pr.startup.due(p, running_for, Instant::now()) {
                let r = crate::probe::run(k, p, c, &ctr.id, pod_ip).await;
                if let Err(e) = &r {
                    rec.warning("Unhealthy", &format!("Startup probe failed: {e}"))
                        .await;
                }
                if pr.startup.record(p, r.is_ok(), Instant::now()) == Some(false) {
                    kill = Some(("startup", p));
                }
            }
            m.started = pr.startup.result == Some(true);
        }
    }
    if m.started && kill.is_none() {
        match &c.readiness_probe {
            None => m.ready = true,
            Some(p) => {
                if pr.readiness.due(p, running_for, Instant::now()) {
                    let r = crate::probe::run(k, p, c, &ctr.id, pod_ip).await;
                    if let Err(e) = &r {
                        rec.warning("Unhealthy", &format!("Readiness probe failed: {e}"))
                            .await;
                    }
                    pr.readiness.record(p, r.is_ok(), Instant::now());
                }
                m.ready = pr.readiness.result == Some(true);
            }
        }
        if let Some(p) = &c.liveness_probe
            && pr.liveness.due(p, running_for, Instant::now())
        {
            let r = crate::probe::run(k, p, c, &ctr.id, pod_ip).await;
            if let Err(e) = &r {
                rec.warning("Unhealthy", &format!("Liveness probe failed: {e}"))
                    .await;
            }
            if pr.liveness.record(p, r.is_ok(), Instant::now()) == Some(false) {
                kill = Some(("liveness", p));
            }
        }
    } else {
        m.ready = false;
    }
    if let Some((kind, p)) = kill {
        let message = format!(
            "Container {} failed {kind} probe, will be restarted",
            c.name
        );
        let grace = kill_grace(pod, p.termination_grace_period_seconds);
        kill_container(
            k,
            Some(pod),
            Some(c),
            &ctr.id,
            pod_ip,
            grace,
            Some(rec),
            &message,
        )
        .await;
        m.ready = false;
        // A probe restart is immediate the first time (no back-off yet).
        m.next_start = None;
    }
}

fn container_status_of(
    c: &Container,
    latest: Option<(&cri::Container, &cri::ContainerStatus)>,
    previous: Option<&cri::ContainerStatus>,
    ready: bool,
    started: bool,
    waiting: Option<(String, String)>,
) -> ContainerStatus {
    let prefix = "containerd://";
    let mut out = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        ..Default::default()
    };
    if let Some((ctr, st)) = latest {
        out.restart_count = ctr.metadata.as_ref().map(|m| m.attempt as i32).unwrap_or(0);
        out.container_id = Some(format!("{prefix}{}", st.id));
        out.image_id = st.image_ref.clone();
        // Kubernetes reports the fully qualified reference the runtime resolved.
        out.image = spec::normalize_image(&out.image);
        match st.state {
            s if s == cri::ContainerState::ContainerRunning as i32 => {
                out.state = Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: ts(st.started_at),
                    }),
                    ..Default::default()
                });
                out.started = Some(started);
                out.ready = ready && started;
            }
            s if s == cri::ContainerState::ContainerExited as i32 => {
                out.state = Some(ContainerState {
                    terminated: Some(terminated(st, prefix)),
                    ..Default::default()
                });
            }
            _ => {
                out.state = Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ContainerCreating".into()),
                        message: None,
                    }),
                    ..Default::default()
                });
            }
        }
        if let Some(p) = previous
            && p.state == cri::ContainerState::ContainerExited as i32
        {
            out.last_state = Some(ContainerState {
                terminated: Some(terminated(p, prefix)),
                ..Default::default()
            });
        }
    }
    if let Some((reason, msg)) = waiting {
        if let Some(ContainerState {
            terminated: Some(t),
            ..
        }) = out.state.take()
        {
            out.last_state = Some(ContainerState {
                terminated: Some(t),
                ..Default::default()
            });
        }
        out.state = Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason),
                message: Some(msg).filter(|m| !m.is_empty()),
            }),
            ..Default::default()
        });
        out.ready = false;
        out.started = Some(false);
    }
    if out.state.is_none() {
        out.state = Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..Default::default()
        });
    }
    out
}

fn cond(kind: &str, ok: bool, reason: Option<&str>, old: &PodStatus) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let prev = old.conditions.iter().flatten().find(|c| c.type_ == kind);
    let since = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now()),
    };
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        last_transition_time: since,
        last_probe_time: None,
        message: None,
        observed_generation: None,
    }
}

fn pending_status(
    pod: &Pod,
    start: &Time,
    k: &Kubelet,
    reason: &str,
    _msg: Option<String>,
) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let waiting = Some((reason.to_string(), String::new()));
    let init: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status_of(c, None, None, false, false, waiting.clone()))
        .collect();
    let main: Vec<_> = spec
        .containers
        .iter()
        .map(|c| container_status_of(c, None, None, false, false, waiting.clone()))
        .collect();
    build_status(
        pod,
        start,
        k,
        spec.init_containers
            .as_ref()
            .map(|v| v.is_empty())
            .unwrap_or(true),
        init,
        main,
        "",
        "Always",
    )
}

#[allow(clippy::too_many_arguments)]
fn build_status(
    pod: &Pod,
    start: &Time,
    k: &Kubelet,
    initialized: bool,
    init: Vec<ContainerStatus>,
    main: Vec<ContainerStatus>,
    pod_ip: &str,
    restart_policy: &str,
) -> PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let running = main
        .iter()
        .filter(|s| s.state.as_ref().and_then(|s| s.running.as_ref()).is_some())
        .count();
    let terminated: Vec<&ContainerStateTerminated> = main
        .iter()
        .filter_map(|s| s.state.as_ref().and_then(|s| s.terminated.as_ref()))
        .collect();
    let waiting_after_run = main
        .iter()
        .filter(|s| {
            s.state.as_ref().and_then(|s| s.waiting.as_ref()).is_some() && s.last_state.is_some()
        })
        .count();
    let n = main.len();
    let phase = if !initialized {
        if init.iter().any(|s| {
            s.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code != 0)
                .unwrap_or(false)
        }) && restart_policy == "Never"
        {
            "Failed"
        } else {
            "Pending"
        }
    } else if terminated.len() == n && n > 0 {
        if terminated.iter().all(|t| t.exit_code == 0) {
            if restart_policy == "Always" {
                "Running"
            } else {
                "Succeeded"
            }
        } else if restart_policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else if running + waiting_after_run + terminated.len() == n
        && running + waiting_after_run + terminated.len() > 0
        && (running > 0 || waiting_after_run > 0)
    {
        "Running"
    } else {
        "Pending"
    };
    let all_ready = n > 0 && main.iter().all(|s| s.ready);
    let reason_ready = if all_ready {
        None
    } else {
        Some("ContainersNotReady")
    };
    let done = matches!(phase, "Succeeded" | "Failed");
    let mut conditions = vec![
        cond(
            "PodReadyToStartContainers",
            !pod_ip.is_empty() || done,
            None,
            &old,
        ),
        cond(
            "Initialized",
            initialized,
            if initialized {
                None
            } else {
                Some("ContainersNotInitialized")
            },
            &old,
        ),
        cond(
            "Ready",
            all_ready,
            if done && !all_ready {
                Some("PodCompleted")
            } else {
                reason_ready
            },
            &old,
        ),
        cond(
            "ContainersReady",
            all_ready,
            if done && !all_ready {
                Some("PodCompleted")
            } else {
                reason_ready
            },
            &old,
        ),
        cond("PodScheduled", true, None, &old),
    ];
    if done {
        for c in conditions
            .iter_mut()
            .filter(|c| c.type_ == "PodReadyToStartContainers")
        {
            c.status = "False".into();
        }
    }
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(k.config.node_ip.clone()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: k.config.node_ip.clone(),
        }]),
        pod_ip: Some(pod_ip.to_string()).filter(|s| !s.is_empty()),
        pod_ips: Some(vec![PodIP {
            ip: pod_ip.to_string(),
        }])
        .filter(|_| !pod_ip.is_empty()),
        start_time: Some(start.clone()),
        container_statuses: Some(main),
        init_container_statuses: Some(init).filter(|v| !v.is_empty()),
        qos_class: old.qos_class.clone().or_else(|| Some(qos_class(pod))),
        ..Default::default()
    }
}

fn qos_class(pod: &Pod) -> String {
    let cs = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &cs {
        let r = c.resources.clone().unwrap_or_default();
        let l = r.limits.unwrap_or_default();
        let q = r.requests.unwrap_or_default();
        if !l.is_empty() || !q.is_empty() {
            any = true;
        }
        for k in ["cpu", "memory"] {
            match (l.get(k), q.get(k).or(l.get(k))) {
                (Some(a), Some(b)) if a == b => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn kill_grace_prefers_deletion_then_probe_then_pod() {
        let mut pod = Pod {
            spec: Some(PodSpec {
                termination_grace_period_seconds: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(kill_grace(&pod, None), 7);
        assert_eq!(kill_grace(&pod, Some(3)), 3);
        pod.metadata.deletion_grace_period_seconds = Some(1);
        assert_eq!(kill_grace(&pod, Some(3)), 1);
        assert_eq!(kill_grace(&Pod::default(), None), 30);
    }

    #[test]
    fn started_gates_ready_in_the_status() {
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        let ctr = cri::Container {
            id: "abc".into(),
            ..Default::default()
        };
        let st = cri::ContainerStatus {
            id: "abc".into(),
            state: cri::ContainerState::ContainerRunning as i32,
            started_at: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let s = container_status_of(&c, Some((&ctr, &st)), None, true, false, None);
        assert_eq!((s.started, s.ready), (Some(false), false));
        let s = container_status_of(&c, Some((&ctr, &st)), None, true, true, None);
        assert_eq!((s.started, s.ready), (Some(true), true));
    }
}
