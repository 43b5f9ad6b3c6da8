//! The scheduling queue: an active heap (higher priority first, then FIFO), a backoff queue
//! (1 s doubling to 10 s per failed attempt) and the unschedulable pool, which is flushed when a
//! cluster event could make its pods fit (node added/changed, pod deleted) or after 5 minutes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::framework::PodInfo;

/// First retry delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Retry delay cap.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often even without events.
pub const MAX_UNSCHEDULABLE_DURATION: Duration = Duration::from_secs(300);

/// A pending pod as the queue holds it.
#[derive(Debug, Clone)]
pub struct QueuedPod {
    /// The latest version of the pod object.
    pub pod: Arc<Pod>,
    /// Its scheduling view.
    pub info: Arc<PodInfo>,
    /// Failed scheduling attempts so far.
    pub attempts: u32,
    /// When the pod was first added (for latency metrics).
    pub added: Instant,
    backoff_until: Instant,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Where {
    Active,
    Backoff,
    Unschedulable(Instant),
    InFlight { popped_at_move: u64 },
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (QueuedPod, Where)>,
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BTreeMap<(Instant, u64), String>,
    seq: u64,
    move_count: u64,
    closed: bool,
}

impl Inner {
    fn push_active(&mut self, uid: &str) {
        self.seq += 1;
        let prio = self
            .entries
            .get(uid)
            .map(|e| e.0.info.priority)
            .unwrap_or(0);
        self.active.push((prio, Reverse(self.seq), uid.to_string()));
        if let Some(e) = self.entries.get_mut(uid) {
            e.1 = Where::Active;
        }
    }

    fn push_backoff(&mut self, uid: &str) {
        self.seq += 1;
        let Some(e) = self.entries.get_mut(uid) else {
            return;
        };
        e.1 = Where::Backoff;
        let until = e.0.backoff_until;
        self.backoff.insert((until, self.seq), uid.to_string());
    }

    fn activate_or_backoff(&mut self, uid: &str, now: Instant) {
        let Some(e) = self.entries.get(uid) else {
            return;
        };
        if e.0.backoff_until <= now {
            self.push_active(uid)
        } else {
            self.push_backoff(uid)
        }
    }

    fn flush_backoff(&mut self, now: Instant) {
        while let Some((&(t, s), _)) = self.backoff.iter().next() {
            if t > now {
                break;
            }
            let Some(uid) = self.backoff.remove(&(t, s)) else {
                break;
            };
            if matches!(self.entries.get(&uid), Some((_, Where::Backoff))) {
                self.push_active(&uid);
            }
        }
    }

    fn flush_unschedulable(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter_map(|(u, (_, w))| match w {
                Where::Unschedulable(since)
                    if now.duration_since(*since) >= MAX_UNSCHEDULABLE_DURATION =>
                {
                    Some(u.clone())
                }
                _ => None,
            })
            .collect();
        for u in stale {
            self.activate_or_backoff(&u, now);
        }
    }
}

/// Backoff after `attempts` failures: 1 s, 2 s, 4 s, 8 s, 10 s, 10 s, …
pub fn backoff_for(attempts: u32) -> Duration {
    let mut d = INITIAL_BACKOFF;
    for _ in 1..attempts {
        d *= 2;
        if d >= MAX_BACKOFF {
            return MAX_BACKOFF;
        }
    }
    d.min(MAX_BACKOFF)
}

/// The scheduling queue, shared by the watch tasks (producers) and the scheduling workers.
#[derive(Default)]
pub struct SchedulingQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
}

