//! Job controller: runs pods until `completions` succeed (at most `parallelism` at a time),
//! fails the Job after `backoffLimit` failed pods or `activeDeadlineSeconds`, sets the
//! `Complete` / `Failed` conditions and deletes finished Jobs after `ttlSecondsAfterFinished`.
//!
//! `completionMode: Indexed` Jobs run one pod per index `0..completions` (annotation and label
//! `batch.kubernetes.io/job-completion-index`, env `JOB_COMPLETION_INDEX`, hostname
//! `<job>-<index>`), record `status.completedIndexes` and, with `backoffLimitPerIndex`,
//! `status.failedIndexes`. Failed pods are judged by `podFailurePolicy` (FailJob, FailIndex,
//! Ignore, Count) before they count toward the limits.
use std::sync::Arc;
use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, PodFailurePolicy};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::util;

const COMPONENT: &str = "job-controller";
const INDEXED: &str = "Indexed";
/// Annotation (and label) holding a pod's completion index in an Indexed Job.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Annotation holding how often the pod's index failed before it was created.
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// Longest `generateName` prefix the apiserver keeps (63 minus the 5 random characters).
const MAX_GENERATED_NAME_LENGTH: usize = 58;

type Ctx = util::Context;

/// Runs the Job controller until its watch streams end.
pub async fn run(client: Client, recorder: Recorder) -> Result<(), Error> {
    util::run_owning::<Job, Pod, _>(client, recorder, reconcile, "job", Duration::from_secs(2))
        .await
}

/// How many pods should be running: `parallelism`, capped by the completions still missing.
pub fn wanted_active(parallelism: i32, completions: Option<i32>, succeeded: i32) -> i32 {
    match completions {
        Some(c) => parallelism.min(c - succeeded).max(0),
        // Without completions, the first success ends the Job; until then run `parallelism`.
        None if succeeded > 0 => 0,
        None => parallelism.max(0),
    }
}

