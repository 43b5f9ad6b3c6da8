//! Resource usage of the node, its pods and their containers, served as Kubernetes' kubelet
//! serves it: `GET /stats/summary` (the stats API `v1alpha1` `Summary` JSON) and
//! `GET /metrics/resource` (Prometheus text with the stable resource metrics that
//! metrics-server — and Lotse's built-in `metrics.k8s.io` — scrape).
//!
//! Container and pod figures come from the runtime's CRI stats (`ListContainerStats`, and
//! `ListPodSandboxStats` where the runtime implements it; otherwise a pod is the sum of its
//! containers). Node figures come from the root cgroup (cgroup v1 `cpuacct.usage` and
//! `memory.usage_in_bytes` less inactive file pages, as cAdvisor computes the working set) or,
//! without it, from `/proc/stat` and `/proc/meminfo`; the node filesystem is the root dir's.
//! `usageNanoCores` is the rate between this and the previous sample of the same object when the
//! runtime does not report it.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_cri::v1 as cri;
use serde::Serialize;

use crate::Kubelet;

/// CRI labels naming a sandbox's pod and a container (as the kubelet sets them).
const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_UID: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// The stats API `Summary` (`stats/v1alpha1`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// The node.
    pub node: NodeStats,
    /// Every pod with a ready sandbox.
    pub pods: Vec<PodStats>,
}

/// Node-level figures.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node's name.
    pub node_name: String,
    /// When the node (its kernel) started.
    pub start_time: String,
    /// CPU usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// The filesystem of the kubelet's root dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    /// The runtime's image filesystem (the same filesystem here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStats>,
}

/// Runtime-level figures.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    /// The image filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_fs: Option<FsStats>,
}

/// A pod's figures.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    pub pod_ref: PodReference,
    /// When the sandbox was created.
    pub start_time: String,
    /// The pod's running containers.
    pub containers: Vec<ContainerStats>,
    /// CPU of the whole pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory of the whole pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// Names a pod.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PodReference {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
}

/// A container's figures.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container's name in the pod spec.
    pub name: String,
    /// When the container was created.
    pub start_time: String,
    /// CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// The writable layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<FsStats>,
}

/// CPU usage at `time`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When it was sampled (RFC 3339).
    pub time: String,
    /// Average usage since the previous sample, in nanocores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative usage in core-nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory usage at `time`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When it was sampled (RFC 3339).
    pub time: String,
    /// Memory still available (limit or capacity less the working set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// All memory in use, page cache included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    /// Memory in use that cannot be reclaimed without pressure (usage less inactive file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    /// Anonymous and swap cache memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Page faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    /// Major page faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_page_faults: Option<u64>,
}

/// A filesystem's usage.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    /// When it was sampled (RFC 3339).
    pub time: String,
    /// Bytes available to unprivileged users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// Size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// Bytes used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Free inodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    /// All inodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// Inodes used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_used: Option<u64>,
}

/// Why stats could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A CRI call failed.
    #[error("CRI {call}: {source}")]
    Cri {
        /// Which call.
        call: &'static str,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
}

/// `GET /stats/summary`.
pub async fn summary(State(k): State<std::sync::Arc<Kubelet>>) -> Response {
    match collect(&k).await {
        Ok(s) => match serde_json::to_vec(&s) {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => internal(format!("failed to encode summary: {e}")),
        },
        Err(e) => internal(format!("Internal Error: failed to get node info: {e}")),
    }
}

/// `GET /metrics/resource`.
pub async fn resource_metrics(State(k): State<std::sync::Arc<Kubelet>>) -> Response {
    let result = collect(&k).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, "Error getting summary for resourceMetric prometheus endpoint");
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_resource_metrics(result.as_ref().ok()),
    )
        .into_response()
}

