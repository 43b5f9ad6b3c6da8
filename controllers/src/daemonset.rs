//! DaemonSet controller: one pod per eligible node (nodeSelector matches, taints tolerated),
//! rolling updates bounded by `maxUnavailable`, and status as `kubectl rollout status` reads it.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use lotse_core::selectors::node_requirement_matches;

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::history::{self, REVISION_HASH};
use crate::node::tolerates;
use crate::util;

const COMPONENT: &str = "daemonset-controller";

type Ctx = util::Context;

fn all_daemonsets(store: &Store<DaemonSet>) -> Vec<ObjectRef<DaemonSet>> {
    store
        .state()
        .iter()
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

/// Runs the DaemonSet controller until its watch streams end.
pub async fn run(client: Client, recorder: Recorder) -> Result<(), Error> {
    let wc = watcher::Config::default();
    let ctrl = Controller::new(Api::<DaemonSet>::all(client.clone()), wc.clone());
    let ds_store = ctrl.store();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder,
    });
    util::run_controller(
        ctrl.owns(Api::<Pod>::all(client.clone()), wc.clone())
            .watches(Api::<Node>::all(client), wc, move |_node: Node| {
                all_daemonsets(&ds_store)
            }),
        reconcile,
        ctx,
        "daemonset",
        Duration::from_secs(2),
    )
    .await
}

