//! The resource metrics API `metrics.k8s.io/v1beta1` (NodeMetrics, PodMetrics), built into the
//! apiserver as k3s bundles metrics-server.
//!
//! As metrics-server does, a scraper fetches every node kubelet's `/metrics/resource` once per
//! [`RESOLUTION`] (through the apiserver's kubelet client) and keeps the last
//! two points of each node and container. CPU usage is the rate of the cumulative counter
//! between those two points (`window` is the time between them); memory is the latest working
//! set. A container first seen within a resolution of its start counts from its start time
//! (usage 0), so new pods have figures after one scrape. A pod is served once all its scraped
//! containers have a rate; a node or pod whose kubelet did not answer the last scrape is not
//! served.
//!
//! Served: `GET /apis/metrics.k8s.io/v1beta1/nodes[/<name>]` and
//! `…/pods`, `…/namespaces/<ns>/pods[/<name>]` with `labelSelector` and `fieldSelector`
//! (`metadata.name`, `metadata.namespace`), the labels being the Node's or Pod's own; and the
//! group's discovery entries, so `kubectl top` finds it.
//!
//! This module scrapes, keeps and answers; the apiserver hands it a narrow [`Cluster`] (list
//! nodes and pods from the watch caches, fetch a kubelet's `/metrics/resource`) and turns the
//! answer or a [`Refusal`] into the HTTP response, as `eviction` does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lotse_core::selectors::{FieldSelector, LabelSelector};
use serde_json::{Value, json};
use tokio::sync::RwLock;

/// A Node or Pod as the watch cache holds it: what the metrics are served for.
pub struct Object {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (empty for a node).
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

/// Which objects a list keeps: (name, namespace, labels).
pub type Keep<'a> = &'a (dyn Fn(&str, &str, &BTreeMap<String, String>) -> bool + Sync);

/// What the metrics API reads of the cluster.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// The apiserver's error.
    type Error: Send + std::fmt::Display;
    /// The Nodes that `keep` selects.
    async fn nodes(&self, keep: Keep<'_>) -> Result<Vec<Object>, Self::Error>;
    /// The Pods of `namespace` (all namespaces when `None`) that `keep` selects.
    async fn pods(
        &self,
        namespace: Option<&str>,
        keep: Keep<'_>,
    ) -> Result<Vec<Object>, Self::Error>;
    /// The body of `node`'s kubelet `/metrics/resource`.
    async fn scrape(&self, node: &str) -> Result<String, Self::Error>;
}

/// Why a request is not answered.
#[derive(Debug)]
pub enum Refusal<E> {
    /// The cluster's error.
    Cluster(E),
    /// An unknown path (404).
    NoSuchResource,
    /// 405 `MethodNotAllowed` with this message.
    MethodNotAllowed(String),
    /// 400 with this message (a malformed selector).
    BadRequest(String),
    /// The named Node (`nodes`) or Pod (`pods`) does not exist (404).
    NotFound {
        /// `nodes` or `pods`.
        resource: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The object exists but has no metrics: 404 for `nodemetrics`/`podmetrics` of [`GROUP`].
    NoMetrics {
        /// `nodemetrics` or `podmetrics`.
        resource: &'static str,
        /// The name asked for.
        name: String,
    },
}

/// A request under `/apis/metrics.k8s.io/v1beta1/` (not its discovery, `rest` not empty).
pub struct Request<'a> {
    /// The HTTP method (`GET`, …).
    pub method: &'a str,
    /// The path after the version.
    pub rest: &'a [&'a str],
    /// `?watch=true`.
    pub watch: bool,
    /// `?labelSelector`.
    pub label_selector: &'a str,
    /// `?fieldSelector`.
    pub field_selector: &'a str,
    /// Whether a Table is asked for.
    pub as_table: bool,
    /// `?includeObject` of a Table.
    pub include_object: Option<&'a str>,
}

