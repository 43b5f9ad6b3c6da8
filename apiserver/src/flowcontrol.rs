//! Overload protection in the manner of API Priority and Fairness (kube-apiserver's default).
//!
//! The server's concurrency (`--max-requests-inflight` + `--max-mutating-requests-inflight`,
//! 400 + 200 by default, as Kubernetes sums them under APF) is divided among priority levels by
//! Kubernetes' default shares; each request is classified by its user as Kubernetes' suggested
//! FlowSchemas do:
//!
//! | priority level   | shares | who                                                        |
//! |------------------|--------|------------------------------------------------------------|
//! | `exempt`         | –      | group `system:masters`; health probes                      |
//! | `node-high`      | 40     | group `system:nodes` (kubelets)                            |
//! | `system`         | 30     | other `system:` users (controllers, scheduler, agents)     |
//! | `workload-high`  | 40     | ServiceAccounts of `kube-system`                           |
//! | `workload-low`   | 100    | all other ServiceAccounts                                  |
//! | `global-default` | 20     | every other authenticated user                             |
//! | `catch-all`      | 5      | unauthenticated requests                                   |
//!
//! Within a level, each user is one flow with its own queue; when the level's seats are taken,
//! requests wait in their flow's queue and freed seats go round-robin across the flows that
//! wait, so a user flooding the server waits behind its own requests, not in front of others'.
//! A flow's queue holds at most [`QUEUE_LENGTH_LIMIT`] requests and a request waits at most a
//! quarter of the request timeout; beyond either it gets 429 with `Retry-After` (Kubernetes'
//! plain-text answer). Long-running requests (watch, exec, attach, port-forward, proxy, log)
//! take no seat, as in Kubernetes. The counters are served on `/metrics` under Kubernetes'
//! `apiserver_flowcontrol_*` names.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// Requests one flow may have waiting in its queue (Kubernetes' `queueLengthLimit`).
pub const QUEUE_LENGTH_LIMIT: usize = 50;

/// Kubernetes' defaults for `--max-requests-inflight` and `--max-mutating-requests-inflight`.
pub const DEFAULT_MAX_REQUESTS_INFLIGHT: usize = 400;
/// See [`DEFAULT_MAX_REQUESTS_INFLIGHT`].
pub const DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT: usize = 200;

/// Kubernetes' default `--request-timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The limited levels and their nominal concurrency shares (Kubernetes' bootstrap
/// configuration).
const LEVELS: &[(&str, &str, usize)] = &[
    // (priority level, flow schema, shares)
    ("node-high", "system-nodes", 40),
    ("system", "system-leader-election", 30),
    ("workload-high", "kube-system-service-accounts", 40),
    ("workload-low", "service-accounts", 100),
    ("global-default", "global-default", 20),
    ("catch-all", "catch-all", 5),
];

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The flow's queue was full.
    QueueFull,
    /// The request waited longer than the queue wait limit.
    TimedOut,
}

impl Rejection {
    fn reason(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue-full",
            Rejection::TimedOut => "time-out",
        }
    }
}

struct LevelState {
    executing: usize,
    /// Waiting requests per flow (user name).
    queues: HashMap<String, VecDeque<oneshot::Sender<Seat>>>,
    /// Flows with waiting requests, in round-robin order.
    order: VecDeque<String>,
}

struct Level {
    name: &'static str,
    schema: &'static str,
    limit: AtomicUsize,
    state: Mutex<LevelState>,
    dispatched: AtomicU64,
    rejected_queue_full: AtomicU64,
    rejected_time_out: AtomicU64,
}

impl Level {
    /// Frees one seat and hands it to the next waiting flow.
    fn release(self: &Arc<Self>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.executing = st.executing.saturating_sub(1);
        self.dispatch(&mut st);
    }

    /// Gives free seats to waiting requests, one flow after another.
    fn dispatch(self: &Arc<Self>, st: &mut LevelState) {
        while st.executing < self.limit.load(Ordering::Relaxed) {
            let Some(flow) = st.order.pop_front() else {
                return;
            };
            let Some(queue) = st.queues.get_mut(&flow) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                st.queues.remove(&flow);
            } else {
                st.order.push_back(flow);
            }
            let Some(tx) = next else { continue };
            st.executing += 1;
            match tx.send(Seat {
                level: Some(self.clone()),
            }) {
                Ok(()) => {
                    self.dispatched.fetch_add(1, Ordering::Relaxed);
                }
                Err(mut seat) => {
                    // The waiter gave up (timed out or disconnected): the seat stays free.
                    seat.level = None;
                    st.executing -= 1;
                }
            }
        }
    }

    fn waiting(&self) -> usize {
        self.state
            .lock()
            .map(|st| {
                st.queues
                    .values()
                    .flatten()
                    .filter(|tx| !tx.is_closed())
                    .count()
            })
            .unwrap_or(0)
    }
}

