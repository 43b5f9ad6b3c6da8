//! DefaultTolerationSeconds: pods tolerate `not-ready` and `unreachable` NoExecute taints for
//! 300 seconds unless they say otherwise.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Admit, Handles, Request};
use crate::error::ApiResult;

/// Kubernetes' default (`--default-not-ready-toleration-seconds`).
pub const DEFAULT_SECONDS: i64 = 300;

/// Adds the two tolerations when the pod has none for those keys.
pub fn admit_pod(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let has = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            (effect.is_empty() || effect == "NoExecute")
                && (k == key
                    || (k.is_empty()
                        && t.get("operator").and_then(Value::as_str) == Some("Exists")))
        });
        if !has {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": DEFAULT_SECONDS}));
        }
    }
}

/// The DefaultTolerationSeconds plugin: a new pod tolerates `not-ready` and `unreachable`
/// for 300 s unless it says otherwise.
pub struct DefaultTolerationSeconds;

#[async_trait]
impl Admit for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    async fn admit(&self, _h: Handles<'_>, r: &Request<'_>, obj: &mut Value) -> ApiResult<()> {
        if r.is_pod_create() {
            admit_pod(obj);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_tolerations_once() {
        let mut p = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        admit_pod(&mut p);
        let t = p["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 5);
        assert_eq!(t[1]["key"], "node.kubernetes.io/not-ready");
        assert_eq!(t[1]["tolerationSeconds"], 300);
    }
}