/// The API group.
pub const GROUP: &str = "metrics.k8s.io";
/// The served version.
pub const VERSION: &str = "v1beta1";
/// How often kubelets are scraped (k3s runs metrics-server with `--metric-resolution=15s`).
pub const RESOLUTION: Duration = Duration::from_secs(15);
/// How long one kubelet scrape may take (metrics-server's default kubelet request timeout).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// (plural, kind, namespaced, singular) of the served resources.
const RESOURCES: &[(&str, &str, bool, &str)] = &[
    ("nodes", "NodeMetrics", false, ""),
    ("pods", "PodMetrics", true, ""),
];

/// One cumulative CPU sample.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuPoint {
    /// Sample time, milliseconds since the epoch.
    ms: i64,
    /// Cumulative core-seconds.
    seconds: f64,
}

/// The last two points of a node or container and its memory.
#[derive(Clone, Debug, Default, PartialEq)]
struct Series {
    prev: Option<CpuPoint>,
    last: Option<CpuPoint>,
    /// Working set bytes and its time (ms).
    memory: Option<(u64, i64)>,
}

/// A usage figure: nanocores over `window_ms` ending at `ms`, and memory bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Usage {
    ms: i64,
    window_ms: i64,
    nanocores: u64,
    memory: u64,
}

impl Series {
    fn usage(&self) -> Option<Usage> {
        let (prev, last) = (self.prev?, self.last?);
        let window_ms = last.ms - prev.ms;
        if window_ms <= 0 || last.seconds < prev.seconds {
            return None;
        }
        let nanocores = ((last.seconds - prev.seconds) * 1e9 / (window_ms as f64 / 1e3)) as u64;
        Some(Usage {
            ms: last.ms,
            window_ms,
            nanocores,
            memory: self.memory.map(|(b, _)| b).unwrap_or(0),
        })
    }
}

/// What the last scrape of one node gave.
#[derive(Clone, Debug, Default)]
struct NodeScrape {
    node: Series,
    /// (namespace, pod) → container → series.
    pods: BTreeMap<(String, String), BTreeMap<String, Series>>,
}

/// The metrics of every node, from the last scrapes.
#[derive(Default)]
pub struct Store {
    nodes: RwLock<HashMap<String, NodeScrape>>,
}

/// Starts the scraper: every [`RESOLUTION`], every node's kubelet.
pub fn spawn<C: Cluster + 'static>(cluster: Arc<C>, store: Arc<Store>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RESOLUTION);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            scrape_all(cluster.as_ref(), &store).await;
        }
    });
}

async fn scrape_all<C: Cluster>(cluster: &C, store: &Store) {
    let nodes = match cluster.nodes(&|_, _, _| true).await {
        Ok(n) => n.into_iter().map(|o| o.name).collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: listing nodes");
            return;
        }
    };
    let scrapes = futures::future::join_all(nodes.iter().map(|n| async move {
        let r = tokio::time::timeout(SCRAPE_TIMEOUT, cluster.scrape(n)).await;
        (n.clone(), r)
    }))
    .await;
    let mut all = store.nodes.write().await;
    let mut next = HashMap::new();
    for (node, r) in scrapes {
        match r {
            Ok(Ok(text)) => {
                let old = all.remove(&node).unwrap_or_default();
                next.insert(node, merge(&old, &parse(&text), now_ms()));
            }
            Ok(Err(e)) => {
                tracing::info!(%node, error = %e, "Failed to scrape node");
            }
            Err(_) => tracing::info!(%node, "Failed to scrape node: timeout"),
        }
    }
    *all = next;
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// One sample of the exposition format.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
    ms: Option<i64>,
}

/// Parses Prometheus text (`name{l="v",…} value [timestamp]` lines; comments skipped; lines
/// that do not parse are skipped — the families used here are simple gauges and counters).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &r[chars.next().map(|(i, _)| i).unwrap_or(r.len())..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let mut it = rest.split_whitespace();
    let value = it.next()?.parse().ok()?;
    let ms = it.next().and_then(|t| t.parse().ok());
    Some(Sample {
        name,
        labels,
        value,
        ms,
    })
}

