//! `auth-bench`: the authorization cost of issue 4 measured end-to-end. Starts a real
//! apiserver, signs in as a ServiceAccount that is NOT in `system:masters` (so every request goes
//! through the RBAC authorizer), and times GET and LIST requests before and after 1 000
//! RoleBindings and 200 ClusterRoles are created. The p99 difference is the latency the extra
//! RBAC objects add per request. Figures are printed, never asserted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::report::figure;
use e2e::{ApiServer, Backend, bin_dir, raw_request, wait_until_every};
use serde_json::{Value, json};

/// Measures what 1 000 RoleBindings and 200 ClusterRoles add to request latency.
///
/// A fresh apiserver (SQLite, temporary data dir, free loopback port) is started; a
/// ServiceAccount `bench/student` bound to `view` gets a token from the TokenRequest API. Its
/// GET/LIST latency is sampled with only the bootstrap RBAC objects present, then again after
/// creating the RBAC objects, and the percentiles and their differences are printed. A denied
/// request and the same GET as cluster-admin (`system:masters` skips RBAC) are printed for
/// comparison. Build first:
///
///   cargo build -p apiserver -p e2e --bins      (or --release for release figures)
///   target/debug/auth-bench
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// The apiserver binary to measure (default: the apiserver next to this binary's workspace
    /// build, `$LOTSE_BIN_DIR/apiserver` or target/debug/apiserver).
    #[arg(long, env = "LOTSE_BENCH_APISERVER")]
    apiserver: Option<PathBuf>,
    /// Timed requests per measurement.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// RoleBindings to create (spread over `--namespaces` namespaces).
    #[arg(long, default_value_t = 1000)]
    rolebindings: usize,
    /// ClusterRoles to create.
    #[arg(long, default_value_t = 200)]
    clusterroles: usize,
    /// Namespaces the RoleBindings are spread over.
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
}