fn finished(status: &JobStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(util::now()),
        last_transition_time: Some(util::now()),
    }
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    if util::is_deleting(job.as_ref()) {
        return Ok(Action::await_change());
    }
    let spec = job
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid("job without spec".into()))?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let old = job.status.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();

    if finished(&old).is_some() {
        if let (Some(ttl), Some(done)) = (
            spec.ttl_seconds_after_finished,
            old.completion_time.as_ref().or(old
                .conditions
                .iter()
                .flatten()
                .last()
                .and_then(|c| c.last_transition_time.as_ref())),
        ) {
            let left = done.0.as_second() + i64::from(ttl) - now.as_second();
            if left > 0 {
                return Ok(Action::requeue(Duration::from_secs(left as u64)));
            }
            match jobs.delete(&name, &DeleteParams::foreground()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Action::await_change());
    }

    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| util::controller_ref(p).is_some_and(|r| r.uid == uid))
        .collect();
    let indexed = spec.completion_mode.as_deref() == Some(INDEXED);
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let per_index_limit = spec.backoff_limit_per_index.filter(|_| indexed);
    let start = old.start_time.clone().unwrap_or_else(util::now);

    let tally = tally_pods(&spec, &pods);
    let mut active: Vec<&Pod> = pods.iter().filter(|p| util::is_pod_active(p)).collect();
    // Indexed Jobs: the indexes done so far (kept in status, so deleted pods still count) and,
    // with backoffLimitPerIndex, the indexes that ran out of retries.
    let mut completed = BTreeSet::new();
    let mut failed_indexes = BTreeSet::new();
    let mut redundant: Vec<&Pod> = Vec::new();
    if indexed {
        let c = completions.unwrap_or(0);
        completed = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""), c);
        completed.extend(tally.succeeded_indexes.iter().filter(|ix| **ix < c));
        if let Some(limit) = per_index_limit {
            failed_indexes = parse_indexes(old.failed_indexes.as_deref().unwrap_or(""), c);
            for (ix, n) in &tally.index_failures {
                if *n > limit && *ix < c {
                    failed_indexes.insert(*ix);
                }
            }
            failed_indexes.extend(tally.failed_by_policy.iter().filter(|ix| **ix < c));
            failed_indexes.retain(|ix| !completed.contains(ix));
        }
        let (keep, extra) = split_active_by_index(active, c, &completed, &failed_indexes);
        active = keep;
        redundant = extra;
    }
    let succeeded = if indexed {
        completed.len() as i32
    } else {
        tally.succeeded
    };
    let failed = tally.failed;

    let mut status = JobStatus {
        start_time: Some(start.clone()),
        active: Some((active.len() + redundant.len()) as i32),
        succeeded: Some(succeeded),
        failed: Some(failed),
        ready: Some(
            active
                .iter()
                .chain(redundant.iter())
                .filter(|p| util::is_pod_ready(p))
                .count() as i32,
        ),
        conditions: old.conditions.clone(),
        completed_indexes: (indexed && !completed.is_empty()).then(|| format_indexes(&completed)),
        failed_indexes: per_index_limit.map(|_| format_indexes(&failed_indexes)),
        ..Default::default()
    };
    let deadline_hit = spec
        .active_deadline_seconds
        .is_some_and(|d| start.0.as_second() + d <= now.as_second());
    let all_indexes_done =
        indexed && (completed.len() + failed_indexes.len()) as i32 >= completions.unwrap_or(0);
    let failure: Option<(&str, String)> = if let Some(msg) = tally.fail_job.clone() {
        Some(("PodFailurePolicy", msg))
    } else if failed > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ))
    } else if spec
        .max_failed_indexes
        .is_some_and(|m| per_index_limit.is_some() && failed_indexes.len() as i32 > m)
    {
        Some((
            "MaxFailedIndexesExceeded",
            "Job has exceeded the specified maximal number of failed indexes".into(),
        ))
    } else if !failed_indexes.is_empty() && all_indexes_done {
        Some(("FailedIndexes", "Job has failed indexes".into()))
    } else if deadline_hit {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        ))
    } else {
        None
    };
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    if failure.is_some() || complete {
        for p in active.iter().chain(redundant.iter()) {
            delete_pod(&pods_api, p).await?;
        }
        status.active = Some(0);
        let conds = status.conditions.get_or_insert_with(Vec::new);
        if let Some((reason, message)) = failure {
            conds.push(condition("FailureTarget", reason, &message));
            conds.push(condition("Failed", reason, &message));
            ctx.recorder
                .record(job.as_ref(), COMPONENT, EventType::Warning, reason, message);
        } else {
            conds.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            conds.push(condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            status.completion_time = Some(util::now());
            ctx.recorder.record(
                job.as_ref(),
                COMPONENT,
                EventType::Normal,
                "Completed",
                "Job completed".into(),
            );
        }
    } else {
        // Duplicates, out-of-range indexes and indexes already settled go first.
        for p in &redundant {
            delete_pod(&pods_api, p).await?;
        }
        if spec.suspend != Some(true) {
            let settled = succeeded + failed_indexes.len() as i32;
            let want = wanted_active(parallelism, completions, settled) as usize;
            if active.len() < want {
                let count = want - active.len();
                let indexes: Vec<Option<i32>> = if indexed {
                    first_pending_indexes(
                        completions.unwrap_or(0),
                        &completed,
                        &failed_indexes,
                        active.iter().filter_map(|p| completion_index(p)),
                        count,
                    )
                    .into_iter()
                    .map(Some)
                    .collect()
                } else {
                    vec![None; count]
                };
                for ix in indexes {
                    let failures =
                        per_index_limit.map(|_| ix.and_then(|i| tally.index_failures.get(&i)));
                    let pod = pod_for(job.as_ref(), &spec, ix, failures.map(|f| *f.unwrap_or(&0)));
                    util::create_pod(&pods_api, &pod, &ctx.recorder, job.as_ref(), COMPONENT)
                        .await?;
                }
            } else if active.len() > want {
                let mut extra: Vec<&Pod> = active.clone();
                // Newest first; for Indexed Jobs the highest indexes go first.
                extra.sort_by_key(|p| {
                    std::cmp::Reverse((
                        completion_index(p),
                        p.metadata
                            .creation_timestamp
                            .as_ref()
                            .map(|t| t.0.as_second()),
                    ))
                });
                for p in extra.into_iter().take(active.len() - want) {
                    let _ = pods_api
                        .delete(&p.name_any(), &DeleteParams::background())
                        .await;
                }
            }
        }
    }
    if Some(&status) != job.status.as_ref() {
        util::patch_status(&ctx.client, job.as_ref(), &status).await?;
    }
    Ok(match spec.active_deadline_seconds {
        Some(d) => Action::requeue(Duration::from_secs(
            (start.0.as_second() + d - now.as_second()).max(1) as u64,
        )),
        None => Action::await_change(),
    })
}

