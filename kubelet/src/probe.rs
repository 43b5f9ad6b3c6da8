//! Container probes: exec (ExecSync), httpGet (HTTP/1.1 GET, 200–399 succeeds) and tcpSocket.
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Kubelet;

fn port(p: &IntOrString) -> u16 {
    match p {
        IntOrString::Int(i) => *i as u16,
        IntOrString::String(s) => s.parse().unwrap_or(0),
    }
}

/// Runs one probe; `Err` carries Kubernetes' failure message.
pub async fn run(k: &Kubelet, p: &Probe, container_id: &str, pod_ip: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &p.exec {
        let mut rt = k.cri.rt.clone();
        let cmd = e.command.clone().unwrap_or_default();
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: container_id.into(),
                cmd: cmd.clone(),
                timeout: timeout.as_secs() as i64,
            })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        if r.exit_code != 0 {
            let out = String::from_utf8_lossy(&r.stdout).to_string()
                + &String::from_utf8_lossy(&r.stderr);
            return Err(format!(
                "command {cmd:?} exited with {}: {out}",
                r.exit_code
            ));
        }
        return Ok(());
    }
    if let Some(t) = &p.tcp_socket {
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let addr = format!("{host}:{}", port(&t.port));
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(h) = &p.http_get {
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let addr = format!("{host}:{}", port(&h.port));
        let url = format!("http://{addr}{path}");
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n"
            );
            for hh in h.http_headers.iter().flatten() {
                req.push_str(&format!("{}: {}\r\n", hh.name, hh.value));
            }
            req.push_str("\r\n");
            s.write_all(req.as_bytes()).await?;
            let mut buf = vec![0u8; 256];
            let n = s.read(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).to_string())
        };
        return match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(head)) => {
                let code: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {code}"))
                }
            }
            Ok(Err(e)) => Err(format!("Get \"{url}\": dial tcp {addr}: connect: {e}")),
            Err(_) => Err(format!("Get \"{url}\": context deadline exceeded")),
        };
    }
    Ok(())
}
