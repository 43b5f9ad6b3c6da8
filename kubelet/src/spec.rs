//! Translating a Pod's spec into CRI configurations: environment, mounts, resources, security.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::{Api, ListParams};
use lotse_core::Quantity;

use crate::Error;

/// The CRI resources for a container: CPU request → shares, CPU limit → CFS quota, memory limit
/// (as the kubelet's `MilliCPUToShares` and `MilliCPUToQuota` with a 100 ms period).
pub fn resources(c: &Container) -> cri::LinuxContainerResources {
    let r = c.resources.clone().unwrap_or_default();
    let get =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| {
            m.as_ref()
                .and_then(|m| m.get(k))
                .and_then(|q| Quantity::parse(&q.0).ok())
        };
    let mut out = cri::LinuxContainerResources {
        cpu_period: 100_000,
        ..Default::default()
    };
    let cpu_req = get(&r.requests, "cpu").or(get(&r.limits, "cpu"));
    out.cpu_shares = cpu_req
        .map(|c| (c.milli_value().saturating_mul(1024) / 1000).max(2))
        .unwrap_or(2);
    if let Some(l) = get(&r.limits, "cpu") {
        out.cpu_quota = l.milli_value().saturating_mul(100).max(1000);
    }
    if let Some(m) = get(&r.limits, "memory") {
        out.memory_limit_in_bytes = m.value();
    }
    out
}

fn field_ref(pod: &Pod, path: &str, host_ip: &str) -> String {
    let m = &pod.metadata;
    let status = pod.status.clone().unwrap_or_default();
    match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => host_ip.to_string(),
        "status.podIP" => status.pod_ip.unwrap_or_default(),
        p => {
            if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                return m
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_default();
            }
            if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                return m
                    .annotations
                    .as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_default();
            }
            String::new()
        }
    }
}

pub(crate) fn resource_ref(c: &Container, resource: &str, divisor: Option<&str>) -> String {
    let r = c.resources.clone().unwrap_or_default();
    let (map, key) = match resource.split_once('.') {
        Some(("limits", k)) => (r.limits, k),
        Some(("requests", k)) => (r.requests, k),
        _ => return String::new(),
    };
    let v = map.and_then(|m| m.get(key).and_then(|q| Quantity::parse(&q.0).ok()));
    // A zero (unset) divisor is 1.
    let div = divisor
        .and_then(|d| Quantity::parse(d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Quantity {
            milli: 1000,
            binary: false,
        });
    // Kubernetes' convertResourceCPUToString (milli-units) and convertResourceMemoryToString.
    let (v, div) = match v {
        Some(v) if key == "cpu" => (v.milli_value(), div.milli_value()),
        Some(v) => (v.value(), div.value()),
        None if key == "cpu" => {
            return std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .to_string();
        }
        None => return String::new(),
    };
    ((v as f64 / div as f64).ceil() as i64).to_string()
}

/// Everything environment resolution reads from the API, fetched once per container start.
pub struct EnvSources {
    /// ConfigMaps of the pod's namespace by name (only those referenced).
    pub config_maps: HashMap<String, ConfigMap>,
    /// Secrets likewise.
    pub secrets: HashMap<String, Secret>,
    /// Services of the namespace, for the Docker-link style variables.
    pub services: Vec<Service>,
}

impl EnvSources {
    /// Fetches what `pod` refers to; a missing object is left out (and reported on use).
    pub async fn fetch(client: &kube::Client, pod: &Pod) -> Result<EnvSources, Error> {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let spec = pod.spec.clone().unwrap_or_default();
        let mut cms = Vec::new();
        let mut secrets = Vec::new();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for e in c.env.iter().flatten() {
                if let Some(vf) = &e.value_from {
                    if let Some(r) = &vf.config_map_key_ref {
                        cms.push(r.name.clone());
                    }
                    if let Some(r) = &vf.secret_key_ref {
                        secrets.push(r.name.clone());
                    }
                }
            }
            for ef in c.env_from.iter().flatten() {
                if let Some(r) = &ef.config_map_ref {
                    cms.push(r.name.clone());
                }
                if let Some(r) = &ef.secret_ref {
                    secrets.push(r.name.clone());
                }
            }
        }
        for v in spec.volumes.iter().flatten() {
            if let Some(c) = &v.config_map {
                cms.push(c.name.clone());
            }
            if let Some(s) = &v.secret {
                secrets.push(s.secret_name.clone().unwrap_or_default());
            }
            for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(c) = &src.config_map {
                    cms.push(c.name.clone());
                }
                if let Some(s) = &src.secret {
                    secrets.push(s.name.clone());
                }
            }
        }
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let sec_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let mut out = EnvSources {
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
            services: Vec::new(),
        };
        for n in cms {
            if !out.config_maps.contains_key(&n)
                && let Some(cm) = cm_api.get_opt(&n).await?
            {
                out.config_maps.insert(n, cm);
            }
        }
        for n in secrets {
            if !out.secrets.contains_key(&n)
                && let Some(s) = sec_api.get_opt(&n).await?
            {
                out.secrets.insert(n, s);
            }
        }
        if spec.enable_service_links.unwrap_or(true) {
            let svc: Api<Service> = Api::namespaced(client.clone(), &ns);
            out.services = svc
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
        }
        // As the kubelet: the master Service (`default/kubernetes`) gives every container
        // KUBERNETES_SERVICE_HOST/PORT, whatever its namespace and enableServiceLinks, and wins
        // over a namesake in the pod's namespace.
        if ns != "default" || !spec.enable_service_links.unwrap_or(true) {
            let api: Api<Service> = Api::namespaced(client.clone(), "default");
            if let Ok(Some(master)) = api.get_opt("kubernetes").await {
                out.services
                    .retain(|s| s.metadata.name.as_deref() != Some("kubernetes"));
                out.services.push(master);
            }
        }
        Ok(out)
    }

    fn cm_value(&self, name: &str, key: &str) -> Option<String> {
        self.config_maps
            .get(name)
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(key).cloned())
    }

    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let s = self.secrets.get(name)?;
        if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
            return Some(String::from_utf8_lossy(&v.0).into_owned());
        }
        s.string_data.as_ref().and_then(|d| d.get(key).cloned())
    }
}

fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in services {
        let Some(spec) = &s.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = s
            .metadata
            .name
            .clone()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = &p.name {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = first.protocol.clone().unwrap_or_else(|| "TCP".into());
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto.to_lowercase(), first.port),
        ));
        for p in &ports {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let base = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((
                base.clone(),
                format!("{}://{ip}:{}", proto.to_lowercase(), p.port),
            ));
            out.push((format!("{base}_PROTO"), proto.to_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

/// Expands `$(VAR)` references against already defined variables, as Kubernetes does; `$$` escapes.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(a) = after.strip_prefix('(')
            && let Some(end) = a.find(')')
        {
            let name = &a[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &a[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment in Kubernetes' order: service variables, `envFrom`, then `env`.
/// A missing (non-optional) ConfigMap/Secret or key is a `CreateContainerConfigError`.
pub fn environment(
    pod: &Pod,
    c: &Container,
    src: &EnvSources,
    host_ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = service_env(&src.services);
    for ef in c.env_from.iter().flatten() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        if let Some(r) = &ef.config_map_ref {
            match src.config_maps.get(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        vars.push((format!("{prefix}{k}"), v.clone()));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        }
        if let Some(r) = &ef.secret_ref {
            match src.secrets.get(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        vars.push((
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        ));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let defined: HashMap<String, String> = vars.iter().cloned().collect();
        let value = if let Some(vf) = &e.value_from {
            if let Some(f) = &vf.field_ref {
                field_ref(pod, &f.field_path, host_ip)
            } else if let Some(r) = &vf.resource_field_ref {
                resource_ref(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))
            } else if let Some(r) = &vf.config_map_key_ref {
                match src.cm_value(&r.name, &r.key) {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None if src.config_maps.contains_key(&r.name) => {
                        return Err(format!(
                            "couldn't find key {} in ConfigMap {}",
                            r.key, r.name
                        ));
                    }
                    None => return Err(format!("configmap \"{}\" not found", r.name)),
                }
            } else if let Some(r) = &vf.secret_key_ref {
                match src.secret_value(&r.name, &r.key) {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None if src.secrets.contains_key(&r.name) => {
                        return Err(format!("couldn't find key {} in Secret {}", r.key, r.name));
                    }
                    None => return Err(format!("secret \"{}\" not found", r.name)),
                }
            } else {
                String::new()
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &defined)
        };
        vars.retain(|(k, _)| k != &e.name);
        vars.push((e.name.clone(), value));
    }
    Ok(vars)
}

/// Most search domains a pod's resolv.conf gets (the kubelet's `MaxDNSSearchPaths`).
const MAX_DNS_SEARCH_PATHS: usize = 32;
/// Most characters of the search list (the kubelet's `MaxDNSSearchListChars`).
const MAX_DNS_SEARCH_LIST_CHARS: usize = 2048;
/// Most nameservers a resolver uses (glibc's `MAXNS`, the kubelet's `validation.MaxDNSNameservers`).
const MAX_DNS_NAMESERVERS: usize = 3;

/// The node's DNS settings that pods inherit (`--cluster-dns`, `--cluster-domain`, the
/// `--resolv-conf` file's contents).
#[derive(Clone, Copy, Debug)]
pub struct NodeDns<'a> {
    /// `--cluster-dns`: the cluster DNS Service's addresses.
    pub cluster_dns: &'a [String],
    /// `--cluster-domain` (empty: no cluster search domains).
    pub cluster_domain: &'a str,
    /// The host's resolv.conf (`--resolv-conf`; `None` when the flag is empty).
    pub host_resolv_conf: Option<&'a str>,
}

/// The host resolver's nameservers, search domains and options.
fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => servers.extend(f.next().map(str::to_string)),
            // The last `search` (or `domain`) line wins, as in the resolver.
            Some("search") | Some("domain") => {
                searches = f.map(|d| d.trim_end_matches('.').to_string()).collect();
            }
            Some("options") => options = f.map(str::to_string).collect(),
            _ => {}
        }
    }
    (servers, searches, options)
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !list.contains(&i) {
            list.push(i);
        }
    }
}

/// `options` merged by name, later values winning (the kubelet's `mergeDNSOptions`).
fn merge_dns_options(
    existing: Vec<String>,
    pod: &[k8s_openapi::api::core::v1::PodDNSConfigOption],
) -> Vec<String> {
    let mut merged: Vec<(String, Option<String>)> = Vec::new();
    let mut set =
        |name: String, value: Option<String>| match merged.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => merged.push((name, value)),
        };
    for o in existing {
        match o.split_once(':') {
            Some((n, v)) => set(n.to_string(), Some(v.to_string())),
            None => set(o, None),
        }
    }
    for o in pod {
        if let Some(n) = &o.name {
            set(n.clone(), o.value.clone());
        }
    }
    merged
        .into_iter()
        .map(|(n, v)| match v {
            Some(v) => format!("{n}:{v}"),
            None => n,
        })
        .collect()
}

/// The pod's resolver configuration by `dnsPolicy` and `dnsConfig`, as the kubelet's
/// `GetPodDNS`: `ClusterFirst` (the default; `Default` for host-network pods) gives the cluster
/// DNS, the cluster search path before the host's and `ndots:5`; `ClusterFirstWithHostNet` the
/// same for host-network pods; `Default` the host's resolv.conf; `None` only `dnsConfig`.
/// `dnsConfig` is appended (options merged by name). Without `--cluster-dns`, `ClusterFirst`
/// falls back to `Default`, as the kubelet does.
pub fn pod_dns_config(pod: &Pod, node: NodeDns<'_>) -> cri::DnsConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.host_network == Some(true);
    enum Kind {
        Cluster,
        Host,
        None,
    }
    let kind = match spec.dns_policy.as_deref() {
        Some("None") => Kind::None,
        Some("ClusterFirstWithHostNet") => Kind::Cluster,
        Some("Default") => Kind::Host,
        _ if host_network => Kind::Host,
        _ => Kind::Cluster,
    };
    let kind = match kind {
        Kind::Cluster if node.cluster_dns.is_empty() => {
            // Every sync builds the sandbox config: at debug level, or a node without cluster
            // DNS logs this for every pod every second.
            tracing::debug!(
                pod = ?pod.metadata.name,
                "kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy."
            );
            Kind::Host
        }
        k => k,
    };
    let (host_servers, host_searches, host_options) =
        parse_resolv_conf(node.host_resolv_conf.unwrap_or(""));
    let ndots = || vec!["ndots:5".to_string()];
    let mut out = match kind {
        Kind::None => cri::DnsConfig::default(),
        Kind::Cluster => {
            let mut searches = Vec::new();
            let domain = node.cluster_domain.trim_end_matches('.');
            if !domain.is_empty() {
                searches = vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_string(),
                ];
            }
            push_unique(&mut searches, host_searches);
            cri::DnsConfig {
                servers: node.cluster_dns.to_vec(),
                searches,
                options: ndots(),
            }
        }
        // `--resolv-conf=""`: the cluster DNS with the default options, as the kubelet does.
        Kind::Host if node.host_resolv_conf.is_none() => cri::DnsConfig {
            servers: node.cluster_dns.to_vec(),
            searches: Vec::new(),
            options: ndots(),
        },
        Kind::Host => cri::DnsConfig {
            servers: host_servers,
            searches: host_searches,
            options: host_options,
        },
    };
    if let Some(dc) = &spec.dns_config {
        push_unique(&mut out.servers, dc.nameservers.clone().unwrap_or_default());
        push_unique(&mut out.searches, dc.searches.clone().unwrap_or_default());
        out.options = merge_dns_options(
            std::mem::take(&mut out.options),
            dc.options.as_deref().unwrap_or(&[]),
        );
    }
    out.servers.truncate(MAX_DNS_NAMESERVERS);
    out.searches.truncate(MAX_DNS_SEARCH_PATHS);
    while !out.searches.is_empty()
        && out.searches.iter().map(|s| s.len() + 1).sum::<usize>() - 1 > MAX_DNS_SEARCH_LIST_CHARS
    {
        out.searches.pop();
    }
    out
}

