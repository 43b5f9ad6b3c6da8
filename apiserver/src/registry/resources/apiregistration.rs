//! apiregistration.k8s.io/v1 entries: apiservices (kube-aggregator's `ValidateAPIService`,
//! create strategy and table). Which APIServices exist and how available they are is
//! `autoregister.rs`.

use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as regv1;
use lotse_core::names::{dns1035_label, dns1123_subdomain};
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

/// apiregistration.k8s.io/v1 apiservices.
pub const APISERVICES: ResourceDef = ResourceDef {
    namespaced: false,
    name_rule: NameRule::PathSegment,
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: apiservice_defaults,
    validate: validate_apiservice,
    columns: &[
        NAME_COLUMN,
        col(
            "Service",
            "string",
            0,
            "The reference to the service that hosts this API endpoint.",
        ),
        col(
            "Available",
            "string",
            0,
            "Whether this service is available.",
        ),
        AGE_COLUMN,
    ],
    cells: |o| {
        let service = match obj(o, &["spec", "service"]) {
            Some(_) => format!(
                "{}/{}",
                s(o, &["spec", "service", "namespace"]),
                s(o, &["spec", "service", "name"])
            ),
            None => "Local".to_string(),
        };
        let available = match available_condition(o) {
            None => "Unknown".to_string(),
            Some(c) if s(c, &["status"]) == "True" => "True".to_string(),
            Some(c) if !s(c, &["reason"]).is_empty() => {
                format!("{} ({})", s(c, &["status"]), s(c, &["reason"]))
            }
            Some(c) => s(c, &["status"]).to_string(),
        };
        vec![name_cell(o), cell(service), cell(available), age_cell(o)]
    },
    strategy: Strategy {
        prepare_for_create,
        ..Strategy::DEFAULT
    },
    ..def_of::<regv1::APIService>(
        "apiregistration.k8s.io",
        "v1",
        "APIService",
        "apiservices",
        "apiservice",
    )
};

/// `SetDefaults_ServiceReference`: the port is 443.
fn apiservice_defaults(o: &mut Value) {
    if let Some(Value::Object(svc)) = o.pointer_mut("/spec/service")
        && svc.get("port").is_none_or(Value::is_null)
    {
        svc.insert("port".into(), json!(443));
    }
}

/// The create strategy (`PrepareForCreate`): status is reset, and a local APIService is
/// available at once.
pub fn prepare_for_create(o: &mut Value) {
    let local = obj(o, &["spec", "service"]).is_none();
    if let Value::Object(m) = o {
        m.remove("status");
        if local {
            m.insert(
                "status".into(),
                json!({"conditions": [local_available(&now())]}),
            );
        }
    }
}

/// `ValidateAPIService` (create and update).
fn validate_apiservice(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let group = s(o, &["spec", "group"]);
    let version = s(o, &["spec", "version"]);
    let required_name = format!("{version}.{group}");
    let name = fields::name(o);
    if !name.is_empty() && crate::validation::path_segment(name).is_empty() && name != required_name
    {
        errs.push(FieldError::invalid(
            "metadata.name",
            &json!(name),
            &format!(
                "must be `spec.version+\".\"+spec.group`: {}",
                go_quote(&required_name)
            ),
        ));
    }
    if group.is_empty() && version != "v1" {
        errs.push(FieldError::required(
            "spec.group",
            "only v1 may have an empty group and it better be legacy kube",
        ));
    }
    if !group.is_empty() {
        push_invalid_all(
            &mut errs,
            "spec.group",
            &json!(group),
            dns1123_subdomain(group),
        );
    }
    push_invalid_all(
        &mut errs,
        "spec.version",
        &json!(version),
        dns1035_label(version),
    );
    let gp = int(o, &["spec", "groupPriorityMinimum"]);
    if gp <= 0 || gp > 20000 {
        errs.push(FieldError::invalid(
            "spec.groupPriorityMinimum",
            &json!(gp),
            "must be positive and less than 20000",
        ));
    }
    let vp = int(o, &["spec", "versionPriority"]);
    if vp <= 0 || vp > 1000 {
        errs.push(FieldError::invalid(
            "spec.versionPriority",
            &json!(vp),
            "must be positive and less than 1000",
        ));
    }
    let ca_len = s(o, &["spec", "caBundle"]).len() / 4 * 3;
    let insecure = boolean(o, &["spec", "insecureSkipTLSVerify"]);
    if obj(o, &["spec", "service"]).is_none() {
        if !s(o, &["spec", "caBundle"]).is_empty() {
            errs.push(invalid_raw(
                "spec.caBundle",
                &format!("\"{ca_len} bytes\""),
                "local APIServices may not have a caBundle",
            ));
        }
        if insecure {
            errs.push(FieldError::invalid(
                "spec.insecureSkipTLSVerify",
                &json!(true),
                "local APIServices may not have insecureSkipTLSVerify",
            ));
        }
        return errs;
    }
    for k in ["namespace", "name"] {
        if s(o, &["spec", "service", k]).is_empty() {
            errs.push(FieldError::required(format!("spec.service.{k}"), ""));
        }
    }
    let port = int(o, &["spec", "service", "port"]);
    let port_errs = port_num_errors(port);
    if !port_errs.is_empty() {
        errs.push(FieldError::invalid(
            "spec.service.port",
            &json!(port),
            &format!("port is not valid: {}", port_errs.join(", ")),
        ));
    }
    if insecure && !s(o, &["spec", "caBundle"]).is_empty() {
        errs.push(FieldError::invalid(
            "spec.insecureSkipTLSVerify",
            &json!(true),
            "may not be true if caBundle is present",
        ));
    }
    errs
}

