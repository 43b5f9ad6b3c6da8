//! CronJobs on a real node, driven through `lotse up` and the real kubectl 1.33: an invalid
//! schedule is refused with Kubernetes' message; three CronJobs firing every minute run side by
//! side — one whose Jobs finish (history limit 1 deletes the oldest finished Job, the manual Job
//! of `kubectl create job --from=cronjob/...` included), one `Forbid` and one `Replace` whose
//! Jobs run longer than a minute — and `kubectl get cronjob` prints Kubernetes' columns.
//!
//! Needs root, Debian's `containerd`, `runc` and `containernetworking-plugins`, the built
//! binaries and the images built by
//! `target/debug/lotse images build --output target/lotse-images busybox pause`.
use std::time::Duration;

use anyhow::Context;
use e2e::Kubectl;
use e2e::lotse::{Node, wait_for};

/// Two schedule times (at most two minutes) plus a pod's run.
const TWO_RUNS: Duration = Duration::from_secs(170);

fn cronjob(name: &str, policy: &str, history: u32, script: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: CronJob
metadata: {{name: {name}}}
spec:
  schedule: "*/1 * * * *"
  concurrencyPolicy: {policy}
  successfulJobsHistoryLimit: {history}
  jobTemplate:
    metadata: {{labels: {{cron: {name}}}}}
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - name: main
            image: busybox
            command: ["sh", "-c", "{script}"]
"#
    )
}

