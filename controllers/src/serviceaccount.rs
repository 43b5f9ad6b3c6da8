//! ServiceAccount and root-CA publisher controllers: every active namespace gets a `default`
//! ServiceAccount and a `kube-root-ca.crt` ConfigMap holding the cluster CA.
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::util;

/// Name of the ConfigMap that publishes the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

struct Ctx {
    client: Client,
    root_ca: Option<String>,
}

/// Runs the controller until its watch streams end.
pub async fn run(client: Client, root_ca: Option<String>) -> Result<(), Error> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        root_ca,
    });
    let wc = watcher::Config::default();
    util::run_controller(
        Controller::new(Api::<Namespace>::all(client.clone()), wc.clone())
            .watches(
                Api::<ServiceAccount>::all(client.clone()),
                wc.clone(),
                |sa| {
                    (sa.name_any() == "default")
                        .then(|| ObjectRef::new(&sa.namespace().unwrap_or_default()))
                },
            )
            .watches(Api::<ConfigMap>::all(client), wc, |cm| {
                (cm.name_any() == ROOT_CA_CONFIGMAP)
                    .then(|| ObjectRef::new(&cm.namespace().unwrap_or_default()))
            }),
        reconcile,
        ctx,
        "serviceaccount",
        Duration::from_secs(2),
    )
    .await
}

fn ignore_conflict<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        // Created meanwhile, or the namespace is terminating: nothing to do.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let sa_api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if sa_api.get_opt("default").await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        ignore_conflict(sa_api.create(&PostParams::default(), &sa).await)?;
    }
    if let Some(ca) = &ctx.root_ca {
        let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
        match cm_api.get_opt(ROOT_CA_CONFIGMAP).await? {
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CA_CONFIGMAP.into()),
                        annotations: Some([("kubernetes.io/description".to_string(), "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string())].into()),
                        ..Default::default()
                    },
                    data: Some([("ca.crt".to_string(), ca.clone())].into()),
                    ..Default::default()
                };
                ignore_conflict(cm_api.create(&PostParams::default(), &cm).await)?;
            }
            Some(cm) if cm.data.as_ref().and_then(|d| d.get("ca.crt")) != Some(ca) => {
                ignore_conflict(
                    cm_api
                        .patch(
                            ROOT_CA_CONFIGMAP,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"data": {"ca.crt": ca}})),
                        )
                        .await,
                )?;
            }
            Some(_) => {}
        }
    }
    Ok(Action::await_change())
}
