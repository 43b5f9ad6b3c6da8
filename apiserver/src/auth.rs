//! Who is making a request: authentication results shared by the TLS layer, token
//! authenticators and the authorizer, plus the per-request scope that lets admission see the
//! requesting user and add warnings without threading them through every write function.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Group of anonymous requests.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// User name of anonymous requests.
pub const ANONYMOUS: &str = "system:anonymous";
/// The group that bypasses authorization (Kubernetes' privileged group).
pub const MASTERS: &str = "system:masters";

/// An authenticated user, as Kubernetes' `user.Info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// User name, e.g. `kubernetes-admin` or `system:serviceaccount:ns:name`.
    pub name: String,
    /// UID, if the authenticator knows one.
    pub uid: String,
    /// Groups, always including `system:authenticated` for authenticated users.
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The identity proven by a verified TLS client certificate of the current connection, put into
/// each request's extensions by the TLS layer. Absent when the client sent no certificate.
#[derive(Clone, Debug)]
pub struct ClientCertIdentity(pub UserInfo);

impl UserInfo {
    /// A user from a client certificate: CN is the name, each O is a group.
    pub fn from_cert(common_name: String, organizations: Vec<String>) -> Self {
        let mut groups = organizations;
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        UserInfo {
            name: common_name,
            uid: String::new(),
            groups,
            extra: BTreeMap::new(),
        }
    }

    /// The anonymous user.
    pub fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS.into(),
            groups: vec![UNAUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// A service account user with Kubernetes' groups.
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> Self {
        UserInfo {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uid.to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// `(namespace, name)` when the user is a service account.
    pub fn service_account_parts(&self) -> Option<(&str, &str)> {
        let rest = self.name.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
    }

    /// The node name when the user is a kubelet (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if !self.in_group("system:nodes") {
            return None;
        }
        self.name
            .strip_prefix("system:node:")
            .filter(|n| !n.is_empty())
    }
}

/// What one API request carries into the write pipeline: the user (for admission decisions such
/// as escalation checks and node restriction) and warnings to return in `Warning` headers.
#[derive(Debug, Default)]
pub struct RequestScope {
    /// The user the request acts as (after impersonation).
    pub user: UserInfo,
    /// Warnings added by admission.
    pub warnings: Mutex<Vec<String>>,
}

tokio::task_local! {
    static REQUEST: Arc<RequestScope>;
}

/// Runs `fut` with `scope` as the current request scope.
pub async fn with_request<F: std::future::Future>(scope: Arc<RequestScope>, fut: F) -> F::Output {
    REQUEST.scope(scope, fut).await
}

/// The user of the API request being served, or None for the apiserver's own writes.
pub fn request_user() -> Option<UserInfo> {
    REQUEST.try_with(|s| s.user.clone()).ok()
}

/// Adds a warning to the current request's response (ignored outside a request).
pub fn add_warning(w: impl Into<String>) {
    let w = w.into();
    let _ = REQUEST.try_with(|s| {
        if let Ok(mut ws) = s.warnings.lock() {
            ws.push(w);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_names() {
        let u = UserInfo::service_account("entenhausen", "donald", "u1");
        assert_eq!(u.name, "system:serviceaccount:entenhausen:donald");
        assert_eq!(u.service_account_parts(), Some(("entenhausen", "donald")));
        assert!(u.in_group("system:serviceaccounts:entenhausen"));
        let n = UserInfo::from_cert("system:node:n1".into(), vec!["system:nodes".into()]);
        assert_eq!(n.node_name(), Some("n1"));
        assert_eq!(
            UserInfo::from_cert("system:node:n1".into(), vec![]).node_name(),
            None
        );
    }
}
