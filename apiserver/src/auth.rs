//! Who is making a request: authentication results shared by the TLS layer, token
//! authenticators and the authorizer.

use std::collections::BTreeMap;

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
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".to_string());
        }
        UserInfo { name: common_name, uid: String::new(), groups, extra: BTreeMap::new() }
    }
}
