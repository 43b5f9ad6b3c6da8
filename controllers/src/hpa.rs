//! Horizontal pod autoscaler controller: kube-controller-manager's `horizontalpodautoscaling`.
//!
//! Every [`Settings::sync_period`] (15 s) each HorizontalPodAutoscaler is reconciled as
//! Kubernetes does: the target's `/scale` subresource gives the current replicas and the pod
//! selector; the resource metrics API (`metrics.k8s.io`, read through the API like every
//! client) gives the pods' usage; the replica calculator ([`resource_replicas`]) proposes a
//! count within the [`Settings::tolerance`] (0.1), handling unready pods and pods without
//! metrics as Kubernetes does; the proposal is normalized — stabilization (300 s for scale-down
//! by default, or the `behavior` windows), the `behavior` policies or the legacy scale-up limit,
//! min/max — and written to `/scale`. Conditions `AbleToScale`, `ScalingActive` and
//! `ScalingLimited`, events (`SuccessfulRescale`, `FailedGetScale`, `FailedGetResourceMetric`,
//! `FailedComputeMetricsReplicas`, …) and messages are worded as Kubernetes words them.
//!
//! Resource metrics (`Resource` and `ContainerResource`, utilization and average value) are
//! supported; `Pods`, `Object` and `External` metrics need a custom or external metrics API,
//! which Lotse does not serve: the controller asks the apiserver as Kubernetes' metrics clients
//! do and reports the missing API as Kubernetes does (`ScalingActive=False` with
//! `FailedGetPodsMetric`, `FailedGetObjectMetric` or `FailedGetExternalMetric`, the event, and
//! `FailedComputeMetricsReplicas`).
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, MetricSpec,
    MetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::Error;
use crate::events::{EventType, Recorder};

const COMPONENT: &str = "horizontal-pod-autoscaler";

/// The controller's tunables, with kube-controller-manager's defaults
/// (`--horizontal-pod-autoscaler-*` flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often every HPA is reconciled (`sync-period`, 15 s).
    pub sync_period: Duration,
    /// Ratios within this distance of 1 do not scale (`tolerance`, 0.1).
    pub tolerance: f64,
    /// Scale-down stabilization without `behavior` (`downscale-stabilization`, 5 min).
    pub downscale_stabilization: Duration,
    /// After its start a pod's CPU may be unreliable this long (`cpu-initialization-period`).
    pub cpu_initialization_period: Duration,
    /// A pod unready this long after its start never became ready
    /// (`initial-readiness-delay`, 30 s).
    pub initial_readiness_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sync_period: Duration::from_secs(15),
            tolerance: 0.1,
            downscale_stabilization: Duration::from_secs(300),
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// Kubernetes' legacy scale-up limit without `behavior`: at most ×2, at least 4.
const SCALE_UP_LIMIT_FACTOR: f64 = 2.0;
const SCALE_UP_LIMIT_MINIMUM: f64 = 4.0;

/// What the replica calculator knows about one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    /// Name.
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    /// Being deleted.
    pub deleting: bool,
    /// The Ready condition: (status is True, last transition, seconds since the epoch).
    pub ready: Option<(bool, i64)>,
    /// `status.startTime`, seconds since the epoch.
    pub start_time: Option<i64>,
    /// Sum of the selected containers' requests of the resource (milli-units), or the error
    /// Kubernetes reports for a container without one.
    pub request: Result<i64, String>,
}

/// One pod's usage from the metrics API.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodMetric {
    /// Usage in milli-units.
    pub value: i64,
    /// The sample's end, seconds since the epoch.
    pub timestamp: i64,
    /// The sample's window, seconds.
    pub window: i64,
}

/// A replica proposal from one resource metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Proposed replicas.
    pub replicas: i32,
    /// Current utilization in percent of requests (utilization targets).
    pub utilization: i32,
    /// Current average usage per pod, milli-units.
    pub raw: i64,
}

/// How [`group_pods`] sorted the pods.
struct Groups {
    ready: usize,
    unready: HashSet<String>,
    missing: HashSet<String>,
    ignored: HashSet<String>,
}

