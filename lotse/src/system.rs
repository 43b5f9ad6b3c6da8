//! The cluster's system objects that `lotse up` creates, as kubeadm's addons: the cluster DNS
//! (`manifests/system/coredns.yaml`: ServiceAccount and RBAC `system:coredns`, the `coredns`
//! Deployment of `lotse-dns` pods labelled `k8s-app: kube-dns`, and the `kube-dns` Service at
//! the tenth address of the Service range). Each object is created when absent and otherwise
//! left as it is (a user's edits survive restarts), except the DNS image of another Lotse
//! version, which is moved to this version's (as `kubeadm upgrade` moves CoreDNS's); the
//! selectorless `kube-dns` Service of earlier versions, whose EndpointSlice named the node, is
//! replaced. The ingress controller likewise (`manifests/system/ingress.yaml`: ServiceAccount
//! `lotse-ingress` bound to the bootstrap ClusterRole `system:lotse:ingress`, the default
//! IngressClass `lotse`, and the `lotse-ingress` DaemonSet of host-network pods on every node),
//! except that the DaemonSet's image and ports always follow `lotse up`'s.
use std::net::IpAddr;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

/// The cluster DNS objects, with `${CLUSTER_DNS_IP}`, `${CLUSTER_DOMAIN}` and `${DNS_IMAGE}`.
const COREDNS: &str = include_str!("../../manifests/system/coredns.yaml");

/// Namespace of the cluster DNS.
pub const DNS_NAMESPACE: &str = "kube-system";
/// Name of the cluster DNS Service (kubeadm's and k3s's name).
pub const DNS_SERVICE: &str = "kube-dns";
/// The EndpointSlice that earlier versions' `lotse up` wrote for the selectorless `kube-dns`
/// Service (the DNS server ran on the node).
const OLD_NODE_SLICE: &str = "kube-dns-node";

/// The tenth address of a Service range (`10.96.0.10` for `10.96.0.0/12`), kubeadm's choice for
/// the cluster DNS (the ClusterIP allocator never hands it out).
pub fn tenth_address(range: ipnet::Ipv4Net) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(
        u32::from(range.network()).saturating_add(10),
    ))
}

/// The cluster DNS objects for Service address `ip`, domain `domain` and image `image`.
pub fn coredns_objects(
    ip: IpAddr,
    domain: &str,
    image: &str,
) -> anyhow::Result<Vec<DynamicObject>> {
    let text = COREDNS
        .replace("${CLUSTER_DNS_IP}", &ip.to_string())
        .replace("${CLUSTER_DOMAIN}", domain)
        .replace("${DNS_IMAGE}", image);
    parse_documents(&text)
}

/// The ingress controller objects, with `${INGRESS_IMAGE}`, `${HTTP_PORT}` and `${HTTPS_PORT}`.
const INGRESS: &str = include_str!("../../manifests/system/ingress.yaml");

/// Name of the ingress controller's DaemonSet (in [`DNS_NAMESPACE`], kube-system).
pub const INGRESS_DAEMONSET: &str = "lotse-ingress";
/// Name of the ingress controller's container.
const INGRESS_CONTAINER: &str = "ingress";

/// The ingress controller objects for image `image` listening on `http` and `https`.
pub fn ingress_objects(image: &str, http: u16, https: u16) -> anyhow::Result<Vec<DynamicObject>> {
    let text = INGRESS
        .replace("${INGRESS_IMAGE}", image)
        .replace("${HTTP_PORT}", &http.to_string())
        .replace("${HTTPS_PORT}", &https.to_string());
    parse_documents(&text)
}

/// The ingress controller: every object created if absent, then the DaemonSet's container
/// image, arguments and probe ports moved to `lotse up`'s (a restart with other ports or a new
/// version rolls the pods).
pub async fn ensure_ingress(
    client: &kube::Client,
    image: &str,
    http: u16,
    https: u16,
) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let objects = ingress_objects(image, http, https)?;
    create_absent(client, &objects).await?;
    let wanted = objects
        .iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "DaemonSet"))
        .context("the ingress manifest has no DaemonSet")?;
    let wanted_container = &wanted.data["spec"]["template"]["spec"]["containers"][0];
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), DNS_NAMESPACE);
    let Some(ds) = daemonsets.get_opt(INGRESS_DAEMONSET).await? else {
        return Ok(());
    };
    let current = ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| {
            s.containers
                .into_iter()
                .find(|c| c.name == INGRESS_CONTAINER)
        })
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .unwrap_or_default();
    // Compared field by field: the stored probes carry the apiserver's defaults besides.
    let port = |c: &serde_json::Value, probe: &str| c[probe]["tcpSocket"]["port"].clone();
    let same = current["image"] == wanted_container["image"]
        && current["args"] == wanted_container["args"]
        && ["readinessProbe", "livenessProbe"]
            .iter()
            .all(|p| port(&current, p) == port(wanted_container, p));
    if same {
        return Ok(());
    }
    let mut container = serde_json::json!({"name": INGRESS_CONTAINER});
    for k in ["image", "args", "readinessProbe", "livenessProbe"] {
        container[k] = wanted_container[k].clone();
    }
    tracing::info!(%image, http, https, "moving the ingress controller to this start's image and ports");
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [container]}}}});
    daemonsets
        .patch(
            INGRESS_DAEMONSET,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
        .context("updating the lotse-ingress DaemonSet")?;
    Ok(())
}