fn internal(msg: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

/// Gathers the summary: CRI for pods and containers, the host for the node.
pub async fn collect(k: &Kubelet) -> Result<Summary, StatsError> {
    let mut rt = k.cri.rt.clone();
    let sandboxes = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(|source| StatsError::Cri {
            call: "ListPodSandbox",
            source,
        })?
        .into_inner()
        .items;
    let containers = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(|source| StatsError::Cri {
            call: "ListContainers",
            source,
        })?
        .into_inner()
        .containers;
    let container_stats: HashMap<String, cri::ContainerStats> = rt
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .map_err(|source| StatsError::Cri {
            call: "ListContainerStats",
            source,
        })?
        .into_inner()
        .stats
        .into_iter()
        .filter_map(|s| Some((s.attributes.as_ref()?.id.clone(), s)))
        .collect();
    // containerd 1.6 implements ListPodSandboxStats; other runtimes may answer Unimplemented,
    // and then a pod's figures are the sum of its containers'.
    let sandbox_stats: HashMap<String, cri::LinuxPodSandboxStats> = match rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
    {
        Ok(r) => r
            .into_inner()
            .stats
            .into_iter()
            .filter_map(|s| Some((s.attributes?.id, s.linux?)))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "ListPodSandboxStats: pods summed from containers");
            HashMap::new()
        }
    };
    let now = now_ns();
    let mut pods = Vec::new();
    for sb in &sandboxes {
        let Some(meta) = &sb.metadata else { continue };
        let mut ps = PodStats {
            pod_ref: PodReference {
                name: label(&sb.labels, POD_NAME)
                    .unwrap_or(&meta.name)
                    .to_string(),
                namespace: label(&sb.labels, POD_NAMESPACE)
                    .unwrap_or(&meta.namespace)
                    .to_string(),
                uid: label(&sb.labels, POD_UID).unwrap_or(&meta.uid).to_string(),
            },
            start_time: rfc3339(sb.created_at),
            ..Default::default()
        };
        for c in containers.iter().filter(|c| c.pod_sandbox_id == sb.id) {
            let name = label(&c.labels, CONTAINER_NAME)
                .or(c.metadata.as_ref().map(|m| m.name.as_str()))
                .unwrap_or_default()
                .to_string();
            let s = container_stats.get(&c.id);
            ps.containers.push(ContainerStats {
                name,
                start_time: rfc3339(c.created_at),
                cpu: s
                    .and_then(|s| s.cpu.as_ref())
                    .map(|u| cpu_stats(&format!("ctr:{}", c.id), u, now)),
                memory: s
                    .and_then(|s| s.memory.as_ref())
                    .map(|m| memory_stats(m, now)),
                rootfs: s.and_then(|s| s.writable_layer.as_ref()).map(|f| FsStats {
                    time: rfc3339(nonzero(f.timestamp, now)),
                    used_bytes: f.used_bytes.as_ref().map(|v| v.value),
                    inodes_used: f.inodes_used.as_ref().map(|v| v.value),
                    ..Default::default()
                }),
            });
        }
        ps.containers.sort_by(|a, b| a.name.cmp(&b.name));
        let key = format!("pod:{}", sb.id);
        match sandbox_stats.get(&sb.id) {
            Some(l) => {
                ps.cpu = l.cpu.as_ref().map(|u| cpu_stats(&key, u, now));
                ps.memory = l.memory.as_ref().map(|m| memory_stats(m, now));
            }
            None => {
                ps.cpu = sum_cpu(&key, &ps.containers, now);
                ps.memory = sum_memory(&ps.containers, now);
            }
        }
        pods.push(ps);
    }
    pods.sort_by(|a, b| {
        (&a.pod_ref.namespace, &a.pod_ref.name).cmp(&(&b.pod_ref.namespace, &b.pod_ref.name))
    });
    forget_stale(now);
    let fs = fs_stats(&k.config.root_dir, now);
    Ok(Summary {
        node: NodeStats {
            node_name: k.config.node_name.clone(),
            start_time: rfc3339(boot_time_ns().unwrap_or(0)),
            cpu: node_cpu(now),
            memory: node_memory(now),
            runtime: Some(RuntimeStats {
                image_fs: fs.clone(),
            }),
            fs,
        },
        pods,
    })
}

fn label<'a>(labels: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    labels.get(key).map(String::as_str)
}