/// The pod's hostname as the kubelet sets it (`GeneratePodHostNameAndDomain`): `spec.hostname`
/// or the pod name cut to 63 characters (without a trailing `-`/`.`); with
/// `setHostnameAsFQDN` and a `subdomain`, the fully qualified
/// `<hostname>.<subdomain>.<ns>.svc.<cluster-domain>`.
pub fn pod_hostname(pod: &Pod, cluster_domain: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut host = spec
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    if host.len() > 63 {
        host.truncate(63);
        while host.ends_with(['-', '.']) {
            host.pop();
        }
    }
    let domain = cluster_domain.trim_end_matches('.');
    match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        Some(sub) if spec.set_hostname_as_fqdn == Some(true) && !domain.is_empty() => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            format!("{host}.{sub}.{ns}.svc.{domain}")
        }
        _ => host,
    }
}

/// CRI's `NamespaceMode`: the pod's, the container's own, the node's, another container's.
pub mod ns_mode {
    /// `POD`.
    pub const POD: i32 = 0;
    /// `CONTAINER`.
    pub const CONTAINER: i32 = 1;
    /// `NODE`.
    pub const NODE: i32 = 2;
    /// `TARGET` (with `target_id`).
    pub const TARGET: i32 = 3;
}

/// The namespaces of a pod's sandbox and containers (Kubernetes' `namespacesForPod`):
/// `hostNetwork`, `hostPID`, `hostIPC` share the node's; `shareProcessNamespace` one PID
/// namespace for the pod; otherwise each container has its own PID namespace.
pub fn namespace_options(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.as_ref();
    let set = |f: fn(&k8s_openapi::api::core::v1::PodSpec) -> Option<bool>| {
        spec.and_then(f) == Some(true)
    };
    cri::NamespaceOption {
        network: if set(|s| s.host_network) {
            ns_mode::NODE
        } else {
            ns_mode::POD
        },
        pid: if set(|s| s.host_pid) {
            ns_mode::NODE
        } else if set(|s| s.share_process_namespace) {
            ns_mode::POD
        } else {
            ns_mode::CONTAINER
        },
        ipc: if set(|s| s.host_ipc) {
            ns_mode::NODE
        } else {
            ns_mode::POD
        },
        ..Default::default()
    }
}

