//! ClusterIP and NodePort allocation for Services (done by the apiserver, as in Kubernetes).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::{FieldError, ResourceDef, fields};

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
        reader: &CacheReader,
        def: &ResourceDef,
        svc: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<MutexGuard<'a, ()>> {
        let guard = self.lock.lock().await;
        let name = fields::name(svc).to_string();
        let me = (fields::namespace(svc).to_string(), name.clone());
        let (used_ips, used_ports) = self.in_use(reader, &me).await?;
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
        let mut taken = used_ports;
        if let Some(Value::Array(ports)) = svc.pointer("/spec/ports") {
            taken.extend(ports.iter().filter_map(|p| p.get("nodePort")?.as_i64()));
        }
        health_check_node_port(def, &name, svc, old, &taken)?;
        Ok(guard)
    }

    fn pick_ip(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let base = u32::from(self.cidr.network());
        let size = 1u64 << (32 - self.cidr.prefix_len() as u64);
        if size < 4 {
            return None;
        }
        // Offsets 1..size-1 (not the network and broadcast addresses); offset 1 is the
        // `kubernetes` Service's. Dynamic allocation takes the upper band first and the lower,
        // static band (the first `static_band` offsets: 10.96.0.10 for cluster DNS lives
        // there) only when the upper one is full, as Kubernetes' ServiceIPStaticSubrange.
        let band = static_band(size, 16, 256, 16) as u32;
        let upper = (band + 1).max(2)..(size - 1) as u32;
        let lower = 2..(band + 1).min((size - 1) as u32);
        [upper, lower].into_iter().find_map(|r| {
            let n = r.end.saturating_sub(r.start);
            if n == 0 {
                return None;
            }
            let start = rand::random::<u32>() % n;
            (0..n)
                .map(|i| Ipv4Addr::from(base + r.start + (start + i) % n))
                .find(|a| !used.contains(a))
        })
    }

    async fn in_use(
        &self,
        reader: &CacheReader,
        me: &(String, String),
    ) -> ApiResult<(HashSet<Ipv4Addr>, HashSet<i64>)> {
        let cacher = reader.cacher(&crate::registry::resources::SERVICES)?;
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
            if let Some(hc) = v
                .pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_i64)
                .filter(|p| *p != 0)
            {
                ports.insert(hc);
            }
        }
        Ok((ips, ports))
    }
}

/// Kubernetes' `calculateRangeOffset`: the size of a range's static band (`size / step`,
/// at least `min`, at most `max`; none for ranges smaller than `min`).
fn static_band(size: u64, min: u64, max: u64, step: u64) -> u64 {
    if size < min {
        return 0;
    }
    (size / step).clamp(min, max)
}

/// A free node port: from the upper band first, from the static band (the range's first
/// ports, for users who pick their own) only when the upper one is full, as Kubernetes'
/// ServiceNodePortStaticSubrange.
fn pick_port(taken: &HashSet<i64>) -> Option<i64> {
    let size = NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start() + 1;
    let band = static_band(size as u64, 16, 128, 32) as i64;
    let first = *NODE_PORT_RANGE.start();
    [(first + band, size - band), (first, band)]
        .into_iter()
        .find_map(|(from, n)| {
            if n <= 0 {
                return None;
            }
            let start = (rand::random::<u32>() as i64) % n;
            (0..n)
                .map(|i| from + (start + i) % n)
                .find(|p| !taken.contains(p))
        })
}