fn parse_documents(text: &str) -> anyhow::Result<Vec<DynamicObject>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_json::Value::deserialize(doc).context("system manifest")?;
        if v.is_null() {
            continue;
        }
        out.push(serde_json::from_value(v).context("system manifest object")?);
    }
    Ok(out)
}

fn api_for(client: &kube::Client, obj: &DynamicObject) -> anyhow::Result<Api<DynamicObject>> {
    let types = obj
        .types
        .as_ref()
        .context("object without apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types)?;
    let ar = ApiResource::from_gvk(&gvk);
    Ok(match obj.metadata.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    })
}

/// Creates each of `objects` that does not exist yet.
pub async fn create_absent(client: &kube::Client, objects: &[DynamicObject]) -> anyhow::Result<()> {
    for obj in objects {
        let api = api_for(client, obj)?;
        let name = obj.metadata.name.as_deref().unwrap_or_default();
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => tracing::info!(kind = ?obj.types.as_ref().map(|t| &t.kind), name, "created"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating {name}")),
        }
    }
    Ok(())
}

/// Replaces an earlier version's `kube-dns` Service without selector (and its node
/// EndpointSlice) so the one selecting the DNS pods can be created.
async fn migrate_node_dns(client: &kube::Client) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), DNS_NAMESPACE);
    let Some(svc) = services.get_opt(DNS_SERVICE).await? else {
        return Ok(());
    };
    let selectorless = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_none_or(|s| s.is_empty());
    if !selectorless {
        return Ok(());
    }
    tracing::info!("replacing the selectorless kube-dns Service of the node DNS server");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), DNS_NAMESPACE);
    match slices
        .delete(OLD_NODE_SLICE, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context("deleting the kube-dns-node EndpointSlice"),
    }
    match services.delete(DNS_SERVICE, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context("deleting the old kube-dns Service"),
    }
    Ok(())
}

/// Name of the cluster DNS Deployment and of its container (kubeadm's).
const DNS_DEPLOYMENT: &str = "coredns";

/// Whether `current` is Lotse's DNS image of another version than `wanted` (a user's own image
/// is kept).
fn other_version(current: &str, wanted: &str) -> bool {
    let repo = |r: &str| r.rsplit_once(':').map(|(repo, _)| repo.to_string());
    current != wanted && repo(current).is_some() && repo(current) == repo(wanted)
}

/// Moves the DNS Deployment to `image` when it runs Lotse's DNS image of another version (the
/// node's image dir holds only this version's).
async fn upgrade_dns_image(client: &kube::Client, image: &str) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), DNS_NAMESPACE);
    let Some(d) = deployments.get_opt(DNS_DEPLOYMENT).await? else {
        return Ok(());
    };
    let current = d
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().find(|c| c.name == DNS_DEPLOYMENT))
        .and_then(|c| c.image);
    let Some(current) = current.filter(|c| other_version(c, image)) else {
        return Ok(());
    };
    tracing::info!(from = %current, to = image, "moving the cluster DNS to this version's image");
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": DNS_DEPLOYMENT, "image": image}]}}}});
    deployments
        .patch(
            DNS_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
        .context("updating the coredns Deployment's image")?;
    Ok(())
}

