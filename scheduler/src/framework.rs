//! The scheduling framework: what a plugin sees (pod and node views), what it returns, the
//! keyed per-cycle state plugins leave for themselves, and the filter/score plugin traits.
//! Mirrors kube-scheduler's framework at the level Lotse needs; it knows no plugin.

use std::any::Any;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Affinity, Node, Pod, Taint, Toleration, TopologySpreadConstraint,
};
use lotse_core::Quantity;

/// Non-zero default CPU request (milli-cores) used for scoring only, as Kubernetes does.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Non-zero default memory request (bytes) used for scoring only.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;
/// Highest score a plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;

/// Requested or allocatable amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource {
    /// Milli-cores.
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// Extended and hugepages resources by name (integer units).
    pub scalar: BTreeMap<String, i64>,
}

impl Resource {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Resource) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    /// Subtracts `other` from `self`.
    pub fn sub(&mut self, other: &Resource) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e -= v;
            if *e == 0 {
                self.scalar.remove(k);
            }
        }
    }

    /// Element-wise maximum (init containers).
    fn max_with(&mut self, other: &Resource) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    /// Builds a Resource from a Kubernetes ResourceList; unparseable quantities count as zero
    /// (the apiserver rejects them on admission).
    pub fn from_list(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Self {
        let mut r = Resource::default();
        let Some(list) = list else { return r };
        for (name, q) in list {
            let Ok(q) = Quantity::parse(&q.0) else {
                continue;
            };
            match name.as_str() {
                "cpu" => r.milli_cpu = q.milli_value(),
                "memory" => r.memory = q.value(),
                "ephemeral-storage" => r.ephemeral_storage = q.value(),
                "pods" => {}
                n if is_scalar_resource(n) => {
                    r.scalar.insert(n.to_string(), q.value());
                }
                _ => {}
            }
        }
        r
    }
}

/// Extended resources (`example.com/gpu`), hugepages and attachable volumes are scalar resources.
fn is_scalar_resource(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/')
            && !name.starts_with("kubernetes.io/")
            && !name.starts_with("requests."))
}

/// A host port a pod asks for (`hostIP` defaults to 0.0.0.0, protocol to TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// `0.0.0.0` means every address.
    pub ip: String,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The port number.
    pub port: i32,
}

impl HostPort {
    /// Two host ports conflict when protocol and port match and the addresses overlap.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// What the scheduler needs to know about one pod, computed once per pod version.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    /// metadata.uid.
    pub uid: String,
    /// metadata.namespace.
    pub namespace: String,
    /// metadata.name.
    pub name: String,
    /// metadata.resourceVersion of the version this was built from.
    pub resource_version: String,
    /// metadata.labels.
    pub labels: BTreeMap<String, String>,
    /// Effective requests (max of init containers, sum of containers, plus overhead).
    pub requests: Resource,
    /// CPU / memory requests with the scoring defaults for containers that request nothing.
    pub non_zero_cpu: i64,
    /// See `non_zero_cpu`.
    pub non_zero_memory: i64,
    /// Host ports the pod's containers ask for.
    pub host_ports: Vec<HostPort>,
    /// spec.affinity.
    pub affinity: Option<Affinity>,
    /// spec.tolerations.
    pub tolerations: Vec<Toleration>,
    /// spec.nodeSelector.
    pub node_selector: BTreeMap<String, String>,
    /// spec.nodeName (empty while pending).
    pub node_name: String,
    /// spec.topologySpreadConstraints.
    pub topology_spread: Vec<TopologySpreadConstraint>,
    /// spec.priority (0 when unset).
    pub priority: i32,
    /// spec.preemptionPolicy == Never.
    pub preemption_never: bool,
    /// Normalized images of init and app containers (pending pods only, for ImageLocality).
    pub images: Vec<String>,
    /// status.nominatedNodeName: tried first when it still fits.
    pub nominated_node_name: String,
    /// metadata.deletionTimestamp is set (a preemption victim on its way out).
    pub terminating: bool,
    /// status.startTime in Unix seconds (0 when not started), for preemption's ordering.
    pub start_time: i64,
    /// Names of the PersistentVolumeClaims the pod's volumes use (claims and generic ephemeral
    /// volumes' `<pod>-<volume>` claims).
    pub claims: Vec<String>,
}

