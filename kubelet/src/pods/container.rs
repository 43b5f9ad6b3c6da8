//! One container of a pod in the runtime: starting it (image, environment, CRI config,
//! postStart hook), killing it (preStop hook within the grace period), the restart back-off,
//! the probe workers' pass, and what the runtime reports of the container's attempts.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};

use super::{LABEL_CONTAINER, LABEL_POD_UID};
use crate::events::Recorder;
use crate::hooks::{self, pod_ref};
use crate::probe::Tracker;
use crate::spec::{self, EnvSources};
use crate::{Config, Kubelet, images, volumes};

/// The first restart back-off after an immediate restart.
pub(super) const BACKOFF_START: Duration = Duration::from_secs(10);
/// The longest restart back-off.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Per-container memory of the worker: back-off and probe results.
#[derive(Default)]
pub(super) struct ContainerMemo {
    /// The back-off the next failure waits (None: the next restart is immediate).
    pub(super) backoff: Option<Duration>,
    /// No start before this.
    pub(super) next_start: Option<Instant>,
    /// Waiting reason and message of the image (`ErrImagePull`, `ImagePullBackOff`, …).
    pub(super) image_error: Option<(String, String)>,
    /// Pull in flight and pull back-off ([`images`]).
    pub(super) image: images::ContainerImage,
    /// Why the container could not be configured (`CreateContainerConfigError`).
    pub(super) config_error: Option<String>,
    /// Why the last StartContainer failed (reported once as `RunContainerError`).
    pub(super) start_error: Option<String>,
    /// `containerStatuses[].ready`: started and the readiness probe (if any) passes.
    pub(super) ready: bool,
    /// `containerStatuses[].started`: running and the startup probe (if any) has succeeded.
    pub(super) started: bool,
    /// Probe state of the running container `probes.0` (reset when another container runs).
    pub(super) probes: Option<(String, Probes)>,
    /// Why the postStart hook of the container just started failed (`PostStartHookError`).
    pub(super) post_start_error: Option<String>,
    /// The container last started, or `exited:<id>` / `reported:<id>` once its exit was seen
    /// and its `BackOff` event sent.
    pub(super) last_started_id: String,
    /// The back-off being waited now (the `CrashLoopBackOff` message).
    pub(super) wait: Option<Duration>,
}

impl ContainerMemo {
    /// Whether a start must wait for the back-off.
    pub(super) fn backing_off(&self) -> bool {
        self.next_start.is_some_and(|t| Instant::now() < t)
    }