/// The node's new scrape: this scrape's points, each with the previous scrape's last point as
/// its `prev`.
fn merge(old: &NodeScrape, samples: &[Sample], now: i64) -> NodeScrape {
    let mut next = NodeScrape::default();
    let mut starts: HashMap<(String, String, String), i64> = HashMap::new();
    let label = |s: &Sample, k: &str| s.labels.get(k).cloned().unwrap_or_default();
    for s in samples {
        let at = s.ms.unwrap_or(now);
        match s.name.as_str() {
            "node_cpu_usage_seconds_total" => {
                next.node.last = Some(CpuPoint {
                    ms: at,
                    seconds: s.value,
                });
            }
            "node_memory_working_set_bytes" => next.node.memory = Some((s.value as u64, at)),
            "container_start_time_seconds" => {
                starts.insert(
                    (
                        label(s, "namespace"),
                        label(s, "pod"),
                        label(s, "container"),
                    ),
                    (s.value * 1e3) as i64,
                );
            }
            "container_cpu_usage_seconds_total" | "container_memory_working_set_bytes" => {
                let series = next
                    .pods
                    .entry((label(s, "namespace"), label(s, "pod")))
                    .or_default()
                    .entry(label(s, "container"))
                    .or_default();
                if s.name.starts_with("container_cpu") {
                    series.last = Some(CpuPoint {
                        ms: at,
                        seconds: s.value,
                    });
                } else {
                    series.memory = Some((s.value as u64, at));
                }
            }
            _ => {}
        }
    }
    next.node.prev = old.node.last;
    for ((ns, pod), containers) in &mut next.pods {
        for (name, series) in containers.iter_mut() {
            let old_last = old
                .pods
                .get(&(ns.clone(), pod.clone()))
                .and_then(|c| c.get(name))
                .and_then(|s| s.last);
            let start = starts.get(&(ns.clone(), pod.clone(), name.clone()));
            series.prev = match (old_last, start, series.last) {
                // A restarted container (counter went back, or started after the old point)
                // counts from its start.
                (Some(p), Some(&st), Some(l)) if l.seconds < p.seconds || st > p.ms => {
                    Some(CpuPoint {
                        ms: st,
                        seconds: 0.0,
                    })
                }
                (Some(p), _, _) => Some(p),
                // New since the last scrape: from its start, if that was recent.
                (None, Some(&st), Some(l)) if l.ms - st <= RESOLUTION.as_millis() as i64 => {
                    Some(CpuPoint {
                        ms: st,
                        seconds: 0.0,
                    })
                }
                _ => None,
            };
        }
    }
    next
}

/// Kubernetes' canonical form of a CPU quantity given in nanocores (`250m`, `1500m`,
/// `123456n`, `2`).
pub fn cpu_quantity(nanocores: u64) -> String {
    if nanocores == 0 {
        return "0".into();
    }
    for (div, suffix) in [
        (1_000_000_000u64, ""),
        (1_000_000, "m"),
        (1_000, "u"),
        (1, "n"),
    ] {
        if nanocores.is_multiple_of(div) {
            return format!("{}{suffix}", nanocores / div);
        }
    }
    format!("{nanocores}n")
}

/// Kubernetes' canonical form of a binary-SI byte quantity (`12Mi`, `4096Ki`→`4Mi`, `1000`).
pub fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for (shift, suffix) in [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ] {
        if bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Go's `time.Duration.String()` for a duration in milliseconds (`15.012s`, `1m0s`, `500ms`).
pub fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let (sign, ms) = if ms < 0 { ("-", -ms) } else { ("", ms) };
    if ms < 1000 {
        return format!("{sign}{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, (ms / 60_000) % 60);
    let (s, frac) = ((ms / 1000) % 60, ms % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => format!("{sign}{secs}"),
        (0, m) => format!("{sign}{m}m{secs}"),
        (h, m) => format!("{sign}{h}h{m}m{secs}"),
    }
}

fn rfc3339_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The groups this module adds to `/apis`.
pub fn extra_groups() -> &'static [(&'static str, &'static str)] {
    &[(GROUP, VERSION)]
}

/// `APIResourceList` entries of `metrics.k8s.io/v1beta1`.
pub fn extra_resources(group: &str, version: &str) -> Vec<Value> {
    if group != GROUP || version != VERSION {
        return Vec::new();
    }
    RESOURCES
        .iter()
        .map(|(plural, kind, namespaced, singular)| {
            json!({"name": plural, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]})
        })
        .collect()
}

