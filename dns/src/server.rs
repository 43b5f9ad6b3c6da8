//! The UDP and TCP listeners: one [`Server`] answers from the current view and forwards the rest.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::cache::Cache;
use crate::forward::Forwarder;
use crate::handler::{self, Outcome, Transport, Zone};
use crate::view::ClusterView;

/// A TCP connection idle this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Questions the forwarding cache keeps at most.
const CACHE_CAPACITY: usize = 10_000;

/// Answers queries from the latest [`ClusterView`].
pub struct Server {
    view: watch::Receiver<Arc<ClusterView>>,
    zone: Zone,
    forwarder: Forwarder,
    cache: Cache,
}

impl Server {
    /// A server over `view` (updated by its sender) for `zone`.
    pub fn new(view: watch::Receiver<Arc<ClusterView>>, zone: Zone, forwarder: Forwarder) -> Self {
        Server {
            view,
            zone,
            forwarder,
            cache: Cache::new(CACHE_CAPACITY),
        }
    }

    /// The response bytes to one query (`None`: send nothing).
    pub async fn respond(&self, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let outcome = {
            let view = self.view.borrow().clone();
            handler::handle(&view, &self.zone, request)
        };
        let payload = match transport {
            Transport::Udp => handler::request_payload(request),
            Transport::Tcp => u16::MAX,
        };
        match outcome {
            Outcome::Reply(m) => handler::encode(&m, payload, transport),
            Outcome::Drop => None,
            Outcome::Forward => {
                if let Some(bytes) = self.cache.get(request) {
                    return Some(bytes);
                }
                match self.forwarder.forward(request, transport).await {
                    Some(bytes) => {
                        self.cache.put(request, &bytes);
                        Some(bytes)
                    }
                    None => handler::encode(&handler::servfail(request)?, payload, transport),
                }
            }
        }
    }

    /// Serves datagrams on `sock` forever.
    pub async fn serve_udp(self: Arc<Self>, sock: UdpSocket) {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            };
            let request = buf[..n].to_vec();
            let (server, sock) = (self.clone(), sock.clone());
            // Each query in its own task: a forwarded one may wait for its upstream.
            tokio::spawn(async move {
                if let Some(resp) = server.respond(&request, Transport::Udp).await
                    && let Err(e) = sock.send_to(&resp, peer).await
                {
                    tracing::debug!(%peer, error = %e, "udp send failed");
                }
            });
        }
    }

    /// Serves length-prefixed messages on the connections of `listener` forever.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let server = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = server.connection(stream).await {
                            tracing::debug!(%peer, error = %e, "tcp connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        loop {
            let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            };
            let mut request = vec![0u8; usize::from(len)];
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut request))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let Some(resp) = self.respond(&request, Transport::Tcp).await else {
                return Ok(());
            };
            let Ok(n) = u16::try_from(resp.len()) else {
                return Ok(());
            };
            stream.write_all(&n.to_be_bytes()).await?;
            stream.write_all(&resp).await?;
        }
    }
}

