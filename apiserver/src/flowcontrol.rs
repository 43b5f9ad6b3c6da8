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
//! Within a level, each user is one flow with its own queue. A request takes one seat, a LIST
//! one per hundred objects of its resource (at most ten, as Kubernetes' list work estimator),
//! so a big LIST holds as many seats as the work it does. When the seats are
//! taken, requests wait in their flow's queue and freed seats go to the flow that has been
//! given the fewest seats (start-time fair queuing on a virtual clock charged with each
//! request's width); a wide request at the head is never passed by narrower ones. So a user
//! flooding the server waits behind its own requests, not in front of others'. While other
//! flows of the level are active (seen within the last second), one flow holds at most the
//! level's seats minus one per other active flow (at most half kept back): a flood whose
//! requests stall on a slow write cannot hold every seat when another tenant's request comes.
//! A flow's queue holds at most [`QUEUE_LENGTH_LIMIT`] requests and a request waits at most a
//! quarter of the request timeout; beyond either it gets 429 with `Retry-After` (Kubernetes'
//! plain-text answer). Long-running requests (watch, exec, attach, port-forward, proxy, log)
//! take no seat, as in Kubernetes. The counters are served on `/metrics` under Kubernetes'
//! `apiserver_flowcontrol_*` names.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A request waiting for seats.
struct Waiter {
    tx: oneshot::Sender<Seat>,
    width: usize,
}

/// How long a flow counts as active after its last request arrived: while another flow of the
/// level is active, one flow may not hold every seat (see [`LevelState::fits`]).
const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

/// One flow (one user) of a level: its waiting requests and its virtual finish time.
struct Flow {
    /// The flow's name, shared with the seats it holds (no allocation per request).
    name: Arc<str>,
    waiting: VecDeque<Waiter>,
    /// Virtual time at which the work dispatched for this flow ends: each dispatch charges its
    /// width (start-time fair queuing), so a flow that has taken many seats goes after a flow
    /// that has taken few.
    finish: f64,
    /// Seats its executing requests hold.
    held: usize,
    /// When its last request arrived or was dispatched (a flow that waited counts as active
    /// for a second after its dispatch too).
    seen: Instant,
}

impl Flow {
    fn new(name: &str, now: Instant) -> Flow {
        Flow {
            name: Arc::from(name),
            waiting: VecDeque::new(),
            finish: 0.0,
            held: 0,
            seen: now,
        }
    }

    fn active(&self, now: Instant) -> bool {
        self.held > 0 || !self.waiting.is_empty() || now.duration_since(self.seen) < ACTIVE_WINDOW
    }
}

struct LevelState {
    /// Seats held by executing requests.
    seats: usize,
    /// Executing requests.
    requests: usize,
    /// Waiting requests, all flows.
    waiting: usize,
    flows: HashMap<String, Flow>,
    /// Virtual clock: the start tag of the last dispatched request.
    clock: f64,
}

impl LevelState {
    /// The flow named `name`, created if it is new (its name is copied only then: the hot path
    /// allocates nothing), marked as seen `now`.
    fn flow(&mut self, name: &str, now: Instant) -> &mut Flow {
        if !self.flows.contains_key(name) {
            self.flows.insert(name.to_string(), Flow::new(name, now));
        }
        let f = self
            .flows
            .get_mut(name)
            .unwrap_or_else(|| unreachable!("inserted above"));
        f.seen = now;
        f
    }

    /// Charges a dispatch of `width` seats to `flow` and takes the seats; returns the flow's
    /// name for the seat.
    fn charge(&mut self, flow: &str, width: usize, now: Instant) -> Arc<str> {
        let clock = self.clock;
        let f = self.flow(flow, now);
        let start = clock.max(f.finish);
        f.finish = start + width as f64;
        f.held += width;
        let name = f.name.clone();
        self.clock = start;
        self.seats += width;
        self.requests += 1;
        name
    }

