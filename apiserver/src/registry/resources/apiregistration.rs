//! apiregistration.k8s.io/v1 entries: apiservices (kube-aggregator's `ValidateAPIService`,
//! create strategy and table), the priorities kube-apiserver's autoregister controller gives the
//! built-in group versions, and the availability Lotse reports (the autoregister loop is
//! `autoregister.rs`). Lotse serves every group itself and does not proxy aggregated APIs: an
//! APIService naming a service is stored but reported `Available=False`.

use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as regv1;
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

/// The label of APIServices the apiserver manages (`AutoRegisterManagedLabel`).
pub const AUTOMANAGED_LABEL: &str = "kube-aggregator.kubernetes.io/automanaged";
/// Label value of built-in group versions, registered at start (`manageOnStart`).
pub const MANAGE_ON_START: &str = "onstart";
/// Label value of custom resource group versions, kept in step continuously
/// (`manageContinuously`).
pub const MANAGE_CONTINUOUSLY: &str = "true";
/// Reason of the `Available=False` condition of an APIService naming a service.
pub const NOT_PROXIED_REASON: &str = "AggregationNotSupported";

/// kube-apiserver's `apiVersionPriorities`: (group, version, groupPriorityMinimum,
/// versionPriority).
pub const API_VERSION_PRIORITIES: &[(&str, &str, i64, i64)] = &[
    ("", "v1", 18000, 1),
    ("apiregistration.k8s.io", "v1", 18000, 15),
    ("apps", "v1", 17800, 15),
    ("events.k8s.io", "v1", 17750, 15),
    ("authentication.k8s.io", "v1", 17700, 15),
    ("authorization.k8s.io", "v1", 17600, 15),
    ("autoscaling", "v1", 17500, 15),
    ("autoscaling", "v2", 17500, 30),
    ("batch", "v1", 17400, 15),
    ("certificates.k8s.io", "v1", 17300, 15),
    ("networking.k8s.io", "v1", 17200, 15),
    ("policy", "v1", 17100, 15),
    ("rbac.authorization.k8s.io", "v1", 17000, 15),
    ("storage.k8s.io", "v1", 16800, 15),
    ("apiextensions.k8s.io", "v1", 16700, 15),
    ("admissionregistration.k8s.io", "v1", 16700, 15),
    ("scheduling.k8s.io", "v1", 16600, 15),
    ("coordination.k8s.io", "v1", 16500, 15),
    ("node.k8s.io", "v1", 16300, 15),
    ("discovery.k8s.io", "v1", 16200, 15),
    ("flowcontrol.apiserver.k8s.io", "v1", 16100, 21),
    ("resource.k8s.io", "v1beta1", 15900, 9),
];

/// The built-in resource metrics API's priorities (those metrics-server registers with).
pub const METRICS_PRIORITY: (i64, i64) = (100, 100);
/// Priorities of a custom resource group version (`crdregistration_controller.go`).
pub const CRD_PRIORITY: (i64, i64) = (1000, 100);

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
    ..def_of::<regv1::APIService>(
        "apiregistration.k8s.io",
        "v1",
        "APIService",
        "apiservices",
        "apiservice",
    )
};

fn available_condition(o: &Value) -> Option<&Value> {
    arr(o, &["status", "conditions"])
        .iter()
        .find(|c| s(c, &["type"]) == "Available")
}

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

/// The `Available` condition Lotse reports for an APIService: local ones are available; one
/// naming a service is not, since Lotse does not proxy aggregated APIs. The transition time is
/// kept while the status stays the same.
pub fn wanted_available(o: &Value, now: &str) -> Value {
    let mut c = match obj(o, &["spec", "service"]) {
        None => local_available(now),
        Some(_) => json!({"type": "Available", "status": "False", "lastTransitionTime": now,
        "reason": NOT_PROXIED_REASON,
        "message": format!(
            "Lotse does not proxy aggregated APIs: requests for {} are not forwarded to service {}/{}",
            group_version(o),
            s(o, &["spec", "service", "namespace"]),
            s(o, &["spec", "service", "name"]),
        )}),
    };
    if let Some(cur) = available_condition(o)
        && cur.get("status") == c.get("status")
        && let Some(t) = cur.get("lastTransitionTime").filter(|t| !t.is_null())
    {
        c["lastTransitionTime"] = t.clone();
    }
    c
}