/// `groupPods`: deleted and failed pods are ignored; pending ones unready; pods without a
/// metric missing; for CPU, a pod whose sample may predate its readiness is unready.
fn group_pods(
    pods: &[PodInfo],
    metrics: &HashMap<String, PodMetric>,
    resource: &str,
    now: i64,
    s: &Settings,
) -> Groups {
    let mut g = Groups {
        ready: 0,
        unready: HashSet::new(),
        missing: HashSet::new(),
        ignored: HashSet::new(),
    };
    let init = s.cpu_initialization_period.as_secs() as i64;
    let delay = s.initial_readiness_delay.as_secs() as i64;
    for p in pods {
        if p.deleting || p.phase == "Failed" {
            g.ignored.insert(p.name.clone());
            continue;
        }
        if p.phase == "Pending" {
            g.unready.insert(p.name.clone());
            continue;
        }
        let Some(m) = metrics.get(&p.name) else {
            g.missing.insert(p.name.clone());
            continue;
        };
        if resource == "cpu" {
            let unready = match (p.ready, p.start_time) {
                (Some((ready, transition)), Some(start)) => {
                    if start + init > now {
                        !ready || m.timestamp < transition + m.window
                    } else {
                        !ready && start + delay > transition
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(p.name.clone());
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// `GetResourceUtilizationRatio`: (usage ratio, utilization %, average raw usage).
fn utilization_ratio(
    metrics: &HashMap<String, PodMetric>,
    requests: &HashMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (pod, m) in metrics {
        if let Some(r) = requests.get(pod) {
            used += m.value;
            requested += r;
            n += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = (used * 100 / requested) as i32;
    Ok((
        f64::from(utilization) / f64::from(target),
        utilization,
        used / n,
    ))
}

/// Kubernetes' `GetResourceReplicas`: the replicas a utilization target asks for.
pub fn resource_replicas(
    current: i32,
    target_utilization: i32,
    resource: &str,
    pods: &[PodInfo],
    mut metrics: HashMap<String, PodMetric>,
    now: i64,
    s: &Settings,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(pods, &metrics, resource, now, s);
    metrics.retain(|k, _| !g.ignored.contains(k) && !g.unready.contains(k));
    let mut requests = HashMap::new();
    for p in pods {
        requests.insert(p.name.clone(), p.request.clone()?);
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let (ratio, utilization, raw) = utilization_ratio(&metrics, &requests, target_utilization)?;
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        raw,
    };
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if (1.0 - ratio).abs() <= s.tolerance {
            return Ok(proposal(current));
        }
        return Ok(proposal((ratio * g.ready as f64).ceil() as i32));
    }
    if !g.missing.is_empty() {
        if ratio < 1.0 {
            // On a scale-down, missing pods count as using their request (or the target when
            // it is above 100%).
            let fallback = i64::from(target_utilization.max(100));
            for pod in &g.missing {
                let r = requests.get(pod).copied().unwrap_or(0);
                metrics.insert(
                    pod.clone(),
                    PodMetric {
                        value: r * fallback / 100,
                        timestamp: now,
                        window: 0,
                    },
                );
            }
        } else if ratio > 1.0 {
            // On a scale-up, as using nothing.
            for pod in &g.missing {
                metrics.insert(
                    pod.clone(),
                    PodMetric {
                        value: 0,
                        timestamp: now,
                        window: 0,
                    },
                );
            }
        }
    }
    if scale_up_with_unready {
        for pod in &g.unready {
            metrics.insert(
                pod.clone(),
                PodMetric {
                    value: 0,
                    timestamp: now,
                    window: 0,
                },
            );
        }
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target_utilization)?;
    if (1.0 - new_ratio).abs() <= s.tolerance
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// `GetRawResourceReplicas` / `calcPlainMetricReplicas`: the replicas an average-value target
/// (milli-units per pod) asks for.
pub fn raw_resource_replicas(
    current: i32,
    target: i64,
    resource: &str,
    pods: &[PodInfo],
    mut metrics: HashMap<String, PodMetric>,
    now: i64,
    s: &Settings,
) -> Result<(i32, i64), String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(pods, &metrics, resource, now, s);
    metrics.retain(|k, _| !g.ignored.contains(k) && !g.unready.contains(k));
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let ratio_of = |m: &HashMap<String, PodMetric>| {
        let total: i64 = m.values().map(|v| v.value).sum();
        (
            total as f64 / (target as f64 * m.len() as f64),
            total / m.len() as i64,
        )
    };
    let (ratio, usage) = ratio_of(&metrics);
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if (1.0 - ratio).abs() <= s.tolerance {
            return Ok((current, usage));
        }
        return Ok(((ratio * g.ready as f64).ceil() as i32, usage));
    }
    let fill = if ratio < 1.0 { target } else { 0 };
    for pod in &g.missing {
        metrics.insert(
            pod.clone(),
            PodMetric {
                value: fill,
                timestamp: now,
                window: 0,
            },
        );
    }
    if scale_up_with_unready {
        for pod in &g.unready {
            metrics.insert(
                pod.clone(),
                PodMetric {
                    value: 0,
                    timestamp: now,
                    window: 0,
                },
            );
        }
    }
    let (new_ratio, _) = ratio_of(&metrics);
    if (1.0 - new_ratio).abs() <= s.tolerance
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok((current, usage));
    }
    Ok(((new_ratio * metrics.len() as f64).ceil() as i32, usage))
}

/// A past recommendation or scale change of one HPA.
#[derive(Clone, Copy, Debug)]
struct Timed {
    value: i32,
    at: Instant,
}

/// What the controller remembers of one HPA between syncs (Kubernetes keeps the same in
/// memory: a restarted controller starts over).
#[derive(Default, Debug)]
pub struct History {
    recommendations: Vec<Timed>,
    scale_up_events: Vec<Timed>,
    scale_down_events: Vec<Timed>,
}

/// (reason, message) of a condition.
type Why = (&'static str, &'static str);

/// The outcome of normalization: replicas and the `AbleToScale` / `ScalingLimited` reasons.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized {
    /// Replicas to scale to.
    pub replicas: i32,
    /// `AbleToScale` (True) reason and message.
    pub able: Why,
    /// `ScalingLimited`: whether limited, reason and message.
    pub limited: (bool, Why),
}

const READY_FOR_NEW_SCALE: Why = ("ReadyForNewScale", "recommended size matches current size");
const SCALE_DOWN_STABILIZED: Why = (
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent recommendation",
);
const SCALE_UP_STABILIZED: Why = (
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
);
const WITHIN_RANGE: Why = (
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);
const SCALE_UP_LIMIT: Why = (
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
);
const SCALE_DOWN_LIMIT: Why = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);
const TOO_MANY: Why = (
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
);
const TOO_FEW: Why = (
    "TooFewReplicas",
    "the desired replica count is less than the minimum replica count",
);

impl History {
    /// Kubernetes' `recordInitialRecommendation`.
    fn init(&mut self, current: i32, now: Instant) {
        if self.recommendations.is_empty() {
            self.recommendations.push(Timed {
                value: current,
                at: now,
            });
        }
    }

    /// `normalizeDesiredReplicas` (no `behavior`): the highest recommendation of the
    /// downscale window, then min, max and the legacy scale-up limit.
    pub fn normalize(
        &mut self,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        window: Duration,
        now: Instant,
    ) -> Normalized {
        let mut stabilized = desired;
        let mut old = None;
        for (i, r) in self.recommendations.iter().enumerate() {
            if now.duration_since(r.at) > window {
                old = Some(i);
            } else if r.value > stabilized {
                stabilized = r.value;
            }
        }
        let rec = Timed {
            value: desired,
            at: now,
        };
        match old {
            Some(i) => self.recommendations[i] = rec,
            None => self.recommendations.push(rec),
        }
        let able = if stabilized != desired {
            SCALE_DOWN_STABILIZED
        } else {
            READY_FOR_NEW_SCALE
        };
        let limit = (SCALE_UP_LIMIT_FACTOR * f64::from(current)).max(SCALE_UP_LIMIT_MINIMUM) as i32;
        let (maximum, why_max) = if max > limit {
            (limit, SCALE_UP_LIMIT)
        } else {
            (max, TOO_MANY)
        };
        let (replicas, why) = if stabilized < min {
            (min, TOO_FEW)
        } else if stabilized > maximum {
            (maximum, why_max)
        } else {
            (stabilized, WITHIN_RANGE)
        };
        Normalized {
            replicas,
            able,
            limited: (replicas != stabilized, why),
        }
    }

    /// `normalizeDesiredReplicasWithBehaviors`: stabilization over the `behavior` windows,
    /// then the scale-up/down policies and min/max.
    #[allow(clippy::too_many_arguments)]
    pub fn normalize_with_behavior(
        &mut self,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        up: &HPAScalingRules,
        down: &HPAScalingRules,
        now: Instant,
    ) -> Normalized {
        let up_window = up.stabilization_window_seconds.unwrap_or(0).max(0) as u64;
        let down_window = down.stabilization_window_seconds.unwrap_or(300).max(0) as u64;
        let (window, scaling_up) = if desired >= current {
            (up_window, true)
        } else {
            (down_window, false)
        };
        let obsolete = Duration::from_secs(up_window.max(down_window));
        let mut stabilized = desired;
        let mut old = None;
        for (i, r) in self.recommendations.iter().enumerate() {
            let age = now.duration_since(r.at);
            if age < Duration::from_secs(window) {
                stabilized = if scaling_up {
                    stabilized.min(r.value)
                } else {
                    stabilized.max(r.value)
                };
            }
            if age > obsolete {
                old = Some(i);
            }
        }
        let rec = Timed {
            value: desired,
            at: now,
        };
        match old {
            Some(i) => self.recommendations[i] = rec,
            None => self.recommendations.push(rec),
        }
        let able = match (stabilized != desired, scaling_up) {
            (false, _) => READY_FOR_NEW_SCALE,
            (true, true) => SCALE_UP_STABILIZED,
            (true, false) => SCALE_DOWN_STABILIZED,
        };
        let (replicas, why) = if stabilized > current {
            let limit = scale_up_limit(current, &self.scale_up_events, up, now).max(current);
            let (maximum, why) = if max > limit {
                (limit, SCALE_UP_LIMIT)
            } else {
                (max, TOO_MANY)
            };
            if stabilized > maximum {
                (maximum, why)
            } else {
                (stabilized, WITHIN_RANGE)
            }
        } else if stabilized < current {
            let limit = scale_down_limit(current, &self.scale_down_events, down, now).min(current);
            let (minimum, why) = if min < limit {
                (limit, SCALE_DOWN_LIMIT)
            } else {
                (min, TOO_FEW)
            };
            if stabilized < minimum {
                (minimum, why)
            } else {
                (stabilized, WITHIN_RANGE)
            }
        } else {
            (stabilized, WITHIN_RANGE)
        };
        Normalized {
            replicas,
            able,
            limited: (replicas != stabilized, why),
        }
    }

    /// `storeScaleEvent`: remembers a change for the policies' periods.
    fn store_scale_event(
        &mut self,
        behavior: Option<(&HPAScalingRules, &HPAScalingRules)>,
        from: i32,
        to: i32,
        now: Instant,
    ) {
        let Some((up, down)) = behavior else { return };
        let (events, rules, change) = if to > from {
            (&mut self.scale_up_events, up, to - from)
        } else {
            (&mut self.scale_down_events, down, from - to)
        };
        let longest = rules
            .policies
            .as_ref()
            .map(|p| p.iter().map(|p| p.period_seconds).max().unwrap_or(0))
            .unwrap_or(0)
            .max(0) as u64;
        events.retain(|e| now.duration_since(e.at) <= Duration::from_secs(longest));
        events.push(Timed {
            value: change,
            at: now,
        });
    }
}

fn changes_in_period(period: i32, events: &[Timed], now: Instant) -> i32 {
    let period = Duration::from_secs(period.max(0) as u64);
    events
        .iter()
        .filter(|e| now.duration_since(e.at) < period)
        .map(|e| e.value)
        .sum()
}

fn select_policy(rules: &HPAScalingRules) -> &str {
    rules.select_policy.as_deref().unwrap_or("Max")
}

/// `calculateScaleUpLimitWithScalingRules`.
fn scale_up_limit(current: i32, events: &[Timed], rules: &HPAScalingRules, now: Instant) -> i32 {
    let pick: fn(i32, i32) -> i32 = match select_policy(rules) {
        "Disabled" => return current,
        "Min" => i32::min,
        _ => i32::max,
    };
    let mut result: Option<i32> = None;
    for p in rules.policies.iter().flatten() {
        let start = current - changes_in_period(p.period_seconds, events, now);
        let proposed = if p.type_ == "Pods" {
            start + p.value
        } else {
            (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
        };
        result = Some(result.map_or(proposed, |r| pick(r, proposed)));
    }
    result.unwrap_or(0)
}

/// `calculateScaleDownLimitWithBehaviors`.
fn scale_down_limit(current: i32, events: &[Timed], rules: &HPAScalingRules, now: Instant) -> i32 {
    let pick: fn(i32, i32) -> i32 = match select_policy(rules) {
        "Disabled" => return current,
        "Min" => i32::max,
        _ => i32::min,
    };
    let mut result: Option<i32> = None;
    for p in rules.policies.iter().flatten() {
        let start = current + changes_in_period(p.period_seconds, events, now);
        let proposed = if p.type_ == "Pods" {
            start - p.value
        } else {
            (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32
        };
        result = Some(result.map_or(proposed, |r| pick(r, proposed)));
    }
    result.unwrap_or(i32::MAX)
}

/// The behavior rules with Kubernetes' defaults filled in (`GenerateHPAScaleUpRules` /
/// `GenerateHPAScaleDownRules`), when the HPA has a `behavior`.
fn behavior_rules(
    hpa: &HorizontalPodAutoscaler,
    s: &Settings,
) -> Option<(HPAScalingRules, HPAScalingRules)> {
    let b = hpa.spec.as_ref()?.behavior.as_ref()?;
    let mut up = b.scale_up.clone().unwrap_or_default();
    up.stabilization_window_seconds.get_or_insert(0);
    up.select_policy.get_or_insert_with(|| "Max".into());
    if up.policies.as_ref().is_none_or(|p| p.is_empty()) {
        up.policies = serde_json::from_value(json!([
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15},
        ]))
        .ok();
    }
    let mut down = b.scale_down.clone().unwrap_or_default();
    down.stabilization_window_seconds
        .get_or_insert(s.downscale_stabilization.as_secs() as i32);
    down.select_policy.get_or_insert_with(|| "Max".into());
    if down.policies.as_ref().is_none_or(|p| p.is_empty()) {
        down.policies =
            serde_json::from_value(json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]))
                .ok();
    }
    Some((up, down))
}

/// Runs the controller until the process stops.
pub async fn run(client: Client, recorder: Recorder, s: Settings) -> Result<(), Error> {
    let mut ctl = Controller {
        client,
        recorder,
        settings: s.clone(),
        history: HashMap::new(),
        mappings: HashMap::new(),
    };
    let mut tick = tokio::time::interval(s.sync_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let api: Api<HorizontalPodAutoscaler> = Api::all(ctl.client.clone());
        let hpas = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing HorizontalPodAutoscalers");
                continue;
            }
        };
        let live: HashSet<String> = hpas.iter().map(key).collect();
        ctl.history.retain(|k, _| live.contains(k));
        for hpa in hpas {
            if let Err(e) = ctl.reconcile(hpa).await {
                tracing::info!(error = %e, "horizontal pod autoscaler sync");
            }
        }
    }
}

