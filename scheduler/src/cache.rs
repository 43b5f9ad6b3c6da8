//! The scheduler cache: nodes with per-node aggregates of assigned and assumed pods, so a
//! scheduling decision never rescans pods, and an assumed pod counts against its node from the
//! moment it is chosen until the binding is observed (or fails and is forgotten).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::framework::{NodeInfo, PodInfo};
use crate::plugins::inter_pod_affinity::NamespaceLabels;

#[derive(Debug)]
struct PodState {
    node: String,
    assumed: bool,
}

/// Nodes, assigned pods and assumed pods. Writers hold the lock exclusively; decisions read it.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, PodState>,
    /// Pods bound to nodes the cache has not seen (yet); attached when the node appears.
    orphans: HashMap<String, Vec<Arc<PodInfo>>>,
    /// Labels of namespaces, for pod affinity terms with a namespaceSelector.
    pub namespaces: NamespaceLabels,
    /// Claims, volumes and classes, for VolumeBinding. Writers call [`Cache::touch`].
    pub volumes: crate::plugins::volume_binding::VolumeListers,
    /// Bumped on every change; a decision taken at the current generation needs no re-check.
    generation: u64,
    pods_with_affinity: usize,
    /// On how many nodes each image name is present (ImageLocality's spread).
    image_nodes: HashMap<String, usize>,
    /// Pending pods nominated to a node by preemption, by uid: the room their victims free is
    /// theirs, so pods of lower priority are filtered as if they were already there.
    nominated: HashMap<String, Arc<PodInfo>>,
}

impl Cache {
    /// All nodes, in a stable order.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// Changes with every mutation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a change made through a public field (volumes), so decisions re-check.
    pub fn touch(&mut self) {
        self.generation += 1;
    }

    /// Number of nodes whose status.images lists this name.
    pub fn nodes_with_image(&self, name: &str) -> usize {
        self.image_nodes.get(name).copied().unwrap_or(0)
    }