/// An ephemeral container as the container it runs as (`EphemeralContainerCommon` is
/// `Container`'s field set).
pub fn ephemeral_container(ec: &k8s_openapi::api::core::v1::EphemeralContainer) -> Container {
    Container {
        name: ec.name.clone(),
        image: ec.image.clone(),
        image_pull_policy: ec.image_pull_policy.clone(),
        command: ec.command.clone(),
        args: ec.args.clone(),
        working_dir: ec.working_dir.clone(),
        env: ec.env.clone(),
        env_from: ec.env_from.clone(),
        volume_mounts: ec.volume_mounts.clone(),
        volume_devices: ec.volume_devices.clone(),
        security_context: ec.security_context.clone(),
        stdin: ec.stdin,
        stdin_once: ec.stdin_once,
        tty: ec.tty,
        termination_message_path: ec.termination_message_path.clone(),
        termination_message_policy: ec.termination_message_policy.clone(),
        ..Default::default()
    }
}

/// The Linux security settings of a container (pod-level defaults, container overrides).
pub fn security(pod: &Pod, c: &Container) -> cri::LinuxContainerSecurityContext {
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let mut out = cri::LinuxContainerSecurityContext {
        privileged: sc.privileged.unwrap_or(false),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        namespace_options: Some(namespace_options(pod)),
        ..Default::default()
    };
    if let Some(u) = sc.run_as_user.or(psc.run_as_user) {
        out.run_as_user = Some(cri::Int64Value { value: u });
    }
    if let Some(g) = sc.run_as_group.or(psc.run_as_group) {
        out.run_as_group = Some(cri::Int64Value { value: g });
    }
    out.supplemental_groups = psc.supplemental_groups.clone().unwrap_or_default();
    // Names go to the runtime as written (`NET_BIND_SERVICE`), as the kubelet passes them:
    // containerd prefixes `CAP_` itself, so a prefixed name would name no capability.
    if let Some(caps) = &sc.capabilities {
        out.capabilities = Some(cri::Capability {
            add_capabilities: caps.add.clone().unwrap_or_default(),
            drop_capabilities: caps.drop.clone().unwrap_or_default(),
            ..Default::default()
        });
    }
    out
}