fn nonzero(ts: i64, fallback: i64) -> i64 {
    if ts > 0 { ts } else { fallback }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Kubernetes' `metav1.Time` form: RFC 3339 in UTC, whole seconds.
fn rfc3339(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(ns as i128)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The last cumulative CPU sample of each object (node, pod sandbox, container): (time ns,
/// core-nanoseconds), for `usageNanoCores` when the runtime does not compute it.
static LAST_CPU: LazyLock<Mutex<HashMap<String, (i64, u64)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Samples older than this are forgotten (their objects are gone).
const STALE_NS: i64 = 10 * 60 * 1_000_000_000;

fn forget_stale(now: i64) {
    if let Ok(mut m) = LAST_CPU.lock() {
        m.retain(|_, (t, _)| now - *t < STALE_NS);
    }
}

/// Average nanocores between the previous sample under `key` and this one; records this one.
fn rate(key: &str, at: i64, total: u64) -> Option<u64> {
    let mut m = LAST_CPU.lock().ok()?;
    let prev = m.insert(key.to_string(), (at, total));
    let (t0, u0) = prev?;
    let dt = at.checked_sub(t0).filter(|d| *d > 0)?;
    let du = total.checked_sub(u0)?;
    Some(((du as u128) * 1_000_000_000 / dt as u128) as u64)
}

fn cpu_stats(key: &str, u: &cri::CpuUsage, now: i64) -> CpuStats {
    let at = nonzero(u.timestamp, now);
    let total = u.usage_core_nano_seconds.as_ref().map(|v| v.value);
    let own = total.and_then(|t| rate(key, at, t));
    CpuStats {
        time: rfc3339(at),
        usage_nano_cores: u
            .usage_nano_cores
            .as_ref()
            .map(|v| v.value)
            .filter(|v| *v > 0)
            .or(own),
        usage_core_nano_seconds: total,
    }
}

fn memory_stats(m: &cri::MemoryUsage, now: i64) -> MemoryStats {
    let v = |x: &Option<cri::UInt64Value>| x.as_ref().map(|v| v.value);
    MemoryStats {
        time: rfc3339(nonzero(m.timestamp, now)),
        available_bytes: v(&m.available_bytes),
        usage_bytes: v(&m.usage_bytes),
        working_set_bytes: v(&m.working_set_bytes),
        rss_bytes: v(&m.rss_bytes),
        page_faults: v(&m.page_faults),
        major_page_faults: v(&m.major_page_faults),
    }
}

fn sum_cpu(key: &str, cs: &[ContainerStats], now: i64) -> Option<CpuStats> {
    let total: Option<u64> = cs
        .iter()
        .filter_map(|c| c.cpu.as_ref()?.usage_core_nano_seconds)
        .reduce(|a, b| a + b);
    let total = total?;
    let cores = cs
        .iter()
        .filter_map(|c| c.cpu.as_ref()?.usage_nano_cores)
        .reduce(|a, b| a + b);
    let own = rate(key, now, total);
    Some(CpuStats {
        time: rfc3339(now),
        usage_nano_cores: cores.or(own),
        usage_core_nano_seconds: Some(total),
    })
}

fn sum_memory(cs: &[ContainerStats], now: i64) -> Option<MemoryStats> {
    let sum = |f: fn(&MemoryStats) -> Option<u64>| {
        cs.iter()
            .filter_map(|c| f(c.memory.as_ref()?))
            .reduce(|a, b| a + b)
    };
    let working_set = sum(|m| m.working_set_bytes)?;
    Some(MemoryStats {
        time: rfc3339(now),
        working_set_bytes: Some(working_set),
        usage_bytes: sum(|m| m.usage_bytes),
        rss_bytes: sum(|m| m.rss_bytes),
        page_faults: sum(|m| m.page_faults),
        major_page_faults: sum(|m| m.major_page_faults),
        available_bytes: None,
    })
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, meminfo without the unit).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()?.trim_end_matches(':') == key).then_some(())?;
        it.next()?.parse().ok()
    })
}

