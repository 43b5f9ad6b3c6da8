//! Container probes: exec (ExecSync), httpGet (HTTP/1.1 GET over HTTP or HTTPS without
//! certificate verification; same-host redirects followed; 200–399 succeeds, 3xx with a
//! warning) and tcpSocket, and [`Tracker`], the per-probe result bookkeeping of Kubernetes' prober worker
//! (successThreshold/failureThreshold, initialDelaySeconds, periodSeconds).
//!
//! The exec and HTTP building blocks ([`exec`], [`http_get`], [`resolve_port`]) are shared with
//! the lifecycle hooks ([`crate::hooks`]).
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, HTTPHeader, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
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

/// How an HTTP GET talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS, without verifying the server's certificate.
    Https,
}

impl Scheme {
    /// The scheme of an `HTTPGetAction` (`HTTP` when unset); `Err`: unsupported.
    pub fn parse(s: Option<&str>) -> Result<Scheme, String> {
        match s.unwrap_or("HTTP") {
            "HTTP" | "" => Ok(Scheme::Http),
            "HTTPS" => Ok(Scheme::Https),
            other => Err(format!("unsupported scheme: {other:?}")),
        }
    }

    fn url_prefix(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Why an HTTP GET got no response; the message is Go's `http.Client` error
/// (`Get "<url>": ...`), as Kubernetes reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Connecting, the TLS handshake or talking failed.
    Io(String),
    /// No answer within the timeout.
    Timeout(String),
    /// An HTTPS request was answered in plain HTTP (lifecycle hooks retry with HTTP).
    PlainHttpAnswer(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Io(m) | HttpError::Timeout(m) | HttpError::PlainHttpAnswer(m) => {
                f.write_str(m)
            }
        }
    }
}

/// What an HTTP GET got back.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code of the last response (0 if it had none readable).
    pub code: u16,
    /// Up to [`MAX_BODY`] bytes of its body (what came with it; no chunked decoding).
    pub body: String,
    /// The URL of the last request (after same-host redirects).
    pub url: String,
}

/// How much of a response body is kept (Kubernetes' `maxRespBodyLength`).
pub const MAX_BODY: usize = 10 << 10;
/// Same-host redirects followed before giving up (Go's `http.Client` limit).
const MAX_REDIRECTS: usize = 10;
/// The largest response head read.
const MAX_HEAD: usize = 64 << 10;

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scheme: Scheme,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn url(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme.url_prefix(),
            host_port(&self.host, self.port),
            self.path
        )
    }
}

/// `GET path` to `host:port` over HTTP/1.1 (or HTTPS) with `headers`, following redirects to
/// the same host as Kubernetes' probes do (`followNonLocalRedirects: false`): a redirect to
/// another host ends the chain and its 3xx response is returned.
pub async fn http_get(
    scheme: Scheme,
    host: &str,
    port: u16,
    path: &str,
    headers: &[HTTPHeader],
    user_agent: &str,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut target = Target {
        scheme,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        path,
    };
    let mut headers = headers.to_vec();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut redirects = 0;
    loop {
        let url = target.url();
        let r = match tokio::time::timeout_at(deadline, exchange(&target, &headers, user_agent))
            .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(HttpError::Timeout(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )));
            }
        };
        let next = match (r.code, &r.location) {
            (301 | 302 | 303 | 307 | 308, Some(loc)) => redirect_target(&target, loc),
            _ => None,
        };
        let Some(next) = next.filter(|n| n.host.eq_ignore_ascii_case(&target.host)) else {
            return Ok(HttpResponse {
                code: r.code,
                body: r.body,
                url,
            });
        };
        redirects += 1;
        if redirects >= MAX_REDIRECTS {
            return Err(HttpError::Io(format!(
                "Get \"{}\": stopped after {MAX_REDIRECTS} redirects",
                next.url()
            )));
        }
        // Go keeps a custom Host header only for a relative redirect.
        if r.location.as_deref().is_some_and(|l| l.contains("://")) {
            headers.retain(|h| !h.name.eq_ignore_ascii_case("host"));
        }
        target = next;
    }
}

