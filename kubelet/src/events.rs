//! Pod events (`core/v1` Events, source `kubelet` on the node), as `kubectl describe` shows them,
//! written through the kubelet's one client-tools [`client_tools::record::Recorder`].
use client_tools::record::{EventType, NewEvent, Reporter, Sink, object_reference};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};

/// The kubelet's recorder: `core/v1` Events from component `kubelet` on host `node`.
pub fn node_recorder(client: kube::Client, node: &str) -> client_tools::record::Recorder {
    let reporter = Reporter {
        instance: Some(node.to_string()),
        host: Some(node.to_string()),
    };
    client_tools::record::Recorder::new(client, Sink::CoreV1, reporter)
}

/// Records events about one pod.
pub struct Recorder {
    events: client_tools::record::Recorder,
    object: ObjectReference,
}

impl Recorder {
    /// A recorder for `pod`, writing through the node's `events` recorder.
    pub fn new(events: &client_tools::record::Recorder, pod: &Pod) -> Recorder {
        Recorder {
            events: events.clone(),
            object: object_reference(pod),
        }
    }

    /// A `Normal` event.
    pub async fn normal(&self, reason: &str, message: &str) {
        self.emit(EventType::Normal, reason, message).await
    }

    /// A `Warning` event.
    pub async fn warning(&self, reason: &str, message: &str) {
        self.emit(EventType::Warning, reason, message).await
    }

    /// Written before it returns: the pod worker's steps and their events stay in order.
    async fn emit(&self, type_: EventType, reason: &str, message: &str) {
        self.events
            .publish_now(NewEvent {
                regarding: self.object.clone(),
                component: "kubelet".into(),
                type_,
                reason: reason.into(),
                action: None,
                note: message.into(),
            })
            .await;
        tracing::info!(pod = ?self.object.name, reason, message, "event");
    }
}