fn key(hpa: &HorizontalPodAutoscaler) -> String {
    format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any())
}

struct Controller {
    client: Client,
    recorder: Recorder,
    settings: Settings,
    history: HashMap<String, History>,
    /// RESTMapper cache: (apiVersion, kind) → resource.
    mappings: HashMap<(String, String), ApiResource>,
}

/// A metric's outcome: its proposal, its name in messages and its status.
struct MetricResult {
    replicas: i32,
    name: String,
    status: MetricStatus,
}

/// A metric's failure: the `ScalingActive` reason and the error.
struct MetricFailure {
    reason: &'static str,
    error: String,
}

fn set_condition(
    conditions: &mut Vec<HorizontalPodAutoscalerCondition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) {
    let status = if status { "True" } else { "False" };
    let i = match conditions.iter().position(|c| c.type_ == type_) {
        Some(i) => i,
        None => {
            conditions.push(HorizontalPodAutoscalerCondition {
                type_: type_.into(),
                ..Default::default()
            });
            conditions.len() - 1
        }
    };
    let c = &mut conditions[i];
    if c.status != status {
        c.last_transition_time = Some(crate::util::now());
    }
    c.status = status.into();
    c.reason = Some(reason.into());
    c.message = Some(message);
}

impl Controller {
    async fn mapping(&mut self, api_version: &str, kind: &str) -> Result<ApiResource, String> {
        let k = (api_version.to_string(), kind.to_string());
        if let Some(ar) = self.mappings.get(&k) {
            return Ok(ar.clone());
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, _) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| format!("no matches for kind \"{kind}\" in group \"{group}\": {e}"))?;
        self.mappings.insert(k, ar.clone());
        Ok(ar)
    }

    async fn reconcile(&mut self, mut hpa: HorizontalPodAutoscaler) -> Result<(), Error> {
        let ns = hpa.namespace().unwrap_or_default();
        let k = key(&hpa);
        let original = hpa.status.clone().unwrap_or_default();
        let mut status = original.clone();
        let mut conditions = status.conditions.clone().unwrap_or_default();
        let spec = hpa.spec.clone().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let reference = format!("{}/{}/{}", target.kind, ns, target.name);
        let now = Instant::now();

        let scale = match self
            .mapping(target.api_version.as_deref().unwrap_or(""), &target.kind)
            .await
        {
            Ok(ar) => {
                let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &ar);
                api.get_scale(&target.name)
                    .await
                    .map(|s| (s, api))
                    .map_err(|e| api_message(&e))
            }
            Err(e) => Err(e),
        };
        let (scale, scale_api) = match scale {
            Ok(s) => s,
            Err(e) => {
                self.recorder.record(
                    &hpa,
                    COMPONENT,
                    EventType::Warning,
                    "FailedGetScale",
                    e.clone(),
                );
                set_condition(
                    &mut conditions,
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    format!("the HPA controller was unable to get the target's current scale: {e}"),
                );
                status.conditions = Some(conditions);
                self.write_status(&hpa, &original, status).await?;
                return Err(Error::Invalid(format!(
                    "failed to query scale subresource for {reference}: {e}"
                )));
            }
        };
        set_condition(
            &mut conditions,
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
        );
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let history = self.history.entry(k.clone()).or_default();
        history.init(current, now);
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let mut metric_statuses: Option<Vec<MetricStatus>> = status.current_metrics.clone();
        let mut rescale = true;
        let mut reason = String::new();
        let desired;
        if current == 0 && min != 0 {
            desired = 0;
            rescale = false;
            set_condition(
                &mut conditions,
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
            );
        } else if current > max {
            reason = "Current number of replicas above Spec.MaxReplicas".into();
            desired = max;
        } else if current < min {
            reason = "Current number of replicas below Spec.MinReplicas".into();
            desired = min;
        } else {
            match self
                .compute_metrics(
                    &hpa,
                    &spec.metrics.clone().unwrap_or_default(),
                    current,
                    &selector,
                    &mut conditions,
                )
                .await
            {
                Err(e) => {
                    status.current_replicas = Some(current);
                    status.conditions = Some(conditions);
                    self.write_status(&hpa, &original, status).await?;
                    self.recorder.record(
                        &hpa,
                        COMPONENT,
                        EventType::Warning,
                        "FailedComputeMetricsReplicas",
                        e.clone(),
                    );
                    return Err(Error::Invalid(format!(
                        "failed to compute desired number of replicas based on listed metrics for {reference}: {e}"
                    )));
                }
                Ok((proposal, name, statuses)) => {
                    metric_statuses = Some(statuses);
                    if proposal > current {
                        reason = format!("{name} above target");
                    }
                    if proposal < current {
                        reason = "All metrics below target".into();
                    }
                    let history = self.history.entry(k.clone()).or_default();
                    let n = match behavior_rules(&hpa, &self.settings) {
                        None => history.normalize(
                            current,
                            proposal,
                            min,
                            max,
                            self.settings.downscale_stabilization,
                            now,
                        ),
                        Some((up, down)) => history
                            .normalize_with_behavior(current, proposal, min, max, &up, &down, now),
                    };
                    set_condition(
                        &mut conditions,
                        "AbleToScale",
                        true,
                        n.able.0,
                        n.able.1.into(),
                    );
                    set_condition(
                        &mut conditions,
                        "ScalingLimited",
                        n.limited.0,
                        n.limited.1.0,
                        n.limited.1.1.into(),
                    );
                    desired = n.replicas;
                    rescale = desired != current;
                }
            }
        }
        if rescale {
            let patch = Patch::Merge(json!({"spec": {"replicas": desired}}));
            if let Err(e) = scale_api
                .patch_scale(&target.name, &PatchParams::default(), &patch)
                .await
            {
                let msg = api_message(&e);
                self.recorder.record(
                    &hpa,
                    COMPONENT,
                    EventType::Warning,
                    "FailedRescale",
                    format!("New size: {desired}; reason: {reason}; error: {msg}"),
                );
                set_condition(
                    &mut conditions,
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    format!("the HPA controller was unable to update the target scale: {msg}"),
                );
                status.current_replicas = Some(current);
                status.conditions = Some(conditions);
                self.write_status(&hpa, &original, status).await?;
                return Err(Error::Invalid(format!(
                    "failed to rescale {reference}: {msg}"
                )));
            }
            set_condition(
                &mut conditions,
                "AbleToScale",
                true,
                "SucceededRescale",
                format!("the HPA controller was able to update the target scale to {desired}"),
            );
            self.recorder.record(
                &hpa,
                COMPONENT,
                EventType::Normal,
                "SuccessfulRescale",
                format!("New size: {desired}; reason: {reason}"),
            );
            let behavior = behavior_rules(&hpa, &self.settings);
            if let Some(h) = self.history.get_mut(&k) {
                h.store_scale_event(
                    behavior.as_ref().map(|(u, d)| (u, d)),
                    current,
                    desired,
                    now,
                );
            }
            tracing::info!(hpa = %k, old = current, new = desired, %reason, "Successful rescale");
            status.last_scale_time = Some(crate::util::now());
        }
        status.current_replicas = Some(current);
        status.desired_replicas = if rescale { desired } else { current };
        status.current_metrics = metric_statuses.filter(|m| !m.is_empty());
        status.conditions = Some(conditions);
        hpa.status = Some(status.clone());
        self.write_status(&hpa, &original, status).await
    }

    async fn write_status(
        &self,
        hpa: &HorizontalPodAutoscaler,
        original: &k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerStatus,
        status: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerStatus,
    ) -> Result<(), Error> {
        if &status == original {
            return Ok(());
        }
        let api: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.client.clone(), &hpa.namespace().unwrap_or_default());
        let mut body = serde_json::to_value(&status)?;
        // A merge patch removes what the new status no longer has.
        if let Value::Object(m) = &mut body {
            for f in [
                "currentMetrics",
                "lastScaleTime",
                "conditions",
                "observedGeneration",
            ] {
                m.entry(f).or_insert(Value::Null);
            }
        }
        if let Err(e) = api
            .patch_status(
                &hpa.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": body})),
            )
            .await
        {
            self.recorder.record(
                hpa,
                COMPONENT,
                EventType::Warning,
                "FailedUpdateStatus",
                api_message(&e),
            );
            return Err(Error::Kube(e));
        }
        Ok(())
    }

    /// `computeReplicasForMetrics`: the highest proposal of the valid metrics.
    async fn compute_metrics(
        &mut self,
        hpa: &HorizontalPodAutoscaler,
        specs: &[MetricSpec],
        current: i32,
        selector: &str,
        conditions: &mut Vec<HorizontalPodAutoscalerCondition>,
    ) -> Result<(i32, String, Vec<MetricStatus>), String> {
        if selector.is_empty() {
            let msg = "selector is required".to_string();
            self.recorder.record(
                hpa,
                COMPONENT,
                EventType::Warning,
                "SelectorRequired",
                msg.clone(),
            );
            set_condition(
                conditions,
                "ScalingActive",
                false,
                "InvalidSelector",
                "the HPA target's scale is missing a selector".into(),
            );
            return Err(msg);
        }
        let ns = hpa.namespace().unwrap_or_default();
        let mut statuses = Vec::new();
        let (mut replicas, mut name) = (0, String::new());
        let mut invalid = 0;
        let mut first: Option<MetricFailure> = None;
        let mut first_wrapped = String::new();
        for spec in specs {
            match self.compute_metric(&ns, spec, current, selector).await {
                Ok(r) => {
                    statuses.push(r.status);
                    if replicas == 0 || r.replicas > replicas {
                        replicas = r.replicas;
                        name = r.name;
                    }
                }
                Err(f) => {
                    statuses.push(MetricStatus {
                        type_: String::new(),
                        ..Default::default()
                    });
                    let raw = f.error.clone();
                    self.recorder
                        .record(hpa, COMPONENT, EventType::Warning, f.reason, raw);
                    if first.is_none() {
                        first = Some(MetricFailure {
                            reason: f.reason,
                            error: f.error.clone(),
                        });
                        first_wrapped = wrap_error(spec, &f.error);
                    }
                    invalid += 1;
                }
            }
        }
        statuses.retain(|s| !s.type_.is_empty());
        if let Some(f) = &first
            && (invalid >= specs.len() || replicas < current)
        {
            set_condition(
                conditions,
                "ScalingActive",
                false,
                f.reason,
                format!(
                    "the HPA was unable to compute the replica count: {}",
                    f.error
                ),
            );
            return Err(format!(
                "invalid metrics ({invalid} invalid out of {}), first error is: {}",
                specs.len(),
                first_wrapped
            ));
        }
        set_condition(
            conditions,
            "ScalingActive",
            true,
            "ValidMetricFound",
            format!("the HPA was able to successfully calculate a replica count from {name}"),
        );
        Ok((replicas, name, statuses))
    }

    async fn compute_metric(
        &self,
        ns: &str,
        spec: &MetricSpec,
        current: i32,
        selector: &str,
    ) -> Result<MetricResult, MetricFailure> {
        let (resource, container, target) = match spec.type_.as_str() {
            "Resource" => match &spec.resource {
                Some(r) => (r.name.clone(), None, r.target.clone()),
                None => {
                    return Err(failure(
                        "FailedGetResourceMetric",
                        "invalid resource metric source".into(),
                    ));
                }
            },
            "ContainerResource" => match &spec.container_resource {
                Some(r) => (r.name.clone(), Some(r.container.clone()), r.target.clone()),
                None => {
                    return Err(failure(
                        "FailedGetContainerResourceMetric",
                        "invalid container resource metric source".into(),
                    ));
                }
            },
            "Pods" | "Object" | "External" => {
                return Err(self.custom_or_external(ns, spec).await);
            }
            other => {
                return Err(failure(
                    "InvalidMetricSourceType",
                    format!("unknown metric source type {other:?}"),
                ));
            }
        };
        let reason = if container.is_some() {
            "FailedGetContainerResourceMetric"
        } else {
            "FailedGetResourceMetric"
        };
        let now = jiff::Timestamp::now().as_second();
        let (pods, metrics) = self
            .pods_and_metrics(ns, selector, &resource, container.as_deref())
            .await
            .map_err(|e| failure(reason, e))?;
        let mut status = json!({"type": spec.type_});
        let key = if container.is_some() {
            "containerResource"
        } else {
            "resource"
        };
        let mut source = json!({"name": resource});
        if let Some(c) = &container {
            source["container"] = json!(c);
        }
        if let Some(avg) = &target.average_value {
            let target_milli = milli(&avg.0).map_err(|e| failure(reason, e))?;
            let (replicas, usage) = raw_resource_replicas(
                current,
                target_milli,
                &resource,
                &pods,
                metrics,
                now,
                &self.settings,
            )
            .map_err(|e| failure(reason, format!("failed to get {resource} usage: {e}")))?;
            source["current"] = json!({"averageValue": milli_quantity(usage)});
            status[key] = source;
            return Ok(MetricResult {
                replicas,
                name: format!("{resource} resource"),
                status: serde_json::from_value(status).unwrap_or_default(),
            });
        }
        let Some(target_utilization) = target.average_utilization else {
            return Err(failure(reason, "invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".into()));
        };
        let p = resource_replicas(
            current,
            target_utilization,
            &resource,
            &pods,
            metrics,
            now,
            &self.settings,
        )
        .map_err(|e| failure(reason, format!("failed to get {resource} utilization: {e}")))?;
        source["current"] =
            json!({"averageUtilization": p.utilization, "averageValue": milli_quantity(p.raw)});
        status[key] = source;
        let name = match &container {
            Some(c) => format!(
                "{resource} container resource utilization (percentage of request) in container {c}"
            ),
            None => format!("{resource} resource utilization (percentage of request)"),
        };
        Ok(MetricResult {
            replicas: p.replicas,
            name,
            status: serde_json::from_value(status).unwrap_or_default(),
        })
    }

    /// A Pods, Object or External metric: the custom metrics client's discovery of
    /// `custom.metrics.k8s.io` and the external metrics client's request, both made against the
    /// apiserver, fail (Lotse serves neither API).
    async fn custom_or_external(&self, ns: &str, spec: &MetricSpec) -> MetricFailure {
        let custom_api = match self.client.list_api_groups().await {
            Ok(g) if g.groups.iter().any(|g| g.name == "custom.metrics.k8s.io") => {
                "the server could not find the requested resource".to_string()
            }
            Ok(_) => "no custom metrics API (custom.metrics.k8s.io) registered".to_string(),
            Err(e) => format!("unable to fetch API groups: {}", api_message(&e)),
        };
        let mut external_api = String::new();
        if let Some(e) = &spec.external {
            let name = &e.metric.name;
            let path = format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{name}");
            external_api = match http::Request::get(path).body(Vec::new()) {
                Ok(req) => match self.client.request_text(req).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => format!(
                        "the server could not find the requested resource (get {name}.external.metrics.k8s.io)"
                    ),
                    Err(e) => api_message(&e),
                    Ok(_) => {
                        "no external metrics API (external.metrics.k8s.io) is supported".to_string()
                    }
                },
                Err(e) => e.to_string(),
            };
        }
        unserved_metric_failure(ns, spec, &custom_api, &external_api)
    }

    /// The selected pods and their usage from `metrics.k8s.io` (the metrics client's
    /// `GetResourceMetric`).
    async fn pods_and_metrics(
        &self,
        ns: &str,
        selector: &str,
        resource: &str,
        container: Option<&str>,
    ) -> Result<(Vec<PodInfo>, HashMap<String, PodMetric>), String> {
        let lp = ListParams::default().labels(selector);
        let ar = ApiResource {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "PodMetrics".into(),
            plural: "pods".into(),
        };
        let metrics_api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
        let list = metrics_api
            .list(&lp)
            .await
            .map_err(|e| format!("unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {}", api_message(&e)))?;
        if list.items.is_empty() {
            return Err(format!(
                "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
            ));
        }
        let metrics = pod_metrics(&list.items, resource, container);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pods = pods.list(&lp).await.map_err(|e| {
            format!(
                "unable to get pods while calculating replica count: {}",
                api_message(&e)
            )
        })?;
        Ok((
            pods.items
                .iter()
                .map(|p| pod_info(p, resource, container))
                .collect(),
            metrics,
        ))
    }
}

