//! client-go's `EventCorrelator` for `core/v1` Events:
//! - **aggregation**: once more than [`MAX_SIMILAR_EVENTS`] events about one object share
//!   source, type and reason but differ in message within [`AGGREGATE_WINDOW`], they are
//!   folded into one `(combined from similar events): …` event;
//! - **deduplication**: an event identical to one already written (same object, reason,
//!   message) patches that Event's `count`, `lastTimestamp` and `message` instead of creating
//!   a new object;
//! - **spam filter**: a token bucket per object and source (burst [`SPAM_BURST`], one token
//!   per [`SPAM_REFILL`]) drops what a hot loop would otherwise flood the apiserver with.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Distinct messages of similar events before they are aggregated (client-go `maxEvents`).
pub const MAX_SIMILAR_EVENTS: usize = 10;
/// Window in which similar events are aggregated (client-go `maxIntervalInSeconds`).
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// Events an object may get in a burst from one source (client-go `defaultSpamBurst`).
pub const SPAM_BURST: f64 = 25.0;
/// Time to earn one more event after the burst (client-go `defaultSpamQPS` = 1/300).
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Entries kept in the aggregation and deduplication caches (client-go `maxLruCacheEntries`).
const CACHE_ENTRIES: usize = 4096;
/// Prefix of an aggregated event's message, as client-go writes it.
const COMBINED_PREFIX: &str = "(combined from similar events): ";

/// What to write for one recorded event.
#[derive(Debug)]
pub(super) struct Correlated {
    pub(super) event: Event,
    /// Patch the existing Event of this name instead of creating it.
    pub(super) update: bool,
}

#[derive(Debug)]
struct Aggregate {
    messages: HashSet<String>,
    last: Instant,
}

#[derive(Debug)]
struct Observed {
    name: String,
    count: i32,
    first_timestamp: Option<Time>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// client-go's `EventCorrelator`: aggregation, deduplication and the spam filter.
#[derive(Debug, Default)]
pub(super) struct Correlator {
    aggregates: HashMap<String, Aggregate>,
    observed: HashMap<String, Observed>,
    buckets: HashMap<String, Bucket>,
}

fn object_key(e: &Event) -> String {
    let o = &e.involved_object;
    let source = e.source.as_ref();
    [
        source.and_then(|s| s.component.as_deref()),
        source.and_then(|s| s.host.as_deref()),
        o.kind.as_deref(),
        o.namespace.as_deref(),
        o.name.as_deref(),
        o.uid.as_deref(),
        o.api_version.as_deref(),
    ]
    .map(|p| p.unwrap_or_default())
    .join("\u{0}")
}

fn similar_key(e: &Event) -> String {
    format!(
        "{}\u{0}{}\u{0}{}",
        object_key(e),
        e.type_.as_deref().unwrap_or_default(),
        e.reason.as_deref().unwrap_or_default()
    )
}

impl Correlator {
    pub(super) fn correlate(&mut self, event: Event, now: Instant) -> Option<Correlated> {
        let (mut event, key) = self.aggregate(event, now);
        let update = match self.observed.get(&key) {
            Some(seen) => {
                event.count = Some(seen.count + 1);
                event.first_timestamp = seen.first_timestamp.clone();
                event.metadata.name = Some(seen.name.clone());
                true
            }
            None => {
                let name =
                    event.metadata.name.clone().unwrap_or_else(|| {
                        super::event_name(event.involved_object.name.as_deref())
                    });
                event.metadata.name = Some(name);
                false
            }
        };
        bounded(&mut self.observed);
        self.observed.insert(
            key,
            Observed {
                name: event.metadata.name.clone().unwrap_or_default(),
                count: event.count.unwrap_or(1),
                first_timestamp: event.first_timestamp.clone(),
            },
        );
        if !self.allow(&event, now) {
            return None;
        }
        Some(Correlated { event, update })
    }

    /// client-go `EventAggregate`: the event to record and its deduplication key.
    fn aggregate(&mut self, event: Event, now: Instant) -> (Event, String) {
        let akey = similar_key(&event);
        let message = event.message.clone().unwrap_or_default();
        let expired = self
            .aggregates
            .get(&akey)
            .is_some_and(|a| now.duration_since(a.last) > AGGREGATE_WINDOW);
        if expired {
            self.aggregates.remove(&akey);
        }
        if !self.aggregates.contains_key(&akey) {
            bounded(&mut self.aggregates);
        }
        let record = self.aggregates.entry(akey.clone()).or_insert(Aggregate {
            messages: HashSet::new(),
            last: now,
        });
        record.last = now;
        record.messages.insert(message.clone());
        if record.messages.len() < MAX_SIMILAR_EVENTS {
            let key = format!("{akey}\u{0}{message}");
            return (event, key);
        }
        // Do not let the set of messages grow past the limit.
        if let Some(any) = record.messages.iter().next().cloned() {
            record.messages.remove(&any);
        }
        let mut combined = event;
        combined.metadata.name = None;
        combined.message = Some(format!("{COMBINED_PREFIX}{message}"));
        (combined, akey)
    }

    /// client-go `EventSourceObjectSpamFilter`: a token bucket per object and source.
    fn allow(&mut self, event: &Event, now: Instant) -> bool {
        let key = object_key(event);
        if !self.buckets.contains_key(&key) {
            bounded(&mut self.buckets);
        }
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: SPAM_BURST,
            last: now,
        });
        let earned = now.duration_since(b.last).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        b.tokens = (b.tokens + earned).min(SPAM_BURST);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Keeps a cache under [`CACHE_ENTRIES`] (client-go uses an LRU; dropping everything when full
/// only costs a few events written as new objects instead of count updates).
fn bounded<V>(map: &mut HashMap<String, V>) {
    if map.len() >= CACHE_ENTRIES {
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn event(reason: &str, message: &str) -> Event {
        Event {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("ReplicaSet".into()),
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Normal".into()),
            source: Some(EventSource {
                component: Some("replicaset-controller".into()),
                host: None,
            }),
            count: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn identical_events_count_up_on_one_object() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let first = c.correlate(event("BackOff", "same"), t).expect("written");
        assert!(!first.update);
        let second = c.correlate(event("BackOff", "same"), t).expect("written");
        assert!(second.update);
        assert_eq!(second.event.count, Some(2));
        assert_eq!(second.event.metadata.name, first.event.metadata.name);
    }

    #[test]
    fn similar_events_are_combined_after_ten_messages() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let out: Vec<Correlated> = (0..14)
            .filter_map(|i| {
                c.correlate(event("SuccessfulCreate", &format!("Created pod: p{i}")), t)
            })
            .collect();
        // Nine distinct messages are written as they are; the tenth starts the combined event,
        // which later ones count up.
        assert!(out[..9].iter().all(|o| !o.update));
        let combined = &out[9];
        assert!(!combined.update);
        assert_eq!(
            combined.event.message.as_deref(),
            Some("(combined from similar events): Created pod: p9")
        );
        let last = &out[13];
        assert!(last.update);
        assert_eq!(last.event.count, Some(5));
        assert_eq!(last.event.metadata.name, combined.event.metadata.name);
        assert_eq!(
            last.event.message.as_deref(),
            Some("(combined from similar events): Created pod: p13")
        );
    }

    #[test]
    fn spam_filter_allows_a_burst_then_one_per_refill() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let written = (0..100)
            .filter(|i| c.correlate(event("R", &format!("m{i}")), t).is_some())
            .count();
        assert_eq!(written, 25);
        assert!(c.correlate(event("R", "again"), t).is_none());
        assert!(c.correlate(event("R", "again"), t + SPAM_REFILL).is_some());
    }
}
