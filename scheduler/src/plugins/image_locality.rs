//! ImageLocality: prefer nodes that already hold the pod's images (`node.status.images`), scaled
//! by how widely each image is spread so one popular node does not attract every pod.

use crate::cache::Cache;
use crate::framework::{CycleState, MAX_NODE_SCORE, NodeInfo, PodInfo, ScorePlugin, StateKey};

const MB: i64 = 1024 * 1024;
/// Below this sum the score is 0 (small images are cheap to pull anyway).
const MIN_THRESHOLD: i64 = 23 * MB;
/// Per container, above this sum the score is maximal.
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// Where PreScore leaves the [`PreScoreState`].
const PRE_SCORE_KEY: StateKey = "PreScoreImageLocality";

/// Per pod image: on how many of all nodes it is present.
#[derive(Debug, Default)]
pub struct PreScoreState {
    /// `(normalized image, nodes holding it)` in the pod's container order.
    pub spread: Vec<(String, usize)>,
    /// All nodes in the cache.
    pub total_nodes: usize,
}

/// PreScore: stores the image spread, or nothing when no node reports any of the pod's images
/// (every node scores 0).
pub fn pre_score(state: &mut CycleState, pod: &PodInfo, cache: &Cache) {
    let spread: Vec<(String, usize)> = pod
        .images
        .iter()
        .map(|i| (i.clone(), cache.nodes_with_image(i)))
        .collect();
    if spread.iter().any(|(_, n)| *n > 0) {
        let total_nodes = cache.nodes().len();
        state.write(
            PRE_SCORE_KEY,
            PreScoreState {
                spread,
                total_nodes,
            },
        );
    }
}

fn calculate_priority(sum: i64, num_containers: usize) -> i64 {
    let max = MAX_CONTAINER_THRESHOLD * num_containers.max(1) as i64;
    let sum = sum.clamp(MIN_THRESHOLD, max);
    MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
}

/// The ImageLocality score (weight 1 in the default profile, no normalization).
pub struct ImageLocality;

impl ScorePlugin for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(st) = state.read::<PreScoreState>(PRE_SCORE_KEY) else {
            return 0;
        };
        let total = st.total_nodes.max(1) as f64;
        let sum: i64 = st
            .spread
            .iter()
            .filter_map(|(image, num_nodes)| {
                let size = *node.images.get(image)?;
                Some((size as f64 * (*num_nodes as f64 / total)) as i64)
            })
            .sum();
        calculate_priority(sum, pod.images.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn node(name: &str, images: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"allocatable": {"cpu": "4", "pods": "110"}, "images": images}}))
        .unwrap()
    }

    #[test]
    fn scores_follow_kubernetes_formula() {
        let mut c = Cache::default();
        c.upsert_node(&node(
            "a",
            json!([{"names": ["big:1"], "sizeBytes": 500 * MB}, {"names": ["small:latest"], "sizeBytes": 10 * MB}]),
        ));
        c.upsert_node(&node(
            "b",
            json!([{"names": ["big:1"], "sizeBytes": 500 * MB}]),
        ));
        c.upsert_node(&node("c", json!([])));
        c.upsert_node(&node("d", json!([])));
        let pod = crate::plugins::testutil::pod(
            json!({"containers": [{"name": "x", "image": "big:1"}, {"name": "y", "image": "small"}]}),
        );
        let mut state = CycleState::default();
        pre_score(&mut state, &pod, &c);
        // big:1 on 2 of 4 nodes: 250 MB scaled; small on 1 of 4: 2.5 MB.
        let want = 100 * (250 * MB + (10 * MB) / 4 - MIN_THRESHOLD) / (2000 * MB - MIN_THRESHOLD);
        assert_eq!(
            ImageLocality.score(&state, &pod, c.node("a").unwrap()),
            want
        );
        let want_b = 100 * (250 * MB - MIN_THRESHOLD) / (2000 * MB - MIN_THRESHOLD);
        assert_eq!(
            ImageLocality.score(&state, &pod, c.node("b").unwrap()),
            want_b
        );
        assert_eq!(ImageLocality.score(&state, &pod, c.node("c").unwrap()), 0);
        // Removing a node updates the spread counts.
        c.remove_node("b");
        assert_eq!(c.nodes_with_image("big:1"), 1);
        c.upsert_node(&node("a", json!([])));
        assert_eq!(c.nodes_with_image("big:1"), 0);
        let mut state = CycleState::default();
        pre_score(&mut state, &pod, &c);
        assert!(state.read::<PreScoreState>(PRE_SCORE_KEY).is_none());
    }
}