/// `group/version` of an APIService (`version` alone for the core group).
fn group_version(o: &Value) -> String {
    let (g, v) = (s(o, &["spec", "group"]), s(o, &["spec", "version"]));
    if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    }
}

/// The APIService autoregister keeps for a served group version, or None for a group version
/// it does not register (one missing from [`API_VERSION_PRIORITIES`]). `custom` marks a group
/// of custom resources.
pub fn desired(group: &str, version: &str, custom: bool) -> Option<Value> {
    let (gp, vp, label) = if custom {
        (CRD_PRIORITY.0, CRD_PRIORITY.1, Some(MANAGE_CONTINUOUSLY))
    } else if group == crate::metrics_api::GROUP {
        (METRICS_PRIORITY.0, METRICS_PRIORITY.1, None)
    } else {
        let &(_, _, gp, vp) = API_VERSION_PRIORITIES
            .iter()
            .find(|(g, v, _, _)| *g == group && *v == version)?;
        (gp, vp, Some(MANAGE_ON_START))
    };
    let mut spec = json!({"groupPriorityMinimum": gp, "version": version, "versionPriority": vp});
    if !group.is_empty() {
        spec["group"] = json!(group);
    }
    let mut o = json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": format!("{version}.{group}")},
        "spec": spec,
    });
    if let Some(l) = label {
        o["metadata"]["labels"] = json!({AUTOMANAGED_LABEL: l});
    }
    Some(o)
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
            dns1123_subdomain_errors(group),
        );
    }
    push_invalid_all(
        &mut errs,
        "spec.version",
        &json!(version),
        crate::validation::dns1035_label(version),
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
    fn built_in_group_versions_have_kubernetes_priorities() {
        let apps = desired("apps", "v1", false).unwrap();
        assert_eq!(apps["metadata"]["name"], "v1.apps");
        assert_eq!(apps["metadata"]["labels"][AUTOMANAGED_LABEL], "onstart");
        assert_eq!(apps["spec"]["groupPriorityMinimum"], 17800);
        assert_eq!(apps["spec"]["versionPriority"], 15);
        let core = desired("", "v1", false).unwrap();
        assert_eq!(core["metadata"]["name"], "v1.");
        assert!(core["spec"].get("group").is_none());
        assert_eq!(
            desired("autoscaling", "v2", false).unwrap()["spec"]["versionPriority"],
            30
        );
        let crd = desired("example.com", "v1", true).unwrap();
        assert_eq!(crd["metadata"]["labels"][AUTOMANAGED_LABEL], "true");
        assert_eq!(crd["spec"]["groupPriorityMinimum"], 1000);
        assert!(desired("unknown.example", "v1", false).is_none());
        for (g, v, _, _) in API_VERSION_PRIORITIES {
            let mut o = desired(g, v, false).unwrap();
            apiservice_defaults(&mut o);
            assert!(messages(&o).is_empty(), "{g}/{v}: {:?}", messages(&o));
        }
    }

    #[test]
    fn local_ones_are_available_remote_ones_are_not() {
        let mut o = desired("apps", "v1", false).unwrap();
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
        let c = wanted_available(&remote, "2026-01-01T00:00:00Z");
        remote["status"] = json!({"conditions": [c]});
        let row = (APISERVICES.cells)(&remote);
        assert_eq!(row[1], "monitoring/adapter");
        assert_eq!(row[2], "False (AggregationNotSupported)");
        // The transition time stays while the status does.
        let again = wanted_available(&remote, "2027-01-01T00:00:00Z");
        assert_eq!(again["lastTransitionTime"], "2026-01-01T00:00:00Z");
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
}