/// Now, as Kubernetes' condition timestamps (whole seconds).
pub fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// `NewLocalAvailableAPIServiceCondition`.
pub fn local_available(now: &str) -> Value {
    json!({"type": "Available", "status": "True", "lastTransitionTime": now,
        "reason": "Local", "message": "Local APIServices are always available"})
}

/// The `Available` condition of an APIService, if it has one.
pub fn available_condition(o: &Value) -> Option<&Value> {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Available"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(o: &Value) -> Vec<String> {
        validate_apiservice(o, None)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn built_in_ones_are_valid() {
        for (g, v, _, _) in crate::loops::autoregister::API_VERSION_PRIORITIES {
            let mut o = crate::loops::autoregister::desired(g, v, false).unwrap();
            apiservice_defaults(&mut o);
            assert!(messages(&o).is_empty(), "{g}/{v}: {:?}", messages(&o));
        }
    }

    #[test]
    fn local_ones_are_available_remote_ones_are_not() {
        let mut o = crate::loops::autoregister::desired("apps", "v1", false).unwrap();
        prepare_for_create(&mut o);
        let row = (APISERVICES.cells)(&o);
        assert_eq!(row[1], "Local");
        assert_eq!(row[2], "True");
        let mut remote = json!({"metadata": {"name": "v1beta1.custom.metrics.k8s.io"},
            "spec": {"group": "custom.metrics.k8s.io", "version": "v1beta1",
                "groupPriorityMinimum": 100, "versionPriority": 100,
                "service": {"namespace": "monitoring", "name": "adapter"}}});
        apiservice_defaults(&mut remote);
        assert_eq!(remote["spec"]["service"]["port"], 443);
        assert!(messages(&remote).is_empty());
        prepare_for_create(&mut remote);
        assert!(remote.get("status").is_none());
        assert_eq!((APISERVICES.cells)(&remote)[2], "Unknown");
        let c = crate::loops::autoregister::wanted_available(&remote, "2026-01-01T00:00:00Z");
        remote["status"] = json!({"conditions": [c]});
        let row = (APISERVICES.cells)(&remote);
        assert_eq!(row[1], "monitoring/adapter");
        assert_eq!(row[2], "False (AggregationNotSupported)");
    }

    #[test]
    fn validation_follows_the_aggregator() {
        let o = json!({"metadata": {"name": "wrong"}, "spec": {"group": "x.io", "version": "v1",
            "groupPriorityMinimum": 0, "versionPriority": 2000, "insecureSkipTLSVerify": true}});
        assert_eq!(
            messages(&o),
            [
                "metadata.name: Invalid value: \"wrong\": must be `spec.version+\".\"+spec.group`: \"v1.x.io\"",
                "spec.groupPriorityMinimum: Invalid value: 0: must be positive and less than 20000",
                "spec.versionPriority: Invalid value: 2000: must be positive and less than 1000",
                "spec.insecureSkipTLSVerify: Invalid value: true: local APIServices may not have insecureSkipTLSVerify",
            ]
        );
        let o = json!({"metadata": {"name": "v2."}, "spec": {"version": "v2",
            "groupPriorityMinimum": 1, "versionPriority": 1, "service": {"port": 0}}});
        assert_eq!(
            messages(&o),
            [
                "spec.group: Required value: only v1 may have an empty group and it better be legacy kube",
                "spec.service.namespace: Required value",
                "spec.service.name: Required value",
                "spec.service.port: Invalid value: 0: port is not valid: must be between 1 and 65535, inclusive",
            ]
        );
    }

    #[test]
    fn stored_in_go_field_order() {
        let mut o = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1.x.io"},
            "spec": {"caBundle": "AAAA", "group": "x.io", "groupPriorityMinimum": 100,
                "service": {"port": 443, "name": "a", "namespace": "b"}, "version": "v1",
                "versionPriority": 10},
            "status": {"conditions": [{"message": "m", "reason": "r", "status": "False",
                "type": "Available"}]}});
        crate::protobuf::go_field_order(&mut o);
        let keys = |v: &Value| -> Vec<String> {
            v.as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(
            keys(&o),
            ["kind", "apiVersion", "metadata", "spec", "status"]
        );
        assert_eq!(
            keys(&o["spec"]),
            [
                "service",
                "group",
                "version",
                "caBundle",
                "groupPriorityMinimum",
                "versionPriority"
            ]
        );
        assert_eq!(keys(&o["spec"]["service"]), ["namespace", "name", "port"]);
        assert_eq!(
            keys(&o["status"]["conditions"][0]),
            ["type", "status", "reason", "message"]
        );
    }
}