async fn delete_pod(api: &Api<Pod>, pod: &Pod) -> Result<(), Error> {
    match api
        .delete(&pod.name_any(), &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What the Job's finished pods add up to.
#[derive(Debug, Default)]
struct Tally {
    /// Succeeded pods.
    succeeded: i32,
    /// Failed pods that count toward `backoffLimit` (not matched by an `Ignore` rule).
    failed: i32,
    /// Indexes of succeeded pods (Indexed Jobs).
    succeeded_indexes: BTreeSet<i32>,
    /// Counted failures per index: the failure count the failed pod was created with, plus one.
    index_failures: BTreeMap<i32, i32>,
    /// Indexes failed at once by a `FailIndex` rule.
    failed_by_policy: BTreeSet<i32>,
    /// The message of the first `FailJob` rule a failed pod matched.
    fail_job: Option<String>,
}

fn tally_pods(spec: &JobSpec, pods: &[Pod]) -> Tally {
    let mut t = Tally::default();
    let indexed = spec.completion_mode.as_deref() == Some(INDEXED);
    for p in pods {
        let ix = if indexed { completion_index(p) } else { None };
        match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => {
                t.succeeded += 1;
                t.succeeded_indexes.extend(ix);
            }
            Some("Failed") => {
                match match_failure_policy(spec.pod_failure_policy.as_ref(), p) {
                    FailureAction::Ignore => continue,
                    FailureAction::Count => {}
                    FailureAction::FailJob(msg) => {
                        t.fail_job.get_or_insert(msg);
                    }
                    FailureAction::FailIndex(_) => t.failed_by_policy.extend(ix),
                }
                t.failed += 1;
                if let Some(ix) = ix {
                    let before = p
                        .annotations()
                        .get(INDEX_FAILURE_COUNT)
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0);
                    let n = t.index_failures.entry(ix).or_insert(0);
                    *n = (*n).max(before + 1);
                }
            }
            _ => {}
        }
    }
    t
}

/// Splits the active pods of an Indexed Job into those to keep and those to delete: pods
/// without a valid index, pods of indexes already succeeded or failed, and all but one pod of
/// a duplicated index (a Ready pod, then the oldest, is kept).
fn split_active_by_index<'a>(
    active: Vec<&'a Pod>,
    completions: i32,
    completed: &BTreeSet<i32>,
    failed: &BTreeSet<i32>,
) -> (Vec<&'a Pod>, Vec<&'a Pod>) {
    let mut by_index: BTreeMap<i32, Vec<&Pod>> = BTreeMap::new();
    let mut remove = Vec::new();
    for p in active {
        match completion_index(p) {
            Some(ix) if ix < completions && !completed.contains(&ix) && !failed.contains(&ix) => {
                by_index.entry(ix).or_default().push(p)
            }
            _ => remove.push(p),
        }
    }
    let mut keep = Vec::new();
    for (_, mut group) in by_index {
        group.sort_by_key(|p| {
            (
                !util::is_pod_ready(p),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.name_any(),
            )
        });
        let mut group = group.into_iter();
        keep.extend(group.next());
        remove.extend(group);
    }
    (keep, remove)
}