    /// Why a container that did not start is waiting, in Kubernetes' order: the image
    /// (`ErrImagePull`, …), its configuration (`CreateContainerConfigError`), the start
    /// (`RunContainerError`).
    pub(super) fn waiting_reason(&self) -> Option<(String, String)> {
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
pub(super) struct Probes {
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

/// A pod's ready sandbox with what starting a container in it needs, fixed for one sync pass.
pub(super) struct ReadySandbox<'a> {
    /// The kubelet.
    pub k: &'a Kubelet,
    /// The pod.
    pub pod: &'a Pod,
    /// The sandbox's ID.
    pub id: String,
    /// The sandbox's config (CreateContainer takes it again).
    pub config: cri::PodSandboxConfig,
    /// What the containers' environment refers to.
    pub env_sources: EnvSources,
    /// The pod's event recorder.
    pub recorder: Recorder,
    /// The pod's IP (the node's with hostNetwork; empty: none yet).
    pub pod_ip: String,
}

/// Whether the runtime reports the container running.
pub(super) fn is_running(st: &cri::ContainerStatus) -> bool {
    st.state == cri::ContainerState::ContainerRunning as i32
}

/// Whether the runtime reports the container exited.
pub(super) fn is_exited(st: &cri::ContainerStatus) -> bool {
    st.state == cri::ContainerState::ContainerExited as i32
}

/// Starts container `c` as attempt `attempt` in the sandbox (pulling its image first): its
/// environment and CRI config, CreateContainer, StartContainer, then its postStart hook (a
/// failed hook kills it). Returns whether it was started; otherwise `memo` says why it waits.
pub(super) async fn start_container(
    run: &ReadySandbox<'_>,
    c: &Container,
    attempt: u32,
    memo: &mut ContainerMemo,
    target_id: Option<&str>,
) -> bool {
    let (k, pod) = (run.k, run.pod);
    let ReadySandbox {
        id: sandbox_id,
        config: sb_cfg,
        env_sources: src,
        recorder: rec,
        pod_ip,
        ..
    } = run;
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
    let mut security = spec::security(pod, c);
    // An ephemeral container with a target joins that container's PID namespace (unless the
    // pod shares one PID namespace anyway), as Kubernetes' kuberuntime does.
    if let (Some(target), Some(ns)) = (target_id, security.namespace_options.as_mut())
        && ns.pid == spec::ns_mode::CONTAINER
    {
        ns.pid = spec::ns_mode::TARGET;
        ns.target_id = target.to_string();
    }
    let cfg = container_config(&k.config, pod, c, attempt, image_id, env, security);
    let mut rt = k.cri.rt.clone();
    let t0 = Instant::now();
    tracing::debug!(pod = %pod_ref(pod), container = %c.name, "image and config ready");
    let created = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
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
    tracing::debug!(pod = %pod_ref(pod), container = %c.name, ms = t0.elapsed().as_millis() as u64, "CreateContainer");
    rec.normal("Created", &format!("Created container: {}", c.name))
        .await;
    let t0 = Instant::now();
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
    tracing::debug!(pod = %pod_ref(pod), container = %c.name, ms = t0.elapsed().as_millis() as u64, "StartContainer");
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

/// The CRI config of container `c` of `pod` as attempt `attempt` (Kubernetes'
/// `generateContainerConfig`) on the node `config` describes: `image` is the image's ID, `env`
/// the container's resolved environment, `security` its security context. Public so that a
/// bench can send the kubelet's exact container to the runtime without it.
pub fn container_config(
    config: &Config,
    pod: &Pod,
    c: &Container,
    attempt: u32,
    image: String,
    env: Vec<(String, String)>,
    security: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image,
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
        mounts: volumes::mounts(&config.root_dir, pod, c),
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
    }
}

/// Doubles the back-off (10 s → 5 min) and schedules the next attempt.
pub(super) fn bump(memo: &mut ContainerMemo) -> Duration {
    let b = match memo.backoff {
        None => BACKOFF_START,
        Some(b) => (b * 2).min(BACKOFF_MAX),
    };
    memo.backoff = Some(b);
    memo.next_start = Some(Instant::now() + b);
    b
}

/// The runtime's two latest attempts of one container.
pub(super) struct Seen {
    pub latest: Option<(cri::Container, cri::ContainerStatus)>,
    pub previous: Option<cri::ContainerStatus>,
}

/// The latest two attempts of container `c` among `all`; older ones are removed.
pub(super) async fn seen(k: &Kubelet, all: &[cri::Container], c: &Container) -> Seen {
    let name = c.name.as_str();
    // A container with a memory limit that got SIGKILL was most likely OOM-killed: its reason
    // is worth waiting for longer (containerd's OOM event can lag its exit event on a busy node).
    let memory_limited = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .is_some_and(|l| l.contains_key("memory"));
    let settle = if memory_limited {
        OOM_SETTLE_LIMITED
    } else {
        OOM_SETTLE
    };
    let mut mine: Vec<&cri::Container> = all
        .iter()
        .filter(|c| c.metadata.as_ref().map(|m| m.name.as_str()) == Some(name))
        .collect();
    mine.sort_by_key(|c| std::cmp::Reverse(c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)));
    let latest = match mine.first() {
        Some(c) => container_status(k, &c.id, settle)
            .await
            .map(|s| ((*c).clone(), s)),
        None => None,
    };
    let previous = match mine.get(1) {
        Some(c) => container_status(k, &c.id, settle).await,
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

/// The runtime's containers in sandbox `sandbox` (none when it could not be asked).
pub(super) async fn containers(k: &Kubelet, sandbox: &str) -> Vec<cri::Container> {
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

/// How long after its exit a SIGKILLed container (exit 137, no reason yet) may still turn out
/// OOM-killed, see [`container_status`].
const OOM_SETTLE: Duration = Duration::from_secs(2);
/// The same for a container with a memory limit.
const OOM_SETTLE_LIMITED: Duration = Duration::from_secs(6);

async fn container_status(k: &Kubelet, id: &str, settle: Duration) -> Option<cri::ContainerStatus> {
    let mut st = fetch_container_status(k, id).await?;
    // containerd 1.6 delivers the task's OOM event independently of its exit event, so right
    // after a SIGKILL (exit 137) the reason may still be empty and only become "OOMKilled" a
    // moment later. Give a just-killed container up to `settle` after its exit before
    // reporting "Error".
    let settle_nanos = settle.as_nanos() as i64;
    for _ in 0..(settle.as_millis() / 250) {
        let just_killed = st.state == cri::ContainerState::ContainerExited as i32
            && st.exit_code == 137
            && st.reason.is_empty()
            && now_nanos().saturating_sub(st.finished_at) < settle_nanos;
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

/// Kubernetes' killContainer: the `Killing` event with `message`, the preStop hook (bounded by
/// the grace period, its duration deducted from it, leaving at least 2 s; a failure is a
/// `FailedPreStopHook` event and the kill goes on), then StopContainer with what is left.
#[allow(clippy::too_many_arguments)]
pub(super) async fn kill_container(
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
pub(super) fn never_started(st: &cri::ContainerStatus) -> bool {
    st.state == cri::ContainerState::ContainerCreated as i32
        || st.state == cri::ContainerState::ContainerUnknown as i32
}

/// Stops (an unknown one might run: never two instances) and removes a [`never_started`]
/// container; returns the attempt number of its replacement.
pub(super) async fn discard_unstarted(k: &Kubelet, ctr: &cri::Container) -> u32 {
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

/// The grace period of a kill that is not a deletion: the deletion's if one is under way,
/// else the pod's `terminationGracePeriodSeconds` (30), or `probe_override` for a probe that
/// sets its own.
pub(super) fn kill_grace(pod: &Pod, probe_override: Option<i64>) -> i64 {
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

/// The ID of the newest container named `name` (the target of an ephemeral container).
pub(super) fn latest_container_id(all: &[cri::Container], name: &str) -> Option<String> {
    all.iter()
        .filter(|c| c.metadata.as_ref().map(|m| m.name.as_str()) == Some(name))
        .max_by_key(|c| c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0))
        .map(|c| c.id.clone())
}

/// The `CrashLoopBackOff` message.
pub(super) fn backoff_msg(m: &ContainerMemo, c: &Container, pod: &Pod) -> String {
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

/// The `BackOff` event of a failed container about to be restarted.
pub(super) async fn back_off_event(rec: &Recorder, c: &Container, pod: &Pod) {
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

/// One pass of the probe workers for running container `ctr`, as Kubernetes runs them: the
/// startup probe until it succeeds (liveness and readiness wait for it), then readiness and
/// liveness; a startup or liveness result of failure kills the container (restarted per
/// restartPolicy by the next pass).
pub(super) async fn probes(
    run: &ReadySandbox<'_>,
    c: &Container,
    ctr: &cri::Container,
    st: &cri::ContainerStatus,
    m: &mut ContainerMemo,
) {
    let (k, pod, rec, pod_ip) = (run.k, run.pod, &run.recorder, run.pod_ip.as_str());
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
            if pr.startup.result != Some(true)
                && pr.startup.due(p, running_for, Instant::now())
                && probe_once(run, c, &ctr.id, p, &mut pr.startup, "Startup").await == Some(false)
            {
                kill = Some(("startup", p));
            }
            m.started = pr.startup.result == Some(true);
        }
    }
    if m.started && kill.is_none() {
        match &c.readiness_probe {
            None => m.ready = true,
            Some(p) => {
                if pr.readiness.due(p, running_for, Instant::now()) {
                    probe_once(run, c, &ctr.id, p, &mut pr.readiness, "Readiness").await;
                }
                m.ready = pr.readiness.result == Some(true);
            }
        }
        if let Some(p) = &c.liveness_probe
            && pr.liveness.due(p, running_for, Instant::now())
            && probe_once(run, c, &ctr.id, p, &mut pr.liveness, "Liveness").await == Some(false)
        {
            kill = Some(("liveness", p));
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

/// Runs probe `p` of container `ctr_id` once, reports a failure as an `Unhealthy` event
/// (`<kind> probe failed: …`) and records the outcome in `tracker`; returns what
/// [`Tracker::record`] returns (the published result when it changed).
async fn probe_once(
    run: &ReadySandbox<'_>,
    c: &Container,
    ctr_id: &str,
    p: &k8s_openapi::api::core::v1::Probe,
    tracker: &mut Tracker,
    kind: &str,
) -> Option<bool> {
    let r = crate::probe::run(run.k, p, c, ctr_id, &run.pod_ip).await;
    if let Err(e) = &r {
        run.recorder
            .warning("Unhealthy", &format!("{kind} probe failed: {e}"))
            .await;
    }
    tracker.record(p, r.is_ok(), Instant::now())
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
}