/// Aggregated-discovery entries of `metrics.k8s.io/v1beta1`.
pub fn extra_aggregated_resources(group: &str, version: &str) -> Vec<Value> {
    if group != GROUP || version != VERSION {
        return Vec::new();
    }
    RESOURCES
        .iter()
        .map(|(plural, kind, namespaced, singular)| {
            json!({
                "resource": plural,
                "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": singular,
                "verbs": ["get", "list"],
            })
        })
        .collect()
}

/// Answers a request under `/apis/metrics.k8s.io/v1beta1/` (the version checked and the
/// discovery list served by the caller).
pub async fn get<C: Cluster>(
    cluster: &C,
    store: &Store,
    req: Request<'_>,
) -> Result<Value, Refusal<C::Error>> {
    let as_table = req.as_table;
    let (namespace, resource, name) = match req.rest {
        ["nodes"] => (None, "nodes", None),
        ["nodes", n] => (None, "nodes", Some(*n)),
        ["pods"] => (None, "pods", None),
        ["namespaces", ns, "pods"] => (Some(*ns), "pods", None),
        ["namespaces", ns, "pods", n] => (Some(*ns), "pods", Some(*n)),
        _ => return Err(Refusal::NoSuchResource),
    };
    if req.method != "GET" && req.method != "HEAD" {
        let verb = req.method.to_ascii_lowercase();
        return Err(Refusal::MethodNotAllowed(format!(
            "{verb} is not supported on resources of kind \"{resource}.{GROUP}\""
        )));
    }
    if req.watch {
        return Err(Refusal::MethodNotAllowed(format!(
            "watch is not supported on resources of kind \"{resource}.{GROUP}\""
        )));
    }
    let labels =
        LabelSelector::parse(req.label_selector).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let fields =
        FieldSelector::parse(req.field_selector).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let include = req.include_object;
    let nodes = store.nodes.read().await;
    let now = now_ms();
    if resource == "nodes" {
        let items = node_items(cluster, &nodes, name, &labels, &fields, now).await?;
        return match name {
            Some(n) => {
                let mut item = items.into_iter().next().ok_or_else(|| Refusal::NoMetrics {
                    resource: "nodemetrics",
                    name: n.to_string(),
                })?;
                with_type(&mut item, "NodeMetrics");
                if as_table {
                    return Ok(table(&[item], include));
                }
                Ok(item)
            }
            None if as_table => Ok(table(&items, include)),
            None => Ok(list("NodeMetricsList", items)),
        };
    }
    let items = pod_items(cluster, &nodes, namespace, name, &labels, &fields, now).await?;
    match name {
        Some(n) => {
            let mut item = items.into_iter().next().ok_or_else(|| Refusal::NoMetrics {
                resource: "podmetrics",
                name: n.to_string(),
            })?;
            with_type(&mut item, "PodMetrics");
            if as_table {
                return Ok(table(&[item], include));
            }
            Ok(item)
        }
        None if as_table => Ok(table(&items, include)),
        None => Ok(list("PodMetricsList", items)),
    }
}

/// Nanocores of a CPU quantity as [`cpu_quantity`] writes it.
fn cpu_nanos(q: &str) -> u64 {
    let (num, mult) = match q.char_indices().last() {
        Some((i, 'n')) => (&q[..i], 1),
        Some((i, 'u')) => (&q[..i], 1_000),
        Some((i, 'm')) => (&q[..i], 1_000_000),
        _ => (q, 1_000_000_000),
    };
    num.parse::<u64>().unwrap_or(0) * mult
}