fn pct(samples: &[Duration], q: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Sends `body` and fails unless the apiserver answered 2xx.
async fn must(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let (status, bytes) = raw_request(
        client,
        method,
        path,
        Some("application/json"),
        serde_json::to_vec(&body)?,
    )
    .await?;
    if !(200..300).contains(&status) {
        bail!(
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Times `n` sequential requests; each must answer `want`.
async fn sample(
    client: &kube::Client,
    path: &str,
    n: usize,
    want: u16,
) -> anyhow::Result<Vec<Duration>> {
    // Warm up connections and the authorizer's snapshot.
    for _ in 0..50 {
        raw_request(client, "GET", path, None, Vec::new()).await?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = raw_request(client, "GET", path, None, Vec::new()).await?;
        out.push(t.elapsed());
        if status != want {
            bail!(
                "GET {path}: {status} (want {want}) {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    Ok(out)
}

struct Figures {
    get: Vec<Duration>,
    list: Vec<Duration>,
    denied: Vec<Duration>,
    admin: Vec<Duration>,
}

async fn measure(
    student: &kube::Client,
    admin: &kube::Client,
    n: usize,
) -> anyhow::Result<Figures> {
    Ok(Figures {
        get: sample(student, "/api/v1/namespaces/bench/configmaps/cm", n, 200).await?,
        list: sample(student, "/api/v1/namespaces/bench/configmaps", n, 200).await?,
        denied: sample(student, "/api/v1/namespaces/kube-system/secrets", n, 403).await?,
        admin: sample(admin, "/api/v1/namespaces/bench/configmaps/cm", n, 200).await?,
    })
}

fn row(what: &str, before: &[Duration], after: &[Duration]) {
    let (b50, b99, a50, a99) = (
        us(pct(before, 0.5)),
        us(pct(before, 0.99)),
        us(pct(after, 0.5)),
        us(pct(after, 0.99)),
    );
    println!(
        "{what:<34} {b50:>9.0} {b99:>9.0} {a50:>9.0} {a99:>9.0} {:>+11.0}",
        a99 - b99
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = args
        .apiserver
        .clone()
        .unwrap_or_else(|| bin_dir().join("apiserver"));
    let api = ApiServer::start_with(binary.clone(), Backend::Sqlite, &[])
        .await
        .with_context(|| format!("starting {}", binary.display()))?;
    let admin = api.client().await?;

    for (path, body) in [
        ("/api/v1/namespaces", json!({"metadata": {"name": "bench"}})),
        (
            "/api/v1/namespaces/bench/serviceaccounts",
            json!({"metadata": {"name": "student"}}),
        ),
        (
            "/api/v1/namespaces/bench/configmaps",
            json!({"metadata": {"name": "cm"}, "data": {"k": "v"}}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/bench/rolebindings",
            json!({"metadata": {"name": "student-view"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                   "subjects": [{"kind": "ServiceAccount", "name": "student", "namespace": "bench"}]}),
        ),
    ] {
        must(&admin, "POST", path, body).await?;
    }
    let tr = must(
        &admin,
        "POST",
        "/api/v1/namespaces/bench/serviceaccounts/student/token",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}),
    )
    .await?;
    let token = tr
        .pointer("/status/token")
        .and_then(Value::as_str)
        .context("TokenRequest returned no token")?
        .to_string();
    let mut cfg = api.kube_config().await?;
    cfg.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let student = kube::Client::try_from(cfg)?;

    // `view` is aggregated by the apiserver; wait until it grants configmaps.
    wait_until_every(
        "the student's read access through the view ClusterRole",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let path = "/api/v1/namespaces/bench/configmaps/cm";
            let (s, _) = raw_request(&student, "GET", path, None, Vec::new()).await?;
            Ok((s == 200).then_some(()))
        },
    )
    .await
    .context("student never got read access through the view ClusterRole")?;

    let before = measure(&student, &admin, args.requests).await?;

    let t = Instant::now();
    for i in 0..args.clusterroles {
        must(
            &admin,
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            json!({"metadata": {"name": format!("bench-role-{i}")},
                   "rules": [{"apiGroups": [""], "resources": ["configmaps", format!("res{i}")], "verbs": ["get", "list"]},
                             {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"], "resourceNames": [format!("d{i}")]}]}),
        )
        .await?;
    }
    for n in 0..args.namespaces {
        must(
            &admin,
            "POST",
            "/api/v1/namespaces",
            json!({"metadata": {"name": format!("bench-{n}")}}),
        )
        .await?;
    }
    for i in 0..args.rolebindings {
        // Every tenth binding lands in the namespace being measured.
        let ns = if i % 10 == 0 {
            "bench".to_string()
        } else {
            format!("bench-{}", i % args.namespaces.max(1))
        };
        must(
            &admin,
            "POST",
            &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
            json!({"metadata": {"name": format!("bench-rb-{i}")},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("bench-role-{}", i % args.clusterroles.max(1))},
                   "subjects": [{"kind": "ServiceAccount", "name": format!("sa-{i}"), "namespace": ns},
                                {"kind": "Group", "name": format!("group-{i}")}]}),
        )
        .await?;
    }
    let created = t.elapsed();

    let after = measure(&student, &admin, args.requests).await?;

    println!(
        "auth-bench: {} ({}), {} requests per figure, sequential, over HTTPS",
        binary.display(),
        if binary.to_string_lossy().contains("release") {
            "release"
        } else {
            "debug"
        },
        args.requests
    );
    println!(
        "created {} ClusterRoles + {} RoleBindings (in {} namespaces) in {:.1} s",
        args.clusterroles,
        args.rolebindings,
        args.namespaces + 1,
        created.as_secs_f64()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "latency in µs (bootstrap → many)", "p50", "p99", "p50", "p99", "Δp99"
    );
    row("student GET configmap (allowed)", &before.get, &after.get);
    row(
        "student LIST configmaps (allowed)",
        &before.list,
        &after.list,
    );
    row("student LIST secrets (403)", &before.denied, &after.denied);
    row(
        "admin GET (system:masters, no RBAC)",
        &before.admin,
        &after.admin,
    );
    let added = us(pct(&after.get, 0.99)) - us(pct(&before.get, 0.99));
    let rbac_share = us(pct(&after.get, 0.5)) - us(pct(&after.admin, 0.5));
    println!(
        "p99 added latency per request with {} RoleBindings and {} ClusterRoles: {:.0} µs (goal ≤ 200 µs)",
        args.rolebindings, args.clusterroles, added
    );
    println!(
        "p50 student GET minus admin GET with them present (token authn + RBAC): {rbac_share:.0} µs"
    );
    let many = format!(
        "with {} RoleBindings + {} ClusterRoles",
        args.rolebindings, args.clusterroles
    );
    figure(format!("p99 latency added per request {many}"), added, "µs")
        .goal("<= 200 µs")
        .record()?;
    for (what, bootstrap, loaded) in [
        ("student GET configmap (allowed)", &before.get, &after.get),
        ("student LIST secrets (403)", &before.denied, &after.denied),
    ] {
        figure(format!("{what} p99 {many}"), us(pct(loaded, 0.99)), "µs")
            .vs(
                "the same with bootstrap RBAC only",
                us(pct(bootstrap, 0.99)),
            )
            .record()?;
    }
    figure(
        format!("student GET p50 (token authn + RBAC) {many}"),
        us(pct(&after.get, 0.5)),
        "µs",
    )
    .vs(
        "admin GET p50 (system:masters, no RBAC)",
        us(pct(&after.admin, 0.5)),
    )
    .record()?;
    Ok(())
}
