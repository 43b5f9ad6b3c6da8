//! CronJob controller (Kubernetes' cronjob_controllerv2): creates a Job for each schedule time
//! that has come, named `<cronjob>-<scheduled time in minutes since the epoch>` so that a time
//! is never run twice, honours `concurrencyPolicy` (Allow, Forbid, Replace), `suspend` and
//! `startingDeadlineSeconds`, keeps `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime`, deletes finished Jobs beyond the history limits, and requeues itself
//! for the next schedule time (plus 100 ms, as Kubernetes, against clock skew).
//!
//! Schedules are read as Kubernetes reads them (robfig/cron's standard syntax, in `timeZone` or
//! the controller's local zone) by the `cron-schedule` crate.
use std::sync::Arc;
use std::time::Duration;

use cron_schedule::Schedule;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::util;

const COMPONENT: &str = "cronjob-controller";
/// Annotation on each created Job: its scheduled time (RFC 3339, in the CronJob's zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Requeue padding after a schedule time (Kubernetes' `nextScheduleDelta`).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);
/// More missed start times than this are not replayed but reported (`TooManyMissedTimes`).
const MANY_MISSED: i64 = 100;

type Ctx = util::Context;

/// Runs the CronJob controller until its watch streams end.
pub async fn run(client: Client, recorder: Recorder) -> Result<(), Error> {
    util::run_owning::<CronJob, Job, _>(
        client,
        recorder,
        reconcile,
        "cronjob",
        Duration::from_secs(5),
    )
    .await
}

/// How many schedule times were missed since the last one run (Kubernetes' `missedSchedulesType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missed {
    /// None.
    None,
    /// Some, at most [`MANY_MISSED`].
    Few,
    /// More than [`MANY_MISSED`]: the controller reports them instead of replaying them.
    Many,
}

/// What the schedule arithmetic needs to know about a CronJob.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// `metadata.creationTimestamp`.
    pub created: Timestamp,
    /// `status.lastScheduleTime`.
    pub last_schedule: Option<Timestamp>,
    /// `spec.startingDeadlineSeconds`.
    pub starting_deadline: Option<i64>,
}

/// Kubernetes' `mostRecentScheduleTime`: the time counted from (last schedule or creation,
/// moved up to `now - startingDeadlineSeconds` when `with_deadline`), the most recent schedule
/// time that has come (or none), and how many were missed. Errors for schedules whose two next
/// times are less than a second apart (a schedule that never fires).
pub fn most_recent_schedule_time(
    t: &Timing,
    now: Timestamp,
    schedule: &Schedule,
    zone: &TimeZone,
    with_deadline: bool,
) -> Result<(Timestamp, Option<Timestamp>, Missed), String> {
    let mut earliest = t.last_schedule.unwrap_or(t.created);
    if with_deadline && let Some(d) = t.starting_deadline {
        let deadline = now - jiff::SignedDuration::from_secs(d);
        if deadline > earliest {
            earliest = deadline;
        }
    }
    let never = || "time difference between two schedules is less than 1 second".to_string();
    let Some(t1) = schedule.next(earliest, zone) else {
        return Err(never());
    };
    if now < t1 {
        return Ok((earliest, None, Missed::None));
    }
    let Some(t2) = schedule.next(t1, zone) else {
        return Err(never());
    };
    if now < t2 {
        return Ok((earliest, Some(t1), Missed::None));
    }
    let between = t1.duration_until(t2).as_secs();
    if between < 1 {
        return Err(never());
    }
    let elapsed = t1.duration_until(now).as_secs();
    let missed = elapsed / between + 1;
    // Start one interval before the estimate so irregular schedules land on a real time.
    let potential_earliest = t1 + jiff::SignedDuration::from_secs((missed - 2) * between);
    let mut most_recent = None;
    let mut cursor = schedule.next(potential_earliest, zone);
    while let Some(t) = cursor.filter(|t| *t <= now) {
        most_recent = Some(t);
        cursor = schedule.next(t, zone);
    }
    let kind = if missed > MANY_MISSED {
        Missed::Many
    } else if missed > 0 {
        Missed::Few
    } else {
        Missed::None
    };
    Ok((earliest, most_recent, kind))
}

/// Kubernetes' `nextScheduleTimeDuration`: how long until the next schedule time after the most
/// recent one (or after `now` when times were missed), plus 100 ms.
pub fn next_schedule_duration(
    t: &Timing,
    now: Timestamp,
    schedule: &Schedule,
    zone: &TimeZone,
) -> Option<Duration> {
    let from = match most_recent_schedule_time(t, now, schedule, zone, false) {
        Err(_) => now,
        Ok((_, Some(recent), _)) => recent,
        Ok((earliest, None, Missed::None)) => earliest,
        Ok((_, None, _)) => now,
    };
    let next = schedule.next(from, zone)?;
    let ms = now.duration_until(next).as_millis().max(0);
    Some(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)) + NEXT_SCHEDULE_DELTA)
}