/// Cumulative CPU of the node in core-nanoseconds: the root cgroup's (v1 `cpuacct.usage`,
/// v2 `cpu.stat` usage_usec), else busy time of `/proc/stat`.
fn node_cpu_total() -> Option<u64> {
    if let Some(v) = read_u64("/sys/fs/cgroup/cpuacct/cpuacct.usage") {
        return Some(v);
    }
    if let Ok(s) = std::fs::read_to_string("/sys/fs/cgroup/cpu.stat")
        && let Some(us) = field(&s, "usage_usec")
    {
        return Some(us * 1000);
    }
    proc_stat_busy_ns(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Busy time (all but idle and iowait) of the `cpu` line of `/proc/stat`, in nanoseconds
/// (USER_HZ is 100 on Linux).
fn proc_stat_busy_ns(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    Some(busy * 10_000_000)
}

fn node_cpu(now: i64) -> Option<CpuStats> {
    let total = node_cpu_total()?;
    Some(CpuStats {
        time: rfc3339(now),
        usage_nano_cores: rate("node", now, total),
        usage_core_nano_seconds: Some(total),
    })
}

/// Working set of the node as cAdvisor computes it for the root cgroup: usage less inactive
/// file pages (cgroup v1); without a v1 memory controller, MemTotal − MemAvailable.
fn node_memory(now: i64) -> Option<MemoryStats> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = field(&meminfo, "MemTotal")? * 1024;
    let (usage, working_set, rss) = match (
        read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
        std::fs::read_to_string("/sys/fs/cgroup/memory/memory.stat"),
    ) {
        (Some(usage), Ok(stat)) => {
            let inactive = field(&stat, "total_inactive_file").unwrap_or(0);
            (
                usage,
                usage.saturating_sub(inactive),
                field(&stat, "total_rss"),
            )
        }
        _ => {
            let avail = field(&meminfo, "MemAvailable")? * 1024;
            let free = field(&meminfo, "MemFree").unwrap_or(0) * 1024;
            (
                total.saturating_sub(free),
                total.saturating_sub(avail),
                None,
            )
        }
    };
    Some(MemoryStats {
        time: rfc3339(now),
        available_bytes: Some(total.saturating_sub(working_set)),
        usage_bytes: Some(usage),
        working_set_bytes: Some(working_set),
        rss_bytes: rss,
        page_faults: None,
        major_page_faults: None,
    })
}

fn boot_time_ns() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(secs * 1_000_000_000)
}

fn fs_stats(path: &std::path::Path, now: i64) -> Option<FsStats> {
    let s = rustix::fs::statvfs(path).ok()?;
    let frsize = s.f_frsize;
    Some(FsStats {
        time: rfc3339(now),
        available_bytes: Some(s.f_bavail * frsize),
        capacity_bytes: Some(s.f_blocks * frsize),
        used_bytes: Some(s.f_blocks.saturating_sub(s.f_bfree) * frsize),
        inodes_free: Some(s.f_ffree),
        inodes: Some(s.f_files),
        inodes_used: Some(s.f_files.saturating_sub(s.f_ffree)),
    })
}

