//! One pass over a pod ([`sync`]), in the order Kubernetes' `SyncPod` takes: the volumes, the
//! sandbox, the init containers one at a time, the containers (start, restart with back-off per
//! restartPolicy, probes), the ephemeral containers, and the status that results.
use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodStatus};

use super::container::{
    BACKOFF_MAX, BACKOFF_START, ContainerMemo, ReadySandbox, back_off_event, backoff_msg, bump,
    containers, discard_unstarted, is_exited, is_running, latest_container_id, never_started,
    probes, seen, start_container,
};
use super::sandbox::{self, Sandbox};
use super::status::{build_status, container_status_of, now, pending_status};
use crate::events::Recorder;
use crate::spec::{self, EnvSources};
use crate::{Kubelet, volumes};

/// Why a container waits (`state.waiting` reason and message); None: it does not.
type Waiting = Option<(String, String)>;

/// Containers and their runtime memory by key (`name`, `init:name`, `ephemeral:name`).
type Memo = HashMap<String, ContainerMemo>;

/// One pass: brings the runtime towards the pod's spec and returns the pod's status.
/// `sandbox_error` keeps the last volume or sandbox failure, reported once as an event.
pub(super) async fn sync(
    k: &Kubelet,
    pod: &Pod,
    memo: &mut Memo,
    sandbox_error: &mut Option<String>,
) -> Result<PodStatus, crate::Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let rec = Recorder::new(&k.events, pod);
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let old = pod.status.clone().unwrap_or_default();
    let start_time = old.start_time.clone().unwrap_or_else(now);
    let creating = || pending_status(pod, &start_time, k, "ContainerCreating");

    let found = sandbox::sandboxes(k, &uid).await;
    let src = EnvSources::fetch(&k.client, pod).await?;
    if let Err(msg) = volumes::setup(&k.config.root_dir, &k.client, pod, &src, &k.ca_pem).await {
        if sandbox_error.as_deref() != Some(&msg) {
            rec.warning("FailedMount", &format!("MountVolume.SetUp failed: {msg}"))
                .await;
        }
        *sandbox_error = Some(msg);
        return Ok(creating());
    }
    let t0 = std::time::Instant::now();
    tracing::debug!(pod = ?pod.metadata.name, "volumes ready");
    let sb = sandbox::ensure(k, pod, found, &rec, sandbox_error).await;
    tracing::debug!(pod = ?pod.metadata.name, ms = t0.elapsed().as_millis() as u64, "sandbox");
    let sb = match sb {
        Sandbox::Ready(sb) => *sb,
        Sandbox::Finished => return Ok(old),
        Sandbox::Creating => return Ok(creating()),
    };
    let run = ready_sandbox(k, pod, sb, src, rec).await;
    let ctrs = containers(k, &run.id).await;

    let (init_statuses, initialized) = init_containers(&run, &ctrs, memo, &restart_policy).await;
    let statuses = if initialized {
        app_containers(&run, &ctrs, memo, &restart_policy).await
    } else {
        spec.containers.iter().map(pod_initializing).collect()
    };
    let ephemeral = ephemeral_containers(&run, memo).await;
    let mut status = build_status(
        pod,
        &start_time,
        k,
        initialized,
        init_statuses,
        statuses,
        &run.pod_ip,
        &restart_policy,
    );
    status.ephemeral_container_statuses = Some(ephemeral).filter(|v| !v.is_empty());
    Ok(status)
}

/// What the container steps of this pass need of the ready sandbox `sb`: its config, and the
/// pod's IP (the node's with hostNetwork).
async fn ready_sandbox<'a>(
    k: &'a Kubelet,
    pod: &'a Pod,
    sb: cri::PodSandbox,
    env_sources: EnvSources,
    recorder: Recorder,
) -> ReadySandbox<'a> {
    let attempt = sb.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
    let config = sandbox::sandbox_config(&k.config, pod, attempt);
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let pod_ip = Some(sandbox::sandbox_ip(k, &sb.id).await)
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| {
            if host_network {
                k.config.node_ip.clone()
            } else {
                String::new()
            }
        });
    ReadySandbox {
        k,
        pod,
        id: sb.id,
        config,
        env_sources,
        recorder,
        pod_ip,
    }
}

