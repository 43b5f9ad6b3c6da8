//! The route table: Ingress rules resolved to ready endpoint addresses, and the request
//! matching of the Ingress specification (host, then path: Exact before Prefix, the longest
//! path first, Prefix matched element-wise; ImplementationSpecific is Prefix here).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use rustls::sign::CertifiedKey;

/// How a path is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// The whole path, case-sensitive.
    Exact,
    /// Element-wise prefix of the path split by `/`.
    Prefix,
}

/// Where matched requests go: a Service port's ready endpoints.
#[derive(Debug)]
pub struct Backend {
    /// `<namespace>/<service>:<port>`, for logs.
    pub name: String,
    /// Ready endpoint addresses.
    pub endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Backend {
    /// A backend with these endpoints.
    pub fn new(name: String, endpoints: Vec<SocketAddr>) -> Self {
        Backend {
            name,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint, round robin; `None` without ready endpoints.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints.get(i % self.endpoints.len()).copied()
    }
}

/// One path of one rule.
#[derive(Debug, Clone)]
pub struct Route {
    /// Matching kind.
    pub kind: PathKind,
    /// The rule's path (`/` when empty).
    pub path: String,
    /// Destination.
    pub backend: Arc<Backend>,
}

/// Routes and certificates of every handled Ingress.
#[derive(Default)]
pub struct Table {
    /// Routes by rule host (`""`: rules without host; `*.example.com`: wildcard rules).
    pub hosts: HashMap<String, Vec<Route>>,
    /// The default backend (`spec.defaultBackend` of the oldest Ingress with one).
    pub default: Option<Arc<Backend>>,
    /// TLS certificates by host (`*.example.com` for wildcards).
    pub certs: HashMap<String, Arc<CertifiedKey>>,
}

/// What the table answers for a request.
#[derive(Debug)]
pub enum Decision {
    /// Proxy to this backend.
    Backend(Arc<Backend>),
    /// No rule matches and there is no default backend.
    NotFound,
}

/// Whether the request path matches a Prefix rule path element-wise (`/foo` matches `/foo`,
/// `/foo/` and `/foo/bar`, not `/foobar`; a trailing `/` of the rule is ignored).
pub fn prefix_matches(rule: &str, path: &str) -> bool {
    let rule: Vec<&str> = rule.split('/').filter(|s| !s.is_empty()).collect();
    let req: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    rule.len() <= req.len() && rule.iter().zip(&req).all(|(a, b)| a == b)
}

fn best<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    let exact = routes
        .iter()
        .filter(|r| r.kind == PathKind::Exact && r.path == path)
        .max_by_key(|r| r.path.len());
    exact.or_else(|| {
        routes
            .iter()
            .filter(|r| r.kind == PathKind::Prefix && prefix_matches(&r.path, path))
            .max_by_key(|r| r.path.trim_end_matches('/').len())
    })
}

/// The wildcard form matching `host` (`a.example.com` → `*.example.com`): one label only.
fn wildcard_of(host: &str) -> Option<String> {
    host.split_once('.').map(|(_, rest)| format!("*.{rest}"))
}

impl Table {
    /// The backend for a request to `host` (port stripped, lower-cased by the caller) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Decision {
        let candidates = [
            Some(host.to_string()),
            wildcard_of(host),
            Some(String::new()),
        ];
        for h in candidates.into_iter().flatten() {
            if let Some(r) = self.hosts.get(&h).and_then(|rs| best(rs, path)) {
                return Decision::Backend(r.backend.clone());
            }
        }
        match &self.default {
            Some(b) => Decision::Backend(b.clone()),
            None => Decision::NotFound,
        }
    }

    /// The certificate for an SNI name (exact, then wildcard).
    pub fn cert(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.to_ascii_lowercase();
        self.certs
            .get(&sni)
            .or_else(|| wildcard_of(&sni).and_then(|w| self.certs.get(&w)))
            .cloned()
    }
}

/// The cluster objects a table is built from.
pub struct Snapshot<'a> {
    /// Handled Ingresses.
    pub ingresses: Vec<&'a Ingress>,
    /// All Services.
    pub services: Vec<&'a Service>,
    /// All EndpointSlices.
    pub slices: Vec<&'a EndpointSlice>,
    /// Certificates by `<namespace>/<secret>`.
    pub secrets: &'a HashMap<String, Arc<CertifiedKey>>,
}