/// Bytes of a memory quantity as [`memory_quantity`] writes it.
fn bytes(q: &str) -> u64 {
    for (shift, suffix) in [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap_or(0) << shift;
        }
    }
    q.parse().unwrap_or(0)
}

/// metrics-server's Table: Name, one column per resource (cpu, memory; a pod's containers
/// summed), Window.
fn table(items: &[Value], include_object: Option<&str>) -> Value {
    let columns = json!([
        {"name": "Name", "type": "string", "format": "name", "description": "Name of the resource", "priority": 0},
        {"name": "cpu", "type": "string", "format": "quantity", "description": "", "priority": 0},
        {"name": "memory", "type": "string", "format": "quantity", "description": "", "priority": 0},
        {"name": "Window", "type": "string", "format": "duration", "description": "", "priority": 0},
    ]);
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let usages: Vec<&Value> = match item.get("containers").and_then(Value::as_array) {
                Some(cs) => cs.iter().filter_map(|c| c.get("usage")).collect(),
                None => item.get("usage").into_iter().collect(),
            };
            let get =
                |u: &&Value, k: &str| u.get(k).and_then(Value::as_str).unwrap_or("0").to_string();
            let cpu: u64 = usages.iter().map(|u| cpu_nanos(&get(u, "cpu"))).sum();
            let memory: u64 = usages.iter().map(|u| bytes(&get(u, "memory"))).sum();
            let mut row = serde_json::Map::new();
            row.insert(
                "cells".into(),
                json!([
                    item.pointer("/metadata/name")
                        .cloned()
                        .unwrap_or(Value::Null),
                    cpu_quantity(cpu),
                    memory_quantity(memory),
                    item.get("window").cloned().unwrap_or(Value::Null),
                ]),
            );
            match include_object {
                Some("None") => {}
                Some("Object") => {
                    row.insert("object".into(), item.clone());
                }
                _ => {
                    // PartialObjectMetadata, as every Table row.
                    row.insert(
                        "object".into(),
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": item.get("metadata").cloned().unwrap_or_else(|| json!({})),
                        }),
                    );
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": columns, "rows": rows})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items})
}

fn with_type(item: &mut Value, kind: &str) {
    if let Value::Object(m) = item {
        let mut out = serde_json::Map::new();
        out.insert("kind".into(), json!(kind));
        out.insert("apiVersion".into(), json!(format!("{GROUP}/{VERSION}")));
        out.extend(std::mem::take(m));
        *m = out;
    }
}

fn metadata(
    name: &str,
    namespace: Option<&str>,
    labels: &BTreeMap<String, String>,
    now: i64,
) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), json!(name));
    if let Some(ns) = namespace {
        m.insert("namespace".into(), json!(ns));
    }
    // metrics-server stamps the object's creation at the time of the request.
    m.insert("creationTimestamp".into(), json!(rfc3339_ms(now)));
    if !labels.is_empty() {
        m.insert("labels".into(), json!(labels));
    }
    Value::Object(m)
}

fn selected(
    labels: &LabelSelector,
    fields: &FieldSelector,
    name: &str,
    namespace: &str,
    obj_labels: &BTreeMap<String, String>,
) -> bool {
    labels.matches(obj_labels)
        && fields.matches(|f| match f {
            "metadata.name" => Some(name.to_string()),
            "metadata.namespace" => Some(namespace.to_string()),
            _ => None,
        })
}