/// The tolerations Kubernetes adds to every daemon pod.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t(crate::node::NOT_READY, "NoExecute"),
        t(crate::node::UNREACHABLE, "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether a daemon pod with `node_selector`, the template's `node_affinity` (its required
/// terms) and `tolerations` belongs on `node`.
pub fn should_run(
    node: &Node,
    node_selector: Option<&BTreeMap<String, String>>,
    node_affinity: Option<&NodeAffinity>,
    tolerations: &[Toleration],
) -> bool {
    if let Some(sel) = node_selector
        && sel.iter().any(|(k, v)| node.labels().get(k) != Some(v))
    {
        return false;
    }
    if let Some(required) = node_affinity.and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) && !node_selector_matches(required, node)
    {
        return false;
    }
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// Kubernetes' `NodeSelector` semantics: the terms are ORed, the requirements of a term ANDed;
/// a term without requirements, or an empty list of terms, matches no node.
pub fn node_selector_matches(selector: &NodeSelector, node: &Node) -> bool {
    selector.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        exprs
            .iter()
            .all(|r| node_requirement_matches(r, node.labels().get(&r.key)))
            && fields.iter().all(|r| {
                // metadata.name is the only node field selector Kubernetes supports.
                r.key == "metadata.name"
                    && matches!(r.operator.as_str(), "In" | "NotIn")
                    && node_requirement_matches(r, node.metadata.name.as_ref())
            })
    })
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if util::is_deleting(ds.as_ref()) {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.uid().unwrap_or_default();
    let spec = ds
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid("daemonset without spec".into()))?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_spec = spec.template.spec.clone().unwrap_or_default();
    let mut tolerations = pod_spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations());
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();

    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| util::controller_ref(p).is_some_and(|r| r.uid == uid))
        .collect();
    let live_hashes = pods
        .iter()
        .filter_map(|p| p.labels().get(REVISION_HASH).cloned())
        .collect();
    let (_, hash) = history::sync(&ctx.client, ds.as_ref(), &live_hashes).await?;
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in pods.into_iter().filter(util::is_pod_active) {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        by_node.entry(node).or_default().push(p);
    }
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        ..Default::default()
    };
    let mut to_create = Vec::new();
    let mut to_delete: Vec<Pod> = Vec::new();
    let mut outdated: Vec<Pod> = Vec::new();
    let mut unavailable = 0;
    for node in &nodes {
        let node_name = node.name_any();
        let wanted = should_run(
            node,
            pod_spec.node_selector.as_ref(),
            pod_spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref()),
            &tolerations,
        );
        let mut here = by_node.remove(&node_name).unwrap_or_default();
        if !wanted {
            if !here.is_empty() {
                status.number_misscheduled += 1;
            }
            to_delete.extend(here);
            continue;
        }
        status.desired_number_scheduled += 1;
        if here.is_empty() {
            to_create.push(node_name);
            unavailable += 1;
            continue;
        }
        status.current_number_scheduled += 1;
        here.sort_by_key(|p| {
            p.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
        });
        let keep = here.remove(0);
        to_delete.extend(here);
        let ready = util::is_pod_ready(&keep);
        let available = util::is_pod_available(&keep, min_ready, now);
        status.number_ready += i32::from(ready);
        status.number_available = Some(status.number_available.unwrap_or(0) + i32::from(available));
        if !available {
            unavailable += 1;
        }
        if keep.labels().get(REVISION_HASH) == Some(&hash) {
            status.updated_number_scheduled =
                Some(status.updated_number_scheduled.unwrap_or(0) + 1);
        } else {
            outdated.push(keep);
        }
    }
    // Pods on nodes that no longer exist.
    to_delete.extend(by_node.into_values().flatten());
    status.number_unavailable =
        Some(status.desired_number_scheduled - status.number_available.unwrap_or(0))
            .filter(|n| *n > 0);

    // Rolling update: replace outdated pods while at most maxUnavailable are unavailable.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate"
        && !outdated.is_empty()
    {
        let max_unavailable = match strategy
            .rolling_update
            .and_then(|r| r.max_unavailable)
            .unwrap_or(IntOrString::Int(1))
        {
            IntOrString::Int(i) => i,
            IntOrString::String(s) => {
                (s.trim_end_matches('%').parse::<i64>().unwrap_or(0)
                    * i64::from(status.desired_number_scheduled)
                    / 100) as i32
            }
        }
        .max(1);
        // Unavailable outdated pods go first: replacing them costs no availability.
        outdated.sort_by_key(|p| util::is_pod_available(p, min_ready, now));
        let mut budget = max_unavailable - unavailable;
        for p in outdated {
            if util::is_pod_available(&p, min_ready, now) {
                if budget <= 0 {
                    break;
                }
                budget -= 1;
            }
            to_delete.push(p);
        }
    }

    for node_name in to_create {
        let mut spec_for_node = pod_spec.clone();
        spec_for_node.tolerations = Some(tolerations.clone());
        spec_for_node.node_name = Some(node_name.clone());
        let affinity = spec_for_node.affinity.get_or_insert_with(Default::default);
        affinity.node_affinity = Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node_name.clone()]),
                    }]),
                    match_expressions: None,
                }],
            }),
            ..Default::default()
        });
        let tmeta = spec.template.metadata.clone().unwrap_or_default();
        let mut labels = tmeta.labels.unwrap_or_default();
        labels.insert(REVISION_HASH.into(), hash.clone());
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                labels: Some(labels),
                annotations: tmeta.annotations,
                owner_references: Some(vec![util::owner_ref(ds.as_ref())]),
                ..Default::default()
            },
            spec: Some(spec_for_node),
            status: None,
        };
        util::create_pod(&pods_api, &pod, &ctx.recorder, ds.as_ref(), COMPONENT).await?;
    }
    for p in to_delete {
        match pods_api
            .delete(&p.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => ctx.recorder.record(
                ds.as_ref(),
                COMPONENT,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted pod: {}", p.name_any()),
            ),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if Some(&status) != ds.status.as_ref() {
        util::patch_status(&ctx.client, ds.as_ref(), &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(if min_ready > 0 {
        1
    } else {
        300
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    #[test]
    fn node_eligibility_follows_selector_and_taints() {
        let node = |labels: &[(&str, &str)], taints: Vec<Taint>| Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: None,
        };
        let sel: BTreeMap<String, String> = [("disk".to_string(), "ssd".to_string())].into();
        assert!(should_run(
            &node(&[("disk", "ssd")], vec![]),
            Some(&sel),
            None,
            &[]
        ));
        assert!(!should_run(
            &node(&[("disk", "hdd")], vec![]),
            Some(&sel),
            None,
            &[]
        ));
        let gpu = Taint {
            key: "gpu".into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        };
        assert!(!should_run(
            &node(&[], vec![gpu.clone()]),
            None,
            None,
            &daemon_tolerations()
        ));
        let unreachable = Taint {
            key: crate::node::UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: None,
        };
        assert!(should_run(
            &node(&[], vec![unreachable]),
            None,
            None,
            &daemon_tolerations()
        ));
        let tol = Toleration {
            key: Some("gpu".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(should_run(&node(&[], vec![gpu]), None, None, &[tol]));
    }

    #[test]
    fn node_affinity_required_terms_are_ored_and_requirements_anded() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    [("zone", "a"), ("cores", "8")]
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let req = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let affinity = |terms: Vec<NodeSelectorTerm>| NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms,
            }),
            ..Default::default()
        };
        let expr = |reqs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: Some(reqs),
            match_fields: None,
        };
        let run = |a: &NodeAffinity| should_run(&node, None, Some(a), &[]);
        assert!(run(&affinity(vec![expr(vec![req(
            "zone",
            "In",
            &["a", "b"]
        )])])));
        assert!(!run(&affinity(vec![expr(vec![
            req("zone", "In", &["a"]),
            req("cores", "Gt", &["8"]),
        ])])));
        assert!(run(&affinity(vec![
            expr(vec![req("zone", "NotIn", &["a"])]),
            expr(vec![
                req("cores", "Gt", &["4"]),
                req("gpu", "DoesNotExist", &[])
            ]),
        ])));
        assert!(run(&affinity(vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
        }])));
        assert!(!run(&affinity(vec![NodeSelectorTerm::default()])));
        assert!(!run(&affinity(vec![])));
    }
}
