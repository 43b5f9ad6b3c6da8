//! `crd-bench` (issue 16's Benchmarks; prints figures, asserts nothing): a CustomResourceDefinition
//! created → its resource served, p50/p99 over N new CRDs, on a real apiserver (SQLite or etcd).
//! "Served" is the first `LIST` of the new resource that answers 200, polled every 2 ms after
//! the create call returns. Beside it, in the same run, the floor: the same poll's round trip,
//! a `LIST` of a resource that is always served (ConfigMaps in an empty namespace).
//!
//! `cargo build --release -p apiserver -p e2e && LOTSE_BIN_DIR=target/release target/release/crd-bench --crds 50`
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use e2e::report::{figure, ms};
use e2e::{ApiServer, Backend, raw_request};
use serde_json::json;

/// CRD create → served.
#[derive(Parser)]
struct Args {
    /// CRDs to create (one at a time).
    #[arg(long, default_value_t = 50)]
    crds: usize,
    /// Run against a real etcd instead of the embedded SQLite.
    #[arg(long)]
    etcd: bool,
}

fn percentiles(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    let at = |q: f64| d[((d.len() as f64 * q).ceil() as usize).clamp(1, d.len()) - 1];
    (at(0.5), at(0.99))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.crds == 0 {
        bail!("--crds must be at least 1");
    }
    let api = ApiServer::start(if args.etcd {
        Backend::Etcd
    } else {
        Backend::Sqlite
    })
    .await?;
    let client = api.client().await?;

    // The floor: a LIST round trip of a resource that is always there.
    let mut floor = Vec::new();
    for _ in 0..args.crds {
        let t0 = Instant::now();
        let (status, _) = raw_request(
            &client,
            "GET",
            "/api/v1/namespaces/default/configmaps",
            None,
            Vec::new(),
        )
        .await?;
        if status != 200 {
            bail!("LIST configmaps: {status}");
        }
        floor.push(t0.elapsed());
    }

    let mut served = Vec::new();
    for i in 0..args.crds {
        let (group, plural, kind) = (
            format!("g{i}.bench.lotse.dev"),
            format!("widgets{i}"),
            format!("Widget{i}"),
        );
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": format!("widget{i}"), "kind": kind},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}
                    }}}
                }]
            }
        });
        let (status, body) = raw_request(
            &client,
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some("application/json"),
            serde_json::to_vec(&crd)?,
        )
        .await?;
        if status != 201 {
            bail!(
                "create CRD {i}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let t0 = Instant::now();
        let path = format!("/apis/{group}/v1/namespaces/default/{plural}");
        loop {
            let (status, _) = raw_request(&client, "GET", &path, None, Vec::new()).await?;
            if status == 200 {
                served.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("{path}: not served 30 s after its CRD was created ({status})");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let (s50, s99) = percentiles(served);
    let (f50, f99) = percentiles(floor);
    let store = if args.etcd { "etcd" } else { "SQLite" };
    println!(
        "CRD created -> resource served ({} CRDs, {store}): p50 {s50:?}  p99 {s99:?}",
        args.crds
    );
    println!("floor: LIST round trip of a served resource: p50 {f50:?}  p99 {f99:?}");
    for (q, served, floor) in [("p50", s50, f50), ("p99", s99, f99)] {
        figure(
            format!(
                "{store}: CRD created -> resource served {q}, {} CRDs",
                args.crds
            ),
            ms(served),
            "ms",
        )
        .vs(format!("LIST round trip {q}"), ms(floor))
        .record()?;
    }
    Ok(())
}
