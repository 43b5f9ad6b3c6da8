//! API groups served without storage: `authentication.k8s.io/v1` (SelfSubjectReview,
//! TokenReview) and `authorization.k8s.io/v1` (SelfSubjectAccessReview,
//! SelfSubjectRulesReview, SubjectAccessReview, LocalSubjectAccessReview). Their discovery
//! entries are listed here so discovery stays in one place.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::authorization::rbac::PolicyRule;
use crate::authorization::{Attributes, Decision};
use crate::endpoints::handlers::json_response;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const AUTHN: &str = "authentication.k8s.io";
const AUTHZ: &str = "authorization.k8s.io";

/// (group, plural, kind, namespaced)
const REVIEWS: &[(&str, &str, &str, bool)] = &[
    (AUTHN, "selfsubjectreviews", "SelfSubjectReview", false),
    (AUTHN, "tokenreviews", "TokenReview", false),
    (
        AUTHZ,
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    (
        AUTHZ,
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    ),
    (
        AUTHZ,
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
    ),
    (AUTHZ, "subjectaccessreviews", "SubjectAccessReview", false),
];

/// Groups served outside the registry: (group, version).
pub fn extra_groups() -> &'static [(&'static str, &'static str)] {
    &[(AUTHN, "v1"), (AUTHZ, "v1")]
}

fn singular(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

/// Extra `APIResourceList` entries of a group-version.
pub fn extra_resources(group: &str, version: &str) -> Vec<Value> {
    if version != "v1" {
        return Vec::new();
    }
    REVIEWS
        .iter()
        .filter(|(g, ..)| *g == group)
        .map(|(_, plural, kind, namespaced)| {
            json!({"name": plural, "singularName": singular(kind), "namespaced": namespaced, "kind": kind, "verbs": ["create"]})
        })
        .collect()
}

/// Extra aggregated-discovery resources of a group-version.
pub fn extra_aggregated_resources(group: &str, version: &str) -> Vec<Value> {
    if version != "v1" {
        return Vec::new();
    }
    REVIEWS
        .iter()
        .filter(|(g, ..)| *g == group)
        .map(|(g, plural, kind, namespaced)| {
            json!({
                "resource": plural,
                "responseKind": {"group": g, "version": "v1", "kind": kind},
                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": singular(kind),
                "verbs": ["create"],
            })
        })
        .collect()
}

/// Whether `/apis/<group>/<version>/<rest>` is a review resource served here.
pub fn is_review_path(group: &str, version: &str, rest: &[&str]) -> bool {
    version == "v1" && review_of(group, rest).is_some()
}

fn review_of(
    group: &str,
    rest: &[&str],
) -> Option<(&'static str, &'static str, bool, Option<String>)> {
    let (ns, res) = match rest {
        ["namespaces", ns, res] => (Some(ns.to_string()), *res),
        [res] => (None, *res),
        _ => return None,
    };
    REVIEWS
        .iter()
        .find(|(g, p, _, namespaced)| *g == group && *p == res && *namespaced == ns.is_some())
        .map(|(_, p, k, n)| (*p, *k, *n, ns))
}

fn user_json(u: &UserInfo) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("username".into(), json!(u.name));
    if !u.uid.is_empty() {
        m.insert("uid".into(), json!(u.uid));
    }
    m.insert("groups".into(), json!(u.groups));
    if !u.extra.is_empty() {
        m.insert("extra".into(), json!(u.extra));
    }
    Value::Object(m)
}

fn str_field(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn attributes_of(user: &UserInfo, spec: &Value) -> ApiResult<Attributes> {
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let mut a = Attributes::resource(
            user,
            &str_field(r, "verb"),
            &str_field(r, "group"),
            &str_field(r, "resource"),
            &str_field(r, "subresource"),
            &str_field(r, "namespace"),
            &str_field(r, "name"),
        );
        a.api_version = str_field(r, "version");
        return Ok(a);
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes {
            user: user.clone(),
            verb: str_field(n, "verb"),
            path: str_field(n, "path"),
            ..Default::default()
        });
    }
    Err(ApiError::new(
        422,
        "Invalid",
        "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

fn subject_of(spec: &Value) -> UserInfo {
    let groups = spec
        .get("groups")
        .and_then(|g| serde_json::from_value(g.clone()).ok())
        .unwrap_or_default();
    let extra: BTreeMap<String, Vec<String>> = spec
        .get("extra")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    UserInfo {
        name: str_field(spec, "user"),
        uid: str_field(spec, "uid"),
        groups,
        extra,
    }
}

async fn access_status(state: &AppState, a: &Attributes) -> ApiResult<Value> {
    Ok(match state.authz().authorize(a).await? {
        Decision::Allow(reason) if reason.is_empty() => json!({"allowed": true}),
        Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        Decision::Deny => json!({"allowed": false}),
    })
}

fn rules_status(rules: &[PolicyRule]) -> Value {
    let resource: Vec<Value> = rules
        .iter()
        .filter(|r| r.non_resource_urls.is_empty())
        .map(|r| {
            let mut m = serde_json::Map::new();
            m.insert("verbs".into(), json!(r.verbs));
            m.insert("apiGroups".into(), json!(r.api_groups));
            m.insert("resources".into(), json!(r.resources));
            if !r.resource_names.is_empty() {
                m.insert("resourceNames".into(), json!(r.resource_names));
            }
            Value::Object(m)
        })
        .collect();
    let non_resource: Vec<Value> = rules
        .iter()
        .filter(|r| !r.non_resource_urls.is_empty())
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false})
}

