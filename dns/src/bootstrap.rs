//! The `kube-dns` Service that puts the cluster DNS behind its reserved ClusterIP (as kubeadm's
//! CoreDNS addon), for a DNS server that runs on the node (`lotse up`) rather than in pods: a
//! selectorless Service plus an EndpointSlice naming the node's address, so the node network
//! agent's DNAT carries pods' queries to it.
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use serde_json::json;

/// Namespace of the cluster DNS Service.
pub const NAMESPACE: &str = "kube-system";
/// Name of the cluster DNS Service (kubeadm's and k3s's name).
pub const SERVICE: &str = "kube-dns";
/// Name of the EndpointSlice `lotse up` manages for it.
pub const SLICE: &str = "kube-dns-node";
/// `endpointslice.kubernetes.io/managed-by` of that slice (the EndpointSlice controller leaves
/// slices of other managers alone).
pub const MANAGER: &str = "lotse-up";

/// The tenth address of a Service range (`10.96.0.10` for `10.96.0.0/12`), kubeadm's choice for
/// the cluster DNS.
pub fn tenth_address(range: ipnet::Ipv4Net) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(
        u32::from(range.network()).saturating_add(10),
    ))
}

/// Creates `kube-system/kube-dns` at `cluster_ip` if absent (an existing one is kept, as kubeadm
/// keeps a user's edits), and points its EndpointSlice at `endpoint` (created or replaced, since
/// the node's address or port may change between starts).
pub async fn ensure_kube_dns(
    client: &kube::Client,
    cluster_ip: IpAddr,
    endpoint: SocketAddr,
    node_name: &str,
) -> Result<(), kube::Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {
            "k8s-app": "kube-dns",
            "kubernetes.io/cluster-service": "true",
            "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": cluster_ip.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": endpoint.port()},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": endpoint.port()}]}
    }))
    .map_err(kube::Error::SerdeError)?;
    match services.create(&PostParams::default(), &svc).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let address_type = if endpoint.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": SLICE, "namespace": NAMESPACE, "labels": {
            "kubernetes.io/service-name": SERVICE,
            "endpointslice.kubernetes.io/managed-by": MANAGER,
            "k8s-app": "kube-dns"}},
        "addressType": address_type,
        "endpoints": [{"addresses": [endpoint.ip().to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node_name}],
        "ports": [
            {"name": "dns", "port": endpoint.port(), "protocol": "UDP"},
            {"name": "dns-tcp", "port": endpoint.port(), "protocol": "TCP"}]
    }))
    .map_err(kube::Error::SerdeError)?;
    match slices.get_opt(SLICE).await? {
        Some(old) => {
            slice.metadata.resource_version = old.metadata.resource_version;
            slices
                .replace(SLICE, &PostParams::default(), &slice)
                .await?;
        }
        None => {
            slices.create(&PostParams::default(), &slice).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenth_address_of_the_service_range() {
        let r: ipnet::Ipv4Net = "10.96.0.0/12".parse().expect("cidr");
        assert_eq!(tenth_address(r).to_string(), "10.96.0.10");
        let r: ipnet::Ipv4Net = "10.43.0.0/16".parse().expect("cidr");
        assert_eq!(tenth_address(r).to_string(), "10.43.0.10");
    }

    #[test]
    fn the_manager_is_a_valid_label_value() {
        assert!(MANAGER.len() <= 63);
        assert!(MANAGER.starts_with(|c: char| c.is_ascii_alphanumeric()));
        assert!(MANAGER.ends_with(|c: char| c.is_ascii_alphanumeric()));
        assert!(
            MANAGER
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        );
    }
}
