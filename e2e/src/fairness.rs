//! The overload-fairness scenario of issue 18, point 4, shared by `e2e/tests/flowcontrol.rs`
//! (small numbers, debug build) and `fairness-bench` (release): one tenant's ServiceAccount
//! floods the server with looping LISTs of 300 ConfigMaps and a create storm, while another
//! tenant's ServiceAccount in the same priority level (`workload-low`), a `kube-system`
//! ServiceAccount (`workload-high`) and the admin (`system:masters`, exempt) probe it with
//! sequential GETs.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::config::{AuthInfo, Kubeconfig};

use crate::{ApiServer, raw_request};

/// The `/metrics` sample counting the flood's queue-full refusals.
pub const REJECTED: &str = "apiserver_flowcontrol_rejected_requests_total{flow_schema=\"service-accounts\",priority_level=\"workload-low\",reason=\"queue-full\"}";

/// The object every probe GETs (the victim tenant's own ConfigMap).
pub const VICTIM_PATH: &str = "/api/v1/namespaces/tenant-b/configmaps/mine";

/// ConfigMaps of 1 KiB in the flooding tenant's namespace: each LIST of them is real work
/// (three seats by Kubernetes' list work estimate).
pub const SEED_CONFIGMAPS: usize = 300;

/// A kube client that authenticates with a bearer token and never retries (every 429 is
/// seen; kube-rs retries them by itself otherwise).
pub async fn token_client(kubeconfig: &Path, token: &str) -> anyhow::Result<kube::Client> {
    let mut kc = Kubeconfig::read_from(kubeconfig)?;
    for a in &mut kc.auth_infos {
        a.auth_info = Some(AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        });
    }
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    cfg.default_retry = false;
    Ok(kube::Client::try_from(cfg)?)
}

/// The tenants of the scenario, with the ConfigMaps seeded.
pub struct Tenants {
    /// The server's admin kubeconfig (the flood builds its own client from it).
    pub kubeconfig: PathBuf,
    /// The flooding ServiceAccount's token (`tenant-a:flood`).
    pub flood_token: String,
    /// Another tenant's ServiceAccount (`tenant-b:victim`), same priority level as the flood.
    pub victim: kube::Client,
    /// The victim's token (for raw connections).
    pub victim_token: String,
    /// A `kube-system` ServiceAccount (`workload-high`).
    pub operator: kube::Client,
    /// The admin (`system:masters`, exempt from flow control).
    pub admin: kube::Client,
}

/// Creates the namespaces, ServiceAccounts (bound to cluster-admin), their tokens, the
/// flooding tenant's [`SEED_CONFIGMAPS`] ConfigMaps and the victim's ConfigMap.
pub async fn setup(server: &ApiServer) -> anyhow::Result<Tenants> {
    let k = server.kubectl(33);
    for ns in ["tenant-a", "tenant-b"] {
        k.ok(&["create", "namespace", ns])?;
    }
    k.ok(&["-n", "tenant-a", "create", "serviceaccount", "flood"])?;
    k.ok(&["-n", "tenant-b", "create", "serviceaccount", "victim"])?;
    k.ok(&["-n", "kube-system", "create", "serviceaccount", "operator"])?;
    for (name, sa) in [
        ("flood", "tenant-a:flood"),
        ("victim", "tenant-b:victim"),
        ("operator", "kube-system:operator"),
    ] {
        let sa_flag = format!("--serviceaccount={sa}");
        k.ok(&[
            "create",
            "clusterrolebinding",
            name,
            "--clusterrole=cluster-admin",
            &sa_flag,
        ])?;
    }
    let flood_token = k.ok(&["-n", "tenant-a", "create", "token", "flood"])?;
    let victim_token = k.ok(&["-n", "tenant-b", "create", "token", "victim"])?;
    let operator_token = k.ok(&["-n", "kube-system", "create", "token", "operator"])?;
    let kubeconfig = server.kubeconfig();
    let victim = token_client(&kubeconfig, victim_token.trim()).await?;
    let operator = token_client(&kubeconfig, operator_token.trim()).await?;
    let admin = server.client().await?;

    let payload = "x".repeat(1024);
    let mut creates = Vec::new();
    for i in 0..SEED_CONFIGMAPS {
        let admin = admin.clone();
        let body = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("cm-{i}")}, "data": {"d": payload}
        }))?;
        creates.push(tokio::spawn(async move {
            raw_request(
                &admin,
                "POST",
                "/api/v1/namespaces/tenant-a/configmaps",
                Some("application/json"),
                body,
            )
            .await
        }));
    }
    for c in creates {
        let (code, body) = c.await??;
        anyhow::ensure!(
            code == 201,
            "seed create: {code} {}",
            String::from_utf8_lossy(&body)
        );
    }
    k.ok(&[
        "-n",
        "tenant-b",
        "create",
        "configmap",
        "mine",
        "--from-literal=a=b",
    ])?;
    Ok(Tenants {
        kubeconfig,
        flood_token: flood_token.trim().to_string(),
        victim,
        victim_token: victim_token.trim().to_string(),
        operator,
        admin,
    })
}