/// Serves `POST` on a review resource for `user` (authorizing `create` on it first).
pub async fn handle(
    state: &AppState,
    user: &UserInfo,
    method: &Method,
    headers: &HeaderMap,
    group: &str,
    rest: &[&str],
    body: Bytes,
) -> ApiResult<Response> {
    let Some((plural, kind, _, url_ns)) = review_of(group, rest) else {
        return Err(ApiError::no_such_resource());
    };
    if *method != Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let ns = url_ns.clone().unwrap_or_default();
    state
        .authz()
        .require(&Attributes::resource(
            user, "create", group, plural, "", &ns, "",
        ))
        .await?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut obj = crate::request::decode_object(ct, &body)?;
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match kind {
        "SelfSubjectReview" => json!({"userInfo": user_json(user)}),
        "TokenReview" => {
            let token = str_field(&spec, "token");
            match crate::authn::authenticate_token(state.authenticator(), &token).await {
                Ok(u) => {
                    json!({"authenticated": true, "user": user_json(&u), "audiences": [crate::authn::ISSUER]})
                }
                Err(e) => json!({"authenticated": false, "user": {}, "error": e.to_string()}),
            }
        }
        "SelfSubjectAccessReview" => access_status(state, &attributes_of(user, &spec)?).await?,
        "SubjectAccessReview" => {
            access_status(state, &attributes_of(&subject_of(&spec), &spec)?).await?
        }
        "LocalSubjectAccessReview" => {
            let a = attributes_of(&subject_of(&spec), &spec)?;
            if !a.resource_request || a.namespace != ns {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "LocalSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes.namespace: Invalid value: {:?}: must match metadata.namespace",
                        a.namespace
                    ),
                ));
            }
            access_status(state, &a).await?
        }
        "SelfSubjectRulesReview" => {
            let rules_ns = str_field(&spec, "namespace");
            rules_status(
                &state
                    .security
                    .rbac
                    .rules_for(&state.reader, user, &rules_ns)
                    .await?,
            )
        }
        _ => return Err(ApiError::no_such_resource()),
    };
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(format!("{group}/v1")));
        m.insert("kind".into(), json!(kind));
        let mut meta = json!({"creationTimestamp": null});
        if let Some(ns) = &url_ns {
            meta["namespace"] = json!(ns);
        }
        m.insert("metadata".into(), meta);
        if kind == "SelfSubjectReview" {
            m.remove("spec");
        } else {
            m.insert("spec".into(), spec);
        }
        m.insert("status".into(), status);
    }
    Ok(json_response(
        StatusCode::CREATED,
        serde_json::to_vec(&obj).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_review_paths() {
        assert!(is_review_path(AUTHZ, "v1", &["selfsubjectaccessreviews"]));
        assert!(is_review_path(
            AUTHZ,
            "v1",
            &["namespaces", "ns", "localsubjectaccessreviews"]
        ));
        assert!(!is_review_path(AUTHZ, "v1", &["localsubjectaccessreviews"]));
        assert!(!is_review_path(AUTHN, "v1", &["selfsubjectaccessreviews"]));
        assert_eq!(extra_resources(AUTHN, "v1").len(), 2);
        assert_eq!(extra_aggregated_resources(AUTHZ, "v1").len(), 4);
    }

    #[test]
    fn rules_review_splits_resource_and_url_rules() {
        let rules = vec![
            PolicyRule {
                verbs: vec!["get".into()],
                api_groups: vec!["".into()],
                resources: vec!["pods".into()],
                ..Default::default()
            },
            PolicyRule {
                verbs: vec!["get".into()],
                non_resource_urls: vec!["/api".into()],
                ..Default::default()
            },
        ];
        let s = rules_status(&rules);
        assert_eq!(s["resourceRules"][0]["resources"][0], "pods");
        assert_eq!(s["nonResourceRules"][0]["nonResourceURLs"][0], "/api");
    }
}