fn failure(reason: &'static str, error: String) -> MetricFailure {
    MetricFailure { reason, error }
}

/// A metric's error as `computeReplicasForMetric` wraps it.
fn wrap_error(spec: &MetricSpec, error: &str) -> String {
    match spec.type_.as_str() {
        "Resource" => match &spec.resource {
            Some(r) => format!("failed to get {} resource metric value: {error}", r.name),
            None => error.to_string(),
        },
        "ContainerResource" => match &spec.container_resource {
            Some(r) => format!(
                "failed to get {} container resource metric value: {error}",
                r.name
            ),
            None => error.to_string(),
        },
        "Pods" => format!("failed to get pods metric value: {error}"),
        "Object" => format!("failed to get object metric value: {error}"),
        "External" => {
            let name = spec
                .external
                .as_ref()
                .map(|e| e.metric.name.as_str())
                .unwrap_or_default();
            format!(
                "failed to get {name} external metric value: failed to get {name} external metric: {error}"
            )
        }
        _ => error.to_string(),
    }
}

/// Go's `%+v` of a `*metav1.LabelSelector` (its generated `String()`), `nil` when absent.
fn go_label_selector(
    sel: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> String {
    let Some(sel) = sel else {
        return "nil".to_string();
    };
    let labels: String = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {v},"))
        .collect();
    let exprs: String = sel
        .match_expressions
        .iter()
        .flatten()
        .map(|e| {
            let values: String = e.values.iter().flatten().map(|v| format!("{v},")).collect();
            format!(
                "LabelSelectorRequirement{{Key:{},Operator:{},Values:[]string{{{values}}},}},",
                e.key, e.operator
            )
        })
        .collect();
    format!(
        "&LabelSelector{{MatchLabels:map[string]string{{{labels}}},MatchExpressions:[]LabelSelectorRequirement{{{exprs}}},}}"
    )
}

/// The error of a Pods, Object or External metric: no custom or external metrics API is served
/// (Lotse serves none and does not proxy aggregated APIs), worded as Kubernetes' replica
/// calculator and metrics clients word it. `custom_api` is the custom metrics client's
/// discovery error; `external_api` the external metrics API's answer to the metric's request.
fn unserved_metric_failure(
    ns: &str,
    spec: &MetricSpec,
    custom_api: &str,
    external_api: &str,
) -> MetricFailure {
    match spec.type_.as_str() {
        "Pods" => {
            let name = spec
                .pods
                .as_ref()
                .map(|p| p.metric.name.as_str())
                .unwrap_or_default();
            failure(
                "FailedGetPodsMetric",
                format!(
                    "unable to get metric {name}: unable to fetch metrics from custom metrics API: {custom_api}"
                ),
            )
        }
        "Object" => {
            let Some(o) = &spec.object else {
                return failure(
                    "FailedGetObjectMetric",
                    "invalid object metric source".into(),
                );
            };
            let t = &o.target;
            if !(t.type_ == "Value" && t.value.is_some()
                || t.type_ == "AverageValue" && t.average_value.is_some())
            {
                return failure(
                    "FailedGetObjectMetric",
                    "invalid object metric source: neither a value target nor an average value target was set".into(),
                );
            }
            // `GetObjectMetricReplicas`' format string puts the object after the metric name.
            failure(
                "FailedGetObjectMetric",
                format!(
                    "unable to get metric {}: {} on {ns} {}/unable to fetch metrics from custom metrics API: {custom_api}",
                    o.metric.name, o.described_object.kind, o.described_object.name
                ),
            )
        }
        _ => {
            let Some(e) = &spec.external else {
                return failure(
                    "FailedGetExternalMetric",
                    "invalid external metric source".into(),
                );
            };
            let t = &e.target;
            if !(t.type_ == "Value" && t.value.is_some()
                || t.type_ == "AverageValue" && t.average_value.is_some())
            {
                return failure(
                    "FailedGetExternalMetric",
                    "invalid external metric source: neither a value target nor an average value target was set".into(),
                );
            }
            failure(
                "FailedGetExternalMetric",
                format!(
                    "unable to get external metric {ns}/{}/{}: unable to fetch metrics from external metrics API: {external_api}",
                    e.metric.name,
                    go_label_selector(e.metric.selector.as_ref())
                ),
            )
        }
    }
}

/// The message of an API error (the Status message), else the error itself.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Usage per pod: the sum of its containers' (or the named container's) usage; pods missing
/// the resource in any container are left out (as the metrics client does).
fn pod_metrics(
    items: &[DynamicObject],
    resource: &str,
    container: Option<&str>,
) -> HashMap<String, PodMetric> {
    let mut out = HashMap::new();
    for item in items {
        let ts = item
            .data
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
            .unwrap_or(0);
        let window = item
            .data
            .get("window")
            .and_then(Value::as_str)
            .map(parse_go_duration)
            .unwrap_or(0);
        let mut total = 0i64;
        let mut complete = true;
        let mut found = false;
        for c in item
            .data
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(want) = container
                && c.get("name").and_then(Value::as_str) != Some(want)
            {
                continue;
            }
            match c
                .pointer(&format!("/usage/{resource}"))
                .and_then(Value::as_str)
                .map(milli)
            {
                Some(Ok(v)) => {
                    total += v;
                    found = true;
                }
                _ => complete = false,
            }
        }
        if complete && found {
            out.insert(
                item.name_any(),
                PodMetric {
                    value: total,
                    timestamp: ts,
                    window,
                },
            );
        }
    }
    out
}

