//! One scheduling decision: PreFilter, Filter over (a sample of) the nodes, PreScore, Score,
//! random tie-break; or a FitError worded as kube-scheduler words it.

use std::collections::BTreeMap;

use rand::Rng;

use crate::cache::Cache;
use crate::framework::{Code, CycleState, FilterPlugin, NodeInfo, PodInfo, ScorePlugin, Status};
use crate::plugins::{image_locality, inter_pod_affinity, pod_topology_spread, volume_binding};

/// kube-scheduler's message when the cluster has no nodes at all.
pub const NO_NODES_AVAILABLE: &str = "no nodes available to schedule pods";

/// Why a pod fits nowhere: the first failing filter status of every node.
#[derive(Debug, Clone)]
pub struct FitError {
    /// Number of nodes considered.
    pub num_all_nodes: usize,
    /// One status per rejected node.
    pub statuses: Vec<Status>,
    /// spec.preemptionPolicy == Never.
    pub preemption_never: bool,
    /// Set when a PreFilter plugin rejected the pod: replaces the per-node reasons.
    pub pre_filter_msg: Option<String>,
}

fn histogram<'a>(reasons: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_default() += 1;
    }
    let mut parts: Vec<String> = counts
        .into_iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    // Go sorts the formatted "<count> <reason>" strings, so the count takes part in the order.
    parts.sort();
    parts.join(", ")
}

impl FitError {
    /// The FailedScheduling message when preemption found victims: the filter diagnosis alone
    /// (a successful PostFilter adds nothing).
    pub fn filter_message(&self) -> String {
        if self.num_all_nodes == 0 {
            return NO_NODES_AVAILABLE.to_string();
        }
        let mut msg = format!("0/{} nodes are available:", self.num_all_nodes);
        let filter = match &self.pre_filter_msg {
            Some(m) => m.clone(),
            None => histogram(
                self.statuses
                    .iter()
                    .flat_map(|s| s.reasons.iter().map(|r| r.as_ref())),
            ),
        };
        if !filter.is_empty() {
            msg.push_str(&format!(" {filter}."));
        }
        msg
    }

    /// The FailedScheduling message of Kubernetes 1.33, including the default preemption
    /// plugin's PostFilter diagnosis when it found no victims.
    pub fn message(&self) -> String {
        if self.num_all_nodes == 0 {
            return NO_NODES_AVAILABLE.to_string();
        }
        let mut msg = self.filter_message();
        let post = if self.preemption_never {
            "preemption: not eligible due to preemptionPolicy=Never.".to_string()
        } else {
            let per_node = self.statuses.iter().map(|s| match s.code {
                Code::Unschedulable => "No preemption victims found for incoming pod",
                Code::UnschedulableAndUnresolvable => "Preemption is not helpful for scheduling",
            });
            // Nodes without a status (none here) count as "not helpful" in Kubernetes as well.
            let missing = self.num_all_nodes.saturating_sub(self.statuses.len());
            let all = per_node.chain(std::iter::repeat_n(
                "Preemption is not helpful for scheduling",
                missing,
            ));
            format!(
                "preemption: 0/{} nodes are available: {}.",
                self.num_all_nodes,
                histogram(all)
            )
        };
        msg.push_str(&format!(" {post}."));
        msg
    }
}

/// The default profile's plugins.
pub struct Profile {
    filters: Vec<Box<dyn FilterPlugin>>,
    scores: Vec<Box<dyn ScorePlugin>>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            filters: crate::plugins::default_filters(),
            scores: crate::plugins::default_scores(),
        }
    }
}

/// How many feasible nodes to look for before scoring (kube-scheduler's adaptive
/// percentageOfNodesToScore: 50% minus 1% per 125 nodes, at least 5% and 100 nodes).
pub fn num_feasible_nodes_to_find(num_all: usize) -> usize {
    if num_all < 100 {
        return num_all;
    }
    let pct = (50 - (num_all / 125) as i64).max(5) as usize;
    (num_all * pct / 100).max(100)
}

/// A successful decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Chosen node.
    pub node: String,
    /// Where the next pod's node search should start (round-robin, as kube-scheduler does).
    pub next_start: usize,
}

