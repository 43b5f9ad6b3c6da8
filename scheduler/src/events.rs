//! Scheduling events (`events.k8s.io/v1`, as kube-scheduler's recorder writes them, through
//! client-tools' recorder) and the `PodScheduled` condition of pods that fit nowhere. Event
//! delivery is best effort: a bounded queue drops events under overload instead of slowing
//! scheduling down.

use std::sync::Arc;

pub use client_tools::record::EventType;
use client_tools::record::{NewEvent, Recorder, Reporter, Sink, object_reference};
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

/// One event about a pod.
#[derive(Debug, Clone)]
pub struct PodEvent {
    /// The pod it is about.
    pub pod: Arc<Pod>,
    /// `Normal` or `Warning`.
    pub type_: EventType,
    /// `Scheduled` / `FailedScheduling`.
    pub reason: &'static str,
    /// `Binding` / `Scheduling`.
    pub action: &'static str,
    /// Human-readable message.
    pub note: String,
}

/// Queues events for asynchronous delivery (client-tools' `events.k8s.io/v1` recorder).
#[derive(Clone)]
pub struct EventSink {
    recorder: Recorder,
    controller: String,
}

impl EventSink {
    /// Starts the delivery task; events name `controller` as `reportingController` and
    /// `instance` as `reportingInstance`.
    pub fn start(client: Client, controller: String, instance: String) -> Self {
        let reporter = Reporter {
            instance: Some(instance),
            host: None,
        };
        EventSink {
            recorder: Recorder::new(client, Sink::EventsV1, reporter),
            controller,
        }
    }

    /// Queues an event; drops it if the backlog is full.
    pub fn emit(&self, ev: PodEvent) {
        self.recorder.publish(NewEvent {
            regarding: object_reference(ev.pod.as_ref()),
            component: self.controller.clone(),
            type_: ev.type_,
            reason: ev.reason.into(),
            action: Some(ev.action.into()),
            note: ev.note,
        });
    }
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