/// The target a `Location` header points to, relative to `from`; `None`: unusable.
fn redirect_target(from: &Target, loc: &str) -> Option<Target> {
    let (scheme, rest) = if let Some(r) = loc.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = loc.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if loc.starts_with('/') && !loc.starts_with("//") {
        return Some(Target {
            path: loc.to_string(),
            ..from.clone()
        });
    } else if loc.contains("://") || loc.starts_with("//") {
        return None;
    } else {
        // Relative to the current path's directory.
        let dir = from.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        return Some(Target {
            path: format!("{dir}/{loc}"),
            ..from.clone()
        });
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let default_port = if scheme == Scheme::Https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']')?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some(Target {
        scheme,
        host,
        port,
        path,
    })
}

/// One raw response.
struct RawResponse {
    code: u16,
    location: Option<String>,
    body: String,
}

/// Connects to `t`, sends one request and reads the response.
async fn exchange(
    t: &Target,
    headers: &[HTTPHeader],
    user_agent: &str,
) -> Result<RawResponse, HttpError> {
    let addr = host_port(&t.host, t.port);
    let url = t.url();
    let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(|e| {
        HttpError::Io(format!(
            "Get \"{url}\": dial tcp {addr}: connect: {}",
            go_io_error(&e)
        ))
    })?;
    let req = request(&addr, &t.path, headers, user_agent);
    let talk_err = |e: std::io::Error| HttpError::Io(format!("Get \"{url}\": {}", go_io_error(&e)));
    match t.scheme {
        Scheme::Http => talk(tcp, &req).await.map_err(talk_err),
        Scheme::Https => {
            let name =
                server_name(&t.host).map_err(|e| HttpError::Io(format!("Get \"{url}\": {e}")))?;
            let config =
                insecure_tls_config().map_err(|e| HttpError::Io(format!("Get \"{url}\": {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| tls_error(&url, e))?;
            talk(tls, &req).await.map_err(|e| tls_error(&url, e))
        }
    }
}

/// A TLS-side error as Go words it; a plain-HTTP answer gets its own variant.
fn tls_error(url: &str, e: std::io::Error) -> HttpError {
    let rustls_err = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
            | rustls::InvalidMessage::UnknownProtocolVersion,
        )) => HttpError::PlainHttpAnswer(format!(
            "Get \"{url}\": http: server gave HTTP response to HTTPS client"
        )),
        Some(r) => HttpError::Io(format!("Get \"{url}\": tls: {r}")),
        None => HttpError::Io(format!("Get \"{url}\": {}", go_io_error(&e))),
    }
}

/// The text Go gives the common socket errors.
fn go_io_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset by peer".into(),
        UnexpectedEof => "EOF".into(),
        HostUnreachable => "no route to host".into(),
        NetworkUnreachable => "network is unreachable".into(),
        _ => e.to_string(),
    }
}

/// The TLS server name for `host`: an IP address (sends no SNI, as Go) or a DNS name. As in
/// Kubernetes (Go's `http.Transport`), SNI follows the URL's host, never a custom `Host` header.
fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|e| format!("invalid server name {host:?}: {e}"))
}