async fn node_items<C: Cluster>(
    cluster: &C,
    scrapes: &HashMap<String, NodeScrape>,
    name: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
    now: i64,
) -> Result<Vec<Value>, Refusal<C::Error>> {
    let nodes = cluster
        .nodes(&|o_name, _, o_labels| {
            name.is_none_or(|n| o_name == n) && selected(labels, fields, o_name, "", o_labels)
        })
        .await
        .map_err(Refusal::Cluster)?;
    if let Some(n) = name
        && nodes.is_empty()
    {
        return Err(Refusal::NotFound {
            resource: "nodes",
            name: n.to_string(),
        });
    }
    Ok(nodes
        .iter()
        .filter_map(|o| {
            let u = scrapes.get(&o.name)?.node.usage()?;
            Some(json!({
                "metadata": metadata(&o.name, None, &o.labels, now),
                "timestamp": rfc3339_ms(u.ms),
                "window": go_duration(u.window_ms),
                "usage": {"cpu": cpu_quantity(u.nanocores), "memory": memory_quantity(u.memory)},
            }))
        })
        .collect())
}

async fn pod_items<C: Cluster>(
    cluster: &C,
    scrapes: &HashMap<String, NodeScrape>,
    namespace: Option<&str>,
    name: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
    now: i64,
) -> Result<Vec<Value>, Refusal<C::Error>> {
    let pods = cluster
        .pods(namespace, &|o_name, o_namespace, o_labels| {
            name.is_none_or(|n| o_name == n)
                && selected(labels, fields, o_name, o_namespace, o_labels)
        })
        .await
        .map_err(Refusal::Cluster)?;
    if let Some(n) = name
        && pods.is_empty()
    {
        return Err(Refusal::NotFound {
            resource: "pods",
            name: n.to_string(),
        });
    }
    let mut by_pod: HashMap<(&str, &str), &BTreeMap<String, Series>> = HashMap::new();
    for s in scrapes.values() {
        for ((ns, pod), containers) in &s.pods {
            by_pod.insert((ns.as_str(), pod.as_str()), containers);
        }
    }
    Ok(pods
        .iter()
        .filter_map(|o| {
            let containers = by_pod.get(&(o.namespace.as_str(), o.name.as_str()))?;
            // Like metrics-server: a pod is served only when every container has a rate.
            let usages: Vec<(&String, Usage)> = containers
                .iter()
                .map(|(c, s)| Some((c, s.usage()?)))
                .collect::<Option<_>>()?;
            let first = usages.first()?.1;
            let ms = usages.iter().map(|(_, u)| u.ms).max().unwrap_or(first.ms);
            let cs: Vec<Value> = usages
                .iter()
                .map(|(c, u)| {
                    json!({"name": c, "usage": {"cpu": cpu_quantity(u.nanocores), "memory": memory_quantity(u.memory)}})
                })
                .collect();
            Some(json!({
                "metadata": metadata(&o.name, Some(&o.namespace), &o.labels, now),
                "timestamp": rfc3339_ms(ms),
                "window": go_duration(first.window_ms),
                "containers": cs,
            }))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE_1: &str = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="app",namespace="default",pod="web"} 10 1000000
container_memory_working_set_bytes{container="app",namespace="default",pod="web"} 8.388608e+06 1000000
container_start_time_seconds{container="app",namespace="default",pod="web"} 900
node_cpu_usage_seconds_total 100 1000000
node_memory_working_set_bytes 1048576 1000000
resource_scrape_error 0
"#;

    fn scrape(old: &NodeScrape, cpu: f64, node_cpu: f64, ms: i64) -> NodeScrape {
        let text = format!(
            "container_cpu_usage_seconds_total{{container=\"app\",namespace=\"default\",pod=\"web\"}} {cpu} {ms}\n\
             container_memory_working_set_bytes{{container=\"app\",namespace=\"default\",pod=\"web\"}} 4096 {ms}\n\
             container_start_time_seconds{{container=\"app\",namespace=\"default\",pod=\"web\"}} 900\n\
             node_cpu_usage_seconds_total {node_cpu} {ms}\n\
             node_memory_working_set_bytes 1048576 {ms}\n"
        );
        merge(old, &parse(&text), ms)
    }

    #[test]
    fn exposition_lines_parse() {
        let s = parse(SCRAPE_1);
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].name, "container_cpu_usage_seconds_total");
        assert_eq!(s[0].labels["pod"], "web");
        assert_eq!(s[0].labels["container"], "app");
        assert_eq!((s[0].value, s[0].ms), (10.0, Some(1_000_000)));
        assert_eq!(s[1].value, 8_388_608.0);
        assert_eq!(s[2].ms, None);
        let esc = parse_line(r#"m{a="x\"y\\z",b="1"} 2"#).expect("parses");
        assert_eq!(esc.labels["a"], "x\"y\\z");
        assert_eq!(esc.labels["b"], "1");
    }

    #[test]
    fn cpu_is_the_rate_between_two_scrapes() {
        let first = scrape(&NodeScrape::default(), 10.0, 100.0, 1_000_000);
        // The node has no previous point yet; the container started long before.
        assert_eq!(first.node.usage(), None);
        assert_eq!(
            first.pods[&("default".into(), "web".into())]["app"].usage(),
            None
        );
        // 1.5 core-seconds in 15 s: 100m; the node used 15 in 15 s: one core.
        let second = scrape(&first, 11.5, 115.0, 1_015_000);
        let u = second.pods[&("default".into(), "web".into())]["app"]
            .usage()
            .expect("rate");
        assert_eq!(
            (u.nanocores, u.window_ms, u.memory),
            (100_000_000, 15_000, 4096)
        );
        assert_eq!(
            second.node.usage().map(|u| u.nanocores),
            Some(1_000_000_000)
        );
    }

    #[test]
    fn a_new_container_counts_from_its_start() {
        let text = "container_cpu_usage_seconds_total{container=\"c\",namespace=\"n\",pod=\"p\"} 2 20000\n\
                    container_start_time_seconds{container=\"c\",namespace=\"n\",pod=\"p\"} 10\n";
        let s = merge(&NodeScrape::default(), &parse(text), 20_000);
        let u = s.pods[&("n".into(), "p".into())]["c"]
            .usage()
            .expect("rate");
        // 2 core-seconds in the 10 s since its start.
        assert_eq!((u.nanocores, u.window_ms), (200_000_000, 10_000));
    }

    #[test]
    fn a_restarted_container_counts_from_its_new_start() {
        let first = scrape(&NodeScrape::default(), 50.0, 1.0, 1_000_000);
        let text = "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 1 1015000\n\
                    container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1010\n";
        let s = merge(&first, &parse(text), 1_015_000);
        let u = s.pods[&("default".into(), "web".into())]["app"]
            .usage()
            .expect("rate");
        assert_eq!((u.nanocores, u.window_ms), (200_000_000, 5_000));
    }

    #[test]
    fn quantities_are_canonical() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(2_000_000_000), "2");
        assert_eq!(cpu_quantity(1_500_000_000), "1500m");
        assert_eq!(cpu_quantity(123_456), "123456n");
        assert_eq!(cpu_quantity(123_000), "123u");
        assert_eq!(memory_quantity(4096), "4Ki");
        assert_eq!(memory_quantity(8 << 20), "8Mi");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(memory_quantity(0), "0");
    }

    #[test]
    fn tables_sum_a_pods_containers() {
        let pod = json!({
            "metadata": {"name": "web", "namespace": "default"}, "window": "15s",
            "containers": [
                {"name": "a", "usage": {"cpu": "250m", "memory": "4Mi"}},
                {"name": "b", "usage": {"cpu": "123456n", "memory": "1000"}},
            ],
        });
        let t = table(&[pod], None);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["web", "250123456n", "4195304", "15s"])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["Name", "cpu", "memory", "Window"]);
        assert_eq!(cpu_nanos("2"), 2_000_000_000);
        assert_eq!(bytes("8Mi"), 8 << 20);
    }

    #[test]
    fn windows_print_as_go_durations() {
        assert_eq!(go_duration(15_000), "15s");
        assert_eq!(go_duration(15_012), "15.012s");
        assert_eq!(go_duration(15_100), "15.1s");
        assert_eq!(go_duration(60_000), "1m0s");
        assert_eq!(go_duration(500), "500ms");
        assert_eq!(go_duration(3_723_000), "1h2m3s");
    }
}
