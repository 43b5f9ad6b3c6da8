//! Endpoints and EndpointSlice controllers: for every Service with a selector, the addresses
//! of its pods (ready, or not ready in `notReadyAddresses` / `conditions.ready=false`), with
//! numeric or named `targetPort`s resolved per pod.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::Error;
use crate::util;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";

struct Ctx {
    client: Client,
}

/// Runs the Endpoints and EndpointSlice controller until its watch streams end.
pub async fn run(client: Client) -> Result<(), Error> {
    let wc = watcher::Config::default();
    let ctrl = Controller::new(Api::<Service>::all(client.clone()), wc.clone());
    let store = ctrl.store();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    util::run_controller(
        ctrl.watches(Api::<Pod>::all(client), wc, move |pod| {
            services_of(&store, &pod)
        }),
        reconcile,
        ctx,
        "endpoints",
        Duration::from_secs(2),
    )
    .await
}

fn services_of(store: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace();
    store
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| pod.labels().get(k) == Some(v))
                })
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// The port a Service port reaches on `pod`: a number, or a named container port.
pub fn resolve_target_port(target: Option<&IntOrString>, port: i32, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(p) => Some(p),
            Err(_) => pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port),
        },
    }
}

/// One pod as an endpoint, with the ports it serves.
struct PodEndpoint {
    pod: Pod,
    ip: String,
    ready: bool,
    terminating: bool,
    ports: Vec<EndpointPort>,
    /// The pod's DNS hostname under this Service (`spec.hostname` when `spec.subdomain` names
    /// the Service, as Kubernetes' endpoint controllers set it: StatefulSet pod names in DNS).
    hostname: Option<String>,
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else {
        // Services without a selector have user-managed Endpoints.
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let query = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&query))
        .await?
        .items;
    let mut eps = Vec::new();
    for pod in pods {
        let status = pod.status.clone().unwrap_or_default();
        let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if terminating && !publish_not_ready {
            continue;
        }
        let ports: Vec<EndpointPort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone(),
                    port: resolve_target_port(p.target_port.as_ref(), p.port, &pod)?,
                    protocol: p.protocol.clone().or(Some("TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        let ready = publish_not_ready || (util::is_pod_ready(&pod) && !terminating);
        let hostname = pod
            .spec
            .as_ref()
            .filter(|s| s.subdomain.as_deref() == svc.metadata.name.as_deref())
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty());
        eps.push(PodEndpoint {
            pod,
            ip,
            ready,
            terminating,
            ports,
            hostname,
        });
    }
    eps.sort_by(|a, b| a.ip.cmp(&b.ip));
    sync_endpoints(&ctx.client, &svc, &eps).await?;
    sync_slices(&ctx.client, &svc, &eps).await?;
    Ok(Action::await_change())
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

fn node_name(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

/// Groups endpoints by identical port lists, as Kubernetes' `RepackSubsets` does.
fn subsets(eps: &[PodEndpoint]) -> Vec<EndpointSubset> {
    let mut by_ports: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    for e in eps.iter().filter(|e| !e.ports.is_empty()) {
        let key = serde_json::to_string(&e.ports).unwrap_or_default();
        let subset = by_ports.entry(key).or_insert_with(|| EndpointSubset {
            ports: Some(e.ports.clone()),
            ..Default::default()
        });
        let addr = EndpointAddress {
            ip: e.ip.clone(),
            node_name: node_name(&e.pod),
            target_ref: Some(target_ref(&e.pod)),
            hostname: e.hostname.clone(),
        };
        if e.ready {
            subset.addresses.get_or_insert_with(Vec::new).push(addr);
        } else {
            subset
                .not_ready_addresses
                .get_or_insert_with(Vec::new)
                .push(addr);
        }
    }
    by_ports.into_values().collect()
}

async fn sync_endpoints(client: &Client, svc: &Service, eps: &[PodEndpoint]) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    let subsets = subsets(eps);
    let subsets = (!subsets.is_empty()).then_some(subsets);
    let labels = svc.metadata.labels.clone();
    match api.get_opt(&svc.name_any()).await? {
        None => {
            let e = Endpoints {
                metadata: ObjectMeta {
                    name: svc.metadata.name.clone(),
                    labels,
                    ..Default::default()
                },
                subsets,
            };
            match api.create(&PostParams::default(), &e).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Some(mut cur) => {
            if cur.subsets == subsets && cur.metadata.labels == labels {
                return Ok(());
            }
            cur.subsets = subsets;
            cur.metadata.labels = labels;
            api.replace(&svc.name_any(), &PostParams::default(), &cur)
                .await?;
            Ok(())
        }
    }
}

async fn sync_slices(client: &Client, svc: &Service, eps: &[PodEndpoint]) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    // One slice per distinct port list; named deterministically so a restart converges.
    let mut wanted: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    for e in eps {
        let ports: Vec<SlicePort> = e
            .ports
            .iter()
            .map(|p| SlicePort {
                name: p.name.clone(),
                port: Some(p.port),
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let slice_name = format!(
            "{name}-{}",
            util::safe_encode(util::fnv32a(key.as_bytes()))
                .chars()
                .take(5)
                .collect::<String>()
        );
        let slice = wanted
            .entry(slice_name.clone())
            .or_insert_with(|| EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name),
                    namespace: Some(ns.clone()),
                    labels: Some(
                        [
                            (SERVICE_NAME_LABEL.to_string(), name.clone()),
                            (MANAGED_BY.to_string(), MANAGER.to_string()),
                        ]
                        .into(),
                    ),
                    owner_references: Some(vec![util::owner_ref(svc)]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: vec![],
                ports: Some(ports),
            });
        slice.endpoints.push(Endpoint {
            addresses: vec![e.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(e.ready),
                serving: Some(util::is_pod_ready(&e.pod)),
                terminating: Some(e.terminating),
            }),
            node_name: node_name(&e.pod),
            target_ref: Some(target_ref(&e.pod)),
            hostname: e.hostname.clone(),
            ..Default::default()
        });
    }
    if wanted.is_empty() {
        // Kubernetes keeps one empty slice for a Service without endpoints.
        let slice_name = format!("{name}-empty");
        wanted.insert(
            slice_name.clone(),
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name),
                    namespace: Some(ns.clone()),
                    labels: Some(
                        [
                            (SERVICE_NAME_LABEL.to_string(), name.clone()),
                            (MANAGED_BY.to_string(), MANAGER.to_string()),
                        ]
                        .into(),
                    ),
                    owner_references: Some(vec![util::owner_ref(svc)]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: vec![],
                ports: None,
            },
        );
    }
    let existing = api
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={name},{MANAGED_BY}={MANAGER}"
        )))
        .await?
        .items;
    for cur in &existing {
        let cur_name = cur.name_any();
        match wanted.remove(&cur_name) {
            None => match api.delete(&cur_name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            },
            Some(mut want) => {
                if want.endpoints == cur.endpoints && want.ports == cur.ports {
                    continue;
                }
                want.metadata.resource_version = cur.metadata.resource_version.clone();
                api.replace(&cur_name, &PostParams::default(), &want)
                    .await?;
            }
        }
    }
    for (_, slice) in wanted {
        match api.create(&PostParams::default(), &slice).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};

    #[test]
    fn target_ports_resolve_by_number_and_name() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(resolve_target_port(None, 80, &pod), Some(80));
        assert_eq!(
            resolve_target_port(Some(&IntOrString::Int(9000)), 80, &pod),
            Some(9000)
        );
        assert_eq!(
            resolve_target_port(Some(&IntOrString::String("http".into())), 80, &pod),
            Some(8080)
        );
        assert_eq!(
            resolve_target_port(Some(&IntOrString::String("grpc".into())), 80, &pod),
            None
        );
    }
}