    /// Whether `flow` may take `width` more seats of `limit`, free seats aside: while other
    /// flows of the level are active (waiting, executing, or seen within [`ACTIVE_WINDOW`]),
    /// one flow may hold at most `limit` minus one seat per other active flow (at most half of
    /// them kept back), so that a flood whose requests stall (a slow write, a big LIST) cannot
    /// hold every seat when another tenant's request comes. A flow that holds nothing may
    /// always take its request's width.
    fn fits(&self, flow: &str, width: usize, limit: usize, now: Instant) -> bool {
        let held = self.flows.get(flow).map_or(0, |f| f.held);
        if held == 0 {
            return true;
        }
        let others = self
            .flows
            .iter()
            .filter(|(name, f)| name.as_str() != flow && f.active(now))
            .count();
        held + width <= limit - others.min(limit / 2)
    }

    /// Forgets flows that hold nothing, have nothing waiting, are no longer active and whose
    /// charge the clock has passed (they would start at the clock anyway).
    fn prune(&mut self, now: Instant) {
        let clock = self.clock;
        self.flows.retain(|_, f| f.active(now) || f.finish > clock);
    }
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
    /// Frees a request's seats and hands them to waiting requests.
    fn release(self: &Arc<Self>, flow: &str, width: usize) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.seats = st.seats.saturating_sub(width);
        st.requests = st.requests.saturating_sub(1);
        if let Some(f) = st.flows.get_mut(flow) {
            f.held = f.held.saturating_sub(width);
        }
        self.dispatch(&mut st);
    }

    /// A request's width on this level: at least one seat, at most all of them.
    fn width(&self, width: usize) -> usize {
        width.clamp(1, self.limit.load(Ordering::Relaxed).max(1))
    }

    /// Gives free seats to waiting requests: always the head of the flow with the earliest
    /// virtual start among the flows that may take more seats ([`LevelState::fits`]); when
    /// that request does not fit in the free seats, nothing else goes ahead of it (a wide
    /// request is never starved by narrow ones).
    fn dispatch(self: &Arc<Self>, st: &mut LevelState) {
        let now = Instant::now();
        let limit = self.limit.load(Ordering::Relaxed);
        loop {
            let clock = st.clock;
            let next = st
                .flows
                .iter()
                .filter_map(|(name, f)| {
                    let head = f.waiting.front()?;
                    (head.tx.is_closed() || st.fits(name, self.width(head.width), limit, now))
                        .then(|| (clock.max(f.finish), name))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)))
                .map(|(_, name)| name.clone());
            let Some(name) = next else {
                st.prune(now);
                return;
            };
            let Some((closed, width)) = st
                .flows
                .get(&name)
                .and_then(|f| f.waiting.front())
                .map(|w| (w.tx.is_closed(), w.width))
            else {
                return;
            };
            if closed {
                // The waiter gave up (timed out or disconnected).
                if let Some(f) = st.flows.get_mut(&name) {
                    f.waiting.pop_front();
                }
                st.waiting -= 1;
                continue;
            }
            let width = self.width(width);
            if st.seats + width > limit {
                return;
            }
            let Some(head) = st.flows.get_mut(&name).and_then(|f| f.waiting.pop_front()) else {
                return;
            };
            st.waiting -= 1;
            let flow = st.charge(&name, width, now);
            match head.tx.send(Seat {
                level: Some(self.clone()),
                flow,
                width,
            }) {
                Ok(()) => {
                    self.dispatched.fetch_add(1, Ordering::Relaxed);
                }
                Err(mut seat) => {
                    // Gave up just now: the seats stay free.
                    seat.level = None;
                    st.seats -= width;
                    st.requests -= 1;
                    if let Some(f) = st.flows.get_mut(&name) {
                        f.held = f.held.saturating_sub(width);
                    }
                }
            }
        }
    }

    fn waiting(&self) -> usize {
        self.state
            .lock()
            .map(|st| {
                st.flows
                    .values()
                    .flat_map(|f| &f.waiting)
                    .filter(|w| !w.tx.is_closed())
                    .count()
            })
            .unwrap_or(0)
    }
}

/// The seats held by an executing request; dropping it frees them.
pub struct Seat {
    level: Option<Arc<Level>>,
    flow: Arc<str>,
    width: usize,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(level) = self.level.take() {
            level.release(&self.flow, self.width);
        }
    }
}

/// Objects one seat stands for when a LIST's width is estimated (Kubernetes'
/// `objectsPerSeat`).
pub const OBJECTS_PER_SEAT: usize = 100;

