//! A pod's QoS class (`Guaranteed`, `Burstable`, `BestEffort`) as Kubernetes computes it
//! (`pkg/apis/core/helper/qos.ComputePodQOS`, after `SetDefaults_Pod` defaulted requests to
//! limits): over regular and init containers, cpu and memory only, zero quantities ignored,
//! requests and limits compared by value.
//!
//! [`qos_class`] is the computation over any container representation ([`ContainerResources`]);
//! [`pod_qos_class`] reads a pod spec in JSON (the apiserver); typed callers (the kubelet) build
//! [`ContainerResources`] with [`CpuMemory::from_pairs`]. Pod-level `spec.resources`
//! (`PodLevelResources`) is not read.

use serde_json::Value;

use crate::quantity::Quantity;

/// A pod's quality-of-service class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The API name (`status.qosClass`).
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

impl std::fmt::Display for QosClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cpu and memory entries of a resource list, the only resources QoS looks at (an entry
/// that does not parse counts as absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuMemory {
    pub cpu: Option<Quantity>,
    pub memory: Option<Quantity>,
}

impl CpuMemory {
    /// From `(resource name, quantity string)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> CpuMemory {
        let mut out = CpuMemory::default();
        for (name, q) in pairs {
            match name {
                "cpu" => out.cpu = Quantity::parse(q).ok(),
                "memory" => out.memory = Quantity::parse(q).ok(),
                _ => {}
            }
        }
        out
    }

    /// From a JSON resource list (`{"cpu": "500m", ...}`); absent or not an object: empty.
    pub fn from_json(list: Option<&Value>) -> CpuMemory {
        let get = |k: &str| list.and_then(|l| l.get(k)).and_then(Quantity::from_json);
        CpuMemory {
            cpu: get("cpu"),
            memory: get("memory"),
        }
    }

    fn get(&self, i: usize) -> Option<Quantity> {
        if i == 0 { self.cpu } else { self.memory }
    }
}

/// One container's requests and limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerResources {
    pub requests: CpuMemory,
    pub limits: CpuMemory,
}

impl ContainerResources {
    /// From a JSON container (its `resources.requests` and `resources.limits`).
    pub fn from_json(container: &Value) -> ContainerResources {
        ContainerResources {
            requests: CpuMemory::from_json(container.pointer("/resources/requests")),
            limits: CpuMemory::from_json(container.pointer("/resources/limits")),
        }
    }
}

/// `ComputePodQOS` over a pod's containers (regular and init; ephemeral containers have no
/// resources). A request that is not set defaults to the limit, as `SetDefaults_Pod` does before
/// Kubernetes computes the class.
pub fn qos_class(containers: impl IntoIterator<Item = ContainerResources>) -> QosClass {
    // Sums of the positive requests and limits: [cpu, memory].
    let mut requests: [Option<Quantity>; 2] = [None; 2];
    let mut limits: [Option<Quantity>; 2] = [None; 2];
    let mut guaranteed = true;
    let add = |sum: &mut Option<Quantity>, q: Quantity| {
        *sum = Some(sum.map_or(q, |s| s.plus(q)));
    };
    for c in containers {
        let mut limits_found = 0;
        for i in 0..2 {
            let limit = c.limits.get(i);
            let request = c.requests.get(i).or(limit);
            if let Some(q) = request.filter(|q| q.milli > 0) {
                add(&mut requests[i], q);
            }
            if let Some(q) = limit.filter(|q| q.milli > 0) {
                add(&mut limits[i], q);
                limits_found += 1;
            }
        }
        if limits_found < 2 {
            guaranteed = false;
        }
    }
    if requests.iter().chain(&limits).all(Option::is_none) {
        return QosClass::BestEffort;
    }
    let matching = requests.iter().zip(&limits).all(|(r, l)| match (r, l) {
        (Some(r), Some(l)) => r.milli == l.milli,
        (None, None) => true,
        _ => false,
    });
    if guaranteed && matching {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// [`qos_class`] of a pod spec in JSON (`spec.containers` and `spec.initContainers`); `Null`
/// or a spec without containers is `BestEffort`.
pub fn pod_qos_class(spec: &Value) -> QosClass {
    let containers = ["containers", "initContainers"]
        .into_iter()
        .filter_map(|k| spec.get(k).and_then(Value::as_array))
        .flatten()
        .map(ContainerResources::from_json);
    qos_class(containers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(spec: Value) -> &'static str {
        pod_qos_class(&spec).as_str()
    }

    fn with(resources: Value) -> Value {
        json!({"containers": [{"name": "a", "resources": resources}]})
    }

    #[test]
    fn former_apiserver_cases() {
        assert_eq!(class(json!({"containers": [{"name": "a"}]})), "BestEffort");
        assert_eq!(
            class(with(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(class(with(json!({"requests": {"cpu": "1"}}))), "Burstable");
        assert_eq!(
            class(with(json!({"requests": {"cpu": "1", "memory": "1Gi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            class(with(json!({"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Burstable"
        );
        assert_eq!(class(Value::Null), "BestEffort");
        assert_eq!(class(json!({})), "BestEffort");
    }

    #[test]
    fn kubernetes_semantics() {
        // Only cpu and memory count.
        assert_eq!(
            class(with(json!({"limits": {"ephemeral-storage": "1Gi"}}))),
            "BestEffort"
        );
        // Zero quantities are ignored.
        assert_eq!(class(with(json!({"requests": {"cpu": "0"}}))), "BestEffort");
        assert_eq!(
            class(with(json!({"limits": {"cpu": "1", "memory": "0"}}))),
            "Burstable"
        );
        // Compared by value, not by spelling.
        assert_eq!(
            class(with(
                json!({"requests": {"cpu": "1000m", "memory": "1024Mi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}})
            )),
            "Guaranteed"
        );
        // Limits on cpu only.
        assert_eq!(class(with(json!({"limits": {"cpu": "1"}}))), "Burstable");
        // Init containers count: one without limits makes the pod Burstable.
        let g = json!({"cpu": "1", "memory": "1Gi"});
        assert_eq!(
            class(json!({
                "containers": [{"name": "a", "resources": {"limits": g}}],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
            })),
            "Burstable"
        );
        assert_eq!(
            class(json!({
                "containers": [{"name": "a", "resources": {"limits": g}}],
                "initContainers": [{"name": "i", "resources": {"limits": g}}],
            })),
            "Guaranteed"
        );
        // A second container without resources.
        assert_eq!(
            class(
                json!({"containers": [{"name": "a", "resources": {"limits": g}}, {"name": "b"}]})
            ),
            "Burstable"
        );
        // Only an init container has resources.
        assert_eq!(
            class(json!({
                "containers": [{"name": "a"}],
                "initContainers": [{"name": "i", "resources": {"requests": {"memory": "1Gi"}}}],
            })),
            "Burstable"
        );
    }

    #[test]
    fn typed_input() {
        let lim = CpuMemory::from_pairs([("cpu", "2"), ("memory", "64Mi"), ("pods", "1")]);
        let c = ContainerResources {
            requests: CpuMemory::default(),
            limits: lim,
        };
        assert_eq!(qos_class([c]), QosClass::Guaranteed);
        assert_eq!(qos_class([]), QosClass::BestEffort);
        assert_eq!(QosClass::Burstable.to_string(), "Burstable");
    }
}