impl Snapshot<'_> {
    /// Resolves an Ingress backend of namespace `ns` to its ready endpoints.
    fn backend(&self, ns: &str, b: &IngressBackend) -> Option<Arc<Backend>> {
        let sb = b.service.as_ref()?;
        let port = sb.port.as_ref()?;
        let svc = self.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.metadata.name.as_deref() == Some(&sb.name)
        });
        let name = format!(
            "{ns}/{}:{}",
            sb.name,
            port.name
                .clone()
                .or(port.number.map(|n| n.to_string()))
                .unwrap_or_default()
        );
        // The Service port the backend names; its name keys the EndpointSlice port.
        let sport = svc
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| {
                ports.iter().find(|p| match (&port.name, port.number) {
                    (Some(n), _) if !n.is_empty() => p.name.as_deref() == Some(n),
                    (_, Some(n)) => p.port == n,
                    _ => false,
                })
            });
        let mut endpoints = Vec::new();
        if let Some(sport) = sport {
            let pname = sport.name.clone().unwrap_or_default();
            for slice in &self.slices {
                let owned = slice.metadata.namespace.as_deref() == Some(ns)
                    && slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .is_some_and(|n| *n == sb.name);
                if !owned {
                    continue;
                }
                let Some(p) = slice.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == pname
                        && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                }) else {
                    continue;
                };
                let Some(number) = p.port.and_then(|n| u16::try_from(n).ok()) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    if let Some(ip) = ep.addresses.first().and_then(|a| a.parse().ok()) {
                        endpoints.push(SocketAddr::new(ip, number));
                    }
                }
            }
        }
        endpoints.sort();
        endpoints.dedup();
        Some(Arc::new(Backend::new(name, endpoints)))
    }

    /// The table of these objects.
    pub fn build(&self) -> Table {
        let mut ingresses = self.ingresses.clone();
        ingresses.sort_by(|a, b| {
            (
                &a.metadata.creation_timestamp,
                &a.metadata.namespace,
                &a.metadata.name,
            )
                .cmp(&(
                    &b.metadata.creation_timestamp,
                    &b.metadata.namespace,
                    &b.metadata.name,
                ))
        });
        let mut t = Table::default();
        for ing in ingresses {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = &ing.spec else { continue };
            if t.default.is_none()
                && let Some(b) = &spec.default_backend
            {
                t.default = self.backend(ns, b);
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule.host.clone().unwrap_or_default().to_ascii_lowercase();
                for p in rule.http.iter().flat_map(|h| &h.paths) {
                    let Some(backend) = self.backend(ns, &p.backend) else {
                        continue;
                    };
                    let kind = if p.path_type == "Exact" {
                        PathKind::Exact
                    } else {
                        PathKind::Prefix
                    };
                    let path = p
                        .path
                        .clone()
                        .filter(|p| !p.is_empty())
                        .unwrap_or("/".into());
                    t.hosts.entry(host.clone()).or_default().push(Route {
                        kind,
                        path,
                        backend,
                    });
                }
            }
            for tls in spec.tls.iter().flatten() {
                let Some(secret) = &tls.secret_name else {
                    continue;
                };
                let Some(cert) = self.secrets.get(&format!("{ns}/{secret}")) else {
                    continue;
                };
                for h in tls.hosts.iter().flatten() {
                    t.certs
                        .entry(h.to_ascii_lowercase())
                        .or_insert_with(|| cert.clone());
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str) -> Arc<Backend> {
        Arc::new(Backend::new(name.into(), vec![]))
    }

    fn route(kind: PathKind, path: &str, name: &str) -> Route {
        Route {
            kind,
            path: path.into(),
            backend: b(name),
        }
    }

    fn name(d: Decision) -> String {
        match d {
            Decision::Backend(b) => b.name.clone(),
            Decision::NotFound => "404".into(),
        }
    }

    #[test]
    fn prefix_is_element_wise_as_kubernetes_examples() {
        // The examples table of the Ingress documentation.
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/"));
        assert!(prefix_matches("/foo/", "/foo"));
        assert!(prefix_matches("/aaa/bbb", "/aaa/bbb/ccc"));
        assert!(!prefix_matches("/aaa/bbb", "/aaa/bbbxyz"));
        assert!(!prefix_matches("/aaa/bbb/", "/aaa"));
        assert!(!prefix_matches("/foo", "/foobar"));
    }

    #[test]
    fn exact_before_prefix_longest_first_then_default() {
        let mut t = Table::default();
        t.hosts.insert(
            "foo.example".into(),
            vec![
                route(PathKind::Prefix, "/", "root"),
                route(PathKind::Prefix, "/api", "api"),
                route(PathKind::Prefix, "/api/v2", "v2"),
                route(PathKind::Exact, "/api", "exact"),
            ],
        );
        t.hosts.insert(
            "*.example".into(),
            vec![route(PathKind::Prefix, "/", "wild")],
        );
        assert_eq!(name(t.route("foo.example", "/api")), "exact");
        assert_eq!(name(t.route("foo.example", "/api/")), "api");
        assert_eq!(name(t.route("foo.example", "/api/v2/x")), "v2");
        assert_eq!(name(t.route("foo.example", "/apix")), "root");
        assert_eq!(name(t.route("bar.example", "/")), "wild");
        assert_eq!(name(t.route("a.bar.example", "/")), "404");
        t.default = Some(b("default"));
        assert_eq!(name(t.route("other", "/")), "default");
    }

    #[test]
    fn round_robin_over_ready_endpoints() {
        let e: Vec<SocketAddr> = vec![
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ];
        let be = Backend::new("x".into(), e.clone());
        assert_eq!(be.pick(), Some(e[0]));
        assert_eq!(be.pick(), Some(e[1]));
        assert_eq!(be.pick(), Some(e[0]));
        assert_eq!(Backend::new("y".into(), vec![]).pick(), None);
    }

    #[test]
    fn backends_resolve_service_ports_to_ready_slice_endpoints() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "ns",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.1"]}
            ]
        }))
        .unwrap();
        let ing: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "i", "namespace": "ns"},
            "spec": {"rules": [{"host": "a", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                {"path": "/n", "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
                {"path": "/gone", "pathType": "Exact",
                 "backend": {"service": {"name": "gone", "port": {"number": 80}}}}
            ]}}]}
        }))
        .unwrap();
        let secrets = HashMap::new();
        let t = Snapshot {
            ingresses: vec![&ing],
            services: vec![&svc],
            slices: vec![&slice],
            secrets: &secrets,
        }
        .build();
        let want: Vec<SocketAddr> = vec![
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        ];
        for path in ["/", "/n"] {
            let Decision::Backend(b) = t.route("a", path) else {
                panic!("{path} not routed")
            };
            assert_eq!(b.endpoints, want, "{path}");
        }
        let Decision::Backend(b) = t.route("a", "/gone") else {
            panic!("/gone not routed")
        };
        assert!(
            b.pick().is_none(),
            "a missing Service has no endpoints (503)"
        );
    }
}