/// Writes `req` and reads one response (the head up to [`MAX_HEAD`], the body up to
/// [`MAX_BODY`] or its Content-Length).
async fn talk<S>(mut s: S, req: &str) -> std::io::Result<RawResponse>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("net/http: response headers too long"));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let location = header("location");
    let want = header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = buf[head_end..].to_vec();
    while body.len() < want {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(MAX_BODY);
    Ok(RawResponse {
        code,
        location,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The TLS client configuration of probes and HTTPS lifecycle hooks: it accepts any server
/// certificate. Kubernetes does the same (`tls.Config{InsecureSkipVerify: true}` in
/// `pkg/probe/http` and the kubelet's lifecycle-hook client): the kubelet has no trust roots
/// for what a container serves, which is typically a self-signed certificate, and a probe
/// only asks "is it answering", not "is it who it claims". The handshake signature is still
/// checked against the presented certificate's key, as Go does.
fn insecure_tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(AcceptAnyCert(provider.clone()));
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    Arc::new(
                        b.dangerous()
                            .with_custom_certificate_verifier(verifier)
                            .with_no_client_auth(),
                    )
                })
                .map_err(|e| format!("tls: {e}"))
        })
        .clone()
}

/// A [`rustls::client::danger::ServerCertVerifier`] that takes any certificate chain (see
/// [`insecure_tls_config`]) but checks handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
        return http_probe(h, c, pod_ip, timeout).await;
    }
    Ok(())
}

/// Runs httpGet probe `h` of container `c` (pod IP `pod_ip`) with `timeout`; `Err` carries
/// Kubernetes' failure message.
pub async fn http_probe(
    h: &HTTPGetAction,
    c: &Container,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    let scheme = Scheme::parse(h.scheme.as_deref())?;
    let host = h
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    let port = resolve_port(&h.port, c)?;
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    let headers = h.http_headers.clone().unwrap_or_default();
    let r = http_get(
        scheme,
        &host,
        port,
        &path,
        &headers,
        "kube-probe/1.33",
        timeout,
    )
    .await
    .map_err(|e| e.to_string())?;
    match http_outcome(&r) {
        HttpOutcome::Success => Ok(()),
        HttpOutcome::Warning(w) => {
            // Kubernetes counts this as success and records a ContainerProbeWarning event.
            tracing::warn!(container = %c.name, url = %r.url, "probe warning: {w}");
            Ok(())
        }
        HttpOutcome::Failure(f) => Err(f),
    }
}

/// How Kubernetes judges an httpGet probe's response.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpOutcome {
    /// 200–299.
    Success,
    /// 300–399: a redirect that was not followed (another host, or no Location); counts as
    /// success.
    Warning(String),
    /// Anything else, with Kubernetes' message.
    Failure(String),
}