fn jobs_of(k: &Kubectl, cron: &str) -> anyhow::Result<Vec<String>> {
    let out = k.ok(&[
        "get",
        "jobs",
        "-l",
        &format!("cron={cron}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    Ok(out.split_whitespace().map(str::to_string).collect())
}

fn reasons(k: &Kubectl, name: &str) -> anyhow::Result<String> {
    k.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.kind=CronJob,involvedObject.name={name}"),
        "-o",
        "jsonpath={.items[*].reason}",
    ])
}

/// Scheduled Jobs are `<cronjob>-<minutes since the epoch>`.
fn scheduled_name(cron: &str, job: &str) -> bool {
    job.strip_prefix(cron)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|m| m.len() >= 8 && m.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
#[ignore = "needs root, containerd and runc, built binaries and images (lotse images build)"]
fn cronjobs_run_every_minute_with_each_concurrency_policy() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = Node::start_with_root_ca(tmp.path(), "cron-node")?;
    let k = &node.kubectl;
    let log = || node.lotse.log();

    // An invalid schedule is refused with robfig/cron's wording, as Kubernetes does.
    let bad = cronjob("bad", "Allow", 3, "true").replace("*/1 * * * *", "61 * * * *");
    let err = k.run_stdin(&["apply", "-f", "-"], &bad)?.failure()?.stderr;
    assert!(
        err.contains(
            "The CronJob \"bad\" is invalid: spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        ),
        "{err}"
    );

    k.ok_stdin(
        &["apply", "-f", "-"],
        &cronjob("tick", "Allow", 1, "echo tick"),
    )?;
    k.ok_stdin(
        &["apply", "-f", "-"],
        &cronjob("forbid", "Forbid", 3, "sleep 600"),
    )?;
    k.ok_stdin(
        &["apply", "-f", "-"],
        &cronjob("replace", "Replace", 3, "sleep 600"),
    )?;
    let table = k.ok(&["get", "cronjob", "tick"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..8],
        ["tick", "*/1", "*", "*", "*", "*", "<none>", "false"],
        "{table}"
    );

    // kubectl create job --from=cronjob/… (client-side) runs the template right away.
    k.ok(&["create", "job", "manual", "--from=cronjob/tick"])?;
    assert_eq!(
        k.ok(&[
            "get",
            "job",
            "manual",
            "-o",
            "jsonpath={.metadata.annotations.cronjob\\.kubernetes\\.io/instantiate}"
        ])?,
        "manual"
    );
    wait_for(
        k,
        &["get", "job", "manual", "-o", "jsonpath={.status.succeeded}"],
        "manual job succeeded",
        Duration::from_secs(60),
        |s| s.trim() == "1",
    )
    .with_context(log)?;

    // The first scheduled run of tick: a Job named by its minute, annotated with its time,
    // whose pod prints "tick"; lastScheduleTime and lastSuccessfulTime follow.
    let listing = wait_for(
        k,
        &[
            "get",
            "jobs",
            "-l",
            "cron=tick",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.succeeded}{\"\\n\"}{end}",
        ],
        "tick's first scheduled job succeeded",
        TWO_RUNS,
        |s| {
            s.lines().any(|l| {
                l.split_once(' ')
                    .is_some_and(|(n, ok)| scheduled_name("tick", n) && ok == "1")
            })
        },
    )
    .with_context(log)?;
    let scheduled: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, ok)| scheduled_name("tick", n) && *ok == "1")
        .map(|(n, _)| n)
        .collect();
    let job = scheduled[0];
    let stamp = k.ok(&[
        "get",
        "job",
        job,
        "-o",
        "jsonpath={.metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp}",
    ])?;
    let at: k8s_openapi::jiff::Timestamp = stamp.parse().context(stamp.clone())?;
    assert_eq!(at.as_second() % 60, 0, "{stamp}");
    assert_eq!(job, format!("tick-{}", at.as_second() / 60));
    let last = k.ok(&[
        "get",
        "cronjob",
        "tick",
        "-o",
        "jsonpath={.status.lastScheduleTime}",
    ])?;
    assert!(
        last.parse::<k8s_openapi::jiff::Timestamp>()? >= at,
        "{last} {stamp}"
    );
    let logs = k.ok(&["logs", &format!("job/{job}")])?;
    assert_eq!(logs.trim(), "tick");

    // History limit 1: of the manual and the scheduled Job, only the newest finished one stays.
    wait_for(
        k,
        &["get", "job", "manual", "--ignore-not-found", "-o", "name"],
        "the oldest finished job deleted",
        Duration::from_secs(30),
        |s| s.trim().is_empty(),
    )
    .with_context(log)?;
    assert!(reasons(k, "tick")?.contains("SuccessfulDelete"));
    assert!(reasons(k, "tick")?.contains("SawCompletedJob"));

    // Forbid: while the first Job runs, the next time is skipped (JobAlreadyActive).
    wait_for(
        k,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=CronJob,involvedObject.name=forbid",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        "forbid skips a run",
        TWO_RUNS,
        |s| s.contains("JobAlreadyActive"),
    )
    .with_context(log)?;
    assert_eq!(jobs_of(k, "forbid")?.len(), 1);
    assert_eq!(
        k.ok(&[
            "get",
            "cronjob",
            "forbid",
            "-o",
            "jsonpath={.status.active[*].kind}"
        ])?,
        "Job"
    );

    // Replace: the running Job is deleted and the new time's Job takes its place.
    wait_for(
        k,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=CronJob,involvedObject.name=replace",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        "replace replaces its job",
        TWO_RUNS,
        |s| s.contains("SuccessfulDelete"),
    )
    .with_context(log)?;
    let active = k.ok(&[
        "get",
        "cronjob",
        "replace",
        "-o",
        "jsonpath={.status.active[*].name}",
    ])?;
    assert_eq!(active.split_whitespace().count(), 1, "{active}");
    assert!(scheduled_name("replace", active.trim()), "{active}");

    // Suspend shows in the table.
    k.ok(&[
        "patch",
        "cronjob",
        "tick",
        "--type=merge",
        "-p",
        "{\"spec\":{\"suspend\":true}}",
    ])?;
    let table = k.ok(&["get", "cronjob", "tick", "--no-headers"])?;
    assert!(table.contains(" true "), "{table}");
    Ok(())
}