impl PodInfo {
    /// Derives the scheduling view of a pod.
    pub fn new(pod: &Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut requests = Resource::default();
        let mut non_zero_cpu = 0;
        let mut non_zero_memory = 0;
        let mut host_ports = Vec::new();
        for c in &spec.containers {
            let req = Resource::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
            non_zero_cpu += if has(c, "cpu") {
                req.milli_cpu
            } else {
                DEFAULT_MILLI_CPU_REQUEST
            };
            non_zero_memory += if has(c, "memory") {
                req.memory
            } else {
                DEFAULT_MEMORY_REQUEST
            };
            requests.add(&req);
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port: hp,
                    });
                }
            }
        }
        // Sidecars (restartable init containers) run alongside the app containers; plain init
        // containers run one at a time before them, so the pod needs the max of both phases.
        let mut sidecars = Resource::default();
        let mut init_max = Resource::default();
        for c in spec.init_containers.iter().flatten() {
            let req = Resource::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
            if c.restart_policy.as_deref() == Some("Always") {
                sidecars.add(&req);
                let mut peak = sidecars.clone();
                peak.max_with(&init_max);
                init_max = peak;
            } else {
                let mut peak = sidecars.clone();
                peak.add(&req);
                init_max.max_with(&peak);
            }
        }
        requests.add(&sidecars);
        requests.max_with(&init_max);
        let overhead = Resource::from_list(spec.overhead.as_ref());
        requests.add(&overhead);
        non_zero_cpu = non_zero_cpu.max(requests.milli_cpu);
        non_zero_memory = non_zero_memory.max(requests.memory);
        let md = &pod.metadata;
        PodInfo {
            uid: md.uid.clone().unwrap_or_default(),
            namespace: md.namespace.clone().unwrap_or_default(),
            name: md.name.clone().unwrap_or_default(),
            resource_version: md.resource_version.clone().unwrap_or_default(),
            labels: md.labels.clone().unwrap_or_default(),
            requests,
            non_zero_cpu,
            non_zero_memory,
            host_ports,
            affinity: spec.affinity.filter(|a| {
                a.node_affinity.is_some()
                    || a.pod_affinity.is_some()
                    || a.pod_anti_affinity.is_some()
            }),
            tolerations: spec.tolerations.unwrap_or_default(),
            node_selector: spec.node_selector.unwrap_or_default(),
            node_name: spec.node_name.unwrap_or_default(),
            topology_spread: spec.topology_spread_constraints.unwrap_or_default(),
            priority: spec.priority.unwrap_or(0),
            preemption_never: spec.preemption_policy.as_deref() == Some("Never"),
            images: spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .map(|c| normalized_image_name(c.image.as_deref().unwrap_or("")))
                .collect(),
            nominated_node_name: pod
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.clone())
                .unwrap_or_default(),
            terminating: md.deletion_timestamp.is_some(),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.as_second())
                .unwrap_or(0),
            claims: spec
                .volumes
                .iter()
                .flatten()
                .filter_map(|v| match (&v.persistent_volume_claim, &v.ephemeral) {
                    (Some(c), _) => Some(c.claim_name.clone()),
                    (None, Some(_)) => Some(format!(
                        "{}-{}",
                        md.name.as_deref().unwrap_or_default(),
                        v.name
                    )),
                    _ => None,
                })
                .collect(),
        }
    }

    /// A trimmed copy for pods already bound: only what filters and scores of other pods read
    /// (requests, ports, labels, affinity), so the cache of 10k+ assigned pods stays small.
    pub fn for_assigned(mut self) -> Self {
        self.tolerations = Vec::new();
        self.node_selector = BTreeMap::new();
        self.topology_spread = Vec::new();
        self.resource_version = String::new();
        self.images = Vec::new();
        self.nominated_node_name = String::new();
        self
    }

    /// True if the pod has required or preferred pod (anti-)affinity terms.
    pub fn has_pod_affinity(&self) -> bool {
        self.affinity
            .as_ref()
            .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
    }

    /// True if the pod has required anti-affinity terms (these constrain incoming pods).
    pub fn has_required_anti_affinity(&self) -> bool {
        self.affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty())
    }
}

/// kube-scheduler's `normalizedImageName`: a reference without a tag gets `:latest`, so a pod's
/// images compare equal to the names nodes report in `status.images`.
pub fn normalized_image_name(name: &str) -> String {
    let colon = name.rfind(':').map_or(-1, |i| i as isize);
    let slash = name.rfind('/').map_or(-1, |i| i as isize);
    if colon <= slash {
        format!("{name}:latest")
    } else {
        name.to_string()
    }
}