/// A seat held by an executing request; dropping it frees the seat.
pub struct Seat {
    level: Option<Arc<Level>>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(level) = self.level.take() {
            level.release();
        }
    }
}

/// The server's flow control.
pub struct FlowControl {
    levels: Vec<Arc<Level>>,
    wait_limit: Mutex<Duration>,
    request_timeout: Mutex<Duration>,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl::new(
            DEFAULT_MAX_REQUESTS_INFLIGHT + DEFAULT_MAX_MUTATING_REQUESTS_INFLIGHT,
            Duration::from_secs(15),
        )
    }
}

/// A level's seats out of the server's concurrency, by shares (at least one).
fn seats(total: usize, shares: usize) -> usize {
    let sum: usize = LEVELS.iter().map(|l| l.2).sum();
    (total * shares).div_ceil(sum).max(1)
}

impl FlowControl {
    /// Flow control over `total` seats; a request waits at most `wait_limit` for one.
    pub fn new(total: usize, wait_limit: Duration) -> FlowControl {
        FlowControl {
            levels: LEVELS
                .iter()
                .map(|&(name, schema, shares)| {
                    Arc::new(Level {
                        name,
                        schema,
                        limit: AtomicUsize::new(seats(total, shares)),
                        state: Mutex::new(LevelState {
                            executing: 0,
                            queues: HashMap::new(),
                            order: VecDeque::new(),
                        }),
                        dispatched: AtomicU64::new(0),
                        rejected_queue_full: AtomicU64::new(0),
                        rejected_time_out: AtomicU64::new(0),
                    })
                })
                .collect(),
            wait_limit: Mutex::new(wait_limit),
            request_timeout: Mutex::new(DEFAULT_REQUEST_TIMEOUT),
        }
    }

