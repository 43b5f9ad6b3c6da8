//! Health check node ports, as kube-proxy's service health server: for every LoadBalancer
//! Service with `externalTrafficPolicy: Local`, the node answers HTTP on the Service's
//! `spec.healthCheckNodePort` (allocated by the apiserver) with the number of the Service's
//! ready endpoints on this node — 200 when there is at least one, 503 when there is none — so
//! an external load balancer sends traffic only to nodes that keep the client's address and
//! have a backend. Body and headers are kube-proxy's.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// A Service's health check as the node answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Its ready endpoints on this node (distinct addresses).
    pub local_endpoints: usize,
}

/// The health checks this node must answer: healthCheckNodePort → check.
pub fn desired(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node_name: &str,
) -> BTreeMap<u16, Check> {
    let mut local: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for s in slices {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        for e in &s.endpoints {
            // Only ready endpoints count: a node with only terminating ones fails the check.
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if ready && e.node_name.as_deref() == Some(node_name) {
                local
                    .entry((ns.clone(), svc.clone()))
                    .or_default()
                    .extend(e.addresses.iter().cloned());
            }
        }
    }
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let port = spec.health_check_node_port.unwrap_or(0);
        if spec.type_.as_deref() != Some("LoadBalancer")
            || spec.external_traffic_policy.as_deref() != Some("Local")
            || !(1..=65535).contains(&port)
        {
            continue;
        }
        let key = (
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let n = local.get(&key).map_or(0, BTreeSet::len);
        out.insert(
            port as u16,
            Check {
                namespace: key.0,
                name: key.1,
                local_endpoints: n,
            },
        );
    }
    out
}

/// kube-proxy's answer: status, `X-Load-Balancing-Endpoint-Weight`, and the JSON body.
pub fn answer(c: &Check) -> (u16, String) {
    let status = if c.local_endpoints > 0 { 200 } else { 503 };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": true\n}}",
        c.namespace, c.name, c.local_endpoints
    );
    (status, body)
}

struct Server {
    service: (String, String),
    endpoints: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// The node's running health check servers, one listener per port.
#[derive(Default)]
pub struct HealthServers {
    servers: HashMap<u16, Server>,
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for s in self.servers.values() {
            s.task.abort();
        }
    }
}

impl HealthServers {
    /// Starts listeners for new ports, updates the counts of the others, stops the rest. A port
    /// that can't be bound is logged and tried again on the next sync.
    pub fn sync(&mut self, want: &BTreeMap<u16, Check>) {
        self.servers.retain(|port, s| {
            let keep = want.get(port).is_some_and(|c| {
                (c.namespace.as_str(), c.name.as_str()) == (&s.service.0, &s.service.1)
            });
            if !keep {
                s.task.abort();
            }
            keep
        });
        for (port, c) in want {
            if let Some(s) = self.servers.get(port) {
                s.endpoints.store(c.local_endpoints, Ordering::Relaxed);
                continue;
            }
            let listener = std::net::TcpListener::bind(("0.0.0.0", *port)).and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            });
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(port, service = %format!("{}/{}", c.namespace, c.name), error = %e, "FailedToStartServiceHealthcheck");
                    continue;
                }
            };
            let endpoints = Arc::new(AtomicUsize::new(c.local_endpoints));
            let service = (c.namespace.clone(), c.name.clone());
            let state = (service.clone(), endpoints.clone());
            let app = axum::Router::new()
                .fallback(
                    |axum::extract::State(((ns, name), n)): axum::extract::State<(
                        (String, String),
                        Arc<AtomicUsize>,
                    )>| async move {
                        let check = Check {
                            namespace: ns,
                            name,
                            local_endpoints: n.load(Ordering::Relaxed),
                        };
                        let (status, body) = answer(&check);
                        axum::response::Response::builder()
                            .status(status)
                            .header("Content-Type", "application/json")
                            .header("X-Content-Type-Options", "nosniff")
                            .header(
                                "X-Load-Balancing-Endpoint-Weight",
                                check.local_endpoints.to_string(),
                            )
                            .body(axum::body::Body::from(body))
                            .unwrap_or_default()
                    },
                )
                .with_state(state);
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, "health check server");
                }
            });
            tracing::info!(port, service = %format!("{}/{}", c.namespace, c.name), "serving health check node port");
            self.servers.insert(
                *port,
                Server {
                    service,
                    endpoints,
                    task,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ty: &str, etp: &str, hc: i32) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"type": ty, "externalTrafficPolicy": etp, "healthCheckNodePort": hc,
                    "ports": [{"port": 80}]}
            }))
            .unwrap(),
        )
    }

    fn slice(svc: &str, eps: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{svc}-x"), "namespace": "default",
                    "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "endpoints": eps,
                "ports": [{"port": 8080}, {"port": 8443}]
            }))
            .unwrap(),
        )
    }

    #[test]
    fn counts_ready_local_addresses_once_for_local_load_balancers_only() {
        let services = [
            svc("web", "LoadBalancer", "Local", 31234),
            svc("cluster", "LoadBalancer", "Cluster", 0),
            svc("empty", "LoadBalancer", "Local", 31235),
        ];
        let slices = [slice(
            "web",
            json!([
                {"addresses": ["10.244.0.5"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.244.0.6"], "nodeName": "n1", "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["10.244.1.7"], "nodeName": "n2", "conditions": {"ready": true}}
            ]),
        )];
        let want = desired(&services, &slices, "n1");
        assert_eq!(want.keys().copied().collect::<Vec<_>>(), [31234, 31235]);
        assert_eq!(want[&31234].local_endpoints, 1);
        assert_eq!(want[&31235].local_endpoints, 0);
        let (status, body) = answer(&want[&31234]);
        assert_eq!(status, 200);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        );
        assert_eq!(answer(&want[&31235]).0, 503);
    }

    #[tokio::test]
    async fn servers_answer_follow_the_counts_and_stop() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let check = |n| Check {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: n,
        };
        let get = || async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        let mut hs = HealthServers::default();
        hs.sync(&BTreeMap::from([(port, check(0))]));
        let r = get().await.unwrap();
        assert!(r.starts_with("HTTP/1.0 503"), "{r}");
        assert!(r.contains("x-load-balancing-endpoint-weight: 0"), "{r}");
        hs.sync(&BTreeMap::from([(port, check(2))]));
        let r = get().await.unwrap();
        assert!(r.starts_with("HTTP/1.0 200"), "{r}");
        assert!(r.contains("\"localEndpoints\": 2"), "{r}");
        hs.sync(&BTreeMap::new());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(get().await.is_err());
    }
}
