//! Simulated cluster content for the benchmarks, created through the API as a cluster's
//! controllers would leave it: Namespaces, Services (ClusterIP or headless) with one ready
//! EndpointSlice each, and Pods bound to nodes with an address but no container running.
use std::net::Ipv4Addr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// Requests in flight while filling the apiserver.
const CONCURRENCY: usize = 16;

/// One simulated Service and the ready endpoints of its EndpointSlice.
#[derive(Clone, Debug)]
pub struct SimService {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its ClusterIP; `None`: headless (`clusterIP: None`).
    pub cluster_ip: Option<Ipv4Addr>,
    /// Addresses of its ready endpoints (port `http`, 8080/TCP).
    pub endpoints: Vec<Ipv4Addr>,
}

/// The `n`-th address after `base` (wrapping within IPv4).
fn nth(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

/// `count` Services `s<i>` over the namespaces `ns-<i % namespaces>`, with ClusterIPs from
/// 10.100.0.0/16 (inside the default range 10.96.0.0/12, clear of its first and tenth
/// addresses) and `endpoints_per_service` endpoint addresses each from 10.245.0.0/16; every
/// `headless_every`-th Service (0: none) is headless.
pub fn services(
    count: u32,
    namespaces: u32,
    endpoints_per_service: u32,
    headless_every: u32,
) -> Vec<SimService> {
    (0..count)
        .map(|i| SimService {
            namespace: format!("ns-{}", i % namespaces.max(1)),
            name: format!("s{i}"),
            cluster_ip: (headless_every == 0 || i % headless_every != 0)
                .then(|| nth(Ipv4Addr::new(10, 100, 0, 1), i)),
            endpoints: (0..endpoints_per_service)
                .map(|e| nth(Ipv4Addr::new(10, 245, 0, 1), i * endpoints_per_service + e))
                .collect(),
        })
        .collect()
}

/// Creates the namespaces `ns-0` … `ns-<count - 1>`.
pub async fn create_namespaces(client: &kube::Client, count: u32) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    for n in 0..count.max(1) {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("ns-{n}")}}))?;
        api.create(&PostParams::default(), &ns).await?;
    }
    Ok(())
}

/// Creates each Service and its EndpointSlice `<name>-x` (port `http` 80 → 8080).
pub async fn create_services(client: &kube::Client, services: &[SimService]) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(services)
        .map(|s| async move {
            let svcs: Api<Service> = Api::namespaced(client.clone(), &s.namespace);
            let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &s.namespace);
            let cluster_ip = s.cluster_ip.map_or("None".to_string(), |ip| ip.to_string());
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": s.name},
                "spec": {"clusterIP": cluster_ip,
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            }))?;
            svcs.create(&PostParams::default(), &svc).await?;
            let endpoints: Vec<_> = s
                .endpoints
                .iter()
                .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
                .collect();
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": format!("{}-x", s.name),
                             "labels": {"kubernetes.io/service-name": s.name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }))?;
            slices.create(&PostParams::default(), &slice).await?;
            Ok(())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Creates `count` Pods `p<i>` in the namespaces `ns-<i % namespaces>`, bound to the nodes
/// `nodes[i % nodes.len()]`, each with a container spec (no kubelet runs it) and then the status
/// a kubelet would report: `Running` with `podIP` 10.244.0.0/16 + i (and labels `app:
/// app-<i % 10>`).
pub async fn create_pods(
    client: &kube::Client,
    count: u32,
    namespaces: u32,
    nodes: &[String],
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(|i| async move {
            let ns = format!("ns-{}", i % namespaces.max(1));
            let name = format!("p{i}");
            let node = &nodes[i as usize % nodes.len().max(1)];
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app": format!("app-{}", i % 10)}},
                "spec": {"nodeName": node,
                         "containers": [{"name": "c", "image": "busybox",
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
            }))?;
            api.create(&PostParams::default(), &pod).await?;
            let ip = nth(Ipv4Addr::new(10, 244, 0, 2), i).to_string();
            let status =
                json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await?;
            Ok(())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_spread_over_namespaces_with_distinct_addresses() {
        let s = services(1000, 10, 3, 10);
        assert_eq!(s[0].namespace, "ns-0");
        assert_eq!(s[13].namespace, "ns-3");
        assert_eq!(s[0].cluster_ip, None);
        assert_eq!(s[1].cluster_ip, Some(Ipv4Addr::new(10, 100, 0, 2)));
        assert_eq!(s[999].cluster_ip, Some(Ipv4Addr::new(10, 100, 3, 232)));
        assert_eq!(s.iter().filter(|s| s.cluster_ip.is_none()).count(), 100);
        let mut eps: Vec<_> = s.iter().flat_map(|s| s.endpoints.clone()).collect();
        eps.sort();
        eps.dedup();
        assert_eq!(eps.len(), 3000);
    }
}