/// `spec.healthCheckNodePort` of a LoadBalancer Service with `externalTrafficPolicy: Local`
/// (kube-proxy answers health checks of the service's local endpoints on it): allocated on
/// create (or the requested one reserved), kept on update, immutable while needed, dropped when
/// no longer needed; forbidden on other Services. Kubernetes' messages.
fn health_check_node_port(
    def: &ResourceDef,
    name: &str,
    svc: &mut Value,
    old: Option<&Value>,
    taken: &HashSet<i64>,
) -> ApiResult<()> {
    let needs = |v: &Value| {
        fields::str_at(v, &["spec", "type"]) == Some("LoadBalancer")
            && fields::str_at(v, &["spec", "externalTrafficPolicy"]) == Some("Local")
    };
    let hc = |v: &Value| {
        v.pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let field = "spec.healthCheckNodePort";
    let (now, before) = (hc(svc), old.map(hc).unwrap_or(0));
    if now < 0 {
        return Err(ApiError::invalid(
            def,
            name,
            &[FieldError::invalid(
                field,
                &json!(now),
                "must be not less than 0",
            )],
        ));
    }
    let old_needed = old.is_some_and(needs);
    if !needs(svc) {
        // The strategy drops a port the old object needed and the new one no longer does.
        if old_needed && now == before {
            if let Some(Value::Object(spec)) = svc.get_mut("spec") {
                spec.remove("healthCheckNodePort");
            }
            return Ok(());
        }
        if now != 0 {
            return Err(ApiError::invalid(
                def,
                name,
                &[FieldError::forbidden(
                    field,
                    "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
                )],
            ));
        }
        return Ok(());
    }
    let chosen = if old_needed {
        if now != 0 && now != before {
            return Err(ApiError::invalid(
                def,
                name,
                &[FieldError::invalid(
                    field,
                    &json!(now),
                    "cannot change healthCheckNodePort on loadBalancer service with externalTraffic=Local during update",
                )],
            ));
        }
        before
    } else if now != 0 {
        let why = if !NODE_PORT_RANGE.contains(&now) {
            Some("provided port is not in the valid range. The range of valid ports is 30000-32767")
        } else if taken.contains(&now) {
            Some("provided port is already allocated")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ApiError::internal(format!(
                "failed to allocate requested HealthCheck NodePort {now}: {why}"
            )));
        }
        now
    } else {
        pick_port(taken).ok_or_else(|| {
            ApiError::internal("failed to allocate a HealthCheck NodePort 0: range is full")
        })?
    };
    fields::ensure_object(svc, &["spec"]).insert("healthCheckNodePort".into(), json!(chosen));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_node_ports_stay_out_of_the_static_band_until_it_is_all_that_is_left() {
        // 2768 ports: a band of 86 (30000-30085), as Kubernetes computes it.
        assert_eq!(static_band(2768, 16, 128, 32), 86);
        for _ in 0..200 {
            let p = pick_port(&HashSet::new()).unwrap();
            assert!((30086..=32767).contains(&p), "{p}");
        }
        let upper_full: HashSet<i64> = (30086..=32767).collect();
        let p = pick_port(&upper_full).unwrap();
        assert!((30000..30086).contains(&p), "{p}");
        let all: HashSet<i64> = NODE_PORT_RANGE.collect();
        assert_eq!(pick_port(&all), None);
    }

    #[test]
    fn dynamic_cluster_ips_never_take_the_static_band_first() {
        let a = ServiceAllocator::new("10.96.0.0/12".parse().unwrap());
        assert_eq!(static_band(1 << 20, 16, 256, 16), 256);
        for _ in 0..200 {
            let ip = a.pick_ip(&HashSet::new()).unwrap();
            assert!(
                u32::from(ip) > u32::from(Ipv4Addr::new(10, 96, 1, 0)),
                "{ip}"
            );
        }
        // A /28 (16 addresses): the band is all of it; .1 stays the kubernetes Service's.
        let small = ServiceAllocator::new("10.0.0.0/28".parse().unwrap());
        let mut used = HashSet::new();
        while let Some(ip) = small.pick_ip(&used) {
            assert!(ip != Ipv4Addr::new(10, 0, 0, 1) && ip != Ipv4Addr::new(10, 0, 0, 15));
            used.insert(ip);
        }
        assert_eq!(used.len(), 13);
    }

    #[test]
    fn health_check_node_ports_follow_the_service() {
        let def = &crate::registry::resources::SERVICES;
        let lb = |etp: &str, hc: i64| {
            json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer",
                "externalTrafficPolicy": etp, "healthCheckNodePort": hc}})
        };
        let taken: HashSet<i64> = [31000].into();
        let mut s = lb("Local", 0);
        health_check_node_port(def, "s", &mut s, None, &taken).unwrap();
        let got = s["spec"]["healthCheckNodePort"].as_i64().unwrap();
        assert!((30086..=32767).contains(&got) && got != 31000);
        // Kept on update; changing it is refused.
        let mut u = lb("Local", 0);
        health_check_node_port(def, "s", &mut u, Some(&s), &taken).unwrap();
        assert_eq!(u["spec"]["healthCheckNodePort"], got);
        let mut c = lb("Local", got + 1);
        let e = health_check_node_port(def, "s", &mut c, Some(&s), &taken).unwrap_err();
        assert!(
            e.message.contains("cannot change healthCheckNodePort"),
            "{}",
            e.message
        );
        // Requested: reserved, or refused when taken.
        let mut r = lb("Local", 31000);
        let e = health_check_node_port(def, "s", &mut r, None, &taken).unwrap_err();
        assert_eq!(
            e.message,
            "Internal error occurred: failed to allocate requested HealthCheck NodePort 31000: provided port is already allocated"
        );
        // Dropped when the policy goes back to Cluster; forbidden elsewhere.
        let mut back = s.clone();
        back["spec"]["externalTrafficPolicy"] = json!("Cluster");
        health_check_node_port(def, "s", &mut back, Some(&s), &taken).unwrap();
        assert!(back["spec"].get("healthCheckNodePort").is_none());
        let mut np = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "healthCheckNodePort": 30500}});
        let e = health_check_node_port(def, "s", &mut np, None, &taken).unwrap_err();
        assert!(e.message.contains("spec.healthCheckNodePort: Forbidden: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"), "{}", e.message);
    }
}