/// Normalises an image reference as Docker does (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize_image(image: &str) -> String {
    let (name, tag) = match image.rsplit_once('@') {
        Some(_) => (image.to_string(), String::new()),
        None => match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), format!(":{t}")),
            _ => (image.to_string(), ":latest".to_string()),
        },
    };
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{tag}")
}

/// Whether a path is safe as a file name inside a volume (no `..`, not absolute).
pub fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && !path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let q = |s: &str| k8s_openapi::apimachinery::pkg::api::resource::Quantity(s.into());
        let c = Container {
            name: "c".into(),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), q("500m"))])),
                limits: Some(BTreeMap::from([
                    ("cpu".into(), q("2")),
                    ("memory".into(), q("64Mi")),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = resources(&c);
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.memory_limit_in_bytes),
            (512, 200_000, 64 << 20)
        );
        assert_eq!(resource_ref(&c, "requests.cpu", Some("1m")), "500");
        assert_eq!(resource_ref(&c, "requests.cpu", None), "1");
        assert_eq!(resource_ref(&c, "limits.cpu", Some("0")), "2");
        assert_eq!(resource_ref(&c, "limits.memory", Some("1Mi")), "64");
        assert_eq!(resource_ref(&c, "limits.memory", Some("1M")), "68");
    }

    #[test]
    fn images_normalise_like_docker() {
        assert_eq!(
            normalize_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_image("nginx:1.25"),
            "docker.io/library/nginx:1.25"
        );
        assert_eq!(
            normalize_image("registry.k8s.io/pause:3.6"),
            "registry.k8s.io/pause:3.6"
        );
        assert_eq!(
            normalize_image("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
    }

    fn dns_pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "team"},
            "spec": spec,
        }))
        .expect("pod")
    }

    const HOST_RESOLV: &str =
        "nameserver 10.255.255.53\nsearch corp.example lab.example.\noptions edns0 ndots:2\n";

    fn node_dns(cluster_dns: &[String]) -> NodeDns<'_> {
        NodeDns {
            cluster_dns,
            cluster_domain: "cluster.local",
            host_resolv_conf: Some(HOST_RESOLV),
        }
    }

    #[test]
    fn hostname_subdomain_and_fqdn() {
        let p = dns_pod(serde_json::json!({"containers": []}));
        assert_eq!(pod_hostname(&p, "cluster.local"), "p");
        let p =
            dns_pod(serde_json::json!({"containers": [], "hostname": "db-0", "subdomain": "db"}));
        assert_eq!(pod_hostname(&p, "cluster.local"), "db-0");
        let p = dns_pod(serde_json::json!({"containers": [], "hostname": "db-0",
            "subdomain": "db", "setHostnameAsFQDN": true}));
        assert_eq!(
            pod_hostname(&p, "cluster.local"),
            "db-0.db.team.svc.cluster.local"
        );
        let long: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{}-{}", "a".repeat(62), "b"), "namespace": "team"},
            "spec": {"containers": []}}))
        .expect("pod");
        assert_eq!(pod_hostname(&long, "cluster.local"), "a".repeat(62));
    }

    #[test]
    fn dns_cluster_first_is_the_default() {
        let dns = ["10.96.0.10".to_string()];
        let c = pod_dns_config(
            &dns_pod(serde_json::json!({"containers": []})),
            node_dns(&dns),
        );
        assert_eq!(c.servers, ["10.96.0.10"]);
        assert_eq!(
            c.searches,
            [
                "team.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "lab.example"
            ]
        );
        assert_eq!(c.options, ["ndots:5"]);
    }

    #[test]
    fn dns_host_network_and_default_policies_use_the_host() {
        let dns = ["10.96.0.10".to_string()];
        for spec in [
            serde_json::json!({"containers": [], "hostNetwork": true}),
            serde_json::json!({"containers": [], "dnsPolicy": "Default"}),
            serde_json::json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirst"}),
        ] {
            let c = pod_dns_config(&dns_pod(spec.clone()), node_dns(&dns));
            assert_eq!(c.servers, ["10.255.255.53"], "{spec}");
            assert_eq!(c.searches, ["corp.example", "lab.example"]);
            assert_eq!(c.options, ["edns0", "ndots:2"]);
        }
        let c = pod_dns_config(
            &dns_pod(serde_json::json!({"containers": [], "hostNetwork": true,
                "dnsPolicy": "ClusterFirstWithHostNet"})),
            node_dns(&dns),
        );
        assert_eq!(c.servers, ["10.96.0.10"]);
        assert_eq!(c.options, ["ndots:5"]);
        // No --cluster-dns: ClusterFirst falls back to Default.
        let c = pod_dns_config(
            &dns_pod(serde_json::json!({"containers": []})),
            node_dns(&[]),
        );
        assert_eq!(c.servers, ["10.255.255.53"]);
    }

    #[test]
    fn dns_none_takes_only_dns_config_and_dns_config_merges() {
        let dns = ["10.96.0.10".to_string()];
        let c = pod_dns_config(
            &dns_pod(serde_json::json!({"containers": [], "dnsPolicy": "None",
                "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["ns1.svc.cluster-domain.example"],
                    "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
            node_dns(&dns),
        );
        assert_eq!(c.servers, ["1.2.3.4"]);
        assert_eq!(c.searches, ["ns1.svc.cluster-domain.example"]);
        assert_eq!(c.options, ["ndots:2", "edns0"]);
        let c = pod_dns_config(
            &dns_pod(serde_json::json!({"containers": [],
                "dnsConfig": {"nameservers": ["10.96.0.10", "192.0.2.1"], "searches": ["extra.example", "cluster.local"],
                    "options": [{"name": "ndots", "value": "1"}, {"name": "timeout", "value": "2"}]}})),
            node_dns(&dns),
        );
        assert_eq!(c.servers, ["10.96.0.10", "192.0.2.1"]);
        assert_eq!(c.searches.last().map(String::as_str), Some("extra.example"));
        assert_eq!(
            c.searches.iter().filter(|s| *s == "cluster.local").count(),
            1
        );
        assert_eq!(c.options, ["ndots:1", "timeout:2"]);
    }

    #[test]
    fn dns_limits_nameservers_and_search_paths() {
        let dns = ["10.96.0.10".to_string()];
        let searches: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let c = pod_dns_config(
            &dns_pod(serde_json::json!({"containers": [],
                "dnsConfig": {"nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3"], "searches": searches}})),
            node_dns(&dns),
        );
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.searches.len(), 32);
    }

    #[test]
    fn env_expansion() {
        let vars: HashMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y$(B)$$(A)", &vars), "x1y$(B)$(A)");
    }
}
