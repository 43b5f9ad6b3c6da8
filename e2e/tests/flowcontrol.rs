//! Overload fairness and request limits (issue 18, points 4 and 5) on a real apiserver with
//! small limits (`--max-requests-inflight 8 --max-mutating-requests-inflight 4
//! --request-timeout 8s`).
//!
//! One tenant's ServiceAccount floods the server (200 concurrent LISTs of 300 ConfigMaps in a
//! loop plus a create storm): it gets 429 with `Retry-After: 1` and Kubernetes' plain-text
//! answer, counted in `apiserver_flowcontrol_rejected_requests_total`; meanwhile another
//! tenant's ServiceAccount in the same priority level, a `kube-system` ServiceAccount and the
//! admin (`system:masters`, exempt) get every request answered. The victim's p99 idle and
//! during the flood are printed beside the goal (2×), never asserted. A client that sends its
//! headers but never its body gets 504 with Kubernetes' Timeout Status after the request
//! timeout (no slow-loris connection is held forever).
//!
//! Needs the built apiserver binary (~25 s).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::fairness::{self, Flood, VICTIM_PATH, percentile, probe};
use e2e::{ApiServer, Backend};

#[tokio::test]
#[ignore = "needs the built apiserver binary"]
async fn a_flooding_tenant_is_refused_while_others_are_served() -> anyhow::Result<()> {
    let server = ApiServer::start_with(
        e2e::bin_dir().join("apiserver"),
        Backend::Sqlite,
        &[
            "--max-requests-inflight",
            "8",
            "--max-mutating-requests-inflight",
            "4",
            "--request-timeout",
            "8s",
        ],
    )
    .await?;
    let t = fairness::setup(&server).await?;
    let gap = Duration::from_millis(20);
    let (mut idle, bad) = probe(&t.victim, VICTIM_PATH, 30, gap).await;
    anyhow::ensure!(bad.is_empty(), "victim idle answers: {bad:?}");

    // The flood: 200 looping LISTs and 40 looping creates while the three probe.
    let flood = Flood::start(&t, 200, 40, 1, true);
    flood
        .wait_refused(&t.admin, Duration::from_secs(30))
        .await?;
    let (victim_run, operator_run, admin_run) = tokio::join!(
        probe(&t.victim, VICTIM_PATH, 30, gap),
        probe(&t.operator, VICTIM_PATH, 30, gap),
        probe(&t.admin, VICTIM_PATH, 30, gap),
    );
    let codes = flood.stop().await?;
    let refused: Vec<_> = codes.iter().filter(|c| c.0 == 429).collect();
    let served = codes.iter().filter(|c| c.0 == 200 || c.0 == 201).count();
    eprintln!(
        "flood: {} requests, {served} served, {} refused with 429",
        codes.len(),
        refused.len()
    );
    if refused.is_empty() {
        let (_, m) = e2e::raw_request(&t.admin, "GET", "/metrics", None, Vec::new()).await?;
        let m = String::from_utf8_lossy(&m);
        for l in m.lines().filter(|l| l.starts_with("apiserver_flowcontrol")) {
            eprintln!("{l}");
        }
        anyhow::bail!("the flood was never refused");
    }
    for (_, retry, body) in &refused {
        assert_eq!(retry, "1", "Retry-After");
        assert_eq!(body, "Too many requests, please try again later.\n");
    }
    anyhow::ensure!(served > 0, "the flood was refused entirely");
    for (who, (_, bad)) in [
        ("victim (another tenant)", &victim_run),
        ("kube-system ServiceAccount", &operator_run),
        ("admin (exempt)", &admin_run),
    ] {
        anyhow::ensure!(bad.is_empty(), "{who} got {bad:?} during the flood");
    }
    let (mut during, _) = victim_run;
    let idle_p99 = percentile(&mut idle, 0.99);
    let flood_p99 = percentile(&mut during, 0.99);
    eprintln!(
        "victim GET p99: idle {idle_p99:?}, during the flood {flood_p99:?} ({:.1}x; goal <= 2x)",
        flood_p99.as_secs_f64() / idle_p99.as_secs_f64().max(1e-6)
    );
    let rejected = fairness::metric(&t.admin, fairness::REJECTED).await?;
    anyhow::ensure!(rejected > 0.0, "no queue-full rejection counted");

    // A body that never comes: 504 after the request timeout, with Kubernetes' Status.
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking({
        let ca = server.data_dir().join("pki/ca.crt");
        let port = server.port();
        let token = t.victim_token.clone();
        move || stalled_upload(&ca, port, &token)
    })
    .await??;
    eprintln!("stalled upload answered after {:?}", started.elapsed());
    anyhow::ensure!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    anyhow::ensure!(
        answer.contains(r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Timeout: request did not complete within requested timeout - context deadline exceeded","reason":"Timeout","details":{},"code":504}"#),
        "{answer}"
    );
    Ok(())
}

/// Sends a POST's headers announcing 100 bytes, then nothing; returns what the server answers.
fn stalled_upload(ca: &std::path::Path, port: u16, token: &str) -> anyhow::Result<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca)?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), "127.0.0.1".try_into()?)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "POST /api/v1/namespaces/tenant-b/configmaps HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )?;
    tls.flush()?;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("\"code\":504") {
        let n = tls.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
