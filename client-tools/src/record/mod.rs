//! The event recorder: writes Events the way client-go's recorders do, so `kubectl describe`
//! and `kubectl get events` show them.
//!
//! One [`Recorder`] per component; cheap to clone. It writes one of three ways ([`Sink`]):
//! `core/v1` Events through client-go's `EventCorrelator` (`tools/record`, as
//! kube-controller-manager: aggregation, deduplication, spam filter — see [`correlator`]),
//! plain `core/v1` Events (one object per event, as Lotse's kubelet writes them), or
//! `events.k8s.io/v1` Events (`tools/events`, as kube-scheduler).
//!
//! Recording never fails and, through [`Recorder::publish`], never blocks: events go through a
//! bounded queue to one writer task, and are dropped (with a debug line) when the backlog is
//! full, as client-go drops them. [`Recorder::publish_now`] writes before it returns, for
//! callers that await each step (the kubelet's pod workers).

pub mod correlator;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::api::events::v1 as events_v1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;
use tokio::sync::mpsc;

use self::correlator::{Correlated, Correlator};

/// Events queued and not yet written before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 4096;
/// Uncorrelated events written at the same time.
const CONCURRENT_WRITES: usize = 16;

/// Normal or Warning, as Kubernetes classifies events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Expected behaviour.
    Normal,
    /// Something went wrong and may need attention.
    Warning,
}

impl EventType {
    /// The `type` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Which API the recorder writes and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// `core/v1` Events through client-go's `EventCorrelator` (kube-controller-manager).
    CoreV1Correlated,
    /// `core/v1` Events, each a new object.
    CoreV1,
    /// `events.k8s.io/v1` Events, each a new object (kube-scheduler).
    EventsV1,
}

/// Where events come from, beyond the component named in each [`NewEvent`].
#[derive(Clone, Debug, Default)]
pub struct Reporter {
    /// `reportingInstance`; the event's component when `None`.
    pub instance: Option<String>,
    /// `source.host` of `core/v1` Events (the kubelet's node).
    pub host: Option<String>,
}

/// One event to record.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The object it is about (`involvedObject` / `regarding`).
    pub regarding: ObjectReference,
    /// The reporting component (`source.component`, `reportingController`), e.g.
    /// `replicaset-controller`, `default-scheduler`, `kubelet`.
    pub component: String,
    /// Normal or Warning.
    pub type_: EventType,
    /// Machine-readable reason, e.g. `SuccessfulCreate`.
    pub reason: String,
    /// What was done (`action`; events.k8s.io requires it), e.g. `Binding`.
    pub action: Option<String>,
    /// Human-readable message (`message` / `note`).
    pub note: String,
}

/// A reference to `obj` as events carry it.
pub fn object_reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