/// The status of a container that waits for the init containers.
fn pod_initializing(c: &Container) -> ContainerStatus {
    let waiting = Some(("PodInitializing".into(), String::new()));
    container_status_of(c, None, None, false, false, waiting)
}

/// The init containers, in order: each must succeed before the next starts. Returns their
/// statuses (those not reached yet wait with `PodInitializing`) and whether all succeeded.
async fn init_containers(
    run: &ReadySandbox<'_>,
    ctrs: &[cri::Container],
    memo: &mut Memo,
    restart_policy: &str,
) -> (Vec<ContainerStatus>, bool) {
    let list = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let mut statuses = Vec::new();
    let mut initialized = true;
    for c in list {
        let m = memo.entry(format!("init:{}", c.name)).or_default();
        let (status, done) = init_container(run, ctrs, c, m, restart_policy).await;
        statuses.push(status);
        if !done {
            initialized = false;
            break;
        }
    }
    statuses.extend(list.iter().skip(statuses.len()).map(pod_initializing));
    (statuses, initialized)
}

/// One init container: done once it exited 0; running; or (re)started, after the back-off
/// when it failed before (never again with restartPolicy Never).
async fn init_container(
    run: &ReadySandbox<'_>,
    ctrs: &[cri::Container],
    c: &Container,
    m: &mut ContainerMemo,
    restart_policy: &str,
) -> (ContainerStatus, bool) {
    let s = seen(run.k, ctrs, c).await;
    let seen_status = |waiting| {
        let latest = s.latest.as_ref().map(|(a, b)| (a, b));
        container_status_of(c, latest, s.previous.as_ref(), false, true, waiting)
    };
    match &s.latest {
        Some((_, st)) if is_exited(st) && st.exit_code == 0 => (seen_status(None), true),
        Some((_, st)) if is_running(st) => (seen_status(None), false),
        Some((ctr, st)) if never_started(st) => {
            let next = discard_unstarted(run.k, ctr).await;
            let waiting = if start_container(run, c, next, m, None).await {
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
            } else if m.backing_off() {
                Some(("CrashLoopBackOff".to_string(), backoff_msg(m, c, run.pod)))
            } else {
                if failed {
                    back_off_event(&run.recorder, c, run.pod).await;
                }
                if start_container(run, c, attempt_next, m, None).await {
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
            (seen_status(waiting), false)
        }
    }
}

/// The pod's containers, each started, restarted or probed as its state asks.
async fn app_containers(
    run: &ReadySandbox<'_>,
    ctrs: &[cri::Container],
    memo: &mut Memo,
    restart_policy: &str,
) -> Vec<ContainerStatus> {
    let list = run
        .pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let mut statuses = Vec::new();
    for c in list {
        let m = memo.entry(c.name.clone()).or_default();
        statuses.push(app_container(run, ctrs, c, m, restart_policy).await);
    }
    statuses
}

/// One container of the pod: what its latest attempt asks for, then its status.
async fn app_container(
    run: &ReadySandbox<'_>,
    ctrs: &[cri::Container],
    c: &Container,
    m: &mut ContainerMemo,
    restart_policy: &str,
) -> ContainerStatus {
    let s = seen(run.k, ctrs, c).await;
    let mut waiting = match &s.latest {
        None => first_start(run, c, m).await,
        Some((ctr, st)) if is_exited(st) => {
            restart_exited(run, c, ctr, st, m, restart_policy).await
        }
        Some((ctr, st)) if is_running(st) => {
            keep_running(run, c, ctr, st, m).await;
            None
        }
        Some((ctr, st)) if never_started(st) => {
            let next = discard_unstarted(run.k, ctr).await;
            if start_container(run, c, next, m, None).await {
                None
            } else {
                m.waiting_reason()
            }
        }
        _ => None,
    };
    // Re-read after any start so the status reflects what runs now.
    let s = if waiting.is_none() && !matches!(&s.latest, Some((_, st)) if is_running(st)) {
        let ctrs = containers(run.k, &run.id).await;
        seen(run.k, &ctrs, c).await
    } else {
        s
    };
    if waiting.is_none()
        && let Some(e) = m.post_start_error.take()
    {
        waiting = Some(("PostStartHookError".to_string(), e));
    }
    container_status_of(
        c,
        s.latest.as_ref().map(|(a, b)| (a, b)),
        s.previous.as_ref(),
        m.ready,
        m.started,
        waiting,
    )
}

/// A container never created: started, unless its configuration failed and it backs off.
async fn first_start(run: &ReadySandbox<'_>, c: &Container, m: &mut ContainerMemo) -> Waiting {
    if m.config_error.is_some() && m.backing_off() {
        Some((
            "CreateContainerConfigError".to_string(),
            m.config_error.clone().unwrap_or_default(),
        ))
    } else if start_container(run, c, 0, m, None).await {
        None
    } else {
        m.waiting_reason()
    }
}

/// An exited container under its restartPolicy: as in Kubernetes, the first restart is
/// immediate, then the back-off waits 10 s, doubling up to 5 min (`CrashLoopBackOff`, with one
/// `BackOff` event per exit).
async fn restart_exited(
    run: &ReadySandbox<'_>,
    c: &Container,
    ctr: &cri::Container,
    st: &cri::ContainerStatus,
    m: &mut ContainerMemo,
    restart_policy: &str,
) -> Waiting {
    let restart = match restart_policy {
        "Always" => true,
        "OnFailure" => st.exit_code != 0,
        _ => false,
    };
    if !restart {
        return None;
    }
    let next = ctr.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(1);
    let exited = format!("exited:{}", ctr.id);
    let reported = format!("reported:{}", ctr.id);
    if m.last_started_id != exited && m.last_started_id != reported {
        // First time this exit is seen.
        match m.backoff {
            None => {
                m.backoff = Some(BACKOFF_START);
                m.next_start = None;
            }
            Some(b) => {
                m.next_start = Some(std::time::Instant::now() + b);
                m.wait = Some(b);
                m.backoff = Some((b * 2).min(BACKOFF_MAX));
            }
        }
        m.last_started_id = exited.clone();
    }
    if m.backing_off() {
        let waiting = Some(("CrashLoopBackOff".to_string(), backoff_msg(m, c, run.pod)));
        if m.last_started_id == exited {
            back_off_event(&run.recorder, c, run.pod).await;
            m.last_started_id = reported;
        }
        waiting
    } else if start_container(run, c, next, m, None).await {
        None
    } else {
        // As Kubernetes: RunContainerError for the failed attempt, then CrashLoopBackOff while
        // backing off; an image that can't be had says so.
        m.image_error.clone().or(m
            .start_error
            .clone()
            .map(|e| ("RunContainerError".to_string(), e)))
    }
}

/// A running container: adopted if the kubelet did not start it, its back-off reset after 10
/// minutes up (as Kubernetes), and its probes run.
async fn keep_running(
    run: &ReadySandbox<'_>,
    c: &Container,
    ctr: &cri::Container,
    st: &cri::ContainerStatus,
    m: &mut ContainerMemo,
) {
    if m.last_started_id.is_empty() {
        m.last_started_id = ctr.id.clone();
    }
    if st.started_at > 0
        && (jiff::Timestamp::now().as_nanosecond() as i64 - st.started_at) > 600_000_000_000
    {
        m.backoff = None;
    }
    probes(run, c, ctr, st, m).await;
}

/// Ephemeral containers (`kubectl debug`): each is started once in the running sandbox (in its
/// target's PID namespace if it names one) and never restarted; a failed creation is retried
/// after the back-off, as Kubernetes does for a container that never ran.
async fn ephemeral_containers(run: &ReadySandbox<'_>, memo: &mut Memo) -> Vec<ContainerStatus> {
    let pod = run.pod;
    let list = pod
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.clone())
        .unwrap_or_default();
    if list.is_empty() {
        return Vec::new();
    }
    let mut ctrs = containers(run.k, &run.id).await;
    let mut out = Vec::new();
    for ec in &list {
        let c = spec::ephemeral_container(ec);
        let m = memo.entry(format!("ephemeral:{}", c.name)).or_default();
        let mut s = seen(run.k, &ctrs, &c).await;
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
            let retry_later = m.backing_off();
            let target_id = ec
                .target_container_name
                .as_deref()
                .and_then(|t| latest_container_id(&ctrs, t));
            if !retry_later && start_container(run, &c, 0, m, target_id.as_deref()).await {
                ctrs = containers(run.k, &run.id).await;
                s = seen(run.k, &ctrs, &c).await;
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
