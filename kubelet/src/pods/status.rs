//! The Pod status a pass reports: each container's status from what the runtime says of its
//! latest two attempts, the pod's phase and conditions from those, and its QoS class.
use std::collections::BTreeMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lotse_core::qos::{self, ContainerResources, CpuMemory};

use crate::{Kubelet, spec};

/// A CRI timestamp (ns since the epoch; 0: unset) to the second.
fn ts(nanos: i64) -> Option<Time> {
    if nanos <= 0 {
        return None;
    }
    jiff::Timestamp::from_nanosecond(nanos as i128)
        .ok()
        .map(|t| Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)))
}

/// Now, to the second (as the API stores times).
pub(super) fn now() -> Time {
    Time(
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .unwrap_or_else(|_| jiff::Timestamp::now()),
    )
}

/// The terminated state of an exited attempt.
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

/// A container's status: its latest attempt (running, exited or being created) and the
/// previous one as `lastState`; `waiting` overrides the state (the previous state becomes
/// `lastState`).
pub(super) fn container_status_of(
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

/// Condition `kind`, keeping its last transition time while its status stays.
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

/// The status of a pod whose containers all wait for `reason` (`ContainerCreating`: volumes or
/// sandbox not ready).
pub(super) fn pending_status(pod: &Pod, start: &Time, k: &Kubelet, reason: &str) -> PodStatus {
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

/// The pod's status from its containers' statuses: phase, conditions, IPs and QoS class.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_status(
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
    let done = matches!(phase, "Succeeded" | "Failed");
    let reason_ready = if all_ready {
        None
    } else if done {
        Some("PodCompleted")
    } else {
        Some("ContainersNotReady")
    };
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
        cond("Ready", all_ready, reason_ready, &old),
        cond("ContainersReady", all_ready, reason_ready, &old),
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

/// The pod's QoS class (BestEffort, Burstable or Guaranteed) from its containers' resources.
fn qos_class(pod: &Pod) -> String {
    let list = |l: Option<&BTreeMap<String, Quantity>>| {
        CpuMemory::from_pairs(
            l.into_iter()
                .flatten()
                .map(|(k, q)| (k.as_str(), q.0.as_str())),
        )
    };
    let containers = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .map(|c| {
            let r = c.resources.as_ref();
            ContainerResources {
                requests: list(r.and_then(|r| r.requests.as_ref())),
                limits: list(r.and_then(|r| r.limits.as_ref())),
            }
        });
    qos::qos_class(containers).as_str().into()
}

#[cfg(test)]
mod tests {
    use super::*;

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