/// Binds the UDP socket and the TCP listener on `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((UdpSocket::bind(addr).await?, TcpListener::bind(addr).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};
    use k8s_openapi::api::core::v1::Service;

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        m.to_vec().expect("encode")
    }

    /// A server on 127.0.0.1 (UDP and TCP on the same port) forwarding to `upstreams`.
    async fn start(upstreams: Vec<SocketAddr>, timeout: Duration) -> SocketAddr {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20"}}))
        .expect("service");
        let view = ClusterView::build([&svc], [], []);
        // The receiver keeps the last view after the sender is gone.
        let (_, rx) = watch::channel(Arc::new(view));
        let zone = Zone::new("cluster.local").expect("zone");
        let server = Arc::new(Server::new(rx, zone, Forwarder { upstreams, timeout }));
        // A free UDP port whose TCP twin is free too.
        let mut bound = None;
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
            let addr = udp.local_addr().expect("addr");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                bound = Some((udp, tcp, addr));
                break;
            }
        }
        let (udp, tcp, addr) = bound.expect("a free port for UDP and TCP");
        tokio::spawn(server.clone().serve_udp(udp));
        tokio::spawn(server.serve_tcp(tcp));
        addr
    }

    async fn udp_ask(server: SocketAddr, q: &[u8]) -> Message {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.send_to(q, server).await.expect("send");
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("answer in time")
            .expect("recv");
        Message::from_vec(&buf[..n]).expect("decode")
    }

    #[tokio::test]
    async fn answers_over_udp_and_tcp() {
        let addr = start(Vec::new(), Duration::from_millis(200)).await;
        let m = udp_ask(addr, &query("web.default.svc.cluster.local.")).await;
        assert_eq!(m.metadata.id, 7);
        assert!(matches!(&m.answers[0].data, RData::A(a) if a.0.to_string() == "10.96.0.20"));

        let mut s = TcpStream::connect(addr).await.expect("connect");
        // Two queries on one connection (RFC 7766 pipelining).
        for name in [
            "web.default.svc.cluster.local.",
            "nosuch.default.svc.cluster.local.",
        ] {
            let q = query(name);
            s.write_all(&u16::try_from(q.len()).expect("len").to_be_bytes())
                .await
                .expect("write");
            s.write_all(&q).await.expect("write");
        }
        for rcode in [ResponseCode::NoError, ResponseCode::NXDomain] {
            let n = s.read_u16().await.expect("length");
            let mut buf = vec![0u8; usize::from(n)];
            s.read_exact(&mut buf).await.expect("read");
            let m = Message::from_vec(&buf).expect("decode");
            assert_eq!(m.metadata.response_code, rcode);
        }
    }

    #[tokio::test]
    async fn unreachable_upstream_gives_servfail_within_the_deadline() {
        // An upstream that never answers (a bound socket nobody reads).
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let started = std::time::Instant::now();
        let addr = start(
            vec![silent.local_addr().expect("addr")],
            Duration::from_millis(300),
        )
        .await;
        let m = udp_ask(addr, &query("example.org.")).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.queries.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(3));
        // No upstream at all: SERVFAIL at once.
        let addr = start(Vec::new(), Duration::from_secs(30)).await;
        let m = udp_ask(addr, &query("example.org.")).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn forwards_to_the_upstream_and_relays_its_answer() {
        // A loopback upstream answering every query with 192.0.2.1.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let up_addr = upstream.local_addr().expect("addr");
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = upstream.recv_from(&mut buf).await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                r.add_queries(q.queries.iter().cloned());
                if let Some(first) = q.queries.first() {
                    r.add_answer(hickory_proto::rr::Record::from_rdata(
                        first.name().clone(),
                        60,
                        RData::A(hickory_proto::rr::rdata::A([192, 0, 2, 1].into())),
                    ));
                }
                let _ = upstream.send_to(&r.to_vec().expect("encode"), peer).await;
            }
        });
        let addr = start(vec![up_addr], Duration::from_secs(2)).await;
        let m = udp_ask(addr, &query("example.org.")).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(matches!(&m.answers[0].data, RData::A(a) if a.0.to_string() == "192.0.2.1"));
        // The second time from the cache: the upstream was asked once.
        let m = udp_ask(addr, &query("example.org.")).await;
        assert!(matches!(&m.answers[0].data, RData::A(a) if a.0.to_string() == "192.0.2.1"));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn upstreams_come_from_resolv_conf_without_ourselves() {
        let conf = "# comment\nsearch example.org\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nnameserver 127.0.0.1\noptions ndots:2\n";
        let f = Forwarder::from_resolv_conf(
            conf,
            &["127.0.0.1:53".parse().expect("addr")],
            Duration::from_secs(1),
        );
        assert_eq!(
            f.upstreams,
            vec![
                "10.255.255.53:53".parse::<SocketAddr>().expect("addr"),
                "[fe80::1]:53".parse().expect("addr"),
            ]
        );
    }
}