/// Records Events; cheap to clone (all clones share one queue and writer).
#[derive(Clone)]
pub struct Recorder {
    writer: Arc<Writer>,
    tx: mpsc::Sender<(NewEvent, Timestamp)>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("sink", &self.writer.sink)
            .field("reporter", &self.writer.reporter)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder writing through `client`; spawns the writer task (needs a Tokio runtime).
    pub fn new(client: Client, sink: Sink, reporter: Reporter) -> Self {
        let writer = Arc::new(Writer {
            client,
            sink,
            reporter,
            correlator: (sink == Sink::CoreV1Correlated).then(|| Mutex::new(Correlator::default())),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(deliver(writer.clone(), rx));
        Recorder { writer, tx }
    }

    /// Queues `event`. Never blocks and never fails: an event that cannot be written must not
    /// stop a reconcile; under overload it is dropped.
    pub fn publish(&self, event: NewEvent) {
        if let Err(e) = self.tx.try_send((event, Timestamp::now())) {
            let reason = match &e {
                mpsc::error::TrySendError::Full((ev, _))
                | mpsc::error::TrySendError::Closed((ev, _)) => ev.reason.clone(),
            };
            tracing::debug!(%reason, "event backlog full or writer stopped; event dropped");
        }
    }

    /// Writes `event` before returning (failures are logged, never returned).
    pub async fn publish_now(&self, event: NewEvent) {
        self.writer.write(event, Timestamp::now()).await;
    }

    /// Queues one event about `obj` from `component` (client-go's `Eventf`).
    pub fn record<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        component: &str,
        type_: EventType,
        reason: &str,
        message: String,
    ) {
        self.publish(NewEvent {
            regarding: object_reference(obj),
            component: component.into(),
            type_,
            reason: reason.into(),
            action: None,
            note: message,
        });
    }
}

/// The writer task: correlated events one at a time (a count update must follow its create),
/// others a few at once.
async fn deliver(writer: Arc<Writer>, mut rx: mpsc::Receiver<(NewEvent, Timestamp)>) {
    let limit = if writer.correlator.is_some() {
        1
    } else {
        CONCURRENT_WRITES
    };
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .for_each_concurrent(limit, |(event, at)| {
            let writer = writer.clone();
            async move { writer.write(event, at).await }
        })
        .await;
}

/// `{object name}.{nanoseconds in hex}`, as client-go names new Events.
fn event_name(regarding: Option<&str>) -> String {
    format!(
        "{}.{:x}",
        regarding.unwrap_or_default(),
        Timestamp::now().as_nanosecond()
    )
}

struct Writer {
    client: Client,
    sink: Sink,
    reporter: Reporter,
    correlator: Option<Mutex<Correlator>>,
}

impl Writer {
    async fn write(&self, event: NewEvent, at: Timestamp) {
        let reason = event.reason.clone();
        let result = match self.sink {
            Sink::EventsV1 => self.create_events_v1(&event, at).await,
            Sink::CoreV1 | Sink::CoreV1Correlated => {
                let core = self.core_event(event, at);
                match &self.correlator {
                    Some(c) => {
                        let correlated = c
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .correlate(core, Instant::now());
                        match correlated {
                            Some(out) => self.write_correlated(out).await,
                            None => Ok(()),
                        }
                    }
                    None => {
                        let mut core = core;
                        core.metadata.name = Some(event_name(core.involved_object.name.as_deref()));
                        self.create_core(&core).await
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, %reason, "event not recorded");
        }
    }

    fn core_event(&self, e: NewEvent, at: Timestamp) -> Event {
        let now = Time(at);
        Event {
            metadata: ObjectMeta {
                namespace: Some(
                    e.regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                ..Default::default()
            },
            involved_object: e.regarding,
            reason: Some(e.reason),
            message: Some(e.note),
            type_: Some(e.type_.as_str().into()),
            action: e.action,
            source: Some(EventSource {
                component: Some(e.component.clone()),
                host: self.reporter.host.clone(),
            }),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| e.component.clone()),
            ),
            reporting_component: Some(e.component),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        }
    }

    async fn create_core(&self, event: &Event) -> Result<(), kube::Error> {
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        Api::<Event>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), event)
            .await
            .map(|_| ())
    }

