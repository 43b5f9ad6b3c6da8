//! Container lifecycle hooks (postStart, preStop): exec in the container, HTTP(S) GET, or
//! sleep, with Kubernetes' failure messages. An HTTPS hook skips certificate verification and,
//! answered in plain HTTP, is retried with HTTP (event `LifecycleHTTPFallback`), as in
//! Kubernetes. A handler with only the deprecated `tcpSocket` fails, as
//! in Kubernetes ("lifecycle hooks will fail at runtime when it is specified"); next to another
//! action it is ignored.
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};

use crate::Kubelet;
use crate::events::Recorder;
use crate::probe::{self, HttpError};

/// How long an HTTP hook may take: Kubernetes' lifecycle HTTP client has no shorter limit of
/// its own, the caller bounds preStop by the grace period; this bounds a hung postStart.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// `name_namespace(uid)`, Kubernetes' `format.Pod`.
pub fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default()
    )
}

/// Runs handler `h` for container `c` (running as `container_id`) of `pod`, whose IP is
/// `pod_ip`. `Err` carries Kubernetes' message for the failure.
pub async fn run(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    container_id: &str,
    pod_ip: &str,
    h: &LifecycleHandler,
) -> Result<(), String> {
    if let Some(e) = &h.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let fail = |err: String, output: String| {
            format!(
                "Exec lifecycle hook ([{}]) for Container {:?} in Pod {:?} failed - error: {err}, message: {output:?}",
                cmd.join(" "),
                c.name,
                pod_ref(pod)
            )
        };
        return match probe::exec(k, container_id, &cmd, 0).await {
            Ok(r) if r.exit_code == 0 => Ok(()),
            Ok(r) => Err(fail(
                format!(
                    "command '{}' exited with {}: {}",
                    cmd.join(" "),
                    r.exit_code,
                    r.stderr
                ),
                r.stdout + &r.stderr,
            )),
            Err(e) => Err(fail(e, String::new())),
        };
    }
    if let Some(g) = &h.http_get {
        let path = g.path.clone().unwrap_or_default();
        let fail = |err: String| {
            format!(
                "HTTP lifecycle hook ({path}) for Container {:?} in Pod {:?} failed - error: {err}",
                c.name,
                pod_ref(pod)
            )
        };
        let scheme = probe::Scheme::parse(g.scheme.as_deref()).map_err(&fail)?;
        let host = g
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        if host.is_empty() {
            return Err(fail(
                "failed to find networking container: no pod IP".into(),
            ));
        }
        let port = probe::resolve_port(&g.port, c).map_err(&fail)?;
        let headers = g.http_headers.clone().unwrap_or_default();
        let get = |scheme| {
            probe::http_get(
                scheme,
                &host,
                port,
                &path,
                &headers,
                "kube-lifecycle/1.33",
                HTTP_TIMEOUT,
            )
        };
        // Any HTTP answer counts as success: Kubernetes only checks that the request went
        // through, not the status code.
        return match get(scheme).await {
            Ok(_) => Ok(()),
            // Kubernetes retries an HTTPS hook answered in plain HTTP with HTTP, and records
            // a warning event when that works.
            Err(HttpError::PlainHttpAnswer(e)) => match get(probe::Scheme::Http).await {
                Ok(r) => {
                    let host_port = r
                        .url
                        .split_once("://")
                        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
                        .unwrap_or_default()
                        .to_string();
                    Recorder::new(&k.events, pod)
                        .warning(
                            "LifecycleHTTPFallback",
                            &format!(
                                "request to HTTPS lifecycle hook {host_port} got HTTP response, retry with HTTP succeeded"
                            ),
                        )
                        .await;
                    Ok(())
                }
                Err(_) => Err(fail(e)),
            },
            Err(e) => Err(fail(e.to_string())),
        };
    }
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        return Ok(());
    }
    Err(format!(
        "Cannot run handler: invalid handler: {}",
        serde_json::to_string(h).unwrap_or_default()
    ))
}

/// Seconds of the grace period left for StopContainer after a preStop hook that took
/// `elapsed` out of `grace`: what is left, but never less than Kubernetes' minimum of 2 s.
pub fn grace_after_pre_stop(grace: i64, elapsed: Duration) -> i64 {
    const MINIMUM_GRACE_SECONDS: i64 = 2;
    (grace - elapsed.as_secs() as i64).max(MINIMUM_GRACE_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_stop_time_is_deducted_with_a_minimum() {
        assert_eq!(grace_after_pre_stop(30, Duration::from_millis(4900)), 26);
        assert_eq!(grace_after_pre_stop(30, Duration::ZERO), 30);
        assert_eq!(grace_after_pre_stop(5, Duration::from_secs(5)), 2);
        assert_eq!(grace_after_pre_stop(5, Duration::from_secs(60)), 2);
    }

    #[test]
    fn pod_ref_is_kubernetes_format() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("default".into());
        pod.metadata.uid = Some("u1".into());
        assert_eq!(pod_ref(&pod), "web_default(u1)");
    }
}