fn has(c: &k8s_openapi::api::core::v1::Container, res: &str) -> bool {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .is_some_and(|r| r.contains_key(res))
}

/// The scheduler's aggregate view of one node: its object plus the sums of what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// metadata.name.
    pub name: String,
    /// metadata.labels.
    pub labels: BTreeMap<String, String>,
    /// spec.taints.
    pub taints: Vec<Taint>,
    /// spec.unschedulable.
    pub unschedulable: bool,
    /// status.allocatable (cpu, memory, ephemeral-storage, scalar resources).
    pub allocatable: Resource,
    /// status.allocatable.pods.
    pub allowed_pods: i64,
    /// Sum of requests of assigned and assumed pods.
    pub requested: Resource,
    /// Sum of non-zero CPU requests (for scoring).
    pub non_zero_cpu: i64,
    /// Sum of non-zero memory requests (for scoring).
    pub non_zero_memory: i64,
    /// Assigned and assumed pods.
    pub pods: Vec<Arc<PodInfo>>,
    /// Number of pods in `pods` that carry pod (anti-)affinity terms.
    pub pods_with_affinity: usize,
    /// Host ports in use.
    pub used_ports: Vec<HostPort>,
    /// status.images: size in bytes by every name an image is known by.
    pub images: HashMap<String, i64>,
}

impl NodeInfo {
    /// Builds an empty node view from a Node object.
    pub fn new(node: &Node) -> Self {
        let mut ni = NodeInfo {
            name: String::new(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            unschedulable: false,
            allocatable: Resource::default(),
            allowed_pods: 0,
            requested: Resource::default(),
            non_zero_cpu: 0,
            non_zero_memory: 0,
            pods: Vec::new(),
            pods_with_affinity: 0,
            used_ports: Vec::new(),
            images: HashMap::new(),
        };
        ni.set_node(node);
        ni
    }

    /// Replaces the node object, keeping the pods placed on it.
    pub fn set_node(&mut self, node: &Node) {
        self.name = node.metadata.name.clone().unwrap_or_default();
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        self.allocatable = Resource::from_list(alloc);
        self.allowed_pods = alloc
            .and_then(|a| a.get("pods"))
            .and_then(|q| Quantity::parse(&q.0).ok())
            .map(|q| q.value())
            .unwrap_or(0);
        self.images = node
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|i| {
                let size = i.size_bytes.unwrap_or(0);
                i.names.iter().flatten().map(move |n| (n.clone(), size))
            })
            .collect();
    }

    /// Accounts a pod on this node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_cpu += pod.non_zero_cpu;
        self.non_zero_memory += pod.non_zero_memory;
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if pod.has_pod_affinity() {
            self.pods_with_affinity += 1;
        }
        self.pods.push(pod);
    }

    /// Removes a pod by uid; returns whether it was there.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.uid == uid) else {
            return false;
        };
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        self.non_zero_cpu -= pod.non_zero_cpu;
        self.non_zero_memory -= pod.non_zero_memory;
        for hp in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        if pod.has_pod_affinity() {
            self.pods_with_affinity -= 1;
        }
        true
    }
}

/// Whether retrying on a different cluster state (preemption) could help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The node may fit once pods are removed from it.
    Unschedulable,
    /// Removing pods from the node cannot make the pod fit.
    UnschedulableAndUnresolvable,
}

/// Why a node was rejected: one or more human-readable reasons worded as Kubernetes words them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Resolvability of the failure.
    pub code: Code,
    /// Reasons, each counted separately in the FailedScheduling message.
    pub reasons: Vec<Cow<'static, str>>,
}

impl Status {
    /// A failure preemption could resolve.
    pub fn unschedulable(reason: impl Into<Cow<'static, str>>) -> Self {
        Status {
            code: Code::Unschedulable,
            reasons: vec![reason.into()],
        }
    }
    /// A failure preemption cannot resolve.
    pub fn unresolvable(reason: impl Into<Cow<'static, str>>) -> Self {
        Status {
            code: Code::UnschedulableAndUnresolvable,
            reasons: vec![reason.into()],
        }
    }
}

/// The key a plugin stores one of its states under (kube-scheduler's `StateKey`, for example
/// `"PreFilterInterPodAffinity"`).
pub type StateKey = &'static str;