    async fn write_correlated(&self, out: Correlated) -> Result<(), kube::Error> {
        if !out.update {
            return self.create_core(&out.event).await;
        }
        let ns = out.event.metadata.namespace.clone().unwrap_or_default();
        let name = out.event.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "count": out.event.count,
            "lastTimestamp": out.event.last_timestamp,
            "message": out.event.message,
        });
        let api = Api::<Event>::namespaced(self.client.clone(), &ns);
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            // The Event expired or was deleted: write it anew, as client-go does.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let mut fresh = out.event;
                fresh.metadata.resource_version = None;
                self.create_core(&fresh).await
            }
            r => r.map(|_| ()),
        }
    }

    async fn create_events_v1(&self, e: &NewEvent, at: Timestamp) -> Result<(), kube::Error> {
        let ns = e
            .regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let event = events_v1::Event {
            metadata: ObjectMeta {
                name: Some(event_name(e.regarding.name.as_deref())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(at)),
            action: e.action.clone(),
            reason: Some(e.reason.clone()),
            note: Some(e.note.clone()),
            type_: Some(e.type_.as_str().into()),
            regarding: Some(e.regarding.clone()),
            reporting_controller: Some(e.component.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| e.component.clone()),
            ),
            ..Default::default()
        };
        Api::<events_v1::Event>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::Value;

    use super::*;

    /// Requests seen by a fake apiserver that accepts every write and echoes it back.
    type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

    fn fake_client() -> (Client, Seen) {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await?.to_bytes();
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                log.lock().unwrap().push((
                    parts.method.to_string(),
                    parts.uri.path().to_string(),
                    value.clone(),
                ));
                Ok::<_, kube::Error>(Response::new(Full::new(Bytes::from(value.to_string()))))
            }
        });
        (Client::new(svc, "default"), seen)
    }

    async fn wait_for(seen: &Seen, n: usize) -> Vec<(String, String, Value)> {
        for _ in 0..200 {
            if seen.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen.lock().unwrap().clone()
    }

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.uid = Some("u1".into());
        pod
    }

    fn new_event(reason: &str, action: Option<&str>, note: &str) -> NewEvent {
        NewEvent {
            regarding: object_reference(&pod()),
            component: "kubelet".into(),
            type_: EventType::Warning,
            reason: reason.into(),
            action: action.map(Into::into),
            note: note.into(),
        }
    }

    #[tokio::test]
    async fn core_v1_events_name_their_source_host_and_instance() {
        let (client, seen) = fake_client();
        let reporter = Reporter {
            instance: Some("node-1".into()),
            host: Some("node-1".into()),
        };
        let rec = Recorder::new(client, Sink::CoreV1, reporter);
        rec.publish_now(new_event("BackOff", None, "Back-off restarting"))
            .await;
        rec.publish_now(new_event("BackOff", None, "Back-off restarting"))
            .await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "uncorrelated: each event is a new object");
        let (method, path, ev) = &seen[0];
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/api/v1/namespaces/ns/events")
        );
        assert!(ev["metadata"]["name"].as_str().unwrap().starts_with("web."));
        assert_eq!(ev["involvedObject"]["kind"], "Pod");
        assert_eq!(ev["involvedObject"]["uid"], "u1");
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["message"], "Back-off restarting");
        assert_eq!(
            ev["source"],
            json!({"component": "kubelet", "host": "node-1"})
        );
        assert_eq!(ev["reportingComponent"], "kubelet");
        assert_eq!(ev["reportingInstance"], "node-1");
        assert_eq!(ev["count"], 1);
        assert_eq!(ev["firstTimestamp"], ev["lastTimestamp"]);
    }

    #[tokio::test]
    async fn events_v1_carry_action_note_and_reporting_controller() {
        let (client, seen) = fake_client();
        let reporter = Reporter {
            instance: Some("sched-1".into()),
            host: None,
        };
        let rec = Recorder::new(client, Sink::EventsV1, reporter);
        let mut ev = new_event(
            "Scheduled",
            Some("Binding"),
            "Successfully assigned ns/web to n1",
        );
        ev.component = "default-scheduler".into();
        ev.type_ = EventType::Normal;
        rec.publish(ev);
        let seen = wait_for(&seen, 1).await;
        let (method, path, ev) = &seen[0];
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/apis/events.k8s.io/v1/namespaces/ns/events")
        );
        assert_eq!(ev["action"], "Binding");
        assert_eq!(ev["reason"], "Scheduled");
        assert_eq!(ev["note"], "Successfully assigned ns/web to n1");
        assert_eq!(ev["type"], "Normal");
        assert_eq!(ev["regarding"]["name"], "web");
        assert_eq!(ev["reportingController"], "default-scheduler");
        assert_eq!(ev["reportingInstance"], "sched-1");
        assert!(ev["eventTime"].is_string());
    }

    #[tokio::test]
    async fn correlated_repeats_patch_the_first_event_in_order() {
        let (client, seen) = fake_client();
        let rec = Recorder::new(client, Sink::CoreV1Correlated, Reporter::default());
        for _ in 0..3 {
            rec.record(
                &pod(),
                "replicaset-controller",
                EventType::Normal,
                "SuccessfulCreate",
                "Created pod: web-1".into(),
            );
        }
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        rec.record(
            &node,
            "node-controller",
            EventType::Normal,
            "RegisteredNode",
            "n".into(),
        );
        let seen = wait_for(&seen, 4).await;
        let methods: Vec<&str> = seen.iter().map(|(m, _, _)| m.as_str()).collect();
        assert_eq!(methods, ["POST", "PATCH", "PATCH", "POST"]);
        let name = seen[0].2["metadata"]["name"].as_str().unwrap().to_string();
        assert_eq!(seen[2].1, format!("/api/v1/namespaces/ns/events/{name}"));
        assert_eq!(seen[2].2["count"], 3);
        assert_eq!(seen[0].2["reportingInstance"], "replicaset-controller");
        assert_eq!(
            seen[0].2["source"],
            json!({"component": "replicaset-controller"})
        );
        // A cluster-scoped object's events go to `default`.
        assert_eq!(seen[3].1, "/api/v1/namespaces/default/events");
        assert_eq!(seen[3].2["involvedObject"]["kind"], "Node");
    }
}
