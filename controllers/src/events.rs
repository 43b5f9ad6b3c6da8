//! Event recorder: writes `core/v1` Events the way client-go's recorder does, so
//! `kubectl describe` and `kubectl get events` show them.
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};

/// Records Events about objects; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
}

/// Normal or Warning, as Kubernetes classifies events.
#[derive(Clone, Copy, Debug)]
pub enum EventType {
    /// Expected behaviour.
    Normal,
    /// Something went wrong and may need attention.
    Warning,
}

impl Recorder {
    /// A recorder writing through `client`.
    pub fn new(client: Client) -> Self {
        Recorder { client }
    }

    /// Records one event about `obj` from `component`. Failures are logged, never returned:
    /// an event that cannot be written must not stop a reconcile.
    pub async fn record<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        component: &str,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        let meta = obj.meta();
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: Some(name),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(format!("{kind:?}")),
            source: Some(EventSource {
                component: Some(component.into()),
                host: None,
            }),
            reporting_component: Some(component.into()),
            reporting_instance: Some(component.into()),
            first_timestamp: Some(crate::util::now()),
            last_timestamp: Some(crate::util::now()),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(error = %e, reason, "could not record event");
        }
    }
}
