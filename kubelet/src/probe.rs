//! Container probes: exec (ExecSync), httpGet (HTTP/1.1 GET, 200–399 succeeds) and tcpSocket,
//! and [`Tracker`], the per-probe result bookkeeping of Kubernetes' prober worker
//! (successThreshold/failureThreshold, initialDelaySeconds, periodSeconds).
//!
//! The exec and HTTP building blocks ([`exec`], [`http_get`], [`resolve_port`]) are shared with
//! the lifecycle hooks ([`crate::hooks`]).
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, HTTPHeader, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Kubelet;

/// The port number `p` names for container `c`: a number, a numeric string, or the name of one
/// of the container's ports; `Err` carries Kubernetes' message.
pub fn resolve_port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    let n = match p {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(i) => i,
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .map(|cp| cp.container_port)
                .ok_or_else(|| format!("couldn't find port: {s} in container {}", c.name))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port number: {n}"))
}

/// What an ExecSync in a container produced.
pub struct ExecOutput {
    /// The command's exit code.
    pub exit_code: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `cmd` in the container with CRI ExecSync (`timeout_secs` 0: no limit). `Err`: the
/// runtime could not run it at all.
pub async fn exec(
    k: &Kubelet,
    container_id: &str,
    cmd: &[String],
    timeout_secs: i64,
) -> Result<ExecOutput, String> {
    let mut rt = k.cri.rt.clone();
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: container_id.into(),
            cmd: cmd.to_vec(),
            timeout: timeout_secs,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    Ok(ExecOutput {
        exit_code: r.exit_code,
        stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
    })
}

/// Why an HTTP GET got no response.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Connecting or talking failed.
    Io(String),
    /// No answer within the timeout.
    Timeout,
}

/// `GET path` to `host:port` over HTTP/1.1 with `headers`; the response's status code.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[HTTPHeader],
    user_agent: &str,
    timeout: Duration,
) -> Result<u16, HttpError> {
    let addr = host_port(host, port);
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        s.write_all(request(&addr, &path, headers, user_agent).as_bytes())
            .await?;
        let mut buf = vec![0u8; 256];
        let n = s.read(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(head)) => Ok(head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)),
        Ok(Err(e)) => Err(HttpError::Io(e.to_string())),
        Err(_) => Err(HttpError::Timeout),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The request head; a `Host` or `User-Agent` among `headers` replaces the default one.
fn request(addr: &str, path: &str, headers: &[HTTPHeader], user_agent: &str) -> String {
    let has = |n: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(n));
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !has("host") {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("user-agent") {
        req.push_str(&format!("User-Agent: {user_agent}\r\n"));
    }
    req.push_str("Connection: close\r\n");
    for h in headers {
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("\r\n");
    req
}

/// Runs one probe of container `c`; `Err` carries Kubernetes' failure message.
pub async fn run(
    k: &Kubelet,
    p: &Probe,
    c: &Container,
    container_id: &str,
    pod_ip: &str,
) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let r = exec(k, container_id, &cmd, timeout.as_secs() as i64).await?;
        if r.exit_code != 0 {
            return Err(format!(
                "command {cmd:?} exited with {}: {}{}",
                r.exit_code, r.stdout, r.stderr
            ));
        }
        return Ok(());
    }
    if let Some(t) = &p.tcp_socket {
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let addr = host_port(&host, resolve_port(&t.port, c)?);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(h) = &p.http_get {
        let host = h
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        let port = resolve_port(&h.port, c)?;
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let addr = host_port(&host, port);
        let url = format!("http://{addr}{path}");
        let headers = h.http_headers.clone().unwrap_or_default();
        return match http_get(&host, port, &path, &headers, "kube-probe/1.33", timeout).await {
            Ok(code) if (200..400).contains(&code) => Ok(()),
            Ok(code) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Err(HttpError::Io(e)) => Err(format!("Get \"{url}\": dial tcp {addr}: connect: {e}")),
            Err(HttpError::Timeout) => Err(format!("Get \"{url}\": context deadline exceeded")),
        };
    }
    Ok(())
}

/// The state of one probe of one container, as Kubernetes' prober worker keeps it: the
/// published result changes only after `successThreshold` consecutive successes or
/// `failureThreshold` consecutive failures.
#[derive(Debug)]
pub struct Tracker {
    /// The published result (`None`: unknown, as a startup probe starts).
    pub result: Option<bool>,
    /// The last raw outcome and how many times in a row it came.
    last: Option<bool>,
    run: i32,
    /// When the probe last ran.
    last_run: Option<Instant>,
}

