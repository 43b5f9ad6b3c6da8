//! Patch latency of a 2-container Deployment through the real apiserver: strategic merge patch
//! and server-side apply next to a plain PUT of the same object (the goal: patches within
//! 2x of PUT). Prints p50/p99; never asserts timings.

use std::time::{Duration, Instant};

use e2e::{ApiServer, Backend};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

const ROUNDS: usize = 150;

fn deployment(image: &str) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench", "labels": {"app": "bench"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}}, "spec": {"containers": [
                {"name": "a", "image": image, "env": [{"name": "X", "value": "1"}], "ports": [{"containerPort": 80}]},
                {"name": "b", "image": "busybox", "command": ["sleep", "3600"]}]}}}})
}

fn percentiles(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    let p = |q: f64| d[((d.len() as f64 - 1.0) * q) as usize];
    (p(0.50), p(0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test (prints figures only)"]
async fn apply_bench_patch_latency() -> anyhow::Result<()> {
    let server = ApiServer::start(Backend::Sqlite).await?;
    let api: Api<Deployment> = Api::namespaced(server.client().await?, "default");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("nginx:0"))?,
    )
    .await?;
    let mut put = Vec::new();
    let mut smp = Vec::new();
    let mut ssa = Vec::new();
    for i in 0..ROUNDS {
        let mut d = api.get("bench").await?;
        if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            pod.containers[0].image = Some(format!("nginx:put{i}"));
        }
        let t = Instant::now();
        api.replace("bench", &PostParams::default(), &d).await?;
        put.push(t.elapsed());

        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": format!("nginx:smp{i}")}]}}}});
        let t = Instant::now();
        api.patch("bench", &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        smp.push(t.elapsed());

        let t = Instant::now();
        api.patch(
            "bench",
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&deployment(&format!("nginx:ssa{i}"))),
        )
        .await?;
        ssa.push(t.elapsed());
    }
    for (name, d) in [
        ("PUT", put),
        ("strategic merge patch", smp),
        ("server-side apply", ssa),
    ] {
        let (p50, p99) = percentiles(d);
        println!(
            "{name:>22}: p50 {:>7.2} ms  p99 {:>7.2} ms  ({ROUNDS} requests)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