fn pod_info(p: &Pod, resource: &str, container: Option<&str>) -> PodInfo {
    let status = p.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            (
                c.status == "True",
                c.last_transition_time
                    .as_ref()
                    .map(|t| t.0.as_second())
                    .unwrap_or(0),
            )
        });
    let mut request = Ok(0i64);
    for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
        if let Some(want) = container
            && c.name != want
        {
            continue;
        }
        let q = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource));
        match q.map(|q| milli(&q.0)) {
            Some(Ok(v)) => {
                if let Ok(total) = &mut request {
                    *total += v;
                }
            }
            _ => {
                request = Err(format!(
                    "missing request for {resource} in container {} of Pod {}",
                    c.name,
                    p.name_any()
                ));
                break;
            }
        }
    }
    PodInfo {
        name: p.name_any(),
        phase: status.phase.clone().unwrap_or_default(),
        deleting: p.metadata.deletion_timestamp.is_some(),
        ready,
        start_time: status.start_time.as_ref().map(|t| t.0.as_second()),
        request,
    }
}

/// A quantity in milli-units (rounded up, as `MilliValue`).
fn milli(q: &str) -> Result<i64, String> {
    lotse_core::Quantity::parse(q)
        .map(|q| q.milli_value())
        .map_err(|e| e.to_string())
}