/// `<cronjob>-<scheduled time in minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// Go's RFC 3339 rendering of `t` in `zone` (`Z` for a zero offset).
pub fn rfc3339_in(t: Timestamp, zone: &TimeZone) -> String {
    let z = t.to_zoned(zone.clone());
    if z.offset().seconds() == 0 {
        z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

fn ts(t: &Time) -> Timestamp {
    t.0
}

/// The finished condition of a Job (`Complete` or `Failed`), if any.
fn finished_condition(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn in_active_list(cj: &CronJob, uid: &str) -> bool {
    active(cj).iter().any(|r| r.uid.as_deref() == Some(uid))
}

fn active(cj: &CronJob) -> &[ObjectReference] {
    cj.status
        .as_ref()
        .and_then(|s| s.active.as_deref())
        .unwrap_or(&[])
}

fn delete_from_active_list(cj: &mut CronJob, uid: &str) {
    if let Some(list) = cj.status.as_mut().and_then(|s| s.active.as_mut()) {
        list.retain(|r| r.uid.as_deref() != Some(uid));
    }
}

fn status_mut(cj: &mut CronJob) -> &mut k8s_openapi::api::batch::v1::CronJobStatus {
    cj.status.get_or_insert_with(Default::default)
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.uid().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| util::controller_ref(j).is_some_and(|r| r.uid == uid))
        .collect();
    let mut copy = CronJob::clone(&cj);
    let cleaned = cleanup_finished_jobs(&ctx, &mut copy, &jobs, &jobs_api).await;
    let now = Timestamp::now();
    let synced = sync_cronjob(&ctx, &mut copy, &jobs, &jobs_api, now).await;
    if cleaned || synced.as_ref().is_ok_and(|(_, changed)| *changed) || copy.status != cj.status {
        write_status(&ctx, &copy).await?;
    }
    let (requeue, _) = synced?;
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

async fn write_status(ctx: &Ctx, cj: &CronJob) -> Result<(), Error> {
    let status = cj.status.clone().unwrap_or_default();
    let active = status.active.filter(|a| !a.is_empty());
    let api: Api<CronJob> =
        Api::namespaced(ctx.client.clone(), &cj.namespace().unwrap_or_default());
    let patch = json!({"status": {
        "active": active,
        "lastScheduleTime": status.last_schedule_time,
        "lastSuccessfulTime": status.last_successful_time,
    }});
    match api
        .patch_status(
            &cj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Kubernetes' `syncCronJob`: reconciles the active list with the Jobs, then starts the Job of
/// the most recent unmet schedule time if policy allows. Returns when to look again and
/// whether the status changed.
async fn sync_cronjob(
    ctx: &Ctx,
    cj: &mut CronJob,
    jobs: &[Job],
    jobs_api: &Api<Job>,
    now: Timestamp,
) -> Result<(Option<Duration>, bool), Error> {
    let mut changed = false;
    let rec = |cj: &CronJob, ty: EventType, reason: &str, msg: String| {
        ctx.recorder.record(cj, COMPONENT, ty, reason, msg);
    };
    for j in jobs {
        let juid = j.uid().unwrap_or_default();
        let found = in_active_list(cj, &juid);
        let finished = finished_condition(j);
        if !found && finished.is_none() {
            rec(
                cj,
                EventType::Warning,
                "UnexpectedJob",
                format!(
                    "Saw a job that the controller did not create or forgot: {}",
                    j.name_any()
                ),
            );
        } else if let (true, Some(cond)) = (found, finished) {
            delete_from_active_list(cj, &juid);
            rec(
                cj,
                EventType::Normal,
                "SawCompletedJob",
                format!("Saw completed job: {}, condition: {cond}", j.name_any()),
            );
            changed = true;
        }
        // A Job need not be active to count: any success moves lastSuccessfulTime forward.
        if finished == Some("Complete")
            && let Some(done) = j.status.as_ref().and_then(|s| s.completion_time.clone())
        {
            let status = status_mut(cj);
            if status
                .last_successful_time
                .as_ref()
                .is_none_or(|t| ts(t) < ts(&done))
            {
                status.last_successful_time = Some(done);
                changed = true;
            }
        }
    }
    // Active Jobs that no longer exist are dropped (checked against the API, not the list).
    let listed: Vec<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    for r in active(cj).to_vec() {
        let ruid = r.uid.clone().unwrap_or_default();
        if listed.contains(&ruid) {
            continue;
        }
        let name = r.name.clone().unwrap_or_default();
        match jobs_api.get_opt(&name).await? {
            Some(j) if j.uid().as_deref() == Some(ruid.as_str()) => {}
            _ => {
                rec(
                    cj,
                    EventType::Normal,
                    "MissingJob",
                    format!("Active job went missing: {name}"),
                );
                delete_from_active_list(cj, &ruid);
                changed = true;
            }
        }
    }
    if util::is_deleting(cj) {
        return Ok((None, changed));
    }
    let spec = cj.spec.clone().unwrap_or_default();
    let zone = match spec.time_zone.as_deref() {
        None => TimeZone::system(),
        Some(name) => match cron_schedule::load_location(name) {
            Ok(z) => z,
            Err(e) => {
                rec(
                    cj,
                    EventType::Warning,
                    "UnknownTimeZone",
                    format!("invalid timeZone: {name:?}: {e}"),
                );
                return Ok((None, changed));
            }
        },
    };
    if spec.suspend == Some(true) {
        return Ok((None, changed));
    }
    let schedule = match cron_schedule::parse_standard(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            rec(
                cj,
                EventType::Warning,
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            );
            return Ok((None, changed));
        }
    };
    let timing = Timing {
        created: cj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(ts)
            .unwrap_or(now),
        last_schedule: cj
            .status
            .as_ref()
            .and_then(|s| s.last_schedule_time.as_ref())
            .map(ts),
        starting_deadline: spec.starting_deadline_seconds,
    };
    let requeue = |cj: &CronJob| {
        let t = Timing {
            last_schedule: cj
                .status
                .as_ref()
                .and_then(|s| s.last_schedule_time.as_ref())
                .map(ts),
            ..timing
        };
        next_schedule_duration(&t, now, &schedule, &zone)
    };
    let scheduled = match most_recent_schedule_time(&timing, now, &schedule, &zone, true) {
        Err(e) => {
            rec(
                cj,
                EventType::Warning,
                "InvalidSchedule",
                format!("invalid schedule: {} : {e}", spec.schedule),
            );
            return Ok((None, changed));
        }
        Ok((_, None, _)) => return Ok((requeue(cj), changed)),
        Ok((_, Some(t), missed)) => {
            if missed == Missed::Many {
                rec(
                    cj,
                    EventType::Warning,
                    "TooManyMissedTimes",
                    "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
                );
            }
            t
        }
    };
    if let Some(d) = spec.starting_deadline_seconds
        && scheduled + jiff::SignedDuration::from_secs(d) < now
    {
        let when = scheduled
            .to_zoned(TimeZone::UTC)
            .strftime("%a, %d %b %Y %H:%M:%S %z");
        rec(
            cj,
            EventType::Warning,
            "MissSchedule",
            format!("Missed scheduled time to start a job: {when}"),
        );
        return Ok((requeue(cj), changed));
    }
    let name = job_name(&cj.name_any(), scheduled);
    let already = active(cj)
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
        || timing.last_schedule == Some(scheduled);
    if already {
        return Ok((requeue(cj), changed));
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active(cj).is_empty() {
        rec(
            cj,
            EventType::Normal,
            "JobAlreadyActive",
            "Not starting job because prior execution is running and concurrency policy is Forbid"
                .into(),
        );
        return Ok((requeue(cj), changed));
    }
    if policy == "Replace" {
        for r in active(cj).to_vec() {
            let jname = r.name.clone().unwrap_or_default();
            let job = match jobs_api.get(&jname).await {
                Ok(j) => j,
                Err(e) => {
                    rec(cj, EventType::Warning, "FailedGet", format!("Get job: {e}"));
                    return Err(e.into());
                }
            };
            if !delete_job(ctx, cj, &job, jobs_api).await {
                return Err(Error::Invalid(format!(
                    "could not replace job {}/{jname}",
                    cj.namespace().unwrap_or_default()
                )));
            }
            changed = true;
        }
    }
    let job = job_from_template(cj, scheduled, &zone, &name);
    let created = match jobs_api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            rec(
                cj,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created job {}", j.name_any()),
            );
            j
        }
        Err(kube::Error::Api(e)) if e.code == 409 && e.reason == "AlreadyExists" => {
            let existing = jobs_api.get(&name).await?;
            let ours = util::controller_ref(&existing)
                .is_some_and(|r| Some(&r.uid) == cj.metadata.uid.as_ref());
            if !ours || in_active_list(cj, &existing.uid().unwrap_or_default()) {
                return Ok((None, changed));
            }
            existing
        }
        Err(e) => {
            rec(
                cj,
                EventType::Warning,
                "FailedCreate",
                format!("Error creating job: {e}"),
            );
            return Err(e.into());
        }
    };
    let status = status_mut(cj);
    status
        .active
        .get_or_insert_with(Vec::new)
        .push(job_ref(&created));
    status.last_schedule_time = Some(Time(scheduled));
    Ok((requeue(cj), true))
}

/// Kubernetes' `getJobFromTemplate2`.
fn job_from_template(cj: &CronJob, scheduled: Timestamp, zone: &TimeZone, name: &str) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    // The annotation is in the CronJob's own zone, UTC when it names none.
    let annotation_zone = if cj
        .spec
        .as_ref()
        .and_then(|s| s.time_zone.as_ref())
        .is_some()
    {
        zone.clone()
    } else {
        TimeZone::UTC
    };
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        rfc3339_in(scheduled, &annotation_zone),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: cj.namespace(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![util::owner_ref(cj)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Deletes a Job (background propagation) and drops it from the active list.
async fn delete_job(ctx: &Ctx, cj: &mut CronJob, job: &Job, jobs_api: &Api<Job>) -> bool {
    match jobs_api
        .delete(&job.name_any(), &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            ctx.recorder.record(
                cj,
                COMPONENT,
                EventType::Warning,
                "FailedDelete",
                format!("Deleted job: {e}"),
            );
            return false;
        }
    }
    delete_from_active_list(cj, &job.uid().unwrap_or_default());
    ctx.recorder.record(
        cj,
        COMPONENT,
        EventType::Normal,
        "SuccessfulDelete",
        format!("Deleted job {}", job.name_any()),
    );
    true
}

/// Kubernetes' `cleanupFinishedJobs`: deletes the oldest finished Jobs beyond
/// `successfulJobsHistoryLimit` and `failedJobsHistoryLimit`.
async fn cleanup_finished_jobs(
    ctx: &Ctx,
    cj: &mut CronJob,
    jobs: &[Job],
    jobs_api: &Api<Job>,
) -> bool {
    let spec = cj.spec.clone().unwrap_or_default();
    let mut changed = false;
    for (cond, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let finished: Vec<&Job> = jobs
            .iter()
            .filter(|j| finished_condition(j) == Some(cond))
            .collect();
        for j in oldest_beyond_limit(finished, limit) {
            changed |= delete_job(ctx, cj, j, jobs_api).await;
        }
    }
    changed
}

/// The Jobs to delete so that `limit` remain: oldest start time first (Jobs without one last),
/// ties by name (Kubernetes' `byJobStartTime`).
pub fn oldest_beyond_limit(mut jobs: Vec<&Job>, limit: i32) -> Vec<&Job> {
    let excess = jobs.len().saturating_sub(limit.max(0) as usize);
    let start = |j: &Job| {
        j.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(ts)
    };
    jobs.sort_by(|a, b| match (start(a), start(b)) {
        (Some(x), Some(y)) if x != y => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        _ => a.name_any().cmp(&b.name_any()),
    });
    jobs.truncate(excess);
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn timing(created: &str, last: Option<&str>, deadline: Option<i64>) -> Timing {
        Timing {
            created: t(created),
            last_schedule: last.map(t),
            starting_deadline: deadline,
        }
    }

    fn sched(s: &str) -> Schedule {
        cron_schedule::parse_standard(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn most_recent_time_and_missed_counts() {
        let every_minute = sched("*/1 * * * *");
        let utc = TimeZone::UTC;
        // Created 10:00:30; at 10:00:50 nothing has come yet.
        let tm = timing("2026-12-05T10:00:30Z", None, None);
        let r =
            most_recent_schedule_time(&tm, t("2026-12-05T10:00:50Z"), &every_minute, &utc, true);
        assert_eq!(r, Ok((t("2026-12-05T10:00:30Z"), None, Missed::None)));
        // At 10:01:10 the 10:01 run is due.
        let r =
            most_recent_schedule_time(&tm, t("2026-12-05T10:01:10Z"), &every_minute, &utc, true);
        assert_eq!(
            r,
            Ok((
                t("2026-12-05T10:00:30Z"),
                Some(t("2026-12-05T10:01:00Z")),
                Missed::None
            ))
        );
        // At 10:05:10, five were missed; only the most recent is run.
        let r =
            most_recent_schedule_time(&tm, t("2026-12-05T10:05:10Z"), &every_minute, &utc, true);
        assert_eq!(
            r,
            Ok((
                t("2026-12-05T10:00:30Z"),
                Some(t("2026-12-05T10:05:00Z")),
                Missed::Few
            ))
        );
        // Two hours down: more than 100 missed.
        let r =
            most_recent_schedule_time(&tm, t("2026-12-05T12:00:10Z"), &every_minute, &utc, true);
        assert_eq!(
            r.map(|r| (r.1, r.2)),
            Ok((Some(t("2026-12-05T12:00:00Z")), Missed::Many))
        );
        // A starting deadline moves the earliest time up, so an old gap counts as few.
        let tm = timing("2026-12-05T10:00:30Z", None, Some(200));
        let r =
            most_recent_schedule_time(&tm, t("2026-12-05T12:00:10Z"), &every_minute, &utc, true);
        assert_eq!(
            r.map(|r| (r.0, r.1, r.2)),
            Ok((
                t("2026-12-05T11:56:50Z"),
                Some(t("2026-12-05T12:00:00Z")),
                Missed::Few
            ))
        );
        // The last schedule time counts from there.
        let tm = timing("2026-12-05T10:00:30Z", Some("2026-12-05T10:05:00Z"), None);
        let r =
            most_recent_schedule_time(&tm, t("2026-12-05T10:05:30Z"), &every_minute, &utc, true);
        assert_eq!(r.map(|r| r.1), Ok(None));
        // An irregular schedule (hours 6..16 every 4, at :30) finds the real most recent time.
        let irregular = sched("30 6-16/4 * * *");
        let tm = timing("2026-12-01T00:00:00Z", None, None);
        let r = most_recent_schedule_time(&tm, t("2026-12-05T15:00:00Z"), &irregular, &utc, true);
        assert_eq!(r.map(|r| r.1), Ok(Some(t("2026-12-05T14:30:00Z"))));
        // A schedule that never fires is an error, as Kubernetes' InvalidSchedule.
        let never = sched("0 0 30 2 *");
        assert!(
            most_recent_schedule_time(&tm, t("2026-12-05T15:00:00Z"), &never, &utc, true).is_err()
        );
    }

    #[test]
    fn requeue_until_the_next_time() {
        let every_minute = sched("*/1 * * * *");
        let utc = TimeZone::UTC;
        let tm = timing("2026-12-05T10:00:30Z", Some("2026-12-05T10:01:00Z"), None);
        let d = next_schedule_duration(&tm, t("2026-12-05T10:01:20Z"), &every_minute, &utc);
        assert_eq!(d, Some(Duration::from_millis(40_100)));
        let hourly = sched("@hourly");
        let tm = timing("2026-12-05T10:00:30Z", None, None);
        let d = next_schedule_duration(&tm, t("2026-12-05T10:30:00Z"), &hourly, &utc);
        assert_eq!(d, Some(Duration::from_millis(30 * 60_000 + 100)));
    }

    #[test]
    fn job_names_and_annotations() {
        let at = t("2026-12-05T10:01:00Z");
        assert_eq!(
            job_name("hello", at),
            format!("hello-{}", at.as_second() / 60)
        );
        assert_eq!(job_name("hello", at), "hello-29941081");
        assert_eq!(rfc3339_in(at, &TimeZone::UTC), "2026-12-05T10:01:00Z");
        let berlin = cron_schedule::load_location("Europe/Berlin").expect("tzdb");
        assert_eq!(rfc3339_in(at, &berlin), "2026-12-05T11:01:00+01:00");
    }

    #[test]
    fn history_cleanup_deletes_the_oldest() {
        let job = |name: &str, start: Option<&str>| Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(k8s_openapi::api::batch::v1::JobStatus {
                start_time: start.map(|s| Time(t(s))),
                ..Default::default()
            }),
            ..Default::default()
        };
        let jobs = [
            job("c", Some("2026-12-05T10:03:00Z")),
            job("a", Some("2026-12-05T10:01:00Z")),
            job("z", None),
            job("b", Some("2026-12-05T10:02:00Z")),
        ];
        let names = |v: Vec<&Job>| v.into_iter().map(|j| j.name_any()).collect::<Vec<_>>();
        assert_eq!(
            names(oldest_beyond_limit(jobs.iter().collect(), 2)),
            ["a", "b"]
        );
        assert_eq!(
            names(oldest_beyond_limit(jobs.iter().collect(), 0)),
            ["a", "b", "c", "z"]
        );
        assert!(oldest_beyond_limit(jobs.iter().collect(), 5).is_empty());
    }
}
