//! `database-bench`: PostgreSQL pod startup to Ready (issue 15's Benchmarks), on a one-node
//! `lotse up` with the real containerd, in the same run:
//!
//! - **existing claim**: a pod whose local-path claim already holds the database (made by a
//!   first, unmeasured pod), so the entrypoint skips `initdb`; the claim's volume is bind-mounted;
//! - **no volume**: the same pod without a volume, so every start runs `initdb` in the
//!   container's own filesystem.
//!
//! Each round creates the pod (`kubectl create`), polls its Ready condition every 50 ms (the
//! readiness probe, `pg_isready`, runs every second: figures are good to ~1 s) and deletes it.
//! Figures are printed, never asserted. Needs root, containerd, runc, the built binaries and
//! `target/debug/lotse images build --output target/lotse-images busybox pause postgres`:
//!
//!   cargo build --workspace --bins && target/debug/database-bench --rounds 5
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use e2e::Kubectl;
use e2e::lotse::{Node, random_pod_cidr, wait_for};
use e2e::report::figure;

/// PostgreSQL pod startup to Ready: existing claim vs no volume.
#[derive(Parser)]
struct Args {
    /// Measured starts of each kind.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

fn pod(name: &str, claim: bool) -> String {
    let (mounts, volumes) = if claim {
        (
            "\n    volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]",
            "\n  volumes: [{name: data, persistentVolumeClaim: {claimName: bench-data}}]",
        )
    } else {
        ("", "")
    };
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 5
  securityContext: {{runAsUser: 999, fsGroup: 999}}
  containers:
  - name: postgres
    image: postgres:15
    env:
    - {{name: POSTGRES_PASSWORD, value: bench}}
    - {{name: PGDATA, value: /var/lib/postgresql/data/pgdata}}
    readinessProbe:
      exec: {{command: [pg_isready, -h, 127.0.0.1]}}
      periodSeconds: 1{mounts}{volumes}
"#
    )
}

const CLAIM: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: bench-data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#;

/// Creates the pod and returns the time until it is Ready; then deletes it.
fn start_to_ready(k: &Kubectl, name: &str, claim: bool) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    k.ok_stdin(&["create", "-f", "-"], &pod(name, claim))?;
    let ready = loop {
        let s = k.ok(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])?;
        if s.trim() == "True" {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let logs = k.run(&["logs", name]).map(|o| o.stdout).unwrap_or_default();
            anyhow::bail!("pod {name} not Ready after 120 s: {logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    k.ok(&["delete", "pod", name, "--wait=true", "--timeout=60s"])?;
    Ok(ready)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn summary(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    let p50 = s.get((s.len().max(1) - 1) / 2).copied().unwrap_or_default();
    (
        s.first().copied().unwrap_or_default(),
        p50,
        s.last().copied().unwrap_or_default(),
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let node = Node::start(
        tmp.path(),
        "db-bench",
        &random_pod_cidr()?,
        &["busybox.tar", "pause.tar"],
    )?;
    // ~15 s to import: into the running node, so that it registers first.
    let images = e2e::lotse::require_images(&["postgres.tar"])?;
    let st = std::process::Command::new(e2e::bin_dir().join("lotse"))
        .args(["images", "import", "--data-dir"])
        .arg(&node.data)
        .arg(images.join("postgres.tar"))
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "lotse images import failed");
    let k = &node.kubectl;
    k.ok_stdin(&["apply", "-f", "-"], CLAIM)?;
    // The database on the claim, made once (initdb), not measured; the image's snapshot is
    // unpacked by this first start too.
    let first = start_to_ready(k, "pg-init", true).with_context(|| node.lotse.log())?;
    let warm = start_to_ready(k, "pg-warm", false).with_context(|| node.lotse.log())?;
    wait_for(
        k,
        &["get", "pvc", "bench-data", "-o", "jsonpath={.status.phase}"],
        "claim bound",
        Duration::from_secs(10),
        |s| s == "Bound",
    )?;
    let (mut with_claim, mut without) = (Vec::new(), Vec::new());
    for i in 0..args.rounds {
        with_claim.push(start_to_ready(k, &format!("pg-claim-{i}"), true)?);
        without.push(start_to_ready(k, &format!("pg-none-{i}"), false)?);
    }
    println!(
        "PostgreSQL 15 pod startup to Ready, {} rounds each (probe period 1 s):",
        args.rounds
    );
    println!(
        "  first start on the empty claim (initdb):   {}",
        secs(first)
    );
    println!("  first start without a volume (warm-up):   {}", secs(warm));
    println!("  {:<34} {:>9} {:>9} {:>9}", "", "min", "p50", "max");
    for (what, v) in [
        ("existing claim (no initdb)", &with_claim),
        ("no volume (initdb every start)", &without),
    ] {
        let (min, p50, max) = summary(v);
        println!(
            "  {what:<34} {:>9} {:>9} {:>9}",
            secs(min),
            secs(p50),
            secs(max)
        );
    }
    let (_, a, _) = summary(&with_claim);
    let (_, b, _) = summary(&without);
    println!(
        "  existing claim / no volume (p50): {:.2}x   (no goal in the issue; printed, not asserted)",
        a.as_secs_f64() / b.as_secs_f64().max(1e-9)
    );
    figure(
        format!(
            "PostgreSQL 15 pod create -> Ready on an existing claim, p50 of {}",
            args.rounds
        ),
        a.as_secs_f64(),
        "s",
    )
    .vs("no volume (initdb every start), p50", b.as_secs_f64())
    .record()?;
    let mut node = node;
    node.lotse.stop()?;
    Ok(())
}
