//! `portforward-bench`: `kubectl port-forward` against `kubectl exec -- dd` of the same bytes and
//! a direct TCP connection to the pod IP, in the same run, on a one-node `lotse up`. Figures are
//! printed beside each other, never asserted.
//!
//! Throughput: a pod serves `--mib` MiB of zeros on port 9001 per connection (`nc -ll -e`);
//! each path reads them all. Connection setup: `--connections` sequential connections to an echo
//! port (9000), each timed from `connect` until one byte came back; for exec, the whole of
//! `kubectl exec -- true`. Needs root, containerd and the busybox/pause image archives:
//!
//!   cargo build -p lotse -p e2e --bins
//!   target/debug/portforward-bench --kubectl-minor 33
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use e2e::Kubectl;
use e2e::lotse::{Node, random_pod_cidr, wait_for};
use e2e::report::{figure, ms as in_ms};

/// Port-forward throughput and connection setup vs exec and direct TCP.
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// MiB moved per throughput sample.
    #[arg(long, default_value_t = 64)]
    mib: u32,
    /// Throughput samples per path (the best is kept, as the machine is shared).
    #[arg(long, default_value_t = 3)]
    samples: u32,
    /// Sequential connections for the setup latency.
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// kubectl minor version (27: SPDY, 33: SPDY tunnelled in WebSocket).
    #[arg(long, env = "LOTSE_BENCH_KUBECTL_MINOR", default_value_t = 33)]
    kubectl_minor: u32,
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: bench}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: bench
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "printf '#!/bin/sh\ndd if=/dev/zero bs=65536 count=$(cat /count) 2>/dev/null\n' > /gen && chmod +x /gen && echo 1024 > /count && nc -ll -p 9001 -e /gen & nc -ll -p 9000 -e cat & sleep 100000"]
"#;

/// Reads everything from `127.0.0.1:port`; the MiB/s.
fn read_all(host: &str, port: u16, expect: u64) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            k => n += k as u64,
        }
    }
    ensure!(
        n == expect,
        "read {n} bytes from {host}:{port}, expected {expect}"
    );
    Ok(n as f64 / 1048576.0 / t0.elapsed().as_secs_f64())
}