/// `n` sequential GETs of `path` by `client`, `gap` apart: (latencies of the 200s, statuses
/// that were not 200; 0 = no answer).
pub async fn probe(
    client: &kube::Client,
    path: &str,
    n: usize,
    gap: Duration,
) -> (Vec<Duration>, Vec<u16>) {
    let mut lat = Vec::new();
    let mut bad = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        match raw_request(client, "GET", path, None, Vec::new()).await {
            Ok((200, _)) => lat.push(t.elapsed()),
            Ok((code, _)) => bad.push(code),
            Err(_) => bad.push(0),
        }
        tokio::time::sleep(gap).await;
    }
    (lat, bad)
}

/// One flood answer: status, `Retry-After`, and the body of a 429.
pub type FloodAnswer = (u16, String, String);

/// A running flood: `lists` looping LISTs of all ConfigMaps and `creates` looping creates
/// by the flooding ServiceAccount, on its own thread and runtime (`threads` workers, at nice
/// 19) so that the flood's client work does not delay the probes' own polling.
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<FloodAnswer>>>,
}

impl Flood {
    /// Starts the flood.
    /// A flood that `honours_retry_after` waits as long as a 429's `Retry-After` says before
    /// its next request, as client-go and kube-rs do; one that does not retries at once (a
    /// misbehaving client).
    pub fn start(
        tenants: &Tenants,
        lists: usize,
        creates: usize,
        threads: usize,
        honours_retry_after: bool,
    ) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let kubeconfig = tenants.kubeconfig.clone();
        let token = tenants.flood_token.clone();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<Vec<FloodAnswer>> {
            // On Linux a nice value is per thread and inherited by the threads it starts: the
            // flooding client takes only the CPU that the server and the probes leave over, as
            // if it ran on another machine (on two cores it would otherwise delay the probes'
            // own threads, and even exempt requests would measure this machine's scheduler).
            rustix::process::setpriority_process(None, 19)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()?;
            rt.block_on(flood_run(
                &kubeconfig,
                &token,
                (lists, creates),
                honours_retry_after,
                stop2,
            ))
        });
        Flood { stop, thread }
    }

    /// Waits until the server has refused the flood at least once (the flood is at full
    /// pressure), at most `timeout`.
    pub async fn wait_refused(
        &self,
        admin: &kube::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let refused = metric(admin, REJECTED).await.unwrap_or(0.0);
            if refused > 0.0 {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the flood was not refused within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the flood and returns every answer it got.
    pub async fn stop(self) -> anyhow::Result<Vec<FloodAnswer>> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?
    }
}

async fn flood_run(
    kubeconfig: &Path,
    token: &str,
    (lists, creates): (usize, usize),
    honours_retry_after: bool,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<FloodAnswer>> {
    let flood = token_client(kubeconfig, token).await?;
    let answers = Arc::new(Mutex::new(Vec::<FloodAnswer>::new()));
    let mut flooders = Vec::new();
    for i in 0..lists + creates {
        let (flood, answers, stop) = (flood.clone(), answers.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let req = if i < lists {
                    http::Request::get("/api/v1/configmaps").body(Vec::new())
                } else {
                    n += 1;
                    let body = serde_json::to_vec(&serde_json::json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("storm-{i}-{n}")}
                    }))
                    .unwrap_or_default();
                    http::Request::post("/api/v1/namespaces/tenant-a/configmaps")
                        .header("content-type", "application/json")
                        .body(body)
                };
                let Ok(req) = req else { break };
                let Ok(resp) = flood.send(req.map(kube::client::Body::from)).await else {
                    continue;
                };
                let code = resp.status().as_u16();
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = resp
                    .into_body()
                    .collect_bytes()
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let wait = match retry.parse::<u64>() {
                    Ok(secs) if code == 429 && honours_retry_after => Some(secs),
                    _ => None,
                };
                if let Ok(mut a) = answers.lock() {
                    a.push((code, retry, if code == 429 { body } else { String::new() }));
                }
                if let Some(secs) = wait {
                    // Woken early when the flood stops.
                    let until = Instant::now() + Duration::from_secs(secs);
                    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for f in flooders {
        let _ = f.await;
    }
    let answers = answers
        .lock()
        .map(|a| a.clone())
        .map_err(|_| anyhow::anyhow!("flood answers poisoned"))?;
    Ok(answers)
}

/// The `p` quantile (0..=1) of `v` (sorted in place); zero for no samples.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The value of the `/metrics` sample whose line starts with `prefix` (labels included).
pub async fn metric(admin: &kube::Client, prefix: &str) -> anyhow::Result<f64> {
    let (code, metrics) = raw_request(admin, "GET", "/metrics", None, Vec::new()).await?;
    anyhow::ensure!(code == 200, "GET /metrics: {code}");
    let metrics = String::from_utf8_lossy(&metrics);
    let line = metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("{prefix} missing from /metrics"))?;
    Ok(line.rsplit(' ').next().unwrap_or("0").parse()?)
}
