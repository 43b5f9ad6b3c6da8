//! rbac.authorization.k8s.io/v1 entries: roles, rolebindings, clusterroles, clusterrolebindings.

use k8s_openapi::api::rbac::v1 as rbacv1;
use lotse_core::names::dns1123_subdomain;
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

const GROUP: &str = "rbac.authorization.k8s.io";

const BINDING_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Role",
        "string",
        0,
        "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace.",
    ),
    AGE_COLUMN,
    col("Users", "string", 1, "Users in the roleBinding"),
    col("Groups", "string", 1, "Groups in the roleBinding"),
    col(
        "ServiceAccounts",
        "string",
        1,
        "ServiceAccounts in the roleBinding",
    ),
];

const CLUSTER_BINDING_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Role",
        "string",
        0,
        "RoleRef can only reference a ClusterRole in the global namespace.",
    ),
    AGE_COLUMN,
    col("Users", "string", 1, "Users in the clusterRoleBinding"),
    col("Groups", "string", 1, "Groups in the clusterRoleBinding"),
    col(
        "ServiceAccounts",
        "string",
        1,
        "ServiceAccounts in the clusterRoleBinding",
    ),
];

/// rbac.authorization.k8s.io/v1 roles.
pub const ROLES: ResourceDef = ResourceDef {
    name_rule: NameRule::PathSegment,
    validate: |o, _| validate_rules(o, true),
    ..def_of::<rbacv1::Role>(GROUP, "v1", "Role", "roles", "role")
};

/// rbac.authorization.k8s.io/v1 clusterroles.
pub const CLUSTERROLES: ResourceDef = ResourceDef {
    namespaced: false,
    name_rule: NameRule::PathSegment,
    validate: |o, _| {
        let mut errs = validate_rules(o, false);
        if let Some(ar) = o.get("aggregationRule").filter(|v| v.is_object()) {
            let sels = arr(ar, &["clusterRoleSelectors"]);
            if sels.is_empty() {
                errs.push(FieldError::required(
                    "aggregationRule.clusterRoleSelectors",
                    "at least one clusterRoleSelector required if aggregationRule is non-nil",
                ));
            }
            for (i, sel) in sels.iter().enumerate() {
                validate_label_selector(
                    &mut errs,
                    sel,
                    &format!("aggregationRule.clusterRoleSelectors[{i}]"),
                );
            }
        }
        errs
    },
    ..def_of::<rbacv1::ClusterRole>(GROUP, "v1", "ClusterRole", "clusterroles", "clusterrole")
};

/// rbac.authorization.k8s.io/v1 rolebindings.
pub const ROLEBINDINGS: ResourceDef = ResourceDef {
    name_rule: NameRule::PathSegment,
    defaults: binding_defaults,
    validate: |o, old| validate_binding(o, old, true),
    columns: BINDING_COLUMNS,
    cells: binding_cells,
    ..def_of::<rbacv1::RoleBinding>(GROUP, "v1", "RoleBinding", "rolebindings", "rolebinding")
};

/// rbac.authorization.k8s.io/v1 clusterrolebindings.
pub const CLUSTERROLEBINDINGS: ResourceDef = ResourceDef {
    namespaced: false,
    name_rule: NameRule::PathSegment,
    defaults: binding_defaults,
    validate: |o, old| validate_binding(o, old, false),
    columns: CLUSTER_BINDING_COLUMNS,
    cells: binding_cells,
    ..def_of::<rbacv1::ClusterRoleBinding>(
        GROUP,
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
    )
};

