//! Authorization (`--authorization-mode=Node,RBAC`): what every authorizer shares — the request's
//! [`Attributes`] (Kubernetes' `authorizer.Attributes`), the [`Decision`] and the 403 a denial
//! becomes — and, one module each, the authorizers and the chain that runs them:
//! [`chain`] (`system:masters`, then the [`node`] authorizer for kubelets, then [`rbac`]).
//!
//! This module imports none of its children: they build on it, and only [`chain`] knows the
//! order in which they run.

use serde_json::Value;

use crate::auth::UserInfo;
use crate::error::ApiError;

pub mod chain;
pub mod node;
pub mod rbac;

/// What a request asks to do (Kubernetes' `authorizer.Attributes`).
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    /// The user.
    pub user: UserInfo,
    /// Verb: get, list, watch, create, update, patch, delete, deletecollection, impersonate, ...
    pub verb: String,
    /// True for resource requests, false for non-resource paths.
    pub resource_request: bool,
    /// Namespace ("" for cluster scope).
    pub namespace: String,
    /// API group ("" for core).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Object name.
    pub name: String,
    /// The URL path (non-resource requests).
    pub path: String,
}

impl Attributes {
    /// A resource request.
    pub fn resource(
        user: &UserInfo,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            namespace: namespace.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    /// Kubernetes' forbidden message (`responsewriters.forbiddenMessage`).
    pub fn forbidden_message(&self) -> String {
        let user = &self.user.name;
        if !self.resource_request {
            return format!("User {user:?} cannot {} path {:?}", self.verb, self.path);
        }
        let mut resource = self.resource.clone();
        if !self.subresource.is_empty() {
            resource = format!("{resource}/{}", self.subresource);
        }
        if self.namespace.is_empty() {
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
                self.verb, self.api_group
            )
        } else {
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
                self.verb, self.api_group, self.namespace
            )
        }
    }

    /// The 403 a denied request gets (`apierrors.NewForbidden` around the message).
    pub fn forbidden(&self) -> ApiError {
        forbidden_error(
            &self.api_group,
            &self.resource,
            &self.name,
            &self.forbidden_message(),
        )
    }
}

/// The authorization attributes of an HTTP request (Kubernetes' `RequestInfoFactory`):
/// `/api/v1/...` and `/apis/<g>/<v>/...` below the group-version are resource requests,
/// everything else (discovery, health, version, OpenAPI) is a non-resource request.
pub fn request_attributes(
    user: &UserInfo,
    method: &axum::http::Method,
    path: &str,
    query: &crate::request::Query,
) -> Attributes {
    use axum::http::Method;
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g, v, rest),
        _ => {
            let verb = method.as_str().to_ascii_lowercase();
            return Attributes {
                user: user.clone(),
                verb,
                path: path.to_string(),
                ..Default::default()
            };
        }
    };
    let mut parts = rest;
    let mut namespace = "";
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        namespace = parts[1];
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts = &parts[2..];
        }
    }
    let resource = parts.first().copied().unwrap_or_default();
    let mut name = parts.get(1).copied().unwrap_or_default().to_string();
    let subresource = parts.get(2).copied().unwrap_or_default();
    let watch = query.flag("watch");
    let verb = match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if name.is_empty() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => "",
    };
    if matches!(verb, "list" | "watch" | "deletecollection")
        && name.is_empty()
        && let Some(fs) = query.get("fieldSelector")
        && let Ok(sel) = lotse_core::selectors::FieldSelector::parse(fs)
        && let Some(n) = sel.required_value("metadata.name")
    {
        name = n.to_string();
    }
    Attributes {
        user: user.clone(),
        verb: verb.to_string(),
        resource_request: true,
        namespace: namespace.to_string(),
        api_group: group.to_string(),
        api_version: version.to_string(),
        resource: resource.to_string(),
        subresource: subresource.to_string(),
        name,
        path: path.to_string(),
    }
}

/// `apierrors.NewForbidden(groupResource, name, err)`.
pub fn forbidden_error(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
    let gr = match (group.is_empty(), resource.is_empty()) {
        (_, true) => String::new(),
        (true, false) => resource.to_string(),
        (false, false) => format!("{resource}.{group}"),
    };
    let message = if gr.is_empty() {
        format!("forbidden: {why}")
    } else if name.is_empty() {
        format!("{gr} is forbidden: {why}")
    } else {
        format!("{gr} {name:?} is forbidden: {why}")
    };
    let mut details = serde_json::Map::new();
    if !name.is_empty() {
        details.insert("name".into(), name.into());
    }
    if !group.is_empty() {
        details.insert("group".into(), group.into());
    }
    if !resource.is_empty() {
        details.insert("kind".into(), resource.into());
    }
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        details: Some(Value::Object(details)),
    }
}

/// The outcome of an authorization check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the string names why (for reviews' `reason`).
    Allow(String),
    /// Not allowed by any rule.
    Deny,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_message_is_kubernetes_wording() {
        let user = UserInfo::service_account("entenhausen", "donald", "");
        let a = Attributes::resource(&user, "list", "", "pods", "", "kube-system", "");
        assert_eq!(
            a.forbidden().message,
            "pods is forbidden: User \"system:serviceaccount:entenhausen:donald\" cannot list resource \"pods\" in API group \"\" in the namespace \"kube-system\""
        );
        let a = Attributes::resource(&user, "get", "apps", "deployments", "scale", "", "web");
        assert_eq!(
            a.forbidden().message,
            "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:entenhausen:donald\" cannot get resource \"deployments/scale\" in API group \"apps\" at the cluster scope"
        );
        let a = Attributes {
            user: UserInfo::anonymous(),
            verb: "get".into(),
            path: "/api".into(),
            ..Default::default()
        };
        assert_eq!(
            a.forbidden().message,
            "forbidden: User \"system:anonymous\" cannot get path \"/api\""
        );
    }

    #[test]
    fn request_attributes_follow_request_info() {
        use crate::request::Query;
        let u = UserInfo::default();
        let a = request_attributes(
            &u,
            &axum::http::Method::GET,
            "/api/v1/namespaces/ns/pods",
            &Query::parse(Some("watch=1")),
        );
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("watch", "ns", "pods")
        );
        let a = request_attributes(
            &u,
            &axum::http::Method::GET,
            "/api/v1/namespaces/ns",
            &Query::default(),
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.namespace.as_str(),
                a.resource.as_str(),
                a.name.as_str()
            ),
            ("get", "ns", "namespaces", "ns")
        );
        let a = request_attributes(
            &u,
            &axum::http::Method::PUT,
            "/api/v1/namespaces/ns/finalize",
            &Query::default(),
        );
        assert_eq!(
            (a.resource.as_str(), a.subresource.as_str()),
            ("namespaces", "finalize")
        );
        let a = request_attributes(
            &u,
            &axum::http::Method::POST,
            "/apis/apps/v1/namespaces/ns/deployments/web/scale",
            &Query::default(),
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.api_group.as_str(),
                a.subresource.as_str()
            ),
            ("create", "apps", "scale")
        );
        let a = request_attributes(
            &u,
            &axum::http::Method::GET,
            "/apis/apps/v1",
            &Query::default(),
        );
        assert!(!a.resource_request);
        let a = request_attributes(
            &u,
            &axum::http::Method::GET,
            "/api/v1/namespaces/ns/pods",
            &Query::parse(Some("fieldSelector=metadata.name%3Dp")),
        );
        assert_eq!(a.name, "p");
    }
}