impl Profile {
    /// PreFilter: the cycle state for `pod` against the current cache.
    pub fn pre_filter(&self, cache: &Cache, pod: &PodInfo) -> CycleState {
        let mut state = CycleState::default();
        if let Err(rejection) = volume_binding::pre_filter(&mut state, cache, pod) {
            state.pre_filter_rejection = Some(rejection);
        }
        inter_pod_affinity::pre_filter(
            &mut state,
            pod,
            cache.nodes().iter(),
            cache.any_pod_affinity(),
            &cache.namespaces,
        );
        pod_topology_spread::pre_filter(&mut state, pod, cache.nodes().iter());
        state
    }

    /// Runs the filters in order; the first failure is the node's status.
    pub fn filter_node(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
    ) -> Result<(), Status> {
        if let Some(rejection) = &state.pre_filter_rejection {
            return Err(rejection.clone());
        }
        for f in &self.filters {
            f.filter(state, pod, node)?;
        }
        Ok(())
    }

    /// Schedules one pod against a consistent view of the cache.
    pub fn schedule(
        &self,
        cache: &Cache,
        pod: &PodInfo,
        start: usize,
        rng: &mut impl Rng,
    ) -> Result<Decision, FitError> {
        let nodes = cache.nodes();
        let n = nodes.len();
        let fit_error = |statuses| FitError {
            num_all_nodes: n,
            statuses,
            preemption_never: pod.preemption_never,
            pre_filter_msg: None,
        };
        if n == 0 {
            return Err(fit_error(Vec::new()));
        }
        let mut state = self.pre_filter(cache, pod);
        if let Some(rejection) = &state.pre_filter_rejection {
            return Err(FitError {
                pre_filter_msg: Some(rejection.reasons.join(", ")),
                ..fit_error(vec![rejection.clone(); n])
            });
        }
        // A nominated node that still fits is taken without looking further (kube-scheduler's
        // evaluateNominatedNode).
        if !pod.nominated_node_name.is_empty()
            && let Some(node) = cache.node(&pod.nominated_node_name)
            && self
                .filter_node(&state, pod, &cache.with_nominated(node, pod))
                .is_ok()
        {
            return Ok(Decision {
                node: node.name.clone(),
                next_start: start % n,
            });
        }
        let want = num_feasible_nodes_to_find(n);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(n));
        let mut statuses = Vec::new();
        let mut processed = 0;
        for i in 0..n {
            let node = &nodes[(start + i) % n];
            processed += 1;
            match self.filter_node(&state, pod, &cache.with_nominated(node, pod)) {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(s) => statuses.push(s),
            }
        }
        let next_start = (start + processed) % n;
        if feasible.is_empty() {
            return Err(fit_error(statuses));
        }
        if feasible.len() == 1 {
            return Ok(Decision {
                node: feasible[0].name.clone(),
                next_start,
            });
        }
        pod_topology_spread::pre_score(&mut state, pod, &feasible, nodes.iter());
        inter_pod_affinity::pre_score(
            &mut state,
            pod,
            nodes.iter(),
            cache.any_pod_affinity(),
            &cache.namespaces,
        );
        image_locality::pre_score(&mut state, pod, cache);
        let mut total = vec![0i64; feasible.len()];
        let mut raw = vec![0i64; feasible.len()];
        for sp in &self.scores {
            for (r, node) in raw.iter_mut().zip(&feasible) {
                *r = sp.score(&state, pod, node);
            }
            sp.normalize(&state, &mut raw);
            for (t, r) in total.iter_mut().zip(&raw) {
                *t += r * sp.weight();
            }
        }
        // Reservoir sampling among the best nodes, like kube-scheduler's selectHost.
        let mut best = 0;
        let mut ties = 1;
        for i in 1..total.len() {
            if total[i] > total[best] {
                best = i;
                ties = 1;
            } else if total[i] == total[best] {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        Ok(Decision {
            node: feasible[best].name.clone(),
            next_start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn cache_with(nodes: Vec<serde_json::Value>) -> Cache {
        let mut c = Cache::default();
        for n in nodes {
            let n: Node = serde_json::from_value(n).unwrap();
            c.upsert_node(&n);
        }
        c
    }

    fn pod(spec: serde_json::Value) -> PodInfo {
        crate::plugins::testutil::pod(spec)
    }

    #[test]
    fn failed_scheduling_message_matches_kubernetes() {
        let c = cache_with(vec![
            json!({"metadata": {"name": "cp"}, "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
                   "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}}),
            json!({"metadata": {"name": "w1"}, "status": {"allocatable": {"cpu": "1", "memory": "8Gi", "pods": "110"}}}),
            json!({"metadata": {"name": "w2"}, "status": {"allocatable": {"cpu": "1", "memory": "8Gi", "pods": "110"}}}),
        ]);
        let p =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}));
        let err = Profile::default()
            .schedule(&c, &p, 0, &mut rand::rng())
            .unwrap_err();
        assert_eq!(
            err.message(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. \
             preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.."
        );
    }

    #[test]
    fn resolvable_shortage_mentions_victims() {
        let mut c = cache_with(vec![
            json!({"metadata": {"name": "w1"}, "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"}}}),
        ]);
        let hog = crate::plugins::testutil::pod_labeled(
            "hog",
            json!({}),
            json!({"nodeName": "w1", "containers": [{"name": "c", "resources": {"requests": {"cpu": "800m"}}}]}),
        );
        c.upsert_assigned_pod(std::sync::Arc::new(hog));
        let p = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}}}]}),
        );
        let err = Profile::default()
            .schedule(&c, &p, 0, &mut rand::rng())
            .unwrap_err();
        assert_eq!(
            err.message(),
            "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. \
             preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.."
        );
        let p =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}));
        let err = Profile::default()
            .schedule(&c, &p, 0, &mut rand::rng())
            .unwrap_err();
        assert_eq!(
            err.message(),
            "0/1 nodes are available: 1 Insufficient cpu. \
             preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.."
        );
        let never = pod(
            json!({"preemptionPolicy": "Never", "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]}),
        );
        assert_eq!(
            Profile::default()
                .schedule(&c, &never, 0, &mut rand::rng())
                .unwrap_err()
                .message(),
            "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.."
        );
    }

    #[test]
    fn histogram_sorts_formatted_strings() {
        // "10 x" sorts before "2 y" because Go sorts the strings.
        let r: Vec<&str> = std::iter::repeat_n("x", 10)
            .chain(std::iter::repeat_n("y", 2))
            .collect();
        assert_eq!(histogram(r.into_iter()), "10 x, 2 y");
        assert_eq!(
            FitError {
                num_all_nodes: 0,
                statuses: vec![],
                preemption_never: false,
                pre_filter_msg: None,
            }
            .message(),
            NO_NODES_AVAILABLE
        );
    }

    #[test]
    fn missing_claim_is_a_prefilter_rejection_worded_as_kubernetes() {
        let c = cache_with(vec![
            json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"}}}),
        ]);
        let p =
            pod(json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "x"}}]}));
        let mut rng = rand::rng();
        let err = Profile::default()
            .schedule(&c, &p, 0, &mut rng)
            .err()
            .map(|e| e.message());
        assert_eq!(
            err.as_deref(),
            Some(
                "0/1 nodes are available: persistentvolumeclaim \"x\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.."
            )
        );
    }

    #[test]
    fn picks_least_allocated_and_samples_nodes() {
        let c = cache_with(vec![
            json!({"metadata": {"name": "small"}, "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"}}}),
            json!({"metadata": {"name": "big"}, "status": {"allocatable": {"cpu": "8", "memory": "8Gi", "pods": "110"}}}),
        ]);
        let p = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}),
        );
        let d = Profile::default()
            .schedule(&c, &p, 0, &mut rand::rng())
            .unwrap();
        assert_eq!(d.node, "big");
        assert_eq!(num_feasible_nodes_to_find(50), 50);
        assert_eq!(num_feasible_nodes_to_find(1000), 420);
        assert_eq!(num_feasible_nodes_to_find(5000), 500);
    }

    #[test]
    fn nominated_node_is_taken_while_it_fits() {
        let nodes = (0..5)
            .map(|i| json!({"metadata": {"name": format!("n{i}")}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}}))
            .collect();
        let c = cache_with(nodes);
        let mut p =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}));
        p.nominated_node_name = "n3".into();
        for _ in 0..10 {
            let d = Profile::default()
                .schedule(&c, &p, 0, &mut rand::rng())
                .unwrap();
            assert_eq!(d.node, "n3");
        }
        // A nominated node that no longer fits is ignored; the pod still gets a node.
        p.requests.milli_cpu = 4000;
        p.nominated_node_name = "gone".into();
        assert!(
            Profile::default()
                .schedule(&c, &p, 0, &mut rand::rng())
                .is_ok()
        );
    }
}