    /// `--request-timeout`: how long a request that is not long-running may take.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
            .lock()
            .map(|t| *t)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }

    /// Applies `--max-requests-inflight`, `--max-mutating-requests-inflight` and the request
    /// timeout (requests wait at most a quarter of it in a queue, as Kubernetes).
    pub fn configure(&self, max_inflight: usize, max_mutating: usize, request_timeout: Duration) {
        let total = max_inflight + max_mutating;
        for (level, &(_, _, shares)) in self.levels.iter().zip(LEVELS) {
            level.limit.store(seats(total, shares), Ordering::Relaxed);
            if let Ok(mut st) = level.state.lock() {
                level.dispatch(&mut st);
            }
        }
        if let Ok(mut w) = self.wait_limit.lock() {
            *w = request_timeout / 4;
        }
        if let Ok(mut t) = self.request_timeout.lock() {
            *t = request_timeout;
        }
    }

    /// The level a user's requests run at, or `None` for exempt users.
    fn classify(&self, user: &str, groups: &[String]) -> Option<&Arc<Level>> {
        let in_group = |g: &str| groups.iter().any(|x| x == g);
        let name = if in_group("system:masters") {
            return None;
        } else if in_group("system:nodes") {
            "node-high"
        } else if let Some(sa) = user.strip_prefix("system:serviceaccount:") {
            if sa.starts_with("kube-system:") {
                "workload-high"
            } else {
                "workload-low"
            }
        } else if user == "system:anonymous" || !in_group("system:authenticated") {
            "catch-all"
        } else if user.starts_with("system:") {
            "system"
        } else {
            "global-default"
        };
        self.levels.iter().find(|l| l.name == name)
    }

    /// Waits for a seat for a request of `user` in `groups` (`None` = exempt, nothing to
    /// hold), or refuses it.
    pub async fn acquire(&self, user: &str, groups: &[String]) -> Result<Option<Seat>, Rejection> {
        let Some(level) = self.classify(user, groups) else {
            return Ok(None);
        };
        let rx = {
            let Ok(mut st) = level.state.lock() else {
                return Ok(None);
            };
            if st.executing < level.limit.load(Ordering::Relaxed) && st.order.is_empty() {
                st.executing += 1;
                level.dispatched.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(Seat {
                    level: Some(level.clone()),
                }));
            }
            let queue = st.queues.entry(user.to_string()).or_default();
            queue.retain(|tx| !tx.is_closed());
            if queue.len() >= QUEUE_LENGTH_LIMIT {
                level.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(Rejection::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            queue.push_back(tx);
            if !st.order.iter().any(|f| f == user) {
                st.order.push_back(user.to_string());
            }
            rx
        };
        let wait = self
            .wait_limit
            .lock()
            .map(|w| *w)
            .unwrap_or(Duration::from_secs(15));
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(seat)) => Ok(Some(seat)),
            _ => {
                level.rejected_time_out.fetch_add(1, Ordering::Relaxed);
                Err(Rejection::TimedOut)
            }
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let mut section = |name: &str, help: &str, kind: &str, rows: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in rows {
                out.push_str(&format!("{name}{{{labels}}} {v}\n"));
            }
        };
        let labels =
            |l: &Level| format!("flow_schema=\"{}\",priority_level=\"{}\"", l.schema, l.name);
        section(
            "apiserver_flowcontrol_dispatched_requests_total",
            "Number of requests executed by API Priority and Fairness subsystem",
            "counter",
            self.levels
                .iter()
                .map(|l| (labels(l), l.dispatched.load(Ordering::Relaxed).to_string()))
                .collect(),
        );
        section(
            "apiserver_flowcontrol_rejected_requests_total",
            "Number of requests rejected by API Priority and Fairness subsystem",
            "counter",
            self.levels
                .iter()
                .flat_map(|l| {
                    [
                        (Rejection::QueueFull, &l.rejected_queue_full),
                        (Rejection::TimedOut, &l.rejected_time_out),
                    ]
                    .map(|(r, n)| {
                        (
                            format!("{},reason=\"{}\"", labels(l), r.reason()),
                            n.load(Ordering::Relaxed).to_string(),
                        )
                    })
                })
                .collect(),
        );
        section(
            "apiserver_flowcontrol_current_inqueue_requests",
            "Number of requests currently pending in queues of the API Priority and Fairness subsystem",
            "gauge",
            self.levels
                .iter()
                .map(|l| (labels(l), l.waiting().to_string()))
                .collect(),
        );
        section(
            "apiserver_flowcontrol_current_executing_requests",
            "Number of requests in initial (for a WATCH) or any (for a non-WATCH) execution stage in the API Priority and Fairness subsystem",
            "gauge",
            self.levels
                .iter()
                .map(|l| {
                    let n = l.state.lock().map(|s| s.executing).unwrap_or(0);
                    (labels(l), n.to_string())
                })
                .collect(),
        );
        section(
            "apiserver_flowcontrol_nominal_limit_seats",
            "Nominal number of execution seats configured for each priority level",
            "gauge",
            self.levels
                .iter()
                .map(|l| {
                    (
                        format!("priority_level=\"{}\"", l.name),
                        l.limit.load(Ordering::Relaxed).to_string(),
                    )
                })
                .collect(),
        );
        out
    }
}

