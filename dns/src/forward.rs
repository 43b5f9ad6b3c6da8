//! Forwarding of names outside the cluster to the node's upstream resolvers (CoreDNS's
//! `forward . /etc/resolv.conf`), bounded by a deadline so an unreachable upstream yields a
//! SERVFAIL instead of a hanging client.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::handler::Transport;

/// The upstream resolvers and the time a forwarded query may take in all.
#[derive(Clone, Debug)]
pub struct Forwarder {
    /// Upstream servers, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Deadline for one forwarded query over all upstreams.
    pub timeout: Duration,
}

impl Forwarder {
    /// The `nameserver` lines of a resolv.conf, minus `exclude` (the DNS server's own addresses:
    /// forwarding to itself would loop).
    pub fn from_resolv_conf(text: &str, exclude: &[SocketAddr], timeout: Duration) -> Self {
        let upstreams = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == "nameserver").then_some(())?;
                let ip: IpAddr = w.next()?.split('%').next()?.parse().ok()?;
                Some(SocketAddr::new(ip, 53))
            })
            .filter(|a| !exclude.contains(a))
            .collect();
        Forwarder { upstreams, timeout }
    }

    /// The upstream's response to `query`, or `None` when no upstream answered in time.
    pub async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if self.upstreams.is_empty() {
            return None;
        }
        let id = query.get(..2)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        for upstream in &self.upstreams {
            let r = tokio::time::timeout_at(deadline, async {
                match transport {
                    Transport::Udp => udp_exchange(*upstream, query).await,
                    Transport::Tcp => tcp_exchange(*upstream, query).await,
                }
            })
            .await;
            match r {
                Ok(Ok(resp)) if resp.get(..2) == Some(id) => return Some(resp),
                Ok(Ok(_)) => tracing::debug!(%upstream, "upstream answered another query id"),
                Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "forwarding failed"),
                Err(_) => {
                    tracing::debug!(%upstream, "forwarding timed out");
                    return None;
                }
            }
        }
        None
    }
}

async fn udp_exchange(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn tcp_exchange(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}