/// The most seats one request takes (Kubernetes' `maximumSeats`).
pub const MAXIMUM_SEATS: usize = 10;

/// The seats a LIST that goes through `objects` objects takes, as Kubernetes' list work
/// estimator: one per [`OBJECTS_PER_SEAT`] objects, at least 1, at most [`MAXIMUM_SEATS`]
/// (and never more than the request's priority level has).
pub fn list_width(objects: usize) -> usize {
    objects.div_ceil(OBJECTS_PER_SEAT).clamp(1, MAXIMUM_SEATS)
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
                            seats: 0,
                            requests: 0,
                            waiting: 0,
                            flows: HashMap::new(),
                            clock: 0.0,
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

    /// Waits for the seats of a request of `user` in `groups` that takes `width` seats (1 for
    /// most requests, [`list_width`] for a LIST; `None` = exempt, nothing to hold), or
    /// refuses it.
    pub async fn acquire(
        &self,
        user: &str,
        groups: &[String],
        width: usize,
    ) -> Result<Option<Seat>, Rejection> {
        let Some(level) = self.classify(user, groups) else {
            return Ok(None);
        };
        let width = level.width(width);
        let now = Instant::now();
        let rx = {
            let Ok(mut st) = level.state.lock() else {
                return Ok(None);
            };
            let limit = level.limit.load(Ordering::Relaxed);
            if st.waiting == 0 && st.seats + width <= limit && st.fits(user, width, limit, now) {
                let flow = st.charge(user, width, now);
                level.dispatched.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(Seat {
                    level: Some(level.clone()),
                    flow,
                    width,
                }));
            }
            let flow = st.flow(user, now);
            let before = flow.waiting.len();
            flow.waiting.retain(|w| !w.tx.is_closed());
            let gone = before - flow.waiting.len();
            if flow.waiting.len() >= QUEUE_LENGTH_LIMIT {
                st.waiting -= gone;
                level.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(Rejection::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            flow.waiting.push_back(Waiter { tx, width });
            st.waiting = st.waiting - gone + 1;
            // Seats may be free while a wider request waits for more: this one may fit first
            // if its flow is due.
            level.dispatch(&mut st);
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
                    let n = l.state.lock().map(|s| s.requests).unwrap_or(0);
                    (labels(l), n.to_string())
                })
                .collect(),
        );
        section(
            "apiserver_flowcontrol_current_executing_seats",
            "Concurrency (number of seats) occupied by the currently executing (initial stage for a WATCH, any stage otherwise) requests in the API Priority and Fairness subsystem",
            "gauge",
            self.levels
                .iter()
                .map(|l| {
                    let n = l.state.lock().map(|s| s.seats).unwrap_or(0);
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
                let seat = fc.acquire(&u.name, &u.groups, 1).await;
                if let Ok(mut o) = order.lock() {
                    o.push(u.name.clone());
                }
                seat.map(|s| s.is_some())
            })
        };
        let held = fc.acquire(&flood.name, &flood.groups, 1).await.unwrap();
        // The flood fills its own queue…
        let waiting: Vec<_> = (0..QUEUE_LENGTH_LIMIT)
            .map(|_| run(flood.clone()))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // …and the next one is refused at once.
        assert_eq!(
            fc.acquire(&flood.name, &flood.groups, 1).await.err(),
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
            pos == 0,
            "the victim ran as request {pos} of {}",
            order.len()
        );
        let text = fc.render_metrics();
        assert!(text.contains(
            "apiserver_flowcontrol_rejected_requests_total{flow_schema=\"global-default\",priority_level=\"global-default\",reason=\"queue-full\"} 1"
        ), "{text}");
    }

    #[test]
    fn lists_are_as_wide_as_their_objects() {
        assert_eq!(list_width(0), 1);
        assert_eq!(list_width(100), 1);
        assert_eq!(list_width(101), 2);
        assert_eq!(list_width(350), 4);
        assert_eq!(list_width(1_000_000), MAXIMUM_SEATS);
    }

    #[tokio::test]
    async fn wide_lists_hold_several_seats_and_other_flows_still_take_turns() {
        // 235 shares over 47 seats: global-default gets 4.
        let fc = Arc::new(FlowControl::new(47, Duration::from_secs(5)));
        let flood = user("flood", &["system:authenticated"]);
        let victim = user("victim", &["system:authenticated"]);
        // A LIST as wide as the level takes it whole (a wider one is cut to it).
        let list = fc.acquire(&flood.name, &flood.groups, 10).await.unwrap();
        assert!(fc.render_metrics().contains(
            "apiserver_flowcontrol_current_executing_seats{flow_schema=\"global-default\",priority_level=\"global-default\"} 4"
        ));
        // The flood queues more LISTs of 3 seats; the victim's GET queues after them.
        let flood_lists: Vec<_> = (0..3)
            .map(|_| {
                let (fc, u) = (fc.clone(), flood.clone());
                tokio::spawn(async move { fc.acquire(&u.name, &u.groups, 3).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let v = {
            let (fc, u) = (fc.clone(), victim.clone());
            tokio::spawn(async move { fc.acquire(&u.name, &u.groups, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(list);
        // The victim's flow has taken nothing yet, so it goes first; one flood LIST fits
        // beside it (1 + 3 of 4 seats), the next waits.
        let v = v.await.unwrap().unwrap();
        assert!(v.is_some());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = fc.render_metrics();
        assert!(text.contains(
            "apiserver_flowcontrol_current_executing_seats{flow_schema=\"global-default\",priority_level=\"global-default\"} 4"
        ), "{text}");
        assert!(text.contains(
            "apiserver_flowcontrol_current_inqueue_requests{flow_schema=\"global-default\",priority_level=\"global-default\"} 2"
        ), "{text}");
        drop(v);
        for l in flood_lists {
            assert!(l.await.unwrap().unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_flow_whose_requests_stall_leaves_a_seat_to_another_active_flow() {
        // 235 shares over 47 seats: global-default gets 4.
        let fc = Arc::new(FlowControl::new(47, Duration::from_secs(5)));
        let flood = user("flood", &["system:authenticated"]);
        let victim = user("victim", &["system:authenticated"]);
        // The victim was here a moment ago.
        drop(fc.acquire(&victim.name, &victim.groups, 1).await.unwrap());
        // The flood's requests stall (a slow write): three of the four seats, the fourth
        // request waits although a seat is free.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(fc.acquire(&flood.name, &flood.groups, 1).await.unwrap());
        }
        let fourth = {
            let (fc, u) = (fc.clone(), flood.clone());
            tokio::spawn(async move { fc.acquire(&u.name, &u.groups, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!fourth.is_finished());
        // The victim's next request finds the seat at once, and when it is done the seat is
        // kept for it still.
        let v = tokio::time::timeout(
            Duration::from_millis(100),
            fc.acquire(&victim.name, &victim.groups, 1),
        )
        .await
        .expect("the victim got a seat at once");
        assert!(v.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!fourth.is_finished());
        // One of the flood's own requests ends: its fourth goes.
        held.pop();
        assert!(fourth.await.unwrap().unwrap().is_some());
        // A user alone in its level takes every seat.
        let alone = user("system:serviceaccount:x:y", &["system:authenticated"]);
        let seats = seats(47, 100);
        let mut all = Vec::new();
        for _ in 0..seats {
            let s = tokio::time::timeout(
                Duration::from_millis(100),
                fc.acquire(&alone.name, &alone.groups, 1),
            )
            .await
            .expect("a seat at once");
            all.push(s.unwrap());
        }
    }

    #[tokio::test]
    async fn a_request_that_waits_too_long_is_refused() {
        let fc = FlowControl::new(1, Duration::from_millis(50));
        let u = user("alice", &["system:authenticated"]);
        let _held = fc.acquire(&u.name, &u.groups, 1).await.unwrap();
        assert_eq!(
            fc.acquire(&u.name, &u.groups, 1).await.err(),
            Some(Rejection::TimedOut)
        );
        // Exempt users never wait.
        let admin = user("admin", &["system:masters"]);
        assert!(
            fc.acquire(&admin.name, &admin.groups, 1)
                .await
                .unwrap()
                .is_none()
        );
    }
}