/// Milliseconds since the epoch of an RFC 3339 time (the sample's time stamp).
fn millis(t: &str) -> Option<i64> {
    t.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// A Prometheus sample value as Go's `strconv.FormatFloat(v, 'g', -1, 64)` prints the usual
/// range (shortest round-trip form).
fn num(v: f64) -> String {
    format!("{v}")
}

/// Renders `/metrics/resource` as Kubernetes' resource metrics collector does: node, then per
/// pod its containers (start time, CPU, memory) and the pod, then `resource_scrape_error`
/// (1 when the summary could not be gathered).
pub fn render_resource_metrics(s: Option<&Summary>) -> String {
    use std::fmt::Write;
    struct Family {
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        samples: Vec<String>,
    }
    let fam = |name, help, kind| Family {
        name,
        help,
        kind,
        samples: Vec::new(),
    };
    let mut container_cpu = fam(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the container in core-seconds",
        "counter",
    );
    let mut container_mem = fam(
        "container_memory_working_set_bytes",
        "Current working set of the container in bytes",
        "gauge",
    );
    let mut container_start = fam(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds",
        "gauge",
    );
    let mut node_cpu = fam(
        "node_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the node in core-seconds",
        "counter",
    );
    let mut node_mem = fam(
        "node_memory_working_set_bytes",
        "Current working set of the node in bytes",
        "gauge",
    );
    let mut pod_cpu = fam(
        "pod_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
    );
    let mut pod_mem = fam(
        "pod_memory_working_set_bytes",
        "Current working set of the pod in bytes",
        "gauge",
    );
    let mut scrape_error = fam(
        "resource_scrape_error",
        "1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
    );
    let ts = |t: &str| millis(t).map(|m| format!(" {m}")).unwrap_or_default();
    match s {
        None => scrape_error.samples.push("resource_scrape_error 1".into()),
        Some(s) => {
            if let Some(c) = &s.node.cpu
                && let Some(u) = c.usage_core_nano_seconds
            {
                node_cpu.samples.push(format!(
                    "node_cpu_usage_seconds_total {}{}",
                    num(u as f64 / 1e9),
                    ts(&c.time)
                ));
            }
            if let Some(m) = &s.node.memory
                && let Some(w) = m.working_set_bytes
            {
                node_mem.samples.push(format!(
                    "node_memory_working_set_bytes {}{}",
                    num(w as f64),
                    ts(&m.time)
                ));
            }
            for p in &s.pods {
                let (pod, ns) = (escape(&p.pod_ref.name), escape(&p.pod_ref.namespace));
                for c in &p.containers {
                    let labels = format!(
                        "{{container=\"{}\",namespace=\"{ns}\",pod=\"{pod}\"}}",
                        escape(&c.name)
                    );
                    if let Some(start) = millis(&c.start_time).filter(|m| *m > 0) {
                        container_start.samples.push(format!(
                            "container_start_time_seconds{labels} {}",
                            num(start as f64 / 1e3)
                        ));
                    }
                    if let Some(cpu) = &c.cpu
                        && let Some(u) = cpu.usage_core_nano_seconds
                    {
                        container_cpu.samples.push(format!(
                            "container_cpu_usage_seconds_total{labels} {}{}",
                            num(u as f64 / 1e9),
                            ts(&cpu.time)
                        ));
                    }
                    if let Some(m) = &c.memory
                        && let Some(w) = m.working_set_bytes
                    {
                        container_mem.samples.push(format!(
                            "container_memory_working_set_bytes{labels} {}{}",
                            num(w as f64),
                            ts(&m.time)
                        ));
                    }
                }
                let labels = format!("{{namespace=\"{ns}\",pod=\"{pod}\"}}");
                if let Some(cpu) = &p.cpu
                    && let Some(u) = cpu.usage_core_nano_seconds
                {
                    pod_cpu.samples.push(format!(
                        "pod_cpu_usage_seconds_total{labels} {}{}",
                        num(u as f64 / 1e9),
                        ts(&cpu.time)
                    ));
                }
                if let Some(m) = &p.memory
                    && let Some(w) = m.working_set_bytes
                {
                    pod_mem.samples.push(format!(
                        "pod_memory_working_set_bytes{labels} {}{}",
                        num(w as f64),
                        ts(&m.time)
                    ));
                }
            }
            scrape_error.samples.push("resource_scrape_error 0".into());
        }
    }
    // Families in name order, as the Prometheus registry gathers them.
    let mut out = String::new();
    for f in [
        container_cpu,
        container_mem,
        container_start,
        node_cpu,
        node_mem,
        pod_cpu,
        pod_mem,
        scrape_error,
    ] {
        if f.samples.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {} [STABLE] {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for s in f.samples {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

/// A label value in the exposition format (backslash, quote and newline escaped).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        let cpu = |u| {
            Some(CpuStats {
                time: "2026-12-05T16:00:00Z".into(),
                usage_nano_cores: Some(1),
                usage_core_nano_seconds: Some(u),
            })
        };
        let mem = |w| {
            Some(MemoryStats {
                time: "2026-12-05T16:00:00Z".into(),
                working_set_bytes: Some(w),
                ..Default::default()
            })
        };
        Summary {
            node: NodeStats {
                node_name: "n1".into(),
                start_time: "2026-12-05T15:00:00Z".into(),
                cpu: cpu(1_500_000_000),
                memory: mem(1 << 20),
                ..Default::default()
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "web".into(),
                    namespace: "default".into(),
                    uid: "u1".into(),
                },
                start_time: "2026-12-05T15:59:00Z".into(),
                containers: vec![ContainerStats {
                    name: "app".into(),
                    start_time: "2026-12-05T15:59:01Z".into(),
                    cpu: cpu(250_000_000),
                    memory: mem(4096),
                    rootfs: None,
                }],
                cpu: cpu(260_000_000),
                memory: mem(8192),
            }],
        }
    }

    #[test]
    fn resource_metrics_have_kubernetes_names_labels_and_timestamps() {
        let text = render_resource_metrics(Some(&summary()));
        let ts = 1_796_486_400_000_i64; // 2026-12-05T16:00:00Z
        for line in [
            "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds".to_string(),
            "# TYPE container_cpu_usage_seconds_total counter".to_string(),
            format!("container_cpu_usage_seconds_total{{container=\"app\",namespace=\"default\",pod=\"web\"}} 0.25 {ts}"),
            format!("container_memory_working_set_bytes{{container=\"app\",namespace=\"default\",pod=\"web\"}} 4096 {ts}"),
            "container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1796486341".to_string(),
            format!("node_cpu_usage_seconds_total 1.5 {ts}"),
            format!("node_memory_working_set_bytes 1048576 {ts}"),
            format!("pod_cpu_usage_seconds_total{{namespace=\"default\",pod=\"web\"}} 0.26 {ts}"),
            format!("pod_memory_working_set_bytes{{namespace=\"default\",pod=\"web\"}} 8192 {ts}"),
            "# TYPE resource_scrape_error gauge".to_string(),
            "resource_scrape_error 0".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_failed_scrape_reports_the_error_only() {
        let text = render_resource_metrics(None);
        assert_eq!(
            text,
            "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE resource_scrape_error gauge\nresource_scrape_error 1\n"
        );
    }

    #[test]
    fn summary_json_uses_the_stats_api_field_names() {
        let v = serde_json::to_value(summary()).expect("serializes");
        assert_eq!(v["node"]["nodeName"], "n1");
        assert_eq!(v["node"]["cpu"]["usageCoreNanoSeconds"], 1_500_000_000u64);
        assert_eq!(v["pods"][0]["podRef"]["namespace"], "default");
        assert_eq!(
            v["pods"][0]["containers"][0]["memory"]["workingSetBytes"],
            4096
        );
        assert!(v["pods"][0]["containers"][0].get("rootfs").is_none());
    }

    #[test]
    fn cpu_rate_is_the_average_between_samples() {
        let key = "test:rate";
        assert_eq!(rate(key, 1_000_000_000, 5_000_000_000), None);
        // 0.5 s of CPU in 2 s: half a core.
        assert_eq!(rate(key, 3_000_000_000, 5_500_000_000), Some(250_000_000));
        // A counter that went backwards (a restarted container) has no rate.
        assert_eq!(rate(key, 4_000_000_000, 1), None);
    }

    #[test]
    fn proc_stat_busy_time_skips_idle_and_iowait() {
        let stat = "cpu  100 10 50 1000 20 5 5 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n";
        assert_eq!(proc_stat_busy_ns(stat), Some(170 * 10_000_000));
    }

    #[test]
    fn memory_stat_fields() {
        let stat = "cache 10\ntotal_inactive_file 4096\ntotal_rss 100\n";
        assert_eq!(field(stat, "total_inactive_file"), Some(4096));
        assert_eq!(field("MemTotal:       16 kB\n", "MemTotal"), Some(16));
        assert_eq!(field(stat, "missing"), None);
    }

    #[test]
    fn times_are_whole_seconds_utc() {
        assert_eq!(rfc3339(1_796_486_400_123_456_789), "2026-12-05T16:00:00Z");
    }
}
