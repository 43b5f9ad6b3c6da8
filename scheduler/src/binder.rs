//! Binding: `POST pods/{name}/binding` with many requests in flight at once.

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};

/// What the API said about a binding.
#[derive(Debug, PartialEq, Eq)]
pub enum BindOutcome {
    /// Bound.
    Bound,
    /// The pod is gone or already bound elsewhere; nothing to retry.
    Gone,
    /// Transient failure; retry later.
    Retry(String),
}

/// Binds `pod` to `node`.
pub async fn bind(client: &Client, pod: &Pod, node: &str) -> BindOutcome {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    match api
        .create_subresource::<Binding, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => BindOutcome::Bound,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => BindOutcome::Gone,
        Err(e) => BindOutcome::Retry(e.to_string()),
    }
}
