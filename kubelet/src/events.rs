//! Pod events (`core/v1` Events, source `kubelet` on the node), as `kubectl describe` shows them.
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

/// Records events about one pod.
pub struct Recorder {
    client: kube::Client,
    object: ObjectReference,
    node: String,
}

impl Recorder {
    /// A recorder for `pod`, reporting from `node`.
    pub fn new(client: kube::Client, pod: &Pod, node: &str) -> Recorder {
        let object = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        };
        Recorder {
            client,
            object,
            node: node.to_string(),
        }
    }

    /// A `Normal` event.
    pub async fn normal(&self, reason: &str, message: &str) {
        self.emit("Normal", reason, message).await
    }

    /// A `Warning` event.
    pub async fn warning(&self, reason: &str, message: &str) {
        self.emit("Warning", reason, message).await
    }

    async fn emit(&self, kind: &str, reason: &str, message: &str) {
        let ns = self
            .object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = Time(jiff::Timestamp::now());
        let name = format!(
            "{}.{:x}",
            self.object.name.clone().unwrap_or_default(),
            jiff::Timestamp::now().as_nanosecond()
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: self.object.clone(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!(error = %e, reason, "event not recorded");
        }
        tracing::info!(pod = ?self.object.name, reason, message, "event");
    }
}