/// Connect, send one byte, wait for its echo: the time.
fn setup(host: &str, port: u16) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(t0.elapsed())
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let node = Node::start(
        tmp.path(),
        "pf-bench",
        &random_pod_cidr()?,
        &["busybox.tar", "pause.tar"],
    )?;
    let k = Kubectl::new(
        args.kubectl_minor,
        node.data.join("admin.kubeconfig"),
        tmp.path().join("cache"),
    );
    k.ok_stdin(&["apply", "-f", "-"], POD)?;
    let ip = wait_for(
        &k,
        &["get", "pod", "bench", "-o", "jsonpath={.status.podIP}"],
        "pod bench Running with an IP",
        Duration::from_secs(60),
        |s| !s.is_empty(),
    )?;
    let count = args.mib * 16; // 64 KiB blocks
    k.ok(&[
        "exec",
        "bench",
        "--",
        "sh",
        "-c",
        &format!("echo {count} > /count"),
    ])?;
    let bytes = u64::from(args.mib) * 1048576;
    let (echo, zeros) = (e2e::free_port()?, e2e::free_port()?);
    let pf = k.spawn(
        &[
            "port-forward",
            "pod/bench",
            &format!("{echo}:9000"),
            &format!("{zeros}:9001"),
        ],
        tmp.path(),
    )?;
    let (ok, out) = pf.wait_for(Duration::from_secs(20), |o| {
        o.contains(&format!("127.0.0.1:{zeros}"))
    });
    ensure!(ok, "port-forward did not start: {out} {}", pf.stderr());
    // Let the pod's servers come up.
    let t0 = Instant::now();
    while setup(&ip, 9000).is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("the pod's echo server did not come up");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Throughput.
    let best = |f: &dyn Fn() -> anyhow::Result<f64>| -> anyhow::Result<f64> {
        let mut b: f64 = 0.0;
        for _ in 0..args.samples {
            b = b.max(f()?);
        }
        Ok(b)
    };
    let direct_tp = best(&|| read_all(&ip, 9001, bytes))?;
    let pf_tp = best(&|| read_all("127.0.0.1", zeros, bytes))?;
    let exec_tp = best(&|| {
        let t0 = Instant::now();
        let mut child = Command::new(
            e2e::KUBECTL_DIR.to_string() + &format!("/kubectl.1.{}", args.kubectl_minor),
        )
        .arg("--kubeconfig")
        .arg(node.data.join("admin.kubeconfig"))
        .args(["exec", "bench", "--", "/gen"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("kubectl exec")?;
        let mut out = child.stdout.take().context("no stdout")?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            match out.read(&mut buf)? {
                0 => break,
                k => n += k as u64,
            }
        }
        child.wait()?;
        ensure!(n == bytes, "exec read {n} bytes, expected {bytes}");
        Ok(n as f64 / 1048576.0 / t0.elapsed().as_secs_f64())
    })?;

    // Connection setup.
    let mut direct: Vec<Duration> = (0..args.connections)
        .map(|_| setup(&ip, 9000))
        .collect::<anyhow::Result<_>>()?;
    let mut forwarded: Vec<Duration> = (0..args.connections)
        .map(|_| setup("127.0.0.1", echo))
        .collect::<anyhow::Result<_>>()?;
    let execs = 10;
    let mut exec_setup: Vec<Duration> = (0..execs)
        .map(|_| {
            let t0 = Instant::now();
            k.ok(&["exec", "bench", "--", "true"])?;
            Ok(t0.elapsed())
        })
        .collect::<anyhow::Result<_>>()?;

    println!(
        "port-forward benchmark (kubectl 1.{}, {} MiB per sample, best of {}; {} connections, {} execs)",
        args.kubectl_minor, args.mib, args.samples, args.connections, execs
    );
    println!(
        "{:<34} {:>14} {:>14} {:>14}",
        "path", "MiB/s", "setup p50", "setup p99"
    );
    println!(
        "{:<34} {:>14.1} {:>14} {:>14}",
        "direct TCP to the pod IP",
        direct_tp,
        ms(percentile(&mut direct, 0.50)),
        ms(percentile(&mut direct, 0.99))
    );
    println!(
        "{:<34} {:>14.1} {:>14} {:>14}",
        "kubectl port-forward",
        pf_tp,
        ms(percentile(&mut forwarded, 0.50)),
        ms(percentile(&mut forwarded, 0.99))
    );
    println!(
        "{:<34} {:>14.1} {:>14} {:>14}",
        "kubectl exec -- dd (whole command)",
        exec_tp,
        ms(percentile(&mut exec_setup, 0.50)),
        ms(percentile(&mut exec_setup, 0.99))
    );
    println!(
        "port-forward: {:.0}% of direct TCP throughput, {:.1}x exec's",
        pf_tp / direct_tp * 100.0,
        pf_tp / exec_tp
    );
    let kubectl = format!("kubectl 1.{}", args.kubectl_minor);
    figure(
        format!(
            "{kubectl} port-forward throughput, best of {}",
            args.samples
        ),
        pf_tp,
        "MiB/s",
    )
    .vs("direct TCP to the pod IP", direct_tp)
    .record()?;
    figure(
        format!("{kubectl} exec -- dd throughput, best of {}", args.samples),
        exec_tp,
        "MiB/s",
    )
    .vs("direct TCP to the pod IP", direct_tp)
    .record()?;
    figure(
        format!("{kubectl} port-forward connection setup p99"),
        in_ms(percentile(&mut forwarded, 0.99)),
        "ms",
    )
    .vs(
        "direct TCP to the pod IP",
        in_ms(percentile(&mut direct, 0.99)),
    )
    .record()?;
    drop(pf);
    let _ = k.run(&["delete", "pod", "bench", "--grace-period=1", "--wait=true"]);
    Ok(())
}