impl SchedulingQueue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a new pending pod or updates the queued copy. An update to an unschedulable pod
    /// makes it eligible again.
    pub fn add_or_update(&self, pod: Arc<Pod>, info: Arc<PodInfo>) {
        let now = Instant::now();
        let mut q = self.lock();
        let uid = info.uid.clone();
        match q.entries.get_mut(&uid) {
            Some((e, w)) => {
                let spec_changed = e.info.resource_version != info.resource_version;
                e.pod = pod;
                e.info = info;
                if spec_changed && matches!(w, Where::Unschedulable(_)) {
                    q.activate_or_backoff(&uid, now);
                    self.ready.notify_one();
                }
            }
            None => {
                let qp = QueuedPod {
                    pod,
                    info,
                    attempts: 0,
                    added: now,
                    backoff_until: now,
                };
                q.entries.insert(uid.clone(), (qp, Where::Active));
                q.push_active(&uid);
                self.ready.notify_one();
            }
        }
    }

    /// Forgets a pod (deleted, or bound by someone else).
    pub fn delete(&self, uid: &str) {
        self.lock().entries.remove(uid);
    }

    /// True if the queue knows this pod (pending or being scheduled).
    pub fn contains(&self, uid: &str) -> bool {
        self.lock().entries.contains_key(uid)
    }

    /// Takes the next pod to schedule, waiting up to `timeout`; `None` on timeout or close.
    pub fn pop(&self, timeout: Duration) -> Option<QueuedPod> {
        let deadline = Instant::now() + timeout;
        let mut q = self.lock();
        loop {
            if q.closed {
                return None;
            }
            let now = Instant::now();
            q.flush_backoff(now);
            q.flush_unschedulable(now);
            while let Some((_, _, uid)) = q.active.pop() {
                let move_count = q.move_count;
                if let Some((e, w)) = q.entries.get_mut(&uid)
                    && *w == Where::Active
                {
                    *w = Where::InFlight {
                        popped_at_move: move_count,
                    };
                    return Some(e.clone());
                }
            }
            if now >= deadline {
                return None;
            }
            let mut wait = deadline - now;
            if let Some(&(t, _)) = q.backoff.keys().next() {
                wait = wait.min(t.saturating_duration_since(now));
            }
            q = self
                .ready
                .wait_timeout(q, wait.max(Duration::from_millis(1)))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The pod was assumed on a node; the queue forgets it (binding failures re-add it).
    pub fn done(&self, uid: &str) {
        self.delete(uid);
    }

    /// The pod fits nowhere: back off, then wait in the unschedulable pool for an event. If an
    /// event arrived while it was being scheduled, it only backs off.
    pub fn unschedulable(&self, uid: &str) {
        let now = Instant::now();
        let mut q = self.lock();
        let move_count = q.move_count;
        let Some((e, w)) = q.entries.get_mut(uid) else {
            return;
        };
        e.attempts += 1;
        e.backoff_until = now + backoff_for(e.attempts);
        let moved_meanwhile =
            matches!(*w, Where::InFlight { popped_at_move } if popped_at_move != move_count);
        if moved_meanwhile {
            q.push_backoff(uid);
        } else {
            *w = Where::Unschedulable(now);
        }
    }

    /// Re-adds a pod whose attempt failed for a transient reason (API error, lost race), with backoff.
    pub fn retry(&self, qp: QueuedPod) {
        let now = Instant::now();
        let mut q = self.lock();
        let uid = qp.info.uid.clone();
        let attempts = q
            .entries
            .get(&uid)
            .map(|e| e.0.attempts)
            .unwrap_or(qp.attempts)
            + 1;
        let mut qp = qp;
        qp.attempts = attempts;
        qp.backoff_until = now + backoff_for(attempts);
        q.entries.insert(uid.clone(), (qp, Where::Backoff));
        q.push_backoff(&uid);
        self.ready.notify_one();
    }

    /// A cluster event could make unschedulable pods fit: move them to active (or backoff if
    /// their backoff has not expired yet).
    pub fn move_all_to_active_or_backoff(&self) {
        let now = Instant::now();
        let mut q = self.lock();
        q.move_count += 1;
        let waiting: Vec<String> = q
            .entries
            .iter()
            .filter(|(_, (_, w))| matches!(w, Where::Unschedulable(_)))
            .map(|(u, _)| u.clone())
            .collect();
        for u in waiting {
            q.activate_or_backoff(&u, now);
        }
        self.ready.notify_all();
    }

    /// Numbers of (active, backoff, unschedulable) pods, for logs.
    pub fn lens(&self) -> (usize, usize, usize) {
        let q = self.lock();
        let mut r = (0, 0, 0);
        for (_, w) in q.entries.values() {
            match w {
                Where::Active | Where::InFlight { .. } => r.0 += 1,
                Where::Backoff => r.1 += 1,
                Where::Unschedulable(_) => r.2 += 1,
            }
        }
        r
    }

    /// Wakes all workers and makes `pop` return `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, prio: i32) -> (Arc<Pod>, Arc<PodInfo>) {
        let p: Pod = serde_json::from_value(
            json!({"metadata": {"name": name, "uid": name, "resourceVersion": "1"},
            "spec": {"priority": prio, "containers": [{"name": "c"}]}}),
        )
        .unwrap();
        let i = PodInfo::new(&p);
        (Arc::new(p), Arc::new(i))
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff_for(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn priority_then_fifo() {
        let q = SchedulingQueue::default();
        let (a, ai) = pod("a", 0);
        let (b, bi) = pod("b", 10);
        let (c, ci) = pod("c", 0);
        q.add_or_update(a, ai);
        q.add_or_update(b, bi);
        q.add_or_update(c, ci);
        let order: Vec<String> = (0..3)
            .map(|_| q.pop(Duration::ZERO).unwrap().info.name.clone())
            .collect();
        assert_eq!(order, vec!["b", "a", "c"]);
    }

    #[test]
    fn unschedulable_waits_for_event_and_backoff() {
        let q = SchedulingQueue::default();
        let (a, ai) = pod("a", 0);
        q.add_or_update(a, ai);
        let p = q.pop(Duration::ZERO).unwrap();
        q.unschedulable(&p.info.uid);
        assert!(
            q.pop(Duration::from_millis(20)).is_none(),
            "waits for an event"
        );
        q.move_all_to_active_or_backoff();
        assert_eq!(q.lens(), (0, 1, 0), "still backing off");
        let t = Instant::now();
        assert!(q.pop(Duration::from_secs(3)).is_some());
        assert!(t.elapsed() >= Duration::from_millis(900));
    }

    #[test]
    fn event_during_attempt_is_not_lost() {
        let q = SchedulingQueue::default();
        let (a, ai) = pod("a", 0);
        q.add_or_update(a, ai);
        let p = q.pop(Duration::ZERO).unwrap();
        q.move_all_to_active_or_backoff();
        q.unschedulable(&p.info.uid);
        assert_eq!(q.lens(), (0, 1, 0));
    }
}
