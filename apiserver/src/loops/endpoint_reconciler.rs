//! The apiserver's own endpoints for the `kubernetes` Service in `default`, as kube-apiserver's
//! `EndpointReconciler` keeps them: the Endpoints and the EndpointSlice named `kubernetes` carry
//! the advertise address and the secure port, and the Service's `https` port targets that port.
//! Checked at start and every [`RECONCILE_INTERVAL`], so a deleted or edited object comes back.
//! (One apiserver: its address replaces whatever is there, as the `master-count` reconciler with
//! a count of one does.)

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::registry::ResourceDef;
use crate::registry::resources::{ENDPOINTS, ENDPOINTSLICES, SERVICES};
use crate::write::{ObjectWriter, UpdateScope};

/// How often the objects are checked (kube-apiserver's endpoint reconciler interval).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";

/// The host's primary IPv4 address: the source address of its default route (`None` without
/// one). A connected UDP socket only asks the kernel for a route; no packet is sent.
pub fn primary_ipv4() -> Option<Ipv4Addr> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    sock.connect((Ipv4Addr::new(1, 1, 1, 1), 53)).ok()?;
    match sock.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// The address the apiserver advertises (kube-apiserver's `--advertise-address` default): the
/// flag if given, else the bind address unless it is unspecified (0.0.0.0), else the host's
/// primary address, else loopback.
pub fn advertise_address(flag: Option<IpAddr>, bind: IpAddr) -> IpAddr {
    flag.or_else(|| (!bind.is_unspecified()).then_some(bind))
        .or_else(|| primary_ipv4().map(IpAddr::V4))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn endpoints(ip: IpAddr, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip.to_string()}],
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    })
}

fn endpoint_slice(ip: IpAddr, port: u16) -> Value {
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": NAME}},
        "addressType": family,
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    })
}

/// Creates `want` or brings the `fields` of the stored object to `want`'s values.
async fn ensure(
    writer: &dyn ObjectWriter,
    def: &'static ResourceDef,
    want: Value,
    fields: &[&str],
) {
    match writer.get_stored(def, Some(NAMESPACE), NAME).await {
        Ok((old, rv)) => {
            if fields.iter().all(|f| old.get(*f) == want.get(*f)) {
                return;
            }
            let mut new = old.clone();
            if let Value::Object(m) = &mut new {
                for f in fields {
                    if let Some(v) = want.get(*f) {
                        m.insert(f.to_string(), v.clone());
                    }
                }
            }
            let r = writer
                .update_object(def, Some(NAMESPACE), NAME, old, rv, new, UpdateScope::Main)
                .await;
            match r {
                Ok(_) => tracing::info!(
                    kind = def.kind,
                    "updated the kubernetes service's endpoints"
                ),
                Err(e) => {
                    tracing::warn!(kind = def.kind, error = %e, "could not update the kubernetes service's endpoints")
                }
            }
        }
        Err(e) if e.code == 404 => match writer.create_object(def, Some(NAMESPACE), want).await {
            Ok(_) | Err(crate::error::ApiError { code: 409, .. }) => {}
            Err(e) => {
                tracing::warn!(kind = def.kind, error = %e, "could not create the kubernetes service's endpoints")
            }
        },
        Err(e) => {
            tracing::warn!(kind = def.kind, error = %e, "could not read the kubernetes service's endpoints")
        }
    }
}

/// Points the `kubernetes` Service's `https` port at `port` (it is created with 6443).
async fn ensure_target_port(writer: &dyn ObjectWriter, port: u16) {
    let Ok((old, rv)) = writer.get_stored(&SERVICES, Some(NAMESPACE), NAME).await else {
        return;
    };
    let mut new = old.clone();
    let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else {
        return;
    };
    let mut changed = false;
    for p in ports.iter_mut() {
        if p.get("name").and_then(Value::as_str) == Some("https")
            && p.get("targetPort").and_then(Value::as_u64) != Some(u64::from(port))
        {
            p["targetPort"] = json!(port);
            changed = true;
        }
    }
    if !changed {
        return;
    }
    if let Err(e) = writer
        .update_object(
            &SERVICES,
            Some(NAMESPACE),
            NAME,
            old,
            rv,
            new,
            UpdateScope::Main,
        )
        .await
    {
        tracing::warn!(error = %e, "could not update the kubernetes service's target port");
    }
}

/// One pass: the Service's target port, the Endpoints and the EndpointSlice.
pub async fn reconcile(writer: &dyn ObjectWriter, ip: IpAddr, port: u16) {
    ensure_target_port(writer, port).await;
    ensure(writer, &ENDPOINTS, endpoints(ip, port), &["subsets"]).await;
    ensure(
        writer,
        &ENDPOINTSLICES,
        endpoint_slice(ip, port),
        &["addressType", "endpoints", "ports"],
    )
    .await;
}

/// Runs [`reconcile`] now and every [`RECONCILE_INTERVAL`] on a background task.
pub fn spawn(writer: Arc<dyn ObjectWriter>, ip: IpAddr, port: u16) {
    tokio::spawn(async move {
        tracing::info!(%ip, port, "kubernetes service endpoints point at the advertise address");
        loop {
            reconcile(writer.as_ref(), ip, port).await;
            tokio::time::sleep(RECONCILE_INTERVAL).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_address_defaults() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let flag = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(advertise_address(Some(flag), any), flag);
        assert_eq!(advertise_address(None, lo), lo);
        let host = advertise_address(None, any);
        assert!(!host.is_unspecified());
        assert_eq!(
            host,
            primary_ipv4().map(IpAddr::V4).unwrap_or(lo),
            "0.0.0.0 advertises the primary address"
        );
    }

    #[test]
    fn slice_and_endpoints_carry_the_address() {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let s = endpoint_slice(ip, 6443);
        assert_eq!(s["endpoints"][0]["addresses"][0], "192.0.2.2");
        assert_eq!(
            s["metadata"]["labels"]["kubernetes.io/service-name"],
            "kubernetes"
        );
        assert_eq!(s["ports"][0]["port"], 6443);
        let e = endpoints(ip, 6443);
        assert_eq!(e["subsets"][0]["addresses"][0]["ip"], "192.0.2.2");
    }
}