/// The outcome of an httpGet probe that got response `r` (Kubernetes' `DoHTTPProbe`).
pub fn http_outcome(r: &HttpResponse) -> HttpOutcome {
    match r.code {
        200..=299 => HttpOutcome::Success,
        300..=399 => HttpOutcome::Warning(format!(
            "Probe terminated redirects, Response body: {}",
            r.body
        )),
        code => HttpOutcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
    }
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

    /// What the test server saw of one request: its path and Host header.
    type Seen = Arc<std::sync::Mutex<Vec<(String, String)>>>;

    /// Serves HTTPS on 127.0.0.1 with a fresh self-signed certificate for "localhost":
    /// `/ok` 200, `/fail` 500, `/hop` a same-host redirect to `/ok`, `/away` a redirect to
    /// another host, `/loop` a redirect to itself. Returns the port and the requests seen.
    async fn tls_server() -> (u16, Seen) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("self-signed certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let seen = Seen::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let host = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Host: "))
                        .unwrap_or("")
                        .to_string();
                    seen.lock().expect("seen").push((path.clone(), host));
                    let (status, extra, body) = match path.as_str() {
                        "/ok" => ("200 OK", String::new(), "fine"),
                        "/hop" => ("302 Found", "Location: /ok\r\n".into(), ""),
                        "/away" => (
                            "302 Found",
                            "Location: https://elsewhere.invalid/ok\r\n".into(),
                            "moved",
                        ),
                        "/loop" => ("307 Temporary Redirect", "Location: /loop\r\n".into(), ""),
                        _ => ("500 Internal Server Error", String::new(), "broken"),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (port, seen)
    }

    fn https_get(port: u16, path: &str, headers: Vec<HTTPHeader>) -> HTTPGetAction {
        HTTPGetAction {
            scheme: Some("HTTPS".into()),
            port: IntOrString::Int(port.into()),
            path: Some(path.into()),
            http_headers: Some(headers),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn https_probe_skips_verification_and_judges_status() {
        let (port, seen) = tls_server().await;
        let c = Container::default();
        let t = Duration::from_secs(5);
        assert_eq!(
            http_probe(&https_get(port, "/ok", vec![]), &c, "127.0.0.1", t).await,
            Ok(())
        );
        assert_eq!(
            http_probe(&https_get(port, "/fail", vec![]), &c, "127.0.0.1", t).await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        // A same-host redirect is followed; one to another host is a warning (success).
        assert_eq!(
            http_probe(&https_get(port, "/hop", vec![]), &c, "127.0.0.1", t).await,
            Ok(())
        );
        let r = http_get(Scheme::Https, "127.0.0.1", port, "/away", &[], "t", t)
            .await
            .expect("response");
        assert_eq!(
            http_outcome(&r),
            HttpOutcome::Warning("Probe terminated redirects, Response body: moved".into())
        );
        assert_eq!(
            http_probe(&https_get(port, "/loop", vec![]), &c, "127.0.0.1", t).await,
            Err(format!(
                "Get \"https://127.0.0.1:{port}/loop\": stopped after 10 redirects"
            ))
        );
        // `host` and a custom Host header: "localhost" resolves, the Host header is sent.
        let mut a = https_get(
            port,
            "/ok",
            vec![HTTPHeader {
                name: "Host".into(),
                value: "web.example".into(),
            }],
        );
        a.host = Some("localhost".into());
        assert_eq!(http_probe(&a, &c, "10.255.255.1", t).await, Ok(()));
        let seen = seen.lock().expect("seen").clone();
        assert_eq!(seen[0], ("/ok".into(), format!("127.0.0.1:{port}")));
        assert_eq!(seen[2], ("/hop".into(), format!("127.0.0.1:{port}")));
        assert_eq!(seen[3].0, "/ok", "redirect followed: {seen:?}");
        assert_eq!(
            seen.last(),
            Some(&("/ok".to_string(), "web.example".to_string()))
        );
    }

    #[tokio::test]
    async fn https_probe_reports_connection_errors() {
        // A port nothing listens on: bind one, then close it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let a = https_get(port, "/ok", vec![]);
        assert_eq!(
            http_probe(
                &a,
                &Container::default(),
                "127.0.0.1",
                Duration::from_secs(5)
            )
            .await,
            Err(format!(
                "Get \"https://127.0.0.1:{port}/ok\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
        // A plain-HTTP server answering the TLS handshake.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        let r = http_get(
            Scheme::Https,
            "127.0.0.1",
            port,
            "/",
            &[],
            "t",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            r,
            Err(HttpError::PlainHttpAnswer(format!(
                "Get \"https://127.0.0.1:{port}/\": http: server gave HTTP response to HTTPS client"
            )))
        );
        assert_eq!(
            Scheme::parse(Some("FTP")),
            Err("unsupported scheme: \"FTP\"".into())
        );
    }

    #[test]
    fn redirect_targets_resolve_like_urls() {
        let from = Target {
            scheme: Scheme::Http,
            host: "10.0.0.1".into(),
            port: 8080,
            path: "/a/b".into(),
        };
        let t = |l: &str| redirect_target(&from, l).map(|t| t.url());
        assert_eq!(t("/x"), Some("http://10.0.0.1:8080/x".into()));
        assert_eq!(t("c"), Some("http://10.0.0.1:8080/a/c".into()));
        assert_eq!(
            t("https://10.0.0.1/y"),
            Some("https://10.0.0.1:443/y".into())
        );
        assert_eq!(
            t("http://[fd00::1]:81"),
            Some("http://[fd00::1]:81/".into())
        );
        assert_eq!(t("ftp://x/"), None);
    }
}
