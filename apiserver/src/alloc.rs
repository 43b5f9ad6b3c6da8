//! ClusterIP and NodePort allocation for Services (done by the apiserver, as in Kubernetes).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use crate::error::{ApiError, ApiResult};
use crate::registry::{FieldError, ResourceDef, fields};
use crate::server::AppState;

/// The NodePort range.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i64> = 30000..=32767;

/// Allocates service IPs from the service CIDR and node ports from 30000–32767. Allocation is
/// serialized and reads the current services from a fresh watch cache, so two services never
/// get the same IP or port.
pub struct ServiceAllocator {
    cidr: Ipv4Net,
    lock: Mutex<()>,
}

impl ServiceAllocator {
    /// An allocator for `cidr` (e.g. 10.96.0.0/12).
    pub fn new(cidr: Ipv4Net) -> Self {
        ServiceAllocator {
            cidr,
            lock: Mutex::new(()),
        }
    }

    /// The service CIDR.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The first usable IP of the range (the `kubernetes` service's IP).
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    /// Fills `spec.clusterIP(s)` and node ports of `svc`; the returned guard must be held until
    /// the service is stored.
    pub async fn allocate<'a>(
        &'a self,
        state: &AppState,
        def: &ResourceDef,
        svc: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<MutexGuard<'a, ()>> {
        let guard = self.lock.lock().await;
        let name = fields::name(svc).to_string();
        let me = (fields::namespace(svc).to_string(), name.clone());
        let (used_ips, used_ports) = self.in_use(state, &me).await?;
        let svc_type = fields::str_at(svc, &["spec", "type"])
            .unwrap_or("ClusterIP")
            .to_string();
        let mut errs = Vec::new();
        if svc_type != "ExternalName" {
            let mut ip = fields::str_at(svc, &["spec", "clusterIP"])
                .unwrap_or("")
                .to_string();
            if ip.is_empty()
                && let Some(o) = old
            {
                ip = fields::str_at(o, &["spec", "clusterIP"])
                    .unwrap_or("")
                    .to_string();
            }
            let old_ip = old.and_then(|o| fields::str_at(o, &["spec", "clusterIP"]));
            if ip.is_empty() {
                ip = self
                    .pick_ip(&used_ips)
                    .ok_or_else(|| {
                        ApiError::internal("failed to allocate a serviceIP: range is full")
                    })?
                    .to_string();
            } else if ip != "None" && old_ip != Some(ip.as_str()) {
                match ip.parse::<Ipv4Addr>() {
                    Ok(a) if !self.cidr.contains(&a) => errs.push(FieldError::invalid(
                        "spec.clusterIPs",
                        &json!([ip]),
                        &format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}", self.cidr),
                    )),
                    Ok(a) if used_ips.contains(&a) => errs.push(FieldError::invalid(
                        "spec.clusterIPs",
                        &json!([ip]),
                        &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    )),
                    Ok(_) => {}
                    Err(_) => errs.push(FieldError::invalid("spec.clusterIPs[0]", &Value::String(ip.clone()), "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")),
                }
            }
            let spec = fields::ensure_object(svc, &["spec"]);
            spec.insert("clusterIP".into(), Value::String(ip.clone()));
            spec.insert("clusterIPs".into(), json!([ip]));
        }
        if svc_type == "NodePort" || svc_type == "LoadBalancer" {
            let old_ports: Vec<Value> = old
                .and_then(|o| o.pointer("/spec/ports"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut taken = used_ports.clone();
            if let Some(Value::Array(ports)) = svc.pointer_mut("/spec/ports") {
                for (i, p) in ports.iter_mut().enumerate() {
                    let np = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
                    let port = p.get("port").cloned();
                    let old_np = old_ports
                        .iter()
                        .find(|op| op.get("port").cloned() == port)
                        .and_then(|op| op.get("nodePort").and_then(Value::as_i64))
                        .unwrap_or(0);
                    let chosen = if np == 0 && old_np != 0 {
                        old_np
                    } else if np == 0 {
                        match pick_port(&taken) {
                            Some(x) => x,
                            None => {
                                return Err(ApiError::internal(
                                    "failed to allocate a nodePort: range is full",
                                ));
                            }
                        }
                    } else {
                        if np != old_np {
                            if !NODE_PORT_RANGE.contains(&np) {
                                errs.push(FieldError::invalid(format!("spec.ports[{i}].nodePort"), &json!(np), "provided port is not in the valid range. The range of valid ports is 30000-32767"));
                            } else if taken.contains(&np) {
                                errs.push(FieldError::invalid(
                                    format!("spec.ports[{i}].nodePort"),
                                    &json!(np),
                                    "provided port is already allocated",
                                ));
                            }
                        }
                        np
                    };
                    taken.insert(chosen);
                    if let Value::Object(m) = p {
                        m.insert("nodePort".into(), json!(chosen));
                    }
                }
            }
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(def, &name, &errs));
        }
        Ok(guard)
    }

    fn pick_ip(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let base = u32::from(self.cidr.network());
        let size = 1u64 << (32 - self.cidr.prefix_len() as u64);
        if size < 4 {
            return None;
        }
        // Skip the network address and the first IP (reserved for the kubernetes service) and
        // the broadcast address.
        let usable = (size - 3) as u32;
        let start = rand::random::<u32>() % usable;
        (0..usable)
            .map(|i| Ipv4Addr::from(base + 2 + (start + i) % usable))
            .find(|a| !used.contains(a))
    }

    async fn in_use(
        &self,
        state: &AppState,
        me: &(String, String),
    ) -> ApiResult<(HashSet<Ipv4Addr>, HashSet<i64>)> {
        let cacher = state.cacher(&crate::registry::resources::SERVICES)?;
        cacher.wait_fresh().await?;
        let all = cacher
            .list("/registry/services/specs/", None, 0, &|_| true)
            .await;
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        for o in all.items {
            if o.namespace == me.0 && o.name == me.1 {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&o.raw) else {
                continue;
            };
            if let Some(ip) =
                fields::str_at(&v, &["spec", "clusterIP"]).and_then(|s| s.parse().ok())
            {
                ips.insert(ip);
            }
            for p in v
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                    ports.insert(np);
                }
            }
        }
        Ok((ips, ports))
    }
}

fn pick_port(taken: &HashSet<i64>) -> Option<i64> {
    let n = NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start() + 1;
    let start = (rand::random::<u32>() as i64) % n;
    (0..n)
        .map(|i| NODE_PORT_RANGE.start() + (start + i) % n)
        .find(|p| !taken.contains(p))
}