/// The pod for one more run of the Job; for an Indexed Job, of index `index`, carrying the
/// index as annotation and label, `JOB_COMPLETION_INDEX` (from the label via the downward
/// API) in every container, hostname `<job>-<index>` and, with `backoffLimitPerIndex`, the
/// index's failures so far.
fn pod_for(job: &Job, spec: &JobSpec, index: Option<i32>, failures: Option<i32>) -> Pod {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let template = spec.template.clone();
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("batch.kubernetes.io/job-name", name.as_str()),
        ("controller-uid", uid.as_str()),
        ("job-name", name.as_str()),
    ] {
        labels.insert(k.into(), v.into());
    }
    let mut annotations = tmeta.annotations.unwrap_or_default();
    let mut pod_spec = template.spec;
    let mut generate_name = format!("{name}-");
    if let Some(ix) = index {
        annotations.insert(COMPLETION_INDEX.into(), ix.to_string());
        labels.insert(COMPLETION_INDEX.into(), ix.to_string());
        if let Some(f) = failures {
            annotations.insert(INDEX_FAILURE_COUNT.into(), f.to_string());
        }
        generate_name = generate_name_with_index(&name, ix);
        if let Some(ps) = pod_spec.as_mut() {
            ps.hostname = Some(format!("{name}-{ix}"));
            for c in ps
                .init_containers
                .iter_mut()
                .flatten()
                .chain(ps.containers.iter_mut())
            {
                let env = c.env.get_or_insert_with(Vec::new);
                if !env.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
                    env.push(EnvVar {
                        name: COMPLETION_INDEX_ENV.into(),
                        value: None,
                        value_from: Some(EnvVarSource {
                            field_ref: Some(ObjectFieldSelector {
                                api_version: None,
                                field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                            }),
                            ..Default::default()
                        }),
                    });
                }
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![util::owner_ref(job)]),
            ..Default::default()
        },
        spec: pod_spec,
        status: None,
    }
}

/// The index of a pod of an Indexed Job, from its `batch.kubernetes.io/job-completion-index`
/// annotation.
pub fn completion_index(pod: &Pod) -> Option<i32> {
    pod.annotations()
        .get(COMPLETION_INDEX)?
        .parse::<i32>()
        .ok()
        .filter(|ix| *ix >= 0)
}

/// `<job>-<index>-`, the job name shortened so the generated name stays within 63 characters.
pub fn generate_name_with_index(job: &str, index: i32) -> String {
    let suffix = format!("-{index}-");
    let mut prefix = job.to_string();
    let room = MAX_GENERATED_NAME_LENGTH.saturating_sub(suffix.len());
    if prefix.len() > room {
        let mut cut = room;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
    }
    prefix + &suffix
}

/// Parses an index list as `status.completedIndexes` holds it (`"0-2,4,6,7"`), keeping only
/// indexes below `completions`; malformed parts are skipped.
pub fn parse_indexes(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<i32>(), b.trim().parse::<i32>()),
            None => (part.parse::<i32>(), part.parse::<i32>()),
        };
        let (Ok(first), Ok(last)) = (first, last) else {
            tracing::info!(interval = part, "corrupted index interval, ignoring");
            continue;
        };
        set.extend(first.max(0)..=last.min(completions - 1));
    }
    set
}

