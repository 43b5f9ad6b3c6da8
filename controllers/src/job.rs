//! Job controller: runs pods until `completions` succeed (at most `parallelism` at a time),
//! fails the Job after `backoffLimit` failed pods or `activeDeadlineSeconds`, sets the
//! `Complete` / `Failed` conditions and deletes finished Jobs after `ttlSecondsAfterFinished`.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::events::{EventType, Recorder};
use crate::util;

const COMPONENT: &str = "job-controller";

struct Ctx {
    client: Client,
    recorder: Recorder,
}

/// Runs the Job controller until its watch streams end.
pub async fn run(client: Client, recorder: Recorder) -> Result<(), Error> {
    let wc = watcher::Config::default();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder,
    });
    Controller::new(Api::<Job>::all(client.clone()), wc.clone())
        .owns(Api::<Pod>::all(client), wc)
        .run(
            reconcile,
            |_, err: &Error, _| {
                tracing::warn!(error = %err, "job sync failed; retrying");
                Action::requeue(Duration::from_secs(2))
            },
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
    Err(Error::Stopped("job"))
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
    let phase = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i32;
    let active: Vec<&Pod> = pods.iter().filter(|p| util::is_pod_active(p)).collect();
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let start = old.start_time.clone().unwrap_or_else(util::now);

    let mut status = JobStatus {
        start_time: Some(start.clone()),
        active: Some(active.len() as i32),
        succeeded: Some(succeeded),
        failed: Some(failed),
        ready: Some(active.iter().filter(|p| util::is_pod_ready(p)).count() as i32),
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    let deadline_hit = spec
        .active_deadline_seconds
        .is_some_and(|d| start.0.as_second() + d <= now.as_second());
    let failure = if failed > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if deadline_hit {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    if failure.is_some() || complete {
        for p in &active {
            match pods_api
                .delete(&p.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        status.active = Some(0);
        let conds = status.conditions.get_or_insert_with(Vec::new);
        if let Some((reason, message)) = failure {
            conds.push(condition("FailureTarget", reason, message));
            conds.push(condition("Failed", reason, message));
            ctx.recorder.record(
                job.as_ref(),
                COMPONENT,
                EventType::Warning,
                reason,
                message.into(),
            );
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
    } else if spec.suspend != Some(true) {
        let want = wanted_active(parallelism, completions, succeeded) as usize;
        if active.len() < want {
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
            let pod = Pod {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    labels: Some(labels),
                    annotations: tmeta.annotations,
                    owner_references: Some(vec![util::owner_ref(job.as_ref())]),
                    ..Default::default()
                },
                spec: template.spec,
                status: None,
            };
            for _ in active.len()..want {
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(p) => ctx.recorder.record(
                        job.as_ref(),
                        COMPONENT,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    ),
                    Err(e) => {
                        ctx.recorder.record(
                            job.as_ref(),
                            COMPONENT,
                            EventType::Warning,
                            "FailedCreate",
                            format!("Error creating: {e}"),
                        );
                        return Err(e.into());
                    }
                }
            }
        } else if active.len() > want {
            let mut extra: Vec<&Pod> = active.clone();
            extra.sort_by_key(|p| {
                std::cmp::Reverse(
                    p.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.as_second()),
                )
            });
            for p in extra.into_iter().take(active.len() - want) {
                let _ = pods_api
                    .delete(&p.name_any(), &DeleteParams::background())
                    .await;
            }
        }
    }
    if Some(&status) != job.status.as_ref() {
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    }
    Ok(match spec.active_deadline_seconds {
        Some(d) => Action::requeue(Duration::from_secs(
            (start.0.as_second() + d - now.as_second()).max(1) as u64,
        )),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallelism_capped_by_remaining_completions() {
        assert_eq!(wanted_active(2, Some(3), 0), 2);
        assert_eq!(wanted_active(2, Some(3), 2), 1);
        assert_eq!(wanted_active(2, Some(3), 3), 0);
        assert_eq!(wanted_active(3, None, 0), 3);
        assert_eq!(wanted_active(3, None, 1), 0);
    }
}