/// A milli-unit value as `resource.NewMilliQuantity(v, DecimalSI)` prints it.
fn milli_quantity(v: i64) -> String {
    if v % 1000 == 0 {
        (v / 1000).to_string()
    } else {
        format!("{v}m")
    }
}

/// Seconds of a Go duration string (`15s`, `1m0.5s`, `500ms`), rounded down.
fn parse_go_duration(s: &str) -> i64 {
    let mut total = 0f64;
    let mut num = String::new();
    let mut unit = String::new();
    let mut flush = |num: &mut String, unit: &mut String| {
        let v: f64 = num.parse().unwrap_or(0.0);
        total += v * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => 0.0,
        };
        num.clear();
        unit.clear();
    };
    for ch in s.chars() {
        if ch.is_ascii_digit() || ch == '.' {
            if !unit.is_empty() {
                flush(&mut num, &mut unit);
            }
            num.push(ch);
        } else {
            unit.push(ch);
        }
    }
    if !num.is_empty() {
        flush(&mut num, &mut unit);
    }
    total as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn pod(name: &str, request: i64) -> PodInfo {
        PodInfo {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            // Ready for long, started long ago.
            ready: Some((true, NOW - 1000)),
            start_time: Some(NOW - 2000),
            request: Ok(request),
        }
    }

    fn metrics(v: &[(&str, i64)]) -> HashMap<String, PodMetric> {
        v.iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    PodMetric {
                        value: *v,
                        timestamp: NOW - 5,
                        window: 15,
                    },
                )
            })
            .collect()
    }

    fn calc(
        current: i32,
        target: i32,
        pods: &[PodInfo],
        m: &[(&str, i64)],
    ) -> Result<Proposal, String> {
        resource_replicas(
            current,
            target,
            "cpu",
            pods,
            metrics(m),
            NOW,
            &Settings::default(),
        )
    }

    #[test]
    fn scales_up_by_the_usage_ratio() {
        // 3 pods at 90% of a 100m request against a 50% target: ceil(1.8 × 3) = 6.
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100)];
        let p = calc(3, 50, &pods, &[("a", 90), ("b", 90), ("c", 90)]).expect("proposal");
        assert_eq!(
            p,
            Proposal {
                replicas: 6,
                utilization: 90,
                raw: 90
            }
        );
    }

    #[test]
    fn scales_down_by_the_usage_ratio() {
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100), pod("d", 100)];
        let p =
            calc(4, 50, &pods, &[("a", 10), ("b", 10), ("c", 10), ("d", 10)]).expect("proposal");
        assert_eq!(p.replicas, 1);
        assert_eq!(p.utilization, 10);
    }

    #[test]
    fn a_change_within_the_tolerance_keeps_the_count() {
        let pods = [pod("a", 100), pod("b", 100)];
        // 54% against 50%: ratio 1.08, within 0.1.
        assert_eq!(
            calc(2, 50, &pods, &[("a", 54), ("b", 54)]).map(|p| p.replicas),
            Ok(2)
        );
        // 56%: ratio 1.12 scales to ceil(2.24) = 3.
        assert_eq!(
            calc(2, 50, &pods, &[("a", 56), ("b", 56)]).map(|p| p.replicas),
            Ok(3)
        );
    }

    #[test]
    fn missing_metrics_count_as_full_on_scale_down_and_zero_on_scale_up() {
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100)];
        // Scale-down: c counts as 100% → (10+10+100)/3 = 40% vs 50%: 0.8 → ceil(2.4) = 3.
        assert_eq!(
            calc(3, 50, &pods, &[("a", 10), ("b", 10)]).map(|p| p.replicas),
            Ok(3)
        );
        // Scale-up: c counts as 0% → (100+100+0)/3 = 66% vs 50% → ceil(1.33 × 3) = 4.
        assert_eq!(
            calc(3, 50, &pods, &[("a", 100), ("b", 100)]).map(|p| p.replicas),
            Ok(4)
        );
    }

    #[test]
    fn unready_pods_count_as_zero_on_scale_up() {
        let mut starting = pod("c", 100);
        starting.ready = Some((false, NOW - 10));
        starting.start_time = Some(NOW - 20);
        let pods = [pod("a", 100), pod("b", 100), starting];
        // Ready pods at 100% vs 50%; c unready counts 0 → 200/300 = 66% → ceil(1.33 × 3) = 4.
        let p = calc(3, 50, &pods, &[("a", 100), ("b", 100), ("c", 100)]).expect("proposal");
        assert_eq!(p.replicas, 4);
        assert_eq!(p.utilization, 100);
    }

    #[test]
    fn pods_without_requests_fail_with_kubernetes_wording() {
        let mut p = pod("web-1", 0);
        p.request = Err("missing request for cpu in container app of Pod web-1".into());
        assert_eq!(
            calc(1, 50, &[p], &[("web-1", 10)]),
            Err("missing request for cpu in container app of Pod web-1".into())
        );
        assert_eq!(
            calc(1, 50, &[], &[]),
            Err("no pods returned by selector while calculating replica count".into())
        );
        let failed = PodInfo {
            phase: "Failed".into(),
            ..pod("x", 100)
        };
        assert_eq!(
            calc(1, 50, &[failed], &[("x", 10)]),
            Err("did not receive metrics for targeted pods (pods might be unready)".into())
        );
    }

    #[test]
    fn average_value_targets() {
        let pods = [pod("a", 100), pod("b", 100)];
        // 300m average against 100m per pod: 3 × 2 = 6.
        let r = raw_resource_replicas(
            2,
            100,
            "cpu",
            &pods,
            metrics(&[("a", 300), ("b", 300)]),
            NOW,
            &Settings::default(),
        );
        assert_eq!(r, Ok((6, 300)));
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(300);
        let mut h = History::default();
        h.init(5, t0);
        let n = h.normalize(5, 2, 1, 10, window, t0 + Duration::from_secs(15));
        assert_eq!(n.replicas, 5);
        assert_eq!(n.able.0, "ScaleDownStabilized");
        let n = h.normalize(5, 2, 1, 10, window, t0 + Duration::from_secs(320));
        assert_eq!(n.replicas, 2);
        assert_eq!(n.able.0, "ReadyForNewScale");
    }

    #[test]
    fn legacy_scale_up_is_limited_to_double_or_four() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.init(1, t0);
        let n = h.normalize(1, 10, 1, 20, Duration::from_secs(300), t0);
        assert_eq!(n.replicas, 4);
        assert_eq!(n.limited, (true, SCALE_UP_LIMIT));
        let n = h.normalize(4, 30, 1, 20, Duration::from_secs(300), t0);
        assert_eq!(n.replicas, 8);
        let n = h.normalize(8, 30, 1, 10, Duration::from_secs(300), t0);
        assert_eq!((n.replicas, n.limited), (10, (true, TOO_MANY)));
    }

    fn rules(window: i32, policies: Value, select: &str) -> HPAScalingRules {
        HPAScalingRules {
            stabilization_window_seconds: Some(window),
            select_policy: Some(select.into()),
            policies: serde_json::from_value(policies).ok(),
            ..Default::default()
        }
    }

    #[test]
    fn behavior_policies_limit_the_rate() {
        let t0 = Instant::now();
        let up = rules(
            0,
            json!([{"type": "Pods", "value": 1, "periodSeconds": 60}]),
            "Max",
        );
        let down = rules(
            0,
            json!([{"type": "Percent", "value": 50, "periodSeconds": 60}]),
            "Max",
        );
        let mut h = History::default();
        h.init(2, t0);
        let n = h.normalize_with_behavior(2, 6, 1, 10, &up, &down, t0);
        assert_eq!((n.replicas, n.limited), (3, (true, SCALE_UP_LIMIT)));
        h.store_scale_event(Some((&up, &down)), 2, 3, t0);
        // Within the same 60 s period the one pod is used up.
        let n = h.normalize_with_behavior(3, 6, 1, 10, &up, &down, t0 + Duration::from_secs(10));
        assert_eq!(n.replicas, 3);
        // After the period, one more.
        let n = h.normalize_with_behavior(3, 6, 1, 10, &up, &down, t0 + Duration::from_secs(61));
        assert_eq!(n.replicas, 4);
        // Down by at most half: 4 → 2.
        let n = h.normalize_with_behavior(4, 1, 1, 10, &up, &down, t0 + Duration::from_secs(200));
        assert_eq!((n.replicas, n.limited), (2, (true, SCALE_DOWN_LIMIT)));
        let disabled = rules(
            0,
            json!([{"type": "Pods", "value": 1, "periodSeconds": 60}]),
            "Disabled",
        );
        let n =
            h.normalize_with_behavior(4, 1, 1, 10, &up, &disabled, t0 + Duration::from_secs(300));
        assert_eq!(n.replicas, 4);
    }

    #[test]
    fn behavior_stabilization_uses_the_window_of_the_direction() {
        let t0 = Instant::now();
        let up = rules(
            0,
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15}]),
            "Max",
        );
        let down = rules(
            30,
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
            "Max",
        );
        let mut h = History::default();
        h.init(4, t0);
        let n = h.normalize_with_behavior(4, 1, 1, 10, &up, &down, t0 + Duration::from_secs(10));
        assert_eq!((n.replicas, n.able.0), (4, "ScaleDownStabilized"));
        let n = h.normalize_with_behavior(4, 1, 1, 10, &up, &down, t0 + Duration::from_secs(45));
        assert_eq!(n.replicas, 1);
    }

    #[test]
    fn durations_and_quantities() {
        assert_eq!(parse_go_duration("15s"), 15);
        assert_eq!(parse_go_duration("1m0.5s"), 60);
        assert_eq!(parse_go_duration("500ms"), 0);
        assert_eq!(milli("250m"), Ok(250));
        assert_eq!(milli("1"), Ok(1000));
        assert_eq!(milli("123456n"), Ok(1));
        assert_eq!(milli_quantity(250), "250m");
        assert_eq!(milli_quantity(2000), "2");
    }

    #[test]
    fn pod_metrics_sum_containers() {
        let item: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "timestamp": "2026-12-05T16:00:00Z", "window": "15s",
            "containers": [
                {"name": "a", "usage": {"cpu": "100m", "memory": "1Mi"}},
                {"name": "b", "usage": {"cpu": "50m", "memory": "1Mi"}},
            ],
        }))
        .expect("object");
        let m = pod_metrics(std::slice::from_ref(&item), "cpu", None);
        assert_eq!(m["p"].value, 150);
        assert_eq!(m["p"].window, 15);
        let m = pod_metrics(std::slice::from_ref(&item), "cpu", Some("b"));
        assert_eq!(m["p"].value, 50);
    }

    fn spec(v: Value) -> MetricSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pods_object_and_external_metrics_fail_as_without_their_apis() {
        let custom = "no custom metrics API (custom.metrics.k8s.io) registered";
        let external =
            "the server could not find the requested resource (get queue.external.metrics.k8s.io)";
        let pods = spec(json!({"type": "Pods", "pods": {"metric": {"name": "rps"},
            "target": {"type": "AverageValue", "averageValue": "10"}}}));
        let f = unserved_metric_failure("default", &pods, custom, external);
        assert_eq!(f.reason, "FailedGetPodsMetric");
        assert_eq!(
            f.error,
            "unable to get metric rps: unable to fetch metrics from custom metrics API: no custom metrics API (custom.metrics.k8s.io) registered"
        );
        assert_eq!(
            wrap_error(&pods, &f.error),
            format!("failed to get pods metric value: {}", f.error)
        );
        let object = spec(
            json!({"type": "Object", "object": {"metric": {"name": "hits"},
            "describedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "main"},
            "target": {"type": "Value", "value": "2k"}}}),
        );
        let f = unserved_metric_failure("default", &object, custom, external);
        assert_eq!(f.reason, "FailedGetObjectMetric");
        assert_eq!(
            f.error,
            "unable to get metric hits: Ingress on default main/unable to fetch metrics from custom metrics API: no custom metrics API (custom.metrics.k8s.io) registered"
        );
        let ext = spec(
            json!({"type": "External", "external": {"metric": {"name": "queue",
            "selector": {"matchLabels": {"type": "prometheus"}}},
            "target": {"type": "AverageValue", "averageValue": "30"}}}),
        );
        let f = unserved_metric_failure("default", &ext, custom, external);
        assert_eq!(f.reason, "FailedGetExternalMetric");
        assert_eq!(
            f.error,
            "unable to get external metric default/queue/&LabelSelector{MatchLabels:map[string]string{type: prometheus,},MatchExpressions:[]LabelSelectorRequirement{},}: unable to fetch metrics from external metrics API: the server could not find the requested resource (get queue.external.metrics.k8s.io)"
        );
        assert!(
            wrap_error(&ext, &f.error)
                .starts_with("failed to get queue external metric value: failed to get queue external metric: unable to get external metric default/queue/&LabelSelector")
        );
        let no_sel = spec(
            json!({"type": "External", "external": {"metric": {"name": "queue"},
            "target": {"type": "Value", "value": "1"}}}),
        );
        assert!(
            unserved_metric_failure("ns", &no_sel, custom, external)
                .error
                .starts_with("unable to get external metric ns/queue/nil: ")
        );
        let bad = spec(
            json!({"type": "External", "external": {"metric": {"name": "queue"},
            "target": {"type": "Utilization", "averageUtilization": 5}}}),
        );
        assert_eq!(
            unserved_metric_failure("ns", &bad, custom, external).error,
            "invalid external metric source: neither a value target nor an average value target was set"
        );
    }
}
