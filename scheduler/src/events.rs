//! Scheduling events (`events.k8s.io/v1`, as kube-scheduler's recorder writes them) and the
//! `PodScheduled` condition of pods that fit nowhere. Event delivery is best effort: a bounded
//! channel drops events under overload instead of slowing scheduling down.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodCondition};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

/// One event about a pod.
#[derive(Debug, Clone)]
pub struct PodEvent {
    /// The pod it is about.
    pub pod: Arc<Pod>,
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    /// `Scheduled` / `FailedScheduling`.
    pub reason: &'static str,
    /// `Binding` / `Scheduling`.
    pub action: &'static str,
    /// Human-readable message.
    pub note: String,
}

/// Queues events for asynchronous delivery.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<PodEvent>,
}

impl EventSink {
    /// Starts the delivery task.
    pub fn start(client: Client, controller: String, instance: String) -> Self {
        let (tx, rx) = mpsc::channel::<PodEvent>(4096);
        tokio::spawn(async move {
            tokio_stream_from(rx)
                .for_each_concurrent(16, |ev| {
                    let client = client.clone();
                    let controller = controller.clone();
                    let instance = instance.clone();
                    async move {
                        if let Err(e) = publish(&client, &controller, &instance, &ev).await {
                            tracing::debug!(error = %e, reason = ev.reason, "event not recorded");
                        }
                    }
                })
                .await;
        });
        EventSink { tx }
    }

    /// Queues an event; drops it if the backlog is full.
    pub fn emit(&self, ev: PodEvent) {
        if self.tx.try_send(ev).is_err() {
            tracing::debug!("event backlog full; event dropped");
        }
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Reference to a pod as events carry it.
pub fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: None,
    }
}

async fn publish(
    client: &Client,
    controller: &str,
    instance: &str,
    ev: &PodEvent,
) -> Result<(), kube::Error> {
    let now = Timestamp::now();
    let ns = ev
        .pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = ev.pod.metadata.name.clone().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(ev.action.into()),
        reason: Some(ev.reason.into()),
        note: Some(ev.note.clone()),
        type_: Some(ev.type_.into()),
        regarding: Some(pod_reference(&ev.pod)),
        reporting_controller: Some(controller.into()),
        reporting_instance: Some(instance.into()),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

/// Sets `PodScheduled=False, reason=Unschedulable` with the FailedScheduling message, unless the
/// pod already carries exactly that condition.
pub async fn set_unschedulable_condition(
    client: &Client,
    pod: &Pod,
    message: &str,
) -> Result<(), kube::Error> {
    let mut conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| c.type_ == "PodScheduled")
        && c.status == "False"
        && c.reason.as_deref() == Some("Unschedulable")
        && c.message.as_deref() == Some(message)
    {
        return Ok(());
    }
    conditions.retain(|c| c.type_ != "PodScheduled");
    conditions.push(PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some(message.into()),
        last_transition_time: Some(Time(Timestamp::now())),
        ..Default::default()
    });
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    Api::<Pod>::namespaced(client.clone(), &ns)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}