    fn count_images(&mut self, ni_index: usize, add: bool) {
        for name in self.nodes[ni_index].images.keys() {
            if add {
                *self.image_nodes.entry(name.clone()).or_default() += 1;
            } else if let Some(n) = self.image_nodes.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    self.image_nodes.remove(name);
                }
            }
        }
    }

    /// True if any placed pod carries pod (anti-)affinity terms.
    pub fn any_pod_affinity(&self) -> bool {
        self.pods_with_affinity > 0
    }

    /// Adds or updates a node; returns true if the change could make pending pods fit.
    pub fn upsert_node(&mut self, node: &Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        self.generation += 1;
        if let Some(&i) = self.index.get(&name) {
            let ni = &self.nodes[i];
            let before = (
                ni.labels.clone(),
                ni.taints.clone(),
                ni.unschedulable,
                ni.allocatable.clone(),
                ni.allowed_pods,
            );
            self.count_images(i, false);
            self.nodes[i].set_node(node);
            self.count_images(i, true);
            let ni = &self.nodes[i];
            before
                != (
                    ni.labels.clone(),
                    ni.taints.clone(),
                    ni.unschedulable,
                    ni.allocatable.clone(),
                    ni.allowed_pods,
                )
        } else {
            let mut ni = NodeInfo::new(node);
            for p in self.orphans.remove(&name).unwrap_or_default() {
                ni.add_pod(p);
            }
            self.index.insert(name, self.nodes.len());
            self.nodes.push(ni);
            self.count_images(self.nodes.len() - 1, true);
            true
        }
    }

    /// Removes a node; its pods wait as orphans in case it comes back.
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        self.generation += 1;
        self.count_images(i, false);
        let ni = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        if !ni.pods.is_empty() {
            self.orphans.insert(ni.name, ni.pods);
        }
    }

    /// Keeps only the named nodes (after a re-list).
    pub fn retain_nodes(&mut self, names: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .index
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.remove_node(&n);
        }
    }

    fn attach(&mut self, node: &str, pod: Arc<PodInfo>) {
        if pod.has_pod_affinity() {
            self.pods_with_affinity += 1;
        }
        match self.index.get(node) {
            Some(&i) => self.nodes[i].add_pod(pod),
            None => self.orphans.entry(node.to_string()).or_default().push(pod),
        }
    }

    fn detach(&mut self, node: &str, uid: &str) {
        let removed = match self.index.get(node) {
            Some(&i) => {
                let had_affinity = self.nodes[i]
                    .pods
                    .iter()
                    .find(|p| p.uid == uid)
                    .is_some_and(|p| p.has_pod_affinity());
                self.nodes[i].remove_pod(uid).then_some(had_affinity)
            }
            None => self.orphans.get_mut(node).and_then(|v| {
                let i = v.iter().position(|p| p.uid == uid)?;
                Some(v.swap_remove(i).has_pod_affinity())
            }),
        };
        if removed == Some(true) {
            self.pods_with_affinity -= 1;
        }
    }

    /// Records a pending pod's `status.nominatedNodeName` (an empty one forgets it).
    pub fn set_nominated(&mut self, pod: Arc<PodInfo>) {
        if pod.nominated_node_name.is_empty() {
            self.remove_nominated(&pod.uid);
        } else {
            self.generation += 1;
            self.nominated.insert(pod.uid.clone(), pod);
        }
    }

    /// Forgets every nomination (the pending pod watch lists again).
    pub fn clear_nominated(&mut self) {
        self.nominated.clear();
        self.generation += 1;
    }

    /// Forgets a nomination (the pod was bound, assumed or deleted).
    pub fn remove_nominated(&mut self, uid: &str) {
        if self.nominated.remove(uid).is_some() {
            self.generation += 1;
        }
    }

    /// `node` as filters see it for `pod`: with the pods nominated to it whose priority is at
    /// least `pod`'s (kube-scheduler's `addNominatedPods`); borrowed when there are none.
    pub fn with_nominated<'a>(
        &self,
        node: &'a NodeInfo,
        pod: &PodInfo,
    ) -> std::borrow::Cow<'a, NodeInfo> {
        let mut extra = self
            .nominated
            .values()
            .filter(|p| {
                p.nominated_node_name == node.name && p.uid != pod.uid && p.priority >= pod.priority
            })
            .peekable();
        if extra.peek().is_none() {
            return std::borrow::Cow::Borrowed(node);
        }
        let mut n = node.clone();
        for p in extra {
            n.add_pod(p.clone());
        }
        std::borrow::Cow::Owned(n)
    }

    /// Records a scheduling decision before binding, so later decisions see its resources.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.generation += 1;
        let uid = pod.uid.clone();
        self.nominated.remove(&uid);
        if let Some(old) = self.pods.remove(&uid) {
            self.detach(&old.node, &uid);
        }
        self.attach(node, pod);
        self.pods.insert(
            uid,
            PodState {
                node: node.to_string(),
                assumed: true,
            },
        );
    }

    /// Undoes an assumption whose binding failed.
    pub fn forget(&mut self, uid: &str) {
        if let Some(st) = self.pods.get(uid)
            && st.assumed
        {
            let node = st.node.clone();
            self.pods.remove(uid);
            self.generation += 1;
            self.detach(&node, uid);
        }
    }

    /// True if the pod is assumed or assigned in the cache.
    pub fn contains_pod(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Adds or updates a pod observed bound to a node (confirms an assumption).
    pub fn upsert_assigned_pod(&mut self, pod: Arc<PodInfo>) {
        self.generation += 1;
        let uid = pod.uid.clone();
        let node = pod.node_name.clone();
        if let Some(old) = self.pods.remove(&uid) {
            self.detach(&old.node, &uid);
        }
        self.attach(&node, pod);
        self.pods.insert(
            uid,
            PodState {
                node,
                assumed: false,
            },
        );
    }

    /// Removes a pod that was deleted or finished.
    pub fn remove_pod(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            self.generation += 1;
            self.detach(&old.node, uid);
        }
    }

    /// After a re-list of assigned pods: drops assigned (not assumed) pods no longer present.
    pub fn retain_assigned_pods(&mut self, uids: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(u, st)| !st.assumed && !uids.contains(*u))
            .map(|(u, _)| u.clone())
            .collect();
        for u in gone {
            self.remove_pod(&u);
        }
    }

    /// Number of assigned plus assumed pods.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn node_obj(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": "1", "pods": "10"}}})).unwrap()
    }

    #[test]
    fn assume_confirm_forget() {
        let mut c = Cache::default();
        c.upsert_node(&node_obj("a"));
        let p = Arc::new(pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "600m"}}}]}),
        ));
        c.assume(p.clone(), "a");
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 600);
        c.forget(&p.uid);
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 0);
        c.assume(p.clone(), "a");
        let mut bound = (*p).clone();
        bound.node_name = "a".into();
        c.upsert_assigned_pod(Arc::new(bound));
        assert_eq!(
            c.node("a").unwrap().pods.len(),
            1,
            "confirmation replaces the assumption"
        );
        c.forget(&p.uid);
        assert_eq!(
            c.node("a").unwrap().pods.len(),
            1,
            "confirmed pods are not forgotten"
        );
        c.remove_pod(&p.uid);
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 0);
    }

    #[test]
    fn pods_on_unknown_nodes_attach_later() {
        let mut c = Cache::default();
        let mut p =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}));
        p.node_name = "late".into();
        c.upsert_assigned_pod(Arc::new(p));
        c.upsert_node(&node_obj("late"));
        assert_eq!(c.node("late").unwrap().requested.milli_cpu, 1000);
        c.remove_node("late");
        c.upsert_node(&node_obj("late"));
        assert_eq!(c.node("late").unwrap().pods.len(), 1);
    }
}