/// Formats indexes as Kubernetes does: runs of three or more as `first-last`, pairs as
/// `a,b`, separated by commas (`{0,1,2,4,6,7}` is `"0-2,4,6,7"`).
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut runs: Vec<(i32, i32)> = Vec::new();
    for &ix in set {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == ix => *last = ix,
            _ => runs.push((ix, ix)),
        }
    }
    runs.iter()
        .map(|&(a, b)| match b - a {
            0 => a.to_string(),
            1 => format!("{a},{b}"),
            _ => format!("{a}-{b}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The lowest `count` indexes below `completions` that are neither completed, failed nor
/// being run by an active pod.
pub fn first_pending_indexes(
    completions: i32,
    completed: &BTreeSet<i32>,
    failed: &BTreeSet<i32>,
    active: impl IntoIterator<Item = i32>,
    count: usize,
) -> Vec<i32> {
    let active: BTreeSet<i32> = active.into_iter().collect();
    (0..completions)
        .filter(|ix| !completed.contains(ix) && !failed.contains(ix) && !active.contains(ix))
        .take(count)
        .collect()
}

/// What a failed pod means for its Job under `podFailurePolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureAction {
    /// Counts toward `backoffLimit` (no rule matched, or a `Count` rule).
    Count,
    /// Not counted (an `Ignore` rule).
    Ignore,
    /// Fails the whole Job with this message (a `FailJob` rule).
    FailJob(String),
    /// Fails the pod's index (a `FailIndex` rule), with this message.
    FailIndex(String),
}

/// Matches a failed pod against the rules in order, as Kubernetes' `matchPodFailurePolicy`:
/// the first rule whose `onExitCodes` matches a terminated (init) container with a non-zero
/// exit code, or whose `onPodConditions` matches one of the pod's conditions, decides.
pub fn match_failure_policy(policy: Option<&PodFailurePolicy>, pod: &Pod) -> FailureAction {
    let Some(policy) = policy else {
        return FailureAction::Count;
    };
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let status = pod.status.clone().unwrap_or_default();
    for (i, rule) in policy.rules.iter().enumerate() {
        let message = if let Some(req) = &rule.on_exit_codes {
            let matching = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
                .find_map(|cs| {
                    let code = cs.state.as_ref()?.terminated.as_ref()?.exit_code;
                    let named = req.container_name.as_ref().is_none_or(|n| *n == cs.name);
                    let listed = req.values.contains(&code);
                    let op = match req.operator.as_str() {
                        "In" => listed,
                        "NotIn" => !listed,
                        _ => false,
                    };
                    (named && code != 0 && op).then(|| (cs.name.clone(), code))
                });
            matching.map(|(c, code)| {
                format!(
                    "Container {c} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}",
                    rule.action
                )
            })
        } else if let Some(patterns) = &rule.on_pod_conditions {
            status.conditions.iter().flatten().find_map(|c| {
                patterns
                    .iter()
                    .any(|p| p.type_ == c.type_ && p.status == c.status)
                    .then(|| {
                        format!(
                            "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                            c.type_, rule.action
                        )
                    })
            })
        } else {
            None
        };
        let Some(message) = message else { continue };
        match rule.action.as_str() {
            "Ignore" => return FailureAction::Ignore,
            "Count" => return FailureAction::Count,
            "FailJob" => return FailureAction::FailJob(message),
            "FailIndex" => return FailureAction::FailIndex(message),
            _ => continue,
        }
    }
    FailureAction::Count
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parallelism_capped_by_remaining_completions() {
        assert_eq!(wanted_active(2, Some(3), 0), 2);
        assert_eq!(wanted_active(2, Some(3), 2), 1);
        assert_eq!(wanted_active(2, Some(3), 3), 0);
        assert_eq!(wanted_active(3, None, 0), 3);
        assert_eq!(wanted_active(3, None, 1), 0);
    }
    #[test]
    fn index_lists_compress_like_kubernetes() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7, 9, 10, 11, 12].into();
        assert_eq!(format_indexes(&set), "0-2,4,6,7,9-12");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(format_indexes(&[3].into()), "3");
        assert_eq!(parse_indexes("0-2,4,6,7,9-12", 100), set);
        // Capped at completions; malformed parts skipped.
        assert_eq!(parse_indexes("1-5,x,7", 4), [1, 2, 3].into());
        assert_eq!(parse_indexes("", 3), BTreeSet::new());
        let done: BTreeSet<i32> = [0, 2].into();
        let failed: BTreeSet<i32> = [3].into();
        assert_eq!(first_pending_indexes(6, &done, &failed, [1], 2), vec![4, 5]);
        assert_eq!(first_pending_indexes(3, &done, &failed, [], 5), vec![1]);
    }

    #[test]
    fn generate_name_keeps_index_within_limit() {
        assert_eq!(generate_name_with_index("pi", 3), "pi-3-");
        let long = "a".repeat(80);
        let g = generate_name_with_index(&long, 12);
        assert_eq!(g.len(), MAX_GENERATED_NAME_LENGTH);
        assert!(g.ends_with("-12-"));
    }

    fn failed_pod(exit: i32, conditions: &[(&str, &str)]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {
                "phase": "Failed",
                "conditions": conditions.iter().map(|(t, s)| json!({"type": t, "status": s})).collect::<Vec<_>>(),
                "containerStatuses": [{
                    "name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": exit}},
                }],
            },
        }))
        .unwrap_or_default()
    }

    fn policy(rules: serde_json::Value) -> PodFailurePolicy {
        serde_json::from_value(json!({ "rules": rules })).unwrap_or_default()
    }

    #[test]
    fn failure_policy_first_matching_rule_decides() {
        let p = policy(json!([
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [7]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}},
        ]));
        assert_eq!(
            match_failure_policy(Some(&p), &failed_pod(42, &[("DisruptionTarget", "True")])),
            FailureAction::Ignore
        );
        assert_eq!(
            match_failure_policy(Some(&p), &failed_pod(42, &[])),
            FailureAction::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            )
        );
        assert!(matches!(
            match_failure_policy(Some(&p), &failed_pod(7, &[])),
            FailureAction::FailIndex(_)
        ));
        assert_eq!(
            match_failure_policy(Some(&p), &failed_pod(3, &[])),
            FailureAction::Count
        );
        // Exit code 1 matches no rule: counted. A condition with another status does not match.
        assert_eq!(
            match_failure_policy(Some(&p), &failed_pod(1, &[("DisruptionTarget", "False")])),
            FailureAction::Count
        );
        assert_eq!(
            match_failure_policy(None, &failed_pod(42, &[])),
            FailureAction::Count
        );
        let by_condition = policy(json!([
            {"action": "FailJob", "onPodConditions": [{"type": "ConfigIssue", "status": "True"}]},
        ]));
        assert_eq!(
            match_failure_policy(
                Some(&by_condition),
                &failed_pod(1, &[("ConfigIssue", "True")])
            ),
            FailureAction::FailJob(
                "Pod ns/p has condition ConfigIssue matching FailJob rule at index 0".into()
            )
        );
    }

    fn indexed_job(extra: serde_json::Value) -> Job {
        let mut spec = json!({
            "completions": 4, "parallelism": 2, "completionMode": "Indexed",
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}},
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": "idx", "namespace": "ns", "uid": "u1"},
            "spec": spec,
        }))
        .unwrap_or_default()
    }

    #[test]
    fn indexed_pods_carry_index_env_and_hostname() {
        let job = indexed_job(json!({}));
        let spec = job.spec.clone().unwrap_or_default();
        let pod = pod_for(&job, &spec, Some(2), Some(1));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("idx-2-"));
        assert_eq!(
            pod.annotations().get(COMPLETION_INDEX).map(String::as_str),
            Some("2")
        );
        assert_eq!(
            pod.labels().get(COMPLETION_INDEX).map(String::as_str),
            Some("2")
        );
        assert_eq!(
            pod.annotations()
                .get(INDEX_FAILURE_COUNT)
                .map(String::as_str),
            Some("1")
        );
        let ps = pod.spec.unwrap_or_default();
        assert_eq!(ps.hostname.as_deref(), Some("idx-2"));
        let env = ps.containers[0].env.clone().unwrap_or_default();
        let path = env
            .iter()
            .find(|e| e.name == "JOB_COMPLETION_INDEX")
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone());
        assert_eq!(
            path.as_deref(),
            Some("metadata.labels['batch.kubernetes.io/job-completion-index']")
        );
        let plain = pod_for(&job, &spec, None, None);
        assert_eq!(plain.metadata.generate_name.as_deref(), Some("idx-"));
        assert!(plain.spec.unwrap_or_default().hostname.is_none());
    }

    fn pod_with(ix: &str, phase: &str, failures: Option<&str>, name: &str) -> Pod {
        let mut ann = json!({ COMPLETION_INDEX: ix });
        if let Some(f) = failures {
            ann[INDEX_FAILURE_COUNT] = json!(f);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "annotations": ann},
            "status": {"phase": phase},
        }))
        .unwrap_or_default()
    }

    #[test]
    fn tally_counts_failures_per_index_and_splits_duplicates() {
        let job = indexed_job(json!({"backoffLimitPerIndex": 1}));
        let spec = job.spec.clone().unwrap_or_default();
        let pods = vec![
            pod_with("0", "Succeeded", None, "a"),
            pod_with("1", "Failed", Some("0"), "b"),
            pod_with("1", "Failed", Some("1"), "c"),
            pod_with("2", "Running", None, "d"),
            pod_with("2", "Running", None, "e"),
            pod_with("9", "Running", None, "f"),
        ];
        let t = tally_pods(&spec, &pods);
        assert_eq!((t.succeeded, t.failed), (1, 2));
        assert_eq!(t.succeeded_indexes, [0].into());
        assert_eq!(t.index_failures.get(&1), Some(&2));
        let active: Vec<&Pod> = pods.iter().filter(|p| util::is_pod_active(p)).collect();
        let (keep, remove) = split_active_by_index(active, 4, &[0].into(), &[1].into());
        let names = |v: &[&Pod]| v.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(names(&keep), vec!["d"]);
        assert_eq!(names(&remove), vec!["f", "e"]);
    }
}