impl Tracker {
    /// A tracker whose result starts as `initial` (readiness: failure; liveness: success;
    /// startup: unknown).
    pub fn new(initial: Option<bool>) -> Tracker {
        Tracker {
            result: initial,
            last: None,
            run: 0,
            last_run: None,
        }
    }

    /// Whether the probe is due: `initialDelaySeconds` passed since the container started and
    /// `periodSeconds` since the last run.
    pub fn due(&self, p: &Probe, running_for: Duration, now: Instant) -> bool {
        let delay = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        running_for >= delay
            && self
                .last_run
                .map(|t| now.saturating_duration_since(t) >= period)
                .unwrap_or(true)
    }

    /// Records one outcome at `now`; returns the new published result when it changed or was
    /// confirmed by reaching a threshold (`Some(false)` for liveness/startup: kill).
    pub fn record(&mut self, p: &Probe, ok: bool, now: Instant) -> Option<bool> {
        self.last_run = Some(now);
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            p.success_threshold.unwrap_or(1).max(1)
        } else {
            p.failure_threshold.unwrap_or(3).max(1)
        };
        if self.run < threshold {
            return None;
        }
        self.result = Some(ok);
        Some(ok)
    }

    /// Starts counting afresh after a kill (Kubernetes resets the run once it acts on a
    /// failure).
    pub fn reset_run(&mut self) {
        self.last = None;
        self.run = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    fn probe(success: i32, failure: i32) -> Probe {
        Probe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            period_seconds: Some(2),
            initial_delay_seconds: Some(5),
            ..Default::default()
        }
    }

    #[test]
    fn readiness_flips_only_after_thresholds() {
        let p = probe(2, 3);
        let now = Instant::now();
        let mut t = Tracker::new(Some(false));
        assert_eq!(t.record(&p, true, now), None);
        assert_eq!(t.result, Some(false), "one success of two is not ready");
        assert_eq!(t.record(&p, true, now), Some(true));
        assert_eq!(t.result, Some(true));
        assert_eq!(t.record(&p, false, now), None);
        assert_eq!(t.record(&p, false, now), None);
        assert_eq!(t.result, Some(true), "two failures of three keep it ready");
        // A success in between restarts the failure count.
        assert_eq!(t.record(&p, true, now), None);
        assert_eq!(t.record(&p, false, now), None);
        assert_eq!(t.record(&p, false, now), None);
        assert_eq!(t.record(&p, false, now), Some(false));
        assert_eq!(t.result, Some(false));
    }

    #[test]
    fn startup_result_is_unknown_until_a_threshold() {
        let p = probe(1, 2);
        let now = Instant::now();
        let mut t = Tracker::new(None);
        assert_eq!(t.record(&p, false, now), None);
        assert_eq!(t.result, None);
        assert_eq!(t.record(&p, false, now), Some(false));
        t.reset_run();
        assert_eq!(t.record(&p, false, now), None, "counting starts again");
        assert_eq!(t.record(&p, true, now), Some(true));
    }

    #[test]
    fn due_honours_initial_delay_and_period() {
        let p = probe(1, 3);
        let now = Instant::now();
        let mut t = Tracker::new(None);
        assert!(!t.due(&p, Duration::from_secs(4), now));
        assert!(t.due(&p, Duration::from_secs(5), now));
        t.record(&p, true, now);
        assert!(!t.due(&p, Duration::from_secs(6), now + Duration::from_secs(1)));
        assert!(t.due(&p, Duration::from_secs(7), now + Duration::from_secs(2)));
    }

    #[test]
    fn ports_resolve_by_number_or_name() {
        let c = Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(resolve_port(&IntOrString::Int(81), &c), Ok(81));
        assert_eq!(resolve_port(&IntOrString::String("82".into()), &c), Ok(82));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("metrics".into()), &c),
            Err("couldn't find port: metrics in container web".into())
        );
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
    }

    #[test]
    fn request_head_takes_custom_headers() {
        let h = [HTTPHeader {
            name: "Host".into(),
            value: "example.com".into(),
        }];
        let r = request("10.0.0.1:80", "/x", &h, "kube-lifecycle/1.33");
        assert!(r.starts_with("GET /x HTTP/1.1\r\n"), "{r}");
        assert!(!r.contains("Host: 10.0.0.1:80"), "{r}");
        assert!(r.contains("Host: example.com\r\n"), "{r}");
        assert!(r.contains("User-Agent: kube-lifecycle/1.33\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "{r}");
        assert_eq!(host_port("fd00::1", 80), "[fd00::1]:80");
    }
}
