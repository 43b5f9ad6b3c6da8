//! Classroom benchmark (prints figures, asserts nothing): a Classroom of N students (default
//! 100) with a Deployment + Service lab, applied to a real apiserver and reconciled by the real
//! `controllers` binary under its own identity (the classroom, serviceaccount and namespace
//! controllers). Reports the time from the apply until every student is ready (namespace,
//! quota, limits, policies, ServiceAccount, RoleBinding and lab objects created) beside the
//! issue's goal (10 s for 100 students), and the apiserver requests per student (from
//! `apiserver_request_total`, the benchmark's own polling subtracted).
//!
//! `cargo build --release -p apiserver -p controllers -p e2e && LOTSE_BIN_DIR=target/release target/release/classroom-bench`
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use e2e::report::figure;
use e2e::{ApiServer, Backend, Component, raw_request};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::json;

/// Time to a ready N-student class.
#[derive(Parser)]
struct Args {
    /// Students in the class.
    #[arg(long, env = "LOTSE_BENCH_STUDENTS", default_value_t = 100)]
    students: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

/// The sum of every `apiserver_request_total` series.
async fn requests_so_far(client: &kube::Client) -> Result<f64> {
    let (_, body) = raw_request(client, "GET", "/metrics", None, Vec::new()).await?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let api = ApiServer::start(Backend::Sqlite).await?;
    let _controllers = Component::start(
        &api,
        "controllers",
        "warn",
        &[
            "--leader-elect=false",
            "--controllers=classroom,serviceaccount,namespace",
        ],
    )?;
    let client = api.client().await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("lotse.dev", "v1alpha1", "Classroom"),
        "classrooms",
    );
    let classrooms: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    // The controllers install the CRD at start.
    let t0 = Instant::now();
    while classrooms.list(&ListParams::default()).await.is_err() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the Classroom CRD is not served after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "CRD installed and served: {:?} after the controllers started",
        t0.elapsed()
    );

    let n = args.students;
    let students: Vec<_> = (0..n)
        .map(|i| json!({"name": format!("s{i:03}")}))
        .collect();
    let lab = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: httpd, image: busybox, command: [httpd, -f, -p, '8080']}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n";
    let class = json!({
        "apiVersion": "lotse.dev/v1alpha1", "kind": "Classroom",
        "metadata": {"name": "bench"},
        "spec": {
            "students": students,
            "budget": {"cpu": "2", "memory": "2Gi", "pods": 10, "services": 5},
            "labs": [lab],
        },
    });
    let before = requests_so_far(&client).await?;
    let start = Instant::now();
    classrooms
        .patch(
            "bench",
            &PatchParams::apply("classroom-bench"),
            &Patch::Apply(&class),
        )
        .await?;
    let want = format!("{n}/{n}");
    let mut polls = 0.0;
    let took = loop {
        polls += 1.0;
        let c = classrooms.get("bench").await?;
        let ready = c
            .data
            .pointer("/status/ready")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        if ready == want {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(args.timeout_secs) {
            bail!("only {ready:?} students ready after {}s", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = requests_so_far(&client).await?;
    // The apply, the polls and one of the two metrics reads were the benchmark's own.
    let by_controllers = after - before - polls - 2.0;
    let quotas = Api::<k8s_openapi::api::core::v1::ResourceQuota>::all(client.clone())
        .list(&ListParams::default().fields("metadata.name=budget"))
        .await?
        .items
        .len();
    println!(
        "{n} students ready (namespaces, quota, limits, policies, ServiceAccount, RoleBinding, lab): {:.2} s (goal ≤ 10 s for 100); {quotas} quotas in place",
        took.as_secs_f64()
    );
    println!(
        "apiserver requests by the controllers: {by_controllers:.0} ({:.1} per student; includes the serviceaccount and namespace controllers)",
        by_controllers / n as f64
    );
    figure(format!("{n} students ready"), took.as_secs_f64(), "s")
        .goal("<= 10 s for 100 students")
        .record()?;
    figure(
        "apiserver requests by the controllers per student",
        by_controllers / n as f64,
        "requests",
    )
    .record()?;
    Ok(())
}
