//! The per-pod task: takes the latest Pod object from the pod loop, runs a [`sync`] pass or the
//! teardown, writes the status when it changed, and decides how soon to look again.
//!
//! [`sync`]: super::sync::sync
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::watch;

use super::container::ContainerMemo;
use super::sandbox::terminate;
use super::sync::sync;
use crate::Kubelet;

/// What a pass decided about the pod.
enum Phase {
    /// Keep going.
    Live,
    /// The pod is gone from the node: stop the worker.
    Done,
    /// The runtime has not torn the pod down yet: try again in a second.
    Retry,
}

/// What the worker remembers between passes.
#[derive(Default)]
struct Memory {
    /// Per container (`name`, `init:name`, `ephemeral:name`): back-off and probe results.
    containers: HashMap<String, ContainerMemo>,
    /// The last status written, to write only changes.
    last_status: serde_json::Value,
    /// The last sandbox or volume error, reported once as an event.
    sandbox_error: Option<String>,
}

/// Runs one pod until it is deleted. `rx` carries the latest Pod object (None: gone from the API).
pub async fn worker(k: Arc<Kubelet>, uid: String, mut rx: watch::Receiver<Option<Pod>>) {
    let mut memory = Memory::default();
    loop {
        let pod = rx.borrow_and_update().clone();
        let mut interval = Duration::from_secs(1);
        let phase = match pod {
            None => gone(&k, &uid).await,
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => deleting(&k, &pod).await,
            Some(pod) => {
                if let Some(i) = pass(&k, &pod, &mut memory).await {
                    interval = i;
                }
                Phase::Live
            }
        };
        match phase {
            Phase::Done => return,
            Phase::Retry => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Phase::Live => {}
        }
        // Until the pod changes, an image pull of this pass ends, or the resync interval.
        let pulls: Vec<_> = memory
            .containers
            .values()
            .filter_map(|m| m.image.pull_in_flight())
            .collect();
        let pulled = async {
            if pulls.is_empty() {
                std::future::pending::<()>().await
            } else {
                futures::future::select_all(pulls.iter().map(|n| Box::pin(n.notified()))).await;
            }
        };
        let _ = tokio::time::timeout(interval, async {
            tokio::select! {
                _ = rx.changed() => {}
                _ = pulled => {}
            }
        })
        .await;
        if rx.has_changed().is_err() && rx.borrow().is_none() {
            // Sender dropped and last value says gone: one more pass tears down.
            continue;
        }
    }
}

/// The pod is gone from the API: tear down what the runtime has of it.
async fn gone(k: &Kubelet, uid: &str) -> Phase {
    if terminate(k, uid, None, 0).await {
        Phase::Done
    } else {
        // The runtime did not answer (containerd restarting): try again, so no container
        // outlives its pod.
        Phase::Retry
    }
}

/// The pod has a deletionTimestamp: tear it down with its grace period, then delete the object.
async fn deleting(k: &Kubelet, pod: &Pod) -> Phase {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
    // As Kubernetes, the pod object goes only once its containers and sandbox are gone; until
    // then the next pass tries again.
    if !terminate(k, &uid, Some(pod), grace).await {
        tracing::warn!(uid = %uid, "pod not yet torn down in the runtime; retrying");
        return Phase::Retry;
    }
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pod_api(k, pod)
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

/// One sync pass and its status write; returns when to look again (None: the pass failed).
async fn pass(k: &Kubelet, pod: &Pod, memory: &mut Memory) -> Option<Duration> {
    let t0 = std::time::Instant::now();
    let status = match sync(k, pod, &mut memory.containers, &mut memory.sandbox_error).await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(error = %e, "pod sync");
            return None;
        }
    };
    let interval = resync_interval(pod, &status);
    let synced = t0.elapsed();
    let v = serde_json::to_value(&status).unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    tracing::debug!(pod = %name, phase = ?status.phase, ms = synced.as_millis() as u64, "sync pass");
    if v != memory.last_status {
        let t1 = std::time::Instant::now();
        match pod_api(k, pod)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": v })),
            )
            .await
        {
            Ok(_) => memory.last_status = v,
            Err(e) => tracing::warn!(pod = %name, error = %e, "status update"),
        }
        tracing::debug!(pod = %name, ms = t1.elapsed().as_millis() as u64, "status written");
    }
    Some(interval)
}

fn pod_api(k: &Kubelet, pod: &Pod) -> Api<Pod> {
    Api::namespaced(
        k.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    )
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
