//! Helpers shared by controllers: label selectors, pod readiness and availability, owner references.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use kube::Resource;

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions). An empty selector
/// matches everything, as in Kubernetes' `LabelSelectorAsSelector`.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &selector.match_labels
        && ml.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    for e in selector.match_expressions.iter().flatten() {
        let val = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => val.is_some_and(|v| values.contains(v)),
            "NotIn" => val.is_none_or(|v| !values.contains(v)),
            "Exists" => val.is_some(),
            "DoesNotExist" => val.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The selector as a `labelSelector` query string.
pub fn selector_query(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// The owner reference with `controller: true`, if any.
pub fn controller_ref<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// A controller owner reference pointing at `owner` (blockOwnerDeletion set, as Kubernetes does).
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether the object has a deletion timestamp.
pub fn is_deleting<K: Resource>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
}

/// Active pods count toward replicas: not terminating and not finished.
pub fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !is_deleting(pod) && phase != Some("Succeeded") && phase != Some("Failed")
}

/// The pod's Ready condition's last transition time if it is Ready.
pub fn pod_ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if cond.status != "True" {
        return None;
    }
    Some(
        cond.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Whether the pod's Ready condition is True.
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// Whether the pod has been Ready for at least `min_ready_seconds` at `now`.
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

/// Seconds until a Ready pod becomes available, if it is Ready but not yet available.
pub fn seconds_until_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Option<i64> {
    let since = pod_ready_since(pod)?;
    let left = since.as_second() + i64::from(min_ready_seconds) - now.as_second();
    (left > 0).then_some(left)
}

/// `v` without nulls, empty objects and empty lists (inside arrays, elements are kept), so that
/// values Kubernetes' semantic equality calls equal compare equal.
pub fn pruned(mut v: serde_json::Value) -> serde_json::Value {
    fn prune(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|_, x| !prune(x));
                m.is_empty()
            }
            serde_json::Value::Array(a) => {
                for x in a.iter_mut() {
                    prune(x);
                }
                a.is_empty()
            }
            serde_json::Value::Null => true,
            _ => false,
        }
    }
    prune(&mut v);
    v
}

/// Kubernetes' `rand.SafeEncodeString` alphabet: no vowels, no look-alike characters.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Encodes a hash the way Kubernetes names pod-template-hash values.
pub fn safe_encode(value: u32) -> String {
    value
        .to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// 32-bit FNV-1a, the hash Kubernetes uses for pod-template-hash.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_match_labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "a")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "c")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "db"), ("tier", "a")])
        ));
        assert_eq!(selector_query(&sel), "app=web,tier in (a,b)");
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
    }

    #[test]
    fn hash_encoding_uses_safe_alphabet() {
        let s = safe_encode(fnv32a(b"template"));
        assert!(s.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
    }
}

/// Whether a reflector's first list is in its store, awaitable by any number of tasks at once.
///
/// kube-runtime 5's `Store::wait_until_ready` keeps the waker of only one waiting task (its
/// one-shot receiver holds a single waker): with two reconciles waiting at once, one is never
/// woken, and since its object's slot stays busy the controller never syncs that object again.
/// Feed every event of the reflector stream to [`ReadySetter::observe`] (after the reflector
/// has applied it) and await [`Ready::wait`] instead.
#[derive(Clone)]
pub struct Ready(tokio::sync::watch::Receiver<bool>);

/// The writing side of [`Ready`].
#[derive(Clone)]
pub struct ReadySetter(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

/// A linked [`ReadySetter`] and [`Ready`], not ready yet.
pub fn readiness() -> (ReadySetter, Ready) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    (ReadySetter(std::sync::Arc::new(tx)), Ready(rx))
}

impl ReadySetter {
    /// Marks the store ready once the first list is complete (`InitDone`).
    pub fn observe<K>(&self, ev: &kube::runtime::watcher::Event<K>) {
        if matches!(ev, kube::runtime::watcher::Event::InitDone) {
            self.0.send_replace(true);
        }
    }
}

impl Ready {
    /// Waits until the store holds its first complete list; `false` if the reflector is gone.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        rx.wait_for(|ready| *ready).await.is_ok()
    }
}

#[cfg(test)]
mod readiness_tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::watcher::Event;

    #[tokio::test]
    async fn every_waiter_wakes_when_the_first_list_is_in() {
        let (setter, ready) = readiness();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let r = ready.clone();
                tokio::spawn(async move { r.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        setter.observe::<Pod>(&Event::Init);
        setter.observe::<Pod>(&Event::InitApply(Pod::default()));
        assert!(!*ready.0.borrow(), "not ready before InitDone");
        setter.observe::<Pod>(&Event::InitDone);
        for w in waiters {
            let woke = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
            assert!(matches!(woke, Ok(Ok(true))), "a waiter was not woken");
        }
    }
}