/// Kubernetes' answer to a refused request: 429, `Retry-After: 1`, plain text.
pub fn too_many_requests() -> axum::response::Response {
    let mut r = axum::response::Response::new(axum::body::Body::from(
        "Too many requests, please try again later.\n",
    ));
    *r.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let h = r.headers_mut();
    h.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

/// A Go duration (`32s`, `1m30s`, `500ms`, `1.5h`) as clients send in `?timeout=`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Whether a request is long-running (Kubernetes' `LongRunningRequestCheck`): watches and the
/// streaming subresources take no seat and have no request timeout.
pub fn is_long_running(path: &str, watch_param: bool) -> bool {
    if watch_param {
        return true;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segs.as_slice() {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return false,
    };
    if rest.first() == Some(&"watch") {
        return true;
    }
    // <resource>/<name>/<subresource> or namespaces/<ns>/<resource>/<name>/<subresource>
    // (and nodes/<name>/proxy/…, the kubelet API).
    let sub = match rest {
        ["namespaces", _, _, _, sub, ..] => *sub,
        ["namespaces", ..] => return false,
        [_, _, sub, ..] => *sub,
        _ => return false,
    };
    matches!(sub, "exec" | "attach" | "portforward" | "proxy" | "log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct User {
        name: String,
        groups: Vec<String>,
    }

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn users_are_classified_as_kubernetes_suggested_flow_schemas() {
        let fc = FlowControl::default();
        let level = |u: &User| fc.classify(&u.name, &u.groups).map(|l| l.name);
        assert_eq!(
            level(&user("admin", &["system:masters", "system:authenticated"])),
            None
        );
        assert_eq!(
            level(&user(
                "system:node:n1",
                &["system:nodes", "system:authenticated"]
            )),
            Some("node-high")
        );
        assert_eq!(
            level(&user("system:kube-scheduler", &["system:authenticated"])),
            Some("system")
        );
        assert_eq!(
            level(&user(
                "system:serviceaccount:kube-system:coredns",
                &["system:serviceaccounts", "system:authenticated"]
            )),
            Some("workload-high")
        );
        assert_eq!(
            level(&user(
                "system:serviceaccount:class-a:student",
                &["system:serviceaccounts", "system:authenticated"]
            )),
            Some("workload-low")
        );
        assert_eq!(
            level(&user("alice", &["system:authenticated"])),
            Some("global-default")
        );
        assert_eq!(
            level(&user("system:anonymous", &["system:unauthenticated"])),
            Some("catch-all")
        );
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("32s"), Some(Duration::from_secs(32)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("abc"), None);
    }

    #[test]
    fn long_running_requests_are_recognised() {
        assert!(is_long_running("/api/v1/pods", true));
        assert!(is_long_running("/api/v1/watch/namespaces/a/pods", false));
        assert!(is_long_running("/api/v1/namespaces/a/pods/p/exec", false));
        assert!(is_long_running("/api/v1/namespaces/a/pods/p/log", false));
        assert!(is_long_running(
            "/api/v1/nodes/n1/proxy/stats/summary",
            false
        ));
        assert!(!is_long_running("/api/v1/namespaces/a/pods/p", false));
        assert!(!is_long_running("/api/v1/namespaces/log/pods", false));
        assert!(!is_long_running("/api/v1/namespaces/a/pods/log", false));
        assert!(is_long_running(
            "/api/v1/namespaces/a/services/web/proxy/x",
            false
        ));
        assert!(!is_long_running(
            "/apis/apps/v1/namespaces/a/deployments/d/scale",
            false
        ));
    }

    #[tokio::test]
    async fn a_flooding_user_waits_behind_itself_and_is_refused_beyond_its_queue() {
        // 235 shares over 10 seats: global-default gets 1 seat.
        let fc = Arc::new(FlowControl::new(10, Duration::from_secs(5)));
        let flood = user("flood", &["system:authenticated"]);
        let victim = user("victim", &["system:authenticated"]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let run = |u: User| {
            let (fc, order) = (fc.clone(), order.clone());
            tokio::spawn(async move {
                let seat = fc.acquire(&u.name, &u.groups).await;
                if let Ok(mut o) = order.lock() {
                    o.push(u.name.clone());
                }
                seat.map(|s| s.is_some())
            })
        };
        let held = fc.acquire(&flood.name, &flood.groups).await.unwrap();
        // The flood fills its own queue…
        let waiting: Vec<_> = (0..QUEUE_LENGTH_LIMIT)
            .map(|_| run(flood.clone()))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // …and the next one is refused at once.
        assert_eq!(
            fc.acquire(&flood.name, &flood.groups).await.err(),
            Some(Rejection::QueueFull)
        );
        // The victim queues behind 50 of the flood's requests, but flows take turns.
        let v = run(victim.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert_eq!(v.await.unwrap(), Ok(true));
        for w in waiting {
            assert_eq!(w.await.unwrap(), Ok(true));
        }
        let order = order.lock().unwrap().clone();
        let pos = order.iter().position(|n| n == "victim").unwrap();
        assert!(
            pos <= 1,
            "the victim ran as request {pos} of {}",
            order.len()
        );
        let text = fc.render_metrics();
        assert!(text.contains(
            "apiserver_flowcontrol_rejected_requests_total{flow_schema=\"global-default\",priority_level=\"global-default\",reason=\"queue-full\"} 1"
        ), "{text}");
    }

    #[tokio::test]
    async fn a_request_that_waits_too_long_is_refused() {
        let fc = FlowControl::new(1, Duration::from_millis(50));
        let u = user("alice", &["system:authenticated"]);
        let _held = fc.acquire(&u.name, &u.groups).await.unwrap();
        assert_eq!(
            fc.acquire(&u.name, &u.groups).await.err(),
            Some(Rejection::TimedOut)
        );
        // Exempt users never wait.
        let admin = user("admin", &["system:masters"]);
        assert!(
            fc.acquire(&admin.name, &admin.groups)
                .await
                .unwrap()
                .is_none()
        );
    }
}