/// `ValidatePolicyRule` for every rule.
fn validate_rules(o: &Value, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, r) in arr(o, &["rules"]).iter().enumerate() {
        let p = format!("rules[{i}]");
        if arr(r, &["verbs"]).is_empty() {
            errs.push(FieldError::required(
                format!("{p}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = arr(r, &["nonResourceURLs"]);
        if !urls.is_empty() {
            let rendered = go_string_slice(r.get("nonResourceURLs"));
            if namespaced {
                errs.push(invalid_raw(
                    format!("{p}.nonResourceURLs"),
                    &rendered,
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !arr(r, &["apiGroups"]).is_empty()
                || !arr(r, &["resources"]).is_empty()
                || !arr(r, &["resourceNames"]).is_empty()
            {
                errs.push(invalid_raw(
                    format!("{p}.nonResourceURLs"),
                    &rendered,
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if arr(r, &["apiGroups"]).is_empty() {
            errs.push(FieldError::required(
                format!("{p}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if arr(r, &["resources"]).is_empty() {
            errs.push(FieldError::required(
                format!("{p}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
    errs
}

/// `SetDefaults_RoleBinding`/`ClusterRoleBinding`/`Subject`.
fn binding_defaults(o: &mut Value) {
    if s(o, &["roleRef", "apiGroup"]).is_empty() && o.get("roleRef").is_some_and(Value::is_object) {
        fields::ensure_object(o, &["roleRef"]).insert("apiGroup".into(), json!(GROUP));
    }
    if let Some(Value::Array(subjects)) = o.get_mut("subjects") {
        for sub in subjects.iter_mut() {
            if s(sub, &["apiGroup"]).is_empty() {
                match s(sub, &["kind"]) {
                    "User" | "Group" => {
                        fields::ensure_object(sub, &[]).insert("apiGroup".into(), json!(GROUP))
                    }
                    _ => None,
                };
            }
        }
    }
}

fn validate_binding(o: &Value, old: Option<&Value>, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let api_group = s(o, &["roleRef", "apiGroup"]);
    if api_group != GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &json!(api_group),
            &[GROUP],
        ));
    }
    let kind = s(o, &["roleRef", "kind"]);
    if namespaced {
        if kind != "Role" && kind != "ClusterRole" {
            errs.push(FieldError::not_supported(
                "roleRef.kind",
                &json!(kind),
                &["Role", "ClusterRole"],
            ));
        }
    } else if kind != "ClusterRole" {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            &json!(kind),
            &["ClusterRole"],
        ));
    }
    let name = s(o, &["roleRef", "name"]);
    if name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    } else if name == "." || name == ".." || name.contains('/') || name.contains('%') {
        let msg = if name == "." || name == ".." {
            format!("may not be '{name}'")
        } else if name.contains('/') {
            "may not contain '/'".to_string()
        } else {
            "may not contain '%'".to_string()
        };
        errs.push(FieldError::invalid("roleRef.name", &json!(name), &msg));
    }
    for (i, sub) in arr(o, &["subjects"]).iter().enumerate() {
        let p = format!("subjects[{i}]");
        let sname = s(sub, &["name"]);
        if sname.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        }
        let sg = s(sub, &["apiGroup"]);
        match s(sub, &["kind"]) {
            "ServiceAccount" => {
                if !sname.is_empty() {
                    push_invalid_all(
                        &mut errs,
                        &format!("{p}.name"),
                        &json!(sname),
                        dns1123_subdomain(sname),
                    );
                }
                if !sg.is_empty() {
                    errs.push(FieldError::not_supported(
                        format!("{p}.apiGroup"),
                        &json!(sg),
                        &[""],
                    ));
                }
                if !namespaced && s(sub, &["namespace"]).is_empty() {
                    errs.push(FieldError::required(format!("{p}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if sg != GROUP {
                    errs.push(FieldError::not_supported(
                        format!("{p}.apiGroup"),
                        &json!(sg),
                        &[GROUP],
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{p}.kind"),
                &json!(other),
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    if let Some(old) = old
        && old.get("roleRef") != o.get("roleRef")
    {
        let rendered = format!(
            "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
            go_quote(api_group),
            go_quote(kind),
            go_quote(name)
        );
        errs.push(invalid_raw("roleRef", &rendered, "cannot change roleRef"));
    }
    errs
}

/// `rbac.SubjectsStrings`: users, groups, service accounts (`namespace/name`).
fn subjects_strings(o: &Value) -> (String, String, String) {
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for sub in arr(o, &["subjects"]) {
        let name = s(sub, &["name"]);
        match s(sub, &["kind"]) {
            "User" => users.push(name.to_string()),
            "Group" => groups.push(name.to_string()),
            "ServiceAccount" => sas.push(format!("{}/{name}", s(sub, &["namespace"]))),
            _ => {}
        }
    }
    (users.join(", "), groups.join(", "), sas.join(", "))
}

fn binding_cells(o: &Value) -> Vec<Value> {
    let (users, groups, sas) = subjects_strings(o);
    vec![
        name_cell(o),
        cell(format!(
            "{}/{}",
            s(o, &["roleRef", "kind"]),
            s(o, &["roleRef", "name"])
        )),
        age_cell(o),
        cell(users),
        cell(groups),
        cell(sas),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_rules_and_bindings() {
        let role = json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}, {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]});
        let msgs: Vec<String> = validate_rules(&role, true)
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            msgs,
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[1].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs",
            ]
        );
        assert!(
            validate_rules(
                &json!({"rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]}),
                false
            )
            .is_empty()
        );
        let mut rb = json!({"roleRef": {"kind": "Role", "name": "r"}, "subjects": [
            {"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
            {"kind": "ServiceAccount", "name": "default", "namespace": "ns"}]});
        binding_defaults(&mut rb);
        assert_eq!(rb["roleRef"]["apiGroup"], GROUP);
        assert_eq!(rb["subjects"][0]["apiGroup"], GROUP);
        assert!(rb["subjects"][2].get("apiGroup").is_none());
        assert!(validate_binding(&rb, None, true).is_empty());
        let crb_errs: Vec<String> = validate_binding(&rb, None, false)
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            crb_errs,
            ["roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\""]
        );
        let cells = binding_cells(&rb);
        assert_eq!(cells[1], "Role/r");
        assert_eq!(cells[3], "alice");
        assert_eq!(cells[4], "devs");
        assert_eq!(cells[5], "ns/default");
        let mut changed = rb.clone();
        changed["roleRef"]["name"] = json!("other");
        let errs: Vec<String> = validate_binding(&changed, Some(&rb), true)
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            errs,
            [
                "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"other\"}: cannot change roleRef"
            ]
        );
    }
}