/// Per-pod state shared by the plugins during one scheduling cycle, keyed as kube-scheduler's
/// `CycleState`: PreFilter and PreScore write what they computed under their own key, Filter and
/// Score read it back. Each plugin defines its state types and keys; the framework knows neither.
#[derive(Default)]
pub struct CycleState {
    /// Plugin states by key. A cycle holds a handful, so a linear scan beats hashing the key.
    states: Vec<(StateKey, Box<dyn Any + Send + Sync>)>,
    /// A PreFilter rejection (the pod fits no node); its reason is the FailedScheduling message.
    pub pre_filter_rejection: Option<Status>,
}

impl CycleState {
    /// Stores `state` under `key`, replacing what was there.
    pub fn write<T: Any + Send + Sync>(&mut self, key: StateKey, state: T) {
        let state: Box<dyn Any + Send + Sync> = Box::new(state);
        match self.states.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => *slot = state,
            None => self.states.push((key, state)),
        }
    }

    /// The state stored under `key`; `None` when nothing was written there or it is of another
    /// type.
    pub fn read<T: Any>(&self, key: StateKey) -> Option<&T> {
        self.states
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, s)| s.downcast_ref())
    }
}

impl std::fmt::Debug for CycleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleState")
            .field(
                "keys",
                &self.states.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("pre_filter_rejection", &self.pre_filter_rejection)
            .finish()
    }
}

/// A plugin that rules nodes out.
pub trait FilterPlugin: Send + Sync {
    /// The plugin's Kubernetes name.
    fn name(&self) -> &'static str;
    /// Ok if the pod may run on the node.
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Status>;
}

/// A plugin that ranks feasible nodes.
pub trait ScorePlugin: Send + Sync {
    /// The plugin's Kubernetes name.
    fn name(&self) -> &'static str;
    /// Weight in the default Kubernetes profile.
    fn weight(&self) -> i64;
    /// Raw score of one node.
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64;
    /// Maps raw scores onto 0..=MAX_NODE_SCORE (default: unchanged).
    fn normalize(&self, _state: &CycleState, _scores: &mut [i64]) {}
}

/// Scales scores to 0..=100 by their maximum, optionally reversed (kube-scheduler's
/// `DefaultNormalizeScore`).
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = MAX_NODE_SCORE * *s / max;
        if reverse {
            *s = MAX_NODE_SCORE - *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_requests_follow_kubernetes_rules() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "500m", "example.com/gpu": "1"}},
                     "ports": [{"containerPort": 80, "hostPort": 8080}]},
                    {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}
                ],
                "overhead": {"cpu": "10m"}
            }
        }))
        .unwrap();
        let p = PodInfo::new(&pod);
        assert_eq!(p.requests.milli_cpu, 2010);
        assert_eq!(p.requests.memory, 1 << 30);
        assert_eq!(p.requests.scalar.get("example.com/gpu"), Some(&1));
        assert_eq!(
            p.host_ports,
            vec![HostPort {
                ip: "0.0.0.0".into(),
                protocol: "TCP".into(),
                port: 8080
            }]
        );
        // Container a has no memory request: 200Mi default for scoring.
        assert_eq!(
            p.non_zero_memory,
            (1 << 30).max(DEFAULT_MEMORY_REQUEST + 64 * 1024 * 1024)
        );
    }

    #[test]
    fn cycle_state_reads_what_was_written_under_its_key_and_type() {
        let mut s = CycleState::default();
        assert_eq!(s.read::<i64>("A"), None);
        s.write("A", 1i64);
        s.write("B", String::from("b"));
        s.write("A", 2i64);
        assert_eq!(s.read::<i64>("A"), Some(&2));
        assert_eq!(s.read::<String>("A"), None, "another type under the key");
        assert_eq!(s.read::<String>("B").map(String::as_str), Some("b"));
    }

    #[test]
    fn image_names_without_tag_get_latest() {
        assert_eq!(normalized_image_name("busybox"), "busybox:latest");
        assert_eq!(
            normalized_image_name("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalized_image_name("nginx:1.25"), "nginx:1.25");
        assert_eq!(
            normalized_image_name("nginx@sha256:abc"),
            "nginx@sha256:abc"
        );
    }

    #[test]
    fn normalize_reverse() {
        let mut s = vec![0, 1, 2];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
    }
}