/// The cluster DNS: the old node-DNS Service migrated, then every object created if absent and
/// the DNS image moved to this version's.
pub async fn ensure_cluster_dns(
    client: &kube::Client,
    ip: IpAddr,
    domain: &str,
    image: &str,
) -> anyhow::Result<()> {
    let objects = coredns_objects(ip, domain, image)?;
    migrate_node_dns(client).await?;
    create_absent(client, &objects).await?;
    upgrade_dns_image(client, image).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenth_address_of_the_service_range() {
        let r: ipnet::Ipv4Net = "10.96.0.0/12".parse().unwrap();
        assert_eq!(tenth_address(r).to_string(), "10.96.0.10");
        let r: ipnet::Ipv4Net = "10.43.0.0/16".parse().unwrap();
        assert_eq!(tenth_address(r).to_string(), "10.43.0.10");
    }

    #[test]
    fn only_lotse_dns_images_of_other_versions_are_upgraded() {
        let wanted = "docker.io/lotse/dns:0.2.0";
        assert!(other_version("docker.io/lotse/dns:0.1.0", wanted));
        assert!(!other_version(wanted, wanted));
        assert!(!other_version(
            "registry.k8s.io/coredns/coredns:v1.11.1",
            wanted
        ));
        assert!(!other_version("docker.io/lotse/dns", wanted));
    }

    /// The kinds of `objs`, after checking that no `${…}` placeholder is left in them.
    fn filled_kinds(objs: &[DynamicObject]) -> Vec<String> {
        let text = serde_json::to_string(objs).unwrap();
        assert!(!text.contains("${"), "a placeholder is left: {text}");
        objs.iter()
            .map(|o| o.types.as_ref().unwrap().kind.clone())
            .collect()
    }

    #[test]
    fn ingress_objects_run_on_every_node_with_the_given_ports() {
        let objs = ingress_objects("docker.io/lotse/ingress:9.9.9", 8080, 8443).unwrap();
        assert_eq!(
            filled_kinds(&objs),
            [
                "ServiceAccount",
                "ClusterRoleBinding",
                "IngressClass",
                "DaemonSet"
            ]
        );
        let class = &objs[2];
        assert_eq!(class.metadata.name.as_deref(), Some("lotse"));
        assert_eq!(class.data["spec"]["controller"], ingress::CONTROLLER);
        assert_eq!(
            class.metadata.annotations.as_ref().unwrap()[ingress::DEFAULT_CLASS_ANNOTATION],
            "true"
        );
        let ds = &objs[3];
        assert_eq!(ds.metadata.name.as_deref(), Some(INGRESS_DAEMONSET));
        assert_eq!(ds.metadata.namespace.as_deref(), Some(DNS_NAMESPACE));
        let pod = &ds.data["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
        assert_eq!(pod["tolerations"][0]["operator"], "Exists");
        assert_eq!(pod["serviceAccountName"], "lotse-ingress");
        let c = &pod["containers"][0];
        assert_eq!(c["name"], INGRESS_CONTAINER);
        assert_eq!(c["image"], "docker.io/lotse/ingress:9.9.9");
        assert_eq!(
            c["args"],
            serde_json::json!(["--http-port=8080", "--https-port=8443"])
        );
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], 8080);
        assert_eq!(objs[1].data["roleRef"]["name"], "system:lotse:ingress");
        assert_eq!(objs[1].data["subjects"][0]["name"], "lotse-ingress");
    }

    #[test]
    fn coredns_objects_are_kubeadms_with_our_values() {
        let objs = coredns_objects(
            "10.43.0.10".parse().unwrap(),
            "example.test",
            "docker.io/lotse/dns:9.9.9",
        )
        .unwrap();
        assert_eq!(
            filled_kinds(&objs),
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Deployment",
                "Service"
            ]
        );
        let dep = &objs[3].data["spec"]["template"];
        assert_eq!(dep["metadata"]["labels"]["k8s-app"], "kube-dns");
        assert_eq!(dep["spec"]["dnsPolicy"], "Default");
        assert_eq!(dep["spec"]["priorityClassName"], "system-cluster-critical");
        assert_eq!(dep["spec"]["serviceAccountName"], "coredns");
        let c = &dep["spec"]["containers"][0];
        assert_eq!(c["image"], "docker.io/lotse/dns:9.9.9");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["args"][0], "--cluster-domain=example.test");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8181);
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], 8080);
        let svc = &objs[4];
        assert_eq!(svc.metadata.name.as_deref(), Some(DNS_SERVICE));
        assert_eq!(svc.metadata.namespace.as_deref(), Some(DNS_NAMESPACE));
        assert_eq!(svc.data["spec"]["clusterIP"], "10.43.0.10");
        assert_eq!(svc.data["spec"]["selector"]["k8s-app"], "kube-dns");
        let ports: Vec<(String, String)> = svc.data["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].to_string(), p["protocol"].to_string()))
            .collect();
        assert_eq!(
            ports,
            [
                ("\"dns\"".into(), "\"UDP\"".into()),
                ("\"dns-tcp\"".into(), "\"TCP\"".into())
            ]
        );
        // kubeadm's rules for system:coredns.
        let rules = &objs[1].data["rules"];
        assert_eq!(rules[0]["verbs"], serde_json::json!(["list", "watch"]));
        assert_eq!(rules[1]["resources"][0], "endpointslices");
    }
}
