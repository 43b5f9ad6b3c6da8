//! The pod sandbox in the runtime: finding a pod's sandboxes, creating one (its CRI config,
//! RuntimeClass handler, leftovers of failed attempts removed first), its IP, and tearing the
//! whole pod down ([`terminate`]).
use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::container::{containers, kill_container};
use super::{LABEL_POD_NAME, LABEL_POD_NS, LABEL_POD_UID};
use crate::events::Recorder;
use crate::{Config, Kubelet, runtime, spec, volumes};

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

/// The runtime's sandboxes of pod `uid` (none when the runtime could not be asked).
pub(super) async fn sandboxes(k: &Kubelet, uid: &str) -> Vec<cri::PodSandbox> {
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

fn is_ready(s: &cri::PodSandbox) -> bool {
    s.state == cri::PodSandboxState::SandboxReady as i32
}

/// The outcome of [`ensure`].
pub(super) enum Sandbox {
    /// A ready sandbox the containers run in.
    Ready(Box<cri::PodSandbox>),
    /// None ready and the pod has finished (Succeeded or Failed): it gets no new one.
    Finished,
    /// Being created, or its creation failed (reported as `FailedCreatePodSandBox`): the pod
    /// stays `ContainerCreating`.
    Creating,
}

/// The pod's ready sandbox among `found` (the runtime's sandboxes of the pod); without one, and
/// unless the pod has finished, the leftovers are removed and a new sandbox is created.
/// `sandbox_error` keeps the last failure so that it is reported once.
pub(super) async fn ensure(
    k: &Kubelet,
    pod: &Pod,
    found: Vec<cri::PodSandbox>,
    rec: &Recorder,
    sandbox_error: &mut Option<String>,
) -> Sandbox {
    if let Some(s) = found
        .iter()
        .filter(|s| is_ready(s))
        .max_by_key(|s| s.created_at)
    {
        return Sandbox::Ready(Box::new(s.clone()));
    }
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| matches!(p, "Succeeded" | "Failed"));
    if finished {
        return Sandbox::Finished;
    }
    let attempt = found
        .iter()
        .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
        .max()
        .unwrap_or(0);
    // Remove NOTREADY leftovers: a failed RunPodSandbox keeps its name reserved.
    for s in &found {
        remove(k, &s.id).await;
    }
    match create(k, pod, attempt).await {
        Ok(()) => {
            *sandbox_error = None;
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            match sandboxes(k, &uid).await.into_iter().find(is_ready) {
                Some(s) => Sandbox::Ready(Box::new(s)),
                None => Sandbox::Creating,
            }
        }
        Err(e) => {
            let msg = format!("Failed to create pod sandbox: {e}");
            if sandbox_error.as_deref() != Some(&msg) {
                rec.warning("FailedCreatePodSandBox", &msg).await;
            }
            *sandbox_error = Some(msg);
            Sandbox::Creating
        }
    }
}

/// RunPodSandbox with the pod's config and RuntimeClass handler.
async fn create(k: &Kubelet, pod: &Pod, attempt: u32) -> Result<(), String> {
    let cfg = sandbox_config(&k.config, pod, attempt);
    let _ = std::fs::create_dir_all(&cfg.log_directory);
    let class = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref());
    let runtime_handler = runtime_handler(k, class).await?;
    let mut rt = k.cri.rt.clone();
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cfg),
        runtime_handler,
    })
    .await
    .map(|_| ())
    .map_err(|e| e.message().to_string())
}

/// StopPodSandbox then RemovePodSandbox (errors ignored: the next pass looks again).
async fn remove(k: &Kubelet, sandbox_id: &str) {
    let mut rt = k.cri.rt.clone();
    let _ = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.into(),
        })
        .await;
    let _ = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox_id.into(),
        })
        .await;
}

/// Stops and removes everything the runtime has for pod `uid`: its running containers are
/// killed in parallel as [`kill_container`] does (preStop hooks first), with `grace` seconds.
/// Returns whether the runtime then holds no sandbox of the pod (false also when it could not
/// be asked, e.g. while containerd restarts).
pub async fn terminate(k: &Kubelet, uid: &str, pod: Option<&Pod>, grace: i64) -> bool {
    let rec = pod.map(|p| Recorder::new(&k.events, p));
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
        remove(k, &sb.id).await;
    }
    let gone = matches!(list_sandboxes(k, uid).await, Ok(left) if left.is_empty());
    if gone {
        volumes::teardown(&k.config.root_dir, uid);
    }
    gone
}

/// The IP of a pod sandbox (empty: none, e.g. host network).
pub(super) async fn sandbox_ip(k: &Kubelet, sandbox_id: &str) -> String {
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

/// The CRI config of the pod's sandbox on the node `config` describes (Kubernetes'
/// `generatePodSandboxConfig`); public so that a bench can send the kubelet's exact sandbox to
/// the runtime without it.
pub fn sandbox_config(config: &Config, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
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
    let host_resolv = (!config.resolv_conf.is_empty())
        .then(|| std::fs::read_to_string(&config.resolv_conf).unwrap_or_default());
    let dns_config = spec::pod_dns_config(
        pod,
        spec::NodeDns {
            cluster_dns: &config.cluster_dns,
            cluster_domain: &config.cluster_domain,
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
            spec::pod_hostname(pod, &config.cluster_domain)
        },
        log_directory: runtime::Layout {
            root: config.root_dir.clone(),
        }
        .pod_logs(&ns, &name, &uid)
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
            cgroup_parent: config.pod_cgroup(&uid),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(spec::namespace_options(pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
